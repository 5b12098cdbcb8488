//! What a bridge's task tells the rest of the server while it runs: connected or not, the
//! messages and bytes carried each way, reconnections, the queue depth and the last error.
//! The metrics exposition and the admin API read it; only the bridge's task writes it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The live state of one bridge.
pub struct BridgeStatus {
    pub name: String,
    /// The broker, whose session of the bridge holds its queue.
    broker: Arc<tern_broker::Broker>,
    /// The remote addresses, in the order they are tried.
    pub addresses: Vec<String>,
    connected: AtomicBool,
    messages_out: AtomicU64,
    bytes_out: AtomicU64,
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    /// Messages a broker refused (an error PUBACK/PUBREC, or access rules here).
    messages_refused: AtomicU64,
    reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A copy of a bridge's state at one moment: what the admin API shows of it.
pub type BridgeSnapshot = tern_admin::BridgeInfo;

impl BridgeStatus {
    pub(crate) fn new(
        name: &str,
        addresses: Vec<String>,
        broker: Arc<tern_broker::Broker>,
    ) -> BridgeStatus {
        BridgeStatus {
            name: name.to_owned(),
            broker,
            addresses,
            connected: AtomicBool::new(false),
            messages_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            messages_refused: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Messages for the remote in the bridge's local session: queued plus in flight.
    pub fn queue_depth(&self) -> u64 {
        self.broker
            .session(&super::local_client_id(&self.name))
            .map_or(0, |session| {
                (session.queued_len() + session.inflight_len()) as u64
            })
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    pub(crate) fn carried_out(&self, bytes: usize) {
        self.messages_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn carried_in(&self, bytes: usize) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self) {
        self.messages_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// The bridge connected: the last error is over.
    pub(crate) fn clear_error(&self) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    pub(crate) fn set_error(&self, error: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(error);
    }

    pub fn snapshot(&self) -> BridgeSnapshot {
        BridgeSnapshot {
            name: self.name.clone(),
            addresses: self.addresses.clone(),
            connected: self.connected.load(Ordering::Relaxed),
            messages_out: self.messages_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            messages_in: self.messages_in.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            messages_refused: self.messages_refused.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            queue_depth: self.queue_depth(),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        }
    }
}
