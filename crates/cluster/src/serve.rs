//! The side of the links other nodes dial: accepts them on `[cluster] bind`, answers their
//! requests and hands their data frames on.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::rpc::{RpcRequest, RpcResponse};
use crate::transport::Transport;
use crate::types::NodeId;
use crate::wire::{self, Frame, Kind};

/// How long a dialling node has to finish its TLS handshake, and then to say hello.
const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A boxed answer to a request.
pub type Answer = Pin<Box<dyn Future<Output = RpcResponse> + Send>>;

/// Who handles what arrives on an accepted link.
pub trait Handler: Send + Sync + 'static {
    /// Answers a request from node `from`.
    fn rpc(&self, from: NodeId, request: RpcRequest) -> Answer;
    /// Takes a data frame from node `from`; `reply` sends frames back on the same link (its
    /// acknowledgements).
    fn data(&self, from: NodeId, frame: Frame, reply: &mpsc::Sender<Frame>);
}

/// Accepts links until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    handler: Arc<dyn Handler>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let handler = handler.clone();
                let stop = stop.clone();
                let transport = transport.clone();
                tokio::spawn(async move {
                    let set_up =
                        tokio::time::timeout(HELLO_TIMEOUT, transport.accept(stream, peer)).await;
                    let (reader, writer) = match set_up {
                        Ok(Ok(halves)) => halves,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "cluster link refused");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "cluster link: no TLS handshake in time");
                            return;
                        }
                    };
                    let plain = !transport.is_tls();
                    if let Err(error) = link(reader, writer, handler, stop).await {
                        if let wire::WireError::TooLarge(announced) = error
                            && plain
                            && crate::transport::looks_like_tls(announced)
                        {
                            crate::transport::tls_on_plain_port(peer);
                            return;
                        }
                        tracing::debug!(%peer, %error, "cluster link ended");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "cluster listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn link(
    reader: crate::transport::LinkReader,
    writer: crate::transport::LinkWriter,
    handler: Arc<dyn Handler>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), wire::WireError> {
    // Buffered: a frame's header and body in one read, many frames per read under load.
    let mut reader = tokio::io::BufReader::with_capacity(64 << 10, reader);
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, wire::read_frame(&mut reader)).await {
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(error)) => return Err(error),
        Err(_) => return Err(wire::WireError::Malformed("no hello in time")),
    };
    let from = wire::parse_hello(&hello)?;
    let (tx, rx) = mpsc::channel::<Frame>(1024);
    let writing = tokio::spawn(wire::write_loop(
        writer,
        rx,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
    ));
    let result = loop {
        let frame = tokio::select! {
            frame = wire::read_frame(&mut reader) => frame,
            _ = stop.changed() => break Ok(()),
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        };
        match frame.kind {
            Kind::Request => {
                let (id, body) = match frame.split_id() {
                    Ok(split) => split,
                    Err(error) => break Err(error),
                };
                let request: RpcRequest = match serde_json::from_slice(&body) {
                    Ok(request) => request,
                    Err(_) => break Err(wire::WireError::Malformed("request")),
                };
                let answer = handler.rpc(from, request);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let response = answer.await;
                    match serde_json::to_vec(&response) {
                        Ok(body) => {
                            let _ = tx.send(Frame::with_id(Kind::Response, id, &body)).await;
                        }
                        Err(error) => tracing::warn!(%error, "cluster answer not serializable"),
                    }
                });
            }
            Kind::Data | Kind::DataAck => handler.data(from, frame, &tx),
            Kind::Hello | Kind::Response => {
                break Err(wire::WireError::Malformed("unexpected frame"));
            }
        }
    };
    // The writer ends once the answers still being worked out are sent (they hold `tx`).
    drop(tx);
    drop(writing);
    result
}
