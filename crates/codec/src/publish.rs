//! PUBLISH (section 3.3) and its acknowledgements PUBACK, PUBREC, PUBREL and PUBCOMP (3.4-3.7).

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::packet::{Packet, PacketType};
use crate::properties::{Properties, PropertyPlace};
use crate::qos::{ProtocolVersion, QoS};
use crate::reason::ReasonCode;
use crate::string::{MAX_STRING_LEN, MqttStr};
use crate::topic::validate_topic_name;
use crate::varint::{MAX_VARINT, put_varint, varint_len};
use crate::wire::{Reader, put_string, string_len};

/// PUBLISH: an application message on its way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in MQTT 5 when a topic alias stands for it.
    pub topic: MqttStr,
    /// 0 at QoS 0, non-zero otherwise.
    pub packet_id: u16,
    pub properties: Properties,
    pub payload: Bytes,
}

impl Publish {
    pub(crate) fn flags(&self) -> u8 {
        (u8::from(self.dup) << 3) | (self.qos.as_u8() << 1) | u8::from(self.retain)
    }

    /// `flags` were checked with the fixed header: QoS is 0-2 and DUP is clear at QoS 0.
    ///
    /// The hot path of a broker. It returns `Packet::decode`'s own result type, built in one
    /// expression, so that the packet (several hundred bytes, most of them `Properties`) is
    /// written once, in place, rather than moved through a `Result<Publish, _>` and a `Packet`.
    #[inline]
    pub(crate) fn decode(
        flags: u8,
        mut r: Reader,
        version: ProtocolVersion,
    ) -> Result<Option<Packet>, DecodeError> {
        let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQos)?;
        let dup = flags & 0b1000 != 0;
        let retain = flags & 1 != 0;
        let (topic, valid_topic) = r.topic_name("topic name")?;
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            match r.u16("packet identifier")? {
                0 => return Err(DecodeError::ZeroPacketId(PacketType::Publish)),
                id => id,
            }
        };
        // 3.x, or 5.0 with a property length of 0 (a single zero byte): no properties.
        if !version.is_v5() || r.skip_empty_properties() {
            if !valid_topic {
                if version.is_v5() && topic.is_empty() {
                    // No properties, so no topic alias (section 3.3.2.3.4).
                    return Err(DecodeError::EmptyTopicWithoutAlias);
                }
                // Non-empty [MQTT-4.7.3-1], no wildcard [MQTT-3.3.2-2].
                validate_topic_name(&topic)?;
            }
            return Ok(Some(Packet::Publish(Publish {
                dup,
                qos,
                retain,
                topic,
                packet_id,
                properties: Properties::default(),
                payload: r.rest(),
            })));
        }
        let properties = Properties::decode(&mut r, PropertyPlace::Packet(PacketType::Publish))?;
        if !valid_topic {
            if !topic.is_empty() {
                validate_topic_name(&topic)?;
            } else if properties.topic_alias.is_none() {
                return Err(DecodeError::EmptyTopicWithoutAlias);
            }
        }
        Ok(Some(Packet::Publish(Publish {
            dup,
            qos,
            retain,
            topic,
            packet_id,
            properties,
            payload: r.rest(),
        })))
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let mut len = string_len(&self.topic) + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            if self.packet_id == 0 {
                return Err(EncodeError::ZeroPacketId(PacketType::Publish));
            }
            len += 2;
        }
        if version.is_v5() {
            self.properties
                .check(PropertyPlace::Packet(PacketType::Publish))?;
            len += self.properties.encoded_len();
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        put_string(buf, &self.topic);
        if self.qos != QoS::AtMostOnce {
            buf.put_u16(self.packet_id);
        }
        if version.is_v5() {
            self.properties.encode(buf);
        }
        buf.put_slice(&self.payload);
    }
}

/// A PUBLISH without properties, borrowing its topic and payload: what a broker forwards to
/// most subscribers, encoded without building a [`Publish`] (and so without taking a share of
/// the message's buffers, which other threads are sharing at the same time).
#[derive(Debug, Clone, Copy)]
pub struct PlainPublish<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Not empty (no topic alias stands for it here).
    pub topic: &'a str,
    /// 0 at QoS 0, non-zero otherwise.
    pub packet_id: u16,
    pub payload: &'a [u8],
}

