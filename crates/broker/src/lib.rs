//! # tern-broker
//!
//! The MQTT broker as logic, with no sockets and no runtime: sessions, the subscription and
//! retained indexes, the QoS flows, wills, expiry and limits. The server drives it:
//!
//! - one [`Broker`] holds what all connections share;
//! - one [`Connection`] per network connection takes decoded packets and the time
//!   ([`Connection::handle_packet`], [`Connection::handle_timeout`]) and gives back the bytes to
//!   send ([`Connection::poll_transmit`]) and its next deadline ([`Connection::poll_timeout`]);
//! - a [`Wakeup`] lets the core tell a connection's task that messages wait for it.

// Data from the network must never panic the broker: no unwrap or expect outside tests.
#![warn(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

mod admin;
mod broker;
mod cluster_claim;
mod cluster_hook;
mod cluster_lease;
mod cluster_transfer;
mod config;
mod connect;
mod connection;
mod hooks;
mod inbound;
mod message;
mod metrics;
mod outbound;
pub mod persist;
mod retained;
mod retained_stream;
mod session;
pub mod subscriptions;
mod types;
mod unstored;
mod worker_post;

pub use admin::{
    ClientConnection, QUEUE_DEPTH_BUCKETS, RuntimeLimits, SessionReport, SessionTotals,
};
pub use broker::{Broker, RecheckSummary};
pub use cluster_claim::{ClaimCompletion, ClaimDecision, ClaimGrant, ClaimId, ClaimRequest};
pub use cluster_hook::{ClusterHook, ClusterPlan, GroupRoute, RemoteCopy, RouteTicket, route_of};
pub use cluster_transfer::{
    PreviousOwner, SessionTransfer, TransferError, TransferredDelivery, TransferredInflight,
};
pub use config::BrokerConfig;
pub use connection::{CloseReason, Connection, STORAGE_REFUSAL_CLOSE};
pub use hooks::{
    AllowAll, AuthCompletion, AuthDecision, AuthExchange, AuthRequest, AuthRequestId, AuthStep,
    Authenticator, Authorizer, BRIDGE_CLIENT_ID_PREFIX, BRIDGE_LISTENER_PREFIX,
    CertificateIdentity, ClientAccess, ClientInfo, Credentials, DefaultAccess,
    EnhancedAuthenticator, FilterAccess, Hooks, Principal, PrincipalAccess, TransportIdentity,
};
pub use message::{ClusterMessageId, Delivery, Message, MessageRef, SubscriptionIds};
pub use metrics::{Counter, Metrics, MetricsSnapshot};
pub use retained::RetainedIndex;
pub use session::Session;
pub use types::{ConnectionId, InflightState, Seq, SessionExpiry, SubscriptionRecord, Wakeup};
pub use worker_post::{Posted, WorkerInbox, current_worker, set_current_worker};
