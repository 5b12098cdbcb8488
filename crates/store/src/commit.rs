//! Group commit: the queue that `submit` appends to, the one thread that takes everything
//! pending, writes it as one batch and persists it, the durable sequence number it publishes,
//! and the wakeups waiting for it.
//!
//! A failed commit is retried with the same writes, with backoff, for as long as it fails; the
//! durable sequence number never moves past it, so acknowledgements stall rather than lie.
//! The engine poisons itself when a journal write fails (a full disk, an I/O error) and then
//! refuses every write; the commit thread then drops it and reopens it from disk, keeping its
//! in-memory index, and retries the batch on the reopened engine (see `Committer::reopen`).
//!
//! The thread also watches the file system's free space (see `space.rs`) and counts the bytes
//! of changes not yet durable, which give the core's `accepts_new_work` and `congested`.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fjall::PersistMode;
use tern_broker::Wakeup;
use tern_broker::persist::Change;

use crate::clock::Clock;
use crate::directory::DirLock;
use crate::encoding::message_size_estimate;
use crate::engine::{Batch, Index, Spaces};
use crate::error::StoreError;
use crate::format;
use crate::maintenance::Maintenance;
use crate::space::{CHECK_INTERVAL, SpaceState, SpaceWatch};

/// How long the commit thread sleeps when idle before it looks for housekeeping.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// First and longest wait between two tries of a failed commit.
const FIRST_RETRY: Duration = Duration::from_millis(10);
const LAST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between two tries while the disk is full, or while the engine cannot be
/// reopened for a reason that looks permanent (damage): a retry reopens the engine, which
/// replays its journal, and a full disk is noticed earlier anyway (free space growing ends
/// the wait).
const LAST_RETRY_STUCK: Duration = Duration::from_secs(30);
/// Free space that must come back, since a commit failed for lack of it, before it is tried
/// again ahead of its backoff.
const ROOM_RETURNED: u64 = 1 << 20;
/// A repeated identical error is logged at most this often.
const REPEAT_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// The most changes whose room the queue keeps from one commit to the next.
const MAX_KEPT_CHANGES: usize = 1 << 16;

/// What `submit` and the commit thread share.
pub(crate) struct Shared {
    queue: Mutex<Queue>,
    /// Signals the commit thread: changes or a stop request.
    work: Condvar,
    /// Signals `close`: the commit thread has finished.
    done: Condvar,
    durable: AtomicU64,
    waiters: Mutex<BTreeMap<u64, Vec<Arc<dyn Wakeup>>>>,
    /// The error of the last commit while commits fail.
    failure: Mutex<Option<String>>,
    /// Commits fail, or the engine is closed and cannot be reopened: new work is refused.
    failing: AtomicBool,
    /// Estimated bytes of the changes submitted and not yet durable (the batch being committed
    /// included).
    pending_bytes: AtomicU64,
    max_pending_bytes: u64,
    /// Free space, published by the commit thread.
    pub(crate) space: SpaceState,
    /// The data directory, for logs.
    dir: PathBuf,
    /// Commits, their latency and bytes, for the metrics endpoint.
    pub(crate) stats: crate::stats::CommitStats,
}

struct Queue {
    /// Pending changes, in sequence order.
    changes: Vec<(u64, Change)>,
    /// The vector the commit thread handed back, emptied: it becomes `changes` at the next take,
    /// so a busy queue does not grow a new vector from nothing for every commit.
    spare: Vec<(u64, Change)>,
    next_seq: u64,
    /// The first sequence number of each open atomic group: no change from the earliest on is
    /// committed until that group closes.
    open_groups: Vec<u64>,
    /// Set by `close`: commit what is pending, then stop; give up retrying after the deadline.
    stop: Option<Instant>,
    finished: bool,
}

impl Queue {
    /// How many pending changes come before every open atomic group.
    fn ready(&self) -> usize {
        match self.open_groups.iter().min() {
            None => self.changes.len(),
            Some(&start) => self.changes.partition_point(|(seq, _)| *seq < start),
        }
    }
}

