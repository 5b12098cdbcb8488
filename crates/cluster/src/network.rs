//! openraft's network: its RPCs over the [`Peer`] links of a [`Peers`] registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::peer::{AddrMap, FrameHandler, Peer, PeerError, lock};
use crate::rpc::{RpcRequest, RpcResponse};
use crate::transport::Transport;
use crate::types::{NodeId, TypeConfig};

/// The links this node dials, one per peer, shared by openraft's replication, the proposer
/// and the data plane.
pub struct Peers {
    local: NodeId,
    peers: Mutex<HashMap<NodeId, Arc<Peer>>>,
    on_frame: Option<FrameHandler>,
    addr_map: Option<AddrMap>,
    transport: Transport,
}

impl Peers {
    pub fn new(
        local: NodeId,
        on_frame: Option<FrameHandler>,
        addr_map: Option<AddrMap>,
        transport: Transport,
    ) -> Peers {
        Peers {
            local,
            peers: Mutex::new(HashMap::new()),
            on_frame,
            addr_map,
            transport,
        }
    }

    /// The link to `node` at `addr` (the address is updated if it changed).
    pub fn get(&self, node: NodeId, addr: &str) -> Arc<Peer> {
        let mut peers = lock(&self.peers);
        let peer = peers.entry(node).or_insert_with(|| {
            Arc::new(Peer::new(
                self.local,
                node,
                addr.to_owned(),
                self.on_frame.clone(),
                self.addr_map.clone(),
                self.transport.clone(),
            ))
        });
        peer.set_addr(addr);
        peer.clone()
    }

    /// The link to `node`, if one was made.
    pub fn existing(&self, node: NodeId) -> Option<Arc<Peer>> {
        lock(&self.peers).get(&node).cloned()
    }

    /// A link to an address whose node is not known yet (a seed): not kept.
    pub fn probe_link(&self, addr: &str) -> Peer {
        Peer::new(
            self.local,
            0,
            addr.to_owned(),
            None,
            self.addr_map.clone(),
            self.transport.clone(),
        )
    }

    /// Forgets a node's link (it left).
    pub fn remove(&self, node: NodeId) {
        lock(&self.peers).remove(&node);
    }
}

/// The factory openraft asks for a client per target.
#[derive(Clone)]
pub struct Network {
    pub peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Client;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Client {
        Client {
            local: self.peers.local,
            target,
            peer: self.peers.get(target, &node.addr),
        }
    }
}

/// openraft's client for one target.
pub struct Client {
    local: NodeId,
    target: NodeId,
    peer: Arc<Peer>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl Client {
    async fn exchange<E: std::error::Error>(
        &self,
        request: RpcRequest,
        option: &RPCOption,
        action: openraft::RPCTypes,
    ) -> Result<RpcResponse, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        let ttl = option.hard_ttl();
        self.peer
            .call(&request, ttl)
            .await
            .map_err(|error| self.rpc_error(error, ttl, action))
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        error: PeerError,
        ttl: Duration,
        action: openraft::RPCTypes,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        match error {
            PeerError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&error)),
            PeerError::Timeout(_) => RPCError::Timeout(Timeout {
                action,
                id: self.local,
                target: self.target,
                timeout: ttl,
            }),
            PeerError::Closed(_) | PeerError::Protocol { .. } => {
                RPCError::Network(NetworkError::new(&error))
            }
        }
    }

    fn unexpected<E: std::error::Error>(
        &self,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        let error = PeerError::Protocol {
            node: self.target,
            error: "answer of another kind".into(),
        };
        RPCError::Network(NetworkError::new(&error))
    }

    // openraft's own error type, as its trait wants it returned.
    #[allow(clippy::result_large_err)]
    fn remote<T, E: std::error::Error>(
        &self,
        answer: Result<T, RaftError<NodeId, E>>,
    ) -> Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        answer.map_err(|error| RPCError::RemoteError(RemoteError::new(self.target, error)))
    }
}

impl RaftNetwork<TypeConfig> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        match self
            .exchange(
                RpcRequest::AppendEntries(rpc),
                &option,
                openraft::RPCTypes::AppendEntries,
            )
            .await?
        {
            RpcResponse::AppendEntries(answer) => self.remote(answer),
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self
            .exchange(
                RpcRequest::InstallSnapshot(rpc),
                &option,
                openraft::RPCTypes::InstallSnapshot,
            )
            .await?
        {
            RpcResponse::InstallSnapshot(answer) => self.remote(answer),
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self
            .exchange(RpcRequest::Vote(rpc), &option, openraft::RPCTypes::Vote)
            .await?
        {
            RpcResponse::Vote(answer) => self.remote(answer),
            _ => Err(self.unexpected()),
        }
    }
}
