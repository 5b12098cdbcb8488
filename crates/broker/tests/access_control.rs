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

/// SUBSCRIBE is judged by filter: one entirely outside what the client may read is refused,
/// SUBACK 0x80 in 3.1.1 [MQTT-3.9.3-2 failure code] and 0x87 Not authorized in MQTT 5.
#[test]
fn a_denied_filter_is_refused_in_suback() {
    let rules = Prefixes::new("mine/", "mine/");
    let net = net(&rules);
    let mut v3 = net.connected(V311, "limited");
    assert_eq!(
        v3.subscribe("theirs/#", QoS::AtMostOnce).reason_codes,
        vec![ReasonCode::UnspecifiedError]
    );
    v3.disconnect();
    let mut v5 = net.connected(V5, "limited");
    assert_eq!(
        v5.subscribe("theirs/#", QoS::AtMostOnce).reason_codes,
        vec![ReasonCode::NotAuthorized]
    );
    assert_eq!(
        v5.subscribe("mine/#", QoS::AtMostOnce).reason_codes,
        vec![ReasonCode::Success]
    );
}

/// A filter that overlaps what may be read (a `#` subscriber who may read only `mine/`) is
/// granted and filtered per message; only that subscription pays a check, a granted one
/// none (issue 12: "only those subscriptions pay a check").
#[test]
fn a_partial_subscription_is_filtered_per_message() {
    let rules = Prefixes::new("", "mine/");
    let net = net(&rules);
    let mut limited = net.connected(V5, "limited");
    assert_eq!(
        limited.subscribe("#", QoS::AtMostOnce).reason_codes,
        vec![ReasonCode::Success]
    );
    let mut publisher = net.connected(V5, "publisher");
    publisher.publish("mine/a", QoS::AtMostOnce, b"1");
    publisher.publish("theirs/b", QoS::AtMostOnce, b"2");
    assert_eq!(limited.payloads(), vec![Bytes::from_static(b"1")]);
    assert_eq!(rules.read_checks.load(Ordering::Relaxed), 2);

    // A granted subscription (inside what may be read) is not checked per message.
    let mut granted = net.connected(V5, "limited2");
    drop(limited);
    granted.subscribe("mine/#", QoS::AtMostOnce);
    let before = rules.read_checks.load(Ordering::Relaxed);
    publisher.publish("mine/c", QoS::AtMostOnce, b"3");
    assert_eq!(granted.payloads(), vec![Bytes::from_static(b"3")]);
    assert_eq!(rules.read_checks.load(Ordering::Relaxed), before);
}

/// Retained messages sent for a partial subscription [MQTT-3.3.1-6] pass the same check.
#[test]
fn retained_messages_for_a_partial_subscription_are_filtered() {
    let rules = Prefixes::new("", "mine/");
    let net = net(&rules);
    let mut publisher = net.connected(V5, "publisher");
    publisher.publish_with(common::retained("mine/r", QoS::AtMostOnce, b"ok"));
    publisher.publish_with(common::retained("theirs/r", QoS::AtMostOnce, b"secret"));
    let mut limited = net.connected(V5, "limited");
    limited.subscribe("#", QoS::AtMostOnce);
    assert_eq!(limited.payloads(), vec![Bytes::from_static(b"ok")]);
}

/// Rules that make everything readable under `keep/` only (a reload that took rights away).
#[derive(Debug)]
struct KeepOnly;

impl tern_broker::Authorizer for KeepOnly {
    fn may_publish(&self, _: &Principal, _: &str) -> bool {
        true
    }

    fn may_subscribe(&self, client: &Principal, filter: &str) -> bool {
        self.classify(client, filter) != FilterAccess::Denied
    }

    fn classify(&self, _: &Principal, filter: &str) -> FilterAccess {
        if filter.starts_with("keep/") {
            FilterAccess::Granted
        } else if filter == "#" {
            FilterAccess::Partial
        } else {
            FilterAccess::Denied
        }
    }

    fn may_read(&self, _: &Principal, topic: &str) -> bool {
        topic.starts_with("keep/")
    }
}

