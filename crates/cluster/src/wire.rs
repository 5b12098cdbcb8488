//! The frames of a node-to-node link: a 4-byte big-endian length (of what follows), a kind
//! byte, the body. A link starts with a [`Kind::Hello`] from the side that dialled.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame a node reads: a snapshot chunk, a batch of log entries or a message with
/// its MQTT payload (256 MiB at most) fit; anything larger is refused and the link closed.
pub const MAX_FRAME: usize = 300 << 20;

/// The version of the frames and RPCs; a node refuses a link from a peer that speaks another.
/// 2: the close before a hand-over (`RpcRequest::Close`), the flush (`RpcRequest::Flush`,
/// `HandOver::routes_at`) and message cluster ids in forwarded messages and session
/// transfers. 3: forwarded messages carry the route index they were planned with, and late
/// copies of a moved session's messages (the server's payload flags). 4: a hand-over's
/// answer names the nodes that answered the flush (the server's answer flags). 5: it also
/// names the last message of each node that did not answer that reached the previous owner.
pub const PROTOCOL_VERSION: u16 = 5;

/// Bytes this process wrote to and read from node-to-node links (a node per process in a
/// deployment; in-process test clusters share them). For metrics and the benchmarks' Raft
/// traffic figure: `(raft and other requests, data plane)`.
pub static BYTES_OUT: LinkBytes = LinkBytes::new();
pub static BYTES_IN: LinkBytes = LinkBytes::new();

/// A byte count per kind of traffic.
#[derive(Debug)]
pub struct LinkBytes {
    /// Requests and answers (Raft's RPCs, proposals, joins, hand-overs).
    pub control: std::sync::atomic::AtomicU64,
    /// The data plane (forwarded messages and their acknowledgements).
    pub data: std::sync::atomic::AtomicU64,
}