/// Locks a mutex; a poisoned one (a panic while it was held) still yields its data, which
/// every critical section here leaves consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub(crate) fn new(dir: PathBuf, max_pending_bytes: usize, watermark: u64) -> Shared {
        Shared {
            queue: Mutex::new(Queue {
                changes: Vec::new(),
                spare: Vec::new(),
                next_seq: 1,
                open_groups: Vec::new(),
                stop: None,
                finished: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            durable: AtomicU64::new(0),
            waiters: Mutex::new(BTreeMap::new()),
            failure: Mutex::new(None),
            failing: AtomicBool::new(false),
            pending_bytes: AtomicU64::new(0),
            max_pending_bytes: u64::try_from(max_pending_bytes).unwrap_or(u64::MAX),
            space: SpaceState::new(watermark),
            dir,
            stats: Default::default(),
        }
    }

    /// Whether new durable work is taken: space above the low watermark, commits succeeding.
    pub(crate) fn accepts_new_work(&self) -> bool {
        !self.space.low() && !self.failing.load(Ordering::Acquire)
    }

    pub(crate) fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// More bytes of changes wait for a commit than the store keeps.
    pub(crate) fn congested(&self) -> bool {
        self.pending_bytes() > self.max_pending_bytes
    }

    pub(crate) fn pending_bytes(&self) -> u64 {
        self.pending_bytes.load(Ordering::Relaxed)
    }

    /// Queues a change and returns its sequence number.
    pub(crate) fn submit(&self, change: Change) -> u64 {
        let mut queue = lock(&self.queue);
        let seq = queue.next_seq;
        queue.next_seq += 1;
        if queue.finished {
            tracing::error!(dir = %self.dir.display(), seq, "change submitted after the store was closed; it will never be durable");
            return seq;
        }
        // Counted under the queue lock, before the commit thread can take the change and
        // subtract its size.
        self.pending_bytes
            .fetch_add(change_size(&change), Ordering::Relaxed);
        queue.changes.push((seq, change));
        if queue.changes.len() == 1 {
            self.work.notify_one();
        }
        seq
    }

    pub(crate) fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// The sequence number of the last change submitted.
    pub(crate) fn submitted(&self) -> u64 {
        lock(&self.queue).next_seq - 1
    }

    /// Opens an atomic group; returns its token, the sequence number its first change gets.
    pub(crate) fn begin_group(&self) -> u64 {
        let mut queue = lock(&self.queue);
        let start = queue.next_seq;
        queue.open_groups.push(start);
        start
    }

    /// Closes the group `begin_group` returned `token` for, and lets the commit thread take
    /// what it held back.
    pub(crate) fn end_group(&self, token: u64) {
        let mut queue = lock(&self.queue);
        if let Some(index) = queue.open_groups.iter().position(|&start| start == token) {
            queue.open_groups.swap_remove(index);
        }
        if queue.ready() > 0 {
            self.work.notify_one();
        }
    }

    pub(crate) fn wake_when_durable(&self, seq: u64, wakeup: Arc<dyn Wakeup>) {
        {
            let mut waiters = lock(&self.waiters);
            // Checked under the lock that `publish` takes after raising `durable`: either this
            // sees the new value, or `publish` sees this registration.
            if self.durable() < seq {
                waiters.entry(seq).or_default().push(wakeup);
                return;
            }
        }
        wakeup.wake();
    }

    /// Marks everything up to `seq` durable and wakes who waits for it.
    fn publish(&self, seq: u64) {
        self.durable.store(seq, Ordering::Release);
        let ready = {
            let mut waiters = lock(&self.waiters);
            let later = waiters.split_off(&seq.saturating_add(1));
            std::mem::replace(&mut *waiters, later)
        };
        for wakeup in ready.into_values().flatten() {
            wakeup.wake();
        }
    }

    pub(crate) fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    fn set_failure(&self, failure: Option<String>) {
        *lock(&self.failure) = failure;
    }

    /// Waits for changes that may be committed (or a stop request, or the idle tick) and takes
    /// them; changes of an open atomic group stay. `None`: stop now.
    fn take(&self) -> Option<Vec<(u64, Change)>> {
        let idle_until = Instant::now() + IDLE_TICK;
        let mut queue = lock(&self.queue);
        loop {
            let ready = queue.ready();
            let now = Instant::now();
            match queue.stop {
                Some(_) if queue.changes.is_empty() => return None,
                // A group still open at the close deadline is never committed: all of it is
                // lost, as the group promises, and `finish` reports the changes.
                Some(deadline) if ready == 0 && now >= deadline => return None,
                _ => {}
            }
            let left = idle_until.saturating_duration_since(now);
            if ready > 0 || left.is_zero() {
                return Some(if ready == queue.changes.len() {
                    let spare = std::mem::take(&mut queue.spare);
                    std::mem::replace(&mut queue.changes, spare)
                } else {
                    queue.changes.drain(..ready).collect()
                });
            }
            // Nothing pending, or all of it in an open group (which `end_group` signals).
            queue = self
                .work
                .wait_timeout(queue, left)
                .map(|(queue, _)| queue)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// Takes back a vector `take` returned, emptied, to be filled again (unless a burst made it
    /// larger than `MAX_KEPT_CHANGES`: that memory is given back).
    fn recycle(&self, mut changes: Vec<(u64, Change)>) {
        if changes.capacity() > MAX_KEPT_CHANGES {
            return;
        }
        changes.clear();
        let mut queue = lock(&self.queue);
        if queue.spare.capacity() < changes.capacity() {
            queue.spare = changes;
        }
    }

    /// Past the deadline `close` set: give up retrying.
    fn past_deadline(&self) -> bool {
        lock(&self.queue)
            .stop
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Asks the commit thread to commit what is pending and stop, giving up on a failing commit
    /// at `deadline`.
    pub(crate) fn request_stop(&self, deadline: Instant) {
        let mut queue = lock(&self.queue);
        queue.stop = Some(deadline);
        self.work.notify_one();
    }

    /// Waits until the commit thread has finished, at most `timeout`; whether it has.
    pub(crate) fn wait_finished(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut queue = lock(&self.queue);
        while !queue.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            queue = self
                .done
                .wait_timeout(queue, left)
                .map(|(queue, _)| queue)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
        true
    }

    fn finish(&self) {
        let mut queue = lock(&self.queue);
        queue.finished = true;
        let lost = queue.changes.len();
        if lost > 0 {
            tracing::error!(dir = %self.dir.display(), changes = lost, "store stopped with changes that were never committed");
        }
        self.done.notify_all();
    }
}

/// About how many bytes a pending change holds: its message for the changes that carry one,
/// a small constant plus its names for the others. Only the sum matters, for `congested`.
pub(crate) fn change_size(change: &Change) -> u64 {
    const BASE: u64 = 48;
    let text = |text: &tern_codec::MqttStr| u64::try_from(text.len()).unwrap_or(u64::MAX);
    match change {
        Change::Message(message) => message_size_estimate(message),
        Change::Retained(message) => message_size_estimate(message),
        Change::Will {
            client_id, message, ..
        } => message_size_estimate(message).saturating_add(text(client_id)),
        Change::Subscribed {
            client_id, filter, ..
        }
        | Change::Unsubscribed { client_id, filter } => {
            BASE + text(client_id).saturating_add(text(filter))
        }
        Change::Queued {
            client_id,
            delivery,
            ..
        }
        | Change::Inflight {
            client_id,
            delivery,
            ..
        }
        | Change::Dispatched {
            client_id,
            delivery,
            ..
        } => {
            BASE + text(client_id).saturating_add(delivery.shared_filter.as_ref().map_or(0, &text))
        }
        Change::RetainedCleared { topic } => BASE + text(topic),
        Change::Session { client_id, .. }
        | Change::SessionEnded { client_id }
        | Change::Unqueued { client_id, .. }
        | Change::InflightDone { client_id, .. }
        | Change::InboundQos2 { client_id, .. }
        | Change::InboundQos2Released { client_id, .. }
        | Change::WillCleared { client_id } => BASE + text(client_id),
        Change::MessageRouted { .. }
        | Change::ForwardAcked { .. }
        | Change::ForwardReceived { .. } => BASE,
        Change::ForwardQueued { payload, .. } => {
            BASE.saturating_add(u64::try_from(payload.len()).unwrap_or(u64::MAX))
        }
    }
}

/// Marks the thread finished however it ends, a panic included.
struct FinishGuard<'a>(&'a Shared);

impl Drop for FinishGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .set_failure(Some("the commit thread panicked".to_owned()));
            self.0.failing.store(true, Ordering::Release);
        }
        self.0.finish();
    }
}

