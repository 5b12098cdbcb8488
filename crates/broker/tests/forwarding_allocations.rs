//! The QoS 0 forwarding path allocates once per message, whatever the number of subscribers:
//! decoding a PUBLISH from the read buffer, matching it, queueing it for each subscriber and
//! encoding it into the subscribers' write buffers reuses what is already there, but for the
//! one shared copy of the message that all its deliveries count on (see `Broker::route`).
//! Proven with a counting allocator, on the broker core alone (the server adds reads and writes
//! around it, not allocations per message).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use common::{connect, text};
use tern_broker::{Broker, BrokerConfig, Connection};
use tern_codec::{
    Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe, Subscription, SubscriptionOptions,
};

/// Counts allocations made by the current thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed unchanged to the system allocator; the counter is a
// thread-local `Cell` with a const initialiser, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: forwarded with the caller's layout, as GlobalAlloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|count| count.set(count.get() + 1));
        // SAFETY: as for `dealloc`; `new_size` comes from the caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn qos0_forwarding_allocates_once_per_message_not_per_subscriber() {
    const SUBSCRIBERS: usize = 10;
    const MESSAGES: usize = 2_000;
    let broker = Broker::new(BrokerConfig::default());
    let now = Instant::now();
    let mut publisher = connect(&broker, "publisher", true, now);
    let mut subscribers: Vec<Connection> = (0..SUBSCRIBERS)
        .map(|n| {
            let mut sub = connect(&broker, &format!("subscriber-{n}"), true, now);
            sub.handle_packet(
                Packet::Subscribe(Subscribe {
                    packet_id: 1,
                    properties: Properties::default(),
                    subscriptions: vec![Subscription {
                        filter: text("sensors/+/temperature"),
                        options: SubscriptionOptions::default(),
                    }],
                }),
                now,
            );
            let mut out = BytesMut::new();
            sub.poll_transmit(&mut out, usize::MAX, now);
            sub
        })
        .collect();

    // The bytes of every PUBLISH, as they would arrive, in one read buffer.
    let mut wire = BytesMut::new();
    for n in 0..MESSAGES * 2 {
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: text(&format!("sensors/{}/temperature", n % 7)),
            packet_id: 0,
            properties: Properties::default(),
            payload: Bytes::from_static(&[0x42; 64]),
        };
        Packet::Publish(publish)
            .encode(ProtocolVersion::V311, &mut wire)
            .unwrap();
    }
    let mut outs: Vec<BytesMut> = (0..SUBSCRIBERS)
        .map(|_| BytesMut::with_capacity(1 << 20))
        .collect();

    let mut forward = |count: usize, outs: &mut Vec<BytesMut>| {
        for _ in 0..count {
            let packet = Packet::decode(&mut wire, ProtocolVersion::V311, u32::MAX)
                .unwrap()
                .unwrap();
            publisher.handle_packet(packet, now);
            for (sub, out) in subscribers.iter_mut().zip(outs.iter_mut()) {
                out.clear();
                sub.poll_transmit(out, usize::MAX, now);
                assert!(!out.is_empty(), "the subscriber got the message");
            }
        }
    };
    // Warm up: queues, the routing vector and the buffers reach their working size.
    forward(MESSAGES, &mut outs);
    // The warm-up did allocate (queues, buffers): the counter sees allocations.
    assert!(allocations() > 0);
    let before = allocations();
    forward(MESSAGES, &mut outs);
    let per_message = (allocations() - before) as f64 / MESSAGES as f64;
    assert!(
        per_message < 1.01,
        "{per_message} allocations per message forwarded to {SUBSCRIBERS} subscribers"
    );
}
