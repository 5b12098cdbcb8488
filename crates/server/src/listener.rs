//! The listeners at run time: what each accepts (its kind and settings, shared by the workers'
//! sockets), the connection limits (the global one and the listener's own), and the steps a
//! connection goes through before MQTT (a PROXY protocol header, the TLS handshake, the
//! WebSocket upgrade), all bounded by the connect timeout.
//!
//! A plain TCP connection skips all of that: its task is the connection loop itself, so it
//! costs no more than before listeners had kinds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tern_broker::{Broker, TransportIdentity};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::connection::serve_connection;
use crate::listener_config::{ListenerConfig, ListenerKind};
use crate::server::{ConnectionCount, ConnectionGuard};
use crate::tls::TlsListener;
use crate::tls_transport::TlsTransport;
use crate::transport::TcpTransport;

/// A listener as the accept loops of every worker share it.
#[derive(Debug)]
pub(crate) struct Listener {
    /// `None` for the plain addresses of `listen`.
    pub(crate) config: Option<ListenerConfig>,
    pub(crate) kind: ListenerKind,
    pub(crate) bind: SocketAddr,
    /// What every connection of this listener is vouched for (its name), shared.
    pub(crate) identity: Option<Arc<TransportIdentity>>,
    /// Open connections of this listener, against its own `max_connections`.
    open: AtomicUsize,
    /// The TLS material of `mqtts` and `wss` listeners (loaded by `prepare`).
    pub(crate) tls: Option<TlsListener>,
}

impl Listener {
    /// A plain TCP listener of `listen`.
    pub(crate) fn plain(bind: SocketAddr) -> Listener {
        Listener {
            config: None,
            kind: ListenerKind::Mqtt,
            bind,
            identity: None,
            open: AtomicUsize::new(0),
            tls: None,
        }
    }

    /// A listener of `[[listeners]]`.
    pub(crate) fn configured(config: ListenerConfig) -> Listener {
        let identity = TransportIdentity {
            listener: Some(Arc::from(config.name.as_str())),
            ..TransportIdentity::default()
        };
        let tls = match (&config.tls, config.kind.uses_tls()) {
            (Some(tls), true) => Some(TlsListener::new(&config.name, tls.clone(), config.kind)),
            _ => None,
        };
        Listener {
            kind: config.kind,
            bind: config.bind,
            identity: Some(Arc::new(identity)),
            open: AtomicUsize::new(0),
            tls,
            config: Some(config),
        }
    }

    /// Loads what the listener needs before it can accept (certificates and keys): an error
    /// names the listener and the file.
    pub(crate) fn prepare(&self) -> Result<(), crate::server::ServerError> {
        if let Some(tls) = &self.tls {
            tls.load()?;
        }
        Ok(())
    }

    /// The listener's name for logs: its configured name, or its address.
    pub(crate) fn label(&self) -> String {
        match &self.config {
            Some(config) => config.name.clone(),
            None => self.bind.to_string(),
        }
    }

    /// What it says in the log when it starts listening.
    pub(crate) fn describe(&self) -> &'static str {
        match self.kind {
            ListenerKind::Mqtt => "listening for MQTT over TCP",
            ListenerKind::Mqtts => "listening for MQTT over TLS",
            ListenerKind::Ws => "listening for MQTT over WebSockets",
            ListenerKind::Wss => "listening for MQTT over WebSockets over TLS",
        }
    }

    fn max_connections(&self) -> Option<usize> {
        self.config
            .as_ref()
            .and_then(|config| config.max_connections)
    }

    /// Whether connections go straight to MQTT (no PROXY header, TLS or WebSocket first).
    fn is_plain(&self) -> bool {
        self.kind == ListenerKind::Mqtt && !self.config.as_ref().is_some_and(|c| c.proxy_protocol)
    }
}

/// Counts a connection against its listener's own limit while it lives.
pub(crate) struct ListenerSlot(Arc<Listener>);

impl Drop for ListenerSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What an accept loop needs besides its socket.
#[derive(Clone)]
pub(crate) struct AcceptContext {
    pub(crate) broker: Arc<Broker>,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) count: Arc<ConnectionCount>,
    pub(crate) max_connections: usize,
}

