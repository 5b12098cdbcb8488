//! CONNECT (section 3.1) and CONNACK (3.2).

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::packet::PacketType;
use crate::properties::{Properties, PropertyPlace};
use crate::qos::{ProtocolVersion, QoS};
use crate::reason::{ReasonCode, connack_from_v3_code, connack_v3_code};
use crate::string::MqttStr;
use crate::topic::validate_topic_name;
use crate::wire::{Reader, binary_len, check_binary, put_binary, put_string, string_len};

const FLAG_RESERVED: u8 = 0x01;
const FLAG_CLEAN_START: u8 = 0x02;
const FLAG_WILL: u8 = 0x04;
const FLAG_WILL_RETAIN: u8 = 0x20;
const FLAG_PASSWORD: u8 = 0x40;
const FLAG_USERNAME: u8 = 0x80;

/// CONNECT: the first packet of every connection. (Its `Debug` leaves the password out: no
/// secret reaches a log, whatever is logged.)
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    /// Read from the protocol name and level; the version of the whole connection.
    pub protocol: ProtocolVersion,
    /// Clean Start in MQTT 5, Clean Session in 3.x.
    pub clean_start: bool,
    /// Seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    pub properties: Properties,
    /// May be empty: the server then assigns one (or refuses, in 3.x without clean session).
    pub client_id: MqttStr,
    pub will: Option<Will>,
    pub username: Option<MqttStr>,
    pub password: Option<Bytes>,
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("protocol", &self.protocol)
            .field("clean_start", &self.clean_start)
            .field("keep_alive", &self.keep_alive)
            .field("properties", &self.properties)
            .field("client_id", &self.client_id)
            .field("will", &self.will)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The Will Message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: MqttStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Will properties (MQTT 5 only).
    pub properties: Properties,
}

impl Connect {
    pub(crate) fn decode(mut r: Reader) -> Result<Connect, DecodeError> {
        let name = r.binary("protocol name")?;
        let level = r.u8("protocol level")?;
        let protocol = match (&name[..], level) {
            (b"MQIsdp", 3) => ProtocolVersion::V31,
            (b"MQTT", 4) => ProtocolVersion::V311,
            (b"MQTT", 5) => ProtocolVersion::V5,
            (b"MQTT" | b"MQIsdp", other) => {
                return Err(DecodeError::UnsupportedProtocolVersion(other));
            }
            _ => return Err(DecodeError::InvalidProtocolName),
        };
        let flags = r.u8("connect flags")?;
        if flags & FLAG_RESERVED != 0 {
            return Err(DecodeError::ConnectReservedFlag);
        }
        let will_qos = QoS::from_u8((flags >> 3) & 0b11).ok_or(DecodeError::InvalidQos)?;
        let has_will = flags & FLAG_WILL != 0;
        let will_retain = flags & FLAG_WILL_RETAIN != 0;
        if !has_will && (will_qos != QoS::AtMostOnce || will_retain) {
            return Err(DecodeError::WillFlagsWithoutWill);
        }
        let has_username = flags & FLAG_USERNAME != 0;
        let has_password = flags & FLAG_PASSWORD != 0;
        if has_password && !has_username && !protocol.is_v5() {
            return Err(DecodeError::PasswordWithoutUsername);
        }
        let keep_alive = r.u16("keep alive")?;
        let properties = if protocol.is_v5() {
            Properties::decode(&mut r, PropertyPlace::Packet(PacketType::Connect))?
        } else {
            Properties::default()
        };
        let client_id = r.string("client identifier")?;
        let will = if has_will {
            let properties = if protocol.is_v5() {
                Properties::decode(&mut r, PropertyPlace::Will)?
            } else {
                Properties::default()
            };
            let topic = r.string("will topic")?;
            validate_topic_name(&topic)?;
            let payload = r.binary("will payload")?;
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(r.string("user name")?)
        } else {
            None
        };
        let password = if has_password {
            Some(r.binary("password")?)
        } else {
            None
        };
        r.finish()?;
        Ok(Connect {
            protocol,
            clean_start: flags & FLAG_CLEAN_START != 0,
            keep_alive,
            properties,
            client_id,
            will,
            username,
            password,
        })
    }

    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        let v5 = self.protocol.is_v5();
        if self.password.is_some() && self.username.is_none() && !v5 {
            // 3.x has no way to send a password alone [MQTT-3.1.2-22].
            return Err(EncodeError::NotInVersion {
                packet: PacketType::Connect,
                level: self.protocol.level(),
            });
        }
        let mut len = 2 + self.protocol.protocol_name().len() + 1 + 1 + 2;
        if v5 {
            self.properties
                .check(PropertyPlace::Packet(PacketType::Connect))?;
            len += self.properties.encoded_len();
        }
        len += string_len(&self.client_id);
        if let Some(will) = &self.will {
            check_binary("will payload", &will.payload)?;
            if v5 {
                will.properties.check(PropertyPlace::Will)?;
                len += will.properties.encoded_len();
            }
            len += string_len(&will.topic) + binary_len(&will.payload);
        }
        if let Some(username) = &self.username {
            len += string_len(username);
        }
        if let Some(password) = &self.password {
            check_binary("password", password)?;
            len += binary_len(password);
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, buf: &mut BytesMut) {
        let v5 = self.protocol.is_v5();
        put_binary(buf, self.protocol.protocol_name().as_bytes());
        buf.put_u8(self.protocol.level());
        let mut flags = 0;
        if self.clean_start {
            flags |= FLAG_CLEAN_START;
        }
        if let Some(will) = &self.will {
            flags |= FLAG_WILL | (will.qos.as_u8() << 3);
            if will.retain {
                flags |= FLAG_WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            flags |= FLAG_USERNAME;
        }
        if self.password.is_some() {
            flags |= FLAG_PASSWORD;
        }
        buf.put_u8(flags);
        buf.put_u16(self.keep_alive);
        if v5 {
            self.properties.encode(buf);
        }
        put_string(buf, &self.client_id);
        if let Some(will) = &self.will {
            if v5 {
                will.properties.encode(buf);
            }
            put_string(buf, &will.topic);
            put_binary(buf, &will.payload);
        }
        if let Some(username) = &self.username {
            put_string(buf, username);
        }
        if let Some(password) = &self.password {
            put_binary(buf, password);
        }
    }
}

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// In 3.x, written as the nearest return code (0-5).
    pub reason_code: ReasonCode,
    pub properties: Properties,
}

