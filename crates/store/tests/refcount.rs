//! A message body is stored once and lives exactly as long as a queued or in-flight delivery
//! refers to it; SessionEnded removes everything of the session. Checked on the engine's
//! keyspaces themselves, after the store is closed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use fjall::{Database, KeyspaceCreateOptions};
use tern_broker::persist::{Change, Persistence};
use tern_broker::{InflightState, SessionExpiry, SubscriptionRecord};

const SPACES: [&str; 8] = [
    "sessions",
    "subscriptions",
    "queue",
    "inflight",
    "inbound_qos2",
    "messages",
    "retained",
    "wills",
];

/// Entries per keyspace, read with the engine directly (the store must be closed).
fn counts(dir: &Path) -> Vec<(&'static str, usize)> {
    let db = Database::builder(dir.join("engine")).open().unwrap();
    SPACES
        .iter()
        .map(|name| {
            let keyspace = db.keyspace(name, KeyspaceCreateOptions::default).unwrap();
            (*name, keyspace.len().unwrap())
        })
        .collect()
}

fn count(dir: &Path, name: &str) -> usize {
    counts(dir)
        .into_iter()
        .find(|(space, _)| *space == name)
        .unwrap()
        .1
}

fn session(client: &str) -> Change {
    Change::Session {
        client_id: s(client),
        expiry: SessionExpiry::Never,
        online: false,
    }
}

fn queued(client: &str, position: u64, message_id: u64) -> Change {
    Change::Queued {
        client_id: s(client),
        position,
        delivery: delivery(message_id),
    }
}

fn unqueued(client: &str, position: u64) -> Change {
    Change::Unqueued {
        client_id: s(client),
        position,
    }
}

fn inflight(client: &str, packet_id: u16, state: InflightState, message_id: u64) -> Change {
    Change::Inflight {
        client_id: s(client),
        packet_id,
        state,
        delivery: delivery(message_id),
    }
}

fn inflight_done(client: &str, packet_id: u16) -> Change {
    Change::InflightDone {
        client_id: s(client),
        packet_id,
    }
}

/// Runs `setup` (each group its own commit) and closes the store, then runs `changes` on the
/// reopened store and closes it. Bodies read back at start-up are past the fan-out grace (a body
/// stored in this run is kept a few seconds after its last reference goes, see the crate), so
/// the second part shows the reference counting itself.
fn run(dir: &Path, setup: Vec<Vec<Change>>, changes: Vec<Vec<Change>>) {
    for groups in [setup, changes] {
        let (store, _) = open(dir);
        for group in groups {
            commit(&store, group);
        }
        store.close().unwrap();
    }
}

#[test]
fn a_body_is_stored_once_and_kept_while_any_delivery_refers_to_it() {
    let scratch = Scratch::new("refs-kept");
    run(
        scratch.path(),
        vec![vec![
            session("a"),
            session("b"),
            session("c"),
            Change::Message((*message(1, "t", b"shared")).clone()),
            queued("a", 0, 1),
            queued("b", 0, 1),
            inflight("c", 1, InflightState::AwaitingPubAck, 1),
        ]],
        vec![vec![unqueued("a", 0), inflight_done("c", 1)]],
    );
    assert_eq!(count(scratch.path(), "messages"), 1, "b still refers to it");

    let (store, recovered) = open(scratch.path());
    let b = recovered
        .sessions
        .iter()
        .find(|session| session.client_id == s("b"))
        .unwrap();
    assert_eq!(&b.queue[0].1.message.payload[..], b"shared");
    commit(&store, [unqueued("b", 0)]);
    store.close().unwrap();
    drop(store);
    assert_eq!(
        count(scratch.path(), "messages"),
        0,
        "the last reference went"
    );
}

#[test]
fn an_inflight_state_update_does_not_count_twice() {
    let scratch = Scratch::new("refs-update");
    run(
        scratch.path(),
        vec![
            vec![
                session("a"),
                Change::Message((*message(1, "t", b"qos2")).clone()),
                inflight("a", 7, InflightState::AwaitingPubRec, 1),
            ],
            vec![inflight("a", 7, InflightState::AwaitingPubComp, 1)],
        ],
        vec![
            vec![inflight("a", 7, InflightState::AwaitingPubComp, 1)],
            vec![inflight_done("a", 7)],
        ],
    );
    assert_eq!(count(scratch.path(), "messages"), 0);
    assert_eq!(count(scratch.path(), "inflight"), 0);
}

