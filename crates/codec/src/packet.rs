//! The `Packet` enum, the fixed header (section 2.1) and the streaming decode and encode entry
//! points that dispatch to one module per packet family.
//!
//! Decoding looks at the fixed header first: type, flags and remaining length are checked, and a
//! packet larger than the maximum is refused, before a single byte of its body is waited for or
//! copied. A whole packet is then split off the read buffer and parsed from that shared slice;
//! the shortest packets (an empty body, or an acknowledgement without properties) are read in
//! place instead, as they keep nothing of the buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::connect::{ConnAck, Connect};
use crate::control::{Auth, Disconnect};
use crate::error::{DecodeError, EncodeError};
use crate::publish::{Ack, Publish};
use crate::qos::{ProtocolVersion, QoS};
use crate::subscribe::{SubAck, Subscribe, UnsubAck, Unsubscribe};
use crate::varint::{MAX_VARINT, put_varint, read_varint, varint_len};
use crate::wire::Reader;

/// The control packet types (table 2-1), with their values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    /// The type with this value; 0 is reserved, and so is 15 before MQTT 5.
    pub fn from_u8(value: u8, version: ProtocolVersion) -> Option<PacketType> {
        use PacketType as P;
        Some(match value {
            1 => P::Connect,
            2 => P::ConnAck,
            3 => P::Publish,
            4 => P::PubAck,
            5 => P::PubRec,
            6 => P::PubRel,
            7 => P::PubComp,
            8 => P::Subscribe,
            9 => P::SubAck,
            10 => P::Unsubscribe,
            11 => P::UnsubAck,
            12 => P::PingReq,
            13 => P::PingResp,
            14 => P::Disconnect,
            15 if version.is_v5() => P::Auth,
            _ => return None,
        })
    }

    /// The flags every packet but PUBLISH must carry (table 2-2).
    const fn fixed_flags(self) -> u8 {
        match self {
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        }
    }

    /// Whether a packet other than PUBLISH may carry `flags` in `version`.
    ///
    /// From 3.1.1 on the flags are fixed [MQTT-2.1.3-1]. MQTT 3.1 sends PUBREL, SUBSCRIBE and
    /// UNSUBSCRIBE at QoS 1 and sets DUP when it sends one again (3.1 section 2.1, "DUP"), so
    /// there 0b1010 is accepted as well as 0b0010.
    const fn flags_allowed(self, flags: u8, version: ProtocolVersion) -> bool {
        let fixed = self.fixed_flags();
        flags == fixed
            || (matches!(version, ProtocolVersion::V31) && fixed != 0 && flags == fixed | 0b1000)
    }
}

/// One MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

/// What the fixed header of a packet says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    pub packet_type: PacketType,
    /// The low four bits of the first byte.
    pub flags: u8,
    /// Bytes of the first byte and the Remaining Length field.
    pub header_len: usize,
    /// The Remaining Length: bytes of the variable header and payload.
    pub remaining_len: u32,
}

impl FixedHeader {
    /// Bytes of the whole packet.
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining_len as usize
    }

    /// Reads and checks a fixed header at the start of `buf`: `Ok(None)` until it is whole.
    ///
    /// Checks the packet type [MQTT-2.1.2], the flags [MQTT-2.1.3-1] (for PUBLISH: QoS 3
    /// [MQTT-3.3.1-4] and DUP on QoS 0 [MQTT-3.3.1-2]), the Remaining Length [MQTT-1.5.5-1], and
    /// that the packet fits `max_packet_size` (section 3.1.2.11.4).
    pub fn parse(
        buf: &[u8],
        version: ProtocolVersion,
        max_packet_size: u32,
    ) -> Result<Option<FixedHeader>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let packet_type = PacketType::from_u8(first >> 4, version)
            .ok_or(DecodeError::ReservedPacketType(first >> 4))?;
        let flags = first & 0x0F;
        if packet_type == PacketType::Publish {
            let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQos)?;
            if qos == QoS::AtMostOnce && flags & 0b1000 != 0 {
                return Err(DecodeError::DupOnQos0);
            }
        } else if !packet_type.flags_allowed(flags, version) {
            return Err(DecodeError::InvalidFixedHeaderFlags {
                packet: packet_type,
                flags,
            });
        }
        let Some((remaining_len, len_len)) = read_varint(&buf[1..])? else {
            return Ok(None);
        };
        let header = FixedHeader {
            packet_type,
            flags,
            header_len: 1 + len_len,
            remaining_len,
        };
        let size = header.packet_len() as u64;
        if size > u64::from(max_packet_size) {
            return Err(DecodeError::PacketTooLarge {
                size: size as u32,
                max: max_packet_size,
            });
        }
        Ok(Some(header))
    }
}

