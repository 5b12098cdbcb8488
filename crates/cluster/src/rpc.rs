//! The requests nodes send each other over a link, and their answers (JSON in
//! [`crate::wire::Kind::Request`]/[`crate::wire::Kind::Response`] frames).

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::command::{Request, Response};
use crate::types::{NodeId, TypeConfig};

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Commands for the leader to propose (sent by a follower to the leader it knows).
    Propose(Request),
    /// Who are you, and are you part of a cluster? (Forming and joining.)
    Probe,
    /// A node asks to join: the receiver adds it if it leads, or names the leader.
    Join {
        node: NodeId,
        cluster_addr: String,
        mqtt_addrs: Vec<String>,
    },
    /// Remove a node from the cluster (it leaves): handled by the leader.
    Leave {
        node: NodeId,
    },
    /// The sender claimed `client_id` with `epoch` (committed): the receiver, its previous
    /// owner, closes the client's connection and hands the session over.
    HandOver {
        client_id: String,
        epoch: u64,
        /// The log index from which the route table sends the session's messages to the
        /// sender too (its shell's routes are committed): the receiver flushes what was
        /// routed before it into the session before exporting it. `None`: no shell (no
        /// flush).
        routes_at: Option<u64>,
    },
    /// The sender claimed `client_id` with `epoch` (committed): the receiver, its previous
    /// owner, closes the client's connection, keeping the session offline for the
    /// [`RpcRequest::HandOver`] that follows (the sender makes its shell in between).
    Close {
        client_id: String,
        epoch: u64,
    },
    /// Once the receiver has applied log index `index`, every message it routed with an
    /// older route table to the sender is in its outbox: it answers with the run and
    /// sequence number of the last message there for the sender (`None`: all acknowledged).
    Flush {
        index: u64,
    },
    /// Does the receiver (the leader) still lead a quorum? (A follower's lease.)
    LeaseCheck,
    /// "Return the queue": the sender held a copy of the session of `client_id`, which the
    /// receiver owns with `epoch`; `session` is what it queued, encoded by the server, for
    /// the receiver to merge into its session.
    Return {
        client_id: String,
        epoch: u64,
        session: Vec<u8>,
    },
}

/// What a node answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Proposed(Result<Response, Refusal>),
    Probe(ProbeAnswer),
    Joined(Result<(), Refusal>),
    Left(Result<(), Refusal>),
    /// The session, encoded by the server (none: the client had no session there).
    HandedOver(Result<Option<Vec<u8>>, Refusal>),
    LeaseConfirmed(bool),
    /// The returned messages are merged and durable (or the refusal: the sender keeps them).
    Returned(Result<(), Refusal>),
    /// The connection closed (or there was none).
    Closed(Result<(), Refusal>),
    /// Flushed: the answering node's run and the last message in its outbox to the asker.
    Flushed(Result<FlushAnswer, Refusal>),
}

/// A node's answer to a flush ([`RpcRequest::Flush`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushAnswer {
    /// The answering node's data-plane run: its messages planned since it started carry it
    /// (a later run's were not covered by this flush).
    pub run: u64,
    /// The last message in its outbox to the asker, as (run, sequence), if any.
    pub last: Option<(u64, u64)>,
}

/// What a probed node says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeAnswer {
    pub node: NodeId,
    /// Whether it is a member of an initialized cluster.
    pub initialized: bool,
    /// The leader it knows, with its cluster address.
    pub leader: Option<(NodeId, String)>,
}

/// Why a request that needs the leader was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// This node does not lead; the leader it knows, if any (id, cluster address).
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<(NodeId, String)>),
    /// The cluster could not commit it (no quorum, shutting down): retry later.
    #[error("not committed: {0}")]
    Unavailable(String),
    /// Refused for good (e.g. leaving would leave no voter).
    #[error("refused: {0}")]
    Refused(String),
}