/// The authorizer can be swapped at run time, and `recheck_access` re-evaluates existing
/// subscriptions against it (issue 12: "a reload re-checks existing subscriptions"): denied
/// ones are removed (the store is told, as an unsubscribe would), partial ones are checked
/// per message from then on.
#[test]
fn recheck_after_swapping_the_authorizer() {
    let rules = Prefixes::new("", "");
    let net = net(&rules);
    let mut client = net.connected(V5, "client");
    client.subscribe("a/#", QoS::AtMostOnce);
    client.subscribe("keep/#", QoS::AtMostOnce);
    client.subscribe("#", QoS::AtMostOnce);
    let mut publisher = net.connected(V5, "publisher");
    assert_eq!(net.broker.subscription_count(), 3);

    net.broker.set_authorizer(Arc::new(KeepOnly));
    // New SUBSCRIBEs are judged by the new rules at once.
    assert_eq!(
        client.subscribe("b/#", QoS::AtMostOnce).reason_codes,
        vec![ReasonCode::NotAuthorized]
    );
    let summary = net.broker.recheck_access();
    assert_eq!(summary.removed, 1, "{summary:?}");
    assert_eq!(summary.partial, 1, "{summary:?}");
    assert_eq!(net.broker.subscription_count(), 2);

    publisher.publish("a/x", QoS::AtMostOnce, b"gone");
    publisher.publish("keep/x", QoS::AtMostOnce, b"kept");
    assert_eq!(client.payloads(), vec![Bytes::from_static(b"kept")]);
}

/// A denied subscription removed by a re-check is removed from the store too, as an
/// UNSUBSCRIBE would; and a resumed session's subscriptions are judged again at CONNECT for
/// the principal of the new connection (which may hold other rights than the last one).
#[test]
fn recheck_tells_the_store_and_resumed_sessions_are_judged_again() {
    let recorder = Arc::new(common::Recorder::default());
    let rules = Prefixes::new("", "");
    let net = Net::with_persistence(
        BrokerConfig::default(),
        Hooks {
            authenticator: Arc::new(Grants {
                limited: "limited",
                rules: rules.clone(),
            }),
            authorizer: Arc::new(PrincipalAccess::default()),
            enhanced: Vec::new(),
        },
        Some(recorder.clone()),
    );
    let mut client = net.connected(V5, "durable");
    client.disconnect();
    let mut client = net.accepted(common::persistent(V5, "durable"));
    client.subscribe("a/#", QoS::AtMostOnce);
    recorder.take_kinds();
    net.broker.set_authorizer(Arc::new(KeepOnly));
    net.broker.recheck_access();
    assert!(
        recorder.take_kinds().contains(&"Unsubscribed"),
        "the store forgets the subscription"
    );
    assert_eq!(net.broker.subscription_count(), 0);

    drop(client);
}

/// Gives the rules to clients that connect with the username "guest"; others have none.
struct ByUsername(Arc<Prefixes>);

impl Authenticator for ByUsername {
    fn authenticate(&self, credentials: &Credentials<'_>) -> AuthDecision {
        let mut principal = Principal::from_credentials(credentials);
        if credentials.username == Some("guest") {
            principal.access = Some(self.0.clone());
        }
        AuthDecision::Allow(principal)
    }
}

/// A broker whose clients with the username "guest" get `rules` (see [`ByUsername`]).
fn net_by_username(rules: &Arc<Prefixes>) -> Net {
    Net::with_hooks(
        BrokerConfig::default(),
        Hooks {
            authenticator: Arc::new(ByUsername(rules.clone())),
            authorizer: Arc::new(PrincipalAccess::default()),
            enhanced: Vec::new(),
        },
    )
}

/// A resumed session's subscriptions are judged again at CONNECT for the principal of the new
/// connection, which may hold other rights than the last one's: a `#` made by an unrestricted
/// user is partial when the session is resumed as a guest who may read only `mine/`.
#[test]
fn a_resumed_session_is_judged_for_its_new_principal() {
    let rules = Prefixes::new("", "mine/");
    let net = net_by_username(&rules);
    let mut first = net.accepted(common::persistent(V5, "shared-device"));
    first.subscribe("#", QoS::AtMostOnce);
    first.disconnect();
    let mut connect = common::persistent(V5, "shared-device");
    connect.username = Some(text("guest"));
    let mut guest = net.accepted(connect);
    let mut publisher = net.connected(V5, "publisher");
    publisher.publish("mine/x", QoS::AtMostOnce, b"1");
    publisher.publish("theirs/x", QoS::AtMostOnce, b"2");
    assert_eq!(guest.payloads(), vec![Bytes::from_static(b"1")]);
}

