//! The cluster's state machine (issue 16, "How it is proven": "Property tests of the state
//! machine over random command sequences (stale epochs refused, route counts never negative,
//! replicas that applied the same log are equal)"), and its semantics case by case.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tern_cluster::command::{RetainedMessage, SubscriptionOptions};
use tern_cluster::{ClusterState, Command, NodeId, Outcome, Request};

// ---- Strategies: small alphabets, so that commands collide ----

fn client_id() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["c0", "c1", "c2"]).prop_map(str::to_owned)
}

fn node() -> impl Strategy<Value = NodeId> {
    1..=4u64
}

fn filter() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "a/#", "+/b", "c"]).prop_map(str::to_owned)
}

fn group() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["g1", "g2"]).prop_map(str::to_owned)
}

fn topic() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["t/1", "t/2", "t/3"]).prop_map(str::to_owned)
}

fn epoch() -> impl Strategy<Value = u64> {
    0..=6u64
}

fn options() -> impl Strategy<Value = SubscriptionOptions> {
    (0..=2u8, prop::option::of(1..=3u32)).prop_map(|(options, identifier)| SubscriptionOptions {
        options,
        identifier,
    })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        2 => node().prop_map(|node| Command::RegisterNode {
            node,
            cluster_addr: format!("10.0.0.{node}:7883"),
            mqtt_addrs: vec![format!("10.0.0.{node}:1883")],
        }),
        1 => node().prop_map(|node| Command::RemoveNode { node }),
        4 => (client_id(), node(), any::<bool>(), any::<bool>()).prop_map(
            |(client_id, node, persistent, clean_start)| Command::Claim {
                client_id,
                node,
                persistent,
                clean_start,
            }
        ),
        2 => (client_id(), epoch()).prop_map(|(client_id, epoch)| Command::Release { client_id, epoch }),
        1 => (node(), 0..3u64).prop_map(|(node, nonce)| Command::Barrier { node, nonce }),
        2 => (client_id(), epoch(), node()).prop_map(|(client_id, epoch, node)| Command::Returned {
            client_id,
            epoch,
            node,
        }),
        4 => (client_id(), epoch(), filter(), options()).prop_map(
            |(client_id, epoch, filter, options)| Command::Subscribe {
                client_id,
                epoch,
                filter,
                options,
            }
        ),
        2 => (client_id(), epoch(), filter()).prop_map(|(client_id, epoch, filter)| {
            Command::Unsubscribe {
                client_id,
                epoch,
                filter,
            }
        }),
        3 => (filter(), node()).prop_map(|(filter, node)| Command::AddRoute { filter, node }),
        2 => (filter(), node()).prop_map(|(filter, node)| Command::RemoveRoute { filter, node }),
        2 => (group(), filter(), node()).prop_map(|(group, filter, node)| Command::AddShared {
            group,
            filter,
            node,
        }),
        1 => (group(), filter(), node()).prop_map(|(group, filter, node)| {
            Command::RemoveShared {
                group,
                filter,
                node,
            }
        }),
        1 => (
            node(),
            prop::collection::vec(filter(), 0..3),
            prop::collection::vec((group(), filter()), 0..3)
        )
            .prop_map(|(node, filters, shared)| Command::SyncRoutes {
                node,
                filters,
                shared,
            }),
        2 => (topic(), prop::collection::vec(any::<u8>(), 0..4), 0..=2u8, node()).prop_map(
            |(topic, payload, qos, origin)| Command::Retain {
                message: RetainedMessage {
                    topic,
                    payload,
                    qos,
                    properties: vec![],
                    expires_at_ms: None,
                    origin,
                },
            }
        ),
        1 => (topic(), node()).prop_map(|(topic, origin)| Command::ClearRetained { topic, origin }),
    ]
}

fn commands() -> impl Strategy<Value = Vec<Command>> {
    prop::collection::vec(command(), 0..80)
}

// ---- Invariants ----

