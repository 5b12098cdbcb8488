//! The key of the server's cache of successful verifications.
//!
//! A fleet that reconnects at once must not cost one argon2id verification per client. The
//! server remembers successes by a keyed digest, never by the password: HMAC-SHA256 under a
//! random key made at start-up (so a dumped cache cannot be attacked offline without the
//! process's memory) of the username, the password and the stored hash. The stored hash is
//! part of the input so that a password changed in the file never matches an old entry.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::hash::StoredHash;

type HmacSha256 = Hmac<Sha256>;

/// A fixed-size digest of one (username, password, stored hash), for a cache's key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CredentialDigest([u8; 32]);

impl std::fmt::Debug for CredentialDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialDigest(..)")
    }
}

/// Makes [`CredentialDigest`]s under one random key; one per server (or per reload).
#[derive(Clone)]
pub struct CredentialDigester {
    mac: HmacSha256,
}

impl std::fmt::Debug for CredentialDigester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialDigester(..)")
    }
}

impl CredentialDigester {
    /// A digester under a fresh random 32-byte key.
    pub fn new() -> Result<CredentialDigester, getrandom::Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(CredentialDigester::with_key(&key))
    }

    /// A digester under a given key (tests).
    pub fn with_key(key: &[u8; 32]) -> CredentialDigester {
        // HMAC takes keys of any length: this cannot fail.
        let mac = match <HmacSha256 as KeyInit>::new_from_slice(key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        CredentialDigester { mac }
    }

    /// The digest of one attempt. Cheap (two SHA-256 compressions and a few more).
    pub fn digest(&self, username: &str, password: &[u8], stored: &StoredHash) -> CredentialDigest {
        let mut mac = self.mac.clone();
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        for field in [username.as_bytes(), password] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        stored.feed_identity(&mut |bytes| mac.update(bytes));
        let mut out = [0u8; 32];
        out.copy_from_slice(&mac.finalize().into_bytes());
        CredentialDigest(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_depends_on_each_input_and_the_key() {
        let a = StoredHash::parse("$6$25dgeanU9Qg15m38$4c+6JqK5B2dUibh8Twc/MXqid8klfC8xyr1cgJarXbs0ASjPWZgs6ald25wNvh+ggPzjhwrsFdw5kgY2oezJaA==").unwrap();
        let b = StoredHash::parse("$6$hRyeamkaA2Vf1i89$SAQprGOCPyi+408oWWibwFwIOYflQ8vundY3TdOyC5DP06a3LI5PzE/3flnA/XAe8xrJ0kV5btR22o6yRHvOvA==").unwrap();
        let digester = CredentialDigester::with_key(&[7; 32]);
        let base = digester.digest("ab", b"c", &a);
        assert_eq!(base, digester.digest("ab", b"c", &a));
        assert_ne!(base, digester.digest("a", b"bc", &a));
        assert_ne!(base, digester.digest("ab", b"d", &a));
        assert_ne!(base, digester.digest("ab", b"c", &b));
        assert_ne!(
            base,
            CredentialDigester::with_key(&[8; 32]).digest("ab", b"c", &a)
        );
        assert_ne!(
            CredentialDigester::new().unwrap().digest("ab", b"c", &a),
            CredentialDigester::new().unwrap().digest("ab", b"c", &a)
        );
    }
}
