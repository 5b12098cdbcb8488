//! A full disk is not an outage, tried as an operator meets it: the broker's data directory on
//! a small file system of its own (a size-limited tmpfs the test mounts; skipped with a message
//! when the test may not mount, i.e. does not run as root), filled by retained and persistent
//! traffic and by a file beside the store. While it is full, what needs the disk is refused
//! with the right reason code and everything else is served; when space returns the broker
//! takes durable work again by itself; nothing acknowledged is lost, across a restart too; a
//! broker started on a full disk serves what needs no disk. The broker never exits.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::v5::{Client5, QoS as Q5};
use common::*;
use rumqttc::QoS as R;
use rumqttc::v5::Event as E5;
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason, SubscribeReasonCode};
use tern_server::{Durability, ServerConfig};

/// A tmpfs of its own, unmounted (lazily, so a busy mount cannot fail the test) when dropped.
struct SmallDisk {
    mount: PathBuf,
}

impl SmallDisk {
    /// `None` (the test is skipped) when mounting is not permitted here.
    fn mount(name: &str, megabytes: u64) -> Option<SmallDisk> {
        let mount = std::env::temp_dir().join(format!("tern-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&mount).ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&mount)
            .status();
        match status {
            Ok(status) if status.success() => Some(SmallDisk { mount }),
            other => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs for the full-disk test ({other:?}); it needs root (CAP_SYS_ADMIN)"
                );
                let _ = std::fs::remove_dir(&mount);
                None
            }
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.mount.join("data")
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Bytes free on the file system.
    fn free(&self) -> u64 {
        let output = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.mount)
            .output()
            .expect("df");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)
            .and_then(|line| line.trim().parse().ok())
            .expect("df prints the free bytes")
    }

    /// Grows the file beside the data directory until at most `leave` bytes are free (or the
    /// file system is full).
    fn fill_to(&self, leave: u64) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .expect("filler");
        let chunk = vec![0x5a_u8; 256 * 1024];
        loop {
            let free = self.free();
            if free <= leave {
                break;
            }
            let len = usize::try_from(free - leave)
                .unwrap_or(chunk.len())
                .min(chunk.len());
            if file.write_all(&chunk[..len]).is_err() {
                break; // full
            }
            let _ = file.flush();
        }
    }

    /// Gives the filler's space back.
    fn free_space(&self) {
        let _ = std::fs::remove_file(self.filler());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = std::fs::remove_dir(&self.mount);
    }
}

const MB: u64 = 1_000_000;

fn on(disk: &SmallDisk) -> ServerConfig {
    let mut config = config();
    config.durability = Durability::Process;
    config.data_dir = disk.data_dir();
    config.min_free_disk = "8MB".parse().expect("a size");
    config
}

fn big(addr: std::net::SocketAddr, id: &str) -> rumqttc::v5::MqttOptions {
    let mut options = common::v5::options(addr, id);
    options.set_max_packet_size(Some(1 << 20));
    options
}

/// Whether a PUBACK says the message was taken.
fn taken(reason: PubAckReason) -> bool {
    matches!(
        reason,
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
    )
}

/// Publishes a retained QoS 1 message of 20 KB and returns the PUBACK's reason.
async fn retain_20k(client: &mut Client5, topic: &str) -> PubAckReason {
    client
        .client
        .publish(topic, Q5::AtLeastOnce, true, vec![b'r'; 20_000])
        .await
        .expect("publish request");
    client
        .next_matching(|event| match event {
            E5::Incoming(P5::PubAck(ack)) => Some(ack.reason),
            _ => None,
        })
        .await
        .expect("PUBACK")
}

/// QoS 1 from `publisher` to `subscriber` (clean sessions both) gets through.
async fn clean_pair_delivers(publisher: &mut Client, subscriber: &mut Client, round: u32) {
    publisher
        .publish(
            "clean/t",
            R::AtLeastOnce,
            false,
            round.to_be_bytes().to_vec(),
        )
        .await;
    publisher
        .next_matching(|event| {
            matches!(event, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))).then_some(())
        })
        .await
        .expect("PUBACK of a clean-session QoS 1 message");
    assert_eq!(
        subscriber.recv().await.payload.as_ref(),
        round.to_be_bytes()
    );
}

/// QoS 0 from `publisher` to `subscriber` gets through.
async fn qos0_pair_delivers(publisher: &Client, subscriber: &mut Client, round: u32) {
    publisher
        .publish("chat/t", R::AtMostOnce, false, round.to_be_bytes().to_vec())
        .await;
    assert_eq!(
        subscriber.recv().await.payload.as_ref(),
        round.to_be_bytes()
    );
}

