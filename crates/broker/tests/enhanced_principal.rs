//! What an enhanced authentication (MQTT 5 section 4.12) proves becomes the connection's
//! principal: at CONNECT (the username and access rules the exchange authenticated), and at
//! re-authentication (section 4.12.1: new rules and expiry replace the old; another user is
//! refused). The plain authenticator sees the CONNECT's Authentication Method.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tern_broker::{
    AuthDecision, AuthExchange, AuthStep, Authenticator, BrokerConfig, ClientAccess, Credentials,
    EnhancedAuthenticator, FilterAccess, Hooks, Principal, PrincipalAccess,
};
use tern_codec::{Auth, MqttStr, Packet, Properties, QoS, ReasonCode};

const METHOD: &str = "PROVE";

/// May touch the topics under one prefix (all of them for an empty prefix).
#[derive(Debug)]
struct Prefix(String);

impl ClientAccess for Prefix {
    fn may_write(&self, topic: &str) -> bool {
        topic.starts_with(&self.0)
    }
    fn may_read(&self, topic: &str) -> bool {
        topic.starts_with(&self.0)
    }
    fn classify(&self, filter: &str) -> FilterAccess {
        if filter.starts_with(&self.0) {
            FilterAccess::Granted
        } else {
            FilterAccess::Denied
        }
    }
}

/// A method for the tests: the data `user:prefix[:ttl_ms]` authenticates `user` with the
/// rules of `prefix` (and an expiry `ttl_ms` after `base`); the user `FAIL` is refused when the
/// principal is set.
struct Prove {
    base: Instant,
}

struct ProveExchange {
    base: Instant,
    /// Seen by `begin_for`: the principal the core had.
    known_user: Option<MqttStr>,
    proved: Option<(String, String, Option<u64>)>,
}

impl EnhancedAuthenticator for Prove {
    fn method(&self) -> &str {
        METHOD
    }
    fn begin(&self, _: &str, _: Option<&str>) -> Box<dyn AuthExchange> {
        unreachable!("the core calls begin_for")
    }
    fn begin_for(&self, principal: &Principal) -> Box<dyn AuthExchange> {
        Box::new(ProveExchange {
            base: self.base,
            known_user: principal.username.clone(),
            proved: None,
        })
    }
}

impl AuthExchange for ProveExchange {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        let text = std::str::from_utf8(data.unwrap_or_default()).unwrap();
        let mut fields = text.split(':');
        let user = fields.next().unwrap().to_owned();
        let prefix = fields.next().unwrap_or_default().to_owned();
        let ttl = fields.next().map(|ttl| ttl.parse().unwrap());
        self.proved = Some((user, prefix, ttl));
        AuthStep::Success(Some(Bytes::from_static(b"ok")))
    }

    fn authenticated(&mut self, principal: &mut Principal) -> Result<(), ReasonCode> {
        // begin_for saw the same principal the core now hands over.
        assert_eq!(principal.username, self.known_user);
        let (user, prefix, ttl) = self.proved.take().unwrap();
        if user == "FAIL" {
            return Err(ReasonCode::BadUserNameOrPassword);
        }
        // The core keeps these as they are, whatever the exchange does.
        principal.client_id = MqttStr::try_from("forged").unwrap();
        principal.username = Some(MqttStr::try_from(user.as_str()).unwrap());
        principal.access = Some(Arc::new(Prefix(prefix)));
        principal.expires_at = ttl.map(|ms| self.base + Duration::from_millis(ms));
        Ok(())
    }
}

/// The plain authenticator of a server that offers `PROVE`: no password needed for it, any
/// other method refused with 0x8C, a client with neither refused with 0x86.
struct Plain;

impl Authenticator for Plain {
    fn authenticate(&self, credentials: &Credentials<'_>) -> AuthDecision {
        match credentials.authentication_method {
            Some(METHOD) => AuthDecision::Allow(Principal::from_credentials(credentials)),
            Some(_) => AuthDecision::Deny(ReasonCode::BadAuthenticationMethod),
            None => AuthDecision::Deny(ReasonCode::BadUserNameOrPassword),
        }
    }
}

fn net() -> Net {
    let net = Net::with_config(BrokerConfig::default());
    let hooks = Hooks {
        authenticator: Arc::new(Plain),
        authorizer: Arc::new(PrincipalAccess::default()),
        enhanced: vec![Arc::new(Prove { base: net.now() })],
    };
    Net::with_hooks(BrokerConfig::default(), hooks)
}

fn auth(reason_code: ReasonCode, data: &str) -> Packet {
    Packet::Auth(Auth {
        reason_code,
        properties: Properties {
            authentication_method: Some(text(METHOD)),
            authentication_data: Some(Bytes::copy_from_slice(data.as_bytes())),
            ..Properties::default()
        },
    })
}

