//! Issue 12, access rules in the core: permissions computed once per client and kept in its
//! principal (`ClientAccess`, asked through `PrincipalAccess`); PUBLISH refused per version;
//! wills checked when set and when published; subscriptions classified by filter (granted,
//! denied, partial with a check per message only for the partial ones); the authorizer swapped
//! at run time and existing subscriptions re-checked. Driven on the sans-IO harness.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use common::{Net, V5, V311, connect_packet, publish_packet, text};
use tern_broker::{
    AuthDecision, Authenticator, BrokerConfig, ClientAccess, CloseReason, Credentials,
    FilterAccess, Hooks, Principal, PrincipalAccess,
};
use tern_codec::{Packet, Properties, QoS, ReasonCode, Will};

/// Rules by prefix: writes under `write`, reads under `read`; counts the per-message checks.
#[derive(Debug)]
struct Prefixes {
    write: &'static str,
    read: &'static str,
    /// Cleared to close writing (as a reload that takes a right away would).
    writable: AtomicBool,
    read_checks: AtomicUsize,
}

impl Prefixes {
    fn new(write: &'static str, read: &'static str) -> Arc<Prefixes> {
        Arc::new(Prefixes {
            write,
            read,
            writable: AtomicBool::new(true),
            read_checks: AtomicUsize::new(0),
        })
    }
}

impl ClientAccess for Prefixes {
    fn may_write(&self, topic: &str) -> bool {
        self.writable.load(Ordering::Relaxed) && topic.starts_with(self.write)
    }

    fn may_read(&self, topic: &str) -> bool {
        self.read_checks.fetch_add(1, Ordering::Relaxed);
        topic.starts_with(self.read)
    }

    fn classify(&self, filter: &str) -> FilterAccess {
        if filter.starts_with(self.read) {
            FilterAccess::Granted
        } else if filter
            .strip_suffix('#')
            .is_some_and(|prefix| self.read.starts_with(prefix))
        {
            // "#" or "a/#" over a readable "a/b/": part of it.
            FilterAccess::Partial
        } else {
            FilterAccess::Denied
        }
    }
}

/// Gives the client named `limited` the rules; everyone else has none (the fallback applies).
struct Grants {
    limited: &'static str,
    rules: Arc<Prefixes>,
}

impl Authenticator for Grants {
    fn authenticate(&self, credentials: &Credentials<'_>) -> AuthDecision {
        let mut principal = Principal::from_credentials(credentials);
        if credentials.client_id == self.limited {
            principal.access = Some(self.rules.clone());
        }
        AuthDecision::Allow(principal)
    }
}

fn net_with(rules: &Arc<Prefixes>, config: BrokerConfig) -> Net {
    Net::with_hooks(
        config,
        Hooks {
            authenticator: Arc::new(Grants {
                limited: "limited",
                rules: rules.clone(),
            }),
            authorizer: Arc::new(PrincipalAccess::default()),
            enhanced: Vec::new(),
        },
    )
}

fn net(rules: &Arc<Prefixes>) -> Net {
    net_with(rules, BrokerConfig::default())
}

/// MQTT 5: a PUBLISH the rules refuse is answered PUBACK / PUBREC 0x87 Not authorized
/// (sections 3.4.2.1, 3.5.2.1), a QoS 0 one is dropped; nothing is forwarded and the
/// connection stays.
#[test]
fn a_denied_publish_is_0x87_in_mqtt5() {
    let rules = Prefixes::new("mine/", "mine/");
    let net = net(&rules);
    let mut watcher = net.connected(V5, "watcher");
    watcher.subscribe("#", QoS::AtLeastOnce);
    let mut client = net.connected(V5, "limited");
    for (qos, expected) in [(QoS::AtLeastOnce, "PubAck"), (QoS::ExactlyOnce, "PubRec")] {
        client.publish("theirs/x", qos, b"no");
        match client.next() {
            Some(Packet::PubAck(ack)) if expected == "PubAck" => {
                assert_eq!(ack.reason_code, ReasonCode::NotAuthorized)
            }
            Some(Packet::PubRec(ack)) if expected == "PubRec" => {
                assert_eq!(ack.reason_code, ReasonCode::NotAuthorized)
            }
            other => panic!("expected {expected} 0x87, got {other:?}"),
        }
    }
    client.publish("theirs/x", QoS::AtMostOnce, b"no");
    client.nothing();
    watcher.nothing();
    client.publish("mine/x", QoS::AtMostOnce, b"yes");
    assert_eq!(watcher.payloads(), vec![Bytes::from_static(b"yes")]);
    assert!(!client.is_closed());
}

