//! The previous owner's side of closing the move window (see docs/architecture.md, "A
//! cluster: closing the move window"): the flush before a session is exported, and, when a
//! node did not answer it, the export with a forwarding address (see `forwards`), asked
//! again in the background; and the hand-over's answer, which tells the claimer whether late
//! copies may follow.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_broker::{Broker, SessionTransfer};
use tern_cluster::link::DataPlane;
use tern_cluster::{ClusterNode, NodeId};

use super::forwards::MOVED_FOR;
use super::hook::Glue;

/// How often a node that did not answer a flush is asked again (see [`export_forwarding`]).
const FLUSH_AGAIN: Duration = Duration::from_secs(1);

/// The previous owner's flush before it exports a session (closing the move window): waits
/// (up to `wait` in all) until this node's route table is at `index` (from which the
/// claimer's shell gets every copy) and its local publishes planned with older tables have
/// placed their copies, then until every other node has done the same and everything its
/// outbox held for this node then has been delivered here. What was routed with an older
/// table, which sent the session's messages here only, is then in the session. A node that
/// does not answer in time is passed over and named in the result (its late copies find no
/// session here: see [`export_forwarding`]).
pub async fn flush(
    glue: &super::hook::Glue,
    broker: &Arc<Broker>,
    index: u64,
    wait: Duration,
) -> Flushed {
    let deadline = tokio::time::Instant::now() + wait;
    let table_late = !glue.table_at(index, deadline).await;
    if table_late {
        tracing::warn!(index, "flush: the shell's routes not applied here in time");
    }
    barrier(broker).await;
    let (Some(claimer), Some(plane)) = (glue.claimer.get(), glue.plane.get()) else {
        return Flushed {
            table_late: true,
            unanswered: BTreeSet::new(),
        };
    };
    let node = &claimer.node;
    let me = glue.node_id;
    let peers: Vec<NodeId> = node
        .state()
        .nodes()
        .map(|(id, _)| id)
        .filter(|id| *id != me)
        .collect();
    let mut flushes = tokio::task::JoinSet::new();
    // Each node counts as not answered until its task says otherwise.
    let mut unanswered: BTreeSet<NodeId> = peers.iter().copied().collect();
    for peer in peers {
        let (node, plane) = (node.clone(), plane.clone());
        flushes.spawn(async move {
            let flushed = flush_peer(&node, &plane, peer, index, deadline).await;
            (peer, flushed)
        });
    }
    while let Some(done) = flushes.join_next().await {
        match done {
            Ok((peer, true)) => {
                unanswered.remove(&peer);
            }
            Ok((_, false)) => {}
            Err(error) => tracing::warn!(%error, "flush task failed"),
        }
    }
    Flushed {
        table_late,
        unanswered,
    }
}

/// How a [`flush`] went.
pub struct Flushed {
    /// This node's table was not at the index in time.
    pub table_late: bool,
    /// The nodes that did not answer, or whose outbox was not delivered, in time.
    pub unanswered: BTreeSet<NodeId>,
}

/// One node's part of a [`flush`]: it answers once its table is at `index` and its older
/// publishes placed their copies, and what its outbox held for this node then is delivered
/// here (by `deadline`).
async fn flush_peer(
    node: &ClusterNode,
    plane: &DataPlane,
    peer: NodeId,
    index: u64,
    deadline: tokio::time::Instant,
) -> bool {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    match node.request_flush(peer, index, left).await {
        Ok(Some((run, seq))) => {
            let delivered = plane.wait_delivered(peer, run, seq, deadline).await;
            if !delivered {
                tracing::warn!(peer, "flush: the peer's outbox not delivered in time");
            }
            delivered
        }
        Ok(None) => true,
        Err(refusal) => {
            tracing::warn!(peer, %refusal, "flush: no answer");
            false
        }
    }
}

/// `Broker::publish_barrier`, off the runtime's threads (it waits for the publishes under
/// way).
pub async fn barrier(broker: &Arc<Broker>) {
    let broker = broker.clone();
    if let Err(error) = tokio::task::spawn_blocking(move || broker.publish_barrier()).await {
        tracing::warn!(%error, "publish barrier failed");
    }
}

