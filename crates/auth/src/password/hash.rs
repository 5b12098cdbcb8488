//! One stored password hash: the formats a password file may hold, how each is checked, and
//! how new ones are made (argon2id, PHC string).
//!
//! | prefix        | what it is                                             | written by              |
//! |---------------|--------------------------------------------------------|-------------------------|
//! | `$6$`         | SHA-512(password ‖ salt), Mosquitto's own (not crypt)  | `mosquitto_passwd -H sha512`, Mosquitto ≤ 1.6 |
//! | `$7$`         | PBKDF2-HMAC-SHA512, 64-byte key, any iterations/salt   | `mosquitto_passwd` 2.0  |
//! | `$argon2id$`  | argon2id PHC string (`v=19`, `m`, `t`, `p`)            | `tern passwd`, Mosquitto 2.1 |
//! | `$scram$`     | SCRAM-SHA-256 and -512 keys (salt, iterations, StoredKey, ServerKey) | `tern passwd --scram` |
//!
//! Salts and hashes of `$6$`/`$7$` are standard base64 (with padding, as OpenSSL writes it);
//! PHC strings use unpadded base64. Every comparison of a computed hash with a stored one is
//! constant-time.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use argon2::{Algorithm, Argon2, Params, Version};
use base64ct::{Base64, Base64Unpadded, Encoding};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use crate::scram::{ScramCredentials, ScramError, ScramKeys};

/// Length of a SHA-512 digest, the key length of `$6$` and `$7$`.
const SHA512_LEN: usize = 64;
/// Salt of new argon2id hashes: 16 random bytes (the PHC recommendation).
const NEW_SALT_LEN: usize = 16;
/// Output of new argon2id hashes: 32 bytes.
const NEW_HASH_LEN: usize = 32;

/// The cost of new argon2id hashes.
///
/// The default is OWASP's first recommended configuration for argon2id: 19 MiB of memory,
/// 2 passes, 1 lane (about 15–30 ms on one core of a current server). Each verification in
/// flight holds `memory_kib` KiB, so the server bounds memory by capping concurrent
/// verifications (e.g. 4 × 19 MiB) and makes reconnect storms cheap by remembering successful
/// verifications; stronger settings would multiply that memory per verification for little
/// gain against an attacker who has already stolen the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory, in KiB (argon2's `m`).
    pub memory_kib: u32,
    /// Passes over the memory (argon2's `t`).
    pub iterations: u32,
    /// Lanes (argon2's `p`).
    pub parallelism: u32,
}

impl Argon2Params {
    /// m = 19 MiB, t = 2, p = 1: see the type's documentation.
    pub const DEFAULT: Argon2Params = Argon2Params {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };
}

impl Default for Argon2Params {
    fn default() -> Self {
        Argon2Params::DEFAULT
    }
}

/// The family of a stored hash, for logs and warnings (never the hash itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashScheme {
    /// `$6$`: one round of salted SHA-512; weak against an offline attack.
    MosquittoSha512,
    /// `$7$`: PBKDF2-HMAC-SHA512.
    MosquittoPbkdf2Sha512,
    /// `$argon2id$`.
    Argon2id,
    /// `$scram$`: SCRAM-SHA-256 and SCRAM-SHA-512 credentials.
    Scram,
}

impl fmt::Display for HashScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HashScheme::MosquittoSha512 => "$6$ (salted SHA-512)",
            HashScheme::MosquittoPbkdf2Sha512 => "$7$ (PBKDF2-SHA512)",
            HashScheme::Argon2id => "$argon2id$",
            HashScheme::Scram => "$scram$ (SCRAM-SHA-256/512)",
        })
    }
}

/// Why a hash string cannot be used. The messages never quote the hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashFormatError {
    #[error(
        "not a password hash (expected $6$, $7$, $argon2id$ or $scram$; a clear-text password is not accepted)"
    )]
    UnknownScheme,
    #[error("{0}: wrong number of `$`-separated fields")]
    Fields(&'static str),
    #[error("{0}: the salt is not valid base64 or is empty")]
    Salt(&'static str),
    #[error("{0}: the hash is not valid base64 or has the wrong length")]
    Hash(&'static str),
    #[error("{0}: the iteration count must be a whole number of at least 1")]
    Iterations(&'static str),
    #[error("$argon2id$: unsupported version (expected v=16 or v=19)")]
    Version,
    #[error(
        "$argon2id$: invalid parameters (expected m=KiB,t=passes,p=lanes within argon2's limits)"
    )]
    Argon2Params,
}

/// A new hash could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("no random salt: the system's random source failed: {0}")]
    Random(getrandom::Error),
    #[error("invalid argon2 parameters: {0}")]
    Params(argon2::Error),
}

