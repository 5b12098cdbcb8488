//! The data plane: messages from this node to others, at least once and in order per link.
//!
//! Each message to a peer gets the next sequence number of this node's run (`run` is random
//! per start, so a restarted node's numbers are not mistaken for old ones) and waits in the
//! peer's outbox until the peer acknowledges it. A link that fails is dialled again and
//! everything not acknowledged is sent again, in order. The receiver hands each message to
//! the server once (a number it has already taken is acknowledged, not delivered again) and
//! acknowledges, cumulatively, once the server says the message is safe (durable where it
//! must be).
//!
//! A connection can go silent without failing (a black hole, a middlebox that forgot the
//! flow): TCP would only give up after many minutes, and a node that sends this peer no
//! request of its own (a follower to another follower) has no call to time out. So the
//! sender watches its acknowledgements: messages out on a connection and none acknowledged
//! for [`ACK_TIMEOUT`], it drops that connection and sends again on a new one.
//!
//! Frame bodies: [`Kind::Data`]: run (u64), sequence (u64), the server's payload;
//! [`Kind::DataAck`]: run (u64), the highest sequence taken (u64).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::{Notify, mpsc, watch};

use crate::node::{ClusterNode, DataHandler};
use crate::peer::lock;
use crate::types::NodeId;
use crate::wire::{Frame, Kind};

/// How long messages may wait on a connection without any acknowledgement before the
/// connection is taken for dead and dialled again. Acknowledgements normally follow within a
/// durable write (milliseconds); a false alarm only costs messages sent twice (the receiver
/// drops them).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// How many messages the sender takes from an outbox at a time.
const SEND_BATCH: usize = 256;

/// A future the receiver awaits before it acknowledges a message (its durable write).
pub type Settled = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where received messages go (the server's broker).
pub trait DataSink: Send + Sync + 'static {
    /// Takes a message another node sent (number `seq` of its `run`); the returned future
    /// resolves once it is safe to acknowledge (immediately for what needs no durable write).
    fn deliver(&self, from: NodeId, run: u64, seq: u64, payload: Bytes) -> Settled;
}

/// Limits of one peer's outbox. From 90 % of either on, the outbox is *congested*: clients'
/// QoS 1/2 messages with a copy for that peer are refused before they are taken (see
/// `ClusterHook::refuses`), QoS 0 copies are dropped; the last 10 % are kept for the QoS 1/2
/// messages already past that check and for publishers that cannot be refused (wills, the
/// admin API, bridges), so that an acknowledged message is not dropped for lack of room.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
}

impl Default for OutboxLimits {
    fn default() -> OutboxLimits {
        OutboxLimits {
            max_messages: 100_000,
            max_bytes: 256 << 20,
        }
    }
}

/// Counters of the data plane (for metrics).
#[derive(Debug, Default)]
pub struct LinkCounters {
    pub sent: AtomicU64,
    pub resent: AtomicU64,
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    /// Messages not taken because a peer's outbox was full.
    pub dropped: AtomicU64,
}

/// Called when a peer acknowledged messages: (peer, run, up to seq).
pub type AckListener = Arc<dyn Fn(NodeId, u64, u64) + Send + Sync>;

struct Outbox {
    /// Messages not acknowledged yet, oldest first, with their run and sequence numbers (runs
    /// of an earlier start of this node first, read back from the store).
    unacked: VecDeque<(u64, u64, Bytes)>,
    bytes: usize,
    next_seq: u64,
    /// How many of `unacked` were handed to the link since it was last (re)connected.
    sent: usize,
    /// Since when messages are out (`sent > 0`) with no acknowledgement (the first send, or
    /// the last acknowledgement that left some out).
    waiting_since: Option<Instant>,
}

impl Outbox {
    /// Whether the outbox holds 90 % of either limit or more.
    fn congested(&self, limits: &OutboxLimits) -> bool {
        self.unacked.len() >= limits.max_messages - limits.max_messages / 10
            || self.bytes >= limits.max_bytes - limits.max_bytes / 10
    }

