//! The link this node dials to another: requests with their answers, and one-way frames (the
//! data plane), over one connection (TCP, or TLS over TCP: [`Transport`]) that is dialled again
//! after it fails.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::rpc::{RpcRequest, RpcResponse};
use crate::transport::Transport;
use crate::types::NodeId;
use crate::wire::{self, Frame, Kind};

/// How many frames may wait for a link's writer; a sender waits (requests) or is told the
/// link is full (one-way frames) past it.
const QUEUE: usize = 1024;

/// How long dialling a peer may take (the TLS handshake included).
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot reach node {node} at {addr}: {error}")]
    Unreachable {
        node: NodeId,
        addr: String,
        error: String,
    },
    #[error("link to node {0} closed before the answer")]
    Closed(NodeId),
    #[error("no answer from node {0} in time")]
    Timeout(NodeId),
    #[error("bad answer from node {node}: {error}")]
    Protocol { node: NodeId, error: String },
}

/// Frames a peer sends on this node's dialled link that are not answers (the data plane's
/// acknowledgements): handed to whoever set the handler.
pub type FrameHandler = Arc<dyn Fn(NodeId, Frame) + Send + Sync>;

/// Maps a peer's advertised address to the one to dial (tests put relays in between).
pub type AddrMap = Arc<dyn Fn(NodeId, &str) -> String + Send + Sync>;

/// One live connection.
struct Conn {
    /// Which dial of the peer this is (counts from 1).
    generation: u64,
    tx: mpsc::Sender<Frame>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>,
    alive: Arc<AtomicBool>,
}

/// The link to one node.
pub struct Peer {
    local: NodeId,
    node: NodeId,
    addr: Mutex<String>,
    conn: tokio::sync::Mutex<Option<Conn>>,
    next_id: AtomicU64,
    dials: AtomicU64,
    on_frame: Option<FrameHandler>,
    addr_map: Option<AddrMap>,
    transport: Transport,
}

