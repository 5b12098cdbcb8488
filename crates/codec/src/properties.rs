//! MQTT 5 properties (section 2.2.2): one struct of typed fields, read and written in the order of
//! their identifiers, with the table of which packet may carry which.
//!
//! Decoding rejects an unknown identifier and a property the packet may not carry (Malformed
//! Packet), a second copy of a property that may appear once, and a value outside its range
//! (Protocol Error). User Property may repeat and keeps its order; Subscription Identifier may
//! repeat in PUBLISH only.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::packet::PacketType;
use crate::qos::QoS;
use crate::string::MqttStr;
use crate::varint::{MAX_VARINT, put_varint, varint_len};
use crate::wire::{Reader, binary_len, check_binary, put_binary, put_string, string_len};

/// The properties of one packet (or of the will in CONNECT). Absent properties are `None` or empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01; `true` when the payload is UTF-8 encoded character data.
    pub payload_format_indicator: Option<bool>,
    /// 0x02; seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03
    pub content_type: Option<MqttStr>,
    /// 0x08
    pub response_topic: Option<MqttStr>,
    /// 0x09
    pub correlation_data: Option<Bytes>,
    /// 0x0B; 1 to 268 435 455. Several only in a PUBLISH from the server.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11; seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12
    pub assigned_client_identifier: Option<MqttStr>,
    /// 0x13; seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15
    pub authentication_method: Option<MqttStr>,
    /// 0x16
    pub authentication_data: Option<Bytes>,
    /// 0x17
    pub request_problem_information: Option<bool>,
    /// 0x18; seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19
    pub request_response_information: Option<bool>,
    /// 0x1A
    pub response_information: Option<MqttStr>,
    /// 0x1C
    pub server_reference: Option<MqttStr>,
    /// 0x1F
    pub reason_string: Option<MqttStr>,
    /// 0x21; never 0.
    pub receive_maximum: Option<u16>,
    /// 0x22
    pub topic_alias_maximum: Option<u16>,
    /// 0x23; never 0.
    pub topic_alias: Option<u16>,
    /// 0x24; QoS 0 or 1 (a server that allows QoS 2 leaves it out).
    pub maximum_qos: Option<QoS>,
    /// 0x25
    pub retain_available: Option<bool>,
    /// 0x26; in the order received.
    pub user_properties: Vec<(MqttStr, MqttStr)>,
    /// 0x27; bytes, never 0.
    pub maximum_packet_size: Option<u32>,
    /// 0x28
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29
    pub subscription_identifier_available: Option<bool>,
    /// 0x2A
    pub shared_subscription_available: Option<bool>,
}

/// Property identifiers (table 2-4).
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Where a property list stands: in a packet, or in the will of a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyPlace {
    Packet(PacketType),
    Will,
}

impl PropertyPlace {
    fn packet(self) -> PacketType {
        match self {
            PropertyPlace::Packet(packet) => packet,
            PropertyPlace::Will => PacketType::Connect,
        }
    }
}

/// Whether property `property` may appear at `place` (table 2-4). Unknown identifiers may not.
pub fn property_allowed(property: u8, place: PropertyPlace) -> bool {
    use PacketType as P;
    use PropertyPlace::{Packet, Will};
    match property {
        id::PAYLOAD_FORMAT_INDICATOR
        | id::MESSAGE_EXPIRY_INTERVAL
        | id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::CORRELATION_DATA => matches!(place, Packet(P::Publish) | Will),
        id::SUBSCRIPTION_IDENTIFIER => matches!(place, Packet(P::Publish | P::Subscribe)),
        id::SESSION_EXPIRY_INTERVAL => {
            matches!(place, Packet(P::Connect | P::ConnAck | P::Disconnect))
        }
        id::ASSIGNED_CLIENT_IDENTIFIER
        | id::SERVER_KEEP_ALIVE
        | id::RESPONSE_INFORMATION
        | id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => place == Packet(P::ConnAck),
        id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => {
            matches!(place, Packet(P::Connect | P::ConnAck | P::Auth))
        }
        id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => {
            place == Packet(P::Connect)
        }
        id::WILL_DELAY_INTERVAL => place == Will,
        id::SERVER_REFERENCE => matches!(place, Packet(P::ConnAck | P::Disconnect)),
        id::REASON_STRING => matches!(
            place,
            Packet(
                P::ConnAck
                    | P::PubAck
                    | P::PubRec
                    | P::PubRel
                    | P::PubComp
                    | P::SubAck
                    | P::UnsubAck
                    | P::Disconnect
                    | P::Auth
            )
        ),
        id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::MAXIMUM_PACKET_SIZE => {
            matches!(place, Packet(P::Connect | P::ConnAck))
        }
        id::TOPIC_ALIAS => place == Packet(P::Publish),
        id::USER_PROPERTY => !matches!(place, Packet(P::PingReq | P::PingResp)),
        _ => false,
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, property: u8) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(property));
    }
    *slot = Some(value);
    Ok(())
}

