//! Bridges (issue 15): Tern connects to another broker as a client and carries chosen topics
//! in either direction. The local side is an in-process MQTT 5 client of the broker core
//! ([`local`]): its persistent session is the bridge's bounded, stored queue, and every rule
//! of the core (durability, QoS flows, limits, access rules) holds for bridged traffic. The
//! remote side is tern-client; [`run`] ties the acknowledgements of both sides together.

mod config;
mod local;
mod mapping;
mod remote;
mod run;
mod status;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_broker::Broker;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{
    BridgeConfig, BridgeDirection, BridgeProtocol, BridgeTls, TopicRule, local_client_id,
    validate_all,
};
pub use status::{BridgeSnapshot, BridgeStatus};

/// How long a reload waits for a changed or removed bridge to stop before its successor
/// starts (a successor that came earlier would take the session from it).
const RESTART_WAIT: Duration = Duration::from_secs(3);

/// The bridges of a server: their live state from the start (metrics and the admin API read
/// it), their tasks once the server runs. A reload applies a changed `[[bridges]]`
/// ([`Bridges::apply`]).
#[derive(Clone)]
pub struct Bridges {
    broker: Arc<Broker>,
    set: Arc<Mutex<BridgeSet>>,
}

#[derive(Default)]
struct BridgeSet {
    entries: Vec<Entry>,
    /// Between [`Bridges::start`] and [`Bridges::stop`]: new bridges start at once.
    running: bool,
}

struct Entry {
    config: BridgeConfig,
    status: Arc<BridgeStatus>,
    /// The bridge's task, while it runs.
    task: Option<Running>,
}

/// A running bridge's task and the signal that stops it.
struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops the task and waits for it, at most `wait`.
    async fn stop(self, wait: Duration) -> bool {
        let _ = self.stop.send(true);
        tokio::time::timeout(wait, self.task).await.is_ok()
    }
}

impl Bridges {
    pub(crate) fn new(configs: &[BridgeConfig], broker: &Arc<Broker>) -> Bridges {
        let bridges = Bridges {
            broker: broker.clone(),
            set: Arc::default(),
        };
        bridges.lock().entries = configs.iter().map(|c| bridges.entry(c)).collect();
        bridges
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BridgeSet> {
        self.set
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn entry(&self, config: &BridgeConfig) -> Entry {
        Entry {
            config: config.clone(),
            status: Arc::new(BridgeStatus::new(
                &config.name,
                config.address_list(),
                self.broker.clone(),
            )),
            task: None,
        }
    }

    /// Every bridge's state now, in the configuration's order.
    pub fn snapshots(&self) -> Vec<BridgeSnapshot> {
        self.lock()
            .entries
            .iter()
            .map(|entry| entry.status.snapshot())
            .collect()
    }

    /// Starts a task per bridge (after the broker is up).
    pub(crate) fn start(&self) {
        let mut set = self.lock();
        set.running = true;
        for entry in &mut set.entries {
            self.spawn(entry);
        }
    }

    fn spawn(&self, entry: &mut Entry) {
        if entry.task.is_some() {
            return;
        }
        let (stop, stopped) = watch::channel(false);
        let bridge = run::Bridge::new(
            entry.config.clone(),
            self.broker.clone(),
            entry.status.clone(),
        );
        entry.task = Some(Running {
            stop,
            task: tokio::spawn(bridge.run(stopped)),
        });
    }

    /// Stops every bridge (each disconnects both sides normally; its local session stays)
    /// and waits for them, at most `grace`.
    pub(crate) async fn stop(&self, grace: Duration) {
        let running: Vec<Running> = {
            let mut set = self.lock();
            set.running = false;
            set.entries
                .iter_mut()
                .filter_map(|e| e.task.take())
                .collect()
        };
        let all = futures_util::future::join_all(running.into_iter().map(|r| r.stop(grace)));
        if all.await.contains(&false) {
            tracing::warn!("bridges still stopping at the end of the grace period");
        }
    }

    /// A reload's `[[bridges]]`: a bridge whose configuration changed is stopped and started
    /// again with the new one (its counters start again), a new one is started, a removed one
    /// stopped (its session here stays, with what was queued for it). Returns the names of
    /// the bridges started, stopped or restarted.
    pub(crate) async fn apply(&self, configs: &[BridgeConfig]) -> Vec<String> {
        let (stopping, changed) = {
            let mut set = self.lock();
            let mut old: Vec<Entry> = std::mem::take(&mut set.entries);
            let mut changed = Vec::new();
            let mut entries = Vec::with_capacity(configs.len());
            for config in configs {
                match old.iter().position(|e| e.config == *config) {
                    Some(index) => entries.push(old.swap_remove(index)),
                    None => {
                        changed.push(config.name.clone());
                        entries.push(self.entry(config));
                    }
                }
            }
            for entry in &old {
                if !changed.contains(&entry.config.name) {
                    changed.push(entry.config.name.clone());
                }
            }
            set.entries = entries;
            let stopping: Vec<Running> = old.into_iter().filter_map(|e| e.task).collect();
            (stopping, changed)
        };
        let stopped =
            futures_util::future::join_all(stopping.into_iter().map(|r| r.stop(RESTART_WAIT)));
        if stopped.await.contains(&false) {
            tracing::warn!("a bridge did not stop in time; its successor starts all the same");
        }
        let mut set = self.lock();
        if set.running {
            let entries = std::mem::take(&mut set.entries);
            let mut entries = entries;
            for entry in &mut entries {
                self.spawn(entry);
            }
            set.entries = entries;
        }
        changed
    }
}
