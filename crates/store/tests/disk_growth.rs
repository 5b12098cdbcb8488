//! Disk use follows the live data, not the history: a session whose messages are queued and
//! acknowledged 100 000 times ends with a directory about as small as it started.

mod common;

use common::*;
use tern_broker::persist::{Change, Persistence};
use tern_broker::{InflightState, SessionExpiry};

const CYCLES: u64 = 100_000;
/// Cycles per group commit; each commit queues a new group and retires the previous one, so
/// nothing is coalesced away and every put and delete reaches the engine.
const GROUP: u64 = 100;

fn churn(store: &tern_store::Store, first_id: u64) -> u64 {
    let client = s("churner");
    let mut last = tern_broker::Seq::NONE;
    let mut previous: Option<std::ops::Range<u64>> = None;
    let payload = [b'x'; 200];
    let mut group_start = 0;
    while group_start < CYCLES {
        let group = group_start..(group_start + GROUP).min(CYCLES);
        for cycle in group.clone() {
            let id = first_id + cycle;
            store.submit(Change::Message(
                (*message(id, "churn/topic", &payload)).clone(),
            ));
            store.submit(Change::Queued {
                client_id: client.clone(),
                position: cycle,
                delivery: delivery(id),
            });
        }
        if let Some(previous) = previous.take() {
            for cycle in previous {
                let id = first_id + cycle;
                let packet_id = (cycle % 65_535 + 1) as u16;
                store.submit(Change::Unqueued {
                    client_id: client.clone(),
                    position: cycle,
                });
                store.submit(Change::Inflight {
                    client_id: client.clone(),
                    packet_id,
                    state: InflightState::AwaitingPubAck,
                    delivery: delivery(id),
                });
                last = store.submit(Change::InflightDone {
                    client_id: client.clone(),
                    packet_id,
                });
            }
        }
        // Wait so that every group is its own commit.
        wait_durable(
            store,
            store.submit(Change::Session {
                client_id: client.clone(),
                expiry: SessionExpiry::Never,
                online: true,
            }),
        );
        previous = Some(group.clone());
        group_start = group.end;
    }
    if let Some(previous) = previous {
        for cycle in previous {
            last = store.submit(Change::Unqueued {
                client_id: client.clone(),
                position: cycle,
            });
        }
    }
    wait_durable(store, last);
    first_id + CYCLES
}

/// Waits until the store has deleted the bodies of the last few seconds (they are kept for
/// the fan-out grace of 5 s after they were stored).
fn settle() {
    std::thread::sleep(std::time::Duration::from_secs(7));
}

#[test]
fn churn_does_not_grow_the_directory() {
    let scratch = Scratch::new("growth");
    let mut next = 1;
    let mut rounds = Vec::new();
    for round in 1..=2 {
        let (store, recovered) = open(scratch.path());
        if round > 1 {
            assert_eq!(recovered.sessions.len(), 1);
            assert!(recovered.sessions[0].queue.is_empty());
            assert!(recovered.sessions[0].inflight.is_empty());
        }
        let started = std::time::Instant::now();
        next = churn(&store, next);
        let elapsed = started.elapsed();
        settle();
        let (journals, tables) = journal_and_tables(scratch.path());
        let (allocated, apparent) = disk_usage(scratch.path());
        println!(
            "round {round}: {CYCLES} cycles in {elapsed:.1?}; then allocated {allocated} B \
             (journals {journals} B, tables and the rest {tables} B), apparent {apparent} B"
        );
        rounds.push((journals, tables));
        store.close().unwrap();
    }
    // The payload history alone is 2 x 100 000 x 200 B = 40 MB (plus keys and tombstones).
    // What stays is bounded by the engine's journal limits (the active journal rotates past
    // 64 MB, sealed ones are deleted once flushed and forced out past 64 MiB) and, in tables,
    // by the live data, the bodies of the last 5 s (the fan-out grace), and the deleted data
    // the maintenance thread has not reclaimed yet (it compacts a keyspace after 50 000
    // deletes, or as many as it holds live entries).
    for (journals, tables) in rounds {
        assert!(journals < 140 * 1024 * 1024, "journals {journals} B");
        assert!(tables < 64 * 1024 * 1024, "tables {tables} B");
    }
}
