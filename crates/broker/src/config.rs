//! The limits and switches of the broker core. Every field has a default that makes a useful local
//! broker; `docs/configuration.md` says what each one protects against.

use std::time::Duration;

use tern_codec::QoS;

/// Configuration of the broker core.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerConfig {
    /// Largest packet accepted from a client, fixed header included, in bytes.
    pub max_packet_size: u32,
    /// Outbound QoS 1 and 2 messages that may await acknowledgement per client at once.
    pub max_inflight: u16,
    /// Messages waiting in a session's queue (offline, or beyond the in-flight window) before
    /// the oldest is dropped.
    pub max_queued_messages: usize,
    /// Whether QoS 0 messages are queued for an offline persistent session.
    pub queue_qos0_offline: bool,
    /// Longest topic name or filter, in bytes.
    pub max_topic_length: usize,
    /// Most levels (`/`-separated parts) in a topic name or filter.
    pub max_topic_levels: usize,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// Highest QoS granted to subscriptions and accepted on PUBLISH.
    pub max_qos: QoS,
    /// Whether retained messages are kept.
    pub retain_available: bool,
    /// How long a 3.x persistent session (clean session 0) outlives its connection;
    /// `None` keeps it until the client cleans it.
    pub persistent_session_expiry: Option<Duration>,
    /// MQTT 5 Receive Maximum of the broker: QoS 2 messages a client may have awaiting PUBREL.
    pub receive_maximum: u16,
    /// Topic aliases an MQTT 5 client may use towards the broker (0: none).
    pub topic_alias_maximum: u16,
    /// Topic aliases the broker uses towards an MQTT 5 client that allows them (at most the
    /// client's Topic Alias Maximum; 0: none).
    pub outbound_topic_aliases: u16,
    /// Longest keep-alive granted to MQTT 5 clients, in seconds; a longer one (or 0) is replaced
    /// by this value in CONNACK (Server Keep Alive). 0: no maximum.
    pub max_keep_alive: u16,
    pub wildcard_subscriptions: bool,
    pub shared_subscriptions: bool,
    pub subscription_identifiers: bool,
    /// Subscriptions one session may hold (0: no limit).
    pub max_subscriptions_per_session: usize,
    /// Topics with a retained message (0: no limit).
    pub max_retained_messages: usize,
    /// Bytes of all retained payloads together (0: no limit).
    pub max_retained_bytes: usize,
    /// How long a QoS 1 delivery to a connected persistent session may wait for its
    /// subscriber's acknowledgement before it is stored; its publisher's PUBACK waits for one
    /// or the other. Zero stores every such delivery before the PUBACK.
    pub unstored_grace: Duration,
    /// What a PUBLISH the authorizer refuses does to a 3.x client, which has no negative
    /// acknowledgement: `false` acknowledges it and drops it (Mosquitto's behaviour), `true`
    /// closes the connection. (MQTT 5 clients get PUBACK/PUBREC 0x87 either way.)
    pub deny_publish_disconnects_v3: bool,
}

impl Default for BrokerConfig {
    fn default() -> BrokerConfig {
        BrokerConfig {
            max_packet_size: 1024 * 1024,
            max_inflight: 32,
            max_queued_messages: 1000,
            queue_qos0_offline: false,
            max_topic_length: 65_535,
            max_topic_levels: 128,
            connect_timeout: Duration::from_secs(10),
            max_qos: QoS::ExactlyOnce,
            retain_available: true,
            persistent_session_expiry: None,
            receive_maximum: 1024,
            topic_alias_maximum: 64,
            outbound_topic_aliases: 64,
            max_keep_alive: 0,
            wildcard_subscriptions: true,
            shared_subscriptions: true,
            subscription_identifiers: true,
            max_subscriptions_per_session: 0,
            max_retained_messages: 0,
            max_retained_bytes: 0,
            unstored_grace: Duration::from_millis(5),
            deny_publish_disconnects_v3: false,
        }
    }
}

impl BrokerConfig {
    /// Whether a topic name or filter is within the length and level limits.
    pub fn topic_within_limits(&self, topic: &str) -> bool {
        topic.len() <= self.max_topic_length
            && topic.bytes().filter(|&b| b == b'/').count() < self.max_topic_levels
    }
}