    /// The connection is gone or taken for dead: everything not acknowledged goes again.
    fn send_again(&mut self, counters: &LinkCounters) {
        counters
            .resent
            .fetch_add(self.sent as u64, Ordering::Relaxed);
        self.sent = 0;
        self.waiting_since = None;
    }
}

struct PeerOut {
    outbox: Mutex<Outbox>,
    ready: Notify,
    /// The outbox is congested (kept under the outbox's lock, read without it).
    congested: AtomicBool,
    /// The peer was removed from the cluster: its pump ends.
    gone: AtomicBool,
}

impl PeerOut {
    /// Records whether the outbox is congested now (under its lock), keeping the plane's count
    /// of congested peers.
    fn update_congestion(&self, outbox: &Outbox, limits: &OutboxLimits, count: &AtomicUsize) {
        let now = outbox.congested(limits);
        if self.congested.swap(now, Ordering::Relaxed) != now {
            if now {
                count.fetch_add(1, Ordering::Relaxed);
            } else {
                count.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// The data plane of one node.
pub struct DataPlane {
    node: ClusterNode,
    run: u64,
    limits: OutboxLimits,
    peers: Mutex<HashMap<NodeId, Arc<PeerOut>>>,
    /// How many peers' outboxes are congested (0 in normal operation: the one check a
    /// publish pays).
    congested: AtomicUsize,
    /// Per origin node: its run and the highest sequence delivered.
    inbound: Mutex<HashMap<NodeId, Inbound>>,
    /// Wakes [`DataPlane::wait_delivered`] after a delivery, while any waits (`watchers`).
    progress: Notify,
    watchers: AtomicUsize,
    sink: Arc<dyn DataSink>,
    acked: std::sync::OnceLock<AckListener>,
    pub counters: LinkCounters,
    stop: watch::Receiver<bool>,
}

struct Inbound {
    run: u64,
    delivered: u64,
    /// Ordered hand-off to the task that waits for each message to settle and acknowledges.
    acks: mpsc::UnboundedSender<(Settled, u64, u64, mpsc::Sender<Frame>)>,
}

impl DataPlane {
    /// The data plane of `node`, delivering to `sink`; sets itself as the node's data
    /// handler.
    ///
    /// `after_run`: the highest run of this node read back from the store (0: none); this
    /// start's run is later (runs are start times in nanoseconds, kept increasing).
    pub fn start(
        node: ClusterNode,
        sink: Arc<dyn DataSink>,
        limits: OutboxLimits,
        stop: watch::Receiver<bool>,
        after_run: u64,
    ) -> Arc<DataPlane> {
        let run = start_run().max(after_run.saturating_add(1));
        let plane = Arc::new(DataPlane {
            node: node.clone(),
            run,
            limits,
            peers: Mutex::new(HashMap::new()),
            congested: AtomicUsize::new(0),
            inbound: Mutex::new(HashMap::new()),
            progress: Notify::new(),
            watchers: AtomicUsize::new(0),
            sink,
            acked: std::sync::OnceLock::new(),
            counters: LinkCounters::default(),
            stop,
        });
        node.set_data_handler(Arc::new(Handler(Arc::downgrade(&plane))));
        plane
    }

    /// This start's run.
    pub fn run(&self) -> u64 {
        self.run
    }

    /// Sets who learns of acknowledgements (the store forgets what they cover); once.
    pub fn set_ack_listener(&self, listener: AckListener) {
        let _ = self.acked.set(listener);
    }

    /// Queues `payload` for `peer`; `false` if its outbox is full (the message is not sent).
    pub fn send(self: &Arc<Self>, peer: NodeId, payload: Bytes) -> bool {
        self.send_with(peer, payload, |_, _| {})
    }

    /// [`DataPlane::send`], calling `queued(run, seq)` with the message's place before it can
    /// be sent (so a durable copy is submitted before any acknowledgement can remove it).
    pub fn send_with(
        self: &Arc<Self>,
        peer: NodeId,
        payload: Bytes,
        queued: impl FnOnce(u64, u64),
    ) -> bool {
        let out = self.peer(peer);
        {
            let mut outbox = lock(&out.outbox);
            if outbox.unacked.len() >= self.limits.max_messages
                || outbox.bytes + payload.len() > self.limits.max_bytes
            {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            let seq = outbox.next_seq;
            outbox.next_seq += 1;
            queued(self.run, seq);
            outbox.bytes += payload.len();
            outbox.unacked.push_back((self.run, seq, payload));
            out.update_congestion(&outbox, &self.limits, &self.congested);
        }
        out.ready.notify_one();
        true
    }

    /// Messages of an earlier start read back from the store, in (run, seq) order per peer:
    /// sent before anything of this run. Call before the first `send`.
    pub fn restore_outbox(self: &Arc<Self>, forwards: Vec<(NodeId, u64, u64, Bytes)>) {
        for (peer, run, seq, payload) in forwards {
            let out = self.peer(peer);
            let mut outbox = lock(&out.outbox);
            outbox.bytes += payload.len();
            outbox.unacked.push_back((run, seq, payload));
            out.update_congestion(&outbox, &self.limits, &self.congested);
            drop(outbox);
            out.ready.notify_one();
        }
    }

    /// What was delivered from each origin before a restart: (origin, run, seq).
    pub fn restore_received(&self, received: Vec<(NodeId, u64, u64)>) {
        let mut inbound = lock(&self.inbound);
        for (origin, run, seq) in received {
            let mut entry = new_inbound(run);
            entry.delivered = seq;
            inbound.insert(origin, entry);
        }
    }

    /// Whether `peer`'s outbox is congested (see [`OutboxLimits`]). Cheap while none is.
    pub fn is_congested(&self, peer: NodeId) -> bool {
        if self.congested.load(Ordering::Relaxed) == 0 {
            return false;
        }
        lock(&self.peers)
            .get(&peer)
            .is_some_and(|out| out.congested.load(Ordering::Relaxed))
    }

    /// Whether some peer's outbox is congested.
    pub fn any_congested(&self) -> bool {
        self.congested.load(Ordering::Relaxed) > 0
    }

    /// `peer` was removed from the cluster: its outbox is dropped (the store forgets its
    /// copies through the acknowledgement listener) and its sender stops.
    pub fn forget_peer(&self, peer: NodeId) {
        let Some(out) = lock(&self.peers).remove(&peer) else {
            return;
        };
        out.gone.store(true, Ordering::Relaxed);
        let mut outbox = lock(&out.outbox);
        let last = outbox.unacked.back().map(|(run, seq, _)| (*run, *seq));
        outbox.unacked.clear();
        outbox.bytes = 0;
        outbox.sent = 0;
        outbox.waiting_since = None;
        out.update_congestion(&outbox, &self.limits, &self.congested);
        if let Some((run, seq)) = last
            && let Some(listener) = self.acked.get()
        {
            listener(peer, run, seq);
        }
        drop(outbox);
        out.ready.notify_one();
        tracing::info!(peer, "cluster: a removed node's outbox dropped");
    }

    /// The peers this node has an outbox for (restored at start, or sent to since).
    pub fn peers(&self) -> Vec<NodeId> {
        lock(&self.peers).keys().copied().collect()
    }

    /// The run and sequence number of the last message queued for `peer` and not yet
    /// acknowledged (`None`: every message queued for it was acknowledged, so delivered).
    pub fn outbox_tail(&self, peer: NodeId) -> Option<(u64, u64)> {
        let out = lock(&self.peers).get(&peer).cloned()?;
        lock(&out.outbox)
            .unacked
            .back()
            .map(|(run, seq, _)| (*run, *seq))
    }

    /// Runs `f` while no message from another node is delivered here: one delivered before
    /// has been handed to the sink whole, one after waits until `f` returns. `f` must not
    /// wait for a delivery (the sink is called under the same lock).
    pub fn without_deliveries<R>(&self, f: impl FnOnce() -> R) -> R {
        let _held = lock(&self.inbound);
        f()
    }

    /// Waits (until `deadline`) until the message `(run, seq)` of `origin` has been delivered
    /// here (or a later run of `origin` has begun); whether it has.
    pub async fn wait_delivered(
        &self,
        origin: NodeId,
        run: u64,
        seq: u64,
        deadline: tokio::time::Instant,
    ) -> bool {
        let reached = || {
            lock(&self.inbound).get(&origin).is_some_and(|entry| {
                entry.run > run || (entry.run == run && entry.delivered >= seq)
            })
        };
        /// Counts a waiter for as long as it waits (dropped with the future, too).
        struct Watching<'a>(&'a AtomicUsize);
        impl Drop for Watching<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.watchers.fetch_add(1, Ordering::SeqCst);
        let _watching = Watching(&self.watchers);
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if reached() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return reached();
            }
        }
    }

    /// Messages waiting for `peer`'s acknowledgement.
    pub fn pending(&self, peer: NodeId) -> usize {
        lock(&self.peers)
            .get(&peer)
            .map_or(0, |out| lock(&out.outbox).unacked.len())
    }

    fn peer(self: &Arc<Self>, peer: NodeId) -> Arc<PeerOut> {
        let mut peers = lock(&self.peers);
        if let Some(out) = peers.get(&peer) {
            return out.clone();
        }
        let out = Arc::new(PeerOut {
            outbox: Mutex::new(Outbox {
                unacked: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
                sent: 0,
                waiting_since: None,
            }),
            ready: Notify::new(),
            congested: AtomicBool::new(false),
            gone: AtomicBool::new(false),
        });
        peers.insert(peer, out.clone());
        tokio::spawn(self.clone().pump(peer, out.clone()));
        out
    }

    /// Sends a peer's outbox, in order, as the link takes it; after a failure, again from
    /// the oldest message not acknowledged.
    async fn pump(self: Arc<Self>, peer: NodeId, out: Arc<PeerOut>) {
        let mut stop = self.stop.clone();
        let mut current = 0u64;
        loop {
            if *stop.borrow() || out.gone.load(Ordering::Relaxed) {
                return;
            }
            let silent = lock(&out.outbox)
                .waiting_since
                .is_some_and(|since| since.elapsed() >= ACK_TIMEOUT);
            if silent && current != 0 {
                tracing::debug!(peer, "cluster data link silent: dialling again");
                self.node.drop_link(peer, current).await;
                lock(&out.outbox).send_again(&self.counters);
                current = 0;
                continue;
            }
            let has_work = {
                let outbox = lock(&out.outbox);
                outbox.sent < outbox.unacked.len()
            };
            if !has_work {
                tokio::select! {
                    _ = out.ready.notified() => {}
                    // Acknowledgements lost with a link: sent again after a while.
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => return,
                }
                if !self.node.linked(peer) {
                    // Sent, not acknowledged, and the link went down: send it again on the
                    // next connection.
                    lock(&out.outbox).send_again(&self.counters);
                    current = 0;
                }
                continue;
            }
            let Some(generation) = self.node.link_generation(peer).await else {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.changed() => return,
                }
                continue;
            };
            if generation != current {
                // A new connection: whatever went on the old one may be lost; send again
                // everything not acknowledged, from the oldest.
                lock(&out.outbox).send_again(&self.counters);
                current = generation;
            }
            // What is not sent yet, a batch at a time (one look at the outbox, then the
            // frames one after the other on the same connection).
            let batch: Vec<(u64, u64, Bytes)> = {
                let outbox = lock(&out.outbox);
                outbox
                    .unacked
                    .iter()
                    .skip(outbox.sent)
                    .take(SEND_BATCH)
                    .cloned()
                    .collect()
            };
            for (run, seq, payload) in batch {
                let mut body = BytesMut::with_capacity(16 + payload.len());
                body.put_u64(run);
                body.put_u64(seq);
                body.put_slice(&payload);
                if !self
                    .node
                    .send_data(peer, generation, Frame::new(Kind::Data, body.freeze()))
                    .await
                {
                    // The connection's queue is full or it just failed: wait a little.
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                        _ = stop.changed() => return,
                    }
                    break;
                }
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                let mut outbox = lock(&out.outbox);
                // An acknowledgement may have removed it meanwhile.
                if outbox
                    .unacked
                    .get(outbox.sent)
                    .is_some_and(|(r, s, _)| (*r, *s) == (run, seq))
                {
                    outbox.sent += 1;
                    outbox.waiting_since.get_or_insert_with(Instant::now);
                } else {
                    break;
                }
            }
        }
    }

