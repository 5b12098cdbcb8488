//! "Return the queue" (issue 16, "Take-over across nodes": a down node's queued messages
//! return when it does). A node holding an offline session whose registry owner is another
//! node either returns it to that owner, when the registry lists this node among the
//! session's pending returns, or discards it (the client started clean since). A session
//! the registry does not know is kept (released elsewhere, or older than the cluster). See docs/architecture.md ("A cluster: returning a queue").
//!
//! Looked at: every offline session once this node has caught up after it started (and after
//! a snapshot replaced its state), and a session another node claimed from this one (after
//! the hand-over had its chance). A return that fails (the owner down, its session not there
//! yet) is tried again later; the copy stays here meanwhile.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tern_broker::{Broker, InflightState, SessionTransfer};
use tern_cluster::{ClusterNode, Command, NodeId};
use tokio::sync::{mpsc, watch};

use super::hook::lock;

/// How long a failed return waits before it is tried again (doubled per failure of the
/// same client id, up to [`RETRY_MAX`]).
const RETRY_AFTER: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How long the owner remembers a return it merged (one sent again after its answer was
/// lost is answered without merging twice).
const TAKEN_MEMORY: Duration = Duration::from_secs(600);
/// Where the cutoffs are kept, in the cluster's directory (JSON: client id → position).
const CUTOFFS_FILE: &str = "return-cutoffs.json";

/// The owner's answer to "may this return be merged?" (see [`Returns::begin_take`]).
pub enum Take {
    /// Merge it now (and call [`Returns::end_take`]).
    Start,
    /// Merged already, with this store sequence number.
    Merged(tern_broker::Seq),
    /// The same return is being merged now.
    Busy,
    /// The registry does not list the sender: nothing to merge.
    NotListed,
}

enum Taken {
    Merging,
    Merged(tern_broker::Seq, Instant),
}

/// This node's side of returning queues.
pub struct Returns {
    pub me: NodeId,
    pub broker: Weak<Broker>,
    /// Bounds one return's RPC, and how long a claim elsewhere leaves the hand-over before a
    /// return is looked at.
    pub timeout: Duration,
    /// The cluster's lease: the state is trusted once it is held.
    pub lease: Duration,
    /// Client id → the queue position before which the copy here may be returned: its end
    /// when this node started, or when it applied a claim taking the client id from it.
    /// Messages queued after it reached the copy while the owner had the session's routes
    /// (the owner has them): returning them would deliver them twice.
    ///
    /// Those of copies of sessions another node owns (learnt from the claim's apply here, or
    /// from a return under way) are also kept in [`CUTOFFS_FILE`] under `dir`, written
    /// moments after each change by [`keep_cutoffs`] (changes made during a write go in the
    /// next): a second restart before the return does not move them past what reached the
    /// copy since the first. Only those: a node restarting with many offline sessions of its
    /// own writes nothing for them.
    cutoffs: Mutex<HashMap<String, Cutoff>>,
    dir: PathBuf,
    /// The kept cutoffs changed since the last write (set after the change, under
    /// `cutoffs`' lock; `changed` wakes the writer).
    dirty: AtomicBool,
    changed: tokio::sync::Notify,
    /// Held while the file is written (the writer task and the last write at stop).
    writing: Mutex<()>,
    /// Client ids being returned now (a hand-over waits for it to end).
    returning: Mutex<HashSet<String>>,
    /// Client ids to look at, after a delay (`None`: every offline session).
    wake: mpsc::UnboundedSender<(Option<String>, Duration)>,
    /// The nonce of the last of this node's barriers applied here.
    barrier: watch::Sender<u64>,
    /// Whether this node's state has been trusted once since it started (see [`caught_up`]).
    caught_up: watch::Sender<bool>,
    /// The owner's side: returns merged here or being merged, by (client id, sender, epoch).
    taken: Mutex<HashMap<(String, NodeId, u64), Taken>>,
}

/// A copy's cutoff, and whether it is kept in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cutoff {
    before: u64,
    kept: bool,
}

