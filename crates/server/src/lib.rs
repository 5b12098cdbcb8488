//! # tern-server
//!
//! The world around the broker core: TCP listeners, one tokio task per connection, the timers of
//! the broker, the configuration file, and shutdown.

// Data from the network must never panic the broker: no unwrap or expect outside tests.
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod admin_backend;
mod admin_config;
mod admin_listener;
mod auth;
mod auth_config;
mod auth_failures;
pub mod bridge;
pub mod cluster;
mod cluster_admin;
mod config;
mod connection;
mod descriptors;
mod file_auth;
mod file_watch;
mod http_auth;
mod jwt;
mod listener;
mod listener_config;
mod metrics;
mod proxy;
mod scram_auth;
mod server;
mod sys_topics;
mod tls;
mod tls_transport;
mod transport;
mod worker_inbox;
mod ws;

pub use admin_backend::{LogLevelReloader, set_log_level_reloader};
pub use admin_config::AdminConfig;
pub use auth::{AsyncAuthenticator, AuthFuture, DenyDeferred};
pub use auth_config::{AuthConfig, DenyPublish};
pub use auth_failures::FailureLimit;
pub use config::{
    ConfigError, Durability, Limits, LogFormat, MqttOptions, Overrides, ServerConfig, StoreTuning,
};
pub use file_auth::{AuthError, AuthReload, FileAuth};
pub use http_auth::HttpConfig;
pub use jwt::{JwtAlgorithm, JwtConfig};
pub use listener_config::{
    ClientAuth, IdentityField, IpNet, ListenerConfig, ListenerKind, SniCertificate, TlsConfig,
    TlsVersion,
};
pub use scram_auth::ScramConfig;
pub use server::{
    AuthReloader, ConfigReloader, OpenConnections, Server, ServerError, check_config,
};
pub use tern_broker as broker;
pub use tern_store as store;
pub use tls::{TlsError, TlsProblem, TlsReloader};