/// No empty route or shared set; every node a route, a shared group or a session's owner
/// names is registered; a non-persistent session keeps no subscription.
fn check_invariants(state: &ClusterState) -> Result<(), TestCaseError> {
    for (filter, nodes) in state.routes() {
        prop_assert!(!nodes.is_empty(), "empty route for {filter}");
        for node in nodes {
            prop_assert!(
                state.node(*node).is_some(),
                "route {filter} of unknown node {node}"
            );
        }
    }
    for (group, filter, nodes) in state.shared() {
        prop_assert!(!nodes.is_empty(), "empty shared group {group}/{filter}");
        for node in nodes {
            prop_assert!(
                state.node(*node).is_some(),
                "shared {group}/{filter} of unknown node {node}"
            );
        }
    }
    for (client_id, session) in state.sessions() {
        if let Some(owner) = session.owner {
            prop_assert!(
                state.node(owner).is_some(),
                "{client_id} owned by unknown node {owner}"
            );
        }
        prop_assert!(session.epoch >= 1);
        if !session.persistent {
            prop_assert!(session.subscriptions.is_empty());
            prop_assert!(session.pending_returns.is_empty());
        }
        for node in &session.pending_returns {
            prop_assert!(
                state.node(*node).is_some(),
                "{client_id} awaits a return from unknown node {node}"
            );
            prop_assert!(
                session.owner != Some(*node),
                "{client_id} awaits a return from its owner {node}"
            );
        }
    }
    Ok(())
}

/// The epoch a fenced command carries, and its client id.
fn fenced(command: &Command) -> Option<(&str, u64)> {
    match command {
        Command::Release { client_id, epoch }
        | Command::Returned {
            client_id, epoch, ..
        }
        | Command::Subscribe {
            client_id, epoch, ..
        }
        | Command::Unsubscribe {
            client_id, epoch, ..
        } => Some((client_id, *epoch)),
        _ => None,
    }
}

/// Issue 16, "return the queue": a persistent claim without clean start keeps the pending
/// returns and adds the previous owner when it held a persistent session; a clean-start or
/// non-persistent claim, a release and a node's removal drop them; `Returned` takes exactly
/// its node off; the claimer is never listed.
fn check_pending_returns(
    before: &ClusterState,
    command: &Command,
    outcome: &Outcome,
    after: &ClusterState,
) -> Result<(), TestCaseError> {
    let pending = |state: &ClusterState, client_id: &str| {
        state
            .session(client_id)
            .map(|session| session.pending_returns.clone())
            .unwrap_or_default()
    };
    match (command, outcome) {
        (
            Command::Claim {
                client_id,
                node,
                persistent,
                clean_start,
            },
            Outcome::Claimed { previous, .. },
        ) => {
            let mut expected = std::collections::BTreeSet::new();
            if *persistent && !*clean_start {
                expected = pending(before, client_id);
                if let (Some((previous, _)), Some(true)) = (
                    previous,
                    before.session(client_id).map(|session| session.persistent),
                ) {
                    expected.insert(*previous);
                }
                expected.remove(node);
            }
            prop_assert_eq!(pending(after, client_id), expected);
        }
        (
            Command::Returned {
                client_id, node, ..
            },
            Outcome::Done,
        ) => {
            let mut expected = pending(before, client_id);
            expected.remove(node);
            prop_assert_eq!(pending(after, client_id), expected);
        }
        (Command::Release { client_id, .. }, Outcome::Done) => {
            prop_assert!(after.session(client_id).is_none());
        }
        (Command::RemoveNode { node }, Outcome::Done) => {
            for (client_id, session) in after.sessions() {
                prop_assert!(
                    !session.pending_returns.contains(node),
                    "{} still awaits {}",
                    client_id,
                    node
                );
            }
        }
        _ => {}
    }
    Ok(())
}

