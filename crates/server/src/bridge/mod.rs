//! Bridges (issue 15): Tern connects to another broker as a client and carries chosen topics
//! in either direction. The local side is an in-process MQTT 5 client of the broker core
//! ([`local`]): its persistent session is the bridge's bounded, stored queue, and every rule
//! of the core (durability, QoS flows, limits, access rules) holds for bridged traffic. The
//! remote side is tern-client; [`run`] ties the acknowledgements of both sides together.

mod config;
mod local;
mod mapping;
mod run;
mod status;

use std::sync::Arc;
use std::time::Duration;

use tern_broker::Broker;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{
    BridgeConfig, BridgeDirection, BridgeProtocol, BridgeTls, TopicRule, local_client_id,
    validate_all,
};
pub use status::{BridgeSnapshot, BridgeStatus};

/// The bridges of a server: their live state from the start (metrics and the admin API read
/// it), their tasks once running.
#[derive(Clone)]
pub struct Bridges {
    statuses: Arc<[Arc<BridgeStatus>]>,
}

/// The running bridges' tasks, stopped by [`RunningBridges::stop`].
pub(crate) struct RunningBridges {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Bridges {
    pub(crate) fn new(configs: &[BridgeConfig], broker: &Arc<Broker>) -> Bridges {
        Bridges {
            statuses: configs
                .iter()
                .map(|config| {
                    Arc::new(BridgeStatus::new(
                        &config.name,
                        config.address_list(),
                        broker.clone(),
                    ))
                })
                .collect(),
        }
    }

    /// Every bridge's state now, in the configuration's order.
    pub fn snapshots(&self) -> Vec<BridgeSnapshot> {
        self.statuses
            .iter()
            .map(|status| status.snapshot())
            .collect()
    }

    /// Starts a task per bridge (after the broker is up).
    pub(crate) fn start(&self, configs: &[BridgeConfig], broker: &Arc<Broker>) -> RunningBridges {
        let (stop, stopped) = watch::channel(false);
        let tasks = configs
            .iter()
            .zip(self.statuses.iter())
            .map(|(config, status)| {
                let bridge = run::Bridge::new(config.clone(), broker.clone(), status.clone());
                tokio::spawn(bridge.run(stopped.clone()))
            })
            .collect();
        RunningBridges { stop, tasks }
    }
}

impl RunningBridges {
    /// Stops every bridge (each disconnects both sides normally; its local session stays)
    /// and waits for them, at most `grace`.
    pub(crate) async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("bridges still stopping at the end of the grace period");
        }
    }
}
