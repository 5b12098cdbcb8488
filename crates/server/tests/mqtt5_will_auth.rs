//! MQTT 5 will delay and will properties (section 3.1.3.2), and enhanced authentication with
//! re-authentication (section 4.12).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::v5::{Client5, QoS};
use common::*;
use tern_codec::{Auth, Disconnect, Packet, Properties, ProtocolVersion, ReasonCode, Will};
use tern_server::broker::{AuthExchange, AuthStep, EnhancedAuthenticator, Hooks};

const V5: ProtocolVersion = ProtocolVersion::V5;

fn with_will(id: &str, delay: u32, session_expiry: u32) -> tern_codec::Connect {
    let mut connect = connect_packet(V5, id, false, 30);
    connect.properties.session_expiry_interval = Some(session_expiry);
    connect.will = Some(Will {
        topic: text(&format!("wills/{id}")),
        payload: Bytes::from_static(b"gone"),
        qos: tern_codec::QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: Some(delay),
            content_type: Some(text("text/plain")),
            ..Properties::default()
        },
    });
    connect
}

async fn watcher(broker: &TestBroker) -> Client5 {
    let mut client = Client5::simple(broker.addr, "will-watcher").await;
    client.subscribe("wills/#", QoS::AtLeastOnce).await;
    client
}

#[tokio::test]
async fn will_waits_for_its_delay_mqtt_3_1_3_9() {
    let broker = start().await;
    let mut watcher = watcher(&broker).await;
    let (raw, _) = Raw::connected(broker.addr, V5, with_will("delayed", 1, 60)).await;
    let dropped_at = Instant::now();
    drop(raw);
    let publish = watcher.recv().await;
    let waited = dropped_at.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "published after {waited:?}"
    );
    assert_eq!(&publish.payload[..], b"gone");
    assert_eq!(
        publish.properties.unwrap().content_type.as_deref(),
        Some("text/plain"),
        "will properties travel with it"
    );
}

#[tokio::test]
async fn will_is_dropped_when_the_session_resumes_within_the_delay() {
    let broker = start().await;
    let mut watcher = watcher(&broker).await;
    let (raw, _) = Raw::connected(broker.addr, V5, with_will("resumes", 2, 60)).await;
    drop(raw);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_raw, connack) =
        Raw::connected(broker.addr, V5, connect_packet(V5, "resumes", false, 30)).await;
    assert!(connack.session_present);
    watcher.expect_silence(Duration::from_millis(2500)).await;
}

#[tokio::test]
async fn will_goes_out_when_the_session_ends_before_the_delay() {
    let broker = start().await;
    let mut watcher = watcher(&broker).await;
    let (raw, _) = Raw::connected(broker.addr, V5, with_will("short-session", 30, 1)).await;
    let dropped_at = Instant::now();
    drop(raw);
    watcher.recv().await;
    assert!(
        dropped_at.elapsed() < Duration::from_secs(5),
        "at the session's end, not after 30 s"
    );
}

#[tokio::test]
async fn disconnect_with_will_message_0x04_publishes_it() {
    let broker = start().await;
    let mut watcher = watcher(&broker).await;
    let (mut raw, _) = Raw::connected(broker.addr, V5, with_will("asks-for-will", 0, 0)).await;
    raw.send(&Packet::Disconnect(Disconnect::new(
        ReasonCode::DisconnectWithWillMessage,
    )))
    .await;
    raw.until_closed().await;
    assert_eq!(&watcher.recv().await.payload[..], b"gone");
    // A normal disconnection does not.
    let (mut raw, _) = Raw::connected(broker.addr, V5, with_will("normal-bye", 0, 0)).await;
    raw.send(&Packet::Disconnect(Disconnect::default())).await;
    raw.until_closed().await;
    watcher.expect_silence(Duration::from_millis(300)).await;
}

/// A challenge-response method for the tests: the server sends a nonce, the client answers with
/// the nonce reversed.
struct ReverseEcho;

struct ReverseExchange {
    nonce: Option<Vec<u8>>,
}

impl EnhancedAuthenticator for ReverseEcho {
    fn method(&self) -> &str {
        "REVERSE-ECHO"
    }

    fn begin(&self, _client_id: &str, _username: Option<&str>) -> Box<dyn AuthExchange> {
        Box::new(ReverseExchange { nonce: None })
    }
}