/// Messages queued for a session while it was offline were routed for its last client; the
/// client that takes it up gets only those it may read (a guest resuming the session of an
/// unrestricted `#` subscriber does not receive what was queued for the other).
#[test]
fn what_was_queued_for_the_last_client_goes_only_where_the_new_one_may_read() {
    let rules = Prefixes::new("", "mine/");
    let net = net_by_username(&rules);
    let mut first = net.accepted(common::persistent(V5, "shared-device"));
    first.subscribe("#", QoS::AtLeastOnce);
    first.disconnect();
    let mut publisher = net.connected(V5, "publisher");
    publisher.publish("mine/1", QoS::AtLeastOnce, b"1");
    publisher.publish("theirs/2", QoS::AtLeastOnce, b"2");
    publisher.publish("mine/3", QoS::AtLeastOnce, b"3");
    let mut connect = common::persistent(V5, "shared-device");
    connect.username = Some(text("guest"));
    let mut guest = net.accepted(connect);
    assert_eq!(
        guest.payloads(),
        vec![Bytes::from_static(b"1"), Bytes::from_static(b"3")]
    );
    assert_eq!(net.broker.metrics().snapshot().messages_dropped_denied, 1);
    // What is routed from now on is judged by the subscription, as always.
    publisher.publish("theirs/4", QoS::AtLeastOnce, b"4");
    publisher.publish("mine/5", QoS::AtLeastOnce, b"5");
    assert_eq!(guest.payloads(), vec![Bytes::from_static(b"5")]);
}

/// Messages in flight to the last client are sent again when the session is resumed
/// [MQTT-4.4.0-1], but not to a client that may not read them.
#[test]
fn what_was_in_flight_to_the_last_client_is_resent_only_where_the_new_one_may_read() {
    let rules = Prefixes::new("", "mine/");
    let net = net_by_username(&rules);
    let mut first = net.accepted(common::persistent(V5, "shared-device"));
    first.subscribe("#", QoS::AtLeastOnce);
    let mut publisher = net.connected(V5, "publisher");
    publisher.publish("theirs/1", QoS::AtLeastOnce, b"1");
    publisher.publish("mine/2", QoS::AtLeastOnce, b"2");
    // Received, never acknowledged.
    assert_eq!(first.publishes().len(), 2);
    drop(first);
    let mut connect = common::persistent(V5, "shared-device");
    connect.username = Some(text("guest"));
    let mut guest = net.accepted(connect);
    let resent = guest.publishes();
    assert_eq!(resent.len(), 1, "{resent:?}");
    assert_eq!(resent[0].payload, Bytes::from_static(b"2"));
    assert!(resent[0].dup, "a resent PUBLISH has DUP set [MQTT-3.3.1-1]");
    let session = net.session("shared-device").unwrap();
    assert_eq!(session.inflight_len(), 1);
}