fn apply_all(commands: &[Command]) -> ClusterState {
    let mut state = ClusterState::default();
    for command in commands {
        state.apply(command);
    }
    state
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        // Failures are reported with their minimal input; no regression files in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Stale epochs are refused: a Release, Subscribe or Unsubscribe whose epoch is not the
    /// current claim's answers StaleEpoch{current} and changes nothing. Epochs of a client id
    /// never decrease, even across a release, and every claim's is above all before it. The
    /// invariants (no empty route or shared set: no "negative count"; no route of a removed
    /// or unknown node) hold after every command.
    #[test]
    fn stale_epochs_refused_epochs_grow_invariants_hold(commands in commands()) {
        let mut state = ClusterState::default();
        let mut highest: BTreeMap<String, u64> = BTreeMap::new();
        for command in &commands {
            let before = state.clone();
            let outcome = state.apply(command);
            if let Some((client_id, epoch)) = fenced(command) {
                let registered = before.owner(client_id);
                let current = registered.map_or(0, |(_, epoch)| epoch);
                if registered.is_none() || epoch != current {
                    prop_assert_eq!(&outcome, &Outcome::StaleEpoch { current });
                    prop_assert_eq!(&state, &before);
                } else {
                    prop_assert_eq!(&outcome, &Outcome::Done);
                }
            }
            if matches!(outcome, Outcome::UnknownNode) || matches!(command, Command::Barrier { .. }) {
                prop_assert_eq!(&state, &before);
            }
            check_pending_returns(&before, command, &outcome, &state)?;
            if let (Command::Claim { client_id, .. }, Outcome::Claimed { epoch, .. }) = (command, &outcome) {
                let seen = highest.get(client_id).copied().unwrap_or(0);
                prop_assert!(*epoch > seen, "claim of {} got {} after {}", client_id, epoch, seen);
                highest.insert(client_id.clone(), *epoch);
            }
            for (client_id, seen) in &highest {
                if let Some((_, epoch)) = state.owner(client_id) {
                    prop_assert!(epoch >= *seen, "{} went from {} to {}", client_id, seen, epoch);
                }
            }
            check_invariants(&state)?;
        }
    }

    /// Replicas that applied the same log are equal, whatever its split into entries
    /// (batches), and answered the same outcomes.
    #[test]
    fn replicas_of_one_log_are_equal(commands in commands(), cuts in prop::collection::vec(0..80usize, 0..6)) {
        let mut one = ClusterState::default();
        let whole = one.apply_request(&Request { commands: commands.clone() });

        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(commands.len())).collect();
        cuts.push(0);
        cuts.push(commands.len());
        cuts.sort_unstable();
        let mut other = ClusterState::default();
        let mut outcomes = Vec::new();
        for pair in cuts.windows(2) {
            let batch = Request { commands: commands[pair[0]..pair[1]].to_vec() };
            outcomes.extend(other.apply_request(&batch).outcomes);
        }
        prop_assert_eq!(&one, &other);
        prop_assert_eq!(whole.outcomes, outcomes);
        prop_assert_eq!(serde_json::to_vec(&one).ok(), serde_json::to_vec(&other).ok());
    }

    /// A state survives serialization (snapshots, JSON) unchanged.
    #[test]
    fn serialization_round_trip(commands in commands()) {
        let state = apply_all(&commands);
        let bytes = serde_json::to_vec(&state).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: ClusterState = serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &state);
        // And commands too (they travel in log entries).
        let request = Request { commands };
        let bytes = serde_json::to_vec(&request).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: Request = serde_json::from_slice(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, request);
    }

    /// A snapshot after N commands (serialized, restored) plus the rest of the log equals
    /// applying the whole log.
    #[test]
    fn snapshot_then_rest_equals_all(commands in commands(), n in 0..80usize) {
        let n = n.min(commands.len());
        let snapshot = serde_json::to_vec(&apply_all(&commands[..n])).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut restored: ClusterState = serde_json::from_slice(&snapshot).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for command in &commands[n..] {
            restored.apply(command);
        }
        prop_assert_eq!(restored, apply_all(&commands));
    }
}

// ---- Semantics, case by case ----

fn register(node: NodeId) -> Command {
    Command::RegisterNode {
        node,
        cluster_addr: format!("10.0.0.{node}:7883"),
        mqtt_addrs: vec![format!("10.0.0.{node}:1883")],
    }
}

fn claim(client_id: &str, node: NodeId, persistent: bool, clean_start: bool) -> Command {
    Command::Claim {
        client_id: client_id.into(),
        node,
        persistent,
        clean_start,
    }
}

fn subscribe(client_id: &str, epoch: u64, filter: &str) -> Command {
    Command::Subscribe {
        client_id: client_id.into(),
        epoch,
        filter: filter.into(),
        options: SubscriptionOptions {
            options: 1,
            identifier: None,
        },
    }
}

fn cluster(nodes: &[NodeId]) -> ClusterState {
    let mut state = ClusterState::default();
    for node in nodes {
        assert_eq!(state.apply(&register(*node)), Outcome::Done);
    }
    state
}

/// Issue 16 "Take-over across nodes": a claim on N2 of a client owned by N1 takes the next
/// epoch and names N1 and its epoch, so N1 closes the old connection; the old owner's
/// commands are then refused as stale.
#[test]
fn claim_takes_over_with_next_epoch_and_fences_the_old_owner() {
    let mut state = cluster(&[1, 2]);
    assert_eq!(
        state.apply(&claim("c", 1, true, false)),
        Outcome::Claimed {
            epoch: 1,
            previous: None
        }
    );
    assert_eq!(state.apply(&subscribe("c", 1, "a/#")), Outcome::Done);
    assert_eq!(
        state.apply(&claim("c", 2, true, false)),
        Outcome::Claimed {
            epoch: 2,
            previous: Some((1, 1))
        }
    );
    assert_eq!(state.owner("c"), Some((Some(2), 2)));
    // The persistent session kept its subscription across the take-over.
    assert!(
        state
            .session("c")
            .is_some_and(|s| s.subscriptions.contains_key("a/#"))
    );
    // N1's late commands carry epoch 1.
    assert_eq!(
        state.apply(&subscribe("c", 1, "b")),
        Outcome::StaleEpoch { current: 2 }
    );
    assert_eq!(
        state.apply(&Command::Release {
            client_id: "c".into(),
            epoch: 1
        }),
        Outcome::StaleEpoch { current: 2 }
    );
    assert_eq!(
        state.apply(&subscribe("nobody", 1, "b")),
        Outcome::StaleEpoch { current: 0 }
    );
    assert_eq!(
        state.apply(&claim("d", 9, true, false)),
        Outcome::UnknownNode
    );
    assert_eq!(state.session_count(), 1);
}

