//! The admin listener's life in the server: bound with the MQTT listeners (so a busy port
//! fails the start), its token read or generated, then served by `tern_admin::serve` on the
//! server's runtime until shutdown, over the server's admin backend (`admin_backend.rs`) or
//! the one set with [`crate::Server::set_admin_backend`].

use std::net::SocketAddr;
use std::sync::Arc;

use tern_admin::{AdminBackend, AdminOptions, Token};
use tokio::sync::watch;

use crate::config::ServerConfig;
use crate::server::ServerError;

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