impl LinkBytes {
    const fn new() -> LinkBytes {
        LinkBytes {
            control: std::sync::atomic::AtomicU64::new(0),
            data: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn count(&self, kind: Kind, bytes: usize) {
        let counter = match kind {
            Kind::Data | Kind::DataAck => &self.data,
            Kind::Hello | Kind::Request | Kind::Response => &self.control,
        };
        counter.fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The dialling node: protocol version (u16) and its node id (u64).
    Hello = 1,
    /// A request: its id (u64), then an [`crate::rpc::RpcRequest`] as JSON.
    Request = 2,
    /// The answer to a request: the request's id (u64), then an [`crate::rpc::RpcResponse`]
    /// as JSON.
    Response = 3,
    /// A message of the data plane: opaque to this crate (see `crate::link`).
    Data = 4,
    /// The acknowledgement of data frames, up to a sequence number.
    DataAck = 5,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::Hello,
            2 => Kind::Request,
            3 => Kind::Response,
            4 => Kind::Data,
            5 => Kind::DataAck,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub body: Bytes,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("link i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is larger than the limit")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

impl Frame {
    pub fn new(kind: Kind, body: impl Into<Bytes>) -> Frame {
        Frame {
            kind,
            body: body.into(),
        }
    }

    /// A frame whose body starts with a u64 (a request id, a sequence number).
    pub fn with_id(kind: Kind, id: u64, rest: &[u8]) -> Frame {
        let mut body = BytesMut::with_capacity(8 + rest.len());
        body.put_u64(id);
        body.put_slice(rest);
        Frame::new(kind, body.freeze())
    }

    /// Splits a body that starts with a u64.
    pub fn split_id(&self) -> Result<(u64, Bytes), WireError> {
        if self.body.len() < 8 {
            return Err(WireError::Malformed("body shorter than its id"));
        }
        let mut body = self.body.clone();
        let id = body.get_u64();
        Ok((id, body))
    }

    /// Appends the frame's bytes to `out` (and counts them as sent).
    pub fn encode(&self, out: &mut BytesMut) {
        BYTES_OUT.count(self.kind, 5 + self.body.len());
        out.reserve(5 + self.body.len());
        out.put_u32((self.body.len() + 1) as u32);
        out.put_u8(self.kind as u8);
        out.put_slice(&self.body);
    }
}

/// Writes one frame and flushes.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame,
) -> Result<(), WireError> {
    let mut out = BytesMut::new();
    frame.encode(&mut out);
    writer.write_all(&out).await?;
    writer.flush().await?;
    Ok(())
}

/// Writes the frames `rx` gives, in order, as many as are queued in one write (up to 256 KiB),
/// and flushed, until `rx` closes, a write fails or `alive` turns false; then marks `alive` false and shuts
/// the writer down.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: tokio::sync::mpsc::Receiver<Frame>,
    alive: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    let mut out = BytesMut::new();
    while let Some(frame) = rx.recv().await {
        frame.encode(&mut out);
        while out.len() < 256 << 10 {
            match rx.try_recv() {
                Ok(frame) => frame.encode(&mut out),
                Err(_) => break,
            }
        }
        // Flushed: a TLS stream may keep records it could not write at once until then.
        if writer.write_all(&out).await.is_err() || writer.flush().await.is_err() {
            break;
        }
        out.clear();
        if !alive.load(Ordering::Acquire) {
            break;
        }
    }
    alive.store(false, Ordering::Release);
    let _ = writer.shutdown().await;
}

/// Reads one frame; `Ok(None)` at a clean end of the stream.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Frame>, WireError> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err(WireError::Empty);
    }
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    // Grown as the bytes arrive, not allocated from the announced length: a peer that
    // announces a large frame must send it to make this node hold it.
    let mut body = Vec::with_capacity(len.min(64 << 10));
    let read = (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut body)
        .await?;
    if read < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    let mut body = Bytes::from(body);
    let kind_byte = body[0];
    let kind = Kind::from_byte(kind_byte).ok_or(WireError::UnknownKind(kind_byte))?;
    BYTES_IN.count(kind, 4 + len);
    body.advance(1);
    Ok(Some(Frame { kind, body }))
}

/// The body of a [`Kind::Hello`].
pub fn hello(node: u64) -> Frame {
    let mut body = BytesMut::with_capacity(10);
    body.put_u16(PROTOCOL_VERSION);
    body.put_u64(node);
    Frame::new(Kind::Hello, body.freeze())
}

/// Reads a [`Kind::Hello`]'s body: the peer's node id, if it speaks our version.
pub fn parse_hello(frame: &Frame) -> Result<u64, WireError> {
    if frame.kind != Kind::Hello || frame.body.len() != 10 {
        return Err(WireError::Malformed("not a hello"));
    }
    let mut body = frame.body.clone();
    let version = body.get_u16();
    if version != PROTOCOL_VERSION {
        return Err(WireError::Malformed("another protocol version"));
    }
    Ok(body.get_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_ones_are_refused() {
        let mut out = BytesMut::new();
        Frame::with_id(Kind::Request, 7, b"{}").encode(&mut out);
        hello(3).encode(&mut out);
        let mut reader = &out[..];
        let frame = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!(frame.kind, Kind::Request);
        let (id, rest) = frame.split_id().unwrap();
        assert_eq!((id, &rest[..]), (7, &b"{}"[..]));
        let frame = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!(parse_hello(&frame).unwrap(), 3);
        assert!(read_frame(&mut reader).await.unwrap().is_none());

        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(
            read_frame(&mut &huge[..]).await,
            Err(WireError::TooLarge(_))
        ));
        let unknown = [0, 0, 0, 1, 99];
        assert!(matches!(
            read_frame(&mut &unknown[..]).await,
            Err(WireError::UnknownKind(99))
        ));
        let cut = [0, 0, 0, 9, 2, 1];
        assert!(read_frame(&mut &cut[..]).await.is_err());
    }
}
