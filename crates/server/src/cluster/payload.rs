//! A message as it travels from one node to another: which subscriptions it is for, who
//! published it, and the message itself as an MQTT 5 PUBLISH (the codec's encoding, so
//! every property the message carries crosses unchanged; the expiry travels as what is left
//! of it).
//!
//! Layout: flags (u8: bit 0 plain subscriptions, bit 1 the route index follows, bit 2 a late
//! copy), the log index of the route table the origin planned the message with (u64), for a
//! late copy the client id it is for (u16 length, UTF-8), the number of shared groups (u16)
//! and each group's name and filter (u16 length, UTF-8), the publisher's client id (u16
//! length; 0xFFFF: none), then the PUBLISH packet, then the message's cluster id if it has
//! one (node, run, number: three u64). A copy stored by an older version (no bit 1: kept
//! in an outbox across an upgrade) reads as planned at index 0.

use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tern_broker::{ClusterMessageId, Message};
use tern_codec::{MqttStr, Packet, ProtocolVersion, Publish, QoS};

/// A forwarded message, decoded.
#[derive(Debug)]
pub struct Forwarded {
    pub regular: bool,
    pub groups: Vec<(String, String)>,
    /// The log index of the route table its origin planned it with.
    pub routes_at: u64,
    /// A late copy: for this client id's session only (see `forwards`).
    pub late_for: Option<String>,
    pub message: Message,
}

/// Whom a copy is for, besides the message.
pub struct Addressed<'a> {
    /// The plain subscriptions on the receiving node.
    pub regular: bool,
    /// One member of each of these shared groups there.
    pub groups: &'a [(String, String)],
    /// The log index of the route table the message was planned with.
    pub routes_at: u64,
    /// A late copy, for this client id's session there only.
    pub late_for: Option<&'a str>,
}

const ROUTES_AT: u8 = 0b10;
const LATE: u8 = 0b100;

