//! The task of one client connection: reads and decodes in place, hands packets to the broker
//! core's `Connection`, and writes what it produces in batches (one buffer, one write call for
//! everything ready). Reading stops while the write buffer is over its high-water mark, so a
//! client that does not read cannot make the broker buffer without bound. At the end the socket
//! is closed gracefully, so that the client reads the reason even while it is still writing.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tern_broker::{Broker, Connection, Counter, TransportIdentity, Wakeup};
use tern_codec::Packet;
use tokio::time::Instant;

use crate::transport::Transport;

/// Bytes encoded into the write buffer per round before it is written.
const WRITE_BUDGET: usize = 64 * 1024;
/// Reading pauses while this many bytes wait to be written.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// Bytes read ahead (kept, not handled) while a deferred authentication is decided.
const DECIDING_READ_MAX: usize = 64 * 1024;
/// Longest time from the end of a connection to the close of its socket: flushing the last
/// packets (CONNACK refusal, DISCONNECT), then the drain (see [`close_gracefully`]). Bounded so
/// that a client that neither reads nor stops writing cannot hold its task, its socket and
/// its place under `max_connections`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes read and discarded in the drain: a client writing faster than this is cut off
/// at once rather than read for the whole `CLOSE_TIMEOUT`. 64 KiB leaves a client room to send
/// what it had queued before it turns to read, and costs the broker next to nothing.
const CLOSE_DRAIN_BYTES: usize = 64 * 1024;

/// Wakes the connection task: a flag and the task's waker. A wake-up before the task waits is
/// kept in the flag. Smaller than a `Notify` waiter, which matters with many idle connections.
pub(crate) struct TaskWakeup {
    woken: AtomicBool,
    /// Set by a read whose lone message woke other tasks of this worker: the task lets them
    /// run before it writes (see `run_connection`). Here rather than in the task's future,
    /// which every idle connection pays for byte by byte.
    give_turn: AtomicBool,
    /// The worker the task runs on (`u16::MAX`: not a worker's).
    worker: u16,
    waker: Mutex<Option<Waker>>,
}

impl Default for TaskWakeup {
    fn default() -> TaskWakeup {
        TaskWakeup::on_worker(None)
    }
}

/// Reads of at most this many bytes count as a lone message (see the read in
/// `run_connection`).
const LONE_READ: usize = 256;