impl ConnAck {
    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
        let flags = r.u8("connect acknowledge flags")?;
        // MQTT 3.1 has no Session Present flag: its first byte is reserved and not read.
        let flags = if version == ProtocolVersion::V31 {
            0
        } else {
            flags
        };
        if flags & 0xFE != 0 {
            return Err(DecodeError::ConnAckReservedFlags);
        }
        let code = r.u8("reason code")?;
        let reason_code = if version.is_v5() {
            ReasonCode::from_u8(code).filter(|c| c.allowed_in(PacketType::ConnAck))
        } else {
            connack_from_v3_code(code)
        }
        .ok_or(DecodeError::InvalidReasonCode {
            packet: PacketType::ConnAck,
            code,
        })?;
        let properties = if version.is_v5() {
            Properties::decode(&mut r, PropertyPlace::Packet(PacketType::ConnAck))?
        } else {
            Properties::default()
        };
        r.finish()?;
        Ok(ConnAck {
            session_present: flags & 1 != 0,
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if version.is_v5() {
            if !self.reason_code.allowed_in(PacketType::ConnAck) {
                return Err(EncodeError::ReasonCodeNotAllowed {
                    packet: PacketType::ConnAck,
                    code: self.reason_code,
                });
            }
            self.properties
                .check(PropertyPlace::Packet(PacketType::ConnAck))?;
            Ok(2 + self.properties.encoded_len())
        } else {
            Ok(2)
        }
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        // MQTT 3.1 has no Session Present flag: the byte is reserved there and stays 0.
        let present = self.session_present && version != ProtocolVersion::V31;
        buf.put_u8(u8::from(present));
        if version.is_v5() {
            buf.put_u8(self.reason_code.as_u8());
            self.properties.encode(buf);
        } else {
            buf.put_u8(connack_v3_code(self.reason_code));
        }
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    /// Issue 12: no secret reaches a log at any level, even a CONNECT logged whole.
    #[test]
    fn the_debug_of_connect_leaves_the_password_out() {
        let connect = Connect {
            protocol: ProtocolVersion::V311,
            clean_start: true,
            keep_alive: 30,
            properties: Properties::default(),
            client_id: MqttStr::try_from("c").unwrap(),
            will: None,
            username: Some(MqttStr::try_from("alice").unwrap()),
            password: Some(Bytes::from_static(b"hunter2")),
        };
        let text = format!("{connect:?}");
        assert!(
            text.contains("alice") && text.contains("<redacted>"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }
}