impl PlainPublish<'_> {
    fn remaining_len(&self, version: ProtocolVersion) -> usize {
        let mut len = 2 + self.topic.len() + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            len += 2;
        }
        if version.is_v5() {
            // Property Length 0.
            len += 1;
        }
        len
    }

    /// Bytes the packet takes on the wire in `version`.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let remaining = self.checked_remaining_len(version)?;
        Ok(1 + varint_len(remaining as u32) + remaining)
    }

    fn checked_remaining_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if self.qos != QoS::AtMostOnce && self.packet_id == 0 {
            return Err(EncodeError::ZeroPacketId(PacketType::Publish));
        }
        let remaining = self.remaining_len(version);
        if remaining > MAX_VARINT as usize || self.topic.len() > MAX_STRING_LEN {
            return Err(EncodeError::PacketTooLarge(PacketType::Publish));
        }
        Ok(remaining)
    }

    /// Appends the packet to `buf`: the same bytes as [`Packet::encode`] of the equivalent
    /// [`Publish`] with empty properties.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let remaining = self.checked_remaining_len(version)?;
        buf.reserve(1 + varint_len(remaining as u32) + remaining);
        let flags = (u8::from(self.dup) << 3) | (self.qos.as_u8() << 1) | u8::from(self.retain);
        buf.put_u8(((PacketType::Publish as u8) << 4) | flags);
        put_varint(buf, remaining as u32);
        buf.put_u16(self.topic.len() as u16);
        buf.put_slice(self.topic.as_bytes());
        if self.qos != QoS::AtMostOnce {
            buf.put_u16(self.packet_id);
        }
        if version.is_v5() {
            buf.put_u8(0);
        }
        buf.put_slice(self.payload);
        Ok(())
    }
}

/// The shape shared by PUBACK, PUBREC, PUBREL and PUBCOMP: a packet identifier and, in MQTT 5, a
/// reason code and properties (both left out on the wire when they say nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: u16,
    /// Always `Success` in 3.x, which cannot carry another.
    pub reason_code: ReasonCode,
    pub properties: Properties,
}

impl Ack {
    /// A plain acknowledgement of `packet_id`.
    pub fn new(packet_id: u16) -> Ack {
        Ack {
            packet_id,
            reason_code: ReasonCode::Success,
            properties: Properties::default(),
        }
    }

    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Ack, DecodeError> {
        let packet = r.packet();
        let packet_id = match r.u16("packet identifier")? {
            0 => return Err(DecodeError::ZeroPacketId(packet)),
            id => id,
        };
        let mut ack = Ack::new(packet_id);
        if version.is_v5() && !r.is_empty() {
            ack.reason_code = ack_reason(packet, r.u8("reason code")?)?;
            if !r.is_empty() {
                ack.properties = Properties::decode(&mut r, PropertyPlace::Packet(packet))?;
            }
        }
        r.finish()?;
        Ok(ack)
    }

    /// The same as [`Ack::decode`] for a body of at most three bytes (packet identifier and, in
    /// MQTT 5, a reason code), read from the caller's buffer: nothing in it needs to outlive it.
    /// Builds `Packet::decode`'s result in place.
    pub(crate) fn decode_short(
        packet: PacketType,
        body: &[u8],
        version: ProtocolVersion,
    ) -> Result<Option<Packet>, DecodeError> {
        let [high, low, rest @ ..] = body else {
            return Err(DecodeError::Truncated {
                packet,
                field: "packet identifier",
            });
        };
        let packet_id = match u16::from_be_bytes([*high, *low]) {
            0 => return Err(DecodeError::ZeroPacketId(packet)),
            id => id,
        };
        let reason_code = match rest {
            [] => ReasonCode::Success,
            [code] if version.is_v5() => ack_reason(packet, *code)?,
            extra => {
                return Err(DecodeError::TrailingBytes {
                    packet,
                    extra: extra.len(),
                });
            }
        };
        let ack = Ack {
            packet_id,
            reason_code,
            properties: Properties::default(),
        };
        Ok(Some(match packet {
            PacketType::PubAck => Packet::PubAck(ack),
            PacketType::PubRec => Packet::PubRec(ack),
            PacketType::PubRel => Packet::PubRel(ack),
            _ => Packet::PubComp(ack),
        }))
    }

    pub(crate) fn body_len(
        &self,
        packet: PacketType,
        version: ProtocolVersion,
    ) -> Result<usize, EncodeError> {
        if self.packet_id == 0 {
            return Err(EncodeError::ZeroPacketId(packet));
        }
        if !version.is_v5() {
            return Ok(2);
        }
        if !self.reason_code.allowed_in(packet) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet,
                code: self.reason_code,
            });
        }
        self.properties.check(PropertyPlace::Packet(packet))?;
        Ok(if !self.properties.is_empty() {
            3 + self.properties.encoded_len()
        } else if self.reason_code != ReasonCode::Success {
            3
        } else {
            2
        })
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        buf.put_u16(self.packet_id);
        if !version.is_v5() {
            return;
        }
        let has_properties = !self.properties.is_empty();
        if has_properties || self.reason_code != ReasonCode::Success {
            buf.put_u8(self.reason_code.as_u8());
        }
        if has_properties {
            self.properties.encode(buf);
        }
    }
}

/// The reason code `code` of an acknowledgement of type `packet`, if table 2-6 allows it there.
fn ack_reason(packet: PacketType, code: u8) -> Result<ReasonCode, DecodeError> {
    ReasonCode::from_u8(code)
        .filter(|c| c.allowed_in(packet))
        .ok_or(DecodeError::InvalidReasonCode { packet, code })
}