    /// A peer acknowledged everything up to `seq` of run `run`, and every earlier run.
    fn acknowledged(&self, peer: NodeId, run: u64, seq: u64) {
        let Some(out) = lock(&self.peers).get(&peer).cloned() else {
            return;
        };
        let mut outbox = lock(&out.outbox);
        let mut removed = false;
        while outbox
            .unacked
            .front()
            .is_some_and(|(r, s, _)| (*r, *s) <= (run, seq))
        {
            if let Some((_, _, payload)) = outbox.unacked.pop_front() {
                outbox.bytes -= payload.len();
                outbox.sent = outbox.sent.saturating_sub(1);
                removed = true;
            }
        }
        if removed {
            outbox.waiting_since = (outbox.sent > 0).then(Instant::now);
            out.update_congestion(&outbox, &self.limits, &self.congested);
        }
        // Under the outbox's lock, so the store sees it after the message was queued.
        if removed && let Some(listener) = self.acked.get() {
            listener(peer, run, seq);
        }
    }

    /// A message from `from`.
    fn received(&self, from: NodeId, frame: Frame, reply: &mpsc::Sender<Frame>) {
        let mut body = frame.body;
        if body.len() < 16 {
            return;
        }
        let run = body.get_u64();
        let seq = body.get_u64();
        let mut inbound = lock(&self.inbound);
        let entry = inbound.entry(from).or_insert_with(|| new_inbound(run));
        if run > entry.run {
            // The origin started again: its numbering starts again.
            entry.run = run;
            entry.delivered = 0;
        }
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        // A message of an earlier run, or one taken already, is sent again after a failure:
        // acknowledged, not delivered twice.
        let settled: Settled = if run < entry.run || seq <= entry.delivered {
            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            Box::pin(async {})
        } else {
            entry.delivered = seq;
            self.sink.deliver(from, run, seq, body)
        };
        let _ = entry.acks.send((settled, run, seq, reply.clone()));
        drop(inbound);
        if self.watchers.load(Ordering::SeqCst) > 0 {
            self.progress.notify_waiters();
        }
    }
}

