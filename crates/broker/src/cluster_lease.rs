//! Cluster: the node's lease on its clients, as the connections see it. A node that has not
//! heard from its cluster's quorum within its lease closes its client connections (the
//! majority may grant their client ids elsewhere once it has run out); the server looks at
//! the lease a few times a second and calls [`Broker::release_for_lost_lease`]. That leaves
//! a window when the process stalls (SIGSTOP, a paused machine) past its lease: on waking,
//! its connections would serve their old clients until the server's check runs, while the
//! client may be connected on another node by then. So each connection also looks at the
//! lease itself, with the time it is given, before it takes a packet from its client or
//! sends one: past the lease it closes (DISCONNECT 0x9C Use another server) instead.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::broker::{Broker, lock};

/// No lease: a single node, whose clients are its own whatever happens.
const NO_LEASE: u64 = u64::MAX;

/// Until when the node holds its lease, in milliseconds from `base`.
#[derive(Debug)]
pub(crate) struct Lease {
    base: Instant,
    until: AtomicU64,
    /// Held while the lease is extended (rarely: a few times a second).
    extending: Mutex<()>,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            base: Instant::now(),
            until: AtomicU64::new(NO_LEASE),
            extending: Mutex::new(()),
        }
    }
}

impl Lease {
    /// `at` in milliseconds from `base` (0 before it), rounded down: a lease ends at most a
    /// millisecond early.
    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(NO_LEASE - 1)
    }
}

impl Broker {
    /// Cluster: this node's clients are served only while it holds a lease, from now on none
    /// (until [`Broker::extend_lease`]).
    pub fn require_lease(&self) {
        let _extending = lock(&self.lease.extending);
        self.lease.until.store(0, Ordering::Relaxed);
    }

    /// Cluster: a leader confirmed its quorum after the node asked at `asked`: the node
    /// holds its lease until `until` (one lease after `asked`). An earlier time changes
    /// nothing. If the lease had run out before `asked`, every client connection closes first
    /// ([`Broker::release_for_lost_lease`]): they were made under the lease that ran out,
    /// and their client ids may have been granted elsewhere meanwhile (the node may not have
    /// applied that yet), however soon the lease was confirmed again. (Without a gap, no
    /// other node granted them: a claimer waits until the previous owner's lease has run
    /// out.) After such a gap, `on_gap` runs first, before anything can see the new lease
    /// (the server stops the claims' fast path until it has caught up). Returns whether
    /// there was a gap.
    pub fn extend_lease(&self, asked: Instant, until: Instant, on_gap: impl FnOnce()) -> bool {
        let _extending = lock(&self.lease.extending);
        let current = self.lease.until.load(Ordering::Acquire);
        let until = self.lease.millis(until);
        if current == NO_LEASE || until <= current {
            return false;
        }
        // 0: never held (the node's first confirmation), no client was served under it.
        let gap = current != 0 && self.lease.millis(asked) >= current;
        if gap {
            on_gap();
            self.release_for_lost_lease();
        }
        // Release: whoever sees the new lease sees what `on_gap` did.
        self.lease.until.store(until, Ordering::Release);
        gap
    }

    /// Whether this node may serve its clients at `now`: a single node always, a clustered
    /// one while it holds its lease.
    pub fn holds_lease(&self, now: Instant) -> bool {
        !self.lease_ran_out(now)
    }

    /// Whether this node serves no client at `now`: it is in a cluster and its lease ran out.
    pub(crate) fn lease_ran_out(&self, now: Instant) -> bool {
        let until = self.lease.until.load(Ordering::Acquire);
        until != NO_LEASE && self.lease.millis(now) >= until
    }
}