/// The retained topics a fresh subscription to `retained/#` gets.
async fn retained_topics(addr: std::net::SocketAddr, expected: usize) -> Vec<String> {
    let (mut reader, _) = Client5::connect(big(addr, "reader")).await;
    reader.subscribe("retained/#", Q5::AtMostOnce).await;
    let mut topics = Vec::with_capacity(expected);
    for n in 0..expected {
        let publish = reader
            .next_matching(|event| match event {
                E5::Incoming(P5::Publish(publish)) => Some(publish.clone()),
                _ => None,
            })
            .await
            .unwrap_or_else(|error| {
                topics.sort();
                panic!("retained message {n} of {expected}: {error}; have {topics:?}")
            });
        assert_eq!(publish.payload.len(), 20_000);
        topics.push(String::from_utf8_lossy(&publish.topic).into_owned());
    }
    // Nothing more than that.
    reader
        .client
        .publish("retained/end", Q5::AtMostOnce, false, vec![])
        .await
        .expect("marker");
    let last = reader.recv().await;
    assert_eq!(
        &last.topic[..],
        b"retained/end",
        "no more retained messages"
    );
    topics.sort();
    topics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_what_it_cannot_keep_serves_the_rest_and_recovers() {
    let Some(disk) = SmallDisk::mount("full-disk", 32) else {
        return;
    };
    let broker = start_with(on(&disk)).await;
    let addr = broker.addr;

    // Traffic that needs no disk, kept up throughout.
    let mut chat_sub = Client::simple(addr, "chat-sub").await;
    chat_sub.subscribe("chat/#", R::AtMostOnce).await;
    let chat_pub = Client::simple(addr, "chat-pub").await;
    let mut clean_sub = Client::simple(addr, "clean-sub").await;
    clean_sub.subscribe("clean/#", R::AtLeastOnce).await;
    let mut clean_pub = Client::simple(addr, "clean-pub").await;
    // A persistent subscriber, offline: what it is sent is queued in the store.
    let mut away = big(addr, "away");
    away.set_clean_start(false);
    away.set_session_expiry_interval(Some(3600));
    let (mut subscriber, _) = Client5::connect(away.clone()).await;
    subscriber.subscribe("meters/#", Q5::AtLeastOnce).await;
    subscriber.disconnect().await;
    let (mut publisher, _) = Client5::connect(big(addr, "publisher")).await;
    for n in 0..5u32 {
        publisher
            .client
            .publish("meters/1", Q5::AtLeastOnce, false, n.to_be_bytes().to_vec())
            .await
            .expect("publish");
        let reason = publisher
            .next_matching(|event| match event {
                E5::Incoming(P5::PubAck(ack)) => Some(ack.reason),
                _ => None,
            })
            .await
            .expect("PUBACK");
        assert_eq!(reason, PubAckReason::Success);
    }

    // Leave 12 MB, 4 MB above the watermark, and fill it with retained messages.
    disk.fill_to(12 * MB);
    let mut acknowledged = Vec::new();
    let mut round = 0;
    loop {
        let topic = format!("retained/{}", acknowledged.len());
        match retain_20k(&mut publisher, &topic).await {
            PubAckReason::QuotaExceeded => break,
            reason if taken(reason) => acknowledged.push(topic),
            other => panic!("unexpected PUBACK reason {other:?}"),
        }
        assert!(
            acknowledged.len() < 2_000,
            "the watermark never stopped the traffic"
        );
        if acknowledged.len() % 50 == 0 {
            round += 1;
            qos0_pair_delivers(&chat_pub, &mut chat_sub, round).await;
            clean_pair_delivers(&mut clean_pub, &mut clean_sub, round).await;
        }
    }
    assert!(!acknowledged.is_empty());
    let refused_at = disk.free();
    assert!(
        refused_at > 2 * MB,
        "refused before the engine ran out of space ({refused_at} bytes free)"
    );

    // While it is full: QoS 1 for a stored session gets 0x97, a new subscription of a
    // persistent session SUBACK 0x97, and traffic that needs no disk carries on.
    publisher
        .client
        .publish("meters/1", Q5::AtLeastOnce, false, vec![1])
        .await
        .expect("publish");
    let reason = publisher
        .next_matching(|event| match event {
            E5::Incoming(P5::PubAck(ack)) => Some(ack.reason),
            _ => None,
        })
        .await
        .expect("PUBACK");
    assert_eq!(reason, PubAckReason::QuotaExceeded);
    let (mut returning, _) = Client5::connect(away.clone()).await;
    // The messages queued before the disk filled are still delivered.
    for n in 0..5u32 {
        let publish = returning.recv().await;
        assert_eq!(publish.payload.as_ref(), n.to_be_bytes());
    }
    let suback = returning.subscribe("rooms/#", Q5::AtLeastOnce).await;
    assert_eq!(
        suback.return_codes,
        vec![SubscribeReasonCode::QuotaExceeded]
    );
    returning.disconnect().await;
    for _ in 0..5 {
        round += 1;
        qos0_pair_delivers(&chat_pub, &mut chat_sub, round).await;
        clean_pair_delivers(&mut clean_pub, &mut clean_sub, round).await;
    }

    // An MQTT 3.1.1 client is never acknowledged for what was not stored: no PUBACK, and its
    // connection is closed after a bounded wait so that it sends the message again later.
    let mut old = options(addr, "old-publisher");
    old.set_clean_session(false);
    let (mut old, _) = Client::connect(old).await;
    old.publish("meters/1", R::AtLeastOnce, false, vec![3])
        .await;
    let outcome = old
        .next_matching_within(tern_server::broker::STORAGE_REFUSAL_CLOSE + WAIT, |event| {
            matches!(event, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))).then_some(())
        })
        .await;
    assert!(
        outcome
            .as_ref()
            .is_err_and(|error| error.starts_with("connection error")),
        "closed without a PUBACK: {outcome:?}"
    );

    // Space comes back: durable work is taken again, without a restart.
    disk.free_space();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let topic = format!("retained/{}", acknowledged.len());
        if taken(retain_20k(&mut publisher, &topic).await) {
            acknowledged.push(topic);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store did not take work again after space returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..5 {
        let topic = format!("retained/{}", acknowledged.len());
        assert!(taken(retain_20k(&mut publisher, &topic).await));
        acknowledged.push(topic);
    }
    acknowledged.sort();
    assert_eq!(
        retained_topics(addr, acknowledged.len()).await,
        acknowledged
    );

    // The broker never stopped, and after a restart everything acknowledged is there.
    assert!(
        !broker.task.as_ref().is_some_and(|task| task.is_finished()),
        "the broker is still running"
    );
    publisher.disconnect().await;
    broker.shutdown().await;
    let broker = start_with(on(&disk)).await;
    assert_eq!(
        retained_topics(broker.addr, acknowledged.len()).await,
        acknowledged
    );
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_started_on_a_full_disk_serves_what_needs_no_disk() {
    let Some(disk) = SmallDisk::mount("full-start", 24) else {
        return;
    };
    let broker = start_with(on(&disk)).await;
    let (mut publisher, _) = Client5::connect(big(broker.addr, "publisher")).await;
    let mut acknowledged = Vec::new();
    for n in 0..10 {
        let topic = format!("retained/{n}");
        assert!(taken(retain_20k(&mut publisher, &topic).await));
        acknowledged.push(topic);
    }
    publisher.disconnect().await;
    broker.shutdown().await;

    // Nothing left at all.
    disk.fill_to(0);
    let broker = start_with(on(&disk)).await;
    let addr = broker.addr;
    let mut chat_sub = Client::simple(addr, "chat-sub").await;
    chat_sub.subscribe("chat/#", R::AtMostOnce).await;
    let chat_pub = Client::simple(addr, "chat-pub").await;
    let mut clean_sub = Client::simple(addr, "clean-sub").await;
    clean_sub.subscribe("clean/#", R::AtLeastOnce).await;
    let mut clean_pub = Client::simple(addr, "clean-pub").await;
    for round in 0..5 {
        qos0_pair_delivers(&chat_pub, &mut chat_sub, round).await;
        clean_pair_delivers(&mut clean_pub, &mut clean_sub, round).await;
    }
    acknowledged.sort();
    assert_eq!(
        retained_topics(addr, acknowledged.len()).await,
        acknowledged
    );
    let (mut publisher, _) = Client5::connect(big(addr, "publisher")).await;
    assert_eq!(
        retain_20k(&mut publisher, "retained/late").await,
        PubAckReason::QuotaExceeded
    );

    disk.free_space();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !taken(retain_20k(&mut publisher, "retained/late").await) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store did not take work again after space returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publisher.disconnect().await;
    broker.shutdown().await;
}