/// MQTT Clean Start (MQTT-3.1.2-4) and non-persistent sessions: a clean-start or
/// non-persistent claim drops the durable subscriptions, and a non-persistent session stores
/// none (its Subscribe answers Done).
#[test]
fn clean_start_and_non_persistent_sessions_keep_no_subscriptions() {
    let mut state = cluster(&[1]);
    state.apply(&claim("c", 1, true, false));
    state.apply(&subscribe("c", 1, "a"));
    state.apply(&claim("c", 1, true, true));
    assert!(
        state
            .session("c")
            .is_some_and(|s| s.subscriptions.is_empty())
    );
    state.apply(&subscribe("c", 2, "a"));
    state.apply(&claim("c", 1, false, false));
    assert!(
        state
            .session("c")
            .is_some_and(|s| s.subscriptions.is_empty())
    );
    assert_eq!(state.apply(&subscribe("c", 3, "a")), Outcome::Done);
    assert!(
        state
            .session("c")
            .is_some_and(|s| s.subscriptions.is_empty())
    );
}

/// A released client id claimed again gets an epoch above the released one: a fencing token
/// is never given twice to one client id.
#[test]
fn release_then_claim_does_not_reuse_an_epoch() {
    let mut state = cluster(&[1]);
    state.apply(&claim("c", 1, false, false));
    state.apply(&claim("c", 1, false, false));
    assert_eq!(
        state.apply(&Command::Release {
            client_id: "c".into(),
            epoch: 2
        }),
        Outcome::Done
    );
    assert_eq!(state.owner("c"), None);
    assert_eq!(
        state.apply(&claim("c", 1, false, false)),
        Outcome::Claimed {
            epoch: 3,
            previous: None
        }
    );
}

/// RemoveNode drops the node, its routes and shared memberships, and leaves its sessions
/// without an owner at the same epoch; the next claim elsewhere bumps it and names no live
/// previous owner.
#[test]
fn remove_node_orphans_its_sessions_and_drops_its_routes() {
    let mut state = cluster(&[1, 2]);
    state.apply(&claim("c", 1, true, false));
    for command in [
        Command::AddRoute {
            filter: "a".into(),
            node: 1,
        },
        Command::AddRoute {
            filter: "a".into(),
            node: 2,
        },
        Command::AddRoute {
            filter: "b".into(),
            node: 1,
        },
        Command::AddShared {
            group: "g".into(),
            filter: "a".into(),
            node: 1,
        },
    ] {
        assert_eq!(state.apply(&command), Outcome::Done);
    }
    assert_eq!(state.apply(&Command::RemoveNode { node: 1 }), Outcome::Done);
    assert!(state.node(1).is_none());
    assert_eq!(state.owner("c"), Some((None, 1)));
    let routes: Vec<_> = state
        .routes()
        .map(|(f, n)| (f.to_owned(), n.clone()))
        .collect();
    assert_eq!(routes, vec![("a".to_owned(), [2].into_iter().collect())]);
    assert_eq!(state.shared_count(), 0);
    assert_eq!(
        state.apply(&Command::RemoveNode { node: 1 }),
        Outcome::UnknownNode
    );
    assert_eq!(
        state.apply(&claim("c", 2, true, false)),
        Outcome::Claimed {
            epoch: 2,
            previous: None
        }
    );
}

