//! A full or slow disk (issue 17): the store refuses new work below its low watermark and takes
//! it again when space returns, without a restart; a commit that hits "no space left" poisons
//! the engine, which the store reopens by itself and retries on once there is room, losing
//! nothing; it opens on a full disk, reads everything back and refuses new work; and a slow
//! disk reports congestion with the bytes waiting bounded.
//!
//! The disk is a real small file system: a size-limited tmpfs that the test mounts (it needs
//! root; where mounting is not permitted the test says why and returns). The data directory is
//! a subdirectory of the mount, and filler files beside it take the space.

mod common;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::mpsc::{Sender, channel};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tern_broker::persist::{Change, Persistence, Recovered};
use tern_broker::{Message, SessionExpiry, Wakeup};
use tern_store::{DiskReserve, Durability, Store, StoreOptions};

const MIB: u64 = 1 << 20;
/// How long a state flip may take: the store measures at least every idle tick (1 s).
const FLIP_DEADLINE: Duration = Duration::from_secs(5);

/// The store's logs on the test's output, filtered by `RUST_LOG` (`cargo test -- --nocapture`
/// shows them).
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A tmpfs of `size` MiB mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// `None` (and says why) where mounting is not permitted.
    fn mount(name: &str, size_mib: u64) -> Option<Tmpfs> {
        logs();
        let path =
            std::env::temp_dir().join(format!("tern-full-disk-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&path)
            .output();
        match output {
            Ok(output) if output.status.success() => Some(Tmpfs { path }),
            Ok(output) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs on {} ({}); run as root to test a full disk",
                    path.display(),
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                let _ = std::fs::remove_dir(&path);
                None
            }
            Err(error) => {
                eprintln!("skipped: cannot run mount ({error}); run as root to test a full disk");
                let _ = std::fs::remove_dir(&path);
                None
            }
        }
    }

    /// The data directory: a subdirectory, since the store refuses foreign files beside its own.
    fn data(&self) -> PathBuf {
        self.path.join("data")
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    fn free(&self) -> u64 {
        let stat = rustix::fs::statvfs(&self.path).unwrap();
        stat.f_bavail * stat.f_frsize
    }

    /// Appends to the filler file until at most `leave` bytes are free (0: until the file
    /// system refuses).
    fn fill_to(&self, leave: u64) {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .unwrap();
        let chunk = vec![0x5a_u8; 64 << 10];
        loop {
            let free = self.free();
            if free <= leave {
                break;
            }
            let len = usize::try_from((free - leave).min(chunk.len() as u64)).unwrap();
            match file.write(&chunk[..len]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.raw_os_error() == Some(28) => break,
                Err(error) => panic!("filling the disk: {error}"),
            }
        }
        file.sync_all().ok();
    }

    /// Shrinks the filler file by `bytes`.
    fn release(&self, bytes: u64) {
        let file = File::options().write(true).open(self.filler()).unwrap();
        let len = file.metadata().unwrap().len();
        file.set_len(len.saturating_sub(bytes)).unwrap();
    }

    fn remove_filler(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

fn options(min_free_disk: DiskReserve) -> StoreOptions {
    StoreOptions {
        min_free_disk,
        ..StoreOptions::new(Durability::Process)
    }
}

/// Polls `condition` until it holds; fails after `FLIP_DEADLINE`.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + FLIP_DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn session(client: &str, online: bool) -> Change {
    Change::Session {
        client_id: s(client),
        expiry: SessionExpiry::Never,
        online,
    }
}

fn retained(topic: &str, payload: Vec<u8>) -> Change {
    Change::Retained(Arc::new(Message {
        retain: true,
        id: 0,
        payload: Bytes::from(payload),
        ..(*message(0, topic, b"")).clone()
    }))
}

/// A persistent session with one queued message.
fn queued_session(client: &str, id: u64) -> Vec<Change> {
    vec![
        session(client, true),
        Change::Message((*message(id, &format!("q/{client}"), &[7; 1000])).clone()),
        Change::Queued {
            client_id: s(client),
            position: 1,
            delivery: delivery(id),
        },
        Change::MessageRouted { id },
    ]
}

/// What a start read back, comparable: each session with its queue (position, message id),
/// and each retained topic with its payload.
fn summary(recovered: &Recovered) -> (Vec<String>, Vec<(String, Bytes)>) {
    let mut sessions: Vec<String> = recovered
        .sessions
        .iter()
        .map(|session| {
            let queue: Vec<_> = session
                .queue
                .iter()
                .map(|(position, delivery)| (*position, delivery.message.id))
                .collect();
            format!("{} queue={queue:?}", session.client_id)
        })
        .collect();
    sessions.sort();
    let mut retained: Vec<_> = recovered
        .retained
        .iter()
        .map(|message| (message.topic.to_string(), message.payload.clone()))
        .collect();
    retained.sort();
    (sessions, retained)
}

/// Below the low watermark the store refuses new work while bookkeeping still commits; freeing
/// space makes it accept again without reopening it, and not before free space is a margin
/// above the watermark.
#[test]
fn below_the_watermark_new_work_is_refused_bookkeeping_commits_and_freed_space_recovers() {
    let Some(disk) = Tmpfs::mount("watermark", 16) else {
        return;
    };
    let (store, _) = Store::open_with(&disk.data(), options(DiskReserve::Bytes(4 * MIB))).unwrap();
    commit(&store, queued_session("alice", 1));
    assert!(store.accepts_new_work());
    let status = store.status();
    assert_eq!(status.watermark_bytes, 4 * MIB);
    assert!(status.free_bytes.unwrap() > 4 * MIB, "{status:?}");

    disk.fill_to(3 * MIB);
    wait_for("refusing below the watermark", || !store.accepts_new_work());
    let status = store.status();
    assert!(status.below_watermark, "{status:?}");
    assert!(status.free_bytes.unwrap() < 4 * MIB, "{status:?}");
    assert_eq!(status.failure, None, "low space is not a failure");

    // Bookkeeping (delivery done, session offline) still commits: the headroom is for it.
    let seq = commit(
        &store,
        [
            Change::Unqueued {
                client_id: s("alice"),
                position: 1,
            },
            session("alice", false),
        ],
    );
    assert!(store.durable() >= seq);
    assert!(!store.accepts_new_work());

    // Above the watermark but within the margin (1 MiB here): still refusing.
    disk.release(disk.free().abs_diff(4 * MIB + MIB / 2));
    let target = disk.free();
    assert!((4 * MIB..5 * MIB).contains(&target), "free {target}");
    wait_for("a measurement after the release", || {
        store
            .status()
            .free_bytes
            .is_some_and(|free| free >= 4 * MIB)
    });
    assert!(!store.accepts_new_work(), "{:?}", store.status());

    disk.remove_filler();
    wait_for("accepting once space is back", || store.accepts_new_work());
    assert!(!store.status().below_watermark);
    store.close().unwrap();

    let (_store, recovered) = Store::open(&disk.data(), Durability::Process).unwrap();
    assert_eq!(summary(&recovered).0, vec!["alice queue=[]".to_owned()]);
}

/// With no watermark, a commit that hits "no space left on device" fails and poisons the engine;
/// the store reopens the engine, and once space is freed the same batch commits (and what was
/// submitted meanwhile after it). Nothing durable is lost, across a close and reopen too.
#[test]
fn a_commit_that_hits_enospc_is_retried_on_a_reopened_engine_once_space_returns() {
    let Some(disk) = Tmpfs::mount("enospc", 16) else {
        return;
    };
    let (store, _) = Store::open_with(&disk.data(), options(DiskReserve::Bytes(0))).unwrap();
    let mut expected_retained = Vec::new();
    for i in 0..10 {
        let payload = vec![i as u8; 10_000];
        commit(&store, [retained(&format!("before/{i}"), payload.clone())]);
        expected_retained.push((format!("before/{i}"), Bytes::from(payload)));
    }
    commit(&store, queued_session("alice", 1));
    let durable_before = store.durable();

    disk.fill_to(0);
    let big = vec![0xb1_u8; 256 << 10];
    let first = store.submit(retained("during/big", big.clone()));
    wait_for("the commit to fail", || store.failure().is_some());
    let failure = store.failure().unwrap();
    assert!(failure.contains("full"), "{failure}");
    assert!(!store.accepts_new_work());
    assert_eq!(
        store.durable(),
        durable_before,
        "nothing past the failure is durable"
    );
    assert!(store.status().failure.is_some());
    // Submitted while the commit fails: committed after it.
    let later = commit_later(&store, [session("alice", false)]);
    assert_eq!(store.durable(), durable_before);

    disk.remove_filler();
    wait_durable(&store, later);
    assert!(store.durable() > first);
    wait_for("accepting again", || store.accepts_new_work());
    assert_eq!(store.failure(), None);
    // The engine works on: a new commit lands.
    commit(&store, [retained("after", b"ok".to_vec())]);
    store.close().unwrap();

    expected_retained.push(("after".to_owned(), Bytes::from_static(b"ok")));
    expected_retained.push(("during/big".to_owned(), Bytes::from(big)));
    expected_retained.sort();
    let (_store, recovered) = Store::open(&disk.data(), Durability::Process).unwrap();
    let (sessions, retained) = summary(&recovered);
    assert_eq!(retained, expected_retained);
    assert_eq!(sessions, vec!["alice queue=[(1, 1)]".to_owned()]);
}

/// Submits `changes` without waiting; the last sequence number.
fn commit_later(store: &Store, changes: impl IntoIterator<Item = Change>) -> tern_broker::Seq {
    let mut last = tern_broker::Seq::NONE;
    for change in changes {
        last = store.submit(change);
    }
    last
}

/// A start on a full disk opens, reads everything back and refuses new work; the deletes of
/// what expired while it was down are committed once there is room.
#[test]
fn a_store_opens_on_a_full_disk_reads_everything_and_refuses_new_work() {
    // The engine's start frees a little (old manifest versions: some 56 KiB here), so the
    // cleanup must be larger than that to fail.
    const EXPIRING: usize = 2000;
    let Some(disk) = Tmpfs::mount("startup", 16) else {
        return;
    };
    let expected = {
        let (store, _) = Store::open(&disk.data(), Durability::Process).unwrap();
        commit(&store, queued_session("alice", 1));
        commit(&store, queued_session("bob", 2));
        commit(&store, [retained("kept", vec![1; 50_000])]);
        // Expire before the next start: deleted by the cleanup at that start, a commit of
        // some 270 KB of deletes, more than a full disk has room for.
        let soon = Instant::now() + Duration::from_millis(1);
        commit(
            &store,
            (0..EXPIRING).map(|i| {
                Change::Retained(Arc::new(Message {
                    retain: true,
                    id: 0,
                    expires_at: Some(soon),
                    ..(*message(0, &format!("expiring/{i:0>120}"), b"soon gone")).clone()
                }))
            }),
        );
        store.close().unwrap();
        (
            vec![
                "alice queue=[(1, 1)]".to_owned(),
                "bob queue=[(1, 2)]".to_owned(),
            ],
            vec![("kept".to_owned(), Bytes::from(vec![1; 50_000]))],
        )
    };
    // Wall-clock expiry: make sure the millisecond has passed.
    std::thread::sleep(Duration::from_millis(5));

    disk.fill_to(0);
    let (store, recovered) =
        Store::open_with(&disk.data(), options(DiskReserve::Bytes(MIB))).unwrap();
    assert_eq!(summary(&recovered), expected);
    assert_eq!(store.load_report().expired_retained, EXPIRING);
    let status = store.status();
    assert!(!status.accepting, "{status:?}");
    assert!(status.below_watermark, "{status:?}");
    assert!(status.free_bytes.unwrap() < MIB, "{status:?}");
    assert!(!store.accepts_new_work());
    // The cleanup, the commit thread's first batch, fails for lack of space and is retried.
    wait_for("the cleanup commit to fail", || store.failure().is_some());
    // Bookkeeping submitted meanwhile waits behind it.
    let offline = store.submit(session("alice", false));
    assert!(store.durable() < offline);

    disk.remove_filler();
    wait_durable(&store, offline);
    wait_for("accepting once space is back", || store.accepts_new_work());
    assert_eq!(store.failure(), None);
    commit(&store, [retained("after", b"ok".to_vec())]);
    store.close().unwrap();

    let (store, recovered) = Store::open(&disk.data(), Durability::Process).unwrap();
    assert_eq!(
        store.load_report().expired_retained,
        0,
        "the cleanup was committed"
    );
    let (sessions, mut retained) = summary(&recovered);
    assert_eq!(sessions, expected.0);
    retained.retain(|(topic, _)| topic != "after");
    assert_eq!(retained, expected.1);
}

/// Wakes by sending on a channel.
struct ChannelWake(Sender<()>);

impl Wakeup for ChannelWake {
    fn wake(&self) {
        let _ = self.0.send(());
    }
}

/// A slow disk (each commit takes 200 ms): the bytes waiting for a commit pass the bound, the
/// store reports congestion, a submitter that waits for its changes while it does keeps the
/// pending bytes within the bound plus one of its submissions, and congestion clears once the
/// commits catch up.
#[test]
fn a_slow_disk_reports_congestion_and_pending_bytes_stay_bounded() {
    logs();
    let scratch = Scratch::new("slow-disk");
    const MAX_PENDING: usize = 1 << 20;
    const PAYLOAD: usize = 64 << 10;
    const PER_SUBMISSION: usize = 4;
    let (store, _) = Store::open_with(
        scratch.path(),
        StoreOptions {
            max_pending_bytes: MAX_PENDING,
            commit_delay: Duration::from_millis(200),
            ..StoreOptions::new(Durability::Process)
        },
    )
    .unwrap();
    // One submission: four 64 KiB retained messages, with their topics and fixed fields.
    let submission_bound = (PER_SUBMISSION * (PAYLOAD + 1024)) as u64;
    let bound = MAX_PENDING as u64 + submission_bound;

    let mut last = tern_broker::Seq::NONE;
    let mut most = 0;
    let mut congested = 0;
    for round in 0..24 {
        if store.congested() {
            // What a connection does: stop reading until its own changes are durable.
            congested += 1;
            let (sender, receiver) = channel();
            store.wake_when_durable(last, Arc::new(ChannelWake(sender)));
            receiver
                .recv_timeout(FLIP_DEADLINE)
                .expect("woken once durable");
        }
        for i in 0..PER_SUBMISSION {
            last = store.submit(retained(
                &format!("slow/{round}/{i}"),
                vec![round as u8; PAYLOAD],
            ));
        }
        most = most.max(store.status().pending_bytes);
    }
    eprintln!(
        "most pending: {most} bytes (bound {bound}); waited for congestion {congested} times"
    );
    assert!(congested > 0, "the store never reported congestion");
    assert!(most > MAX_PENDING as u64, "pending {most}");
    assert!(most <= bound, "pending {most} > bound {bound}");

    wait_durable(&store, last);
    let status = store.status();
    assert!(!status.congested, "{status:?}");
    assert!(!store.congested());
    assert_eq!(status.pending_bytes, 0, "{status:?}");
}

/// Overwrites the start of the file at `path` in place (no new block needed on a full disk).
fn overwrite(path: &std::path::Path, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom};
    let mut file = OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
}

/// An engine that cannot be reopened after a failed commit (here its version marker is
/// damaged) is reported with what the operator must do, the store refuses new work and keeps
/// trying, without a panic or an exit; once the directory is repaired and there is room, the
/// failed batch commits.
#[test]
fn an_engine_that_cannot_be_reopened_is_reported_and_retried_until_repaired() {
    let Some(disk) = Tmpfs::mount("damaged", 16) else {
        return;
    };
    let (store, _) = Store::open_with(&disk.data(), options(DiskReserve::Bytes(0))).unwrap();
    commit(&store, queued_session("alice", 1));
    let marker = disk.data().join("engine").join("version");
    let original = std::fs::read(&marker).unwrap();

    disk.fill_to(0);
    let seq = store.submit(retained("during/big", vec![0xb2; 256 << 10]));
    wait_for("the commit to fail", || store.failure().is_some());
    // Damaged while the engine is closed for a reopen (or at the latest before the next one).
    overwrite(&marker, &vec![b'?'; original.len()]);
    wait_for("the reopen to fail", || {
        store
            .failure()
            .is_some_and(|failure| failure.contains("cannot reopen"))
    });
    let failure = store.failure().unwrap();
    assert!(
        failure.contains("restore it from a backup") && failure.contains("stop it to repair"),
        "{failure}"
    );
    assert!(!store.accepts_new_work());
    assert!(store.durable() < seq);

    overwrite(&marker, &original);
    disk.remove_filler();
    wait_durable(&store, seq);
    wait_for("accepting again", || store.accepts_new_work());
    assert_eq!(store.failure(), None);
    store.close().unwrap();

    let (_store, recovered) = Store::open(&disk.data(), Durability::Process).unwrap();
    let (sessions, retained) = summary(&recovered);
    assert_eq!(sessions, vec!["alice queue=[(1, 1)]".to_owned()]);
    assert_eq!(
        retained,
        vec![("during/big".to_owned(), Bytes::from(vec![0xb2; 256 << 10]))]
    );
}