/// One password hash as stored in a password file.
#[derive(Clone, PartialEq, Eq)]
pub enum StoredHash {
    /// `$6$<salt>$<sha512>`: SHA-512(password ‖ salt).
    MosquittoSha512 {
        salt: Box<[u8]>,
        hash: [u8; SHA512_LEN],
    },
    /// `$7$<iterations>$<salt>$<key>`: PBKDF2-HMAC-SHA512(password, salt, iterations, 64).
    MosquittoPbkdf2Sha512 {
        iterations: NonZeroU32,
        salt: Box<[u8]>,
        hash: [u8; SHA512_LEN],
    },
    /// `$argon2id$v=19$m=..,t=..,p=..$<salt>$<hash>`.
    Argon2id {
        version: Version,
        params: Params,
        salt: Box<[u8]>,
        hash: Box<[u8]>,
    },
    /// `$scram$<iterations>$<salt>$<StoredKey>:<ServerKey>$<StoredKey>:<ServerKey>`: SCRAM
    /// credentials, SHA-256's keys then SHA-512's (boxed: the rare case stays out of the
    /// common size).
    Scram(Box<ScramCredentials>),
}

impl fmt::Debug for StoredHash {
    /// Only the scheme: a hash is not a secret, but it has no place in logs either.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoredHash({})", self.scheme())
    }
}

impl StoredHash {
    /// Parses one hash field of a password file.
    pub fn parse(text: &str) -> Result<StoredHash, HashFormatError> {
        if let Some(rest) = text.strip_prefix("$6$") {
            parse_sha512(rest)
        } else if let Some(rest) = text.strip_prefix("$7$") {
            parse_pbkdf2(rest)
        } else if let Some(rest) = text.strip_prefix("$argon2id$") {
            parse_argon2id(rest)
        } else if let Some(rest) = text.strip_prefix("$scram$") {
            parse_scram(rest)
        } else {
            Err(HashFormatError::UnknownScheme)
        }
    }

    /// The family of this hash.
    pub fn scheme(&self) -> HashScheme {
        match self {
            StoredHash::MosquittoSha512 { .. } => HashScheme::MosquittoSha512,
            StoredHash::MosquittoPbkdf2Sha512 { .. } => HashScheme::MosquittoPbkdf2Sha512,
            StoredHash::Argon2id { .. } => HashScheme::Argon2id,
            StoredHash::Scram(_) => HashScheme::Scram,
        }
    }

    /// The SCRAM credentials, if this is a `$scram$` entry.
    pub fn scram(&self) -> Option<&ScramCredentials> {
        match self {
            StoredHash::Scram(credentials) => Some(credentials),
            _ => None,
        }
    }

    /// Feeds what identifies this hash (scheme, cost, salt, hash) to `sink`: the part of a
    /// cache key that changes when the password in the file changes.
    pub(crate) fn feed_identity(&self, sink: &mut dyn FnMut(&[u8])) {
        let (tag, cost, salt, hash): (u8, [u32; 3], &[u8], &[u8]) = match self {
            StoredHash::MosquittoSha512 { salt, hash } => (6, [0; 3], salt, hash),
            StoredHash::MosquittoPbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => (7, [iterations.get(), 0, 0], salt, hash),
            StoredHash::Argon2id {
                version,
                params,
                salt,
                hash,
            } => (
                if *version == Version::V0x13 { 19 } else { 16 },
                [params.m_cost(), params.t_cost(), params.p_cost()],
                salt,
                hash,
            ),
            StoredHash::Scram(credentials) => (
                b'S',
                [credentials.iterations.get(), 0, 0],
                &credentials.salt,
                &credentials.sha256.stored_key,
            ),
        };
        sink(&[tag]);
        for value in cost {
            sink(&value.to_be_bytes());
        }
        for field in [salt, hash] {
            sink(&(field.len() as u64).to_be_bytes());
            sink(field);
        }
    }

