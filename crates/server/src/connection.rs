//! The task of one client connection: reads and decodes in place, hands packets to the broker
//! core's `Connection`, and writes what it produces in batches (one buffer, one write call for
//! everything ready). Reading stops while the write buffer is over its high-water mark, so a
//! client that does not read cannot make the broker buffer without bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tern_broker::{Broker, Connection, Wakeup};
use tern_codec::Packet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Bytes encoded into the write buffer per round before it is written.
const WRITE_BUDGET: usize = 64 * 1024;
/// Reading pauses while this many bytes wait to be written.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// Bytes reserved for each read.
const READ_CHUNK: usize = 4 * 1024;
/// Time to flush the last packets (CONNACK refusal, DISCONNECT) before closing.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Wakes the connection task through a tokio `Notify` (a wake-up before the task waits is kept).
pub(crate) struct NotifyWakeup(pub(crate) Notify);

impl Wakeup for NotifyWakeup {
    fn wake(&self) {
        self.0.notify_one();
    }
}

/// Serves one client until the connection ends.
pub(crate) async fn serve_connection<R, W>(
    mut reader: R,
    mut writer: W,
    peer: SocketAddr,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let wakeup = Arc::new(NotifyWakeup(Notify::new()));
    let mut conn = Connection::new(
        broker,
        wakeup.clone(),
        Some(peer),
        Instant::now().into_std(),
    );
    let mut rbuf = BytesMut::new();
    let mut wbuf = BytesMut::new();
    let mut announced = false;
    let mut close_deadline: Option<Instant> = None;

    loop {
        let now = Instant::now();
        let mut more = false;
        if wbuf.len() < WRITE_BUDGET {
            more = conn.poll_transmit(&mut wbuf, WRITE_BUDGET, now.into_std());
        }
        if !announced && conn.is_connected() {
            announced = true;
            tracing::info!(
                client_id = %conn.client_id().map(|id| id.as_str()).unwrap_or(""),
                peer = %peer,
                protocol = %conn.protocol_version(),
                "client connected"
            );
        }
        if conn.is_closed() {
            if wbuf.is_empty() && !more {
                break;
            }
            let deadline = *close_deadline.get_or_insert(now + CLOSE_FLUSH_TIMEOUT);
            if now >= deadline {
                break;
            }
        }
        let deadline = close_deadline.or_else(|| conn.poll_timeout().map(Instant::from_std));
        let reading = !conn.is_closed() && wbuf.len() < WRITE_HIGH_WATER;
        if reading && rbuf.capacity() - rbuf.len() < 512 {
            rbuf.reserve(READ_CHUNK);
        }

        tokio::select! {
            changed = shutdown.changed(), if !conn.is_closed() => {
                // Shutting down (or the server is gone): say so to MQTT 5 clients and stop.
                let _ = changed;
                conn.shutdown(Instant::now().into_std());
            }
            written = writer.write_buf(&mut wbuf), if !wbuf.is_empty() => {
                match written {
                    Ok(0) | Err(_) => {
                        conn.handle_transport_closed(Instant::now().into_std());
                        break;
                    }
                    Ok(_) => {}
                }
            }
            read = reader.read_buf(&mut rbuf), if reading => {
                let now = Instant::now().into_std();
                match read {
                    Ok(0) | Err(_) => conn.handle_transport_closed(now),
                    Ok(_) => decode_all(&mut conn, &mut rbuf, now),
                }
            }
            () = wakeup.0.notified(), if !conn.is_closed() => {}
            () = sleep_until(deadline), if deadline.is_some() => {
                conn.handle_timeout(Instant::now().into_std());
            }
        }
    }
    let _ = writer.shutdown().await;
    let reason = conn
        .close_reason()
        .map_or_else(|| "connection lost".to_owned(), ToString::to_string);
    if announced {
        tracing::info!(
            client_id = %conn.client_id().map(|id| id.as_str()).unwrap_or(""),
            peer = %peer,
            %reason,
            "client disconnected"
        );
    } else {
        tracing::debug!(peer = %peer, %reason, "connection closed before CONNECT was accepted");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Decodes and handles every whole packet in `rbuf`.
fn decode_all(conn: &mut Connection, rbuf: &mut BytesMut, now: std::time::Instant) {
    while !conn.is_closed() {
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