/// 3.1.1 has no negative acknowledgement: by default a refused PUBLISH is acknowledged and
/// dropped [MQTT-3.3.5-2]; with `deny_publish_disconnects_v3` the connection is closed.
#[test]
fn a_denied_publish_in_3_1_1_is_dropped_or_closes_by_configuration() {
    let rules = Prefixes::new("mine/", "mine/");
    let net = net(&rules);
    let mut watcher = net.connected(V311, "watcher");
    watcher.subscribe("#", QoS::AtLeastOnce);
    let mut client = net.connected(V311, "limited");
    client.publish("theirs/x", QoS::AtLeastOnce, b"no");
    match client.next() {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.reason_code, ReasonCode::Success),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    watcher.nothing();
    assert!(!client.is_closed());

    let net = net_with(
        &rules,
        BrokerConfig {
            deny_publish_disconnects_v3: true,
            ..BrokerConfig::default()
        },
    );
    let mut client = net.connected(V311, "limited");
    client.publish("theirs/x", QoS::AtMostOnce, b"no");
    client.closed_silently();
    assert!(matches!(
        client.close_reason(),
        Some(CloseReason::ProtocolError {
            code: ReasonCode::NotAuthorized,
            ..
        })
    ));
}

fn with_will(version: tern_codec::ProtocolVersion, id: &str, topic: &str) -> tern_codec::Connect {
    let mut connect = connect_packet(version, id);
    connect.will = Some(Will {
        topic: text(topic),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    connect
}

/// A will is checked when it is set: one on a topic the client may not write is refused at
/// CONNECT (MQTT 5 0x87, 3.1.1 return code 5).
#[test]
fn a_will_the_rules_refuse_is_refused_at_connect() {
    let rules = Prefixes::new("mine/", "mine/");
    let net = net(&rules);
    for version in [V311, V5] {
        let (client, connack) = net.connect(with_will(version, "limited", "theirs/status"));
        assert_eq!(connack.reason_code, ReasonCode::NotAuthorized);
        assert!(client.is_closed());
    }
    net.accepted(with_will(V5, "limited", "mine/status"));
}

/// And again when it is published: a right taken away while the client was connected (a
/// reload) keeps its will from going out.
#[test]
fn a_will_is_checked_again_when_published() {
    let rules = Prefixes::new("mine/", "mine/");
    let net = net(&rules);
    let mut watcher = net.connected(V5, "watcher");
    watcher.subscribe("#", QoS::AtMostOnce);
    let client = net.accepted(with_will(V5, "limited", "mine/status"));
    rules.writable.store(false, Ordering::Relaxed);
    drop(client);
    watcher.nothing();

    rules.writable.store(true, Ordering::Relaxed);
    let client = net.accepted(with_will(V5, "limited", "mine/status"));
    drop(client);
    assert_eq!(watcher.payloads(), vec![Bytes::from_static(b"gone")]);
}

/// A publish the rules allow still reaches everyone: the principal's rules are the client's,
/// not the others' (a client without rules falls back to the default authorizer).
#[test]
fn clients_without_rules_fall_back_to_the_default() {
    let rules = Prefixes::new("mine/", "mine/");
    let net = net(&rules);
    let mut other = net.connected(V5, "other");
    other.publish_with(publish_packet("$SYS/forged", QoS::AtLeastOnce, b"x"));
    match other.next() {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.reason_code, ReasonCode::NotAuthorized),
        got => panic!("expected PUBACK 0x87, got {got:?}"),
    }
}
