//! MQTT 5 enhanced authentication and re-authentication (section 4.12): AUTH packets before
//! CONNACK, a refusal in CONNACK, re-authentication on a live connection, and AUTH from a
//! client that did not authenticate that way.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use tern_broker::{AuthExchange, AuthStep, BrokerConfig, EnhancedAuthenticator, Hooks};
use tern_codec::{Auth, Packet, Properties, ReasonCode};

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

fn net_with_auth(config: BrokerConfig) -> Net {
    let hooks = Hooks {
        enhanced: vec![Arc::new(ReverseEcho)],
        ..Hooks::default()
    };
    Net::with_hooks(config, hooks)
}

/// Opens a connection and sends CONNECT naming the method.
fn connect_with_method(net: &Net, id: &str) -> Client {
    let mut connect = connect_packet(V5, id);
    connect.properties.authentication_method = Some(text("REVERSE-ECHO"));
    let mut client = net.open(V5);
    client.send(Packet::Connect(Box::new(connect)));
    client
}

fn challenge(client: &mut Client) -> Auth {
    match client.received()[..] {
        [Packet::Auth(ref auth)] => auth.clone(),
        ref other => panic!("expected AUTH, got {other:?}"),
    }
}

#[test]
fn enhanced_authentication_exchange_then_connack_mqtt_4_12() {
    let net = net_with_auth(BrokerConfig::default());
    let mut client = connect_with_method(&net, "enhanced");
    let first = challenge(&mut client);
    assert_eq!(first.reason_code, ReasonCode::ContinueAuthentication);
    assert_eq!(
        first.properties.authentication_data.as_deref(),
        Some(&b"nonce-123"[..])
    );
    assert!(
        net.session("enhanced").is_none(),
        "no session before CONNACK"
    );
    client.send(auth(ReasonCode::ContinueAuthentication, b"321-ecnon"));
    let Some(Packet::ConnAck(connack)) = client.next() else {
        panic!("expected CONNACK")
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
    client.send(auth(ReasonCode::ReAuthenticate, b""));
    let again = challenge(&mut client);
    assert_eq!(again.reason_code, ReasonCode::ContinueAuthentication);
    client.send(auth(ReasonCode::ContinueAuthentication, b"321-ecnon"));
    assert_eq!(challenge(&mut client).reason_code, ReasonCode::Success);
    assert!(!client.is_closed());

    // A failed re-authentication ends the connection.
    client.send(auth(ReasonCode::ReAuthenticate, b""));
    challenge(&mut client);
    client.send(auth(ReasonCode::ContinueAuthentication, b"wrong"));
    assert_eq!(client.disconnect_reason(), ReasonCode::NotAuthorized);
}

#[test]
fn failed_enhanced_authentication_is_refused_in_connack() {
    let net = net_with_auth(BrokerConfig::default());
    let mut client = connect_with_method(&net, "enhanced-bad");
    challenge(&mut client);
    client.send(auth(ReasonCode::ContinueAuthentication, b"nope"));
    let Some(Packet::ConnAck(connack)) = client.next() else {
        panic!("expected CONNACK")
    };
    assert_eq!(connack.reason_code, ReasonCode::NotAuthorized);
    client.closed_silently();
    assert!(net.session("enhanced-bad").is_none());
}

#[test]
fn auth_without_a_method_at_connect_is_a_protocol_error() {
    let net = net_with_auth(BrokerConfig::default());
    let mut client = net.connected(V5, "no-method");
    client.send(auth(ReasonCode::ReAuthenticate, b""));
    assert_eq!(client.disconnect_reason(), ReasonCode::ProtocolError);
}
