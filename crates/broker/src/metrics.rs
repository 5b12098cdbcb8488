//! Counters of the broker core. Cheap to bump from any task; read as a snapshot by the server for
//! logs, `$SYS` topics and the metrics endpoint.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// The counters at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct MetricsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Metrics {
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    /// CONNECTs accepted (CONNACK 0).
    connections_accepted,
    /// CONNECTs refused with a CONNACK error.
    connections_refused,
    /// PUBLISH packets received from clients.
    messages_received,
    /// Deliveries pushed into session queues.
    messages_queued,
    /// PUBLISH packets sent to clients.
    messages_sent,
    /// Deliveries dropped because a session queue was full.
    messages_dropped_queue_full,
    /// Messages dropped because their expiry ran out before delivery.
    messages_dropped_expired,
    /// Messages dropped because they exceed the client's maximum packet size.
    messages_dropped_too_large,
    /// QoS 0 messages not queued for offline sessions.
    messages_dropped_offline_qos0,
    /// Messages queued or in flight for a session that were not sent to the client that took it
    /// up, because that client may not read their topic.
    messages_dropped_denied,
    /// Published messages refused by the authoriser or the topic limits.
    messages_refused,
    /// QoS 1/2 PUBLISH packets refused because they needed new durable work while the store
    /// took none (disk full or failing): MQTT 5 PUBACK/PUBREC 0x97, 3.x not acknowledged.
    messages_refused_storage_full,
    /// QoS 0 retained messages forwarded without replacing the retained message, because
    /// the store took no new work.
    retained_dropped_storage_full,
    /// Subscriptions of stored sessions refused because the store took no new work.
    subscriptions_refused_storage_full,
    /// A gauge, not a counter: 1 while the store refuses new durable work (free disk space
    /// below `min_free_disk`, or commits failing), 0 otherwise. It clears itself; the server
    /// updates it at least every second, and the store logs each change.
    storage_alarm,
    /// Wills published.
    wills_published,
    /// Sessions that ended by expiry.
    sessions_expired,
}

impl Metrics {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