/// What the commit thread works with.
pub(crate) struct Committer {
    pub(crate) shared: Arc<Shared>,
    /// The engine; `None` while it is closed to be reopened (it failed, and reopening it
    /// failed too).
    pub(crate) spaces: Option<Spaces>,
    /// What is stored, as the commits so far (and the batch being committed) left it.
    pub(crate) index: Index,
    pub(crate) mode: PersistMode,
    /// The engine's directory and the data directory, to reopen the engine.
    pub(crate) engine_path: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) watch: SpaceWatch,
    pub(crate) commit_delay: Duration,
}

/// The commit thread: commits `first` (the start-up cleanup; may be empty), then runs until
/// `close` asks it to stop, then drops the engine and, last, the directory lock.
pub(crate) fn run(mut committer: Committer, first: Batch, lock: DirLock) {
    let shared = committer.shared.clone();
    let guard = FinishGuard(&shared);
    let mut thread = Thread {
        maintenance: Maintenance::start(),
        errors: RepeatLog::default(),
    };
    let mut stopped = !first.is_empty() && !committer.commit_until_done(&mut thread, &first);
    let mut batch = Batch::default();
    while !stopped && let Some(mut changes) = shared.take() {
        let last_seq = changes.last().map(|(seq, _)| *seq);
        let bytes: u64 = changes.iter().map(|(_, change)| change_size(change)).sum();
        let clock = Clock::now();
        batch.clear();
        for (_, change) in changes.drain(..) {
            committer.index.apply(change, &mut batch, &clock);
        }
        shared.recycle(changes);
        // An idle tick (nothing taken) always measures: the way back above the watermark
        // when nothing is committed.
        committer
            .watch
            .maybe_check(&shared.space, last_seq.is_none());
        let started = std::time::Instant::now();
        if !committer.commit_until_done(&mut thread, &batch) {
            stopped = true;
            continue;
        }
        shared.stats.record(started.elapsed(), bytes);
        committer.watch.wrote(bytes);
        // Subtracted before `publish` wakes who waits: a connection woken by it sees the
        // congestion its changes caused gone.
        shared.pending_bytes.fetch_sub(bytes, Ordering::Relaxed);
        if let Some(seq) = last_seq {
            shared.publish(seq);
        }
        if let Some(spaces) = &committer.spaces {
            thread
                .maintenance
                .after_commit(spaces, &committer.index, &batch);
        }
    }
    thread.maintenance.stop();
    drop(committer);
    drop(lock);
    drop(guard);
}

