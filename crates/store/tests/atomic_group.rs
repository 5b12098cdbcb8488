//! An atomic group of changes becomes durable whole: nothing submitted after the group opened
//! (by any thread) is committed until it closes, while what came before is committed at once.

mod common;

use std::time::Duration;

use common::*;
use tern_broker::SessionExpiry;
use tern_broker::persist::{Change, Persistence};

fn session(client: &str) -> Change {
    Change::Session {
        client_id: s(client),
        expiry: SessionExpiry::Never,
        online: false,
    }
}

#[test]
fn a_group_is_committed_only_once_it_closes() {
    let scratch = Scratch::new("group-held");
    let (store, _) = open(scratch.path());
    let before = store.submit(session("before"));
    let token = store.begin_group();
    let inside = store.submit(session("inside"));
    // Another thread's change during the group waits with it.
    let concurrent = std::thread::scope(|scope| {
        scope
            .spawn(|| store.submit(session("concurrent")))
            .join()
            .unwrap()
    });
    assert_eq!(store.submitted(), concurrent);
    wait_durable(&store, before);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        store.durable() < inside,
        "a change of an open group was committed"
    );

    store.end_group(token);
    wait_durable(&store, concurrent);
    store.close().unwrap();
    drop(store);

    let (_store, recovered) = open(scratch.path());
    let mut clients: Vec<String> = recovered
        .sessions
        .iter()
        .map(|session| session.client_id.to_string())
        .collect();
    clients.sort();
    assert_eq!(clients, ["before", "concurrent", "inside"]);
}

#[test]
fn overlapping_groups_hold_back_from_the_earliest_start() {
    let scratch = Scratch::new("group-overlap");
    let (store, _) = open(scratch.path());
    let first = store.begin_group();
    let a = store.submit(session("a"));
    let second = store.begin_group();
    let b = store.submit(session("b"));
    // The later group closes first: the earlier one still holds everything back.
    store.end_group(second);
    std::thread::sleep(Duration::from_millis(300));
    assert!(store.durable() < a);
    store.end_group(first);
    wait_durable(&store, b);
    // Without an open group, changes are committed as usual.
    let c = store.submit(session("c"));
    wait_durable(&store, c);
}
