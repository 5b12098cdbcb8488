//! Test support (cargo feature `testing`): a fault-injecting TCP relay on every link between
//! nodes, for the partition tests of this crate and of the server (issue 16, "Partitions
//! without root": faults are injected in user space, no network namespace or root needed).
//!
//! A [`Relay`] carries one directed link, from node X to node Y: it listens on its own
//! loopback port, X's [`AddrMap`] sends X's dials for Y there, and it forwards to Y's real
//! address. Its [`Mode`] can be changed at any time and takes effect on live connections: a
//! `Drop` closes them at once, a `Blackhole` stops forwarding in the middle of a frame. A
//! [`Network`] builds the full mesh of relays for N nodes and offers the usual faults
//! (isolate a node, partition, one-way links, delay) and `heal`.
//!
//! What a mode models:
//! - `Pass`: a healthy network.
//! - `Drop`: a peer that resets every connection (a firewall's reject, a crashed process):
//!   live connections are closed; a new one is accepted at TCP level and closed at once (the
//!   relay keeps its port, so that no other socket takes it meanwhile).
//! - `Blackhole`: packets lost without an answer, for a while (a cable pulled, a stopped VM):
//!   connections stay open, nothing is forwarded either way; a new connection is accepted and
//!   held, its upstream is only dialled once the mode lets bytes through. Bytes already read
//!   are held, not discarded, and flow on when the mode changes, as TCP would retransmit
//!   them after a short outage.
//! - `Delay(d)`: every chunk is forwarded `d` after it was read, order kept.
//! - `OneWay(direction)`: bytes in that direction pass, the other way they are held (as in
//!   `Blackhole`).
//!
//! Besides the mode, [`Relay::forget_connections`] makes the live connections silently dead
//! for good while new ones pass: a stateful middlebox that forgot its flows (a NAT or a
//! firewall restarted). Only a sender that notices the silence and dials again gets through.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::peer::AddrMap;
use crate::types::NodeId;

/// Which way bytes travel on a relayed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the node that dialled to the node dialled (requests, data frames).
    Forward,
    /// From the node dialled back to the one that dialled (answers, acknowledgements).
    Backward,
}

/// What a relay does with its connections (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Drop,
    Blackhole,
    Delay(Duration),
    /// Bytes in this direction pass; the other way they are held.
    OneWay(Direction),
}

impl Mode {
    /// Whether bytes travelling in `direction` are forwarded now.
    fn passes(self, direction: Direction) -> bool {
        match self {
            Mode::Pass | Mode::Delay(_) => true,
            Mode::Drop | Mode::Blackhole => false,
            Mode::OneWay(open) => open == direction,
        }
    }

    fn delay(self) -> Duration {
        match self {
            Mode::Delay(delay) => delay,
            _ => Duration::ZERO,
        }
    }
}

/// What a relay saw, for tests that check a link was dialled again or that bytes flowed.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Connections accepted (each dial of the link).
    pub accepted: AtomicU64,
    /// Bytes forwarded from the dialling node to the dialled one.
    pub forward_bytes: AtomicU64,
    /// Bytes forwarded back.
    pub backward_bytes: AtomicU64,
}

/// What every connection of a relay follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Control {
    mode: Mode,
    /// Connections numbered up to this one are forgotten: nothing they carry goes on.
    forgotten: u64,
}

impl Control {
    fn passes(&self, connection: u64, direction: Direction) -> bool {
        connection > self.forgotten && self.mode.passes(direction)
    }

    fn dropped(&self) -> bool {
        self.mode == Mode::Drop
    }
}

/// One directed link's relay; stops (and closes its connections) when dropped.
pub struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    control: watch::Sender<Control>,
    stats: Arc<RelayStats>,
    accept: tokio::task::AbortHandle,
}