/// Exports the session of `client_id` (claimed with `epoch`, its routes in every table from
/// `index` on) after a flush that `unanswered` did not answer, keeping a forwarding address
/// for it: the late copies of those nodes go on to the new owner (see `forwards`). The
/// export and the address are made while no message from another node is delivered here, so
/// a copy is either in the export or finds the address. Those nodes are asked for a flush
/// again once a second, until each has answered or left the cluster (the address ends
/// then), for [`MOVED_FOR`] at most. The export, and whether an address is kept.
pub fn export_forwarding(
    glue: &Arc<Glue>,
    broker: &Broker,
    client_id: &str,
    epoch: u64,
    index: u64,
    unanswered: BTreeSet<NodeId>,
    wait: Duration,
) -> (Option<SessionTransfer>, bool) {
    let owner = glue.claimer.get().and_then(|claimer| {
        let state = claimer.node.state();
        match state.owner(client_id) {
            Some((Some(to), current)) if current == epoch && to != glue.node_id => Some(to),
            _ => None,
        }
    });
    let (Some(to), Some(plane)) = (owner, glue.plane.get()) else {
        return (broker.export_session(client_id, Instant::now()), false);
    };
    let (transfer, key) = plane.without_deliveries(|| {
        let transfer = broker.export_session(client_id, Instant::now());
        let key = transfer.as_ref().and_then(|transfer| {
            let filters = transfer
                .subscriptions
                .iter()
                .map(|(filter, _)| filter.as_str());
            glue.forwards.add(client_id, to, index, unanswered, filters)
        });
        (transfer, key)
    });
    let Some(key) = key else {
        if transfer.is_some() {
            tracing::warn!(client_id, "moved session: no forwarding address kept");
        }
        return (transfer, false);
    };
    tracing::info!(
        client_id,
        node = to,
        "moved session: a forwarding address kept"
    );
    let glue = Arc::downgrade(glue);
    let client_id = client_id.to_owned();
    tokio::spawn(async move {
        let until = tokio::time::Instant::now() + MOVED_FOR;
        loop {
            tokio::time::sleep(FLUSH_AGAIN).await;
            let Some(glue) = glue.upgrade() else {
                return;
            };
            let Some(waiting) = glue.forwards.waiting(&client_id, key) else {
                return;
            };
            if tokio::time::Instant::now() >= until {
                glue.forwards.remove(&client_id, key);
                tracing::warn!(
                    client_id,
                    ?waiting,
                    "moved session: forwarding address expired"
                );
                return;
            }
            let (Some(claimer), Some(plane)) = (glue.claimer.get(), glue.plane.get()) else {
                return;
            };
            let (node, plane) = (claimer.node.clone(), plane.clone());
            for peer in waiting {
                let member = node.state().node(peer).is_some();
                let deadline = tokio::time::Instant::now() + wait;
                if !member || flush_peer(&node, &plane, peer, index, deadline).await {
                    glue.forwards.flushed(&client_id, key, peer);
                }
            }
            if glue.forwards.waiting(&client_id, key).is_none() {
                tracing::info!(
                    client_id,
                    "moved session: every node flushed, address ended"
                );
                return;
            }
        }
    });
    (transfer, true)
}

/// A hand-over's answer: a flags byte (bit 0: late copies of the session's messages may
/// follow, see `forwards`), then the encoded session.
pub fn handed_over(late_copies: bool, session: &[u8]) -> Vec<u8> {
    let mut answer = Vec::with_capacity(1 + session.len());
    answer.push(u8::from(late_copies));
    answer.extend_from_slice(session);
    answer
}

/// What [`handed_over`] wrote: whether late copies may follow, and the encoded session.
pub fn read_handed_over(answer: &[u8]) -> Option<(bool, &[u8])> {
    let (&flags, session) = answer.split_first()?;
    (flags <= 1).then_some((flags == 1, session))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_over_answer_says_whether_late_copies_follow() {
        for late in [false, true] {
            let answer = handed_over(late, b"session");
            assert_eq!(read_handed_over(&answer), Some((late, &b"session"[..])));
        }
        assert_eq!(read_handed_over(&[]), None);
        assert_eq!(read_handed_over(&[7, 1]), None, "unknown flags");
    }
}
