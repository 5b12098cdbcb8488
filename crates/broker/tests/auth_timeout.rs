//! An enhanced authentication exchange (MQTT 5, section 4.12) that never finishes is ended by
//! the connect timeout with its own close reason and a CONNACK 0x87, not reported as a
//! keep-alive timeout. Driven on the harness with a fake clock.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{Quiet, text};
use tern_broker::{
    AuthExchange, AuthStep, Broker, BrokerConfig, CloseReason, Connection, EnhancedAuthenticator,
    Hooks,
};
use tern_codec::{Auth, Connect, Packet, Properties, ProtocolVersion, ReasonCode};

const METHOD: &str = "NEVER-DONE";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A method whose exchange always asks for one more step.
struct NeverDone;

struct Endless;

impl EnhancedAuthenticator for NeverDone {
    fn method(&self) -> &str {
        METHOD
    }

    fn begin(&self, _client_id: &str, _username: Option<&str>) -> Box<dyn AuthExchange> {
        Box::new(Endless)
    }
}

impl AuthExchange for Endless {
    fn step(&mut self, _data: Option<&[u8]>) -> AuthStep {
        AuthStep::Continue(Some(Bytes::from_static(b"again")))
    }
}

fn auth_properties() -> Properties {
    Properties {
        authentication_method: Some(text(METHOD)),
        authentication_data: Some(Bytes::from_static(b"hello")),
        ..Properties::default()
    }
}

/// Everything the connection sends at `now`, decoded as MQTT 5.
fn transmit(conn: &mut Connection, now: Instant) -> Vec<Packet> {
    let mut out = BytesMut::new();
    conn.poll_transmit(&mut out, usize::MAX, now);
    let mut packets = Vec::new();
    while let Some(packet) = Packet::decode(&mut out, ProtocolVersion::V5, u32::MAX).unwrap() {
        packets.push(packet);
    }
    packets
}

/// A broker with the never-ending method, and a connection that started the exchange at `start`
/// (CONNECT with the method, AUTH 0x18 received).
fn authenticating(start: Instant) -> (Arc<Broker>, Connection) {
    let config = BrokerConfig {
        connect_timeout: CONNECT_TIMEOUT,
        ..BrokerConfig::default()
    };
    let hooks = Hooks {
        enhanced: vec![Arc::new(NeverDone)],
        ..Hooks::default()
    };
    let broker = Broker::with_hooks(config, hooks);
    let mut conn = Connection::new(broker.clone(), Arc::new(Quiet), None, start);
    let connect = Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        properties: auth_properties(),
        client_id: text("slow-auth"),
        will: None,
        username: None,
        password: None,
    };
    conn.handle_packet(Packet::Connect(Box::new(connect)), start);
    match transmit(&mut conn, start).as_slice() {
        [Packet::Auth(auth)] => assert_eq!(auth.reason_code, ReasonCode::ContinueAuthentication),
        other => panic!("expected AUTH 0x18, got {other:?}"),
    }
    (broker, conn)
}

/// The exchange goes on (the client answers every AUTH) but does not finish: at the connect
/// deadline, counted from the connection's start, it is refused with CONNACK 0x87 and closed as
/// an authentication timeout [MQTT-4.12.0-4]; no DISCONNECT before CONNACK [MQTT-3.14.0-1].
#[test]
fn an_unfinished_auth_exchange_is_refused_with_its_own_reason_mqtt_4_12_0_4() {
    let start = Instant::now();
    let (broker, mut conn) = authenticating(start);
    let deadline = start + CONNECT_TIMEOUT;
    assert_eq!(conn.poll_timeout(), Some(deadline));

    // Half-way, the client answers; the exchange asks again, and the deadline does not move.
    let halfway = start + CONNECT_TIMEOUT / 2;
    conn.handle_packet(
        Packet::Auth(Auth {
            reason_code: ReasonCode::ContinueAuthentication,
            properties: auth_properties(),
        }),
        halfway,
    );
    assert_eq!(transmit(&mut conn, halfway).len(), 1, "AUTH 0x18 again");
    assert_eq!(conn.poll_timeout(), Some(deadline));

    conn.handle_timeout(deadline - Duration::from_millis(1));
    assert!(!conn.is_closed(), "closed before the deadline");

    let refused_before = broker.metrics().snapshot().connections_refused;
    conn.handle_timeout(deadline);
    assert_eq!(
        conn.close_reason(),
        Some(&CloseReason::AuthenticationTimeout)
    );
    match transmit(&mut conn, deadline).as_slice() {
        [Packet::ConnAck(connack)] => {
            assert_eq!(connack.reason_code, ReasonCode::NotAuthorized);
            assert!(!connack.session_present);
        }
        other => panic!("expected CONNACK 0x87 alone, got {other:?}"),
    }
    assert_eq!(
        broker.metrics().snapshot().connections_refused,
        refused_before + 1
    );
    assert_eq!(conn.poll_timeout(), None);
}

/// The reason the server logs names the authentication, not the keep-alive.
#[test]
fn the_authentication_timeout_is_logged_as_such() {
    let start = Instant::now();
    let (_broker, mut conn) = authenticating(start);
    conn.handle_timeout(start + CONNECT_TIMEOUT);
    let logged = conn.close_reason().map(ToString::to_string);
    assert_eq!(
        logged.as_deref(),
        Some("enhanced authentication not completed in time")
    );
}
