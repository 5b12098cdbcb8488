//! # tern-cluster
//!
//! What makes several Tern nodes one broker: the replicated metadata and the links between
//! nodes. It knows nothing of the MQTT core or of connections; the server wires it to them.
//!
//! - [`command`]: what is proposed to the cluster ([`Command`], batched in a [`Request`]) and
//!   what applying it answered ([`Outcome`]).
//! - [`state`]: the state machine ([`ClusterState`]): nodes, the session registry with its
//!   fencing epochs, durable subscriptions, routes, shared-subscription groups and retained
//!   messages. `apply` is deterministic and does no I/O.
//! - [`log_store`]: the Raft log and vote in the cluster's own fjall database ([`LogStore`]).
//! - [`state_store`]: the state machine openraft drives ([`StateStore`]): the state in memory,
//!   its snapshots on disk, and the [`Applied`] events the server follows.
//! - [`storage`]: opening both on one directory ([`open_storage`]).
//! - [`types`]: the openraft type configuration ([`TypeConfig`]).
//!
//! The design and its reasons are in the project's `docs/architecture.md` ("A cluster").

pub mod command;
pub mod error;
pub mod log_store;
pub mod state;
pub mod state_store;
pub mod storage;
pub mod types;

pub use command::{Command, Outcome, Request, Response};
pub use error::ClusterError;
pub use log_store::LogStore;
pub use state::ClusterState;
pub use state_store::{Applied, StateHandle, StateStore};
pub use storage::open_storage;
pub use types::{NodeId, TypeConfig};
pub mod link;
pub mod network;
pub mod node;
pub mod peer;
pub mod rpc;
pub mod serve;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;
pub mod wire;

pub use node::{ClusterNode, ClusterStatus, HandOverHandler, NodeConfig, NodeError, Timing};
pub use transport::{ClusterTls, Transport};