impl Relay {
    /// A relay on a new loopback port, forwarding to `target` (which need not listen yet).
    pub async fn start(target: SocketAddr) -> io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (control, watching) = watch::channel(Control {
            mode: Mode::Pass,
            forgotten: 0,
        });
        let stats = Arc::new(RelayStats::default());
        let accept =
            tokio::spawn(accept_loop(listener, target, watching, stats.clone())).abort_handle();
        Ok(Relay {
            addr,
            target,
            control,
            stats,
            accept,
        })
    }

    /// Where the link's dialler connects.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the relay forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Changes the mode; live connections follow at once.
    pub fn set(&self, mode: Mode) {
        self.control.send_modify(|control| control.mode = mode);
    }

    pub fn mode(&self) -> Mode {
        self.control.borrow().mode
    }

    /// The connections open now go silent for good (nothing they carry is forwarded, they
    /// are not closed); connections made later are carried as the mode says.
    pub fn forget_connections(&self) {
        let newest = self.accepted();
        self.control
            .send_modify(|control| control.forgotten = control.forgotten.max(newest));
    }

    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.stats.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        // Its connections close, as in `Drop` (and as they would with the sender gone).
        self.set(Mode::Drop);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    control: watch::Receiver<Control>,
    stats: Arc<RelayStats>,
) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(error) => {
                tracing::debug!(%error, "relay: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let connection = stats.accepted.fetch_add(1, Ordering::Relaxed) + 1;
        if control.borrow().dropped() {
            drop(client);
            continue;
        }
        let control = control.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut dropped = control.clone();
            tokio::select! {
                _ = relay_connection(client, target, connection, control, stats) => {}
                _ = dropped.wait_for(Control::dropped) => {}
            }
        });
    }
}

/// Carries one connection until either side closes it or the mode drops it (the caller
/// drops this future, which closes both sockets).
async fn relay_connection(
    client: TcpStream,
    target: SocketAddr,
    connection: u64,
    mut control: watch::Receiver<Control>,
    stats: Arc<RelayStats>,
) {
    // A connection accepted in a black hole has not reached its target yet.
    if control
        .wait_for(|now| now.mode != Mode::Blackhole && connection > now.forgotten)
        .await
        .is_err()
    {
        return;
    }
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    let forward = pipe(
        (client_read, upstream_write),
        (connection, Direction::Forward),
        control.clone(),
        stats.clone(),
    );
    let backward = pipe(
        (upstream_read, client_write),
        (connection, Direction::Backward),
        control,
        stats,
    );
    // Either way ending ends the connection: the links never half-close on purpose.
    tokio::select! {
        _ = forward => {}
        _ = backward => {}
    }
}

/// Copies one direction: a reader stamps each chunk with when it may go, a writer forwards
/// it then, once the mode lets this direction through. The bounded queue between them holds
/// what a black hole keeps; when it is full the reader stops reading (TCP pushes back).
async fn pipe(
    (mut from, mut to): (OwnedReadHalf, OwnedWriteHalf),
    (connection, direction): (u64, Direction),
    mut control: watch::Receiver<Control>,
    stats: Arc<RelayStats>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Bytes>)>(16);
    let reading_control = control.clone();
    let reading = async move {
        let mut buf = BytesMut::with_capacity(64 << 10);
        loop {
            buf.reserve(64 << 10);
            let read = from.read_buf(&mut buf).await;
            let due = Instant::now() + reading_control.borrow().mode.delay();
            let chunk = match read {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(buf.split().freeze()),
            };
            let end = chunk.is_none();
            if tx.send((due, chunk)).await.is_err() || end {
                return;
            }
        }
    };
    let writing = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            let open = control
                .wait_for(|now| now.passes(connection, direction) || now.dropped())
                .await
                .is_ok_and(|now| !now.dropped());
            if !open {
                return;
            }
            let Some(chunk) = chunk else {
                let _ = to.shutdown().await;
                return;
            };
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            let counter = match direction {
                Direction::Forward => &stats.forward_bytes,
                Direction::Backward => &stats.backward_bytes,
            };
            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    };
    // The writer ends the direction: what was read is forwarded first (the reader, done or
    // waiting on a silent peer, ends with it).
    let reading = async move {
        reading.await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = reading => {}
        _ = writing => {}
    }
}

/// The full mesh of relays for nodes `1..=n`: the link from X to Y goes through its own
/// relay. Node X's [`Network::addr_map`] sends X's dials of Y's cluster address (by address,
/// since seeds are dialled before their node id is known, or by node id) to that relay.
pub struct Network {
    addrs: Vec<SocketAddr>,
    relays: BTreeMap<(NodeId, NodeId), Relay>,
    /// The nodes' ports, held until [`Network::release`] so that nothing else (a relay, a
    /// socket of a test running alongside) takes them meanwhile.
    reserved: std::sync::Mutex<HashMap<NodeId, std::net::TcpListener>>,
}

impl Network {
    /// Reserves a loopback cluster address for each of `nodes` nodes (held until
    /// [`Network::release`]: call it just before the node binds its address) and starts the
    /// relays between them.
    pub async fn start(nodes: usize) -> io::Result<Network> {
        let mut addrs = Vec::with_capacity(nodes);
        let mut reserved = HashMap::new();
        for id in 1..=nodes as NodeId {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            addrs.push(listener.local_addr()?);
            reserved.insert(id, listener);
        }
        let network = Network::between(addrs).await?;
        *network.reserved.lock().unwrap_or_else(|e| e.into_inner()) = reserved;
        Ok(network)
    }