fn flag(value: u8, property: u8) -> Result<bool, DecodeError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::InvalidPropertyValue {
            property,
            value: u32::from(value),
        }),
    }
}

fn non_zero<T: Into<u32> + Copy + PartialEq + Default>(
    value: T,
    property: u8,
) -> Result<T, DecodeError> {
    if value == T::default() {
        return Err(DecodeError::InvalidPropertyValue { property, value: 0 });
    }
    Ok(value)
}

impl Properties {
    /// True when no property is set: the property length is then a single zero byte.
    ///
    /// Field by field, without building a default to compare with, and without branches (`&`,
    /// not `&&`): it runs on every packet encoded. The destructuring names every field, so that a
    /// new one cannot be forgotten here.
    pub fn is_empty(&self) -> bool {
        let Properties {
            payload_format_indicator,
            message_expiry_interval,
            content_type,
            response_topic,
            correlation_data,
            subscription_identifiers,
            session_expiry_interval,
            assigned_client_identifier,
            server_keep_alive,
            authentication_method,
            authentication_data,
            request_problem_information,
            will_delay_interval,
            request_response_information,
            response_information,
            server_reference,
            reason_string,
            receive_maximum,
            topic_alias_maximum,
            topic_alias,
            maximum_qos,
            retain_available,
            user_properties,
            maximum_packet_size,
            wildcard_subscription_available,
            subscription_identifier_available,
            shared_subscription_available,
        } = self;
        payload_format_indicator.is_none()
            & message_expiry_interval.is_none()
            & content_type.is_none()
            & response_topic.is_none()
            & correlation_data.is_none()
            & subscription_identifiers.is_empty()
            & session_expiry_interval.is_none()
            & assigned_client_identifier.is_none()
            & server_keep_alive.is_none()
            & authentication_method.is_none()
            & authentication_data.is_none()
            & request_problem_information.is_none()
            & will_delay_interval.is_none()
            & request_response_information.is_none()
            & response_information.is_none()
            & server_reference.is_none()
            & reason_string.is_none()
            & receive_maximum.is_none()
            & topic_alias_maximum.is_none()
            & topic_alias.is_none()
            & maximum_qos.is_none()
            & retain_available.is_none()
            & user_properties.is_empty()
            & maximum_packet_size.is_none()
            & wildcard_subscription_available.is_none()
            & subscription_identifier_available.is_none()
            & shared_subscription_available.is_none()
    }

    /// Reads a Property Length and the properties it covers.
    pub(crate) fn decode(
        reader: &mut Reader,
        place: PropertyPlace,
    ) -> Result<Properties, DecodeError> {
        let len = reader.varint("property length")?;
        if len == 0 {
            // The common case: no properties, and no sub-reader to make (and drop).
            return Ok(Properties::default());
        }
        let mut reader = reader.take(len as usize, "properties")?;
        let mut props = Properties::default();
        while !reader.is_empty() {
            let raw = reader.varint("property identifier")?;
            let property = u8::try_from(raw).map_err(|_| DecodeError::UnknownProperty(raw))?;
            if !is_defined(property) {
                return Err(DecodeError::UnknownProperty(raw));
            }
            if !property_allowed(property, place) {
                return Err(DecodeError::PropertyNotAllowed {
                    packet: place.packet(),
                    property,
                    in_will: place == PropertyPlace::Will,
                });
            }
            props.read_one(&mut reader, property, place)?;
        }
        if props.authentication_data.is_some() && props.authentication_method.is_none() {
            return Err(DecodeError::AuthenticationDataWithoutMethod);
        }
        Ok(props)
    }

