//! The admin side of Tern: the HTTP API (`/api/v1/...`), `/metrics` and the dashboard, served
//! on a listener of their own. This crate knows nothing of the broker: it speaks to an
//! [`AdminBackend`] the server implements, with the plain data types of [`api`], so the HTTP
//! layer is tested against a fake backend and the server against the trait.

// Requests come from the network: never panic on them.
#![warn(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

pub mod api;
mod bounded;
mod dashboard;
mod error;
mod handlers;
mod openapi;
mod router;
#[cfg(feature = "testing")]
pub mod testing;
pub mod token;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use api::{
    AdminBackend, AdminError, BridgeInfo, BridgeList, ClientDetail, ClientSummary,
    ClusterForwarding, ClusterInfo, ClusterJoinRequest, ClusterLeaveRequest, ClusterNodeInfo,
    NOT_CLUSTERED, Page, PublishRequest, Readiness, ReloadReport, RetainedMessage, RetainedSummary,
    SessionSummary, Stats, SubscriptionInfo, SubscriptionQuery,
};
pub use handlers::{Listing, TracingRequest};
pub use openapi::OPENAPI_JSON;
pub use router::{ROUTES, router};
pub use token::{Token, TokenError};

/// How the admin listener serves: the bearer token it asks for, whether `/metrics` asks for
/// it too, and the bounds on its connections.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    pub token: Token,
    /// `[admin] metrics_auth`: `/metrics` needs the token (default: it does not, so a
    /// Prometheus without credentials can scrape a loopback listener).
    pub metrics_auth: bool,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// A connection with no byte in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// A request must arrive whole (head and body) within this time of its first byte, and
    /// its response must be taken by the peer within this time of its first byte: a peer
    /// that trickles bytes cannot keep a connection (and one of the `max_connections`) for
    /// longer.
    pub request_timeout: Duration,
    /// The largest request body taken (413 above it); `POST /api/v1/publish` carries a
    /// payload, base64 inflating it by 4/3.
    pub max_body_bytes: usize,
    /// `/metrics` without the token answers only requests whose `Host` is an IP address or
    /// `localhost` (403 otherwise): a web page whose name an attacker rebinds to 127.0.0.1
    /// (DNS rebinding) cannot read it from the operator's browser. [`serve`] turns it on for a
    /// loopback listener; the routes that need the token do not need it (the page has none).
    pub local_hosts_only: bool,
}

impl AdminOptions {
    pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

    /// The body limit for a broker whose `max_packet_size` is `bytes`: a payload that large,
    /// in base64, with room for the other fields.
    pub fn body_limit_for_packet_size(bytes: u32) -> usize {
        (bytes as usize).saturating_mul(4) / 3 + 64 * 1024
    }

    /// Options with `token`, `/metrics` open, and the default bounds.
    pub fn new(token: Token) -> AdminOptions {
        AdminOptions {
            token,
            metrics_auth: false,
            max_connections: AdminOptions::DEFAULT_MAX_CONNECTIONS,
            idle_timeout: AdminOptions::DEFAULT_IDLE_TIMEOUT,
            request_timeout: AdminOptions::DEFAULT_REQUEST_TIMEOUT,
            max_body_bytes: AdminOptions::DEFAULT_MAX_BODY_BYTES,
            local_hosts_only: false,
        }
    }
}

/// Serves the admin API, `/metrics` and the dashboard on `listener` until `shutdown`
/// completes; requests in progress then finish, idle connections close.
pub async fn serve(
    listener: tokio::net::TcpListener,
    backend: Arc<dyn AdminBackend>,
    options: AdminOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut options = options;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, metrics_auth = options.metrics_auth, "admin API, /metrics and the dashboard");
        options.local_hosts_only |= addr.ip().is_loopback();
    }
    let listener = bounded::BoundedListener::new(
        listener,
        options.max_connections,
        options.idle_timeout,
        options.request_timeout,
    );
    let service =
        router(backend, options).into_make_service_with_connect_info::<handlers::PeerAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(shutdown)
        .await
}