impl AuthExchange for ReverseExchange {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        match self.nonce.take() {
            None => {
                let nonce = b"nonce-123".to_vec();
                self.nonce = Some(nonce.clone());
                AuthStep::Continue(Some(Bytes::from(nonce)))
            }
            Some(nonce) => {
                let mut expected = nonce;
                expected.reverse();
                if data == Some(&expected[..]) {
                    AuthStep::Success(Some(Bytes::from_static(b"welcome")))
                } else {
                    AuthStep::Failure(ReasonCode::NotAuthorized)
                }
            }
        }
    }
}

fn auth(reason_code: ReasonCode, data: &'static [u8]) -> Packet {
    Packet::Auth(Auth {
        reason_code,
        properties: Properties {
            authentication_method: Some(text("REVERSE-ECHO")),
            authentication_data: Some(Bytes::from_static(data)),
            ..Properties::default()
        },
    })
}

async fn start_auth() -> TestBroker {
    let hooks = Hooks {
        enhanced: vec![Arc::new(ReverseEcho)],
        ..Hooks::default()
    };
    start_with_hooks(config(), hooks).await
}

fn connect_with_method(id: &str) -> Packet {
    let mut connect = connect_packet(V5, id, true, 30);
    connect.properties.authentication_method = Some(text("REVERSE-ECHO"));
    Packet::Connect(Box::new(connect))
}

#[tokio::test]
async fn enhanced_authentication_exchange_then_connack_mqtt_4_12() {
    let broker = start_auth().await;
    let mut raw = Raw::open(broker.addr, V5).await;
    raw.send(&connect_with_method("enhanced")).await;
    let Some(Packet::Auth(challenge)) = raw.recv().await else {
        panic!()
    };
    assert_eq!(challenge.reason_code, ReasonCode::ContinueAuthentication);
    assert_eq!(
        challenge.properties.authentication_data.as_deref(),
        Some(&b"nonce-123"[..])
    );
    raw.send(&auth(ReasonCode::ContinueAuthentication, b"321-ecnon"))
        .await;
    let Some(Packet::ConnAck(connack)) = raw.recv().await else {
        panic!()
    };
    assert_eq!(connack.reason_code, ReasonCode::Success);
    assert_eq!(
        connack.properties.authentication_method.as_deref(),
        Some("REVERSE-ECHO")
    );
    assert_eq!(
        connack.properties.authentication_data.as_deref(),
        Some(&b"welcome"[..])
    );

    // Re-authentication on the live connection.
    raw.send(&auth(ReasonCode::ReAuthenticate, b"")).await;
    let Some(Packet::Auth(challenge)) = raw.recv().await else {
        panic!()
    };
    assert_eq!(challenge.reason_code, ReasonCode::ContinueAuthentication);
    raw.send(&auth(ReasonCode::ContinueAuthentication, b"321-ecnon"))
        .await;
    let Some(Packet::Auth(done)) = raw.recv().await else {
        panic!()
    };
    assert_eq!(done.reason_code, ReasonCode::Success);

    // A failed re-authentication ends the connection.
    raw.send(&auth(ReasonCode::ReAuthenticate, b"")).await;
    assert!(matches!(raw.recv().await, Some(Packet::Auth(_))));
    raw.send(&auth(ReasonCode::ContinueAuthentication, b"wrong"))
        .await;
    let packets = raw.until_closed().await;
    let Some(Packet::Disconnect(disconnect)) = packets.last() else {
        panic!("{packets:?}")
    };
    assert_eq!(disconnect.reason_code, ReasonCode::NotAuthorized);
}

#[tokio::test]
async fn failed_enhanced_authentication_is_refused_in_connack() {
    let broker = start_auth().await;
    let mut raw = Raw::open(broker.addr, V5).await;
    raw.send(&connect_with_method("enhanced-bad")).await;
    assert!(matches!(raw.recv().await, Some(Packet::Auth(_))));
    raw.send(&auth(ReasonCode::ContinueAuthentication, b"nope"))
        .await;
    let Some(Packet::ConnAck(connack)) = raw.recv().await else {
        panic!()
    };
    assert_eq!(connack.reason_code, ReasonCode::NotAuthorized);
    assert_eq!(raw.until_closed().await, vec![]);
}

#[tokio::test]
async fn auth_without_a_method_at_connect_is_a_protocol_error() {
    let broker = start_auth().await;
    let (mut raw, _) =
        Raw::connected(broker.addr, V5, connect_packet(V5, "no-method", true, 30)).await;
    raw.send(&auth(ReasonCode::ReAuthenticate, b"")).await;
    let packets = raw.until_closed().await;
    let Some(Packet::Disconnect(disconnect)) = packets.last() else {
        panic!("{packets:?}")
    };
    assert_eq!(disconnect.reason_code, ReasonCode::ProtocolError);
}
