//! SUBSCRIBE (section 3.8), SUBACK (3.9), UNSUBSCRIBE (3.10) and UNSUBACK (3.11).

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::packet::PacketType;
use crate::properties::{Properties, PropertyPlace};
use crate::qos::{ProtocolVersion, QoS};
use crate::reason::ReasonCode;
use crate::string::MqttStr;
use crate::topic::{split_shared, validate_topic_filter};
use crate::wire::{Reader, put_string, string_len};

/// Whether retained messages are sent when a subscription is made (section 3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not exist before.
    SendAtSubscribeIfNew = 1,
    /// 2: do not send them.
    DoNotSend = 2,
}

/// The Subscription Options byte. In 3.x only `qos` exists; the rest keep their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// The maximum QoS the subscriber accepts.
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    fn decode(byte: u8, version: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
        let reserved = if version.is_v5() {
            0b1100_0000
        } else {
            0b1111_1100
        };
        if byte & reserved != 0 {
            return Err(DecodeError::SubscriptionOptionsReserved);
        }
        let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::InvalidQos)?;
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: byte & 0b0100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        })
    }

    fn encode(&self, version: ProtocolVersion) -> u8 {
        if !version.is_v5() {
            return self.qos.as_u8();
        }
        self.qos.as_u8()
            | (u8::from(self.no_local) << 2)
            | (u8::from(self.retain_as_published) << 3)
            | ((self.retain_handling as u8) << 4)
    }
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: MqttStr,
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE: one or more topic filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub subscriptions: Vec<Subscription>,
}

fn read_packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16("packet identifier")? {
        0 => Err(DecodeError::ZeroPacketId(r.packet())),
        id => Ok(id),
    }
}

fn read_properties(r: &mut Reader, version: ProtocolVersion) -> Result<Properties, DecodeError> {
    if version.is_v5() {
        let place = PropertyPlace::Packet(r.packet());
        Properties::decode(r, place)
    } else {
        Ok(Properties::default())
    }
}

fn read_filter(r: &mut Reader) -> Result<MqttStr, DecodeError> {
    let filter = r.string("topic filter")?;
    validate_topic_filter(&filter)?;
    Ok(filter)
}

/// Packet identifier and (in MQTT 5) properties: the variable header all four packets share.
fn header_len(
    packet: PacketType,
    packet_id: u16,
    properties: &Properties,
    version: ProtocolVersion,
) -> Result<usize, EncodeError> {
    if packet_id == 0 {
        return Err(EncodeError::ZeroPacketId(packet));
    }
    if !version.is_v5() {
        return Ok(2);
    }
    properties.check(PropertyPlace::Packet(packet))?;
    Ok(2 + properties.encoded_len())
}

fn write_header(
    buf: &mut BytesMut,
    packet_id: u16,
    properties: &Properties,
    version: ProtocolVersion,
) {
    buf.put_u16(packet_id);
    if version.is_v5() {
        properties.encode(buf);
    }
}

