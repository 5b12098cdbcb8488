//! The task that proposes this node's changes to the cluster: its routes (coalesced: only
//! the latest wish per filter is proposed) and the retained messages its clients set. A
//! proposal the cluster could not commit (no quorum) is kept and proposed again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_broker::Broker;
use tern_cluster::command::SubscriptionOptions;

use futures_util::future::join_all;
use tern_cluster::{ClusterNode, Command, Outcome};
use tokio::sync::watch;

use super::hook::{Glue, lock};
use super::retained;

/// How long after a failed proposal the next try waits.
const RETRY: Duration = Duration::from_millis(200);

/// A SUBACK waits for its route at most the proposal timeout (not a member yet, no quorum):
/// then its filter is refused, retryable. Looked at apart from the proposing task, which may
/// be waiting for a proposal of its own.
pub async fn expire_tickets(
    glue: Arc<Glue>,
    proposal_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let every = (proposal_timeout / 10).max(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        glue.tickets.expire(proposal_timeout);
    }
}

pub async fn run(
    glue: Arc<Glue>,
    node: ClusterNode,
    broker: Arc<Broker>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = glue.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        if !node.is_member() {
            continue;
        }
        let (routes, retained_changes, resync, subscriptions, ended) = {
            let mut pending = lock(&glue.pending);
            (
                std::mem::take(&mut pending.routes),
                std::mem::take(&mut pending.retained),
                std::mem::take(&mut pending.resync),
                std::mem::take(&mut pending.subscriptions),
                std::mem::take(&mut pending.ended),
            )
        };
        let sessions_failed = propose_sessions(&glue, &node, &broker, subscriptions, ended).await;
        if routes.is_empty() && retained_changes.is_empty() && !resync {
            if sessions_failed {
                retry_later(&glue, &mut stop).await;
            }
            continue;
        }
        let mut commands = Vec::new();
        if resync {
            // The whole set: replaces whatever the state held for this node (a crash between
            // a local change and its proposal leaves nothing stale).
            let local = lock(&glue.local).clone();
            let mut filters = Vec::new();
            let mut shared = Vec::new();
            for (group, filter) in local {
                match group {
                    Some(group) => shared.push((group, filter)),
                    None => filters.push(filter),
                }
            }
            commands.push(Command::SyncRoutes {
                node: glue.node_id,
                filters,
                shared,
            });
        } else {
            for ((group, filter), present) in &routes {
                commands.push(match (group, present) {
                    (None, true) => Command::AddRoute {
                        filter: filter.clone(),
                        node: glue.node_id,
                    },
                    (None, false) => Command::RemoveRoute {
                        filter: filter.clone(),
                        node: glue.node_id,
                    },
                    (Some(group), true) => Command::AddShared {
                        group: group.clone(),
                        filter: filter.clone(),
                        node: glue.node_id,
                    },
                    (Some(group), false) => Command::RemoveShared {
                        group: group.clone(),
                        filter: filter.clone(),
                        node: glue.node_id,
                    },
                });
            }
        }
        let route_commands = commands.len();
        let now = Instant::now();
        for (topic, message) in &retained_changes {
            let command = match message {
                Some(message) => match retained::to_replicated(message, glue.node_id, now) {
                    Some(message) => Command::Retain { message },
                    None => continue,
                },
                None => Command::ClearRetained {
                    topic: topic.clone(),
                    origin: glue.node_id,
                },
            };
            commands.push(command);
        }
        let outcomes = join_all(commands.into_iter().map(|command| node.propose(command))).await;
        let routes_failed = outcomes[..route_commands]
            .iter()
            .any(|outcome| !matches!(outcome, Ok(Outcome::Done)));
        // The SUBACKs waiting for these routes: answered as soon as their route is
        // committed; one not committed (not registered yet, no quorum) is proposed again
        // below and its SUBACK waits on, until the proposal timeout fails it (`expire`).
        if resync {
            if !routes_failed {
                for route in lock(&glue.local).iter() {
                    glue.tickets.decide(route, true);
                }
            }
        } else {
            for ((route, present), outcome) in routes.iter().zip(&outcomes[..route_commands]) {
                if *present && matches!(outcome, Ok(Outcome::Done)) {
                    glue.tickets.decide(route, true);
                }
            }
        }
        let retained_failed = outcomes[route_commands..].iter().any(Result::is_err);
        if !routes_failed && !retained_failed && !sessions_failed {
            continue;
        }
        {
            let mut pending = lock(&glue.pending);
            if routes_failed {
                if resync {
                    pending.resync = true;
                }
                for (key, present) in routes {
                    pending.routes.entry(key).or_insert(present);
                }
            }
            if retained_failed {
                for (topic, message) in retained_changes {
                    pending.retained.entry(topic).or_insert(message);
                }
            }
        }
        tracing::debug!("cluster: changes not committed, proposed again later");
        if retry_later(&glue, &mut stop).await {
            return;
        }
    }
}

