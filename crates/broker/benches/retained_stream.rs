//! Time and peak memory to send 100 000 retained messages to one new `#` subscriber, through
//! the broker core as the server drives it (64 KiB per round, the subscriber acknowledging each
//! QoS 1 message as it arrives). Peak memory is the heap above what the broker held before the
//! SUBSCRIBE, counted by a global allocator. Run with
//! `cargo bench -p tern-broker --bench retained_stream`.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tern_broker::{Broker, BrokerConfig, Connection, Message, Wakeup};
use tern_codec::{
    Ack, Connect, MqttStr, Packet, Properties, ProtocolVersion, QoS, Subscribe, Subscription,
    SubscriptionOptions,
};

/// Tracks the bytes allocated now and the most seen since the last reset.
struct Tracking;

static CURRENT: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize) {
    let now = CURRENT.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed unchanged to the system allocator; the counters are atomics,
// which never allocate.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize);
        // SAFETY: forwarded with the caller's layout, as GlobalAlloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        grew(-(layout.size() as isize));
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size as isize - layout.size() as isize);
        // SAFETY: as for `dealloc`; `new_size` comes from the caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static TRACKING: Tracking = Tracking;

struct Quiet;

impl Wakeup for Quiet {
    fn wake(&self) {}
}

const RETAINED: usize = 100_000;

fn text(value: &str) -> MqttStr {
    MqttStr::try_from(value).unwrap()
}

fn run(qos: QoS) {
    let broker = Broker::new(BrokerConfig::default());
    let now = Instant::now();
    for i in 0..RETAINED {
        broker.publish(
            Message {
                cluster_id: None,
                topic: text(&format!("site/{}/device/{i}/state", i % 100)),
                payload: Bytes::from_static(&[b'x'; 64]),
                qos,
                retain: true,
                properties: None,
                expires_at: None,
                publisher: None,
                id: 0,
            },
            now,
        );
    }
    // The first subscriber's stream also turns each retained message's buffers into shared
    // ones (once per message, for good: `Bytes` does that on its first clone); the second
    // shows what a stream itself costs.
    for (n, client) in ["first", "second"].into_iter().enumerate() {
        stream_to(&broker, client, qos, n == 0, now);
    }
}

fn stream_to(broker: &Arc<Broker>, client: &str, qos: QoS, first: bool, now: Instant) {
    let mut conn = Connection::new(broker.clone(), Arc::new(Quiet), None, now);
    conn.handle_packet(
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V311,
            clean_start: true,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: text(client),
            will: None,
            username: None,
            password: None,
        })),
        now,
    );
    let mut out = BytesMut::with_capacity(128 * 1024);
    conn.poll_transmit(&mut out, 64 * 1024, now);
    out.clear();
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let started = Instant::now();
    conn.handle_packet(
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: text("#"),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
        }),
        now,
    );
    let mut received = 0;
    loop {
        conn.poll_transmit(&mut out, 64 * 1024, now);

        let mut any = false;
        while let Some(packet) = Packet::decode(&mut out, ProtocolVersion::V311, u32::MAX).unwrap()
        {
            any = true;
            if let Packet::Publish(publish) = packet {
                received += 1;
                if publish.qos == QoS::AtLeastOnce {
                    conn.handle_packet(Packet::PubAck(Ack::new(publish.packet_id)), now);
                }
            }
        }
        if !any {
            break;
        }
    }
    let elapsed = started.elapsed();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    assert_eq!(received, RETAINED);
    println!(
        "retained_stream/{qos:?}/{client}: {RETAINED} messages to one `#` subscriber in \
         {:.1} ms ({:.0} msg/s), peak heap above the broker's {} KiB{}",
        elapsed.as_secs_f64() * 1e3,
        RETAINED as f64 / elapsed.as_secs_f64(),
        peak / 1024,
        if first {
            " (with the one-time sharing of the messages' buffers)"
        } else {
            ""
        }
    );
}

fn main() {
    // `cargo test --benches` runs this too: keep it to one quick pass there.
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        run(qos);
    }
}