fn new_inbound(run: u64) -> Inbound {
    let (acks, mut queue) = mpsc::unbounded_channel::<(Settled, u64, u64, mpsc::Sender<Frame>)>();
    tokio::spawn(async move {
        while let Some((settled, mut run, mut seq, mut reply)) = queue.recv().await {
            settled.await;
            // Cumulative: what settled meanwhile goes in the same acknowledgement (one per
            // burst rather than one per message).
            while let Ok((next, next_run, next_seq, next_reply)) = queue.try_recv() {
                next.await;
                (run, seq, reply) = (next_run, next_seq, next_reply);
            }
            let mut body = BytesMut::with_capacity(16);
            body.put_u64(run);
            body.put_u64(seq);
            // Cumulative: a lost acknowledgement is covered by the next one.
            let _ = reply.try_send(Frame::new(Kind::DataAck, body.freeze()));
        }
    });
    Inbound {
        run,
        delivered: 0,
        acks,
    }
}

struct Handler(std::sync::Weak<DataPlane>);

impl DataHandler for Handler {
    fn data(&self, from: NodeId, frame: Frame, reply: &mpsc::Sender<Frame>) {
        if let Some(plane) = self.0.upgrade()
            && frame.kind == Kind::Data
        {
            plane.received(from, frame, reply);
        }
    }

    fn answer(&self, from: NodeId, frame: Frame) {
        let Some(plane) = self.0.upgrade() else {
            return;
        };
        if frame.kind != Kind::DataAck || frame.body.len() < 16 {
            return;
        }
        let mut body = frame.body;
        let run = body.get_u64();
        let seq = body.get_u64();
        plane.acknowledged(from, run, seq);
    }
}

/// This start's run: the wall clock in nanoseconds (later starts have larger runs; the
/// caller also keeps it above the last run read back from the store).
fn start_run() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        })
}
