//! Messages from other nodes into the core: routed to this node's subscribers and
//! acknowledged to the sender once their deliveries to stored sessions are durable.

use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;
use tern_broker::persist::{Change, Persistence};
use tern_broker::{Broker, Message, Seq, Wakeup};
use tern_cluster::NodeId;
use tern_cluster::link::{DataSink, Settled};
use tern_codec::QoS;
use tokio::sync::oneshot;

use super::forwards::Forwards;
use super::hook::Glue;
use super::payload;
use super::reached::Reached;

pub struct BrokerSink {
    broker: Arc<Broker>,
    persistence: Option<Arc<dyn Persistence>>,
    /// Weak: the glue holds the data plane, which holds this.
    glue: Weak<Glue>,
    /// The glue's (read first: most copies find it empty).
    forwards: Arc<Forwards>,
    /// The glue's.
    reached: Arc<Reached>,
}

impl BrokerSink {
    pub fn new(
        broker: Arc<Broker>,
        persistence: Option<Arc<dyn Persistence>>,
        glue: &Arc<Glue>,
    ) -> BrokerSink {
        BrokerSink {
            broker,
            persistence,
            glue: Arc::downgrade(glue),
            forwards: glue.forwards.clone(),
            reached: glue.reached.clone(),
        }
    }

    /// Sends on the late copies of `message` (from `from`, planned at `routes_at`) to the
    /// moved sessions it was for (see `forwards`); the sequence number the acknowledgement
    /// to `from` waits for (they are stored in the outboxes first).
    fn send_late(&self, from: NodeId, message: &Message, routes_at: u64, now: Instant) -> Seq {
        let late = self.forwards.late_copies(from, &message.topic, routes_at);
        if late.is_empty() {
            return Seq::NONE;
        }
        let Some(glue) = self.glue.upgrade() else {
            return Seq::NONE;
        };
        let Some(plane) = glue.plane.get() else {
            return Seq::NONE;
        };
        let mut wait = Seq::NONE;
        for copy in late {
            let to = payload::Addressed {
                regular: true,
                groups: &[],
                routes_at,
                late_for: Some(&copy.client_id),
            };
            wait = wait.max(glue.send_copy(plane, message, copy.to, &to, now));
            self.forwards
                .sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(
                client_id = %copy.client_id,
                node = copy.to,
                topic = %message.topic,
                "late copy sent on to the session's new owner"
            );
        }
        wait
    }
}

/// Wakes the waiting acknowledgement once the store made the sequence number durable.
pub struct Durable(std::sync::Mutex<Option<oneshot::Sender<()>>>);

impl Durable {
    pub fn new(tx: oneshot::Sender<()>) -> Durable {
        Durable(std::sync::Mutex::new(Some(tx)))
    }
}

impl Wakeup for Durable {
    fn wake(&self) {
        if let Some(tx) = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            let _ = tx.send(());
        }
    }
}

impl DataSink for BrokerSink {
    fn deliver(&self, from: NodeId, run: u64, seq: u64, payload: Bytes) -> Settled {
        let now = Instant::now();
        let forwarded = match payload::decode(payload, now) {
            Ok(forwarded) => forwarded,
            Err(error) => {
                tracing::warn!(from, %error, "cluster: a forwarded message was dropped");
                return Box::pin(async {});
            }
        };
        let qos = forwarded.message.qos;
        let mut wait = match &forwarded.late_for {
            // A copy another node sent on for one moved session (never sent on again).
            Some(client_id) => {
                self.broker
                    .publish_late(client_id, forwarded.message, now)
                    .1
            }
            None => {
                // Noted with the delivery, which the export of a moved session does not
                // run beside (`flush::export_forwarding`).
                if let Some(id) = forwarded.message.cluster_id.as_deref()
                    && id.node == from
                {
                    self.reached.note(id);
                }
                // Copies for sessions moved from here (an address is kept, and the session
                // exported, while no delivery runs: `flush::export_forwarding`).
                let late = if forwarded.regular {
                    self.send_late(from, &forwarded.message, forwarded.routes_at, now)
                } else {
                    Seq::NONE
                };
                let (_, routed) = self.broker.publish_from_cluster(
                    forwarded.message,
                    forwarded.regular,
                    &forwarded.groups,
                    now,
                );
                routed.max(late)
            }
        };
        // A QoS 1/2 message's receipt goes in the same commit as its deliveries (submitted
        // after them): after a restart, what the origin sends again is not delivered twice.
        if qos != QoS::AtMostOnce
            && let Some(persistence) = &self.persistence
        {
            wait = wait.max(persistence.submit(Change::ForwardReceived {
                origin: from,
                run,
                seq,
            }));
        }
        match &self.persistence {
            Some(persistence) if wait != Seq::NONE => {
                let (tx, rx) = oneshot::channel();
                persistence
                    .wake_when_durable(wait, Arc::new(Durable(std::sync::Mutex::new(Some(tx)))));
                Box::pin(async move {
                    let _ = rx.await;
                })
            }
            _ => Box::pin(async {}),
        }
    }
}