    fn read_one(
        &mut self,
        r: &mut Reader,
        property: u8,
        place: PropertyPlace,
    ) -> Result<(), DecodeError> {
        let p = property;
        match property {
            id::PAYLOAD_FORMAT_INDICATOR => set_once(
                &mut self.payload_format_indicator,
                flag(r.u8("payload format indicator")?, p)?,
                p,
            ),
            id::MESSAGE_EXPIRY_INTERVAL => set_once(
                &mut self.message_expiry_interval,
                r.u32("message expiry interval")?,
                p,
            ),
            id::CONTENT_TYPE => set_once(&mut self.content_type, r.string("content type")?, p),
            id::RESPONSE_TOPIC => {
                let topic = r.string("response topic")?;
                crate::topic::validate_topic_name(&topic)
                    .map_err(|_| DecodeError::InvalidResponseTopic)?;
                set_once(&mut self.response_topic, topic, p)
            }
            id::CORRELATION_DATA => {
                set_once(&mut self.correlation_data, r.binary("correlation data")?, p)
            }
            id::SUBSCRIPTION_IDENTIFIER => {
                let value = r.varint("subscription identifier")?;
                if value == 0 {
                    return Err(DecodeError::InvalidPropertyValue { property: p, value });
                }
                if place != PropertyPlace::Packet(PacketType::Publish)
                    && !self.subscription_identifiers.is_empty()
                {
                    return Err(DecodeError::DuplicateProperty(p));
                }
                self.subscription_identifiers.push(value);
                Ok(())
            }
            id::SESSION_EXPIRY_INTERVAL => set_once(
                &mut self.session_expiry_interval,
                r.u32("session expiry interval")?,
                p,
            ),
            id::ASSIGNED_CLIENT_IDENTIFIER => set_once(
                &mut self.assigned_client_identifier,
                r.string("assigned client identifier")?,
                p,
            ),
            id::SERVER_KEEP_ALIVE => {
                set_once(&mut self.server_keep_alive, r.u16("server keep alive")?, p)
            }
            id::AUTHENTICATION_METHOD => set_once(
                &mut self.authentication_method,
                r.string("authentication method")?,
                p,
            ),
            id::AUTHENTICATION_DATA => set_once(
                &mut self.authentication_data,
                r.binary("authentication data")?,
                p,
            ),
            id::REQUEST_PROBLEM_INFORMATION => set_once(
                &mut self.request_problem_information,
                flag(r.u8("request problem information")?, p)?,
                p,
            ),
            id::WILL_DELAY_INTERVAL => set_once(
                &mut self.will_delay_interval,
                r.u32("will delay interval")?,
                p,
            ),
            id::REQUEST_RESPONSE_INFORMATION => set_once(
                &mut self.request_response_information,
                flag(r.u8("request response information")?, p)?,
                p,
            ),
            id::RESPONSE_INFORMATION => set_once(
                &mut self.response_information,
                r.string("response information")?,
                p,
            ),
            id::SERVER_REFERENCE => {
                set_once(&mut self.server_reference, r.string("server reference")?, p)
            }
            id::REASON_STRING => set_once(&mut self.reason_string, r.string("reason string")?, p),
            id::RECEIVE_MAXIMUM => set_once(
                &mut self.receive_maximum,
                non_zero(r.u16("receive maximum")?, p)?,
                p,
            ),
            id::TOPIC_ALIAS_MAXIMUM => set_once(
                &mut self.topic_alias_maximum,
                r.u16("topic alias maximum")?,
                p,
            ),
            id::TOPIC_ALIAS => {
                let alias = r.u16("topic alias")?;
                if alias == 0 {
                    return Err(DecodeError::TopicAliasZero);
                }
                set_once(&mut self.topic_alias, alias, p)
            }
            id::MAXIMUM_QOS => {
                let value = r.u8("maximum qos")?;
                let qos = match value {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => {
                        return Err(DecodeError::InvalidPropertyValue {
                            property: p,
                            value: u32::from(value),
                        });
                    }
                };
                set_once(&mut self.maximum_qos, qos, p)
            }
            id::RETAIN_AVAILABLE => set_once(
                &mut self.retain_available,
                flag(r.u8("retain available")?, p)?,
                p,
            ),
            id::USER_PROPERTY => {
                let key = r.string("user property name")?;
                let value = r.string("user property value")?;
                self.user_properties.push((key, value));
                Ok(())
            }
            id::MAXIMUM_PACKET_SIZE => set_once(
                &mut self.maximum_packet_size,
                non_zero(r.u32("maximum packet size")?, p)?,
                p,
            ),
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => set_once(
                &mut self.wildcard_subscription_available,
                flag(r.u8("wildcard subscription available")?, p)?,
                p,
            ),
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => set_once(
                &mut self.subscription_identifier_available,
                flag(r.u8("subscription identifier available")?, p)?,
                p,
            ),
            id::SHARED_SUBSCRIPTION_AVAILABLE => set_once(
                &mut self.shared_subscription_available,
                flag(r.u8("shared subscription available")?, p)?,
                p,
            ),
            // `property_allowed` admitted only defined identifiers.
            other => Err(DecodeError::UnknownProperty(u32::from(other))),
        }
    }

