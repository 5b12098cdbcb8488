//! The previous owner's side of closing the move window (see docs/architecture.md, "A
//! cluster: closing the move window"): the flush before a session is exported, and, when a
//! node did not answer it, the export with a forwarding address (see `forwards`), asked
//! again in the background; and the hand-over's answer, which tells the claimer whether late
//! copies may follow.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_broker::{Broker, PreviousOwner, SessionTransfer};
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
            flushed: Vec::new(),
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
    // This node's own publishes planned with an older table placed their copies before
    // the barrier, if its table was at `index` by then (later ones plan with it).
    let mut flushed: Vec<(NodeId, u64)> = Vec::new();
    if !table_late {
        flushed.push((me, plane.run()));
    }
    while let Some(done) = flushes.join_next().await {
        match done {
            Ok((peer, Some(run))) => {
                unanswered.remove(&peer);
                flushed.push((peer, run));
            }
            Ok((_, None)) => {}
            Err(error) => tracing::warn!(%error, "flush task failed"),
        }
    }
    Flushed {
        table_late,
        unanswered,
        flushed,
    }
}

/// How a [`flush`] went.
pub struct Flushed {
    /// This node's table was not at the index in time.
    pub table_late: bool,
    /// The nodes that did not answer, or whose outbox was not delivered, in time.
    pub unanswered: BTreeSet<NodeId>,
    /// The nodes, each with its run then, every copy of which planned in that run with a
    /// table older than the index reached this node (into the session, or to its
    /// connection): those that answered, and this one unless its table was late.
    pub flushed: Vec<(NodeId, u64)>,
}

