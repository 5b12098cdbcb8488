//! `MqttStr`: a UTF-8 Encoded String of MQTT (section 1.5.4) kept as a slice of the read buffer.
//!
//! The constructor checks everything the specification asks of a receiver: well-formed UTF-8 (which
//! excludes the surrogates U+D800..U+DFFF) [MQTT-1.5.4-1], no U+0000 [MQTT-1.5.4-2], and a length
//! that fits the two-byte prefix. Holding an `MqttStr` is proof of all three.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::Bytes;

use crate::error::DecodeError;

/// The longest string the two-byte length prefix can describe.
pub const MAX_STRING_LEN: usize = 65_535;

/// A validated MQTT UTF-8 string sharing the bytes it was read from.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct MqttStr(Bytes);

/// Why a `&str` or `String` cannot become an [`MqttStr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMqttStr {
    #[error("string contains U+0000 [MQTT-1.5.4-2]")]
    NullCharacter,
    #[error("string is longer than 65 535 bytes")]
    TooLong,
}

impl MqttStr {
    /// Validates `bytes` as an MQTT string without copying them.
    pub fn from_bytes(bytes: Bytes) -> Result<MqttStr, DecodeError> {
        if bytes.len() > MAX_STRING_LEN {
            // Only reachable from outside the codec: the decoder reads at most 65 535 bytes.
            return Err(DecodeError::StringTooLong);
        }
        // Most strings (topics, identifiers) are ASCII: one pass proves them valid UTF-8 and
        // free of U+0000. Anything else takes the full UTF-8 check, then the U+0000 scan.
        if !is_plain_ascii(&bytes, false) {
            std::str::from_utf8(&bytes).map_err(|_| DecodeError::InvalidUtf8)?;
            if bytes.contains(&0) {
                return Err(DecodeError::NullCharacter);
            }
        }
        Ok(MqttStr(bytes))
    }

    /// A string from a literal. Panics if the literal breaks the rules above: a bug in the
    /// program, never a consequence of input.
    pub fn from_static(text: &'static str) -> MqttStr {
        match MqttStr::try_from(text) {
            Ok(value) => value,
            Err(error) => panic!("invalid MQTT string literal {text:?}: {error}"),
        }
    }

