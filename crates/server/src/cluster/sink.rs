//! Messages from other nodes into the core: routed to this node's subscribers and
//! acknowledged to the sender once their deliveries to stored sessions are durable.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tern_broker::persist::{Change, Persistence};
use tern_broker::{Broker, Seq, Wakeup};
use tern_cluster::NodeId;
use tern_cluster::link::{DataSink, Settled};
use tern_codec::QoS;
use tokio::sync::oneshot;

use super::payload;

pub struct BrokerSink {
    broker: Arc<Broker>,
    persistence: Option<Arc<dyn Persistence>>,
}

impl BrokerSink {
    pub fn new(broker: Arc<Broker>, persistence: Option<Arc<dyn Persistence>>) -> BrokerSink {
        BrokerSink {
            broker,
            persistence,
        }
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
        let (_, mut wait) = self.broker.publish_from_cluster(
            forwarded.message,
            forwarded.regular,
            &forwarded.groups,
            now,
        );
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
