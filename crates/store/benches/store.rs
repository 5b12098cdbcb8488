//! Store benchmarks, printed as plain figures (`cargo bench -p tern-store --bench store`):
//!
//! 1. Throughput of a QoS 1 cycle (Message + Queued, wait until durable as PUBACK does, then
//!    Unqueued + Inflight + InflightDone) at `process` and `fsync`, with 1 and 8 submitters.
//! 2. The same changes from 8 threads without waiting: the commit thread's ceiling, where most
//!    cycles begin and end within one group commit and coalesce to (almost) no writes. The
//!    time includes the commit thread catching up after the 3 s of submitting.
//! 3. Start-up: `Store::open` of a store holding 100 000 sessions (one subscription each) and
//!    100 000 retained messages.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_broker::persist::{Change, Persistence, StoredDelivery};
use tern_broker::{
    InflightState, Message, SessionExpiry, SubscriptionIds, SubscriptionRecord, Wakeup,
};
use tern_codec::{MqttStr, QoS, SubscriptionOptions};
use tern_store::{Durability, Store};

const RUN_FOR: Duration = Duration::from_secs(3);

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let path =
            std::env::temp_dir().join(format!("tern-store-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(text: &str) -> MqttStr {
    MqttStr::try_from(text.to_owned()).unwrap_or_default()
}

/// Wakes a parked thread, as the server's connection tasks are woken.
struct Unpark(Thread);

impl Wakeup for Unpark {
    fn wake(&self) {
        self.0.unpark();
    }
}

fn wait_durable(store: &Store, seq: tern_broker::Seq) {
    if store.durable() >= seq {
        return;
    }
    store.wake_when_durable(seq, Arc::new(Unpark(std::thread::current())));
    while store.durable() < seq {
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

fn delivery(message_id: u64) -> StoredDelivery {
    StoredDelivery {
        message_id,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: SubscriptionIds::None,
        shared_filter: None,
    }
}

fn message(id: u64, payload: &Bytes) -> Arc<Message> {
    Arc::new(Message {
        cluster_id: None,
        topic: s("bench/sensor/temperature"),
        payload: payload.clone(),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: None,
        expires_at: None,
        publisher: Some(s("publisher")),
        id,
    })
}

/// One QoS 1 cycle of `client`; `wait`: wait for durability as a PUBACK would.
fn cycle(store: &Store, client: &MqttStr, id: u64, position: u64, payload: &Bytes, wait: bool) {
    store.submit(Change::Message((*message(id, payload)).clone()));
    let seq = store.submit(Change::Queued {
        client_id: client.clone(),
        position,
        delivery: delivery(id),
    });
    if wait {
        wait_durable(store, seq);
    }
    let packet_id = (position % 65_535 + 1) as u16;
    store.submit(Change::Unqueued {
        client_id: client.clone(),
        position,
    });
    store.submit(Change::Inflight {
        client_id: client.clone(),
        packet_id,
        state: InflightState::AwaitingPubAck,
        delivery: delivery(id),
    });
    store.submit(Change::InflightDone {
        client_id: client.clone(),
        packet_id,
    });
}

fn throughput(durability: Durability, threads: u64, wait: bool) {
    let scratch = Scratch::new("throughput");
    let Ok((store, _)) = Store::open(&scratch.0, durability) else {
        eprintln!("cannot open the store");
        return;
    };
    let ids = Arc::new(AtomicU64::new(1));
    let payload = Bytes::from(vec![b'x'; 256]);
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|thread| {
            let store = store.clone();
            let ids = ids.clone();
            let payload = payload.clone();
            std::thread::spawn(move || {
                let client = s(&format!("client-{thread}"));
                store.submit(Change::Session {
                    client_id: client.clone(),
                    expiry: SessionExpiry::Never,
                    online: true,
                });
                let mut cycles = 0u64;
                while started.elapsed() < RUN_FOR {
                    let id = ids.fetch_add(1, Ordering::Relaxed);
                    cycle(&store, &client, id, cycles, &payload, wait);
                    cycles += 1;
                }
                cycles
            })
        })
        .collect();
    let cycles: u64 = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    let last = store.submit(Change::Session {
        client_id: s("end"),
        expiry: SessionExpiry::Never,
        online: true,
    });
    wait_durable(&store, last);
    let elapsed = started.elapsed();
    let rate = cycles as f64 / elapsed.as_secs_f64();
    println!(
        "{durability:>7}, {threads} submitter(s), {}: {cycles} cycles in {elapsed:.2?} = {rate:.0} cycles/s ({:.0} changes/s)",
        if wait {
            "waiting for durability each cycle"
        } else {
            "no waiting"
        },
        rate * 5.0
    );
    let _ = store.close();
}

fn populate(dir: &Path, sessions: u64, retained: u64) -> Option<Duration> {
    let (store, _) = Store::open(dir, Durability::Process).ok()?;
    let started = Instant::now();
    let record = SubscriptionRecord {
        options: SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..SubscriptionOptions::default()
        },
        identifier: None,
    };
    let mut last = tern_broker::Seq::NONE;
    for n in 0..sessions {
        let client = s(&format!("client-{n:06}"));
        store.submit(Change::Session {
            client_id: client.clone(),
            expiry: SessionExpiry::Never,
            online: false,
        });
        last = store.submit(Change::Subscribed {
            client_id: client,
            filter: s(&format!("devices/{n}/commands/#")),
            record,
        });
        if n % 10_000 == 0 {
            wait_durable(&store, last);
        }
    }
    for n in 0..retained {
        last = store.submit(Change::Retained(Arc::new(Message {
            cluster_id: None,
            topic: s(&format!("devices/{n}/status")),
            payload: Bytes::from_static(b"{\"online\":true,\"firmware\":\"1.2.3\"}"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: None,
            expires_at: None,
            publisher: Some(s(&format!("client-{n:06}"))),
            id: 0,
        })));
        if n % 10_000 == 0 {
            wait_durable(&store, last);
        }
    }
    wait_durable(&store, last);
    let elapsed = started.elapsed();
    store.close().ok()?;
    Some(elapsed)
}

fn startup() {
    let scratch = Scratch::new("startup");
    let Some(filled) = populate(&scratch.0, 100_000, 100_000) else {
        eprintln!("cannot populate the store");
        return;
    };
    println!(
        "populated 100 000 sessions + 100 000 subscriptions + 100 000 retained in {filled:.2?}"
    );
    for round in 1..=3 {
        let started = Instant::now();
        let Ok((store, recovered)) = Store::open(&scratch.0, Durability::Process) else {
            eprintln!("cannot open the store");
            return;
        };
        let elapsed = started.elapsed();
        println!(
            "Store::open #{round}: {} sessions, {} subscriptions, {} retained in {elapsed:.2?}",
            recovered.sessions.len(),
            recovered
                .sessions
                .iter()
                .map(|session| session.subscriptions.len())
                .sum::<usize>(),
            recovered.retained.len()
        );
        let _ = store.close();
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument picks one part.
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let run = |name: &str| filter.as_deref().is_none_or(|filter| name.contains(filter));
    if run("throughput") {
        for durability in [Durability::Process, Durability::Fsync] {
            for threads in [1, 8] {
                throughput(durability, threads, true);
            }
        }
        throughput(Durability::Process, 8, false);
        throughput(Durability::Fsync, 8, false);
    }
    if run("startup") {
        startup();
    }
}
