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

/// What [`export_forwarding`] did.
pub struct Exported {
    /// The session, if this node had it.
    pub transfer: Option<SessionTransfer>,
    /// The key of the forwarding address kept for it (see `forwards`), if one was.
    pub address: Option<usize>,
}

/// Exports the session of `client_id` (claimed with `epoch`, its routes in every table from
/// `index` on) after a flush that `unanswered` did not answer, keeping a forwarding address
/// for it: the late copies of those nodes go on to the new owner (see `forwards`). The
/// export and the address are made while no message from another node is delivered here, so
/// a copy is either in the export or finds the address. Those nodes are asked for a flush
/// again once a second, until each has answered or left the cluster (the address ends
/// then), for [`MOVED_FOR`] at most.
pub fn export_forwarding(
    glue: &Arc<Glue>,
    broker: &Broker,
    client_id: &str,
    epoch: u64,
    index: u64,
    unanswered: BTreeSet<NodeId>,
    wait: Duration,
) -> Exported {
    let owner = glue.claimer.get().and_then(|claimer| {
        let state = claimer.node.state();
        match state.owner(client_id) {
            Some((Some(to), current)) if current == epoch && to != glue.node_id => Some(to),
            _ => None,
        }
    });
    let (Some(to), Some(plane)) = (owner, glue.plane.get()) else {
        return Exported {
            transfer: broker.export_session(client_id, Instant::now()),
            address: None,
        };
    };
    let (transfer, address) = plane.without_deliveries(|| {
        let transfer = broker.export_session(client_id, Instant::now());
        let address = transfer.as_ref().and_then(|transfer| {
            let filters = transfer
                .subscriptions
                .iter()
                .map(|(filter, _)| filter.as_str());
            glue.forwards.add(client_id, to, index, unanswered, filters)
        });
        (transfer, address)
    });
    let Some(key) = address else {
        if transfer.is_some() {
            tracing::warn!(client_id, "moved session: no forwarding address kept");
        }
        return Exported {
            transfer,
            address: None,
        };
    };
    tracing::info!(
        client_id,
        node = to,
        "moved session: a forwarding address kept"
    );
    ask_again(glue, client_id, key, index, wait);
    Exported {
        transfer,
        address: Some(key),
    }
}

/// Asks the nodes the address `key` of `client_id` waits for to flush to `index`, once a
/// second (each within `wait`), until the address ends; ends it after [`MOVED_FOR`].
fn ask_again(glue: &Arc<Glue>, client_id: &str, key: usize, index: u64, wait: Duration) {
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
}

/// Whether late copies of a handed-over session's messages may follow the hand-over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateCopies {
    /// The flush was whole, or no address was kept: none.
    None,
    /// A forwarding address was kept.
    Follow,
}

/// A hand-over's answer, read.
#[derive(Debug, PartialEq, Eq)]
pub struct HandedOver<'a> {
    pub late_copies: LateCopies,
    /// The encoded session.
    pub session: &'a [u8],
}

/// A hand-over's answer: a flags byte (bit 0: late copies may follow; other bits: none yet,
/// ignored), then the encoded session.
pub fn handed_over(late_copies: LateCopies, session: &[u8]) -> Vec<u8> {
    let mut answer = Vec::with_capacity(1 + session.len());
    answer.push(u8::from(late_copies == LateCopies::Follow));
    answer.extend_from_slice(session);
    answer
}

/// What [`handed_over`] wrote (none: an empty answer).
pub fn read_handed_over(answer: &[u8]) -> Option<HandedOver<'_>> {
    let (&flags, session) = answer.split_first()?;
    let late_copies = if flags & 1 != 0 {
        LateCopies::Follow
    } else {
        LateCopies::None
    };
    Some(HandedOver {
        late_copies,
        session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_over_answer_says_whether_late_copies_follow() {
        for late_copies in [LateCopies::None, LateCopies::Follow] {
            let answer = handed_over(late_copies, b"session");
            let read = read_handed_over(&answer);
            assert_eq!(
                read,
                Some(HandedOver {
                    late_copies,
                    session: b"session"
                })
            );
        }
        assert_eq!(read_handed_over(&[]), None);
        let later = read_handed_over(&[0b11, 7]).map(|read| read.late_copies);
        assert_eq!(later, Some(LateCopies::Follow), "other bits ignored");
    }
}