/// Accepts connections on one worker's socket of `listener` until the server stops.
pub(crate) async fn accept_loop(
    socket: TcpListener,
    listener: Arc<Listener>,
    mut context: AcceptContext,
) {
    loop {
        let accepted = tokio::select! {
            _ = context.stop.changed() => return,
            accepted = socket.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!(%error, listener = %listener.label(), "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if context.count.open() >= context.max_connections {
            tracing::warn!(%peer, max_connections = context.max_connections, "connection refused: limit reached");
            drop(stream);
            continue;
        }
        let slot = match listener.max_connections() {
            Some(limit) => {
                if listener.open.fetch_add(1, Ordering::AcqRel) >= limit {
                    listener.open.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!(%peer, listener = %listener.label(), max_connections = limit, "connection refused: the listener's limit is reached");
                    drop(stream);
                    continue;
                }
                Some(ListenerSlot(listener.clone()))
            }
            None => None,
        };
        let guard = ConnectionGuard::new(context.count.clone(), slot);
        let _ = stream.set_nodelay(true);
        if listener.is_plain() {
            // Spawned directly, not inside a wrapper future: every byte of the task is paid
            // once per connection. The connection's state is made here, at the accept, and the
            // connect timeout counts from now.
            tokio::spawn(serve_connection(
                TcpTransport::new(stream),
                peer,
                listener.identity.clone(),
                context.broker.clone(),
                guard,
                tokio::time::Instant::now(),
            ));
        } else {
            // The connect timeout counts from here, whatever comes before CONNECT.
            let accepted_at = tokio::time::Instant::now();
            tokio::spawn(establish(
                stream,
                peer,
                listener.clone(),
                context.broker.clone(),
                guard,
                accepted_at,
            ));
        }
    }
}

/// The steps before MQTT (PROXY header, TLS, WebSocket upgrade), bounded by the connect
/// timeout counted from `accepted_at`; then the connection loop, whose CONNECT must come within
/// what is left of the same timeout. A client that stalls or sends garbage in any of them is
/// closed when the timeout runs out, and costs nothing but its own task meanwhile.
async fn establish(
    mut stream: TcpStream,
    mut peer: SocketAddr,
    listener: Arc<Listener>,
    broker: Arc<Broker>,
    guard: ConnectionGuard,
    accepted_at: tokio::time::Instant,
) {
    let Some(config) = listener.config.as_ref() else {
        return;
    };
    let deadline = accepted_at + broker.config().connect_timeout;
    let steps = async {
        if config.proxy_protocol {
            peer = crate::proxy::read_header(&mut stream, peer, &config.trusted_proxies).await?;
        }
        match listener.kind {
            ListenerKind::Mqtt => {
                Ok::<_, std::io::Error>(Established::Tcp(TcpTransport::new(stream)))
            }
            // WebSockets: the upgrade; the client's address may come from X-Forwarded-For.
            ListenerKind::Ws => {
                let max_packet_size = broker.config().max_packet_size;
                // Boxed: the upgrade's state is needed only until it is done, and would
                // otherwise stay in the task of every connection of this listener.
                let (transport, client) =
                    Box::pin(crate::ws::accept(stream, peer, config, max_packet_size)).await?;
                peer = client;
                Ok(Established::Ws(transport))
            }
            ListenerKind::Mqtts => {
                let (transport, identity) = crate::tls::accept_tls(&listener, stream).await?;
                Ok(Established::Tls(transport, identity))
            }
            // The TLS handshake, then the WebSocket upgrade inside it.
            ListenerKind::Wss => {
                let (tls, identity) = crate::tls::accept_tls(&listener, stream).await?;
                let max_packet_size = broker.config().max_packet_size;
                let (transport, client) =
                    Box::pin(crate::ws::accept(tls, peer, config, max_packet_size)).await?;
                peer = client;
                Ok(Established::Wss(transport, identity))
            }
        }
    };
    let established = match tokio::time::timeout_at(deadline, steps).await {
        Ok(Ok(established)) => established,
        Ok(Err(error)) => {
            tracing::debug!(%peer, listener = %listener.label(), %error, "connection closed before MQTT");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, listener = %listener.label(), "connection closed: not established within the connect timeout");
            return;
        }
    };
    let identity = listener.identity.clone();
    match established {
        Established::Tcp(transport) => {
            serve_connection(transport, peer, identity, broker, guard, accepted_at).await;
        }
        Established::Ws(transport) => {
            serve_connection(transport, peer, identity, broker, guard, accepted_at).await;
        }
        Established::Tls(transport, identity) => {
            // A task of its own: this one is sized for the steps before MQTT (the handshake's
            // state, the timeout) and ends here; an idle connection pays only for the loop.
            tokio::spawn(serve_connection(
                transport,
                peer,
                identity,
                broker,
                guard,
                accepted_at,
            ));
        }
        Established::Wss(transport, identity) => {
            tokio::spawn(serve_connection(
                transport,
                peer,
                identity,
                broker,
                guard,
                accepted_at,
            ));
        }
    }
}

/// A connection ready for MQTT, by transport.
enum Established {
    Tcp(TcpTransport),
    /// The WebSocket state is boxed inside (`WsTransport` is one pointer).
    Ws(crate::ws::WsTransport<TcpStream>),
    /// With what the transport vouches for (the listener's, or the client certificate's).
    Tls(TlsTransport, Option<Arc<TransportIdentity>>),
    /// WebSockets inside TLS, with the TLS side's identity.
    Wss(
        crate::ws::WsTransport<TlsTransport>,
        Option<Arc<TransportIdentity>>,
    ),
}
