//! The SUBACKs waiting for this node's new routes (see `ClusterHook::route_pending`): a
//! ticket per route being proposed, decided when the proposal is committed or fails, or
//! when it has waited longer than the proposal timeout (the node is not a member yet, or the
//! cluster has no quorum).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_broker::RouteTicket;

use super::hook::LocalRoute;

#[derive(Default)]
pub struct RouteTickets {
    pending: Mutex<HashMap<LocalRoute, (Arc<RouteTicket>, Instant)>>,
}

impl RouteTickets {
    /// A route is to be proposed: its ticket (a new one unless one is pending).
    pub fn open(&self, route: &LocalRoute) {
        lock(&self.pending)
            .entry(route.clone())
            .or_insert_with(|| (RouteTicket::new(), Instant::now()));
    }

    /// The pending ticket of a route, if any.
    pub fn get(&self, route: &LocalRoute) -> Option<Arc<RouteTicket>> {
        lock(&self.pending)
            .get(route)
            .map(|(ticket, _)| ticket.clone())
    }

    /// The route's proposal was committed (`true`) or failed.
    pub fn decide(&self, route: &LocalRoute, committed: bool) {
        if let Some((ticket, _)) = lock(&self.pending).remove(route) {
            ticket.complete(committed);
        }
    }

    /// The route was removed again before it was decided: whoever waited is answered as
    /// refused (their subscription is gone anyway).
    pub fn drop_route(&self, route: &LocalRoute) {
        self.decide(route, false);
    }

    /// Fails the tickets older than `timeout`.
    pub fn expire(&self, timeout: Duration) {
        let now = Instant::now();
        let mut pending = lock(&self.pending);
        let expired: Vec<LocalRoute> = pending
            .iter()
            .filter(|(_, (_, opened))| now.duration_since(*opened) >= timeout)
            .map(|(route, _)| route.clone())
            .collect();
        for route in expired {
            if let Some((ticket, _)) = pending.remove(&route) {
                ticket.complete(false);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
