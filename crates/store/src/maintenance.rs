//! Reclaiming the space of deleted entries, so that disk use follows the live data and not the
//! history. The engine drops a deleted value only when its tombstone is compacted into the
//! last level together with it; with leveled compaction that waits until levels fill up to
//! their size targets (hundreds of MiB), so a broker that deletes about as much as it writes
//! (every acknowledged message) would otherwise carry most of its history. After enough
//! deletes in a keyspace (at least [`MIN_DELETES`], and at least as many as it holds live
//! entries, so that the rewrite costs at most one live entry per delete), a maintenance thread
//! flushes that keyspace's memtable and compacts it into its last level, which drops the
//! deleted values and their tombstones.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fjall::Keyspace;

use crate::engine::{Batch, Index, Spaces};
use crate::keys::Space;

/// Deletes in a keyspace before its space is reclaimed, however little it holds.
pub(crate) const MIN_DELETES: u64 = 50_000;

/// The longest wait for the engine to flush a memtable before compacting: a flush that fails
/// (a full disk) never finishes, and the engine's own wait (`rotate_memtable_and_wait`) would
/// then spin for ever, holding the keyspace, so the engine could never be reopened.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Counts deletes and hands keyspaces to the maintenance thread.
pub(crate) struct Maintenance {
    deletes: [u64; Space::ALL.len()],
    sender: Option<Sender<Keyspace>>,
    thread: Option<JoinHandle<()>>,
    /// Set by `stop`: abandon a wait for a flush, skip what is queued.
    stopping: Arc<AtomicBool>,
}

impl Maintenance {
    pub(crate) fn start() -> Maintenance {
        let (sender, receiver) = channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let stopping = stopping.clone();
            std::thread::Builder::new()
                .name("tern-store-maintenance".into())
                .spawn(move || run(receiver, &stopping))
        }
            .map_err(|error| {
                tracing::warn!(%error, "cannot start the store's maintenance thread; deleted entries are reclaimed by the engine's own compaction only");
            })
            .ok();
        Maintenance {
            deletes: [0; Space::ALL.len()],
            sender: thread.as_ref().map(|_| sender),
            thread,
            stopping,
        }
    }

    /// Counts the deletes `batch` committed; starts reclaiming where there are enough.
    pub(crate) fn after_commit(&mut self, spaces: &Spaces, index: &Index, batch: &Batch) {
        let Some(sender) = &self.sender else {
            return;
        };
        for (space, deletes) in Space::ALL.into_iter().zip(batch.deletes()) {
            let count = &mut self.deletes[space.index()];
            *count += deletes;
            if *count >= MIN_DELETES && *count >= live_entries(index, space) {
                *count = 0;
                if sender.send(spaces.get(space).clone()).is_err() {
                    self.sender = None;
                    return;
                }
            }
        }
    }

    /// Lets the maintenance thread finish its current compaction (abandoning a wait for a
    /// flush and what is queued) and waits for it, so that it holds no keyspace any more.
    pub(crate) fn stop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        self.sender = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the store's maintenance thread panicked");
        }
    }
}

/// How many entries `space` holds (as far as the index knows).
fn live_entries(index: &Index, space: Space) -> u64 {
    let per_client = |count: fn(&crate::engine::ClientEntries) -> usize| {
        index.clients.values().map(count).sum::<usize>()
    };
    let live = match space {
        Space::Messages => index.refs.len(),
        Space::Sessions => index.clients.len(),
        Space::Subscriptions => per_client(|entries| entries.subscriptions.len()),
        Space::Queue => per_client(|entries| entries.queue.len()),
        Space::Inflight => per_client(|entries| entries.inflight.len()),
        Space::InboundQos2 => per_client(|entries| entries.inbound_qos2.len()),
        Space::Wills => per_client(|entries| usize::from(entries.will)),
        Space::ClusterOutbox => index.outbox.len(),
        Space::Meta | Space::Retained | Space::ClusterReceived => 0,
    };
    u64::try_from(live).unwrap_or(u64::MAX)
}

fn run(receiver: Receiver<Keyspace>, stopping: &AtomicBool) {
    while let Ok(keyspace) = receiver.recv() {
        if stopping.load(Ordering::Acquire) {
            // The engine is being closed or reopened: drop the handle at once.
            continue;
        }
        let started = Instant::now();
        let before = keyspace.disk_space();
        // Flush first, so that the tombstones are in tables the compaction sees.
        let result = keyspace.rotate_memtable().and_then(|_| {
            if wait_flushed(&keyspace, stopping) {
                keyspace.major_compact()
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => tracing::debug!(
                keyspace = %keyspace.name(),
                before,
                after = keyspace.disk_space(),
                elapsed = ?started.elapsed(),
                "reclaimed the space of deleted entries"
            ),
            Err(error) => tracing::warn!(
                keyspace = %keyspace.name(),
                %error,
                "cannot reclaim the space of deleted entries"
            ),
        }
    }
}

/// Waits until `keyspace` has no sealed memtable left; `false` if it gave up (stopping, or
/// the flush did not finish within `FLUSH_TIMEOUT`).
fn wait_flushed(keyspace: &Keyspace, stopping: &AtomicBool) -> bool {
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    while keyspace.sealed_memtable_count() > 0 {
        if stopping.load(Ordering::Acquire) {
            return false;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                keyspace = %keyspace.name(),
                "the engine did not flush within {} s (is the disk full?); the space of deleted entries is reclaimed later",
                FLUSH_TIMEOUT.as_secs()
            );
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}