impl Subscribe {
    pub(crate) fn decode(
        mut r: Reader,
        version: ProtocolVersion,
    ) -> Result<Subscribe, DecodeError> {
        let packet_id = read_packet_id(&mut r)?;
        let properties = read_properties(&mut r, version)?;
        let mut subscriptions = Vec::new();
        while !r.is_empty() {
            let filter = read_filter(&mut r)?;
            let options = SubscriptionOptions::decode(r.u8("subscription options")?, version)?;
            if options.no_local && split_shared(&filter).is_some() {
                return Err(DecodeError::NoLocalOnSharedSubscription);
            }
            subscriptions.push(Subscription { filter, options });
        }
        if subscriptions.is_empty() {
            return Err(DecodeError::NoTopicFilters(PacketType::Subscribe));
        }
        Ok(Subscribe {
            packet_id,
            properties,
            subscriptions,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let header = header_len(
            PacketType::Subscribe,
            self.packet_id,
            &self.properties,
            version,
        )?;
        let payload: usize = self
            .subscriptions
            .iter()
            .map(|s| string_len(&s.filter) + 1)
            .sum();
        Ok(header + payload)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        write_header(buf, self.packet_id, &self.properties, version);
        for subscription in &self.subscriptions {
            put_string(buf, &subscription.filter);
            buf.put_u8(subscription.options.encode(version));
        }
    }
}

/// SUBACK: one reason code per topic filter, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub properties: Properties,
    /// Granted QoS (0x00-0x02) or a failure. 3.x knows only 0x80 as failure.
    pub reason_codes: Vec<ReasonCode>,
}

impl SubAck {
    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
        let packet_id = read_packet_id(&mut r)?;
        let properties = read_properties(&mut r, version)?;
        let mut reason_codes = Vec::with_capacity(r.remaining());
        while !r.is_empty() {
            let code = r.u8("reason code")?;
            let reason = ReasonCode::from_u8(code)
                .filter(|c| c.allowed_in(PacketType::SubAck))
                .filter(|c| version.is_v5() || matches!(c.as_u8(), 0..=2 | 0x80))
                .ok_or(DecodeError::InvalidReasonCode {
                    packet: PacketType::SubAck,
                    code,
                })?;
            reason_codes.push(reason);
        }
        Ok(SubAck {
            packet_id,
            properties,
            reason_codes,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if let Some(&code) = self
            .reason_codes
            .iter()
            .find(|c| !c.allowed_in(PacketType::SubAck))
        {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet: PacketType::SubAck,
                code,
            });
        }
        let header = header_len(
            PacketType::SubAck,
            self.packet_id,
            &self.properties,
            version,
        )?;
        Ok(header + self.reason_codes.len())
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        write_header(buf, self.packet_id, &self.properties, version);
        for code in &self.reason_codes {
            let value = match code.as_u8() {
                value if version.is_v5() || value <= 2 => value,
                // 3.x has one failure code [MQTT-3.9.3-2].
                _ => 0x80,
            };
            buf.put_u8(value);
        }
    }
}

/// UNSUBSCRIBE: one or more topic filters to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<MqttStr>,
}

impl Unsubscribe {
    pub(crate) fn decode(
        mut r: Reader,
        version: ProtocolVersion,
    ) -> Result<Unsubscribe, DecodeError> {
        let packet_id = read_packet_id(&mut r)?;
        let properties = read_properties(&mut r, version)?;
        let mut filters = Vec::new();
        while !r.is_empty() {
            filters.push(read_filter(&mut r)?);
        }
        if filters.is_empty() {
            return Err(DecodeError::NoTopicFilters(PacketType::Unsubscribe));
        }
        Ok(Unsubscribe {
            packet_id,
            properties,
            filters,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let header = header_len(
            PacketType::Unsubscribe,
            self.packet_id,
            &self.properties,
            version,
        )?;
        Ok(header + self.filters.iter().map(string_len).sum::<usize>())
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        write_header(buf, self.packet_id, &self.properties, version);
        for filter in &self.filters {
            put_string(buf, filter);
        }
    }
}

/// UNSUBACK: in MQTT 5 one reason code per topic filter; in 3.x only the packet identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: Properties,
    /// Empty in 3.x.
    pub reason_codes: Vec<ReasonCode>,
}

impl UnsubAck {
    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
        let packet_id = read_packet_id(&mut r)?;
        let properties = read_properties(&mut r, version)?;
        let mut reason_codes = Vec::with_capacity(r.remaining());
        if version.is_v5() {
            while !r.is_empty() {
                let code = r.u8("reason code")?;
                let reason = ReasonCode::from_u8(code)
                    .filter(|c| c.allowed_in(PacketType::UnsubAck))
                    .ok_or(DecodeError::InvalidReasonCode {
                        packet: PacketType::UnsubAck,
                        code,
                    })?;
                reason_codes.push(reason);
            }
        }
        r.finish()?;
        Ok(UnsubAck {
            packet_id,
            properties,
            reason_codes,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let header = header_len(
            PacketType::UnsubAck,
            self.packet_id,
            &self.properties,
            version,
        )?;
        if !version.is_v5() {
            return Ok(header);
        }
        if let Some(&code) = self
            .reason_codes
            .iter()
            .find(|c| !c.allowed_in(PacketType::UnsubAck))
        {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet: PacketType::UnsubAck,
                code,
            });
        }
        Ok(header + self.reason_codes.len())
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        write_header(buf, self.packet_id, &self.properties, version);
        if version.is_v5() {
            for code in &self.reason_codes {
                buf.put_u8(code.as_u8());
            }
        }
    }
}
