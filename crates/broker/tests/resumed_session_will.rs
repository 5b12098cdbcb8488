//! The stored will of a session that a new connection resumes. Found by the core fuzz target
//! (`fuzz/fuzz_targets/core.rs`, a take-over followed by its `Restart` operation).

mod common;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::{Quiet, Recorder, connect, text, transmit};
use tern_broker::persist::Persistence;
use tern_broker::{Broker, BrokerConfig, Connection, Hooks};
use tern_codec::{Connect, Packet, Properties, ProtocolVersion, QoS, Will};

fn connect_with_will(broker: &Arc<Broker>, now: Instant) -> Connection {
    let mut conn = Connection::new(broker.clone(), Arc::new(Quiet), None, now);
    conn.handle_packet(
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V311,
            clean_start: false,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: text("c"),
            will: Some(Will {
                topic: text("w"),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::ExactlyOnce,
                retain: false,
                properties: Properties::default(),
            }),
            username: None,
            password: None,
        })),
        now,
    );
    transmit(&mut conn, now);
    conn
}

/// A connection that takes over a stored session without a will of its own makes the store
/// forget the previous connection's will: that will is published at the take-over, and a
/// stored copy would be published a second time by the next restart (and, at QoS 2, reach its
/// subscribers twice) [MQTT-3.1.4-3].
#[test]
fn takeover_forgets_the_stored_will_mqtt_3_1_4_3() {
    let recorder = Arc::new(Recorder::default());
    let broker = Broker::with_persistence(
        BrokerConfig::default(),
        Hooks::default(),
        Some(recorder.clone() as Arc<dyn Persistence>),
    );
    let now = Instant::now();
    let mut first = connect_with_will(&broker, now);
    assert!(recorder.take_kinds().contains(&"Will"));

    let _second = connect(&broker, "c", false, now);
    // The old connection finds out and publishes its will.
    transmit(&mut first, now);
    assert!(first.is_closed());
    let kinds = recorder.take_kinds();
    assert!(
        kinds.contains(&"WillCleared"),
        "the stored will is forgotten: {kinds:?}"
    );
}