#[test]
fn a_packet_id_reused_for_another_message_releases_the_first() {
    let scratch = Scratch::new("refs-reuse");
    run(
        scratch.path(),
        vec![vec![
            session("a"),
            Change::Message((*message(1, "t", b"one")).clone()),
            Change::Message((*message(2, "t", b"two")).clone()),
            inflight("a", 7, InflightState::AwaitingPubAck, 1),
            queued("a", 0, 2),
        ]],
        vec![vec![
            inflight("a", 7, InflightState::AwaitingPubAck, 2),
            unqueued("a", 0),
        ]],
    );
    assert_eq!(count(scratch.path(), "messages"), 1);
    let (_store, recovered) = open(scratch.path());
    assert_eq!(recovered.sessions[0].inflight[0].2.message.id, 2);
}

#[test]
fn a_body_submitted_again_is_stored_once_and_held_per_submission() {
    let scratch = Scratch::new("refs-resubmit");
    run(
        scratch.path(),
        vec![
            vec![
                session("a"),
                Change::Message((*message(1, "t", b"p")).clone()),
                queued("a", 0, 1),
                Change::MessageRouted { id: 1 },
            ],
            // As when another session becomes persistent and writes its contents.
            vec![
                session("b"),
                Change::Message((*message(1, "t", b"p")).clone()),
                queued("b", 4, 1),
                Change::MessageRouted { id: 1 },
            ],
        ],
        vec![
            vec![Change::Message((*message(1, "t", b"p")).clone())],
            vec![unqueued("a", 0)],
            vec![unqueued("b", 4)],
            // The last holder, the router, lets go: the body goes.
            vec![Change::MessageRouted { id: 1 }],
        ],
    );
    assert_eq!(count(scratch.path(), "messages"), 0);
}

#[test]
fn changes_coalesced_within_one_commit_leave_nothing_behind() {
    let scratch = Scratch::new("coalesce");
    let (store, _) = open(scratch.path());
    commit(&store, [session("a")]);
    // Submitted back to back: most land in one group commit.
    let mut last = tern_broker::Seq::NONE;
    for n in 0..1000u64 {
        store.submit(Change::Message((*message(n + 1, "t", b"p")).clone()));
        store.submit(queued("a", n, n + 1));
        store.submit(unqueued("a", n));
        store.submit(inflight(
            "a",
            (n % 100 + 1) as u16,
            InflightState::AwaitingPubAck,
            n + 1,
        ));
        last = store.submit(inflight_done("a", (n % 100 + 1) as u16));
    }
    wait_durable(&store, last);
    store.close().unwrap();
    drop(store);
    // Only the bodies were written (kept for the fan-out grace); the next start drops them.
    let (store, _) = open(scratch.path());
    store.close().unwrap();
    drop(store);
    let counts = counts(scratch.path());
    assert_eq!(
        counts,
        vec![
            ("sessions", 1),
            ("subscriptions", 0),
            ("queue", 0),
            ("inflight", 0),
            ("inbound_qos2", 0),
            ("messages", 0),
            ("retained", 0),
            ("wills", 0)
        ]
    );
}

