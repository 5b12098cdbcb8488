//! The lease of a node on its clients: a node that has not heard from its cluster's quorum
//! within `lease_ms` closes its client connections (MQTT 5: DISCONNECT 0x9C Use another
//! server), because the majority may grant their client ids elsewhere once the lease has run
//! out (see `claim`). Connections keep working through shorter losses (an election, a brief
//! partition). The core knows until when the lease holds (`Broker::extend_lease`, told at
//! each confirmation): each connection looks at it too, so that a process that stalled past
//! its lease serves no client on waking, whichever of its tasks runs first.

use std::sync::Arc;
use std::time::Duration;

use tern_broker::Broker;
use tern_cluster::ClusterNode;
use tokio::sync::watch;

/// How often a node looks at its lease (and closes its clients once it has run out).
pub const CHECK_EVERY: Duration = Duration::from_millis(200);

/// The core serves clients only while the node holds its lease (`lease` long from each
/// confirmation): from now on, before the node's first confirmation too.
pub fn attach(node: &ClusterNode, broker: &Arc<Broker>, lease: Duration) {
    broker.require_lease();
    let broker = Arc::downgrade(broker);
    node.set_lease_listener(Arc::new(move |asked| {
        if let Some(broker) = broker.upgrade() {
            let asked = asked.into_std();
            broker.extend_lease(asked, asked + lease);
        }
    }));
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