    /// Bytes of the properties themselves, without the Property Length in front.
    fn body_len(&self) -> usize {
        let byte = |v: &Option<bool>| if v.is_some() { 2 } else { 0 };
        let two = |v: Option<u16>| if v.is_some() { 3 } else { 0 };
        let four = |v: Option<u32>| if v.is_some() { 5 } else { 0 };
        let text = |v: &Option<MqttStr>| v.as_ref().map_or(0, |s| 1 + string_len(s));
        let data = |v: &Option<Bytes>| v.as_ref().map_or(0, |b| 1 + binary_len(b));
        byte(&self.payload_format_indicator)
            + four(self.message_expiry_interval)
            + text(&self.content_type)
            + text(&self.response_topic)
            + data(&self.correlation_data)
            + self
                .subscription_identifiers
                .iter()
                .map(|&id| 1 + varint_len(id))
                .sum::<usize>()
            + four(self.session_expiry_interval)
            + text(&self.assigned_client_identifier)
            + two(self.server_keep_alive)
            + text(&self.authentication_method)
            + data(&self.authentication_data)
            + byte(&self.request_problem_information)
            + four(self.will_delay_interval)
            + byte(&self.request_response_information)
            + text(&self.response_information)
            + text(&self.server_reference)
            + text(&self.reason_string)
            + two(self.receive_maximum)
            + two(self.topic_alias_maximum)
            + two(self.topic_alias)
            + if self.maximum_qos.is_some() { 2 } else { 0 }
            + byte(&self.retain_available)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| 1 + string_len(k) + string_len(v))
                .sum::<usize>()
            + four(self.maximum_packet_size)
            + byte(&self.wildcard_subscription_available)
            + byte(&self.subscription_identifier_available)
            + byte(&self.shared_subscription_available)
    }

    /// Bytes on the wire: Property Length and properties.
    pub(crate) fn encoded_len(&self) -> usize {
        if self.is_empty() {
            return 1;
        }
        let body = self.body_len();
        varint_len(body as u32) + body
    }

    /// Which properties are set, by identifier.
    fn present(&self) -> [(u8, bool); 27] {
        [
            (
                id::PAYLOAD_FORMAT_INDICATOR,
                self.payload_format_indicator.is_some(),
            ),
            (
                id::MESSAGE_EXPIRY_INTERVAL,
                self.message_expiry_interval.is_some(),
            ),
            (id::CONTENT_TYPE, self.content_type.is_some()),
            (id::RESPONSE_TOPIC, self.response_topic.is_some()),
            (id::CORRELATION_DATA, self.correlation_data.is_some()),
            (
                id::SUBSCRIPTION_IDENTIFIER,
                !self.subscription_identifiers.is_empty(),
            ),
            (
                id::SESSION_EXPIRY_INTERVAL,
                self.session_expiry_interval.is_some(),
            ),
            (
                id::ASSIGNED_CLIENT_IDENTIFIER,
                self.assigned_client_identifier.is_some(),
            ),
            (id::SERVER_KEEP_ALIVE, self.server_keep_alive.is_some()),
            (
                id::AUTHENTICATION_METHOD,
                self.authentication_method.is_some(),
            ),
            (id::AUTHENTICATION_DATA, self.authentication_data.is_some()),
            (
                id::REQUEST_PROBLEM_INFORMATION,
                self.request_problem_information.is_some(),
            ),
            (id::WILL_DELAY_INTERVAL, self.will_delay_interval.is_some()),
            (
                id::REQUEST_RESPONSE_INFORMATION,
                self.request_response_information.is_some(),
            ),
            (
                id::RESPONSE_INFORMATION,
                self.response_information.is_some(),
            ),
            (id::SERVER_REFERENCE, self.server_reference.is_some()),
            (id::REASON_STRING, self.reason_string.is_some()),
            (id::RECEIVE_MAXIMUM, self.receive_maximum.is_some()),
            (id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum.is_some()),
            (id::TOPIC_ALIAS, self.topic_alias.is_some()),
            (id::MAXIMUM_QOS, self.maximum_qos.is_some()),
            (id::RETAIN_AVAILABLE, self.retain_available.is_some()),
            (id::USER_PROPERTY, !self.user_properties.is_empty()),
            (id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size.is_some()),
            (
                id::WILDCARD_SUBSCRIPTION_AVAILABLE,
                self.wildcard_subscription_available.is_some(),
            ),
            (
                id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
                self.subscription_identifier_available.is_some(),
            ),
            (
                id::SHARED_SUBSCRIPTION_AVAILABLE,
                self.shared_subscription_available.is_some(),
            ),
        ]
    }

    /// Checks what the types cannot: every property allowed at `place`, binary data that fits
    /// its prefix, subscription identifiers in range.
    pub(crate) fn check(&self, place: PropertyPlace) -> Result<(), EncodeError> {
        if self.is_empty() {
            return Ok(());
        }
        if let Some((property, _)) = self
            .present()
            .into_iter()
            .find(|&(property, set)| set && !property_allowed(property, place))
        {
            return Err(EncodeError::PropertyNotAllowed {
                packet: place.packet(),
                property,
            });
        }
        if let Some(data) = &self.correlation_data {
            check_binary("correlation data", data)?;
        }
        if let Some(data) = &self.authentication_data {
            check_binary("authentication data", data)?;
        }
        if let Some(&bad) = self
            .subscription_identifiers
            .iter()
            .find(|&&id| id == 0 || id > MAX_VARINT)
        {
            return Err(EncodeError::InvalidSubscriptionIdentifier(bad));
        }
        Ok(())
    }

    /// Writes Property Length and properties, in order of identifier. The caller has run
    /// [`Properties::check`].
    pub(crate) fn encode(&self, buf: &mut BytesMut) {
        if self.is_empty() {
            buf.put_u8(0);
            return;
        }
        put_varint(buf, self.body_len() as u32);
        let put_flag = |buf: &mut BytesMut, property: u8, v: Option<bool>| {
            if let Some(v) = v {
                buf.put_u8(property);
                buf.put_u8(u8::from(v));
            }
        };
        let put_u16 = |buf: &mut BytesMut, property: u8, v: Option<u16>| {
            if let Some(v) = v {
                buf.put_u8(property);
                buf.put_u16(v);
            }
        };
        let put_u32 = |buf: &mut BytesMut, property: u8, v: Option<u32>| {
            if let Some(v) = v {
                buf.put_u8(property);
                buf.put_u32(v);
            }
        };
        let put_text = |buf: &mut BytesMut, property: u8, v: &Option<MqttStr>| {
            if let Some(v) = v {
                buf.put_u8(property);
                put_string(buf, v);
            }
        };
        let put_data = |buf: &mut BytesMut, property: u8, v: &Option<Bytes>| {
            if let Some(v) = v {
                buf.put_u8(property);
                put_binary(buf, v);
            }
        };
        put_flag(
            buf,
            id::PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator,
        );
        put_u32(
            buf,
            id::MESSAGE_EXPIRY_INTERVAL,
            self.message_expiry_interval,
        );
        put_text(buf, id::CONTENT_TYPE, &self.content_type);
        put_text(buf, id::RESPONSE_TOPIC, &self.response_topic);
        put_data(buf, id::CORRELATION_DATA, &self.correlation_data);
        for &identifier in &self.subscription_identifiers {
            buf.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            put_varint(buf, identifier);
        }
        put_u32(
            buf,
            id::SESSION_EXPIRY_INTERVAL,
            self.session_expiry_interval,
        );
        put_text(
            buf,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
        );
        put_u16(buf, id::SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_text(buf, id::AUTHENTICATION_METHOD, &self.authentication_method);
        put_data(buf, id::AUTHENTICATION_DATA, &self.authentication_data);
        put_flag(
            buf,
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        put_u32(buf, id::WILL_DELAY_INTERVAL, self.will_delay_interval);
        put_flag(
            buf,
            id::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        put_text(buf, id::RESPONSE_INFORMATION, &self.response_information);
        put_text(buf, id::SERVER_REFERENCE, &self.server_reference);
        put_text(buf, id::REASON_STRING, &self.reason_string);
        put_u16(buf, id::RECEIVE_MAXIMUM, self.receive_maximum);
        put_u16(buf, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_u16(buf, id::TOPIC_ALIAS, self.topic_alias);
        if let Some(qos) = self.maximum_qos {
            buf.put_u8(id::MAXIMUM_QOS);
            buf.put_u8(qos as u8);
        }
        put_flag(buf, id::RETAIN_AVAILABLE, self.retain_available);
        for (key, value) in &self.user_properties {
            buf.put_u8(id::USER_PROPERTY);
            put_string(buf, key);
            put_string(buf, value);
        }
        put_u32(buf, id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_flag(
            buf,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        put_flag(
            buf,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifier_available,
        );
        put_flag(
            buf,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
    }
}

/// Whether the specification defines property identifier `property`.
pub fn is_defined(property: u8) -> bool {
    matches!(
        property,
        0x01..=0x03
            | 0x08
            | 0x09
            | 0x0B
            | 0x11..=0x13
            | 0x15..=0x19
            | 0x1A
            | 0x1C
            | 0x1F
            | 0x21..=0x2A
    )
}
