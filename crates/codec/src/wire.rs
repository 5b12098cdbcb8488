//! Bounds-checked reading and the small writing helpers shared by every packet.
//!
//! `Reader` hands out `Bytes` slices of the packet it reads (zero copy) and turns every short read
//! into [`DecodeError::Truncated`] naming the field, so no decoder indexes a buffer directly.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::packet::PacketType;
use crate::string::MqttStr;
use crate::varint::read_varint;

/// Reads the body of one packet.
pub(crate) struct Reader {
    bytes: Bytes,
    packet: PacketType,
}

impl Reader {
    pub(crate) fn new(bytes: Bytes, packet: PacketType) -> Reader {
        Reader { bytes, packet }
    }

    pub(crate) fn packet(&self) -> PacketType {
        self.packet
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn need(&self, len: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.bytes.len() < len {
            return Err(DecodeError::Truncated {
                packet: self.packet,
                field,
            });
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.bytes.get_u8())
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.bytes.get_u16())
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.bytes.get_u32())
    }

    pub(crate) fn varint(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        match read_varint(&self.bytes)? {
            Some((value, len)) => {
                self.bytes.advance(len);
                Ok(value)
            }
            None => Err(DecodeError::Truncated {
                packet: self.packet,
                field,
            }),
        }
    }

    /// Binary Data (section 1.5.6): a two-byte length, then that many bytes.
    pub(crate) fn binary(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16(field)?);
        self.need(len, field)?;
        Ok(self.bytes.split_to(len))
    }

    /// UTF-8 Encoded String (section 1.5.4).
    pub(crate) fn string(&mut self, field: &'static str) -> Result<MqttStr, DecodeError> {
        MqttStr::from_bytes(self.binary(field)?)
    }

    /// A UTF-8 Encoded String that should be a topic name. Returns it with `true` when it is
    /// already known to be one: plain ASCII without wildcards, and not empty. With `false` the
    /// caller checks it with [`validate_topic_name`](crate::topic::validate_topic_name).
    pub(crate) fn topic_name(
        &mut self,
        field: &'static str,
    ) -> Result<(MqttStr, bool), DecodeError> {
        MqttStr::from_bytes_topic(self.binary(field)?)
    }

    /// Consumes a Property Length of 0 (one zero byte) if one comes next.
    pub(crate) fn skip_empty_properties(&mut self) -> bool {
        if self.bytes.first() == Some(&0) {
            self.bytes.advance(1);
            true
        } else {
            false
        }
    }

    /// The next `len` bytes as a reader of their own.
    pub(crate) fn take(&mut self, len: usize, field: &'static str) -> Result<Reader, DecodeError> {
        self.need(len, field)?;
        Ok(Reader {
            bytes: self.bytes.split_to(len),
            packet: self.packet,
        })
    }

    /// Everything not read yet. Consumes the reader: nothing is left to drop.
    pub(crate) fn rest(self) -> Bytes {
        self.bytes
    }

    /// Fails when bytes are left over: the remaining length said more than the content holds.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                packet: self.packet,
                extra: self.bytes.len(),
            })
        }
    }
}

/// Bytes a UTF-8 string takes on the wire.
pub(crate) fn string_len(text: &MqttStr) -> usize {
    2 + text.len()
}

/// Bytes binary data takes on the wire.
pub(crate) fn binary_len(data: &[u8]) -> usize {
    2 + data.len()
}

pub(crate) fn check_binary(field: &'static str, data: &[u8]) -> Result<(), EncodeError> {
    if data.len() > usize::from(u16::MAX) {
        return Err(EncodeError::BinaryTooLong {
            field,
            len: data.len(),
        });
    }
    Ok(())
}

/// Writes a string; `MqttStr` guarantees it fits the two-byte prefix.
pub(crate) fn put_string(buf: &mut BytesMut, text: &MqttStr) {
    put_binary(buf, text.as_str().as_bytes());
}

/// Writes binary data; the caller has checked the length with [`check_binary`].
pub(crate) fn put_binary(buf: &mut BytesMut, data: &[u8]) {
    debug_assert!(data.len() <= usize::from(u16::MAX));
    buf.put_u16(data.len() as u16);
    buf.put_slice(data);
}