/// Why a payload could not be read (a peer of another version, damage): dropped and logged.
#[derive(Debug, thiserror::Error)]
#[error("bad forwarded message: {0}")]
pub struct PayloadError(&'static str);

const NO_PUBLISHER: u16 = u16::MAX;

/// Encodes a message for another node.
pub fn encode(message: &Message, to: &Addressed, now: Instant) -> Result<Bytes, PayloadError> {
    let mut out = BytesMut::with_capacity(64 + message.topic.len() + message.payload.len());
    let late = if to.late_for.is_some() { LATE } else { 0 };
    out.put_u8(u8::from(to.regular) | ROUTES_AT | late);
    out.put_u64(to.routes_at);
    if let Some(client_id) = to.late_for {
        put_str(&mut out, client_id)?;
    }
    out.put_u16(u16::try_from(to.groups.len()).map_err(|_| PayloadError("too many groups"))?);
    for (name, filter) in to.groups {
        put_str(&mut out, name)?;
        put_str(&mut out, filter)?;
    }
    match &message.publisher {
        Some(publisher) => put_str(&mut out, publisher.as_str())?,
        None => out.put_u16(NO_PUBLISHER),
    }
    let mut properties = message.properties.as_deref().cloned().unwrap_or_default();
    properties.message_expiry_interval = message.remaining_expiry(now);
    let publish = Publish {
        dup: false,
        qos: message.qos,
        retain: message.retain,
        topic: message.topic.clone(),
        packet_id: u16::from(message.qos != QoS::AtMostOnce),
        properties,
        payload: message.payload.clone(),
    };
    Packet::Publish(publish)
        .encode(ProtocolVersion::V5, &mut out)
        .map_err(|_| PayloadError("message cannot be encoded"))?;
    if let Some(id) = message.cluster_id.as_deref() {
        out.put_u64(id.node);
        out.put_u64(id.run);
        out.put_u64(id.number);
    }
    Ok(out.freeze())
}

/// Decodes what [`encode`] wrote.
pub fn decode(payload: Bytes, now: Instant) -> Result<Forwarded, PayloadError> {
    let mut body = payload;
    if body.remaining() < 3 {
        return Err(PayloadError("short"));
    }
    let flags = body.get_u8();
    let regular = flags & 1 == 1;
    let routes_at = if flags & ROUTES_AT != 0 {
        if body.remaining() < 8 {
            return Err(PayloadError("short"));
        }
        body.get_u64()
    } else {
        0
    };
    let late_for = if flags & LATE != 0 {
        Some(get_str(&mut body)?.ok_or(PayloadError("late copy's client id"))?)
    } else {
        None
    };
    if body.remaining() < 2 {
        return Err(PayloadError("short"));
    }
    let count = body.get_u16();
    let mut groups = Vec::with_capacity(usize::from(count).min(64));
    for _ in 0..count {
        let name = get_str(&mut body)?.ok_or(PayloadError("group name"))?;
        let filter = get_str(&mut body)?.ok_or(PayloadError("group filter"))?;
        groups.push((name, filter));
    }
    let publisher = get_str(&mut body)?
        .map(|id| MqttStr::try_from(id.as_str()).map_err(|_| PayloadError("publisher")))
        .transpose()?;
    let mut packet = BytesMut::from(body);
    let publish = match Packet::decode(&mut packet, ProtocolVersion::V5, u32::MAX) {
        Ok(Some(Packet::Publish(publish))) => publish,
        _ => return Err(PayloadError("not a PUBLISH")),
    };
    let cluster_id = match packet.remaining() {
        0 => None,
        24 => Some(Box::new(ClusterMessageId {
            node: packet.get_u64(),
            run: packet.get_u64(),
            number: packet.get_u64(),
            planned_at: routes_at,
        })),
        _ => return Err(PayloadError("bytes after the message")),
    };
    let mut message = Message::from_publish(publish, publisher, now);
    message.cluster_id = cluster_id;
    Ok(Forwarded {
        regular,
        groups,
        routes_at,
        late_for,
        message,
    })
}

fn put_str(out: &mut BytesMut, text: &str) -> Result<(), PayloadError> {
    let len = u16::try_from(text.len())
        .ok()
        .filter(|len| *len != NO_PUBLISHER)
        .ok_or(PayloadError("string too long"))?;
    out.put_u16(len);
    out.put_slice(text.as_bytes());
    Ok(())
}

fn get_str(body: &mut Bytes) -> Result<Option<String>, PayloadError> {
    if body.remaining() < 2 {
        return Err(PayloadError("short string"));
    }
    let len = body.get_u16();
    if len == NO_PUBLISHER {
        return Ok(None);
    }
    let len = usize::from(len);
    if body.remaining() < len {
        return Err(PayloadError("short string"));
    }
    let text = body.split_to(len);
    String::from_utf8(text.to_vec())
        .map(Some)
        .map_err(|_| PayloadError("string not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_crosses_unchanged() {
        let now = Instant::now();
        let properties = tern_codec::Properties {
            content_type: Some(MqttStr::try_from("text/plain").unwrap()),
            user_properties: vec![(
                MqttStr::try_from("k").unwrap(),
                MqttStr::try_from("v").unwrap(),
            )],
            ..Default::default()
        };
        let message = Message {
            cluster_id: Some(Box::new(ClusterMessageId {
                node: 3,
                run: 1_700_000_000,
                number: 42,
                planned_at: 17,
            })),
            topic: MqttStr::try_from("a/b").unwrap(),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Some(std::sync::Arc::new(properties)),
            expires_at: Some(now + std::time::Duration::from_secs(30)),
            publisher: Some(MqttStr::try_from("pub-1").unwrap()),
            id: 0,
        };
        let groups = vec![("g".to_owned(), "a/+".to_owned())];
        let to = Addressed {
            regular: true,
            groups: &groups,
            routes_at: 17,
            late_for: None,
        };
        let bytes = encode(&message, &to, now).unwrap();
        let back = decode(bytes, now).unwrap();
        assert!(back.regular);
        assert_eq!(back.groups, groups);
        assert_eq!((back.routes_at, back.late_for), (17, None));
        assert_eq!(back.message.topic, message.topic);
        assert_eq!(back.message.payload, message.payload);
        assert_eq!(back.message.qos, message.qos);
        assert!(back.message.retain);
        assert_eq!(back.message.publisher, message.publisher);
        assert_eq!(back.message.properties, message.properties);
        assert_eq!(back.message.expires_at, message.expires_at);
        assert_eq!(back.message.cluster_id, message.cluster_id);
        let planned_at = back.message.cluster_id.as_deref().map(|id| id.planned_at);
        assert_eq!(planned_at, Some(17), "the route index the copy carries");
        // Without an id, none comes back.
        let plain = Message {
            cluster_id: None,
            ..message.clone()
        };
        let back = decode(encode(&plain, &to, now).unwrap(), now).unwrap();
        assert_eq!(back.message.cluster_id, None);
        // A late copy names its client id.
        let late = Addressed {
            regular: true,
            groups: &[],
            routes_at: u64::MAX,
            late_for: Some("mover"),
        };
        let back = decode(encode(&message, &late, now).unwrap(), now).unwrap();
        assert_eq!(back.late_for.as_deref(), Some("mover"));
        assert_eq!((back.routes_at, back.groups.len()), (u64::MAX, 0));
        assert_eq!(back.message.payload, message.payload);
        // Damage is an error, never a panic.
        for cut in 0..40 {
            let bytes = encode(&message, &late, now).unwrap();
            assert!(decode(bytes.slice(..cut.min(bytes.len())), now).is_err());
        }
    }
}
