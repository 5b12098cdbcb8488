//! The admin listener's life in the server: bound with the MQTT listeners (so a busy port
//! fails the start), its token read or generated, then served by `tern_admin::serve` on the
//! server's runtime until shutdown, over the backend the server was given.
//!
//! The seam for the broker's backend: [`crate::Server::set_admin_backend`]. Until one is set,
//! [`PendingBackend`] answers with what the server knows without the core's queries (version,
//! uptime, open connections) and empty listings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tern_admin::api::BoxFuture;
use tern_admin::{
    AdminBackend, AdminError, AdminOptions, ClientDetail, ClientSummary, Page, PublishRequest,
    Readiness, ReloadReport, RetainedMessage, RetainedSummary, SessionSummary, Stats,
    SubscriptionInfo, SubscriptionQuery, Token,
};
use tokio::sync::watch;

use crate::config::ServerConfig;
use crate::server::{OpenConnections, ServerError};

/// The admin listener, bound, with its options, not yet serving.
pub(crate) struct AdminListener {
    socket: std::net::TcpListener,
    options: AdminOptions,
}

impl AdminListener {
    /// Binds `[admin] bind` and reads (or generates) the token; `None` without `bind`.
    pub(crate) fn prepare(config: &ServerConfig) -> Result<Option<AdminListener>, ServerError> {
        let Some(addr) = config.admin.bind else {
            return Ok(None);
        };
        let token = Token::load_or_generate(&config.admin.token_path(&config.data_dir))?;
        for warning in config.admin.warnings() {
            tracing::warn!("{warning}");
        }
        let failed = |source| ServerError::Bind {
            listener: "admin".to_owned(),
            addr,
            source,
        };
        let socket = std::net::TcpListener::bind(addr).map_err(failed)?;
        socket.set_nonblocking(true).map_err(failed)?;
        Ok(Some(AdminListener {
            socket,
            options: AdminOptions {
                metrics_auth: config.admin.metrics_auth,
                max_body_bytes: AdminOptions::body_limit_for_packet_size(
                    config.limits.max_packet_size,
                ),
                ..AdminOptions::new(token)
            },
        }))
    }

    /// For `tern check-config`: a token file that exists must hold a usable token (one that
    /// does not is generated at start).
    pub(crate) fn check(config: &ServerConfig) -> Result<(), ServerError> {
        if config.admin.bind.is_none() {
            return Ok(());
        }
        let path = config.admin.token_path(&config.data_dir);
        if path.exists() {
            Token::read(&path)?;
        }
        Ok(())
    }

    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// Serves on the current runtime until `stop` turns true.
    pub(crate) fn spawn(self, backend: Arc<dyn AdminBackend>, mut stop: watch::Receiver<bool>) {
        let socket = match tokio::net::TcpListener::from_std(self.socket) {
            Ok(socket) => socket,
            Err(error) => {
                tracing::error!(%error, "the admin listener cannot be served");
                return;
            }
        };
        let shutdown = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        tokio::spawn(async move {
            if let Err(error) = tern_admin::serve(socket, backend, self.options, shutdown).await {
                tracing::error!(%error, "the admin listener stopped");
            }
        });
    }
}

/// The backend the admin listener uses until the broker's own is set: version, uptime and
/// open connections; empty listings; actions refused (503).
pub struct PendingBackend {
    started: Instant,
    connections: OpenConnections,
}

impl PendingBackend {
    pub fn new(connections: OpenConnections) -> PendingBackend {
        PendingBackend {
            started: Instant::now(),
            connections,
        }
    }
}

fn not_yet() -> AdminError {
    AdminError::Unavailable("this broker does not offer it yet".to_owned())
}

impl AdminBackend for PendingBackend {
    fn stats(&self) -> Stats {
        let open = self.connections.get() as u64;
        Stats {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: self.started.elapsed().as_secs(),
            connections: open,
            sessions_connected: open,
            store_accepting: true,
            ..Stats::default()
        }
    }

    fn readiness(&self) -> Readiness {
        Readiness {
            ready: true,
            reasons: Vec::new(),
        }
    }

    fn clients(&self, _page: &Page) -> Vec<ClientSummary> {
        Vec::new()
    }

    fn client(&self, _client_id: &str) -> Option<ClientDetail> {
        None
    }

    fn kick(&self, _client_id: &str) -> bool {
        false
    }

    fn sessions(&self, _page: &Page) -> Vec<SessionSummary> {
        Vec::new()
    }

    fn delete_session(&self, _client_id: &str) -> bool {
        false
    }

    fn subscriptions(&self, _query: &SubscriptionQuery) -> Vec<SubscriptionInfo> {
        Vec::new()
    }

    fn retained(&self, _filter: &str, _page: &Page) -> Result<Vec<RetainedSummary>, AdminError> {
        Ok(Vec::new())
    }

    fn retained_message(&self, _topic: &str) -> Option<RetainedMessage> {
        None
    }

    fn delete_retained(&self, _topic: &str) -> Result<bool, AdminError> {
        Err(not_yet())
    }

    fn publish(&self, _request: PublishRequest) -> Result<(), AdminError> {
        Err(not_yet())
    }

    fn set_client_tracing(&self, _client_id: &str, _on: bool) -> bool {
        false
    }

    fn metrics_text(&self) -> String {
        format!(
            "# TYPE tern_connections gauge\ntern_connections {}\n",
            self.connections.get()
        )
    }

    fn config(&self) -> serde_json::Value {
        serde_json::Value::Object(serde_json::Map::new())
    }

    fn reload(&self) -> BoxFuture<'_, ReloadReport> {
        Box::pin(async {
            ReloadReport {
                errors: vec!["reload through the API is not offered yet: send SIGHUP".to_owned()],
                ..ReloadReport::default()
            }
        })
    }
}
