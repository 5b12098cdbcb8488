//! A retained message as the cluster replicates it ([`RetainedMessage`]) and back.
//!
//! `properties` holds an MQTT 5 PUBLISH without payload (topic, QoS, RETAIN and every
//! property but the expiry), so all of a message's properties cross with the codec's own
//! encoding; the expiry is a wall-clock deadline (`expires_at_ms`), so a node that applies
//! the command later (a replay after a restart) does not restart the interval.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tern_broker::Message;
use tern_cluster::NodeId;
use tern_cluster::command::RetainedMessage;
use tern_codec::{Packet, ProtocolVersion, Publish, QoS};

/// The replicated form of a retained message set on this node.
pub fn to_replicated(message: &Message, origin: NodeId, now: Instant) -> Option<RetainedMessage> {
    let mut properties = message.properties.as_deref().cloned().unwrap_or_default();
    properties.message_expiry_interval = None;
    let header = Publish {
        dup: false,
        qos: message.qos,
        retain: true,
        topic: message.topic.clone(),
        packet_id: u16::from(message.qos != QoS::AtMostOnce),
        properties,
        payload: Bytes::new(),
    };
    let mut encoded = BytesMut::new();
    Packet::Publish(header)
        .encode(ProtocolVersion::V5, &mut encoded)
        .ok()?;
    let expires_at_ms = message.expires_at.map(|at| {
        let left = at.saturating_duration_since(now);
        wall_ms(SystemTime::now() + left)
    });
    Some(RetainedMessage {
        topic: message.topic.to_string(),
        payload: message.payload.to_vec(),
        qos: message.qos.as_u8(),
        properties: encoded.to_vec(),
        expires_at_ms,
        origin,
    })
}

/// The message a replicated retained message stands for; `None` if it cannot be read or has
/// expired.
pub fn from_replicated(retained: &RetainedMessage, now: Instant) -> Option<Message> {
    let mut encoded = BytesMut::from(&retained.properties[..]);
    let Ok(Some(Packet::Publish(mut publish))) =
        Packet::decode(&mut encoded, ProtocolVersion::V5, u32::MAX)
    else {
        return None;
    };
    publish.payload = Bytes::from(retained.payload.clone());
    publish.properties.message_expiry_interval = None;
    let mut message = Message::from_publish(publish, None, now);
    if let Some(deadline) = retained.expires_at_ms {
        let left = deadline.saturating_sub(wall_ms(SystemTime::now()));
        if left == 0 {
            return None;
        }
        message.expires_at = Some(now + Duration::from_millis(left));
    }
    Some(message)
}

fn wall_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