/// Removes a client id from the returning set when the return ends.
struct Returning<'a>(&'a Returns, String);

impl Drop for Returning<'_> {
    fn drop(&mut self) {
        lock(&self.0.returning).remove(&self.1);
    }
}

/// What looking at one client id came to.
enum Looked {
    Done,
    Retry,
}

impl Returns {
    /// `restored`: each offline session's queue end, recorded when the node started, before
    /// any message from another node could reach it; a cutoff kept from an earlier run
    /// (in `dir`) wins when it is lower.
    pub fn new(
        me: NodeId,
        broker: &Arc<Broker>,
        restored: Vec<(String, u64)>,
        dir: PathBuf,
        timeout: Duration,
        lease: Duration,
    ) -> (
        Arc<Returns>,
        mpsc::UnboundedReceiver<(Option<String>, Duration)>,
    ) {
        let (wake, rx) = mpsc::unbounded_channel();
        let read = read_cutoffs(&dir);
        let cutoffs = merge_cutoffs(restored, &read);
        // Written again if the merge lowered or dropped one.
        let dirty = AtomicBool::new(kept_part(&cutoffs) != read);
        let returns = Arc::new(Returns {
            me,
            broker: Arc::downgrade(broker),
            timeout,
            lease,
            cutoffs: Mutex::new(cutoffs),
            dir,
            dirty,
            changed: tokio::sync::Notify::new(),
            writing: Mutex::new(()),
            returning: Mutex::new(HashSet::new()),
            wake,
            barrier: watch::Sender::new(0),
            caught_up: watch::Sender::new(false),
            taken: Mutex::new(HashMap::new()),
        });
        (returns, rx)
    }

    /// Another node claimed `client_id` from this one (applied here): the end of the copy's
    /// queue is recorded now (kept in the file unless this node owns the client id again by
    /// now: a claim replayed from the log at start), and the copy looked at once the
    /// hand-over had its chance.
    pub fn claimed_elsewhere(&self, node: &ClusterNode, client_id: &str) {
        if let Some(broker) = self.broker.upgrade()
            && let Some(end) = broker.next_queue_position(client_id)
        {
            let owned_here = matches!(
                node.state().owner(client_id),
                Some((Some(owner), _)) if owner == self.me
            );
            self.record_cutoff(client_id, end, !owned_here);
        }
        let _ = self
            .wake
            .send((Some(client_id.to_owned()), self.timeout * 2));
    }

    /// This node's barrier `nonce` was applied here (the last one applied is kept: a
    /// waiter looks for its own nonce, whatever the nonces of barriers replayed from an
    /// earlier start were).
    pub fn barrier_applied(&self, nonce: u64) {
        self.barrier.send_replace(nonce);
    }

    /// Becomes true once this node's state can be trusted after its start (a member holding
    /// its lease, everything committed before then applied here).
    pub fn caught_up(&self) -> watch::Receiver<bool> {
        self.caught_up.subscribe()
    }

    /// The state was replaced by a snapshot: every offline session is looked at again.
    pub fn rescan(&self) {
        let _ = self.wake.send((None, Duration::ZERO));
    }

    /// The owner's side: whether the return `key` (client id, sender, epoch) is to be merged
    /// now; `listed`: whether the registry lists the sender among the session's pending
    /// returns.
    pub fn begin_take(&self, key: &(String, NodeId, u64), listed: bool) -> Take {
        let mut taken = lock(&self.taken);
        let now = Instant::now();
        taken.retain(|_, state| match state {
            Taken::Merging => true,
            Taken::Merged(_, at) => now.duration_since(*at) < TAKEN_MEMORY,
        });
        match taken.get(key) {
            Some(Taken::Merging) => Take::Busy,
            Some(Taken::Merged(seq, _)) => Take::Merged(*seq),
            None if !listed => Take::NotListed,
            None => {
                taken.insert(key.clone(), Taken::Merging);
                Take::Start
            }
        }
    }

