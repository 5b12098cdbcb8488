//! The cluster's state machine: see [`ClusterState`].

use serde::{Deserialize, Serialize};

/// The replicated metadata (filled in by the state machine's implementation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {}