/// UNSUBSCRIBE removes a subscription that exists even when the client's rights no longer
/// cover its filter (the authorizer swapped without a re-check): removing it cannot widen what
/// the client sees. One that does not exist, on a filter it may not subscribe to, gets 0x87.
#[test]
fn an_existing_subscription_can_always_be_unsubscribed() {
    let net = Net::new();
    let mut client = net.connected(V5, "limited");
    client.subscribe("theirs/x", QoS::AtMostOnce);
    net.broker.set_authorizer(Arc::new(KeepOnly));
    client.send(Packet::Unsubscribe(tern_codec::Unsubscribe {
        packet_id: 9,
        properties: Properties::default(),
        filters: vec![text("theirs/x"), text("theirs/y")],
    }));
    match client.next() {
        Some(Packet::UnsubAck(unsuback)) => assert_eq!(
            unsuback.reason_codes,
            vec![ReasonCode::Success, ReasonCode::NotAuthorized]
        ),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    assert_eq!(net.broker.subscription_count(), 0);
}

/// A will with a delay (MQTT 5 Will Delay Interval) is checked again when its delay runs out,
/// not only when the connection ends: rules that changed during the delay (a reload that took
/// the right away) keep it from being published [issue 12: "checked when set and when
/// published"].
#[test]
fn a_delayed_will_is_checked_when_its_delay_runs_out() {
    let rules = Prefixes::new("mine/", "mine/");
    let net = net(&rules);
    let mut watcher = net.connected(V5, "watcher");
    watcher.subscribe("#", QoS::AtMostOnce);
    let delayed = |id: &'static str| {
        let mut connect = with_will(V5, id, "mine/status");
        connect.clean_start = false;
        connect.properties.session_expiry_interval = Some(600);
        if let Some(will) = connect.will.as_mut() {
            will.properties.will_delay_interval = Some(5);
        }
        connect
    };
    drop(net.accepted(delayed("limited")));
    // Allowed when the connection ended; the right goes during the delay.
    rules.writable.store(false, Ordering::Relaxed);
    net.advance(6_000);
    watcher.nothing();
    assert_eq!(net.broker.metrics().snapshot().wills_published, 0);

    // With the right kept, the same will is published when its delay runs out.
    rules.writable.store(true, Ordering::Relaxed);
    drop(net.accepted(delayed("limited")));
    net.advance(6_000);
    assert_eq!(watcher.payloads(), vec![Bytes::from_static(b"gone")]);
}

/// Rules that close `secret/` when first asked about it, and run the re-check a reload runs
/// right then: a reload that happens while a SUBSCRIBE is being judged.
struct ClosesWhileJudging {
    broker: std::sync::OnceLock<std::sync::Weak<tern_broker::Broker>>,
    open: AtomicBool,
}

impl tern_broker::Authorizer for ClosesWhileJudging {
    fn may_publish(&self, _: &Principal, _: &str) -> bool {
        true
    }

    fn may_subscribe(&self, client: &Principal, filter: &str) -> bool {
        self.classify(client, filter) != FilterAccess::Denied
    }

    fn classify(&self, _: &Principal, filter: &str) -> FilterAccess {
        let verdict = if self.open.load(Ordering::SeqCst) || !filter.starts_with("secret/") {
            FilterAccess::Granted
        } else {
            FilterAccess::Denied
        };
        if filter.starts_with("secret/") && self.open.swap(false, Ordering::SeqCst) {
            // The reload: rules changed, then every session re-checked (this one has not
            // added the subscription yet, so the re-check finds nothing to do).
            if let Some(broker) = self.broker.get().and_then(std::sync::Weak::upgrade) {
                broker.recheck_access();
            }
        }
        verdict
    }

    fn may_read(&self, _: &Principal, topic: &str) -> bool {
        !topic.starts_with("secret/") || self.open.load(Ordering::SeqCst)
    }
}

/// A reload (rules changed, then `recheck_access`) that runs while a SUBSCRIBE is judged under
/// the old rules does not leave the old grant behind: the SUBSCRIBE sees the rules changed
/// and judges its session again (issue 12: "a reload re-checks existing subscriptions").
#[test]
fn a_reload_while_a_subscribe_is_judged_leaves_no_stale_grant() {
    let rules = Arc::new(ClosesWhileJudging {
        broker: std::sync::OnceLock::new(),
        open: AtomicBool::new(true),
    });
    let net = Net::with_hooks(
        BrokerConfig::default(),
        Hooks {
            authorizer: rules.clone(),
            ..Hooks::default()
        },
    );
    let _ = rules.broker.set(Arc::downgrade(&net.broker));
    let mut client = net.connected(V5, "subscriber");
    client.subscribe("secret/#", QoS::AtMostOnce);
    assert_eq!(net.broker.subscription_count(), 0, "judged again: removed");
    let mut publisher = net.connected(V5, "publisher");
    publisher.publish("secret/x", QoS::AtMostOnce, b"no");
    client.nothing();
}