    /// The owner's side: the merge [`Returns::begin_take`] started ended (`Some`: merged with
    /// this sequence number; `None`: not merged, it may be tried again).
    pub fn end_take(&self, key: &(String, NodeId, u64), merged: Option<tern_broker::Seq>) {
        let mut taken = lock(&self.taken);
        match merged {
            Some(seq) => {
                taken.insert(key.clone(), Taken::Merged(seq, Instant::now()));
            }
            None => {
                taken.remove(key);
            }
        }
    }

    /// Removes the cutoff of `client_id` (from the file too if it was kept), returning it.
    fn forget_cutoff(&self, client_id: &str) -> Option<u64> {
        let mut cutoffs = lock(&self.cutoffs);
        let removed = cutoffs.remove(client_id)?;
        if removed.kept {
            self.mark_changed();
        }
        Some(removed.before)
    }

    /// The cutoff of `client_id`: the one recorded, or else `end` (recorded now); kept in the
    /// file from now on if `keep`.
    fn record_cutoff(&self, client_id: &str, end: u64, keep: bool) -> u64 {
        let mut cutoffs = lock(&self.cutoffs);
        let cutoff = cutoffs.entry(client_id.to_owned()).or_insert(Cutoff {
            before: end,
            kept: false,
        });
        if keep && !cutoff.kept {
            cutoff.kept = true;
            self.mark_changed();
        }
        cutoff.before
    }

    /// Called with `cutoffs`' lock held, after a change of the kept part.
    fn mark_changed(&self) {
        self.dirty.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// Writes the kept cutoffs if they changed since the last write (blocking). A failed
    /// write is tried again by the next call; returns whether it failed.
    pub fn write_now(&self) -> bool {
        let _writing = lock(&self.writing);
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return false;
        }
        let kept = kept_part(&lock(&self.cutoffs));
        match write_cutoffs(&self.dir, &kept) {
            Ok(()) => false,
            Err(error) => {
                self.dirty.store(true, Ordering::Release);
                tracing::warn!(%error, "cluster: the return cutoffs could not be kept");
                true
            }
        }
    }

    /// Whether a return of `client_id` runs now (a hand-over waits for it).
    pub fn is_returning(&self, client_id: &str) -> bool {
        lock(&self.returning).contains(client_id)
    }

