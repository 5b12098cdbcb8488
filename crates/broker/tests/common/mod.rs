//! Helpers shared by the core's integration tests, which drive `Connection`s directly.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tern_broker::{Broker, Connection, Wakeup};
use tern_codec::{Connect, MqttStr, Packet, Properties, ProtocolVersion};

/// A wakeup that does nothing: the tests poll their connections themselves.
pub struct Quiet;

impl Wakeup for Quiet {
    fn wake(&self) {}
}

pub fn text(value: &str) -> MqttStr {
    MqttStr::try_from(value).unwrap()
}

/// A 3.1.1 connection that has sent CONNECT (`clean_start` false: a session that never
/// expires); what the broker answered is polled and dropped.
pub fn connect(broker: &Arc<Broker>, id: &str, clean_start: bool, now: Instant) -> Connection {
    let mut conn = Connection::new(broker.clone(), Arc::new(Quiet), None, now);
    conn.handle_packet(
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V311,
            clean_start,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: text(id),
            will: None,
            username: None,
            password: None,
        })),
        now,
    );
    let mut out = BytesMut::new();
    conn.poll_transmit(&mut out, usize::MAX, now);
    conn
}
