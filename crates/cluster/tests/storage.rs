//! The cluster's Raft storage on fjall (issue 16: "Raft log and state machine in the node's
//! fjall store, log appends durable before they are acknowledged"): openraft's own storage
//! suite, and what survives dropping the stores and reopening the directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder,
    StorageError, Vote,
};
use tern_cluster::command::RetainedMessage;
use tern_cluster::{
    Applied, Command, LogStore, NodeId, Outcome, Request, StateStore, TypeConfig, open_storage,
};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "tern-cluster-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateStore), StorageError<NodeId>> {
        let dir = TempDir::new("suite");
        let (events, _) = unbounded_channel();
        let (log, state) = open_storage(dir.path(), events).map_err(|e| {
            StorageError::from(openraft::StorageIOError::write(openraft::AnyError::new(&e)))
        })?;
        Ok((dir, log, state))
    }
}

/// openraft's storage suite (every test of `Suite::test_store`: log state, vote, reads,
/// purge, truncate, append, membership, applied state, snapshot build and transfer) against
/// `LogStore` and `StateStore` on a fresh directory each.
#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("openraft storage suite: {e}");
    }
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64, commands: Vec<Command>) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Request { commands }),
    }
}

fn register(node: NodeId) -> Command {
    Command::RegisterNode {
        node,
        cluster_addr: format!("127.0.0.{node}:7883"),
        mqtt_addrs: vec![format!("127.0.0.{node}:1883")],
    }
}

fn some_entries() -> Vec<Entry<TypeConfig>> {
    vec![
        Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Membership(Membership::new(
                vec![[1, 2, 3].into_iter().collect()],
                None,
            )),
        },
        entry(1, 2, vec![register(1), register(2)]),
        entry(
            1,
            3,
            vec![
                Command::Claim {
                    client_id: "c".into(),
                    node: 1,
                    persistent: true,
                    clean_start: false,
                },
                Command::AddRoute {
                    filter: "a/#".into(),
                    node: 2,
                },
            ],
        ),
        Entry {
            log_id: log_id(2, 4),
            payload: EntryPayload::Blank,
        },
        entry(
            2,
            5,
            vec![Command::Retain {
                message: RetainedMessage {
                    topic: "a/b".into(),
                    payload: vec![0, 1, 2, 255],
                    qos: 1,
                    properties: vec![],
                    expires_at_ms: Some(42),
                    origin: 2,
                },
            }],
        ),
    ]
}

fn open(dir: &Path) -> (LogStore, StateStore, UnboundedReceiver<Applied>) {
    let (events, receiver) = unbounded_channel();
    let (log, state) = open_storage(dir, events).expect("open the cluster storage");
    (log, state, receiver)
}

/// Durability (issue 16: "log appends durable before they are acknowledged"): after
/// `append` reported the entries flushed and `save_vote`/`save_committed` returned, dropping
/// both stores and reopening the directory gives the same log state, vote, committed id and
/// entries; purge and truncate survive too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_vote_and_entries_survive_reopen() {
    let dir = TempDir::new("reopen-log");
    let entries = some_entries();
    let vote = Vote::new_committed(2, 1);
    {
        let (mut log, _state, _events) = open(dir.path());
        log.save_vote(&vote).await.expect("save vote");
        log.blocking_append(entries.clone()).await.expect("append");
        log.save_committed(Some(log_id(1, 3)))
            .await
            .expect("commit");
    }
    {
        let (mut log, _state, _events) = open(dir.path());
        assert_eq!(log.read_vote().await.expect("vote"), Some(vote));
        assert_eq!(
            log.read_committed().await.expect("committed"),
            Some(log_id(1, 3))
        );
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_log_id, Some(log_id(2, 5)));
        assert_eq!(state.last_purged_log_id, None);
        let read = log.try_get_log_entries(..).await.expect("entries");
        assert_eq!(read, entries);

        log.purge(log_id(1, 2)).await.expect("purge");
        log.truncate(log_id(2, 5)).await.expect("truncate");
    }
    {
        let (mut log, _state, _events) = open(dir.path());
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
        assert_eq!(state.last_log_id, Some(log_id(2, 4)));
        let read = log.try_get_log_entries(0..100).await.expect("entries");
        assert_eq!(read, entries[2..4].to_vec());
    }
}