/// The commit thread's own state besides the engine.
struct Thread {
    maintenance: Maintenance,
    errors: RepeatLog,
}

/// Why a try failed.
enum Failure {
    Commit(fjall::Error),
    Reopen(StoreError),
}

impl Committer {
    /// Commits `batch`, trying again with backoff while it fails, reopening the engine when it
    /// poisoned itself. `false` if it gave up because `close` asked to stop and its deadline
    /// passed.
    fn commit_until_done(&mut self, thread: &mut Thread, batch: &Batch) -> bool {
        let mut wait = FIRST_RETRY;
        let mut failures = 0u64;
        loop {
            let result = match &self.spaces {
                Some(spaces) => {
                    if !self.commit_delay.is_zero() && !batch.is_empty() {
                        std::thread::sleep(self.commit_delay);
                    }
                    spaces.commit(batch, self.mode).map_err(Failure::Commit)
                }
                // Reopened: now the commit itself, at once.
                None => match self.reopen(thread) {
                    Ok(()) => continue,
                    Err(error) => Err(Failure::Reopen(error)),
                },
            };
            let failure = match result {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(
                            dir = %self.dir.display(),
                            failures,
                            "commits succeed again; acknowledgements resume and new work is accepted (unless the disk is still below its low watermark)"
                        );
                        self.shared.set_failure(None);
                        self.shared.failing.store(false, Ordering::Release);
                        thread.errors = RepeatLog::default();
                    }
                    return true;
                }
                Err(failure) => failure,
            };
            failures += 1;
            self.shared.failing.store(true, Ordering::Release);
            let no_space;
            let mut stuck = false;
            let (key, report) = match &failure {
                Failure::Commit(error) => {
                    no_space = is_no_space(error);
                    // A failed journal write or sync poisons the engine: every later write fails
                    // with `Poisoned` until it is reopened.
                    if matches!(error, fjall::Error::Poisoned | fjall::Error::Io(_)) {
                        self.close_engine(thread);
                    }
                    let report = if no_space {
                        format!(
                            "commit failed: the file system of data directory {} is full ({error}); free space on it: the store retries by itself, and meanwhile refuses new messages, retained messages and subscriptions while acknowledgements that need a commit wait",
                            self.dir.display()
                        )
                    } else {
                        format!(
                            "commit failed: {error}; the store reopens its engine and retries by itself, and meanwhile refuses new messages, retained messages and subscriptions while acknowledgements that need a commit wait; if this persists, check the disk of data directory {} (kernel log, free space, permissions)",
                            self.dir.display()
                        )
                    };
                    (format!("{error}"), report)
                }
                Failure::Reopen(error) => {
                    no_space = store_error_is_no_space(error);
                    stuck = !reopen_error_is_transient(error);
                    let advice = if stuck {
                        "the broker keeps serving what needs no disk but stores nothing more; stop it to repair the data directory as this says"
                    } else {
                        "the store retries by itself; meanwhile it refuses new messages, retained messages and subscriptions, and acknowledgements that need a commit wait"
                    };
                    (
                        format!("{error}"),
                        format!("cannot reopen the storage engine: {error}; {advice}"),
                    )
                }
            };
            if let Some(repeated) = thread.errors.should_log(&key) {
                tracing::error!(
                    dir = %self.dir.display(),
                    failures,
                    repeated,
                    retry_in = ?wait,
                    "{report}"
                );
            }
            self.shared.set_failure(Some(report));
            if self.shared.past_deadline() {
                tracing::error!(
                    dir = %self.dir.display(),
                    writes = batch.len(),
                    "giving up on the failed commit at shutdown: its changes are lost"
                );
                return false;
            }
            let free_at_failure = self.watch.check(&self.shared.space);
            self.wait_retry(wait, if no_space { free_at_failure } else { None });
            let longest = if no_space || stuck {
                LAST_RETRY_STUCK
            } else {
                LAST_RETRY
            };
            wait = (wait * 2).min(longest);
        }
    }

    /// Waits `wait` before the next try, measuring free space meanwhile (so the watermark
    /// state follows the disk); ends early at a close deadline, or when at least
    /// `ROOM_RETURNED` more is free than `free_at_failure` (the disk that was full has room).
    fn wait_retry(&mut self, wait: Duration, free_at_failure: Option<u64>) {
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.shared.past_deadline() {
                return;
            }
            std::thread::sleep(left.min(CHECK_INTERVAL));
            let free = self.watch.maybe_check(&self.shared.space, false);
            if let (Some(before), Some(free)) = (free_at_failure, free)
                && free >= before.saturating_add(ROOM_RETURNED)
            {
                return;
            }
        }
    }

    /// Drops the engine: stops the maintenance thread (it holds keyspace handles), then drops
    /// every handle, which stops the engine's workers, persists what its journal buffers (a
    /// torn tail at worst, dropped when it is reopened) and releases its lock file.
    fn close_engine(&mut self, thread: &mut Thread) {
        if self.spaces.is_none() {
            return;
        }
        let started = Instant::now();
        thread.maintenance.stop();
        let stopped = started.elapsed();
        self.spaces = None;
        tracing::debug!(dir = %self.dir.display(), maintenance = ?stopped, elapsed = ?started.elapsed(), "closed the storage engine");
    }

    /// Reopens the engine from disk, as the last successful commit (or the failed one, if the
    /// engine got all of it to the journal before failing) left it, and restarts maintenance.
    ///
    /// The index is kept, not reloaded: it reflects every committed batch and the batch being
    /// retried. After the reopen the engine holds every committed batch (the journal is
    /// replayed; a torn tail, the failed batch's partial write, is dropped) and perhaps the
    /// failed batch too. Retrying that batch is correct either way: a batch is a set of final
    /// writes per key (a put of a whole value, or a delete), with no read-modify-write and
    /// no counter stored on disk (reference counts live in the index only), so applying it
    /// once or twice leaves the same keys and values.
    fn reopen(&mut self, thread: &mut Thread) -> Result<(), StoreError> {
        let path = self.engine_path.clone();
        let dir = self.dir.clone();
        let opened = catch_unwind(AssertUnwindSafe(|| format::open_engine(&path, &dir, true)))
            .map_err(|panic| StoreError::EnginePanic {
            path: self.engine_path.clone(),
            message: crate::store::panic_message(panic.as_ref()),
        })??;
        tracing::warn!(
            dir = %self.dir.display(),
            journal_bytes_dropped = opened.journal_bytes_dropped,
            "reopened the storage engine after a failed commit; retrying the commit"
        );
        thread.maintenance = Maintenance::start();
        self.spaces = Some(opened.spaces);
        Ok(())
    }
}