/// One node's part of a [`flush`]: it answers once its table is at `index` and its older
/// publishes placed their copies, and what its outbox held for this node then is delivered
/// here (by `deadline`). The peer's run then, if so.
async fn flush_peer(
    node: &ClusterNode,
    plane: &DataPlane,
    peer: NodeId,
    index: u64,
    deadline: tokio::time::Instant,
) -> Option<u64> {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    match node.request_flush(peer, index, left).await {
        Ok(answer) => {
            if let Some((run, seq)) = answer.last
                && !plane.wait_delivered(peer, run, seq, deadline).await
            {
                tracing::warn!(peer, "flush: the peer's outbox not delivered in time");
                return None;
            }
            Some(answer.run)
        }
        Err(refusal) => {
            tracing::warn!(peer, %refusal, "flush: no answer");
            None
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
    /// With an address: each node that did not answer, with its run and the number of its
    /// last message that had reached this node at the export (see `reached`; a node none of
    /// whose messages had is not listed).
    pub reached: Vec<(NodeId, u64, u64)>,
}

/// Exports the session of `client_id` (claimed with `epoch`, its routes in every table from
/// `index` on) after a flush that `unanswered` did not answer, keeping a forwarding address
/// for it: the late copies of those nodes go on to the new owner (see `forwards`). The
/// export and the address are made while no message from another node is delivered here, so
/// a copy is either in the export or finds the address, and the last message of each of
/// those nodes that reached this node before the export is known (see `reached`): what
/// came before it was for the exported session, what comes later finds the address. Those
/// nodes are asked for a flush again once a second, until each has answered or left the
/// cluster (the address ends then), for [`MOVED_FOR`] at most.
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
            reached: Vec::new(),
        };
    };
    let (transfer, address, reached) = plane.without_deliveries(|| {
        let transfer = broker.export_session(client_id, Instant::now());
        let reached = glue.reached.last_of(&unanswered);
        let address = transfer.as_ref().and_then(|transfer| {
            let filters = transfer
                .subscriptions
                .iter()
                .map(|(filter, _)| filter.as_str());
            glue.forwards.add(client_id, to, index, unanswered, filters)
        });
        (transfer, address, reached)
    });
    let Some(key) = address else {
        if transfer.is_some() {
            tracing::warn!(client_id, "moved session: no forwarding address kept");
        }
        // Without an address, a copy planned before the last one but sent after it reaches
        // no one: the new owner must keep its own copy of it.
        return Exported {
            transfer,
            address: None,
            reached: Vec::new(),
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
        reached,
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
                if !member
                    || flush_peer(&node, &plane, peer, index, deadline)
                        .await
                        .is_some()
                {
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
    /// What the previous owner had of the copies planned before the claimer's routes
    /// reached every table (none listed without a flush): the nodes that answered its flush
    /// ([`Flushed::flushed`]) and, with a forwarding address, the last message of each that
    /// did not ([`Exported::reached`]).
    pub had: PreviousOwner,
    /// The encoded session.
    pub session: &'a [u8],
}

/// Bits of a hand-over answer's flags byte.
const LATE_COPIES_FOLLOW: u8 = 1;
const PREVIOUS_OWNER_HAD: u8 = 1 << 1;

/// A hand-over's answer: a flags byte (bit 0: late copies may follow; bit 1: what the
/// previous owner had follows: a u64 log index from which its routes were everywhere, a u16
/// count and a u64 node id and u64 run each of the nodes that flushed, a u16 count and a
/// u64 node id, u64 run and u64 number each of the last messages of those that did not;
/// other bits: none yet, and refused, see [`read_handed_over`]), then the encoded session.
pub fn handed_over(late_copies: LateCopies, had: &PreviousOwner, session: &[u8]) -> Vec<u8> {
    // Fewer nodes only drop fewer copies.
    let most = usize::from(u16::MAX);
    let flushed = &had.flushed[..had.flushed.len().min(most)];
    let reached = &had.reached[..had.reached.len().min(most)];
    let mut answer =
        Vec::with_capacity(13 + 16 * flushed.len() + 24 * reached.len() + session.len());
    let mut flags = 0;
    if late_copies == LateCopies::Follow {
        flags |= LATE_COPIES_FOLLOW;
    }
    let listed = !flushed.is_empty() || !reached.is_empty();
    if listed {
        flags |= PREVIOUS_OWNER_HAD;
    }
    answer.push(flags);
    if listed {
        answer.extend_from_slice(&had.routes_from.to_be_bytes());
        let count = u16::try_from(flushed.len()).unwrap_or(u16::MAX);
        answer.extend_from_slice(&count.to_be_bytes());
        for (node, run) in flushed {
            answer.extend_from_slice(&node.to_be_bytes());
            answer.extend_from_slice(&run.to_be_bytes());
        }
        let count = u16::try_from(reached.len()).unwrap_or(u16::MAX);
        answer.extend_from_slice(&count.to_be_bytes());
        for (node, run, number) in reached {
            answer.extend_from_slice(&node.to_be_bytes());
            answer.extend_from_slice(&run.to_be_bytes());
            answer.extend_from_slice(&number.to_be_bytes());
        }
    }
    answer.extend_from_slice(session);
    answer
}

/// What [`handed_over`] wrote (none: an empty or truncated answer, or unknown flags: a
/// later version's answer, whose session bytes may not start where this one expects; the
/// protocol version keeps such nodes apart).
pub fn read_handed_over(answer: &[u8]) -> Option<HandedOver<'_>> {
    fn u64_at(rest: &mut &[u8]) -> Option<u64> {
        let (value, after) = rest.split_first_chunk::<8>()?;
        *rest = after;
        Some(u64::from_be_bytes(*value))
    }
    fn count_at(rest: &mut &[u8]) -> Option<u16> {
        let (value, after) = rest.split_first_chunk::<2>()?;
        *rest = after;
        Some(u16::from_be_bytes(*value))
    }
    let (&flags, mut rest) = answer.split_first()?;
    if flags & !(LATE_COPIES_FOLLOW | PREVIOUS_OWNER_HAD) != 0 {
        return None;
    }
    let late_copies = if flags & LATE_COPIES_FOLLOW != 0 {
        LateCopies::Follow
    } else {
        LateCopies::None
    };
    let mut had = PreviousOwner::default();
    if flags & PREVIOUS_OWNER_HAD != 0 {
        had.routes_from = u64_at(&mut rest)?;
        for _ in 0..count_at(&mut rest)? {
            had.flushed.push((u64_at(&mut rest)?, u64_at(&mut rest)?));
        }
        for _ in 0..count_at(&mut rest)? {
            had.reached
                .push((u64_at(&mut rest)?, u64_at(&mut rest)?, u64_at(&mut rest)?));
        }
    }
    Some(HandedOver {
        late_copies,
        had,
        session: rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_over_answer_says_whether_late_copies_follow_and_what_the_owner_had() {
        for late_copies in [LateCopies::None, LateCopies::Follow] {
            for (flushed, reached) in [
                (vec![], vec![]),
                (vec![(2, 5)], vec![]),
                (vec![], vec![(4, 1, 30)]),
                (
                    vec![(1, 0), (3, 7), (u64::MAX, u64::MAX)],
                    vec![(4, 2, 0), (u64::MAX, u64::MAX, u64::MAX)],
                ),
            ] {
                let routes_from = if flushed.is_empty() && reached.is_empty() {
                    0
                } else {
                    17
                };
                let had = PreviousOwner {
                    routes_from,
                    flushed,
                    reached,
                };
                let answer = handed_over(late_copies, &had, b"session");
                let read = read_handed_over(&answer);
                assert_eq!(
                    read,
                    Some(HandedOver {
                        late_copies,
                        had,
                        session: b"session"
                    })
                );
            }
        }
        assert_eq!(read_handed_over(&[]), None);
        assert_eq!(read_handed_over(&[0b100, 7]), None, "an unknown flag");
        let had = PreviousOwner {
            routes_from: 3,
            flushed: vec![(1, 4), (2, 4)],
            reached: vec![(5, 4, 9)],
        };
        let answer = handed_over(LateCopies::None, &had, b"");
        for cut in 1..answer.len() {
            assert_eq!(read_handed_over(&answer[..cut]), None, "cut at {cut}");
        }
    }
}