fn connect(net: &Net, id: &str, method: &str, data: &str) -> (Client, ReasonCode) {
    let mut connect = connect_packet(V5, id);
    connect.properties.authentication_method = Some(text(method));
    connect.properties.authentication_data = Some(Bytes::copy_from_slice(data.as_bytes()));
    let (client, connack) = net.connect(connect);
    (client, connack.reason_code)
}

/// The PUBACK's code, 0x00 Success for 0x10 No matching subscribers (also a success).
fn puback(client: &mut Client, topic: &str) -> ReasonCode {
    client.publish(topic, QoS::AtLeastOnce, b"x");
    match client.next() {
        Some(Packet::PubAck(ack)) if ack.reason_code == ReasonCode::NoMatchingSubscribers => {
            ReasonCode::Success
        }
        Some(Packet::PubAck(ack)) => ack.reason_code,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// Section 4.12 [MQTT-4.12.0-5]: the exchange at CONNECT sets who the client is: its access
/// rules apply from the first PUBLISH; the client id stays the core's.
#[test]
fn the_exchange_sets_the_principal_at_connect() {
    let net = net();
    let (mut alice, code) = connect(&net, "c1", METHOD, "alice:alice/");
    assert_eq!(code, ReasonCode::Success);
    assert_eq!(puback(&mut alice, "alice/x"), ReasonCode::Success);
    assert_eq!(puback(&mut alice, "bob/x"), ReasonCode::NotAuthorized);
    assert!(net.session("c1").is_some());
    assert!(net.session("forged").is_none());
}

/// [MQTT-4.12.0-4]: a refusal when the principal is set goes in CONNACK with its code.
#[test]
fn a_refused_principal_is_refused_in_connack() {
    let net = net();
    let (mut client, code) = connect(&net, "c2", METHOD, "FAIL:");
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    assert!(client.is_closed());
    assert_eq!(client.received(), vec![]);
}

/// [MQTT-4.12.0-1]: the plain authenticator sees the Authentication Method: a configured one
/// needs no password, another is refused with 0x8C Bad authentication method.
#[test]
fn the_plain_authenticator_sees_the_method() {
    let net = net();
    let (_, code) = connect(&net, "c3", "OTHER", "alice:");
    assert_eq!(code, ReasonCode::BadAuthenticationMethod);
    let (_, connack) = net.connect(connect_packet(V5, "c4"));
    assert_eq!(connack.reason_code, ReasonCode::BadUserNameOrPassword);
}

/// [MQTT-4.12.1-1, MQTT-3.15.2-1]: a re-authentication replaces the connection's access
/// rules (a subscription the new ones deny is removed) and its expiry (the connection is
/// closed with 0x87 when the new credentials expire).
#[test]
fn reauthentication_replaces_rules_and_expiry() {
    let net = net();
    let (mut alice, _) = connect(&net, "c5", METHOD, "alice:a/");
    let (mut other, _) = connect(&net, "c6", METHOD, "root:");
    assert!(!alice.subscribe("a/#", QoS::AtMostOnce).reason_codes[0].is_error());
    other.publish("a/1", QoS::AtMostOnce, b"before");
    assert_eq!(alice.payloads(), vec![Bytes::from_static(b"before")]);

    alice.send(auth(ReasonCode::ReAuthenticate, "alice:b/:5000"));
    match alice.next() {
        Some(Packet::Auth(auth)) => assert_eq!(auth.reason_code, ReasonCode::Success),
        other => panic!("expected AUTH, got {other:?}"),
    }
    assert_eq!(puback(&mut alice, "a/x"), ReasonCode::NotAuthorized);
    assert_eq!(puback(&mut alice, "b/x"), ReasonCode::Success);
    other.publish("a/1", QoS::AtMostOnce, b"after");
    assert_eq!(alice.payloads(), Vec::<Bytes>::new(), "a/# was re-checked");

    net.advance(4_999);
    assert!(!alice.is_closed());
    net.advance(1);
    assert_eq!(alice.disconnect_reason(), ReasonCode::NotAuthorized);
    assert!(!other.is_closed());
}

/// [MQTT-4.12.1-2]: a re-authentication as another user fails: DISCONNECT 0x87, and the
/// connection is closed.
#[test]
fn reauthentication_as_another_user_is_refused() {
    let net = net();
    let (mut alice, _) = connect(&net, "c7", METHOD, "alice:a/");
    alice.send(auth(ReasonCode::ReAuthenticate, "mallory:"));
    assert_eq!(alice.disconnect_reason(), ReasonCode::NotAuthorized);
}

/// [MQTT-4.12.1-2]: a refusal when the re-authenticated principal is set ends the connection;
/// a code DISCONNECT cannot carry (0x86) becomes 0x87 Not authorized.
#[test]
fn a_refused_reauthentication_disconnects() {
    let net = net();
    let (mut alice, _) = connect(&net, "c8", METHOD, "alice:a/");
    alice.send(auth(ReasonCode::ReAuthenticate, "FAIL:"));
    assert_eq!(alice.disconnect_reason(), ReasonCode::NotAuthorized);
}
