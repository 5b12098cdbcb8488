//! The Variable Byte Integer of MQTT (section 1.5.5): seven bits a byte, least significant group first,
//! at most four bytes, always in the shortest form.

use bytes::{BufMut, BytesMut};

use crate::error::DecodeError;

/// The largest value four bytes can carry: 268 435 455.
pub const MAX_VARINT: u32 = 268_435_455;

/// Number of bytes `value` takes on the wire.
pub(crate) const fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends `value` in its minimal encoding. `value` must not exceed [`MAX_VARINT`]; callers check
/// this before they start writing a packet.
pub(crate) fn put_varint(buf: &mut BytesMut, mut value: u32) {
    debug_assert!(value <= MAX_VARINT);
    loop {
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            return;
        }
    }
}

/// Reads a Variable Byte Integer from the start of `bytes`.
///
/// Returns `Ok(None)` when `bytes` ends before the integer does, `Ok(Some((value, length)))` when
/// it is whole. A fifth byte, or a longer form than needed, is malformed [MQTT-1.5.5-1].
pub(crate) fn read_varint(bytes: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        if index == 4 {
            return Err(DecodeError::VarIntTooLong);
        }
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            if index > 0 && byte == 0 {
                return Err(DecodeError::VarIntNotMinimal);
            }
            return Ok(Some((value, index + 1)));
        }
    }
    if bytes.len() >= 4 {
        return Err(DecodeError::VarIntTooLong);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_round_trip_in_minimal_form() {
        for (value, len) in [
            (0, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (2_097_151, 3),
            (2_097_152, 4),
            (MAX_VARINT, 4),
        ] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, value);
            assert_eq!(buf.len(), len, "{value}");
            assert_eq!(varint_len(value), len);
            assert_eq!(read_varint(&buf), Ok(Some((value, len))));
        }
    }

    #[test]
    fn spec_examples() {
        // Table 1.5.5: 321 is 0xC1 0x02.
        assert_eq!(read_varint(&[0xC1, 0x02]), Ok(Some((321, 2))));
        assert_eq!(
            read_varint(&[0xFF, 0xFF, 0xFF, 0x7F]),
            Ok(Some((MAX_VARINT, 4)))
        );
    }

    #[test]
    fn incomplete_then_too_long() {
        assert_eq!(read_varint(&[]), Ok(None));
        assert_eq!(read_varint(&[0x80, 0x80, 0x80]), Ok(None));
        assert_eq!(
            read_varint(&[0x80, 0x80, 0x80, 0x80]),
            Err(DecodeError::VarIntTooLong)
        );
        assert_eq!(
            read_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(DecodeError::VarIntTooLong)
        );
    }

    #[test]
    fn non_minimal_forms_are_malformed_mqtt_1_5_5_1() {
        assert_eq!(
            read_varint(&[0x80, 0x00]),
            Err(DecodeError::VarIntNotMinimal)
        );
        assert_eq!(
            read_varint(&[0x81, 0x80, 0x00]),
            Err(DecodeError::VarIntNotMinimal)
        );
    }
}
