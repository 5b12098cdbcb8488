//! The lease of a node on its clients: a node that has not heard from its cluster's quorum
//! within `lease_ms` closes its client connections (MQTT 5: DISCONNECT 0x9C Use another
//! server), because the majority may grant their client ids elsewhere once the lease has run
//! out (see `claim`). Connections keep working through shorter losses (an election, a brief
//! partition). The core knows until when the lease holds (`Broker::extend_lease`, told at
//! each confirmation): each connection looks at it too, so that a process that stalled past
//! its lease serves no client on waking, whichever of its tasks runs first.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tern_broker::Broker;
use tern_cluster::ClusterNode;

use super::hook::{Glue, lock};
use tokio::sync::watch;

/// How often a node looks at its lease (and closes its clients once it has run out).
pub const CHECK_EVERY: Duration = Duration::from_millis(200);

/// The core serves clients only while the node holds its lease (`lease` long from each
/// confirmation): from now on, until the node's first confirmation too (or since one it had
/// already). A lease confirmed again after a gap also stops the claims' fast path until the
/// node has caught up with what was decided meanwhile (see [`catch_up`]).
pub fn attach(node: &ClusterNode, broker: &Arc<Broker>, glue: &Arc<Glue>, lease: Duration) {
    broker.require_lease();
    if let Some(until) = node.lease_until(lease) {
        let until = until.into_std();
        broker.extend_lease(until - lease, until, || {});
    }
    // Weak: the node keeps the listener.
    let (broker, glue) = (Arc::downgrade(broker), Arc::downgrade(glue));
    node.set_lease_listener(Arc::new(move |asked| {
        let (Some(broker), Some(glue)) = (broker.upgrade(), glue.upgrade()) else {
            return;
        };
        let asked = asked.into_std();
        let mut gap = None;
        broker.extend_lease(asked, asked + lease, || {
            let mut gaps = lock(&glue.lease_gaps);
            *gaps += 1;
            glue.catching_up.store(true, Ordering::Release);
            gap = Some(*gaps);
        });
        if let Some(gap) = gap {
            catch_up(&glue, gap);
        }
    }));
}

/// After a gap in the lease (the `gap`th): another node may have claimed one of this node's
/// client ids meanwhile, committed in the log but not applied here yet, while the registry
/// here still names this node the owner. The fast path would grant a reconnection of that
/// client here although it is connected there. So claims take the slow path (through the
/// log) until a barrier this node proposes now has been applied here: everything committed
/// before it has been too (the claims' take-overs included). Only the latest gap's catch-up
/// ends it (an earlier one's barrier may precede a claim made during the later gap).
fn catch_up(glue: &Arc<Glue>, gap: u64) {
    let Some(claimer) = glue.claimer.get() else {
        // No claims yet: nothing is granted on the fast path before they start.
        glue.catching_up.store(false, Ordering::Release);
        return;
    };
    let node = claimer.node.clone();
    tracing::info!(
        node = node.id(),
        "cluster: lease confirmed again after a gap: claims go through the log until caught up"
    );
    let glue = Arc::downgrade(glue);
    claimer.runtime.spawn(async move {
        loop {
            let Some(strong) = glue.upgrade() else {
                return;
            };
            if *lock(&strong.lease_gaps) != gap {
                return;
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            if strong.barrier_index(&node, deadline).await.is_some() {
                // Under the lock: a later gap sets the flag again under it.
                let gaps = lock(&strong.lease_gaps);
                if *gaps == gap {
                    strong.catching_up.store(false, Ordering::Release);
                    tracing::info!(node = node.id(), "cluster: caught up after the lease's gap");
                }
                return;
            }
            drop(strong);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

pub async fn run(
    node: ClusterNode,
    broker: Arc<Broker>,
    lease: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // The confirmations go on apart, asked often enough that a lost one or two does not lose
    // the lease; the lease itself is looked at every `CHECK_EVERY`, so a node closes its
    // clients at most that long after its lease ran out (a claimer elsewhere waits for it).
    let confirming = node.clone();
    let mut confirm_stop = stop.clone();
    tokio::spawn(async move {
        let every = (lease / 5).clamp(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            confirming.confirm_lease(lease / 2).await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = confirm_stop.changed() => return,
            }
        }
    });
    let mut held = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let holds = node.holds_lease(lease);
        if held && !holds {
            tracing::warn!(
                node = node.id(),
                "cluster: quorum out of reach past the lease"
            );
        }
        if !holds {
            // Also whoever connected meanwhile on the owner's fast path (none should).
            broker.release_for_lost_lease();
        } else if !held {
            tracing::info!(node = node.id(), "cluster: lease held");
        }
        held = holds;
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}