    /// [`MqttStr::from_bytes`] for a string that should be a topic name, with a fast path for the
    /// usual one: `true` comes with a string known to be a valid topic name (not empty, plain
    /// ASCII without wildcards); with `false` the caller checks it with
    /// [`validate_topic_name`](crate::topic::validate_topic_name).
    #[inline]
    pub(crate) fn from_bytes_topic(bytes: Bytes) -> Result<(MqttStr, bool), DecodeError> {
        if !bytes.is_empty() && bytes.len() <= MAX_STRING_LEN && is_plain_ascii(&bytes, true) {
            return Ok((MqttStr(bytes), true));
        }
        Ok((MqttStr::from_bytes(bytes)?, false))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor (`from_bytes`, `from_bytes_topic`, `try_from`) checks that
        // the bytes are valid UTF-8 (plain ASCII is), and the bytes are immutable afterwards
        // (`Bytes` is a shared, read-only view).
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl TryFrom<&str> for MqttStr {
    type Error = InvalidMqttStr;

    fn try_from(text: &str) -> Result<MqttStr, InvalidMqttStr> {
        check_str(text)?;
        Ok(MqttStr(Bytes::copy_from_slice(text.as_bytes())))
    }
}

impl TryFrom<String> for MqttStr {
    type Error = InvalidMqttStr;

    fn try_from(text: String) -> Result<MqttStr, InvalidMqttStr> {
        check_str(&text)?;
        Ok(MqttStr(Bytes::from(text)))
    }
}

/// `0x01` in every byte of a word.
const LOW_BITS: u64 = 0x0101_0101_0101_0101;
/// `0x80` in every byte of a word.
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// Non-zero when a byte of `word` is zero (exact: no false positives in the "any" sense).
#[inline]
const fn zero_byte(word: u64) -> u64 {
    word.wrapping_sub(LOW_BITS) & !word & HIGH_BITS
}

/// Whether every byte is ASCII other than NUL (and, with `no_wildcards`, other than `+` and
/// `#`), tested eight bytes at a time.
///
/// Such bytes are valid UTF-8 without U+0000: an MQTT string with nothing left to check (and, if
/// not empty, a valid topic name). A `false` says nothing: the caller runs the exact checks,
/// which also name the fault.
#[inline]
fn is_plain_ascii(bytes: &[u8], no_wildcards: bool) -> bool {
    let faults = |word: u64| {
        let mut faults = (word & HIGH_BITS) | zero_byte(word);
        if no_wildcards {
            faults |= zero_byte(word ^ (LOW_BITS * u64::from(b'+')))
                | zero_byte(word ^ (LOW_BITS * u64::from(b'#')));
        }
        faults
    };
    let word = |chunk: &[u8]| {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        u64::from_le_bytes(word)
    };
    if bytes.len() < 8 {
        return bytes.iter().all(|&byte| {
            byte.wrapping_sub(1) < 0x7F && !(no_wildcards && (byte == b'+' || byte == b'#'))
        });
    }
    let mut chunks = bytes.chunks_exact(8);
    let mut found = 0;
    for chunk in &mut chunks {
        found |= faults(word(chunk));
    }
    if !chunks.remainder().is_empty() {
        // The last eight bytes, overlapping some already seen: no partial word to assemble.
        found |= faults(word(&bytes[bytes.len() - 8..]));
    }
    found == 0
}

fn check_str(text: &str) -> Result<(), InvalidMqttStr> {
    if text.len() > MAX_STRING_LEN {
        return Err(InvalidMqttStr::TooLong);
    }
    if text.as_bytes().contains(&0) {
        return Err(InvalidMqttStr::NullCharacter);
    }
    Ok(())
}

impl Deref for MqttStr {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for MqttStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for MqttStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

// Hash as `str` does, so that `Borrow<str>` lookups in hash maps agree with `Eq`.
impl Hash for MqttStr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq<str> for MqttStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MqttStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ill_formed_utf8_is_malformed_mqtt_1_5_4_1() {
        // A lone continuation byte, and the UTF-8 form of the surrogate U+D800.
        for bad in [&b"\x80"[..], &b"\xED\xA0\x80"[..], &b"\xC0\xAF"[..]] {
            assert_eq!(
                MqttStr::from_bytes(Bytes::copy_from_slice(bad)),
                Err(DecodeError::InvalidUtf8)
            );
        }
    }

    #[test]
    fn null_character_is_malformed_mqtt_1_5_4_2() {
        assert_eq!(
            MqttStr::from_bytes(Bytes::from_static(b"a\0b")),
            Err(DecodeError::NullCharacter)
        );
        assert_eq!(MqttStr::try_from("a\0"), Err(InvalidMqttStr::NullCharacter));
    }

    #[test]
    fn plain_ascii_fast_path_agrees_with_the_exact_checks() {
        // Every length up to three words, with each interesting byte at each position.
        for len in 0..24 {
            for at in 0..len {
                for byte in [0x00, 0x01, b'#', b'+', b'a', 0x7F, 0x80, 0xC3, 0xFF] {
                    let mut bytes = vec![b'x'; len];
                    bytes[at] = byte;
                    let ascii = byte != 0 && byte < 0x80;
                    let topic = ascii && byte != b'+' && byte != b'#';
                    assert_eq!(is_plain_ascii(&bytes, false), ascii, "{bytes:?}");
                    assert_eq!(is_plain_ascii(&bytes, true), topic, "{bytes:?}");
                }
            }
            assert!(is_plain_ascii(&vec![b'x'; len], true));
        }
    }

    #[test]
    fn topic_fast_path_vouches_only_for_valid_topic_names() {
        let topic = |bytes: &'static [u8]| {
            MqttStr::from_bytes_topic(Bytes::from_static(bytes)).map(|(s, ok)| (s.to_string(), ok))
        };
        assert_eq!(
            topic(b"sensors/0042/temperature"),
            Ok(("sensors/0042/temperature".into(), true))
        );
        assert_eq!(topic(b""), Ok((String::new(), false)));
        assert_eq!(topic(b"a/+"), Ok(("a/+".into(), false)));
        assert_eq!(
            topic(b"long/topic/name/#"),
            Ok(("long/topic/name/#".into(), false))
        );
        assert_eq!(topic("é/x".as_bytes()), Ok(("é/x".into(), false)));
        assert_eq!(topic(b"a\0b"), Err(DecodeError::NullCharacter));
        assert_eq!(topic(b"abcdefgh/\xFF"), Err(DecodeError::InvalidUtf8));
    }

    #[test]
    fn non_ascii_strings_take_the_exact_path() {
        let text = MqttStr::from_bytes(Bytes::from_static("ä/€/𝄞".as_bytes())).unwrap();
        assert_eq!(text.as_str(), "ä/€/𝄞");
        assert_eq!(
            MqttStr::from_bytes(Bytes::from_static("ä\0".as_bytes())),
            Err(DecodeError::NullCharacter)
        );
        assert_eq!(
            MqttStr::from_bytes(Bytes::from_static(b"abcdefgh\xC3")),
            Err(DecodeError::InvalidUtf8)
        );
    }

    #[test]
    fn bom_is_kept_mqtt_1_5_4_3() {
        let text = MqttStr::from_bytes(Bytes::from_static(b"\xEF\xBB\xBFx")).unwrap();
        assert_eq!(text.as_str(), "\u{FEFF}x");
    }

    #[test]
    fn hash_agrees_with_str() {
        let mut map = std::collections::HashSet::new();
        map.insert(MqttStr::from_static("a/b"));
        assert!(map.contains("a/b"));
    }
}