    /// This node claims `client_id` while the registry lists it among the session's pending
    /// returns: its own copy joins `transfer`, the session the previous owner handed over
    /// (or the registry's), instead of being replaced by it. Its messages in flight (but a
    /// QoS 2 message whose PUBREC came) and its queue up to the cutoff go after the
    /// transfer's queue.
    pub async fn add_own_copy(&self, transfer: &mut SessionTransfer) {
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let client_id = transfer.client_id.to_string();
        let waited = tokio::time::Instant::now() + self.timeout;
        while self.is_returning(&client_id) && tokio::time::Instant::now() < waited {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before = self.forget_cutoff(&client_id);
        let before = before
            .or_else(|| broker.next_queue_position(&client_id))
            .unwrap_or(u64::MAX);
        let Some(own) = broker.export_returned(&client_id, before, Instant::now()) else {
            return;
        };
        let messages = own.queue.len() + own.inflight.len();
        transfer.queue.extend(
            own.inflight
                .into_iter()
                .filter(|entry| entry.state != InflightState::AwaitingPubComp)
                .map(|entry| entry.delivery)
                .chain(own.queue),
        );
        tracing::info!(
            client_id,
            messages,
            "cluster: this node's copy of the session joins the one it claimed"
        );
    }

    /// Looks at the copy of `client_id` here.
    async fn look(&self, node: &ClusterNode, client_id: &str) -> Looked {
        let Some(broker) = self.broker.upgrade() else {
            return Looked::Done;
        };
        let entry = node.state().session(client_id).cloned();
        let listed = entry
            .as_ref()
            .is_some_and(|entry| entry.pending_returns.contains(&self.me));
        let local = broker.session(client_id);
        tracing::debug!(
            client_id,
            ?entry,
            local = local.is_some(),
            "cluster: looking at a session's copy"
        );
        let forget = || {
            self.forget_cutoff(client_id);
        };
        match (local, &entry) {
            (None, _) => {
                forget();
                if listed && let Some(entry) = &entry {
                    // Nothing here (handed over, returned, expired): off the list.
                    return self.returned(node, client_id, entry.epoch).await;
                }
                Looked::Done
            }
            (Some(session), _) if session.is_online() => {
                forget();
                Looked::Done
            }
            (Some(_), None) => {
                // Not registered: released elsewhere, or a session from before this node ran
                // in a cluster (its client's next CONNECT here claims it). Not told apart:
                // kept, as it was before returns existed; it expires here on its own.
                forget();
                Looked::Done
            }
            (Some(_), Some(entry)) => match entry.owner {
                Some(owner) if owner == self.me => {
                    forget();
                    Looked::Done
                }
                // Its node was removed: the copy waits for the next claim.
                None => Looked::Done,
                Some(owner) if listed => {
                    self.give_back(node, &broker, client_id, owner, entry.epoch)
                        .await
                }
                Some(owner) => {
                    tracing::info!(
                        client_id,
                        owner,
                        "cluster: a session claimed elsewhere without this copy (a clean start): discarded"
                    );
                    broker.export_session(client_id, Instant::now());
                    forget();
                    Looked::Done
                }
            },
        }
    }

    /// Takes this node off the session's pending returns.
    async fn returned(&self, node: &ClusterNode, client_id: &str, epoch: u64) -> Looked {
        let command = Command::Returned {
            client_id: client_id.to_owned(),
            epoch,
            node: self.me,
        };
        match tokio::time::timeout(self.timeout, node.propose(command)).await {
            // Done, or stale (claimed again since: looked at again then if still listed).
            Ok(Ok(_)) => Looked::Done,
            _ => Looked::Retry,
        }
    }

    /// Returns the copy of `client_id` to `owner`, which holds the session with `epoch`.
    async fn give_back(
        &self,
        node: &ClusterNode,
        broker: &Broker,
        client_id: &str,
        owner: NodeId,
        epoch: u64,
    ) -> Looked {
        if !lock(&self.returning).insert(client_id.to_owned()) {
            return Looked::Retry;
        }
        let _returning = Returning(self, client_id.to_owned());
        let now = Instant::now();
        let Some(end) = broker.next_queue_position(client_id) else {
            // Connected or gone meanwhile: looked at again.
            return Looked::Retry;
        };
        // From here until the copy is returned, a restart keeps this cutoff.
        let before = self.record_cutoff(client_id, end, true);
        // Two steps: the copy stays here (in the store too) until the owner answered that
        // the messages are durable there; only then does it end here. A crash in between
        // sends it again at the next start (the owner answers a return it merged already
        // without merging it twice, for `TAKEN_MEMORY`).
        let Some(transfer) = broker.peek_returned(client_id, before, now) else {
            // Connected or gone meanwhile: looked at again.
            return Looked::Retry;
        };
        let messages = transfer.queue.len() + transfer.inflight.len();
        if messages == 0 {
            tracing::info!(client_id, owner, "cluster: nothing to return");
            broker.export_returned(client_id, before, now);
            self.forget_cutoff(client_id);
            return self.returned(node, client_id, epoch).await;
        }
        let bytes = match transfer.encode() {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(client_id, %error, "cluster: a session to return cannot be encoded: kept here");
                return Looked::Done;
            }
        };
        match node
            .request_return(owner, client_id, epoch, bytes, self.timeout)
            .await
        {
            Ok(()) => {
                tracing::info!(
                    client_id,
                    owner,
                    messages,
                    "cluster: queued messages returned to the session's owner"
                );
                broker.export_returned(client_id, before, Instant::now());
                self.forget_cutoff(client_id);
                Looked::Done
            }
            Err(refusal) => {
                tracing::info!(client_id, owner, %refusal, "cluster: return not taken: kept here, tried again later");
                Looked::Retry
            }
        }
    }
}

