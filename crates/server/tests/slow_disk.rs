//! A slow disk (every commit takes a second) delays acknowledgements but does not grow memory
//! without bound: the changes waiting for the disk stay within the store's bound, publishers
//! are slowed (their connections are not read while their messages wait) and not dropped, and
//! traffic that needs no disk is not held up.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use rumqttc::QoS as R;
use tern_server::{Durability, StoreTuning};

/// The store's bound on changes waiting for a commit, in this test.
const BOUND: usize = 1 << 20;
/// What the bound may be exceeded by: each publisher's connection may have read one more
/// buffer of packets when the bound was reached (a 10 KB message and its queue entry, twice),
/// and the changes of one PUBACK round.
const SLACK: usize = 4 * 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_slows_publishers_and_bounds_what_waits_for_it() {
    let dir = std::env::temp_dir().join(format!("tern-slow-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = config();
    config.durability = Durability::Process;
    config.data_dir = dir.clone();
    config.limits.max_queued_messages = 100_000;
    config.store_tuning = StoreTuning {
        max_pending_bytes: BOUND,
        commit_delay: Duration::from_secs(1),
    };
    let broker = start_with(config).await;
    let store = broker.store.clone().expect("a store");
    let addr = broker.addr;

    // An offline persistent subscriber: every message for it is stored.
    let mut away = options(addr, "away");
    away.set_clean_session(false);
    let (mut subscriber, _) = Client::connect(away).await;
    subscriber.subscribe("load/#", R::AtLeastOnce).await;
    subscriber.disconnect().await;
    offline(&broker, "away").await;
    let mut chat_sub = Client::simple(addr, "chat-sub").await;
    chat_sub.subscribe("chat/#", R::AtMostOnce).await;
    let chat_pub = Client::simple(addr, "chat-pub").await;

    // Four publishers send 10 KB QoS 1 messages as fast as their in-flight windows allow.
    let acked = Arc::new(AtomicUsize::new(0));
    let mut publishers = Vec::new();
    for n in 0..4 {
        let acked = acked.clone();
        let (mut publisher, _) = Client::connect(options(addr, &format!("pub-{n}"))).await;
        publishers.push(tokio::spawn(async move {
            let client = publisher.client.clone();
            let sender = tokio::spawn(async move {
                loop {
                    if client
                        .publish("load/t", R::AtLeastOnce, false, vec![b'x'; 10_000])
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            while publisher
                .next_matching(|event| {
                    matches!(event, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))
                        .then_some(())
                })
                .await
                .is_ok()
            {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            sender.abort();
        }));
    }

    // For 4 s: the backlog is sampled, and QoS 0 messages must keep arriving promptly.
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                let pending = store.status().pending_bytes;
                peak.fetch_max(pending, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut slowest = Duration::ZERO;
    for round in 0..40u32 {
        let sent = tokio::time::Instant::now();
        chat_pub
            .publish("chat/t", R::AtMostOnce, false, round.to_be_bytes().to_vec())
            .await;
        let got = chat_sub.recv().await;
        assert_eq!(got.payload.as_ref(), round.to_be_bytes());
        slowest = slowest.max(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sampler.abort();
    for publisher in publishers {
        publisher.abort();
    }
    let peak = peak.load(Ordering::Relaxed) as usize;
    let acked = acked.load(Ordering::Relaxed);
    eprintln!(
        "slow disk: peak backlog {peak} bytes (bound {BOUND}), {acked} PUBACKs in 4 s, slowest QoS 0 delivery {slowest:?}"
    );
    assert!(
        peak > BOUND / 2,
        "the publishers filled the backlog (peak {peak})"
    );
    assert!(
        peak <= BOUND + SLACK,
        "backlog {peak} over {BOUND} + {SLACK}"
    );
    assert!(acked > 0, "publishers are slowed, not stopped");
    assert!(
        slowest < Duration::from_secs(1),
        "QoS 0 traffic is not held behind the disk ({slowest:?})"
    );
    // Not dropped: everything acknowledged waits for the subscriber.
    let queued = broker.broker.session("away").expect("session").queued_len();
    assert!(queued >= acked, "{queued} queued, {acked} acknowledged");
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