    /// Whether `password` is the one this hash was made from. This is the expensive call
    /// (argon2id: milliseconds and `m` KiB of memory; `$7$`: `iterations` HMACs): run it off
    /// any connection's event loop, on a bounded pool. The final comparison is constant-time.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            StoredHash::MosquittoSha512 { salt, hash } => {
                let mut digest = Sha512::new();
                digest.update(password);
                digest.update(salt);
                let computed = digest.finalize();
                bool::from(computed.as_slice().ct_eq(hash.as_slice()))
            }
            StoredHash::MosquittoPbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => {
                let mut computed = [0u8; SHA512_LEN];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations.get(), &mut computed);
                bool::from(computed.ct_eq(hash))
            }
            StoredHash::Argon2id {
                version,
                params,
                salt,
                hash,
            } => {
                let mut computed = vec![0u8; hash.len()];
                let argon2 = Argon2::new(Algorithm::Argon2id, *version, params.clone());
                match argon2.hash_password_into(password, salt, &mut computed) {
                    Ok(()) => bool::from(computed.as_slice().ct_eq(hash)),
                    // Parameters were checked at parse time; a password or salt out of
                    // argon2's range cannot match.
                    Err(_) => false,
                }
            }
            StoredHash::Scram(credentials) => credentials.verify(password),
        }
    }
}

impl FromStr for StoredHash {
    type Err = HashFormatError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        StoredHash::parse(text)
    }
}

impl fmt::Display for StoredHash {
    /// The hash in its file format (canonical encoding).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoredHash::MosquittoSha512 { salt, hash } => write!(
                f,
                "$6${}${}",
                Base64::encode_string(salt),
                Base64::encode_string(hash)
            ),
            StoredHash::MosquittoPbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${}${}${}",
                iterations,
                Base64::encode_string(salt),
                Base64::encode_string(hash)
            ),
            StoredHash::Argon2id {
                version,
                params,
                salt,
                hash,
            } => {
                let version = if *version == Version::V0x13 { 19 } else { 16 };
                write!(
                    f,
                    "$argon2id$v={version}$m={},t={},p={}${}${}",
                    params.m_cost(),
                    params.t_cost(),
                    params.p_cost(),
                    Base64Unpadded::encode_string(salt),
                    Base64Unpadded::encode_string(hash)
                )
            }
            StoredHash::Scram(credentials) => {
                let keys = |keys: &ScramKeys| {
                    format!(
                        "{}:{}",
                        Base64::encode_string(&keys.stored_key),
                        Base64::encode_string(&keys.server_key)
                    )
                };
                write!(
                    f,
                    "$scram${}${}${}${}",
                    credentials.iterations,
                    Base64::encode_string(&credentials.salt),
                    keys(&credentials.sha256),
                    keys(&credentials.sha512)
                )
            }
        }
    }
}

/// Hashes `password` for a password file: argon2id with [`Argon2Params::DEFAULT`] and a random
/// 16-byte salt, as a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`).
pub fn hash_argon2id(password: &[u8]) -> Result<String, HashError> {
    hash_argon2id_with(password, Argon2Params::DEFAULT)
}

/// Hashes `password` with the given argon2id cost and a random 16-byte salt.
pub fn hash_argon2id_with(password: &[u8], cost: Argon2Params) -> Result<String, HashError> {
    let mut salt = [0u8; NEW_SALT_LEN];
    getrandom::fill(&mut salt).map_err(HashError::Random)?;
    hash_argon2id_salted(password, &salt, cost)
}

