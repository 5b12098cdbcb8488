//! Authentication that answers later (issue 12, "decisions that may wait"): the core's
//! authenticator defers a CONNECT, the connection waits taking no input, the server decides and
//! hands the answer back with `handle_auth_result` (or the request's completion handle), and the
//! connect timeout bounds the wait. The principal the answer names stays with the connection
//! and reaches the authorizer; credentials that expire end the connection. Driven on the
//! harness with a fake clock.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Net, V5, V311, connect_packet, text};
use tern_broker::{
    AuthDecision, AuthExchange, AuthStep, Authenticator, Authorizer, BrokerConfig, CloseReason,
    Credentials, EnhancedAuthenticator, Hooks, Principal, PrincipalAccess,
};
use tern_codec::{Packet, Properties, QoS, ReasonCode};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Defers every CONNECT, and records the usernames it was asked about.
#[derive(Default)]
struct Later {
    asked: Mutex<Vec<Option<String>>>,
}

impl Authenticator for Later {
    fn authenticate(&self, credentials: &Credentials<'_>) -> AuthDecision {
        self.asked
            .lock()
            .unwrap()
            .push(credentials.username.map(str::to_owned));
        AuthDecision::Defer
    }
}

/// Records the principals it is asked about; allows everything.
#[derive(Default)]
struct Recording {
    seen: Mutex<Vec<Principal>>,
}

impl Authorizer for Recording {
    fn may_publish(&self, client: &Principal, _: &str) -> bool {
        self.seen.lock().unwrap().push(client.clone());
        true
    }

    fn may_subscribe(&self, _: &Principal, _: &str) -> bool {
        true
    }
}

/// A one-step enhanced method: the client's data must be "let-me-in".
struct OneStep;

struct OneStepExchange;

impl EnhancedAuthenticator for OneStep {
    fn method(&self) -> &str {
        "ONE-STEP"
    }

    fn begin(&self, _: &str, _: Option<&str>) -> Box<dyn AuthExchange> {
        Box::new(OneStepExchange)
    }
}

impl AuthExchange for OneStepExchange {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        if data == Some(b"let-me-in") {
            AuthStep::Success(None)
        } else {
            AuthStep::Failure(ReasonCode::NotAuthorized)
        }
    }
}

fn config() -> BrokerConfig {
    BrokerConfig {
        connect_timeout: CONNECT_TIMEOUT,
        ..BrokerConfig::default()
    }
}

fn deferring(authorizer: Arc<dyn Authorizer>) -> (Net, Arc<Later>) {
    let later = Arc::new(Later::default());
    let net = Net::with_hooks(
        config(),
        Hooks {
            authenticator: later.clone(),
            authorizer,
            enhanced: vec![Arc::new(OneStep)],
        },
    );
    (net, later)
}

fn principal(client_id: &str, username: Option<&str>) -> Principal {
    Principal {
        client_id: text(client_id),
        username: username.map(text),
        peer: None,
        transport: None,
        access: None,
        expires_at: None,
    }
}