/// Writes the kept cutoffs after each change, coalescing the changes made during a write
/// (a burst of claims costs a few writes, not one each); a failed write is tried again a
/// second later. [`Returns::write_now`] at stop writes what is left.
pub async fn keep_cutoffs(returns: Arc<Returns>, mut stop: watch::Receiver<bool>) {
    loop {
        let writer = returns.clone();
        let failed = tokio::task::spawn_blocking(move || writer.write_now())
            .await
            .unwrap_or(true);
        tokio::select! {
            _ = returns.changed.notified(), if !failed => {}
            _ = tokio::time::sleep(Duration::from_secs(1)), if failed => {}
            _ = stop.changed() => return,
        }
    }
}

/// Waits until this node's state can be trusted (a member, its lease held, everything it
/// received applied), then looks at every offline session, and after that at what it is
/// told to, trying failed returns again every [`RETRY_AFTER`].
pub async fn run(
    returns: Arc<Returns>,
    node: ClusterNode,
    mut wake: mpsc::UnboundedReceiver<(Option<String>, Duration)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut applied = returns.barrier.subscribe();
    loop {
        if caught_up(&node, &returns, &mut applied).await {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => return,
        }
    }
    returns.caught_up.send_replace(true);
    let mut due: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    // Failures in a row per client id (the retry waits double).
    let mut failures: HashMap<String, u32> = HashMap::new();
    let scan_all = |due: &mut BTreeMap<String, tokio::time::Instant>| {
        let now = tokio::time::Instant::now();
        if let Some(broker) = returns.broker.upgrade() {
            for (client_id, _) in broker.offline_sessions() {
                due.entry(client_id).or_insert(now);
            }
        }
        // Listed sessions this node holds nothing of: taken off the list.
        let state = node.state();
        for (client_id, entry) in state.sessions() {
            if entry.pending_returns.contains(&returns.me) {
                due.entry(client_id.to_owned()).or_insert(now);
            }
        }
    };
    scan_all(&mut due);
    tracing::debug!(
        sessions = due.len(),
        "cluster: caught up: looking at the sessions held here"
    );
    loop {
        let next = due.values().min().copied();
        tokio::select! {
            message = wake.recv() => match message {
                Some((Some(client_id), after)) => {
                    // The earlier time wins: a claim replayed while this node caught up is
                    // long past its hand-over.
                    let at = tokio::time::Instant::now() + after;
                    let entry = due.entry(client_id).or_insert(at);
                    *entry = (*entry).min(at);
                }
                Some((None, _)) => scan_all(&mut due),
                None => return,
            },
            _ = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = tokio::time::Instant::now();
                let ready: Vec<String> = due
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(client_id, _)| client_id.clone())
                    .collect();
                for client_id in ready {
                    due.remove(&client_id);
                    if !node.holds_lease(returns.lease) {
                        due.insert(client_id, now + RETRY_AFTER);
                        continue;
                    }
                    match returns.look(&node, &client_id).await {
                        Looked::Retry => {
                            let failed = failures.entry(client_id.clone()).or_insert(0);
                            let wait = RETRY_AFTER
                                .saturating_mul(1 << (*failed).min(6))
                                .min(RETRY_MAX);
                            *failed += 1;
                            due.insert(client_id, tokio::time::Instant::now() + wait);
                        }
                        Looked::Done => {
                            failures.remove(&client_id);
                        }
                    }
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// Whether this node's state can be trusted to say who owns a session: it is a registered
/// member holding its lease, and a barrier it proposed now was committed and applied here
/// (so was everything committed before it: the state is at least as new as this moment's).
async fn caught_up(
    node: &ClusterNode,
    returns: &Returns,
    applied: &mut watch::Receiver<u64>,
) -> bool {
    if !node.is_member()
        || !node.holds_lease(returns.lease)
        || node.state().node(returns.me).is_none()
    {
        return false;
    }
    // Unique (the wall clock's nanoseconds): this barrier's own, told apart from those of
    // an earlier start that a restart replays from its log.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |since| since.as_nanos() as u64);
    let barrier = Command::Barrier {
        node: returns.me,
        nonce,
    };
    if !matches!(
        tokio::time::timeout(returns.timeout, node.propose(barrier)).await,
        Ok(Ok(_))
    ) {
        return false;
    }
    tokio::time::timeout(returns.timeout, applied.wait_for(|seen| *seen == nonce))
        .await
        .is_ok_and(|seen| seen.is_ok())
}

/// The cutoffs kept by an earlier run (none when the file is missing or unreadable: the
/// queue ends at this start are then the cutoffs, as before they were kept).
fn read_cutoffs(dir: &Path) -> HashMap<String, u64> {
    let Ok(bytes) = std::fs::read(dir.join(CUTOFFS_FILE)) else {
        return HashMap::new();
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|error| {
        tracing::warn!(%error, "cluster: the kept return cutoffs are unreadable: ignored");
        HashMap::new()
    })
}

fn write_cutoffs(dir: &Path, cutoffs: &HashMap<String, u64>) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(cutoffs).map_err(std::io::Error::other)?;
    super::keep_file(dir, CUTOFFS_FILE, &bytes)
}

/// This start's cutoffs: each offline session's queue end now, lowered to a cutoff an earlier
/// run kept for it (messages above that reached the copy while the owner had the session's
/// routes), and kept again. A kept cutoff above the end now (the queue emptied and its
/// positions started again) does not count; one of a session no longer here goes.
fn merge_cutoffs(
    restored: Vec<(String, u64)>,
    kept: &HashMap<String, u64>,
) -> HashMap<String, Cutoff> {
    restored
        .into_iter()
        .map(|(client_id, end)| {
            let cutoff = match kept.get(&client_id) {
                Some(kept) => Cutoff {
                    before: (*kept).min(end),
                    kept: true,
                },
                None => Cutoff {
                    before: end,
                    kept: false,
                },
            };
            (client_id, cutoff)
        })
        .collect()
}

/// What the file holds of `cutoffs`.
fn kept_part(cutoffs: &HashMap<String, Cutoff>) -> HashMap<String, u64> {
    cutoffs
        .iter()
        .filter(|(_, cutoff)| cutoff.kept)
        .map(|(client_id, cutoff)| (client_id.clone(), cutoff.before))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_cutoff_lowers_the_queue_end_and_only_that() {
        let kept = HashMap::from([
            ("a".to_owned(), 6),
            ("b".to_owned(), 40),
            ("gone".to_owned(), 3),
        ]);
        let merged = merge_cutoffs(
            vec![("a".into(), 9), ("b".into(), 1), ("c".into(), 4)],
            &kept,
        );
        let cutoff = |before, kept| Cutoff { before, kept };
        assert_eq!(
            merged,
            HashMap::from([
                ("a".into(), cutoff(6, true)),
                ("b".into(), cutoff(1, true)),
                ("c".into(), cutoff(4, false)),
            ])
        );
        assert_eq!(
            kept_part(&merged),
            HashMap::from([("a".into(), 6), ("b".into(), 1)])
        );
    }

    #[test]
    fn cutoffs_survive_a_restart_in_their_file() {
        let dir = std::env::temp_dir().join(format!("tern-cutoffs-{}", std::process::id()));
        let cutoffs = HashMap::from([("a\nb\"c".to_owned(), 7), ("d".to_owned(), 1)]);
        write_cutoffs(&dir, &cutoffs).expect("written");
        assert_eq!(read_cutoffs(&dir), cutoffs);
        std::fs::write(dir.join(CUTOFFS_FILE), b"{torn").expect("damaged");
        assert!(read_cutoffs(&dir).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
