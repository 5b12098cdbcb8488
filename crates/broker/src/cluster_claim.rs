//! The claim of a client id at CONNECT, a decision that may wait (issue 16): with a cluster
//! hook set, an authenticated CONNECT asks [`crate::ClusterHook::claim`] whether this node
//! may own the client id. The hook grants at once (this node owns it already), refuses, or
//! answers later through the request's [`ClaimCompletion`], from any thread: the broker keeps
//! the answer in a small map and wakes the connection, which takes it in `poll_transmit`, as
//! for a deferred authentication. A grant may carry the session the previous owner handed
//! over ([`ClaimGrant::transfer`]), imported before the session is attached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use tern_codec::ReasonCode;

use crate::broker::{Broker, lock};
use crate::cluster_transfer::SessionTransfer;
use crate::types::Wakeup;

/// What a CONNECT asks the cluster: may this node own `client_id`?
#[derive(Debug)]
pub struct ClaimRequest {
    pub client_id: String,
    /// The CONNECT asked for a new session (Clean Start / Clean Session).
    pub clean_start: bool,
    /// Whether the session outlives the connection (MQTT 5: a Session Expiry Interval above
    /// 0; 3.x: clean session 0).
    pub persistent: bool,
    /// The session expiry the CONNECT asks for (what a session made for the claim before the
    /// client attaches keeps, should the node stop first).
    pub expiry: crate::types::SessionExpiry,
    /// Where a [`ClaimDecision::Pending`] answer goes.
    pub completion: ClaimCompletion,
}

/// The hook's first answer to a [`ClaimRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimDecision {
    /// This node owns the client id: the CONNECT goes on at once.
    Granted,
    /// The answer comes later, through the request's [`ClaimCompletion`]; the connection
    /// waits (taking no input) until then or the connect timeout.
    Pending,
    /// CONNACK with this code (0x88 Server unavailable: the cluster could not decide, the
    /// client may retry).
    Refused(ReasonCode),
}

/// A claim granted later: with the session the previous owner handed over, if any.
#[derive(Debug, Clone, Default)]
pub struct ClaimGrant {
    pub transfer: Option<SessionTransfer>,
}

/// Which claim an answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimId(pub(crate) u64);

impl ClaimId {
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Hands the answer to a pending claim back to its connection, which is woken and takes it.
/// An answer for a connection that has gone (closed, timed out) or that was answered already
/// is dropped.
#[derive(Debug, Clone)]
pub struct ClaimCompletion {
    pub(crate) broker: Weak<Broker>,
    pub(crate) id: ClaimId,
}

impl ClaimCompletion {
    pub fn id(&self) -> ClaimId {
        self.id
    }

    /// Whether the connection still waits for this answer: a cluster skips work nobody
    /// waits for.
    pub fn is_wanted(&self) -> bool {
        self.broker
            .upgrade()
            .is_some_and(|broker| broker.is_claim_wanted(self.id))
    }

    /// Gives the answer to the connection. Returns the session of a grant that no connection
    /// will take (it closed, timed out, or was answered already): the caller installs it with
    /// [`Broker::import_session`] rather than lose it.
    #[must_use = "a handed-over session nobody takes must be imported, not dropped"]
    pub fn complete(self, result: Result<ClaimGrant, ReasonCode>) -> Option<SessionTransfer> {
        match self.broker.upgrade() {
            Some(broker) => broker.complete_claim(self.id, result),
            None => None,
        }
    }
}

/// Where the answer to one pending claim waits for its connection.
struct ClaimSlot {
    wakeup: Arc<dyn Wakeup>,
    result: Option<Result<ClaimGrant, ReasonCode>>,
}

/// The pending claims of a broker, by id (empty on a single node).
#[derive(Default)]
pub(crate) struct Claims {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, ClaimSlot>>,
}

impl Broker {
    /// Registers a claim whose answer wakes `wakeup`.
    pub(crate) fn defer_claim(&self, wakeup: Arc<dyn Wakeup>) -> ClaimId {
        let id = self.claims.next.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.claims.pending).insert(
            id,
            ClaimSlot {
                wakeup,
                result: None,
            },
        );
        ClaimId(id)
    }

    /// The answer to a pending claim, from wherever the cluster decided it: kept for its
    /// connection, which is woken. An unknown id (the connection gave up) or a second answer
    /// is ignored; the session such an answer carried is returned (see
    /// [`ClaimCompletion::complete`]).
    #[must_use = "a handed-over session nobody takes must be imported, not dropped"]
    pub fn complete_claim(
        &self,
        id: ClaimId,
        result: Result<ClaimGrant, ReasonCode>,
    ) -> Option<SessionTransfer> {
        let wakeup = {
            let mut pending = lock(&self.claims.pending);
            let slot = match pending.get_mut(&id.0) {
                Some(slot) if slot.result.is_none() => slot,
                _ => return result.ok().and_then(|grant| grant.transfer),
            };
            slot.result = Some(result);
            slot.wakeup.clone()
        };
        wakeup.wake();
        None
    }

    /// The answer for `id`, if it came (the claim is then forgotten).
    pub(crate) fn take_claim_result(&self, id: ClaimId) -> Option<Result<ClaimGrant, ReasonCode>> {
        let mut pending = lock(&self.claims.pending);
        let result = pending.get_mut(&id.0)?.result.take()?;
        pending.remove(&id.0);
        Some(result)
    }

    /// Forgets a claim whose connection no longer waits for it; returns the session of a
    /// grant that came but was not taken, for the caller to install.
    pub(crate) fn forget_claim(&self, id: ClaimId) -> Option<SessionTransfer> {
        let slot = lock(&self.claims.pending).remove(&id.0)?;
        slot.result?.ok()?.transfer
    }

    /// A connection closed while its claim was granted with a session it did not take: the
    /// session is installed here offline (this node owns the client id now) rather than lost.
    pub(crate) fn keep_unclaimed(&self, transfer: Option<SessionTransfer>, now: Instant) {
        if let Some(transfer) = transfer {
            let client_id = transfer.client_id.clone();
            if let Err(error) = self.adopt_handed_over(transfer, now) {
                tracing::warn!(%client_id, %error, "handed-over session not kept");
            }
        }
    }

    /// Whether the connection of claim `id` still waits for its answer.
    pub fn is_claim_wanted(&self, id: ClaimId) -> bool {
        lock(&self.claims.pending)
            .get(&id.0)
            .is_some_and(|slot| slot.result.is_none())
    }

    /// Claims waiting for their answer (for tests and metrics).
    #[doc(hidden)]
    pub fn pending_claim_count(&self) -> usize {
        lock(&self.claims.pending).len()
    }
}