impl Peer {
    pub fn new(
        local: NodeId,
        node: NodeId,
        addr: String,
        on_frame: Option<FrameHandler>,
        addr_map: Option<AddrMap>,
        transport: Transport,
    ) -> Peer {
        Peer {
            local,
            node,
            addr: Mutex::new(addr),
            conn: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
            dials: AtomicU64::new(0),
            on_frame,
            addr_map,
            transport,
        }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn addr(&self) -> String {
        lock(&self.addr).clone()
    }

    /// The peer moved: the next dial goes to `addr`.
    pub fn set_addr(&self, addr: &str) {
        let mut current = lock(&self.addr);
        if *current != addr {
            *current = addr.to_owned();
        }
    }

    /// Whether a connection is up now.
    pub fn is_connected(&self) -> bool {
        match self.conn.try_lock() {
            Ok(conn) => conn
                .as_ref()
                .is_some_and(|c| c.alive.load(Ordering::Acquire)),
            Err(_) => true,
        }
    }

    /// Sends a request and waits for its answer, at most `timeout` (dialling included).
    pub async fn call(
        &self,
        request: &RpcRequest,
        timeout: Duration,
    ) -> Result<RpcResponse, PeerError> {
        let body = serde_json::to_vec(request).map_err(|error| PeerError::Protocol {
            node: self.node,
            error: error.to_string(),
        })?;
        let node = self.node;
        let exchange = async {
            let (tx, pending) = self.connection().await?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (answer_tx, answer_rx) = oneshot::channel();
            lock(&pending).insert(id, answer_tx);
            let sent = tx.send(Frame::with_id(Kind::Request, id, &body)).await;
            if sent.is_err() {
                lock(&pending).remove(&id);
                return Err(PeerError::Closed(node));
            }
            let answer = answer_rx.await.map_err(|_| PeerError::Closed(node));
            lock(&pending).remove(&id);
            let answer = answer?;
            serde_json::from_slice(&answer).map_err(|error| PeerError::Protocol {
                node,
                error: error.to_string(),
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                // A link that swallows requests (a black hole, a stopped peer) is dialled
                // afresh next time rather than trusted again.
                self.disconnect().await;
                Err(PeerError::Timeout(node))
            }
        }
    }

    /// The generation of the live connection, dialling if there is none; `None` if the peer
    /// cannot be reached. Frames queued on one generation arrive in order, or (the connection
    /// failed) a prefix of them does.
    pub async fn generation(&self) -> Option<u64> {
        self.connection().await.ok()?;
        let slot = self.conn.lock().await;
        slot.as_ref()
            .filter(|conn| conn.alive.load(Ordering::Acquire))
            .map(|conn| conn.generation)
    }

    /// Queues a one-way frame on the connection of `generation`; `false` if that connection
    /// is gone or its queue is full.
    pub async fn send_on(&self, generation: u64, frame: Frame) -> bool {
        let slot = self.conn.lock().await;
        match slot.as_ref() {
            Some(conn) if conn.generation == generation && conn.alive.load(Ordering::Acquire) => {
                conn.tx.try_send(frame).is_ok()
            }
            _ => false,
        }
    }

    /// Drops the connection of `generation` if it is still the live one (a newer one, dialled
    /// meanwhile, is kept).
    pub async fn disconnect_generation(&self, generation: u64) {
        let mut slot = self.conn.lock().await;
        if slot
            .as_ref()
            .is_some_and(|conn| conn.generation == generation)
            && let Some(conn) = slot.take()
        {
            conn.alive.store(false, Ordering::Release);
        }
    }

    /// Drops the connection (the next request dials again).
    pub async fn disconnect(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            conn.alive.store(false, Ordering::Release);
        }
    }

    /// The live connection's queue, dialling if there is none.
    async fn connection(
        &self,
    ) -> Result<
        (
            mpsc::Sender<Frame>,
            Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>,
        ),
        PeerError,
    > {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref()
            && conn.alive.load(Ordering::Acquire)
        {
            return Ok((conn.tx.clone(), conn.pending.clone()));
        }
        *slot = None;
        let advertised = self.addr();
        let addr = match &self.addr_map {
            Some(map) => map(self.node, &advertised),
            None => advertised.clone(),
        };
        let unreachable = |error: String| PeerError::Unreachable {
            node: self.node,
            addr: addr.clone(),
            error,
        };
        // The certificate is checked against the advertised address: a test relay in between
        // forwards the bytes and is not what the node is known by.
        let (reader, mut writer) = self
            .transport
            .dial(&addr, &advertised, DIAL_TIMEOUT)
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        // Buffered: a frame's header and body in one read, many frames per read under load.
        let mut reader = tokio::io::BufReader::with_capacity(64 << 10, reader);
        wire::write_frame(&mut writer, &wire::hello(self.local))
            .await
            .map_err(|error| unreachable(error.to_string()))?;
        let (tx, rx) = mpsc::channel::<Frame>(QUEUE);
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));

        // The writer: frames in order, as many as are queued in one write.
        tokio::spawn(wire::write_loop(writer, rx, alive.clone()));

        // The reader: answers to their waiters, other frames to the handler.
        let reader_pending = pending.clone();
        let reader_alive = alive.clone();
        let on_frame = self.on_frame.clone();
        let node = self.node;
        tokio::spawn(async move {
            loop {
                let frame = match wire::read_frame(&mut reader).await {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(error) => {
                        tracing::debug!(node, %error, "cluster link read failed");
                        break;
                    }
                };
                match frame.kind {
                    Kind::Response => match frame.split_id() {
                        Ok((id, body)) => {
                            if let Some(waiter) = lock(&reader_pending).remove(&id) {
                                let _ = waiter.send(body);
                            }
                        }
                        Err(error) => {
                            tracing::warn!(node, %error, "cluster link: bad answer");
                            break;
                        }
                    },
                    _ => match &on_frame {
                        Some(handler) => handler(node, frame),
                        None => {
                            tracing::warn!(node, kind = ?frame.kind, "cluster link: unexpected frame");
                            break;
                        }
                    },
                }
                if !reader_alive.load(Ordering::Acquire) {
                    break;
                }
            }
            reader_alive.store(false, Ordering::Release);
            // Waiters learn the link closed: their senders are dropped.
            lock(&reader_pending).clear();
        });
        *slot = Some(Conn {
            generation: self.dials.fetch_add(1, Ordering::Relaxed) + 1,
            tx: tx.clone(),
            pending: pending.clone(),
            alive,
        });
        Ok((tx, pending))
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("node", &self.node)
            .field("addr", &self.addr())
            .finish()
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
