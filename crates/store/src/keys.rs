//! The keyspaces of the store and how their keys are built and parsed. Per-session keys start
//! with the client identifier and a NUL byte (an MQTT string never contains U+0000), so one
//! session's entries are a contiguous, prefix-addressable range; numbers are big-endian so that
//! byte order is numeric order.

use tern_broker::persist::MessageId;
use tern_codec::MqttStr;

/// One keyspace (an LSM tree of its own inside the engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Space {
    /// `format_version` → u32 (big-endian).
    Meta,
    /// client id → expiry, online flag, offline-since.
    Sessions,
    /// client id NUL filter → subscription options and identifier.
    Subscriptions,
    /// client id NUL position (u64) → stored delivery.
    Queue,
    /// client id NUL packet id (u16) → send order, state, stored delivery.
    Inflight,
    /// client id NUL packet id (u16) → nothing but a format byte.
    InboundQos2,
    /// message id (u64) → message.
    Messages,
    /// topic → message.
    Retained,
    /// client id → delay and message.
    Wills,
    /// A cluster's outbox: peer (u64) run (u64) seq (u64) → format byte, forwarded payload.
    ClusterOutbox,
    /// A cluster's receipts: origin node (u64) → run (u64), seq (u64).
    ClusterReceived,
}

impl Space {
    pub(crate) const ALL: [Space; 11] = [
        Space::Meta,
        Space::Sessions,
        Space::Subscriptions,
        Space::Queue,
        Space::Inflight,
        Space::InboundQos2,
        Space::Messages,
        Space::Retained,
        Space::Wills,
        Space::ClusterOutbox,
        Space::ClusterReceived,
    ];

    /// The keyspace's name in the engine (and in error messages).
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Space::Meta => "meta",
            Space::Sessions => "sessions",
            Space::Subscriptions => "subscriptions",
            Space::Queue => "queue",
            Space::Inflight => "inflight",
            Space::InboundQos2 => "inbound_qos2",
            Space::Messages => "messages",
            Space::Retained => "retained",
            Space::Wills => "wills",
            Space::ClusterOutbox => "cluster_outbox",
            Space::ClusterReceived => "cluster_received",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

/// The key of the store format version in [`Space::Meta`].
pub(crate) const FORMAT_VERSION_KEY: &[u8] = b"format_version";

const SEPARATOR: u8 = 0;

/// The key of a session, or of its will.
pub(crate) fn client_key(client_id: &MqttStr) -> Vec<u8> {
    client_id.as_bytes().to_vec()
}

/// `client id NUL`: the prefix of every per-session entry of one client.
fn client_prefix(client_id: &MqttStr, extra: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + 1 + extra);
    key.extend_from_slice(client_id.as_bytes());
    key.push(SEPARATOR);
    key
}

pub(crate) fn subscription_key(client_id: &MqttStr, filter: &MqttStr) -> Vec<u8> {
    let mut key = client_prefix(client_id, filter.len());
    key.extend_from_slice(filter.as_bytes());
    key
}

pub(crate) fn queue_key(client_id: &MqttStr, position: u64) -> Vec<u8> {
    let mut key = client_prefix(client_id, 8);
    key.extend_from_slice(&position.to_be_bytes());
    key
}

/// The key of an outbound in-flight entry, or of an inbound QoS 2 packet id.
pub(crate) fn packet_key(client_id: &MqttStr, packet_id: u16) -> Vec<u8> {
    let mut key = client_prefix(client_id, 2);
    key.extend_from_slice(&packet_id.to_be_bytes());
    key
}

pub(crate) fn message_key(id: MessageId) -> [u8; 8] {
    id.to_be_bytes()
}

/// Splits a per-session key into the client id and what follows the separator.
pub(crate) fn split_client(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = key.iter().position(|&byte| byte == SEPARATOR)?;
    Some((&key[..at], &key[at + 1..]))
}

pub(crate) fn parse_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

pub(crate) fn parse_u16(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(bytes.try_into().ok()?))
}

/// The key of a forwarded message in [`Space::ClusterOutbox`]: peer, run, seq, big-endian (so
/// one peer's entries are a contiguous range in the order they were sent).
pub(crate) fn outbox_key(peer: u64, run: u64, seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&peer.to_be_bytes());
    key[8..16].copy_from_slice(&run.to_be_bytes());
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Reads an [`outbox_key`].
pub(crate) fn parse_outbox_key(key: &[u8]) -> Option<(u64, u64, u64)> {
    if key.len() != 24 {
        return None;
    }
    let number = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&key[at..at + 8]);
        u64::from_be_bytes(bytes)
    };
    Some((number(0), number(8), number(16)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_session_keys_split_back() {
        let client = MqttStr::from_static("sensor-1");
        let key = queue_key(&client, 0x0102);
        let (id, rest) = split_client(&key).unwrap();
        assert_eq!(id, b"sensor-1");
        assert_eq!(parse_u64(rest), Some(0x0102));

        let key = subscription_key(&client, &MqttStr::from_static("a/+/b"));
        assert_eq!(split_client(&key).unwrap().1, b"a/+/b");

        let key = packet_key(&client, 7);
        assert_eq!(parse_u16(split_client(&key).unwrap().1), Some(7));
        assert_eq!(parse_u16(b"abc"), None);
    }

    #[test]
    fn one_client_prefix_is_not_another_clients() {
        let short = queue_key(&MqttStr::from_static("ab"), 1);
        let long = queue_key(&MqttStr::from_static("abc"), 1);
        assert!(!long.starts_with(&short[..3]));
    }

    #[test]
    fn positions_sort_numerically() {
        let client = MqttStr::from_static("c");
        assert!(queue_key(&client, 255) < queue_key(&client, 256));
        assert!(message_key(9) < message_key(10));
    }

    #[test]
    fn outbox_keys_sort_by_peer_run_and_sequence() {
        let a = outbox_key(1, 5, 300);
        let b = outbox_key(1, 6, 2);
        let c = outbox_key(2, 0, 0);
        assert!(a < b && b < c);
        assert_eq!(parse_outbox_key(&b), Some((1, 6, 2)));
        assert_eq!(parse_outbox_key(&b[..23]), None);
    }
}