/// Hashes with a given salt.
fn hash_argon2id_salted(
    password: &[u8],
    salt: &[u8],
    cost: Argon2Params,
) -> Result<String, HashError> {
    let params = Params::new(
        cost.memory_kib,
        cost.iterations,
        cost.parallelism,
        Some(NEW_HASH_LEN),
    )
    .map_err(HashError::Params)?;
    let mut hash = vec![0u8; NEW_HASH_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into(password, salt, &mut hash)
        .map_err(HashError::Params)?;
    Ok(StoredHash::Argon2id {
        version: Version::V0x13,
        params,
        salt: salt.into(),
        hash: hash.into(),
    }
    .to_string())
}

/// SCRAM credentials for `password` (printable ASCII) with `iterations` and a random salt,
/// in their password-file form (`$scram$...`).
pub fn hash_scram(password: &[u8], iterations: NonZeroU32) -> Result<String, ScramError> {
    Ok(StoredHash::Scram(Box::new(ScramCredentials::new(password, iterations)?)).to_string())
}

/// `<iterations>$<salt>$<stored>:<server>$<stored>:<server>` after `$scram$`.
fn parse_scram(rest: &str) -> Result<StoredHash, HashFormatError> {
    const NAME: &str = "$scram$";
    let mut fields = rest.split('$');
    let (Some(iterations), Some(salt), Some(sha256), Some(sha512), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(HashFormatError::Fields(NAME));
    };
    let iterations = decimal(iterations)
        .and_then(NonZeroU32::new)
        .ok_or(HashFormatError::Iterations(NAME))?;
    let keys = |field: &str, length: usize| -> Result<ScramKeys, HashFormatError> {
        let (stored, server) = field.split_once(':').ok_or(HashFormatError::Hash(NAME))?;
        let decode = |key: &str| {
            decode_base64(key)
                .filter(|key| key.len() == length)
                .map(Vec::into_boxed_slice)
                .ok_or(HashFormatError::Hash(NAME))
        };
        Ok(ScramKeys {
            stored_key: decode(stored)?,
            server_key: decode(server)?,
        })
    };
    Ok(StoredHash::Scram(Box::new(ScramCredentials {
        iterations,
        salt: decode_salt(salt, NAME)?,
        sha256: keys(sha256, 32)?,
        sha512: keys(sha512, 64)?,
    })))
}

/// `<salt>$<hash>` after `$6$`.
fn parse_sha512(rest: &str) -> Result<StoredHash, HashFormatError> {
    const NAME: &str = "$6$";
    let mut fields = rest.split('$');
    let (Some(salt), Some(hash), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(HashFormatError::Fields(NAME));
    };
    Ok(StoredHash::MosquittoSha512 {
        salt: decode_salt(salt, NAME)?,
        hash: decode_sha512(hash, NAME)?,
    })
}

/// `<iterations>$<salt>$<hash>` after `$7$`.
fn parse_pbkdf2(rest: &str) -> Result<StoredHash, HashFormatError> {
    const NAME: &str = "$7$";
    let mut fields = rest.split('$');
    let (Some(iterations), Some(salt), Some(hash), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(HashFormatError::Fields(NAME));
    };
    let iterations = iterations
        .parse::<u32>()
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or(HashFormatError::Iterations(NAME))?;
    Ok(StoredHash::MosquittoPbkdf2Sha512 {
        iterations,
        salt: decode_salt(salt, NAME)?,
        hash: decode_sha512(hash, NAME)?,
    })
}

/// `[v=<version>$]m=<m>,t=<t>,p=<p>$<salt>$<hash>` after `$argon2id$` (PHC string format).
fn parse_argon2id(rest: &str) -> Result<StoredHash, HashFormatError> {
    const NAME: &str = "$argon2id$";
    let fields: Vec<&str> = rest.split('$').collect();
    let (version, params, salt, hash) = match fields.as_slice() {
        [version, params, salt, hash] => (Some(*version), *params, *salt, *hash),
        // No version field: the original 1.0 (0x10), as libargon2 reads it.
        [params, salt, hash] => (None, *params, *salt, *hash),
        _ => return Err(HashFormatError::Fields(NAME)),
    };
    let version = match version {
        None | Some("v=16") => Version::V0x10,
        Some("v=19") => Version::V0x13,
        Some(_) => return Err(HashFormatError::Version),
    };
    let (mut m, mut t, mut p) = (None, None, None);
    for pair in params.split(',') {
        let (key, value) = pair.split_once('=').ok_or(HashFormatError::Argon2Params)?;
        let value: u32 = decimal(value).ok_or(HashFormatError::Argon2Params)?;
        let slot = match key {
            "m" => &mut m,
            "t" => &mut t,
            "p" => &mut p,
            _ => return Err(HashFormatError::Argon2Params),
        };
        if slot.replace(value).is_some() {
            return Err(HashFormatError::Argon2Params);
        }
    }
    let (Some(m), Some(t), Some(p)) = (m, t, p) else {
        return Err(HashFormatError::Argon2Params);
    };
    let salt = Base64Unpadded::decode_vec(salt)
        .ok()
        .filter(|salt| salt.len() >= argon2::MIN_SALT_LEN)
        .ok_or(HashFormatError::Salt(NAME))?;
    let hash = Base64Unpadded::decode_vec(hash)
        .ok()
        .filter(|hash| hash.len() >= Params::MIN_OUTPUT_LEN && hash.len() <= Params::MAX_OUTPUT_LEN)
        .ok_or(HashFormatError::Hash(NAME))?;
    let params =
        Params::new(m, t, p, Some(hash.len())).map_err(|_| HashFormatError::Argon2Params)?;
    Ok(StoredHash::Argon2id {
        version,
        params,
        salt: salt.into(),
        hash: hash.into(),
    })
}

/// A plain decimal number: digits only (no sign, no spaces).
fn decimal(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Mosquitto writes base64 with padding (OpenSSL); accept it without padding too.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    Base64::decode_vec(text)
        .or_else(|_| Base64Unpadded::decode_vec(text))
        .ok()
}

fn decode_salt(text: &str, name: &'static str) -> Result<Box<[u8]>, HashFormatError> {
    match decode_base64(text) {
        Some(salt) if !salt.is_empty() => Ok(salt.into()),
        _ => Err(HashFormatError::Salt(name)),
    }
}

fn decode_sha512(text: &str, name: &'static str) -> Result<[u8; SHA512_LEN], HashFormatError> {
    decode_base64(text)
        .and_then(|hash| <[u8; SHA512_LEN]>::try_from(hash.as_slice()).ok())
        .ok_or(HashFormatError::Hash(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cheap cost for unit tests (the default is exercised in the integration tests).
    const CHEAP: Argon2Params = Argon2Params {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn new_hashes_are_argon2id_phc_strings_that_verify() {
        let text = hash_argon2id_with(b"hunter2", CHEAP).unwrap();
        assert!(text.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{text}");
        let hash = StoredHash::parse(&text).unwrap();
        assert!(hash.verify(b"hunter2"));
        assert!(!hash.verify(b"hunter3"));
        assert_eq!(hash.to_string(), text);
    }

    #[test]
    fn two_hashes_of_one_password_differ_by_their_salt() {
        let a = hash_argon2id_with(b"same", CHEAP).unwrap();
        let b = hash_argon2id_with(b"same", CHEAP).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn clear_text_and_unknown_schemes_are_refused_without_echoing_them() {
        for text in [
            "hunter2",
            "$1$abc$def",
            "$2b$10$xyz",
            "$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
        ] {
            let error = StoredHash::parse(text).unwrap_err();
            assert_eq!(error, HashFormatError::UnknownScheme, "{text}");
            assert!(!error.to_string().contains(text));
        }
    }

    #[test]
    fn malformed_fields_are_named() {
        assert_eq!(
            StoredHash::parse("$6$onlysalt").unwrap_err(),
            HashFormatError::Fields("$6$")
        );
        assert_eq!(
            StoredHash::parse("$7$0$c2FsdA==$aGFzaA==").unwrap_err(),
            HashFormatError::Iterations("$7$")
        );
        assert_eq!(
            StoredHash::parse("$7$-1$c2FsdA==$aGFzaA==").unwrap_err(),
            HashFormatError::Iterations("$7$")
        );
        assert_eq!(
            StoredHash::parse("$7$101$!!$aGFzaA==").unwrap_err(),
            HashFormatError::Salt("$7$")
        );
        // A hash of the wrong length (4 bytes, not 64).
        assert_eq!(
            StoredHash::parse("$7$101$c2FsdA==$aGFzaA==").unwrap_err(),
            HashFormatError::Hash("$7$")
        );
        assert_eq!(
            StoredHash::parse("$argon2id$v=18$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g").unwrap_err(),
            HashFormatError::Version
        );
        assert_eq!(
            StoredHash::parse("$argon2id$v=19$m=64,t=1$c2FsdHNhbHQ$aGFzaGhhc2g").unwrap_err(),
            HashFormatError::Argon2Params
        );
        assert_eq!(
            StoredHash::parse("$argon2id$v=19$m=64,t=1,p=1,t=2$c2FsdHNhbHQ$aGFzaGhhc2g")
                .unwrap_err(),
            HashFormatError::Argon2Params
        );
    }

    #[test]
    fn debug_shows_the_scheme_only() {
        let hash = StoredHash::parse(&hash_argon2id_with(b"x", CHEAP).unwrap()).unwrap();
        assert_eq!(format!("{hash:?}"), "StoredHash($argon2id$)");
    }
}