    /// Frees node `node`'s reserved address for the node to bind.
    pub fn release(&self, node: NodeId) {
        self.reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&node);
    }

    /// The relays between nodes whose cluster addresses are `addrs` (node `i + 1` at
    /// `addrs[i]`).
    pub async fn between(addrs: Vec<SocketAddr>) -> io::Result<Network> {
        let mut relays = BTreeMap::new();
        for from in 1..=addrs.len() as NodeId {
            for (index, target) in addrs.iter().enumerate() {
                let to = index as NodeId + 1;
                if to != from {
                    relays.insert((from, to), Relay::start(*target).await?);
                }
            }
        }
        Ok(Network {
            addrs,
            relays,
            reserved: std::sync::Mutex::default(),
        })
    }

    /// The node ids, `1..=n`.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> {
        1..=self.addrs.len() as NodeId
    }

    /// Node `node`'s real cluster address (what it binds and advertises).
    pub fn addr(&self, node: NodeId) -> SocketAddr {
        self.addrs[node as usize - 1]
    }

    /// The cluster addresses of every node but `node` (its seeds).
    pub fn seeds(&self, node: NodeId) -> Vec<String> {
        self.ids()
            .filter(|id| *id != node)
            .map(|id| self.addr(id).to_string())
            .collect()
    }

    /// What node `from` dials instead of each peer's address.
    pub fn addr_map(&self, from: NodeId) -> AddrMap {
        let mut by_addr: HashMap<String, String> = HashMap::new();
        let mut by_id: HashMap<NodeId, String> = HashMap::new();
        for ((dialler, to), relay) in &self.relays {
            if *dialler == from {
                by_addr.insert(self.addr(*to).to_string(), relay.addr().to_string());
                by_id.insert(*to, relay.addr().to_string());
            }
        }
        Arc::new(move |node: NodeId, addr: &str| {
            by_addr
                .get(addr)
                .or_else(|| by_id.get(&node))
                .cloned()
                .unwrap_or_else(|| addr.to_owned())
        })
    }

    /// The relay of the link `from` dials to `to`.
    ///
    /// # Panics
    /// If there is no such link (the same node twice, an id out of range): a test's mistake.
    pub fn relay(&self, from: NodeId, to: NodeId) -> &Relay {
        match self.relays.get(&(from, to)) {
            Some(relay) => relay,
            None => panic!("no link from node {from} to node {to}"),
        }
    }

    /// Sets the mode of the link `from` dials to `to`.
    pub fn set(&self, from: NodeId, to: NodeId, mode: Mode) {
        self.relay(from, to).set(mode);
    }

    /// Cuts `node` off from every other node (both ways) with `Drop`.
    pub fn isolate(&self, node: NodeId) {
        self.isolate_with(node, Mode::Drop);
    }

    /// Puts every link from and to `node` in `mode`.
    pub fn isolate_with(&self, node: NodeId, mode: Mode) {
        for ((from, to), relay) in &self.relays {
            if *from == node || *to == node {
                relay.set(mode);
            }
        }
    }

    /// Cuts every link between the two sides (both ways) with `Drop`.
    pub fn partition(&self, one: &[NodeId], other: &[NodeId]) {
        self.partition_with(one, other, Mode::Drop);
    }

    /// Puts every link between the two sides (both ways) in `mode`.
    pub fn partition_with(&self, one: &[NodeId], other: &[NodeId], mode: Mode) {
        for a in one {
            for b in other {
                self.set(*a, *b, mode);
                self.set(*b, *a, mode);
            }
        }
    }

    /// Bytes from `from` reach `to`; bytes from `to` never reach `from` (on both links
    /// between them: `to`'s answers to `from`'s requests are held, and so are `to`'s own
    /// requests).
    pub fn one_way(&self, from: NodeId, to: NodeId) {
        self.set(from, to, Mode::OneWay(Direction::Forward));
        self.set(to, from, Mode::OneWay(Direction::Backward));
    }

    /// Every link in `mode`.
    pub fn set_all(&self, mode: Mode) {
        for relay in self.relays.values() {
            relay.set(mode);
        }
    }

    /// Every link passes again.
    pub fn heal(&self) {
        self.set_all(Mode::Pass);
    }
}