thread_local! {
    /// Wakes of a connection task on the waking thread's own worker, counted.
    static LOCAL_WAKES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Wakeup for TaskWakeup {
    fn wake(&self) {
        // Whoever sets the flag takes the waker: a wake while the flag is still set (the task
        // has not looked since) has nothing to add. A fan-out wakes each subscriber for every
        // message; this keeps all but the first off the waker's lock, which the subscriber's
        // own thread takes too.
        if self.woken.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.worker != u16::MAX && tern_broker::current_worker() == Some(self.worker) {
            LOCAL_WAKES.set(LOCAL_WAKES.get().wrapping_add(1));
        }
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn worker(&self) -> Option<u16> {
        (self.worker != u16::MAX).then_some(self.worker)
    }
}

impl TaskWakeup {
    /// The wakeup of a task on worker `worker`.
    pub(crate) fn on_worker(worker: Option<u16>) -> TaskWakeup {
        TaskWakeup {
            woken: AtomicBool::new(false),
            give_turn: AtomicBool::new(false),
            worker: worker.unwrap_or(u16::MAX),
            waker: Mutex::new(None),
        }
    }

    /// Ready once `wake` has been called since the last time this was ready.
    pub(crate) fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        {
            let mut slot = self
                .waker
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match slot.as_ref() {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => *slot = Some(cx.waker().clone()),
            }
        }
        // A wake between the first check and registering the waker is not lost.
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// What ended a wait of the connection task.
enum Event {
    Written(std::io::Result<usize>),
    Read(std::io::Result<usize>),
    Woken,
    Timer,
}

/// Serves one client until the connection ends. `identity` is what the transport vouches
/// for (the listener's name, a client certificate). `accepted` is when the socket was
/// accepted: the connect timeout counts from then, so the steps before MQTT (PROXY header,
/// TLS, WebSocket upgrade) and the CONNECT share one budget.
///
/// The connection's state is made here, before the task's future: an argument of an async
/// function is kept in its future for the task's whole life, so the future takes only what the
/// loop needs (the peer's address, the broker and the identity live in the `Connection`), and
/// every idle connection is that much smaller.
pub(crate) fn serve_connection<T: Transport + 'static>(
    transport: T,
    peer: SocketAddr,
    identity: Option<Arc<TransportIdentity>>,
    broker: Arc<Broker>,
    // Held for the life of the connection (the server counts open connections with it).
    guard: crate::server::ConnectionGuard,
    accepted: Instant,
) -> impl Future<Output = ()> + Send + 'static {
    let wakeup = Arc::new(TaskWakeup::on_worker(tern_broker::current_worker()));
    let conn = Connection::with_transport(
        broker,
        wakeup.clone(),
        Some(peer),
        identity,
        accepted.into_std(),
    );
    run_connection(transport, conn, wakeup, guard)
}

/// The connection's loop (see [`serve_connection`]). An `async move` block rather than an
/// `async fn`: the block works on what it captured in place, where an `async fn` would keep
/// its arguments and a moved copy of each (the `Connection` twice).
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn run_connection<T: Transport + 'static>(
    mut transport: T,
    mut conn: Connection,
    wakeup: Arc<TaskWakeup>,
    guard: crate::server::ConnectionGuard,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let mut rbuf = BytesMut::new();
        let mut wbuf = BytesMut::new();
        let mut announced = false;
        // Set once the connection has ended: the timer then holds the close deadline (see
        // `CLOSE_TIMEOUT`), which no other deadline replaces (a closed connection has none).
        let mut closing = false;
        // One timer for the connection's deadlines. Keep-alive deadlines only move later, so the
        // timer is moved only when a deadline comes earlier; when it fires early, the connection
        // finds nothing due and the timer is set again. Whether it is set is a flag, its
        // deadline the timer's own: an `Option<Instant>` beside it would cost every idle
        // connection 16 bytes more of its task (issue 14).
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut armed = false;

        loop {
            let now = Instant::now();
            // Whole packets left in the read buffer when the connection stopped taking input (a
            // congested store) are handled once it takes input again.
            if !rbuf.is_empty() && !conn.is_closed() && conn.wants_input() {
                decode_all(&mut conn, &mut rbuf, now.into_std());
            }
            if !conn.is_closed() && conn.server_stopping() {
                // Shutting down: say so to MQTT 5 clients and stop.
                conn.shutdown(now.into_std());
            }
            // A CONNECT whose authentication the core deferred: decided in a task of its own;
            // the answer wakes this one (and `poll_transmit` takes it).
            if let Some(request) = conn.take_auth_request() {
                crate::auth::spawn_deferred(guard.authenticator(), request);
            }
            let mut more = false;
            if wbuf.len() < WRITE_BUDGET {
                more = conn.poll_transmit(&mut wbuf, WRITE_BUDGET, now.into_std());
            }
            if !announced && conn.is_connected() {
                announced = true;
                // The fields' order is part of the line's shape (tests and log parsers match
                // `client connected client_id="..."`): new fields go last. The id is a `&str`
                // field, quoted and escaped in text: a client id with a line break cannot
                // write a line of its own.
                tracing::info!(
                    client_id = conn.client_id().map_or("", |id| id.as_str()),
                    peer = %OptionalPeer(conn.peer()),
                    protocol = %crate::admin_backend::protocol_name(conn.protocol_version()),
                    event = "connect",
                    "client connected"
                );
            }
            if conn.is_closed() {
                if wbuf.is_empty() && !more {
                    break;
                }
                if !closing {
                    closing = true;
                    timer.as_mut().reset(now + CLOSE_TIMEOUT);
                    armed = true;
                }
                if now >= timer.deadline() {
                    break;
                }
                if !armed {
                    // The timer fired a little before the deadline (its clock ticks in
                    // milliseconds): wait for the rest.
                    let deadline = timer.deadline();
                    timer.as_mut().reset(deadline);
                    armed = true;
                }
            }
            if wbuf.is_empty() && !more {
                // Nothing to send: give back what the buffers hold while the connection waits.
                // Always replaced: a buffer advanced to its end reports no capacity but keeps
                // its allocation; a new empty one allocates nothing.
                wbuf = BytesMut::new();
                conn.release_idle_memory();
            }
            if rbuf.is_empty() {
                rbuf = BytesMut::new();
            }
            let deadline = conn.poll_timeout().map(Instant::from_std);
            if !closing
                && let Some(deadline) = deadline
                && (!armed || deadline < timer.deadline())
            {
                timer.as_mut().reset(deadline);
                armed = true;
            }
            // Reading also waits while the store is congested with this client's changes (see
            // `Connection::wants_input`): a publisher goes at the disk's pace.
            // While a deferred authentication is decided, nothing is handled [MQTT-3.1.4-5],
            // but reading goes on into the buffer (up to `DECIDING_READ_MAX`), kept for after:
            // a client that goes away meanwhile is seen, and its verification skipped.
            let reading = !conn.is_closed()
                && wbuf.len() < WRITE_HIGH_WATER
                && (conn.wants_input() || (conn.is_deciding() && rbuf.len() < DECIDING_READ_MAX));

            // One wait for everything, polled in a fixed order (write first, so replies are not
            // held behind reading); no per-branch futures live in the task.
            let closed = conn.is_closed();
            let event = poll_fn(|cx| {
                if wakeup.give_turn.swap(false, Ordering::Relaxed) {
                    // Behind the tasks woken by the last read: ready again at once (a wait of
                    // its own would make every connection's future larger).
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                if !wbuf.is_empty() {
                    if let Poll::Ready(written) = transport.poll_write(cx, &wbuf) {
                        return Poll::Ready(Event::Written(written));
                    }
                } else if let Poll::Ready(Err(error)) = transport.poll_flush(cx) {
                    // What the transport buffered itself (TLS records, frames) goes out meanwhile.
                    return Poll::Ready(Event::Written(Err(error)));
                }
                if reading && let Poll::Ready(read) = transport.poll_read(cx, &mut rbuf) {
                    return Poll::Ready(Event::Read(read));
                }
                if !closed && wakeup.poll_woken(cx).is_ready() {
                    return Poll::Ready(Event::Woken);
                }
                if armed && timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Timer);
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Written(Ok(n)) if n > 0 => {
                    wbuf.advance(n);
                    conn.broker()
                        .metrics()
                        .add(Counter::NetworkBytesSent, n as u64);
                }
                Event::Written(_) => {
                    conn.handle_transport_closed(Instant::now().into_std());
                    break;
                }
                Event::Read(read) => {
                    let now = Instant::now().into_std();
                    match read {
                        Ok(0) | Err(_) => conn.handle_transport_closed(now),
                        Ok(n) => {
                            conn.broker()
                                .metrics()
                                .add(Counter::NetworkBytesReceived, n as u64);
                            let woken = LOCAL_WAKES.get();
                            decode_all(&mut conn, &mut rbuf, now);
                            // A lone message that woke connections of this worker (its
                            // subscribers): they write it before this connection writes its
                            // answer (PUBACK), so the message is not held behind the
                            // publisher's turn. Not for larger reads (a busy publisher), where
                            // the extra turn would cost more than it saves.
                            if n <= LONE_READ && LOCAL_WAKES.get() != woken {
                                wakeup.give_turn.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                }
                Event::Woken => {}
                Event::Timer => {
                    armed = false;
                    conn.handle_timeout(Instant::now().into_std());
                }
            }
        }
        log_close(&conn, announced);
        // The connection's state is not needed for the close: give it back now.
        drop(conn);
        if !closing {
            timer.as_mut().reset(Instant::now() + CLOSE_TIMEOUT);
        }
        close_gracefully(&mut transport, &mut rbuf, timer.as_mut()).await;
        // Held until here: the server counts open connections with it.
        drop(guard);
    }
}

/// Logs why the connection ended.
fn log_close(conn: &Connection, announced: bool) {
    let peer = OptionalPeer(conn.peer());
    let reason = conn
        .close_reason()
        .map_or_else(|| "connection lost".to_owned(), ToString::to_string);
    if announced {
        tracing::info!(
            client_id = conn.client_id().map_or("", |id| id.as_str()),
            peer = %peer,
            %reason,
            event = "disconnect",
            "client disconnected"
        );
    } else {
        tracing::debug!(peer = %peer, %reason, "connection closed before CONNECT was accepted");
    }
}

/// A client's address in the log (the server always knows it; `-` otherwise).
struct OptionalPeer(Option<SocketAddr>);

impl std::fmt::Display for OptionalPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(peer) => peer.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Ends the transport so that the client can read what was sent last. Closing a socket with
/// unread bytes in its receive buffer makes the kernel reset the connection instead of closing
/// it: a client still writing then gets "broken pipe" or "connection reset" (and some stacks
/// drop what it had not read yet) instead of our DISCONNECT or CONNACK. So the write side is
/// shut down first (FIN after the last packet), then what the client still sends is read and
/// discarded until it closes its side, `timer` fires or `CLOSE_DRAIN_BYTES` have come.
/// `timer` is the connection's own, set by the caller to the close deadline. A function of its
/// own, run after the loop with no state beyond its arguments (the deadline lives in `timer`),
/// so the connection's future, paid by every idle connection, does not grow (the size probe
/// below).
async fn close_gracefully<T: Transport>(
    transport: &mut T,
    buf: &mut BytesMut,
    mut timer: Pin<&mut tokio::time::Sleep>,
) {
    // A transport that flushes on shutdown (TLS) could wait on a client that does not read.
    let shut = poll_fn(|cx| {
        if let Poll::Ready(result) = transport.poll_shutdown(cx) {
            return Poll::Ready(result.is_ok());
        }
        timer.as_mut().poll(cx).map(|()| false)
    })
    .await;
    if !shut {
        return;
    }
    let mut drained = 0;
    while drained < CLOSE_DRAIN_BYTES {
        buf.clear();
        let read = poll_fn(|cx| {
            if let Poll::Ready(read) = transport.poll_read(cx, buf) {
                return Poll::Ready(Some(read));
            }
            timer.as_mut().poll(cx).map(|()| None)
        })
        .await;
        match read {
            // The client closed its side: both sides are done, an orderly close.
            Some(Ok(0)) | Some(Err(_)) | None => return,
            Some(Ok(n)) => drained += n,
        }
    }
}

/// Decodes and handles the whole packets in `rbuf`, until the connection wants no more input.
fn decode_all(conn: &mut Connection, rbuf: &mut BytesMut, now: std::time::Instant) {
    while !conn.is_closed() && conn.wants_input() {
        match Packet::decode(rbuf, conn.protocol_version(), conn.max_packet_size()) {
            Ok(Some(packet)) => conn.handle_packet(packet, now),
            Ok(None) => return,
            Err(error) => {
                conn.handle_decode_error(&error, now);
                return;
            }
        }
    }
}

#[cfg(test)]
mod size_probe {
    #[tokio::test]
    async fn future_size() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let broker = tern_broker::Broker::new(Default::default());
        let guard = crate::server::ConnectionGuard::new(Default::default(), None);
        let transport = crate::transport::TcpTransport::new(stream);
        let fut = super::serve_connection(
            transport,
            addr,
            None,
            broker,
            guard,
            tokio::time::Instant::now(),
        );
        let size = std::mem::size_of_val(&fut);
        eprintln!("connection task future {size}");
        // Paid by every idle connection (with tokio's task header, in one allocation): 632
        // bytes in a debug build before the transports came, 560 since the loop is an async
        // block that works on what it captured, 544 since the timer's deadline is its own,
        // 528 since the close deadline is the timer's too (issue 14). tokio rounds a task up to a multiple of 128 bytes: in a release build
        // the future is 520 bytes and the task 640 (it was 768 at 552); about 20 bytes more and
        // it is 768 again (`cargo test --release -p tern-server --lib future_size -- --nocapture`,
        // and the task's allocation in heaptrack). A bound, so that growth is a decision.
        assert!(
            size <= 528,
            "the connection task's future grew to {size} bytes"
        );
    }
}
