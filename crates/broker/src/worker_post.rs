//! QoS 0 messages for the sessions of other workers, handed over once per worker.
//!
//! The server runs several workers (event-loop threads); a connection stays on one. When a
//! publish reaches subscribers on another worker, queueing each delivery from the publisher's
//! thread writes every subscriber's session lock, queue and wakeup from the wrong core: each
//! delivery moves a few cache lines between the cores and back (measured: a fan-out to 100
//! subscribers ran 1.4 times faster on one worker than on two). So a message published at QoS
//! 0 is routed by the publisher's thread only for the sessions of its own worker; every other
//! worker with a matching online session gets the message once in its [`WorkerInbox`], and its
//! thread matches it again for its own sessions ([`Broker::deliver_posted`]). QoS 1 and 2 keep
//! the direct path: their acknowledgement depends on where and how each delivery was queued.
//!
//! The server says which worker a thread is ([`set_current_worker`]) and which worker a
//! connection is on ([`Wakeup::worker`](crate::Wakeup::worker)); a server that says nothing
//! (one worker, the tests, a bridge's in-process connection on another thread) gets the direct
//! path, or posts from a thread that is no worker.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use crate::broker::Broker;
use crate::message::{Message, MessageRef};

thread_local! {
    static CURRENT: Cell<Option<u16>> = const { Cell::new(None) };
}

/// Workers beyond this many are served on the direct path (the set of workers a message goes
/// to is a bit mask).
pub(crate) const MAX_POSTED_WORKERS: u16 = 128;

/// Says that the calling thread is worker `worker` (the server calls it once at the start of
/// each worker thread).
pub fn set_current_worker(worker: u16) {
    CURRENT.set(Some(worker));
}

/// The worker the calling thread is, if it said so.
pub fn current_worker() -> Option<u16> {
    CURRENT.get()
}

/// A QoS 0 message posted to a worker, with what its routing there needs to know.
#[derive(Debug, Clone)]
pub struct Posted {
    pub message: Arc<Message>,
    /// The first connection id not yet given out when the message was posted: a session that
    /// a later connection attached meanwhile (a reconnection, which may have found QoS 0
    /// messages queued after this one while it was offline) is not served the posted copy,
    /// so it cannot get it after those.
    pub(crate) connections_before: u64,
    /// The tick of the retained clock at which the publish stored the message as retained
    /// (`u64::MAX`: it did not; see `Selection::retained_at`).
    pub(crate) retained_at: u64,
}

/// A worker's inbox: QoS 0 messages that have subscribers on its connections.
pub trait WorkerInbox: Send + Sync {
    /// Takes `posted`, to be given to [`Broker::deliver_posted`] on the worker's thread soon.
    /// Returns false when the inbox is full: the message is then not delivered to that
    /// worker's sessions (QoS 0, at most once, as when a session's queue is full).
    fn post(&self, posted: Posted) -> bool;
}

/// Where `route` delivers: every matching session, or those of one worker.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope {
    /// A new publish on the thread of worker `me` (if it is one); with `post`, the sessions
    /// of other workers get the message through their inboxes.
    Publish { me: Option<u16>, post: bool },
    /// A message posted to worker `.0`: only its own online sessions attached by a connection
    /// older than `.1` (see [`Posted`]), no shared subscriptions (the publisher's thread
    /// picked their members).
    Posted(u16, u64),
}

impl Broker {
    /// Installs the inboxes of the server's workers, by worker number. Called once, before
    /// connections come; later calls are ignored.
    pub fn set_worker_inboxes(&self, inboxes: Vec<Arc<dyn WorkerInbox>>) {
        let _ = self.worker_inboxes.set(inboxes);
    }

    /// Routes a message posted to worker `worker` (see [`WorkerInbox`]) to the online sessions
    /// of that worker attached before it was posted. Called on the worker's thread.
    pub fn deliver_posted(&self, posted: Posted, worker: u16, now: Instant) {
        let scope = Scope::Posted(worker, posted.connections_before);
        self.route(
            MessageRef::Shared(posted.message),
            scope,
            now,
            None,
            crate::cluster_hook::Selection {
                retained_at: posted.retained_at,
                ..crate::cluster_hook::Selection::ALL
            },
        );
    }

    /// The scope of a new publish of `message` on the calling thread.
    pub(crate) fn publish_scope(&self, message: &Message) -> Scope {
        let post = message.qos == tern_codec::QoS::AtMostOnce
            && self
                .worker_inboxes
                .get()
                .is_some_and(|inboxes| inboxes.len() > 1);
        Scope::Publish {
            me: current_worker(),
            post,
        }
    }

    /// Posts `message` to every worker in `workers` (a bit each); returns how many refused it.
    pub(crate) fn post_to_workers(
        &self,
        message: &Message,
        workers: u128,
        retained_at: u64,
    ) -> usize {
        let Some(inboxes) = self.worker_inboxes.get() else {
            return 0;
        };
        let mut refused = 0;
        let connections_before = self.connections_issued();
        let mut rest = workers;
        while rest != 0 {
            let worker = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            if let Some(inbox) = inboxes.get(worker) {
                // Each worker's own copy: its deliveries count on it, not on another core's.
                let posted = Posted {
                    message: Arc::new(message.clone()),
                    connections_before,
                    retained_at,
                };
                if !inbox.post(posted) {
                    refused += 1;
                }
            }
        }
        refused
    }
}
