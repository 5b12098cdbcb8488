//! The openraft type configuration of the cluster's metadata plane.

use std::io::Cursor;

use crate::command::{Request, Response};

/// A node's identifier: `[cluster] node_id`, unique in the cluster and never reused.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Tern's Raft: entries carry a [`Request`] (a batch of commands), applying one answers a
    /// [`Response`]; members are known by their cluster address ([`openraft::BasicNode`]).
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);