/// Waits before changes that were not committed are proposed again; true if stopping.
async fn retry_later(glue: &Glue, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(RETRY) => {}
        _ = stop.changed() => return true,
    }
    glue.wake.notify_one();
    false
}

/// The registry's side of this node's sessions: durable subscriptions of the persistent
/// sessions it owns (fenced by the claim's epoch: a session claimed elsewhere meanwhile is
/// not this node's to change), and the release of client ids whose session ended here.
/// Returns whether some were not committed (they are kept for the next round).
async fn propose_sessions(
    glue: &Glue,
    node: &ClusterNode,
    broker: &Broker,
    subscriptions: BTreeMap<(String, String), Option<SubscriptionOptions>>,
    ended: BTreeSet<String>,
) -> bool {
    if subscriptions.is_empty() && ended.is_empty() {
        return false;
    }
    let me = glue.node_id;
    let mut commands = Vec::new();
    let mut keys = Vec::new();
    let mut postponed = Vec::new();
    {
        let state = node.state();
        for ((client_id, filter), options) in &subscriptions {
            let Some((Some(owner), epoch)) = state.owner(client_id) else {
                continue;
            };
            if owner != me {
                continue;
            }
            commands.push(match options {
                Some(options) => Command::Subscribe {
                    client_id: client_id.clone(),
                    epoch,
                    filter: filter.clone(),
                    options: *options,
                },
                None => Command::Unsubscribe {
                    client_id: client_id.clone(),
                    epoch,
                    filter: filter.clone(),
                },
            });
            keys.push(Some((client_id.clone(), filter.clone())));
        }
        for client_id in &ended {
            // A new session of the client here (a reconnection) keeps the claim, and so
            // does a claim of it running here (its connection attaches a session once
            // granted; a shell the claim made and ended again must not release it first).
            if broker.session(client_id).is_some() {
                continue;
            }
            if glue
                .claimer
                .get()
                .is_some_and(|claimer| claimer.fences.claiming(client_id))
            {
                // Looked at again once the claim is over (it usually attaches a session).
                postponed.push(client_id.clone());
                continue;
            }
            let Some((Some(owner), epoch)) = state.owner(client_id) else {
                continue;
            };
            if owner == me {
                lock(&glue.releasing).insert(client_id.clone());
                commands.push(Command::Release {
                    client_id: client_id.clone(),
                    epoch,
                });
                keys.push(None);
            }
        }
    }
    let outcomes = join_all(commands.into_iter().map(|command| node.propose(command))).await;
    let mut failed = false;
    let mut pending = lock(&glue.pending);
    // Released (or not: then queued again below, under the same lock).
    lock(&glue.releasing).clear();
    pending.ended.extend(postponed);
    for (key, outcome) in keys.into_iter().zip(outcomes) {
        // Refused as stale: the client id was claimed again; nothing to do. Not committed:
        // proposed again, unless a later change replaced it.
        if outcome.is_ok() {
            continue;
        }
        failed = true;
        if let Some(key) = key
            && let Some(options) = subscriptions.get(&key)
        {
            pending.subscriptions.entry(key).or_insert(*options);
        }
    }
    if failed {
        for client_id in ended {
            if !pending
                .subscriptions
                .keys()
                .any(|(client, _)| *client == client_id)
            {
                pending.ended.insert(client_id);
            }
        }
    }
    failed
}