impl Packet {
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// Decodes one packet from the front of `buf`.
    ///
    /// Returns `Ok(None)` and leaves `buf` untouched while the packet is incomplete, whatever the
    /// split of the bytes; otherwise removes the packet's bytes from `buf`. Topic names, strings
    /// and payloads of the result share `buf`'s memory. A CONNECT carries its own protocol
    /// version, which takes the place of `version` for that packet.
    ///
    /// After an error the connection cannot continue: the stream position is lost.
    pub fn decode(
        buf: &mut BytesMut,
        version: ProtocolVersion,
        max_packet_size: u32,
    ) -> Result<Option<Packet>, DecodeError> {
        let Some(header) = FixedHeader::parse(buf, version, max_packet_size)? else {
            return Ok(None);
        };
        let len = header.packet_len();
        if buf.len() < len {
            return Ok(None);
        }
        if header.remaining_len <= 3 {
            // Short packets hold nothing to share with the buffer: read them in place, and skip
            // splitting off a frame (which costs an allocation the first time a buffer is split).
            use PacketType as P;
            match header.packet_type {
                P::PubAck | P::PubRec | P::PubRel | P::PubComp => {
                    let body = &buf[header.header_len..len];
                    let result = Ack::decode_short(header.packet_type, body, version);
                    buf.advance(len);
                    return result;
                }
                _ if header.remaining_len == 0 => {
                    buf.advance(len);
                    let reader = Reader::new(Bytes::new(), header.packet_type);
                    return Packet::decode_body(header, reader, version);
                }
                _ => {}
            }
        }
        let mut frame = buf.split_to(len).freeze();
        frame.advance(header.header_len);
        let reader = Reader::new(frame, header.packet_type);
        if header.packet_type == PacketType::Publish {
            // The hot path: the decoder returns this function's result, built in place.
            return Publish::decode(header.flags, reader, version);
        }
        Packet::decode_body(header, reader, version)
    }

    /// Returns the caller's result type itself, so that the packet is moved once, from the
    /// decoder of its type into place (a `Packet` is several hundred bytes).
    #[inline]
    fn decode_body(
        header: FixedHeader,
        reader: Reader,
        version: ProtocolVersion,
    ) -> Result<Option<Packet>, DecodeError> {
        use PacketType as P;
        Ok(Some(match header.packet_type {
            P::Connect => Packet::Connect(Box::new(Connect::decode(reader)?)),
            P::ConnAck => Packet::ConnAck(ConnAck::decode(reader, version)?),
            P::Publish => return Publish::decode(header.flags, reader, version),
            P::PubAck => Packet::PubAck(Ack::decode(reader, version)?),
            P::PubRec => Packet::PubRec(Ack::decode(reader, version)?),
            P::PubRel => Packet::PubRel(Ack::decode(reader, version)?),
            P::PubComp => Packet::PubComp(Ack::decode(reader, version)?),
            P::Subscribe => Packet::Subscribe(Subscribe::decode(reader, version)?),
            P::SubAck => Packet::SubAck(SubAck::decode(reader, version)?),
            P::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(reader, version)?),
            P::UnsubAck => Packet::UnsubAck(UnsubAck::decode(reader, version)?),
            P::PingReq => {
                reader.finish()?;
                Packet::PingReq
            }
            P::PingResp => {
                reader.finish()?;
                Packet::PingResp
            }
            P::Disconnect => Packet::Disconnect(Disconnect::decode(reader, version)?),
            P::Auth => Packet::Auth(Auth::decode(reader)?),
        }))
    }

    /// The low four bits of the first byte.
    fn flags(&self) -> u8 {
        match self {
            Packet::Publish(publish) => publish.flags(),
            other => other.packet_type().fixed_flags(),
        }
    }

    /// Checks what encoding cannot express and returns the Remaining Length.
    fn remaining_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let len = match self {
            Packet::Connect(connect) => connect.body_len()?,
            Packet::ConnAck(connack) => connack.body_len(version)?,
            Packet::Publish(publish) => publish.body_len(version)?,
            Packet::PubAck(ack)
            | Packet::PubRec(ack)
            | Packet::PubRel(ack)
            | Packet::PubComp(ack) => ack.body_len(self.packet_type(), version)?,
            Packet::Subscribe(subscribe) => subscribe.body_len(version)?,
            Packet::SubAck(suback) => suback.body_len(version)?,
            Packet::Unsubscribe(unsubscribe) => unsubscribe.body_len(version)?,
            Packet::UnsubAck(unsuback) => unsuback.body_len(version)?,
            Packet::PingReq | Packet::PingResp => 0,
            Packet::Disconnect(disconnect) => disconnect.body_len(version)?,
            Packet::Auth(auth) => auth.body_len(version)?,
        };
        if len > MAX_VARINT as usize {
            return Err(EncodeError::PacketTooLarge(self.packet_type()));
        }
        Ok(len)
    }

    /// Bytes the packet takes on the wire in `version`; a CONNECT uses its own version.
    pub fn encoded_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        let remaining = self.remaining_len(version)?;
        Ok(1 + varint_len(remaining as u32) + remaining)
    }

    /// Appends the packet to `buf` as `version` defines it; a CONNECT uses its own version.
    /// On error nothing is written.
    pub fn encode(&self, version: ProtocolVersion, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let remaining = self.remaining_len(version)?;
        buf.reserve(1 + varint_len(remaining as u32) + remaining);
        buf.put_u8(((self.packet_type() as u8) << 4) | self.flags());
        put_varint(buf, remaining as u32);
        match self {
            Packet::Connect(connect) => connect.write_body(buf),
            Packet::ConnAck(connack) => connack.write_body(version, buf),
            Packet::Publish(publish) => publish.write_body(version, buf),
            Packet::PubAck(ack)
            | Packet::PubRec(ack)
            | Packet::PubRel(ack)
            | Packet::PubComp(ack) => ack.write_body(version, buf),
            Packet::Subscribe(subscribe) => subscribe.write_body(version, buf),
            Packet::SubAck(suback) => suback.write_body(version, buf),
            Packet::Unsubscribe(unsubscribe) => unsubscribe.write_body(version, buf),
            Packet::UnsubAck(unsuback) => unsuback.write_body(version, buf),
            Packet::PingReq | Packet::PingResp => {}
            Packet::Disconnect(disconnect) => disconnect.write_body(version, buf),
            Packet::Auth(auth) => auth.write_body(buf),
        }
        Ok(())
    }
}
