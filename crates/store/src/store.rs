//! The store as the server uses it: opening a data directory (lock, format check, read-back,
//! commit thread), the core's `Persistence` trait over the commit thread, and closing.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tern_broker::persist::{Change, Persistence, Recovered};
use tern_broker::{Seq, Wakeup};

use crate::clock::Clock;
use crate::commit::{self, Committer, Shared};
use crate::directory;
use crate::durability::Durability;
use crate::error::StoreError;
use crate::format;
use crate::options::StoreOptions;
use crate::recover::{self, LoadReport};
use crate::space::SpaceWatch;

/// How long `close` lets a failing commit be retried before it gives up.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker's durable state in a data directory; see the crate documentation.
pub struct Store {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
    options: StoreOptions,
    report: LoadReport,
}

/// The store's state for logs and metrics; see [`Store::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    /// Whether new durable work is taken ([`Persistence::accepts_new_work`]).
    pub accepting: bool,
    /// Free bytes on the data directory's file system at the last measurement; `None` if it
    /// could not be measured (then the watermark is not enforced).
    pub free_bytes: Option<u64>,
    /// The low watermark in bytes (`min_free_disk`, a percentage resolved against the file
    /// system's size).
    pub watermark_bytes: u64,
    /// Free space is below the watermark (and has not risen above it by the margin yet).
    pub below_watermark: bool,
    /// Estimated bytes of changes submitted and not yet durable.
    pub pending_bytes: u64,
    /// `pending_bytes` is above `max_pending_bytes` ([`Persistence::congested`]).
    pub congested: bool,
    /// Why commits fail, with what to do, while they do ([`Store::failure`]).
    pub failure: Option<String>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .field("durable", &self.shared.durable())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// [`Store::open_with`] with the default options and `durability`.
    pub fn open(dir: &Path, durability: Durability) -> Result<(Arc<Store>, Recovered), StoreError> {
        Store::open_with(dir, StoreOptions::new(durability))
    }

    /// Opens the store in `dir` (created if missing), reads back everything in it, and starts
    /// the commit thread.
    ///
    /// Fails, leaving the directory as it was, if another process (or another `Store` of this
    /// process) has it open, if it holds files a Tern store does not write, if its format
    /// version is missing or not this build's, or if any record is damaged.
    ///
    /// A full disk does not fail the open as long as the data can be read: the deletes of what
    /// expired while the broker was down are the commit thread's first batch, retried until
    /// they commit, and below the low watermark the store starts out refusing new work.
    pub fn open_with(
        dir: &Path,
        options: StoreOptions,
    ) -> Result<(Arc<Store>, Recovered), StoreError> {
        let started = Instant::now();
        let durability = options.durability;
        let prepared = directory::prepare(dir)?;
        let clock = Clock::now();
        let engine_path = prepared.engine_path.clone();
        let existing = prepared.existing;
        let opened = catch_unwind(AssertUnwindSafe(|| {
            let opened = format::open_engine(&engine_path, dir, existing)?;
            let mut loaded = recover::load(&opened.spaces, dir, &clock)?;
            loaded.report.journal_bytes_dropped = opened.journal_bytes_dropped;
            Ok::<_, StoreError>((opened.spaces, loaded))
        }))
        .map_err(|panic| StoreError::EnginePanic {
            path: engine_path.clone(),
            message: panic_message(panic.as_ref()),
        })??;
        let (spaces, loaded) = opened;
        let shared = Arc::new(Shared::new(
            dir.to_path_buf(),
            options.max_pending_bytes,
            options.min_free_disk.bytes(0),
        ));
        let mut watch = SpaceWatch::new(dir.to_path_buf(), options.min_free_disk);
        // Measured before the store serves, so that it starts out refusing on a full disk.
        watch.check(&shared.space);
        let report = loaded.report;
        tracing::info!(
            dir = %dir.display(),
            %durability,
            sessions = report.sessions,
            messages = report.messages,
            retained = report.retained,
            expired_sessions = report.expired_sessions,
            expired_messages = report.expired_messages + report.expired_retained,
            expired_deliveries = report.expired_deliveries,
            free = shared.space.free(),
            watermark = shared.space.watermark(),
            elapsed = ?started.elapsed(),
            "store opened"
        );
        if report.journal_bytes_dropped > 0 {
            tracing::warn!(
                dir = %dir.display(),
                bytes = report.journal_bytes_dropped,
                "the engine dropped the end of its journal that did not read back intact: a write torn by a crash or power loss (at most the last commit), or damage to the journal file (then the newest commits are lost); the store holds the state as of the last intact commit"
            );
        }
        if report.orphans > 0 {
            tracing::warn!(dir = %dir.display(), entries = report.orphans, "deleted stored entries whose session or message was missing");
        }

        let thread = {
            let committer = Committer {
                shared: shared.clone(),
                spaces: Some(spaces),
                index: loaded.index,
                mode: durability.persist_mode(),
                engine_path,
                dir: dir.to_path_buf(),
                watch,
                commit_delay: options.commit_delay,
            };
            // Deletes of what expired while the broker was down: the first commit, before any
            // change submitted from now on; re-done at the next start if lost.
            let cleanup = loaded.cleanup;
            let lock = prepared.lock;
            std::thread::Builder::new()
                .name("tern-store-commit".into())
                .spawn(move || commit::run(committer, cleanup, lock))
                .map_err(StoreError::Thread)?
        };
        let store = Arc::new(Store {
            shared,
            thread: Mutex::new(Some(thread)),
            dir: dir.to_path_buf(),
            options,
            report,
        });
        Ok((store, loaded.recovered))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn durability(&self) -> Durability {
        self.options.durability
    }

    pub fn options(&self) -> StoreOptions {
        self.options
    }

    /// The store's state: whether it takes new work, free space and watermark, bytes waiting
    /// for a commit, and the failure if commits fail. Cheap (atomic loads, and a lock only to
    /// copy the failure text).
    pub fn status(&self) -> StoreStatus {
        let shared = &self.shared;
        StoreStatus {
            accepting: shared.accepts_new_work(),
            free_bytes: shared.space.free(),
            watermark_bytes: shared.space.watermark(),
            below_watermark: shared.space.low(),
            pending_bytes: shared.pending_bytes(),
            congested: shared.congested(),
            failure: if shared.failing() {
                shared.failure()
            } else {
                None
            },
        }
    }

    /// Commits so far: how many, how long they took, the bytes of their changes.
    pub fn commit_figures(&self) -> crate::stats::CommitFigures {
        self.shared.stats.figures()
    }

    /// What the last start read back and deleted.
    pub fn load_report(&self) -> LoadReport {
        self.report
    }

    /// `Some(reason, with what the operator must do)` while commits fail (durability is
    /// stalled: acknowledgements that wait for it are not sent, and new work is refused), or
    /// after the commit thread died. The store retries by itself, reopening its engine if need
    /// be, and clears this once a commit succeeds: a server reports it and keeps serving what
    /// needs no disk.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    /// Commits what is pending and stops the commit thread; the directory is unlocked when this
    /// returns `Ok`. Waits at most [`CLOSE_TIMEOUT`] for a failing commit (then its changes
    /// are lost and an error says so). Later calls do nothing.
    pub fn close(&self) -> Result<(), StoreError> {
        let Some(thread) = self
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        else {
            return Ok(());
        };
        self.shared.request_stop(Instant::now() + CLOSE_TIMEOUT);
        // A retry in progress may take a few seconds past the deadline: its wait ends within
        // 100 ms, but a reopen of the engine replays its journal.
        let grace = CLOSE_TIMEOUT + Duration::from_secs(6);
        if !self.shared.wait_finished(grace) {
            return Err(StoreError::CloseTimedOut {
                dir: self.dir.clone(),
                seconds: grace.as_secs(),
            });
        }
        if thread.join().is_err() {
            tracing::error!(dir = %self.dir.display(), "the store's commit thread panicked");
        }
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(error) = self.close() {
            tracing::error!(%error, "closing the store");
        }
    }
}

impl Persistence for Store {
    fn submit(&self, change: Change) -> Seq {
        Seq(self.shared.submit(change))
    }

    fn durable(&self) -> Seq {
        Seq(self.shared.durable())
    }

    fn wake_when_durable(&self, seq: Seq, wakeup: Arc<dyn Wakeup>) {
        self.shared.wake_when_durable(seq.get(), wakeup);
    }

    fn submitted(&self) -> Seq {
        Seq(self.shared.submitted())
    }

    fn begin_group(&self) -> u64 {
        self.shared.begin_group()
    }

    fn end_group(&self, token: u64) {
        self.shared.end_group(token);
    }

    fn accepts_new_work(&self) -> bool {
        self.shared.accepts_new_work()
    }

    fn commits_failing(&self) -> bool {
        self.shared.failing()
    }

    fn congested(&self) -> bool {
        self.shared.congested()
    }
}

pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic".to_owned()
    }
}