/// Logs an error the first time, then at most every `REPEAT_LOG_INTERVAL` while it repeats.
#[derive(Debug, Default)]
struct RepeatLog {
    last: Option<(String, Instant)>,
    suppressed: u64,
}

impl RepeatLog {
    /// `Some(repeats since the last time it was logged)` if `key` is to be logged now.
    fn should_log(&mut self, key: &str) -> Option<u64> {
        let now = Instant::now();
        match &self.last {
            Some((last, at)) if last == key && now.duration_since(*at) < REPEAT_LOG_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                let repeated = std::mem::take(&mut self.suppressed);
                self.last = Some((key.to_owned(), now));
                Some(repeated)
            }
        }
    }
}

/// An I/O error in `error` or what it wraps.
fn io_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        current = error.source();
    }
    None
}

fn io_is_no_space(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

fn is_no_space(error: &fjall::Error) -> bool {
    io_error(error).is_some_and(io_is_no_space)
}

fn store_error_is_no_space(error: &StoreError) -> bool {
    io_error(error).is_some_and(io_is_no_space)
}

/// Whether reopening may succeed later by itself: an I/O error (a full disk, a disk that
/// comes back) or the engine's lock still held, as opposed to damage.
fn reopen_error_is_transient(error: &StoreError) -> bool {
    match error {
        StoreError::Io { .. } => true,
        StoreError::Engine { source, .. } => {
            matches!(source, fjall::Error::Locked | fjall::Error::Poisoned)
                || matches!(source, fjall::Error::Io(_))
                || (matches!(source, fjall::Error::Storage(_)) && io_error(source).is_some())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_errors_are_logged_once_then_with_a_count() {
        let mut log = RepeatLog::default();
        assert_eq!(log.should_log("a"), Some(0));
        assert_eq!(log.should_log("a"), None);
        assert_eq!(log.should_log("a"), None);
        // A different error is logged at once, with the repeats of the one before.
        assert_eq!(log.should_log("b"), Some(2));
        // Past the interval, the same error is logged again.
        log.last = Some((
            "b".to_owned(),
            Instant::now() - REPEAT_LOG_INTERVAL - Duration::from_secs(1),
        ));
        log.suppressed = 5;
        assert_eq!(log.should_log("b"), Some(5));
    }

    #[test]
    fn a_full_disk_is_recognised_through_the_engine_error() {
        let full = fjall::Error::Io(std::io::Error::from_raw_os_error(28));
        assert!(is_no_space(&full));
        assert!(!is_no_space(&fjall::Error::Poisoned));
        let other = fjall::Error::Io(std::io::Error::other("boom"));
        assert!(!is_no_space(&other));
        let reopen = StoreError::Engine {
            path: PathBuf::from("x"),
            action: "open".into(),
            source: full,
        };
        assert!(store_error_is_no_space(&reopen));
        assert!(reopen_error_is_transient(&reopen));
        assert!(!reopen_error_is_transient(&StoreError::MissingVersion {
            dir: PathBuf::from("x")
        }));
    }
}
