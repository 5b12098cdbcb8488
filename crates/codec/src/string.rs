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
        let text = std::str::from_utf8(&bytes).map_err(|_| DecodeError::InvalidUtf8)?;
        if text.len() > MAX_STRING_LEN {
            // Only reachable from outside the codec: the decoder reads at most 65 535 bytes.
            return Err(DecodeError::StringTooLong);
        }
        if text.as_bytes().contains(&0) {
            return Err(DecodeError::NullCharacter);
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

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor (`from_bytes`, `try_from`) checks that the bytes are valid
        // UTF-8, and the bytes are immutable afterwards (`Bytes` is a shared, read-only view).
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