/// A restart loads the state machine from its last snapshot (issue 16: "Raft log and state
/// machine in the node's fjall store"): build a snapshot, drop, reopen: the same state, last
/// applied id, membership and current snapshot; applying the rest of the log then gives the
/// state of a store that never restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_survives_reopen() {
    let dir = TempDir::new("reopen-snapshot");
    let entries = some_entries();
    let (before, snapshot_meta) = {
        let (_log, mut sm, mut events) = open(dir.path());
        sm.apply(entries[..3].to_vec()).await.expect("apply");
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build snapshot");
        // What was applied was announced, after it was applied, entry by entry.
        let Some(Applied::Commands {
            log_index,
            response,
            ..
        }) = events.recv().await
        else {
            panic!("no event for entry 2");
        };
        assert_eq!(log_index, 2);
        assert_eq!(response.outcomes, vec![Outcome::Done, Outcome::Done]);
        let Some(Applied::Commands {
            log_index,
            request,
            response,
        }) = events.recv().await
        else {
            panic!("no event for entry 3");
        };
        assert_eq!(log_index, 3);
        assert_eq!(request.commands.len(), 2);
        assert_eq!(
            response.outcomes,
            vec![
                Outcome::Claimed {
                    epoch: 1,
                    previous: None
                },
                Outcome::Done
            ]
        );
        // The membership entry (1) sent nothing.
        assert!(events.try_recv().is_err());
        let state = sm.state().read().clone();
        (state, snapshot.meta)
    };
    let (_log, mut sm, _events) = open(dir.path());
    assert_eq!(*sm.state().read(), before);
    let (applied, membership) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, Some(log_id(1, 3)));
    assert_eq!(membership, snapshot_meta.last_membership);
    let current = sm
        .get_current_snapshot()
        .await
        .expect("current snapshot")
        .expect("a snapshot");
    assert_eq!(current.meta, snapshot_meta);

    sm.apply(entries[3..].to_vec())
        .await
        .expect("apply the rest");
    let other = TempDir::new("reopen-snapshot-other");
    let (_l, mut straight, _e) = open(other.path());
    straight.apply(entries.clone()).await.expect("apply all");
    assert_eq!(*sm.state().read(), *straight.state().read());
    assert_eq!(sm.state().read().retained_count(), 1);
}

/// A snapshot installed from the leader replaces the state, is stored, and is announced as
/// `Applied::Snapshot` so the runtime rebuilds what it derives from the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_snapshot_replaces_state_and_is_announced() {
    let leader_dir = TempDir::new("install-leader");
    let follower_dir = TempDir::new("install-follower");
    let (_l, mut leader, _le) = open(leader_dir.path());
    leader.apply(some_entries()).await.expect("apply");
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");

    {
        let (_f, mut follower, mut events) = open(follower_dir.path());
        follower
            .apply(vec![entry(1, 1, vec![register(9)])])
            .await
            .expect("apply");
        let _ = events.recv().await;
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot.clone())
            .await
            .expect("install");
        assert!(matches!(
            events.recv().await,
            Some(Applied::Snapshot { last_index }) if last_index > 0
        ));
        assert_eq!(*follower.state().read(), *leader.state().read());
        assert!(follower.state().read().node(9).is_none());
    }
    let (_f, follower, _events) = open(follower_dir.path());
    assert_eq!(*follower.state().read(), *leader.state().read());
    assert_eq!(follower.last_applied(), Some(log_id(2, 5)));
}

/// The current snapshot never goes back in the log: openraft builds snapshots in a task of
/// their own, and a build that ends after a newer snapshot was installed must not replace it
/// (the log before the newer one may be purged already).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_build_does_not_replace_a_newer_installed_snapshot() {
    let leader_dir = TempDir::new("late-leader");
    let follower_dir = TempDir::new("late-follower");
    let (_l, mut leader, _le) = open(leader_dir.path());
    leader.apply(some_entries()).await.expect("apply");
    let newer = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");

    let (_f, mut follower, _fe) = open(follower_dir.path());
    follower
        .apply(some_entries()[..2].to_vec())
        .await
        .expect("apply");
    let mut late_builder = follower.get_snapshot_builder().await;
    follower
        .install_snapshot(&newer.meta, newer.snapshot.clone())
        .await
        .expect("install");
    let late = late_builder.build_snapshot().await.expect("late build");
    assert_eq!(late.meta.last_log_id, Some(log_id(1, 2)));
    let current = follower
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("a snapshot");
    assert_eq!(current.meta, newer.meta);
}

