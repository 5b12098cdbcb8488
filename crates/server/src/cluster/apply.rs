//! Follows what the cluster applied, in log order: the route table, retained messages set on
//! other nodes, and claims that take a client id away from this node.

use std::sync::Arc;
use std::time::Instant;

use tern_broker::Broker;
use tern_cluster::{Applied, ClusterNode, Command, Outcome};
use tokio::sync::mpsc;

use super::hook::Glue;
use super::retained;

/// Brings the route table and the retained messages up to the state this node has applied
/// (at start, and after a snapshot replaced the state).
pub fn rebuild(glue: &Glue, node: &ClusterNode, broker: &Broker) {
    let now = Instant::now();
    let state = node.state();
    glue.table
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .sync(&state);
    for message in state.retained() {
        if let Some(local) = retained::from_replicated(message, now) {
            broker.apply_cluster_retained(&message.topic, Some(local));
        }
    }
}

pub async fn run(
    glue: Arc<Glue>,
    node: ClusterNode,
    broker: Arc<Broker>,
    mut events: mpsc::UnboundedReceiver<Applied>,
) {
    // The index the loaded state is at, or below it (the figure follows the apply).
    let loaded = node.status().last_applied;
    rebuild(&glue, &node, &broker);
    if let Some(loaded) = loaded {
        glue.table_index.send_if_modified(|at| raise(at, loaded));
    }
    while let Some(event) = events.recv().await {
        match event {
            Applied::Snapshot { last_index } => {
                rebuild(&glue, &node, &broker);
                glue.table_index
                    .send_if_modified(|at| raise(at, last_index));
                if let Some(returns) = glue.returns.get() {
                    returns.rescan();
                }
                forget_cleared_retained(&glue, &node, &broker);
            }
            Applied::Commands {
                log_index,
                request,
                response,
            } => {
                for (command, outcome) in request.commands.iter().zip(&response.outcomes) {
                    apply_one(&glue, &node, &broker, command, outcome, log_index);
                }
                glue.table_index.send_if_modified(|at| raise(at, log_index));
            }
        }
    }
}

/// Raises `at` to `index`; whether it moved.
fn raise(at: &mut u64, index: u64) -> bool {
    let moved = index > *at;
    *at = (*at).max(index);
    moved
}

fn apply_one(
    glue: &Glue,
    node: &ClusterNode,
    broker: &Broker,
    command: &Command,
    outcome: &Outcome,
    log_index: u64,
) {
    let me = glue.node_id;
    let table = || {
        glue.table
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    match (command, outcome) {
        (Command::AddRoute { filter, node: n }, Outcome::Done) => table().add(None, filter, *n),
        (Command::RemoveRoute { filter, node: n }, Outcome::Done) => {
            table().remove(None, filter, *n)
        }
        (
            Command::AddShared {
                group,
                filter,
                node: n,
            },
            Outcome::Done,
        ) => table().add(Some(group), filter, *n),
        (
            Command::RemoveShared {
                group,
                filter,
                node: n,
            },
            Outcome::Done,
        ) => table().remove(Some(group), filter, *n),
        (Command::SyncRoutes { node: n, .. }, _) => {
            let state = node.state();
            table().sync_node(&state, *n);
        }
        (Command::RemoveNode { node: n }, _) => {
            let state = node.state();
            table().sync_node(&state, *n);
            // Its outbox here goes too (its subscribers are gone with it): the memory, the
            // stored copies and its part in the congestion check; and the last of its
            // messages that reached this node.
            if *n != me
                && let Some(plane) = glue.plane.get()
            {
                plane.forget_peer(*n);
            }
            if *n != me {
                glue.reached.forget(*n);
            }
        }
        (Command::Barrier { node: n, nonce }, _) if *n == me => {
            if !glue.barrier_applied(*nonce, log_index)
                && let Some(returns) = glue.returns.get()
            {
                returns.barrier_applied(*nonce);
            }
        }
        (Command::Retain { message }, Outcome::Done) if message.origin != me => {
            let now = Instant::now();
            // Only if it is still the topic's retained message (a later change may be
            // applied already; the state holds the last one).
            let current = node.state().retained_message(&message.topic).cloned();
            if current.as_ref() == Some(message)
                && let Some(local) = retained::from_replicated(message, now)
            {
                broker.apply_cluster_retained(&message.topic, Some(local));
            }
        }
        (Command::ClearRetained { topic, origin }, Outcome::Done)
            if *origin != me && node.state().retained_message(topic).is_none() =>
        {
            broker.apply_cluster_retained(topic, None);
        }
        (
            Command::Claim {
                client_id,
                node: claimer,
                ..
            },
            Outcome::Claimed {
                previous: Some((previous, _)),
                ..
            },
        ) if *previous == me && *claimer != me => {
            if broker.take_over(client_id) {
                // Another node took the client id: its connection here closes (MQTT 5:
                // DISCONNECT 0x8E Session taken over).
                tracing::info!(
                    client_id,
                    node = claimer,
                    "session taken over by another node"
                );
            }
            // What the hand-over does not take (its claimer gave up on this node) is
            // returned or discarded later.
            if let Some(returns) = glue.returns.get() {
                returns.claimed_elsewhere(node, client_id);
            }
        }
        _ => {}
    }
}

/// After a snapshot replaced the state (this node missed entries, among them clears of
/// retained messages): the local retained messages the state no longer has go too, so every
/// node ends with the same retained table. (`#` does not match `$` topics: the broker's own
/// `$SYS` messages stay.)
fn forget_cleared_retained(glue: &Glue, node: &ClusterNode, broker: &Broker) {
    let mut after: Option<String> = None;
    loop {
        let page = broker.retained_after("#", after.as_deref(), 1_000);
        let Some(last) = page.last() else {
            return;
        };
        after = Some(last.topic.to_string());
        let gone: Vec<String> = {
            let state = node.state();
            page.iter()
                .filter(|message| state.retained_message(&message.topic).is_none())
                // Not one set here whose proposal is still on its way.
                .filter(|message| {
                    !super::hook::lock(&glue.pending)
                        .retained
                        .contains_key(message.topic.as_str())
                })
                .map(|message| message.topic.to_string())
                .collect()
        };
        for topic in gone {
            broker.apply_cluster_retained(&topic, None);
        }
    }
}