/// Routes and shared groups are sets: adding twice, removing twice, removing what is not
/// there never leaves an empty entry; a route of an unknown node is refused; SyncRoutes
/// replaces one node's routes exactly and leaves the others'.
#[test]
fn routes_are_sets_and_sync_replaces_exactly() {
    let mut state = cluster(&[1, 2]);
    let add = |filter: &str, node| Command::AddRoute {
        filter: filter.into(),
        node,
    };
    let remove = |filter: &str, node| Command::RemoveRoute {
        filter: filter.into(),
        node,
    };
    state.apply(&add("a", 1));
    state.apply(&add("a", 1));
    state.apply(&remove("a", 1));
    assert_eq!(state.route_count(), 0);
    state.apply(&remove("a", 1));
    assert_eq!(state.apply(&add("a", 3)), Outcome::UnknownNode);
    assert_eq!(
        state.apply(&Command::AddShared {
            group: "g".into(),
            filter: "a".into(),
            node: 3
        }),
        Outcome::UnknownNode
    );
    assert_eq!(state.route_count(), 0);

    state.apply(&add("old", 1));
    state.apply(&add("kept", 2));
    state.apply(&add("both", 1));
    state.apply(&add("both", 2));
    assert_eq!(
        state.apply(&Command::SyncRoutes {
            node: 1,
            filters: vec!["new".into(), "both".into()],
            shared: vec![("g".into(), "s".into())],
        }),
        Outcome::Done
    );
    let of_1 = state.routes_of(1);
    assert_eq!(of_1.filters, vec!["both".to_owned(), "new".to_owned()]);
    assert_eq!(of_1.shared, vec![("g".to_owned(), "s".to_owned())]);
    assert_eq!(
        state.routes_of(2).filters,
        vec!["both".to_owned(), "kept".to_owned()]
    );
    assert!(state.route("old").is_none());
    assert_eq!(
        state.apply(&Command::SyncRoutes {
            node: 7,
            filters: vec![],
            shared: vec![]
        }),
        Outcome::UnknownNode
    );
}

/// Retained messages: last writer in log order wins; a clear removes.
#[test]
fn retained_last_writer_wins() {
    let mut state = ClusterState::default();
    let retain = |payload: &[u8]| Command::Retain {
        message: RetainedMessage {
            topic: "t".into(),
            payload: payload.to_vec(),
            qos: 0,
            properties: vec![],
            expires_at_ms: None,
            origin: 1,
        },
    };
    state.apply(&retain(b"1"));
    state.apply(&retain(b"2"));
    assert_eq!(
        state.retained_message("t").map(|m| m.payload.clone()),
        Some(b"2".to_vec())
    );
    assert_eq!(state.retained_count(), 1);
    state.apply(&Command::ClearRetained {
        topic: "t".into(),
        origin: 2,
    });
    assert_eq!(state.retained_count(), 0);
}

/// A removed node's id is not registered again: a removed node still running, with a stale
/// view of the membership, cannot bring itself back (node ids are never reused).
#[test]
fn a_removed_node_cannot_register_again() {
    let mut state = ClusterState::default();
    let register = Command::RegisterNode {
        node: 7,
        cluster_addr: "10.0.0.7:7883".into(),
        mqtt_addrs: vec![],
    };
    assert_eq!(state.apply(&register), Outcome::Done);
    assert_eq!(state.apply(&Command::RemoveNode { node: 7 }), Outcome::Done);
    assert_eq!(state.apply(&register), Outcome::UnknownNode);
    assert!(state.node(7).is_none());
}

/// Issue 16, "If N1 is down ... its queued messages return when N1 does": a persistent
/// claim taking the id from another node lists that node as holding a queue; later
/// persistent claims keep it, `Returned` (fenced) takes it off, a clean start clears it.
#[test]
fn pending_returns_follow_claims_and_returned() {
    let mut state = ClusterState::default();
    for node in 1..=3 {
        state.apply(&register(node));
    }
    let pending = |state: &ClusterState| {
        state
            .session("c")
            .map(|session| session.pending_returns.iter().copied().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    state.apply(&claim("c", 1, true, false));
    assert!(pending(&state).is_empty());
    state.apply(&claim("c", 2, true, false));
    assert_eq!(pending(&state), vec![1]);
    state.apply(&claim("c", 3, true, false));
    assert_eq!(pending(&state), vec![1, 2]);
    let returned = |epoch, node| Command::Returned {
        client_id: "c".into(),
        epoch,
        node,
    };
    // Fenced: epoch 2 is not the current claim's (3).
    assert_eq!(
        state.apply(&returned(2, 2)),
        Outcome::StaleEpoch { current: 3 }
    );
    assert_eq!(state.apply(&returned(3, 2)), Outcome::Done);
    assert_eq!(pending(&state), vec![1]);
    // The claimer is never listed: node 1 takes its own copy into account.
    state.apply(&claim("c", 1, true, false));
    assert_eq!(pending(&state), vec![3]);
    state.apply(&claim("c", 2, true, true));
    assert!(pending(&state).is_empty());
    // An old serialization (no field) reads as none pending.
    let json = serde_json::to_string(&state).unwrap();
    assert!(!json.contains("pending_returns"));
}