/// A corrupt log entry is a storage error, not a panic (common rules: no unwrap on data from
/// disk); a foreign keyspace or an unknown format version refuses to open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_foreign_data_is_an_error() {
    let dir = TempDir::new("corrupt");
    {
        let db = fjall::Database::builder(dir.path()).open().expect("open");
        let log = db
            .keyspace("log", fjall::KeyspaceCreateOptions::default)
            .expect("keyspace");
        let meta = db
            .keyspace("meta", fjall::KeyspaceCreateOptions::default)
            .expect("keyspace");
        meta.insert("format", "1").expect("insert");
        log.insert(7u64.to_be_bytes(), "{not json").expect("insert");
        db.persist(fjall::PersistMode::SyncAll).expect("persist");
    }
    {
        let (mut log, _sm, _events) = open(dir.path());
        assert!(log.try_get_log_entries(..).await.is_err());
        assert!(log.get_log_state().await.is_err());
    }

    let foreign = TempDir::new("foreign");
    {
        let db = fjall::Database::builder(foreign.path())
            .open()
            .expect("open");
        db.keyspace("messages", fjall::KeyspaceCreateOptions::default)
            .expect("keyspace");
        db.persist(fjall::PersistMode::SyncAll).expect("persist");
    }
    let (events, _) = unbounded_channel();
    let refused = open_storage(foreign.path(), events);
    assert!(matches!(
        refused,
        Err(tern_cluster::ClusterError::Foreign { .. })
    ));

    let future = TempDir::new("future");
    {
        let db = fjall::Database::builder(future.path())
            .open()
            .expect("open");
        let meta = db
            .keyspace("meta", fjall::KeyspaceCreateOptions::default)
            .expect("keyspace");
        meta.insert("format", "99").expect("insert");
        db.persist(fjall::PersistMode::SyncAll).expect("persist");
    }
    let (events, _) = unbounded_channel();
    let refused = open_storage(future.path(), events);
    assert!(matches!(
        refused,
        Err(tern_cluster::ClusterError::UnsupportedVersion { .. })
    ));
}

/// What one durable append and one applied command cost (docs/architecture.md, "A cluster:
/// the metadata plane"). Bounded: 200 appends, 100 000 commands. Run with
/// `cargo test -j2 -p tern-cluster --test storage -- --ignored --nocapture measure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_durable_append_and_apply() {
    use std::time::{Duration, Instant};

    let dir = TempDir::new("measure");
    let (mut log, mut sm, _events) = open(dir.path());
    let claim = |i: u64| Command::Claim {
        client_id: format!("client-{i}"),
        node: 1,
        persistent: true,
        clean_start: false,
    };
    log.blocking_append(vec![entry(1, 1, vec![register(1)])])
        .await
        .expect("append");

    // One entry of one command per append: the latency a proposal waits for on each voter.
    let mut times: Vec<Duration> = Vec::new();
    for i in 2..202 {
        let started = Instant::now();
        log.blocking_append(vec![entry(1, i, vec![claim(i)])])
            .await
            .expect("append");
        times.push(started.elapsed());
    }
    times.sort_unstable();
    println!(
        "durable append, 1 entry of 1 command: median {:?}, p90 {:?}, max {:?} (200 appends)",
        times[100], times[180], times[199]
    );

    // One entry of 100 commands: a batched proposal.
    let started = Instant::now();
    let batch: Vec<Command> = (0..100).map(|i| claim(1000 + i)).collect();
    for i in 0..20 {
        log.blocking_append(vec![entry(1, 202 + i, batch.clone())])
            .await
            .expect("append");
    }
    println!(
        "durable append, 1 entry of 100 commands: {:?} per append (20 appends)",
        started.elapsed() / 20
    );

    // Apply: the pure state machine, then through StateStore (entries, lock, events).
    // Per group of four: a new persistent session claimed, a subscription of it, a route
    // added and another removed (5 000 filters).
    let commands: Vec<Command> = (0..100_000u64)
        .map(|i| {
            let session = i / 4;
            match i % 4 {
                0 => claim(session),
                1 => Command::Subscribe {
                    client_id: format!("client-{session}"),
                    epoch: 1,
                    filter: format!("cmd/{session}"),
                    options: tern_cluster::command::SubscriptionOptions {
                        options: 1,
                        identifier: None,
                    },
                },
                2 => Command::AddRoute {
                    filter: format!("sensors/{}/#", i % 5_000),
                    node: 1,
                },
                _ => Command::RemoveRoute {
                    filter: format!("sensors/{}/#", (i + 1) % 5_000),
                    node: 1,
                },
            }
        })
        .collect();
    let mut state = tern_cluster::ClusterState::default();
    state.apply(&register(1));
    let started = Instant::now();
    for command in &commands {
        state.apply(command);
    }
    println!(
        "ClusterState::apply: {:?} per command (100 000 commands, 25 000 sessions)",
        started.elapsed() / 100_000
    );
    let entries: Vec<Entry<TypeConfig>> = commands
        .chunks(100)
        .enumerate()
        .map(|(i, chunk)| entry(1, i as u64 + 2, chunk.to_vec()))
        .collect();
    sm.apply(vec![entry(1, 1, vec![register(1)])])
        .await
        .expect("apply");
    let started = Instant::now();
    sm.apply(entries).await.expect("apply");
    println!(
        "StateStore::apply: {:?} per command (entries of 100 commands, events included)",
        started.elapsed() / 100_000
    );
    let started = Instant::now();
    let mut builder = sm.get_snapshot_builder().await;
    let copied = started.elapsed();
    let snapshot = builder.build_snapshot().await.expect("snapshot");
    println!(
        "snapshot of 25 000 sessions with a subscription each: {} bytes; the state machine's \
         task copies the state in {copied:?}, the build (JSON, fsync) takes {:?} more",
        snapshot.snapshot.get_ref().len(),
        started.elapsed() - copied
    );
}
