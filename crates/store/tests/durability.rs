//! Sequence numbers, the durable mark and wakeups; and that what was durable survives an
//! abrupt end: a drop without close, and a process that aborts.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_broker::Seq;

use common::*;
use tern_broker::SessionExpiry;
use tern_broker::persist::{Change, Persistence};
use tern_store::{Durability, Store};

fn session(client: &str) -> Change {
    Change::Session {
        client_id: s(client),
        expiry: SessionExpiry::Never,
        online: true,
    }
}

#[test]
fn sequence_numbers_start_at_one_and_become_durable() {
    for durability in [Durability::Process, Durability::Fsync] {
        let scratch = Scratch::new("seq");
        let (store, _) = Store::open(scratch.path(), durability).unwrap();
        assert_eq!(store.durable(), Seq::NONE);
        let seqs: Vec<Seq> = (0..50)
            .map(|n| store.submit(session(&format!("c{n}"))))
            .collect();
        assert_eq!(seqs, (1..=50).map(Seq).collect::<Vec<_>>());
        wait_durable(&store, Seq(50));
        assert_eq!(store.durable(), Seq(50));
        assert!(store.failure().is_none());
    }
}

#[test]
fn wakeups_fire_once_durable_and_at_once_when_already() {
    let scratch = Scratch::new("wake");
    let (store, _) = open(scratch.path());
    let seq = store.submit(session("a"));
    let pending = Arc::new(Counter::default());
    store.wake_when_durable(seq, pending.clone());
    let later = Arc::new(Counter::default());
    // Registered for a sequence number not submitted yet: waits for it.
    store.wake_when_durable(seq.next(), later.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while pending.count() == 0 {
        assert!(Instant::now() < deadline, "not woken");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(store.durable() >= seq, "woken before durable");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        later.count(),
        0,
        "woken for a sequence number never submitted"
    );

    let done = Arc::new(Counter::default());
    store.wake_when_durable(seq, done.clone());
    assert_eq!(done.count(), 1, "already durable: woken at once");

    let next = store.submit(session("b"));
    assert_eq!(next, seq.next());
    wait_durable(&store, next);
    let deadline = Instant::now() + Duration::from_secs(10);
    while later.count() == 0 {
        assert!(Instant::now() < deadline, "not woken");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(pending.count(), 1, "woken once");
}

#[test]
fn many_submitters_share_commits_and_every_change_lands() {
    let scratch = Scratch::new("threads");
    let (store, _) = Store::open(scratch.path(), Durability::Fsync).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|thread| {
            let store = store.clone();
            std::thread::spawn(move || {
                for n in 0..50 {
                    let seq = store.submit(session(&format!("t{thread}-{n:02}")));
                    let woken = Arc::new(Counter::default());
                    store.wake_when_durable(seq, woken.clone());
                    while woken.count() == 0 {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(store.durable(), Seq(400));
    store.close().unwrap();
    drop(store);
    let (_store, recovered) = open(scratch.path());
    assert_eq!(recovered.sessions.len(), 400);
}

#[test]
fn close_commits_what_is_pending() {
    let scratch = Scratch::new("close");
    let (store, _) = open(scratch.path());
    let mut last = Seq::NONE;
    for n in 0..1000 {
        last = store.submit(session(&format!("c{n:04}")));
    }
    store.close().unwrap();
    assert_eq!(store.durable(), last);
    store.close().unwrap();
    drop(store);
    let (_store, recovered) = open(scratch.path());
    assert_eq!(recovered.sessions.len(), 1000);
}

#[test]
fn durable_changes_survive_a_drop_without_close() {
    let scratch = Scratch::new("drop");
    {
        let (store, _) = open(scratch.path());
        commit(
            &store,
            [
                session("kept"),
                Change::Message((*message(1, "t", b"p")).clone()),
            ],
        );
        commit(
            &store,
            [Change::Queued {
                client_id: s("kept"),
                position: 0,
                delivery: delivery(1),
            }],
        );
        drop(store);
    }
    let (_store, recovered) = open(scratch.path());
    assert_eq!(recovered.sessions.len(), 1);
    assert_eq!(recovered.sessions[0].queue.len(), 1);
    assert_eq!(&recovered.sessions[0].queue[0].1.message.payload[..], b"p");
}

const CHILD_DIR: &str = "TERN_STORE_TEST_CHILD_DIR";

/// Run as a child process by the test below: commits, waits until durable, then aborts
/// (no destructor, no flush, no close: as close to `kill -9` as a process can do to itself).
#[test]
fn child_commits_then_aborts() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let (store, _) = Store::open(std::path::Path::new(&dir), Durability::Process).unwrap();
    commit(
        &store,
        [
            session("survivor"),
            Change::Message((*message(5, "t", b"durable")).clone()),
        ],
    );
    commit(
        &store,
        [Change::Queued {
            client_id: s("survivor"),
            position: 1,
            delivery: delivery(5),
        }],
    );
    // Not waited for: may or may not survive.
    store.submit(session("maybe"));
    std::process::abort();
}

#[test]
fn durable_changes_survive_an_aborted_process() {
    let scratch = Scratch::new("abort");
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_commits_then_aborts",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, scratch.path())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must abort");
    let (_store, recovered) = open(scratch.path());
    let survivor = recovered
        .sessions
        .iter()
        .find(|session| session.client_id == s("survivor"))
        .expect("the durable session survives");
    assert_eq!(survivor.queue.len(), 1);
    assert_eq!(&survivor.queue[0].1.message.payload[..], b"durable");
    assert_eq!(recovered.next_message_id, 6);
}