fn connack(packets: &[Packet]) -> &tern_codec::ConnAck {
    match packets.first() {
        Some(Packet::ConnAck(connack)) => connack,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// A deferred CONNECT gets no CONNACK and takes no input until the answer; an Allow then
/// accepts it [MQTT-3.1.4-5: nothing after CONNECT is processed before it is authenticated].
#[test]
fn a_deferred_connect_is_accepted_when_the_answer_allows_it() {
    for version in [V311, V5] {
        let (net, later) = deferring(Arc::new(tern_broker::DefaultAccess));
        let mut client = net.open(version);
        let mut connect = connect_packet(version, "d1");
        connect.username = Some(text("alice"));
        connect.password = Some(Bytes::from_static(b"secret"));
        client.send(Packet::Connect(Box::new(connect)));
        client.nothing();
        assert!(!client.wants_input(), "no input while deciding");
        let request = client.take_auth_request().expect("a request");
        assert!(client.take_auth_request().is_none(), "given once");
        assert_eq!(request.client_id, "d1");
        assert_eq!(request.username.as_deref(), Some("alice"));
        assert_eq!(request.password.as_deref(), Some(&b"secret"[..]));
        assert_eq!(request.protocol, version);
        assert_eq!(
            later.asked.lock().unwrap().as_slice(),
            &[Some("alice".to_owned())]
        );
        client.auth_result(request.id, Ok(principal("d1", Some("alice"))));
        assert_eq!(connack(&client.received()).reason_code, ReasonCode::Success);
        assert!(client.wants_input());
        assert!(net.session("d1").is_some());
    }
}

/// A deferred refusal is a CONNACK with the authenticator's code, then the close
/// [MQTT-3.2.2-4 / MQTT-3.1.4-3 ... the server sends CONNACK with a non-zero code and closes].
#[test]
fn a_deferred_refusal_is_a_connack_with_its_code() {
    for (version, code) in [
        (V311, ReasonCode::BadUserNameOrPassword),
        (V5, ReasonCode::BadUserNameOrPassword),
        (V5, ReasonCode::Banned),
    ] {
        let (net, _) = deferring(Arc::new(tern_broker::DefaultAccess));
        let mut client = net.open(version);
        client.send(Packet::Connect(Box::new(connect_packet(version, "d2"))));
        let request = client.take_auth_request().unwrap();
        client.auth_result(request.id, Err(code));
        assert_eq!(connack(&client.received()).reason_code, code);
        assert!(client.is_closed());
        assert_eq!(
            client.close_reason(),
            Some(CloseReason::ConnectRefused(code))
        );
        assert!(net.session("d2").is_none());
    }
}

/// A code CONNACK cannot carry (a DISCONNECT-only one, or a success) fails closed as 0x87.
#[test]
fn a_refusal_code_connack_cannot_carry_becomes_not_authorized() {
    let (net, _) = deferring(Arc::new(tern_broker::DefaultAccess));
    let mut client = net.open(V5);
    client.send(Packet::Connect(Box::new(connect_packet(V5, "d3"))));
    let request = client.take_auth_request().unwrap();
    client.auth_result(request.id, Err(ReasonCode::Success));
    assert_eq!(
        connack(&client.received()).reason_code,
        ReasonCode::NotAuthorized
    );
}

/// No answer within the connect timeout: refused with CONNACK 0x88 Server unavailable (3.1.1
/// return code 3), failing closed, and a late answer changes nothing.
#[test]
fn an_unanswered_deferral_is_refused_at_the_connect_timeout() {
    for version in [V311, V5] {
        let (net, _) = deferring(Arc::new(tern_broker::DefaultAccess));
        let mut client = net.open(version);
        client.send(Packet::Connect(Box::new(connect_packet(version, "d4"))));
        let request = client.take_auth_request().unwrap();
        net.advance(CONNECT_TIMEOUT.as_millis() as u64 - 1);
        client.nothing();
        net.advance(1);
        assert_eq!(
            connack(&client.received()).reason_code,
            ReasonCode::ServerUnavailable
        );
        assert!(client.is_closed());
        assert_eq!(
            client.close_reason(),
            Some(CloseReason::AuthenticatorTimeout)
        );
        client.auth_result(request.id, Ok(principal("d4", None)));
        client.nothing();
        assert!(net.session("d4").is_none());
    }
}

/// Packets handed over while the CONNECT is being decided are not processed before the answer
/// [MQTT-3.1.4-5]; after an Allow they are, in order; after a refusal, never.
#[test]
fn packets_after_a_deferred_connect_wait_for_the_answer() {
    let (net, _) = deferring(Arc::new(tern_broker::DefaultAccess));
    // A subscriber, let in at once by answering its request.
    let mut subscriber = net.open(V311);
    subscriber.send(Packet::Connect(Box::new(connect_packet(V311, "sub"))));
    let request = subscriber.take_auth_request().unwrap();
    subscriber.auth_result(request.id, Ok(principal("sub", None)));
    subscriber.received();
    subscriber.subscribe("t", QoS::AtMostOnce);

    let mut publisher = net.open(V311);
    publisher.send(Packet::Connect(Box::new(connect_packet(V311, "pub"))));
    publisher.publish("t", QoS::AtMostOnce, b"early");
    subscriber.nothing();
    let request = publisher.take_auth_request().unwrap();
    publisher.auth_result(request.id, Ok(principal("pub", None)));
    assert_eq!(
        connack(&publisher.received()).reason_code,
        ReasonCode::Success
    );
    assert_eq!(subscriber.payloads(), vec![Bytes::from_static(b"early")]);

    let mut refused = net.open(V311);
    refused.send(Packet::Connect(Box::new(connect_packet(V311, "no"))));
    refused.publish("t", QoS::AtMostOnce, b"never");
    let request = refused.take_auth_request().unwrap();
    refused.auth_result(request.id, Err(ReasonCode::NotAuthorized));
    subscriber.nothing();
}

/// An answer for another request (stale or made up) is ignored; the right one still counts.
#[test]
fn a_stale_or_unknown_answer_is_ignored() {
    let (net, _) = deferring(Arc::new(tern_broker::DefaultAccess));
    let mut first = net.open(V5);
    first.send(Packet::Connect(Box::new(connect_packet(V5, "s1"))));
    let first_request = first.take_auth_request().unwrap();
    let mut second = net.open(V5);
    second.send(Packet::Connect(Box::new(connect_packet(V5, "s2"))));
    let second_request = second.take_auth_request().unwrap();
    // The first connection's answer given to the second: ignored.
    second.auth_result(first_request.id, Ok(principal("s2", None)));
    second.nothing();
    assert!(!second.wants_input());
    second.auth_result(second_request.id, Err(ReasonCode::NotAuthorized));
    assert_eq!(
        connack(&second.received()).reason_code,
        ReasonCode::NotAuthorized
    );
    // A second answer to a decided request changes nothing.
    second.auth_result(second_request.id, Ok(principal("s2", None)));
    second.nothing();
    first.auth_result(first_request.id, Ok(principal("s1", None)));
    assert_eq!(connack(&first.received()).reason_code, ReasonCode::Success);
}

/// The completion handle hands the answer back from elsewhere (another task, a pool): the
/// connection takes it the next time it is polled.
#[test]
fn an_answer_through_the_completion_handle_reaches_the_connection() {
    let (net, _) = deferring(Arc::new(tern_broker::DefaultAccess));
    let mut client = net.open(V5);
    client.send(Packet::Connect(Box::new(connect_packet(V5, "h1"))));
    let request = client.take_auth_request().unwrap();
    let completion = request.completion();
    assert_eq!(completion.id(), request.id);
    let worker = std::thread::spawn(move || completion.complete(Ok(principal("h1", None))));
    worker.join().unwrap();
    assert_eq!(connack(&client.received()).reason_code, ReasonCode::Success);
}

/// Enhanced authentication (MQTT 5 section 4.12) still runs after a deferred plain check: the
/// exchange starts once the deferral allows the client, and decides the CONNACK.
#[test]
fn enhanced_authentication_follows_a_deferred_check() {
    for (data, expected) in [
        (&b"let-me-in"[..], ReasonCode::Success),
        (&b"wrong"[..], ReasonCode::NotAuthorized),
    ] {
        let (net, _) = deferring(Arc::new(tern_broker::DefaultAccess));
        let mut client = net.open(V5);
        let mut connect = connect_packet(V5, "e1");
        connect.properties = Properties {
            authentication_method: Some(text("ONE-STEP")),
            authentication_data: Some(Bytes::copy_from_slice(data)),
            ..Properties::default()
        };
        client.send(Packet::Connect(Box::new(connect)));
        let request = client.take_auth_request().unwrap();
        assert_eq!(request.authentication_method.as_deref(), Some("ONE-STEP"));
        client.nothing();
        client.auth_result(request.id, Ok(principal("e1", None)));
        let packets = client.received();
        let connack = connack(&packets);
        assert_eq!(connack.reason_code, expected);
        if expected == ReasonCode::Success {
            assert_eq!(
                connack.properties.authentication_method.as_deref(),
                Some("ONE-STEP")
            );
        }
    }
}

/// The principal the authenticator names (its username, say a token's subject) reaches the
/// authorizer; the core's own facts (client id, peer) are not the authenticator's to change.
#[test]
fn the_principal_reaches_the_authorizer() {
    let recording = Arc::new(Recording::default());
    let (net, _) = deferring(recording.clone());
    let mut client = net.open(V5);
    let mut connect = connect_packet(V5, "p1");
    connect.username = Some(text("token"));
    client.send(Packet::Connect(Box::new(connect)));
    let request = client.take_auth_request().unwrap();
    client.auth_result(request.id, Ok(principal("forged", Some("subject-42"))));
    client.received();
    client.publish("t", QoS::AtMostOnce, b"x");
    let seen = recording.seen.lock().unwrap();
    assert_eq!(seen[0].username.as_deref(), Some("subject-42"));
    assert_eq!(seen[0].client_id.as_str(), "p1");
}

/// Credentials that expire while connected end the connection: MQTT 5 DISCONNECT 0x87 Not
/// authorized (section 3.14.2.1), 3.x a plain close; the will is published as for any other
/// server-side close [MQTT-3.1.2-8]. Already expired at CONNECT: refused with 0x87.
#[test]
fn expired_credentials_end_the_connection() {
    for version in [V311, V5] {
        let (net, _) = deferring(Arc::new(PrincipalAccess::default()));
        let mut client = net.open(version);
        client.send(Packet::Connect(Box::new(connect_packet(version, "x1"))));
        let request = client.take_auth_request().unwrap();
        let mut granted = principal("x1", None);
        granted.expires_at = Some(net.now() + Duration::from_secs(60));
        client.auth_result(request.id, Ok(granted));
        client.received();
        net.advance(59_999);
        assert!(!client.is_closed());
        net.advance(1);
        if version == V5 {
            assert_eq!(client.disconnect_reason(), ReasonCode::NotAuthorized);
        } else {
            client.closed_silently();
        }
        assert_eq!(client.close_reason(), Some(CloseReason::CredentialsExpired));
    }

    let (net, _) = deferring(Arc::new(PrincipalAccess::default()));
    let mut client = net.open(V5);
    client.send(Packet::Connect(Box::new(connect_packet(V5, "x2"))));
    let request = client.take_auth_request().unwrap();
    let mut expired = principal("x2", None);
    expired.expires_at = Some(net.now());
    client.auth_result(request.id, Ok(expired));
    assert_eq!(
        connack(&client.received()).reason_code,
        ReasonCode::NotAuthorized
    );
}

/// No secret reaches a log (issue 12): the request's and the credentials' `Debug` leave the
/// password out.
#[test]
fn the_password_is_not_in_debug_output() {
    let (net, _) = deferring(Arc::new(tern_broker::DefaultAccess));
    let mut client = net.open(V311);
    let mut connect = connect_packet(V311, "dbg");
    connect.username = Some(text("alice"));
    connect.password = Some(Bytes::from_static(b"hunter2-secret"));
    client.send(Packet::Connect(Box::new(connect)));
    let request = client.take_auth_request().unwrap();
    let shown = format!("{request:?} {:?}", request.credentials());
    assert!(!shown.contains("hunter2"), "{shown}");
    // Not as bytes either: 104 117 110 = "hun".
    assert!(!shown.contains("104, 117, 110"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    assert!(shown.contains("alice"), "{shown}");
}

/// A request whose connection went (closed, timed out, or answered) leaves nothing behind:
/// a late answer through its completion handle is dropped.
#[test]
fn nothing_is_left_behind_by_requests_that_ended() {
    let (net, _) = deferring(Arc::new(tern_broker::DefaultAccess));
    let mut gone = net.open(V5);
    gone.send(Packet::Connect(Box::new(connect_packet(V5, "g1"))));
    let gone_request = gone.take_auth_request().unwrap();
    let mut timed_out = net.open(V5);
    timed_out.send(Packet::Connect(Box::new(connect_packet(V5, "g2"))));
    let timed_out_request = timed_out.take_auth_request().unwrap();
    assert_eq!(net.broker.pending_auth_count(), 2);
    drop(gone);
    assert_eq!(net.broker.pending_auth_count(), 1);
    net.advance(CONNECT_TIMEOUT.as_millis() as u64);
    assert_eq!(net.broker.pending_auth_count(), 0);
    gone_request
        .completion()
        .complete(Ok(principal("g1", None)));
    timed_out_request
        .completion()
        .complete(Ok(principal("g2", None)));
    assert_eq!(net.broker.pending_auth_count(), 0);
    timed_out.received();
    assert!(net.session("g2").is_none());
}
