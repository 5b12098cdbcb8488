//! Counters of the broker core, sharded by thread: each thread bumps the counters of its own
//! shard (chosen once per thread, round robin), a block of cache lines no other thread writes
//! while there are no more threads than shards, so no event bumps one atomic that every core
//! contends for. A snapshot sums the shards (read by the server for logs, `$SYS` topics and
//! the metrics endpoint); its figures are each exact, though not taken at one instant.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tern_codec::QoS;

/// Shards of the counters: threads beyond this many share a shard (still correct, only
/// contended). A power of two; 16 covers the worker threads of most machines plus the timer
/// and blocking threads.
const SHARDS: usize = 16;

/// Threads that have picked a shard so far (the next one takes this modulo [`SHARDS`]).
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard; `usize::MAX` until its first bump.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's shard index.
fn shard_index() -> usize {
    SHARD.with(|shard| {
        let index = shard.get();
        if index != usize::MAX {
            return index;
        }
        let index = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
        shard.set(index);
        index
    })
}

macro_rules! counters {
    ($($(#[$doc:meta])* $variant:ident => $name:ident,)*) => {
        /// A counter of the core (see [`Metrics::add`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Counter {
            $($(#[$doc])* $variant,)*
        }

        const COUNTERS: usize = [$(Counter::$variant),*].len();

        /// The counters at one moment (each summed over the shards).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct MetricsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
            /// PUBLISH packets received from clients, every QoS.
            pub messages_received: u64,
            /// PUBLISH packets sent to clients, every QoS.
            pub messages_sent: u64,
            /// A gauge, not a counter: 1 while the store refuses new durable work (free disk
            /// space below `min_free_disk`, or commits failing), 0 otherwise. It clears itself;
            /// the server updates it at least every second, and the store logs each change.
            pub storage_alarm: u64,
        }

        impl Metrics {
            pub fn snapshot(&self) -> MetricsSnapshot {
                let mut sums = [0u64; COUNTERS];
                for shard in self.shards.iter() {
                    for (sum, value) in sums.iter_mut().zip(&shard.0) {
                        *sum = sum.wrapping_add(value.load(Ordering::Relaxed));
                    }
                }
                let mut snapshot = MetricsSnapshot {
                    $($name: sums[Counter::$variant as usize],)*
                    messages_received: 0,
                    messages_sent: 0,
                    storage_alarm: self.storage_alarm.load(Ordering::Relaxed),
                };
                snapshot.messages_received = snapshot.received_qos0
                    + snapshot.received_qos1
                    + snapshot.received_qos2;
                snapshot.messages_sent =
                    snapshot.sent_qos0 + snapshot.sent_qos1 + snapshot.sent_qos2;
                snapshot
            }
        }
    };
}

counters! {
    /// CONNECTs accepted (CONNACK 0).
    ConnectionsAccepted => connections_accepted,
    /// CONNECTs refused with a CONNACK error.
    ConnectionsRefused => connections_refused,
    /// CONNECTs refused because the client did not prove who it is or may not connect
    /// (0x86 Bad user name or password, 0x87 Not authorized, 0x8C Bad authentication method;
    /// 3.x: 4, 5).
    AuthFailures => auth_failures,
    /// PUBLISH packets received from clients at QoS 0, 1, 2.
    ReceivedQos0 => received_qos0,
    ReceivedQos1 => received_qos1,
    ReceivedQos2 => received_qos2,
    /// Payload bytes of the PUBLISH packets received, by QoS.
    ReceivedBytesQos0 => received_bytes_qos0,
    ReceivedBytesQos1 => received_bytes_qos1,
    ReceivedBytesQos2 => received_bytes_qos2,
    /// PUBLISH packets sent to clients at QoS 0, 1, 2 (resends included).
    SentQos0 => sent_qos0,
    SentQos1 => sent_qos1,
    SentQos2 => sent_qos2,
    /// Payload bytes of the PUBLISH packets sent, by QoS.
    SentBytesQos0 => sent_bytes_qos0,
    SentBytesQos1 => sent_bytes_qos1,
    SentBytesQos2 => sent_bytes_qos2,
    /// Bytes read from and written to clients' connections (MQTT packets, after TLS and
    /// WebSocket framing are taken off; counted by the server).
    NetworkBytesReceived => network_bytes_received,
    NetworkBytesSent => network_bytes_sent,
    /// Deliveries pushed into session queues.
    MessagesQueued => messages_queued,
    /// Deliveries dropped because a session queue was full.
    MessagesDroppedQueueFull => messages_dropped_queue_full,
    /// Messages dropped because their expiry ran out before delivery.
    MessagesDroppedExpired => messages_dropped_expired,
    /// Messages dropped because they exceed the client's maximum packet size.
    MessagesDroppedTooLarge => messages_dropped_too_large,
    /// QoS 0 messages not queued for offline sessions.
    MessagesDroppedOfflineQos0 => messages_dropped_offline_qos0,
    /// Messages queued or in flight for a session that were not sent to the client that took it
    /// up, because that client may not read their topic.
    MessagesDroppedDenied => messages_dropped_denied,
    /// Published messages refused by the authoriser or the topic limits.
    MessagesRefused => messages_refused,
    /// QoS 1/2 PUBLISH packets refused because they needed new durable work while the store
    /// took none (disk full or failing): MQTT 5 PUBACK/PUBREC 0x97, 3.x not acknowledged.
    MessagesRefusedStorageFull => messages_refused_storage_full,
    /// QoS 1/2 PUBLISH packets refused because a copy would go to a cluster node whose
    /// outbox is full: MQTT 5 PUBACK/PUBREC 0x97, 3.x not acknowledged.
    MessagesRefusedClusterFull => messages_refused_cluster_full,
    /// QoS 0 retained messages forwarded without replacing the retained message, because
    /// the store took no new work.
    RetainedDroppedStorageFull => retained_dropped_storage_full,
    /// Subscriptions of stored sessions refused because the store took no new work.
    SubscriptionsRefusedStorageFull => subscriptions_refused_storage_full,
    /// Wills published.
    WillsPublished => wills_published,
    /// Sessions that ended by expiry.
    SessionsExpired => sessions_expired,
    /// Connections closed by an operator (the admin API's kick or session delete).
    ConnectionsKicked => connections_kicked,
    /// Cluster: copies of a moved session's messages its new owner dropped as second
    /// copies (the client had the message on its old connection, or the session holds it:
    /// a message that reached the session both ways while it moved).
    SecondCopiesDropped => second_copies_dropped,
}

/// One thread's counters, on cache lines of their own (128 bytes: two lines, as adjacent-line
/// prefetch pairs them).
#[repr(align(128))]
struct Shard([AtomicU64; COUNTERS]);

impl Default for Shard {
    fn default() -> Self {
        Shard(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// Live counters.
pub struct Metrics {
    shards: Box<[Shard; SHARDS]>,
    /// See [`MetricsSnapshot::storage_alarm`].
    pub(crate) storage_alarm: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            shards: Box::new(std::array::from_fn(|_| Shard::default())),
            storage_alarm: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}

impl Metrics {
    /// Adds `n` to `counter`, in this thread's shard.
    #[inline]
    pub fn add(&self, counter: Counter, n: u64) {
        self.shards[shard_index()].0[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to `counter`.
    #[inline]
    pub fn bump(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Counts a PUBLISH received from a client: one message and its payload bytes, by QoS.
    #[inline]
    pub(crate) fn received(&self, qos: QoS, payload: usize) {
        let (messages, bytes) = match qos {
            QoS::AtMostOnce => (Counter::ReceivedQos0, Counter::ReceivedBytesQos0),
            QoS::AtLeastOnce => (Counter::ReceivedQos1, Counter::ReceivedBytesQos1),
            QoS::ExactlyOnce => (Counter::ReceivedQos2, Counter::ReceivedBytesQos2),
        };
        let shard = &self.shards[shard_index()].0;
        shard[messages as usize].fetch_add(1, Ordering::Relaxed);
        shard[bytes as usize].fetch_add(payload as u64, Ordering::Relaxed);
    }

    /// Counts a PUBLISH sent to a client, by QoS.
    #[inline]
    pub(crate) fn sent(&self, qos: QoS, payload: usize) {
        let (messages, bytes) = match qos {
            QoS::AtMostOnce => (Counter::SentQos0, Counter::SentBytesQos0),
            QoS::AtLeastOnce => (Counter::SentQos1, Counter::SentBytesQos1),
            QoS::ExactlyOnce => (Counter::SentQos2, Counter::SentBytesQos2),
        };
        let shard = &self.shards[shard_index()].0;
        shard[messages as usize].fetch_add(1, Ordering::Relaxed);
        shard[bytes as usize].fetch_add(payload as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13: counters bumped from several threads sum to the total in the snapshot.
    #[test]
    fn shards_sum_across_threads() {
        let metrics = std::sync::Arc::new(Metrics::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let metrics = metrics.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        metrics.bump(Counter::MessagesQueued);
                        metrics.received(QoS::AtLeastOnce, 10);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.messages_queued, 4000);
        assert_eq!(snapshot.received_qos1, 4000);
        assert_eq!(snapshot.received_bytes_qos1, 40_000);
        assert_eq!(snapshot.messages_received, 4000);
    }
}