#[test]
fn session_ended_removes_everything_of_the_session_and_nothing_else() {
    let scratch = Scratch::new("ended");
    let record = SubscriptionRecord {
        options: Default::default(),
        identifier: Some(1),
    };
    let everything = |client: &str, first_id: u64| {
        vec![
            session(client),
            Change::Subscribed {
                client_id: s(client),
                filter: s("a/#"),
                record,
            },
            Change::Subscribed {
                client_id: s(client),
                filter: s("b"),
                record,
            },
            Change::Message((*message(first_id, "t", b"own")).clone()),
            queued(client, 0, first_id),
            queued(client, 1, 100),
            inflight(client, 1, InflightState::AwaitingPubRec, 100),
            inflight(client, 2, InflightState::AwaitingPubAck, first_id),
            Change::InboundQos2 {
                client_id: s(client),
                packet_id: 9,
            },
            Change::Will {
                client_id: s(client),
                message: message(0, "will", b"w"),
                delay: Duration::from_secs(1),
                expiry_interval: None,
            },
        ]
    };
    let mut first = vec![Change::Message((*message(100, "t", b"shared")).clone())];
    first.extend(everything("gone", 1));
    first.extend(everything("gone-too", 2));
    // "gone" and "gone2" share a prefix with "gone-too"'s neighbours, not its keys.
    first.extend(everything("gone2", 3));
    run(
        scratch.path(),
        vec![first],
        vec![vec![Change::SessionEnded {
            client_id: s("gone"),
        }]],
    );
    let after_first = counts(scratch.path());
    assert_eq!(
        after_first,
        vec![
            ("sessions", 2),
            ("subscriptions", 4),
            ("queue", 4),
            ("inflight", 4),
            ("inbound_qos2", 2),
            ("messages", 3),
            ("retained", 0),
            ("wills", 2)
        ],
        "body 1 went with its only session; 100 stays for the others"
    );

    let (store, recovered) = open(scratch.path());
    let names: Vec<String> = recovered
        .sessions
        .iter()
        .map(|session| session.client_id.to_string())
        .collect();
    assert_eq!(names, vec!["gone-too", "gone2"]);
    commit(
        &store,
        [
            Change::SessionEnded {
                client_id: s("gone-too"),
            },
            Change::SessionEnded {
                client_id: s("gone2"),
            },
        ],
    );
    store.close().unwrap();
    drop(store);
    let left = counts(scratch.path());
    assert!(left.iter().all(|(_, n)| *n == 0), "{left:?}");
}

#[test]
fn a_body_no_delivery_refers_to_is_deleted_at_the_next_start() {
    let scratch = Scratch::new("unreferenced");
    let (store, _) = open(scratch.path());
    commit(
        &store,
        [Change::Message((*message(1, "t", b"orphan")).clone())],
    );
    store.close().unwrap();
    drop(store);
    assert_eq!(count(scratch.path(), "messages"), 1);
    let (store, recovered) = open(scratch.path());
    assert_eq!(recovered.next_message_id, 2, "its id is not reused");
    store.close().unwrap();
    drop(store);
    assert_eq!(count(scratch.path(), "messages"), 0);
}

#[test]
fn a_body_goes_with_its_last_reference() {
    let scratch = Scratch::new("last-reference");
    let (store, _) = open(scratch.path());
    commit(
        &store,
        [
            session("a"),
            Change::Message((*message(1, "t", b"young")).clone()),
            queued("a", 0, 1),
            Change::MessageRouted { id: 1 },
        ],
    );
    store.close().unwrap();
    drop(store);
    assert_eq!(count(scratch.path(), "messages"), 1, "kept while queued");
    let (store, _) = open(scratch.path());
    commit(&store, [unqueued("a", 0)]);
    store.close().unwrap();
    drop(store);
    assert_eq!(count(scratch.path(), "messages"), 0);
}

#[test]
fn a_dispatched_delivery_moves_from_the_queue_in_flight_in_one_change() {
    let scratch = Scratch::new("refs-dispatched");
    run(
        scratch.path(),
        vec![vec![
            session("a"),
            Change::Message((*message(1, "t", b"moved")).clone()),
            queued("a", 3, 1),
            Change::MessageRouted { id: 1 },
        ]],
        vec![vec![Change::Dispatched {
            client_id: s("a"),
            position: 3,
            packet_id: 9,
            state: InflightState::AwaitingPubRec,
            delivery: delivery(1),
        }]],
    );
    assert_eq!(count(scratch.path(), "queue"), 0);
    assert_eq!(count(scratch.path(), "inflight"), 1);
    assert_eq!(count(scratch.path(), "messages"), 1, "the body stays");
    let (_store, recovered) = open(scratch.path());
    let session = &recovered.sessions[0];
    assert!(session.queue.is_empty());
    assert_eq!(session.inflight.len(), 1);
    assert_eq!(session.inflight[0].0, 9);
    assert_eq!(&session.inflight[0].2.message.payload[..], b"moved");
}
