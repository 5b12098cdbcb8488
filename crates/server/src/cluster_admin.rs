//! The cluster as operators see it: this node's view ([`tern_cluster::ClusterStatus`] with
//! the data plane's figures) in the admin API's shape, which `/metrics` and `$SYS` read too,
//! and joining or leaving through the node. See docs/configuration.md (`[cluster]`).

use std::sync::atomic::Ordering;

use tern_admin::{AdminError, ClusterForwarding, ClusterInfo, ClusterNodeInfo};
use tern_cluster::rpc::Refusal;

use crate::cluster::Cluster;

/// This node's view of its cluster, now.
pub(crate) fn info(cluster: &Cluster) -> ClusterInfo {
    let status = cluster.status();
    let plane = cluster.plane();
    let nodes: Vec<ClusterNodeInfo> = status
        .nodes
        .iter()
        .map(|node| ClusterNodeInfo {
            id: node.id,
            cluster_addr: node.cluster_addr.clone(),
            mqtt_addrs: node.mqtt_addrs.clone(),
            voter: node.voter,
            linked: node.linked,
            pending: plane.pending(node.id) as u64,
        })
        .collect();
    let counters = &plane.counters;
    let forwarding = ClusterForwarding {
        sent: counters.sent.load(Ordering::Relaxed),
        resent: counters.resent.load(Ordering::Relaxed),
        received: counters.received.load(Ordering::Relaxed),
        duplicates: counters.duplicates.load(Ordering::Relaxed),
        dropped: cluster.not_forwarded(),
        pending: nodes.iter().map(|node| node.pending).sum(),
        late: cluster.late_copies().0,
    };
    ClusterInfo {
        node_id: status.node_id,
        role: status.role,
        leader: status.leader,
        term: status.term,
        last_log_index: status.last_log_index,
        last_applied: status.last_applied,
        voters: status.voters,
        learners: status.learners,
        nodes,
        millis_since_quorum_ack: status.millis_since_quorum_ack,
        sessions: status.sessions as u64,
        routes: status.routes as u64,
        retained: status.retained as u64,
        forwarding,
    }
}

/// This node joins the cluster of the node at `addr`: `Conflict` when it is a member
/// already (a node started without seeds formed a cluster of one), `Unavailable` when no
/// leader took it in.
pub(crate) async fn join(cluster: &Cluster, addr: &str) -> Result<(), AdminError> {
    match cluster.node().join_via(addr).await {
        Ok(()) => {
            tracing::info!(%addr, "cluster: joined through the admin API");
            Ok(())
        }
        Err(Refusal::Refused(reason)) => Err(AdminError::Conflict(reason)),
        Err(refusal) => Err(AdminError::Unavailable(format!(
            "joining through {addr}: {refusal}"
        ))),
    }
}

/// Removes `node` (default: this one) from the cluster through its leader; the id removed.
/// `NotFound` when this node knows no such member, `Conflict` when the leader refuses (the
/// only voter), `Unavailable` when no leader answered.
pub(crate) async fn leave(cluster: &Cluster, node: Option<u64>) -> Result<u64, AdminError> {
    let node = node.unwrap_or_else(|| cluster.node().id());
    let known = cluster
        .status()
        .nodes
        .iter()
        .any(|member| member.id == node);
    if !known {
        return Err(AdminError::NotFound(format!(
            "node {node} is not a member of this node's cluster"
        )));
    }
    match cluster.node().remove_node(node).await {
        Ok(()) => {
            tracing::info!(node, "cluster: node removed through the admin API");
            Ok(node)
        }
        Err(Refusal::Refused(reason)) => Err(AdminError::Conflict(reason)),
        Err(refusal) => Err(AdminError::Unavailable(format!(
            "removing node {node}: {refusal}"
        ))),
    }
}
