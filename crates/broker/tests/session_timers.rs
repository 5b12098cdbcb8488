//! The timers of offline sessions are removed when the client comes back or the session ends,
//! so reconnects do not pile them up (each held its session alive until it fired).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Quiet, text, transmit};
use tern_broker::{Broker, BrokerConfig, Connection};
use tern_codec::{Connect, Packet, Properties, ProtocolVersion, QoS, Will};

const EXPIRY: u32 = 3600;

fn connect_v5(broker: &Arc<Broker>, will_delay: Option<u32>, now: Instant) -> Connection {
    let mut conn = Connection::new(broker.clone(), Arc::new(Quiet), None, now);
    conn.handle_packet(
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V5,
            clean_start: false,
            keep_alive: 60,
            properties: Properties {
                session_expiry_interval: Some(EXPIRY),
                ..Properties::default()
            },
            client_id: text("roamer"),
            will: will_delay.map(|delay| Will {
                topic: text("status/roamer"),
                payload: Bytes::from_static(b"offline"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Properties {
                    will_delay_interval: Some(delay),
                    ..Properties::default()
                },
            }),
            username: None,
            password: None,
        })),
        now,
    );
    let mut out = bytes::BytesMut::new();
    conn.poll_transmit(&mut out, usize::MAX, now);
    assert!(conn.is_connected());
    conn
}

#[test]
fn ten_thousand_reconnects_leave_one_expiry_timer() {
    let broker = Broker::new(BrokerConfig::default());
    let start = Instant::now();
    let mut now = start;
    for _ in 0..10_000 {
        let mut conn = connect_v5(&broker, None, now);
        now += Duration::from_millis(10);
        conn.handle_transport_closed(now);
    }
    assert_eq!(broker.pending_timers(), 1);
    // The one left still ends the session when it runs out [MQTT-3.1.2-23].
    broker.handle_timeout(now + Duration::from_secs(u64::from(EXPIRY)));
    assert_eq!(broker.session_count(), 0);
    assert_eq!(broker.pending_timers(), 0);
}

#[test]
fn reconnects_within_the_will_delay_leave_no_will_timer() {
    let broker = Broker::new(BrokerConfig::default());
    let mut now = Instant::now();
    for _ in 0..1_000 {
        let mut conn = connect_v5(&broker, Some(60), now);
        now += Duration::from_millis(10);
        // Lost without DISCONNECT: the will waits for its delay.
        conn.handle_transport_closed(now);
    }
    // The last connection's expiry and will.
    assert_eq!(broker.pending_timers(), 2);
    // Back within the delay: neither the will [MQTT-3.1.3-9] nor the expiry stays.
    let _online = connect_v5(&broker, None, now + Duration::from_secs(1));
    assert_eq!(broker.pending_timers(), 0);
}

#[test]
fn a_will_still_fires_after_its_delay() {
    let broker = Broker::new(BrokerConfig::default());
    let now = Instant::now();
    let mut watcher = common::connect(&broker, "watcher", true, now);
    watcher.handle_packet(
        Packet::Subscribe(tern_codec::Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            subscriptions: vec![tern_codec::Subscription {
                filter: text("status/#"),
                options: Default::default(),
            }],
        }),
        now,
    );
    transmit(&mut watcher, now);
    let mut conn = connect_v5(&broker, Some(5), now);
    conn.handle_transport_closed(now);
    broker.handle_timeout(now + Duration::from_secs(4));
    assert!(transmit(&mut watcher, now).is_empty());
    broker.handle_timeout(now + Duration::from_secs(5));
    let got = transmit(&mut watcher, now + Duration::from_secs(5));
    assert!(matches!(got.as_slice(), [Packet::Publish(p)] if p.topic.as_str() == "status/roamer"));
    // The expiry timer remains; the will's is gone.
    assert_eq!(broker.pending_timers(), 1);
}
