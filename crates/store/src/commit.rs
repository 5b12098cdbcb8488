//! Group commit: the queue that `submit` appends to, the one thread that takes everything
//! pending, writes it as one batch and persists it, the durable sequence number it publishes,
//! and the wakeups waiting for it.
//!
//! A failed commit is retried with the same writes, with backoff, for as long as it fails; the
//! durable sequence number never moves past it, so acknowledgements stall rather than lie.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fjall::PersistMode;
use tern_broker::Wakeup;
use tern_broker::persist::Change;

use crate::clock::Clock;
use crate::directory::DirLock;
use crate::engine::{Batch, Engine};
use crate::maintenance::Maintenance;

/// How long the commit thread sleeps when idle before it looks for housekeeping.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// First and longest wait between two tries of a failed commit.
const FIRST_RETRY: Duration = Duration::from_millis(10);
const LAST_RETRY: Duration = Duration::from_secs(5);

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
    /// The data directory, for logs.
    dir: PathBuf,
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
    pub(crate) fn new(dir: PathBuf) -> Shared {
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
            dir,
        }
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

/// Marks the thread finished however it ends, a panic included.
struct FinishGuard<'a>(&'a Shared);

impl Drop for FinishGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .set_failure(Some("the commit thread panicked".to_owned()));
        }
        self.0.finish();
    }
}

/// The commit thread: runs until `close` asks it to stop, then drops the engine and, last, the
/// directory lock.
pub(crate) fn run(shared: Arc<Shared>, mut engine: Engine, mode: PersistMode, lock: DirLock) {
    let guard = FinishGuard(&shared);
    let mut maintenance = Maintenance::start();
    let mut batch = Batch::default();
    while let Some(mut changes) = shared.take() {
        let last_seq = changes.last().map(|(seq, _)| *seq);
        let clock = Clock::now();
        batch.clear();
        for (_, change) in changes.drain(..) {
            engine.apply(change, &mut batch, &clock);
        }
        shared.recycle(changes);
        if !commit_until_done(&shared, &engine, &batch, mode) {
            break;
        }
        if let Some(seq) = last_seq {
            shared.publish(seq);
        }
        maintenance.after_commit(&engine, &batch);
    }
    maintenance.stop();
    drop(engine);
    drop(lock);
    drop(guard);
}

/// Commits `batch`, trying again with backoff while it fails. `false` if it gave up because
/// `close` asked to stop and its deadline passed.
fn commit_until_done(shared: &Shared, engine: &Engine, batch: &Batch, mode: PersistMode) -> bool {
    let mut wait = FIRST_RETRY;
    let mut failures = 0u64;
    loop {
        match engine.commit(batch, mode) {
            Ok(()) => {
                if failures > 0 {
                    tracing::warn!(dir = %shared.dir.display(), failures, "commit succeeded after failing; acknowledgements resume");
                    shared.set_failure(None);
                }
                return true;
            }
            Err(error) => {
                failures += 1;
                tracing::error!(
                    dir = %shared.dir.display(),
                    %error,
                    failures,
                    retry_in = ?wait,
                    "commit failed; acknowledgements that need it wait until it succeeds"
                );
                shared.set_failure(Some(format!("commit failed: {error}")));
                if shared.past_deadline() {
                    tracing::error!(
                        dir = %shared.dir.display(),
                        writes = batch.len(),
                        "giving up on the failed commit at shutdown: its changes are lost"
                    );
                    return false;
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(LAST_RETRY);
            }
        }
    }
}
