//! DISCONNECT (section 3.14) and AUTH (3.15): a reason code and properties, both left out on the
//! wire when they say nothing. PINGREQ and PINGRESP have no body and live in `Packet` itself.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::packet::PacketType;
use crate::properties::{Properties, PropertyPlace};
use crate::qos::ProtocolVersion;
use crate::reason::ReasonCode;
use crate::wire::Reader;

/// DISCONNECT; in 3.x it has no body, and `reason_code` is `Success`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    pub reason_code: ReasonCode,
    pub properties: Properties,
}

/// AUTH (MQTT 5 only): a step of enhanced authentication.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason_code: ReasonCode,
    pub properties: Properties,
}

/// Reads the optional reason code and optional properties of DISCONNECT and AUTH.
fn decode_reason_and_properties(mut r: Reader) -> Result<(ReasonCode, Properties), DecodeError> {
    let packet = r.packet();
    let mut reason_code = ReasonCode::Success;
    let mut properties = Properties::default();
    if !r.is_empty() {
        let code = r.u8("reason code")?;
        reason_code = ReasonCode::from_u8(code)
            .filter(|c| c.allowed_in(packet))
            .ok_or(DecodeError::InvalidReasonCode { packet, code })?;
        if !r.is_empty() {
            properties = Properties::decode(&mut r, PropertyPlace::Packet(packet))?;
        }
    }
    r.finish()?;
    Ok((reason_code, properties))
}

fn reason_and_properties_len(
    packet: PacketType,
    reason_code: ReasonCode,
    properties: &Properties,
) -> Result<usize, EncodeError> {
    if !reason_code.allowed_in(packet) {
        return Err(EncodeError::ReasonCodeNotAllowed {
            packet,
            code: reason_code,
        });
    }
    properties.check(PropertyPlace::Packet(packet))?;
    Ok(if !properties.is_empty() {
        1 + properties.encoded_len()
    } else if reason_code != ReasonCode::Success {
        1
    } else {
        0
    })
}

fn write_reason_and_properties(
    buf: &mut BytesMut,
    reason_code: ReasonCode,
    properties: &Properties,
) {
    let has_properties = !properties.is_empty();
    if has_properties || reason_code != ReasonCode::Success {
        buf.put_u8(reason_code.as_u8());
    }
    if has_properties {
        properties.encode(buf);
    }
}

impl Disconnect {
    /// A DISCONNECT with this reason and no properties.
    pub fn new(reason_code: ReasonCode) -> Disconnect {
        Disconnect {
            reason_code,
            properties: Properties::default(),
        }
    }

    pub(crate) fn decode(r: Reader, version: ProtocolVersion) -> Result<Disconnect, DecodeError> {
        if !version.is_v5() {
            r.finish()?;
            return Ok(Disconnect::default());
        }
        let (reason_code, properties) = decode_reason_and_properties(r)?;
        Ok(Disconnect {
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Ok(0);
        }
        reason_and_properties_len(PacketType::Disconnect, self.reason_code, &self.properties)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, buf: &mut BytesMut) {
        if version.is_v5() {
            write_reason_and_properties(buf, self.reason_code, &self.properties);
        }
    }
}

impl Auth {
    /// Only reached in MQTT 5: packet type 15 is reserved before.
    pub(crate) fn decode(r: Reader) -> Result<Auth, DecodeError> {
        let (reason_code, properties) = decode_reason_and_properties(r)?;
        Ok(Auth {
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Err(EncodeError::NotInVersion {
                packet: PacketType::Auth,
                level: version.level(),
            });
        }
        reason_and_properties_len(PacketType::Auth, self.reason_code, &self.properties)
    }

    pub(crate) fn write_body(&self, buf: &mut BytesMut) {
        write_reason_and_properties(buf, self.reason_code, &self.properties);
    }
}
