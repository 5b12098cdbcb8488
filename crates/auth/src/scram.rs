//! The server side of SCRAM (RFC 5802) with SHA-256 and SHA-512 (RFC 7677 and its SHA-512
//! sibling): the messages, the stored credentials, and how they are derived from a password.
//!
//! One exchange is three steps for the server ([`ScramServer`]):
//!
//! 1. `client-first-message` (`n,,n=user,r=cnonce`): [`ScramServer::client_first`] parses it
//!    and returns the username, so that the caller can look its credentials up;
//! 2. [`ScramServer::server_first`] takes those credentials (or a decoy for an unknown user,
//!    [`ScramServerKeys::decoy`], so the answer does not reveal who exists) and returns
//!    `r=cnonce+snonce,s=salt,i=iterations`;
//! 3. `client-final-message` (`c=biws,r=...,p=proof`): [`ScramServer::client_final`] checks
//!    the channel binding, the nonce and the proof (constant time) and returns
//!    `v=ServerSignature`.
//!
//! Any error ends the exchange; [`ScramError::server_error`] gives RFC 5802's `e=` value for
//! callers that carry one (MQTT refuses with a reason code instead, and Tern sends no `e=`).
//!
//! Channel binding is not offered: a gs2 header `n,,` (client does not support it) or `y,,`
//! (client does but thinks the server does not) is accepted, `p=` is refused.
//!
//! SASLprep: passwords (and the usernames the exchange names) are compared as they are; a
//! password stored for SCRAM must be printable ASCII ([`check_scram_password`]), the one range
//! where SASLprep (RFC 4013) is the identity, so a client that applies SASLprep and one that
//! does not derive the same keys. Nothing else is normalised.

use std::fmt;
use std::num::NonZeroU32;

use base64ct::{Base64, Encoding};
use hmac::{EagerHash, Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// The iteration count of new credentials: RFC 7677's minimum.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Salt of new credentials, in bytes.
const SALT_LEN: usize = 16;
/// Random bytes of the server's part of the nonce (base64: 24 characters).
const NONCE_BYTES: usize = 18;
/// The longest message accepted from a client (a username and a nonce fit in far less).
const MAX_MESSAGE: usize = 4096;

/// The SCRAM mechanisms Tern implements, named as MQTT's Authentication Method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScramMechanism {
    Sha256,
    Sha512,
}

impl ScramMechanism {
    pub const ALL: [ScramMechanism; 2] = [ScramMechanism::Sha256, ScramMechanism::Sha512];

    /// The mechanism's SASL name: `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism with this SASL name.
    pub fn from_name(name: &str) -> Option<ScramMechanism> {
        ScramMechanism::ALL
            .into_iter()
            .find(|mechanism| mechanism.name() == name)
    }
}

impl fmt::Display for ScramMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// StoredKey and ServerKey of one mechanism (the server never needs the password).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub stored_key: Box<[u8]>,
    pub server_key: Box<[u8]>,
}

impl ScramKeys {
    /// The keys of hash `D` for a password, salt and iteration count (RFC 5802 section 3).
    pub fn derive<D: EagerHash>(password: &[u8], salt: &[u8], iterations: u32) -> ScramKeys {
        let mut salted = vec![0u8; <D as Digest>::output_size()];
        pbkdf2::pbkdf2_hmac::<D>(password, salt, iterations, &mut salted);
        let client_key = hmac::<D>(&salted, &[b"Client Key"]);
        ScramKeys {
            stored_key: D::digest(&client_key).to_vec().into(),
            server_key: hmac::<D>(&salted, &[b"Server Key"]).into(),
        }
    }
}

/// What a password file holds for a SCRAM user: one salt and iteration count, and the keys of
/// both mechanisms. Its file form is in `docs/auth.md` (`$scram$...`).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    pub iterations: NonZeroU32,
    pub salt: Box<[u8]>,
    pub sha256: ScramKeys,
    pub sha512: ScramKeys,
}

impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredentials {
    /// Credentials for `password` with a random salt. The password must be printable ASCII
    /// (see the module's notes on SASLprep).
    pub fn new(password: &[u8], iterations: NonZeroU32) -> Result<ScramCredentials, ScramError> {
        check_scram_password(password)?;
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt).map_err(|_| ScramError::Random)?;
        Ok(ScramCredentials::derive(password, &salt, iterations))
    }

    /// Credentials for `password` with this salt (no check of the password).
    pub fn derive(password: &[u8], salt: &[u8], iterations: NonZeroU32) -> ScramCredentials {
        ScramCredentials {
            iterations,
            salt: salt.into(),
            sha256: ScramKeys::derive::<Sha256>(password, salt, iterations.get()),
            sha512: ScramKeys::derive::<Sha512>(password, salt, iterations.get()),
        }
    }

    /// The keys of one mechanism.
    pub fn keys(&self, mechanism: ScramMechanism) -> &ScramKeys {
        match mechanism {
            ScramMechanism::Sha256 => &self.sha256,
            ScramMechanism::Sha512 => &self.sha512,
        }
    }

    /// What the server needs for an exchange with `mechanism`.
    pub fn server_keys(&self, mechanism: ScramMechanism) -> ScramServerKeys {
        let keys = self.keys(mechanism);
        ScramServerKeys {
            salt: self.salt.clone(),
            iterations: self.iterations,
            stored_key: keys.stored_key.clone(),
            server_key: keys.server_key.clone(),
            decoy: false,
        }
    }

    /// Whether `password` (a plain CONNECT's) is the one these credentials were made from:
    /// the SHA-256 StoredKey recomputed (PBKDF2, `iterations` HMACs: run it off the event
    /// loop), compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        let computed = ScramKeys::derive::<Sha256>(password, &self.salt, self.iterations.get());
        bool::from(computed.stored_key.ct_eq(&self.sha256.stored_key))
    }
}

/// A password that SCRAM credentials may be made from: printable ASCII, 1 character or more.
pub fn check_scram_password(password: &[u8]) -> Result<(), ScramError> {
    if password.is_empty() || !password.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(ScramError::PasswordNotAscii);
    }
    Ok(())
}

/// The salt, iteration count and keys one exchange runs with.
#[derive(Clone)]
pub struct ScramServerKeys {
    pub salt: Box<[u8]>,
    pub iterations: NonZeroU32,
    pub stored_key: Box<[u8]>,
    pub server_key: Box<[u8]>,
    /// A stand-in for an unknown user: the exchange runs to the proof and fails there.
    pub decoy: bool,
}

impl fmt::Debug for ScramServerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramServerKeys")
            .field("iterations", &self.iterations)
            .field("decoy", &self.decoy)
            .finish_non_exhaustive()
    }
}

impl ScramServerKeys {
    /// Keys for a user who does not exist: a salt derived from `secret` (a server key) and
    /// the username, so the same name always gets the same salt, and keys no proof matches.
    pub fn decoy(
        secret: &[u8],
        mechanism: ScramMechanism,
        username: &str,
        iterations: NonZeroU32,
    ) -> ScramServerKeys {
        let derive = |label: &[u8]| {
            hmac::<Sha256>(
                secret,
                &[
                    label,
                    mechanism.name().as_bytes(),
                    b"\0",
                    username.as_bytes(),
                ],
            )
        };
        let length = match mechanism {
            ScramMechanism::Sha256 => 32,
            ScramMechanism::Sha512 => 64,
        };
        let key = |label: &[u8]| {
            let mut key = derive(label);
            key.extend(derive(&[label, b"+"].concat()));
            key.truncate(length);
            key.into_boxed_slice()
        };
        let mut salt = derive(b"salt\0");
        salt.truncate(SALT_LEN);
        ScramServerKeys {
            salt: salt.into(),
            iterations,
            stored_key: key(b"stored\0"),
            server_key: key(b"server\0"),
            decoy: true,
        }
    }
}

/// The decoys of unknown users: [`ScramServerKeys::decoy`] under a secret key, so an unknown
/// user's salt is the same at each try. With the key of a password file
/// ([`crate::PasswordFile::decoy_key`]) it stays the same across restarts too, as a real
/// user's does.
#[derive(Clone)]
pub struct ScramDecoys {
    secret: [u8; 32],
    iterations: NonZeroU32,
}

impl fmt::Debug for ScramDecoys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScramDecoys(..)")
    }
}

impl ScramDecoys {
    /// Decoys under a fresh random key, with [`DEFAULT_ITERATIONS`].
    pub fn new() -> Result<ScramDecoys, ScramError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|_| ScramError::Random)?;
        Ok(ScramDecoys::with_key(secret, None))
    }

    /// Decoys under `secret`, announcing `iterations` (default [`DEFAULT_ITERATIONS`]): for a
    /// password file, its [`crate::PasswordFile::decoy_key`] and the iteration count most of
    /// its users have, so a decoy looks like its neighbours.
    pub fn with_key(secret: [u8; 32], iterations: Option<NonZeroU32>) -> ScramDecoys {
        let default = NonZeroU32::new(DEFAULT_ITERATIONS).unwrap_or(NonZeroU32::MIN);
        ScramDecoys {
            secret,
            iterations: iterations.unwrap_or(default),
        }
    }

    /// The decoy keys of `username` for `mechanism`.
    pub fn keys(&self, mechanism: ScramMechanism, username: &str) -> ScramServerKeys {
        ScramServerKeys::decoy(&self.secret, mechanism, username, self.iterations)
    }
}

/// Why an exchange failed. [`ScramError::server_error`] gives RFC 5802's `e=` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message")]
    Malformed,
    #[error("the username is not a valid saslname")]
    InvalidUsername,
    #[error("an authorization identity other than the username is not supported")]
    AuthzidRefused,
    #[error("channel binding requested, but this server offers none")]
    ChannelBindingNotSupported,
    #[error("the channel binding does not match the gs2 header")]
    ChannelBindingMismatch,
    #[error("a mandatory extension is not supported")]
    ExtensionNotSupported,
    #[error("the nonce does not match")]
    NonceMismatch,
    #[error("the proof is wrong")]
    InvalidProof,
    #[error("unknown user")]
    UnknownUser,
    #[error("message out of order")]
    OutOfOrder,
    #[error("a SCRAM password must be printable ASCII (SASLprep is not applied)")]
    PasswordNotAscii,
    #[error("the system's random source failed")]
    Random,
}

impl ScramError {
    /// The `server-error-value` of RFC 5802 section 7 (`e=...` in server-final-message).
    pub fn server_error(self) -> &'static str {
        match self {
            ScramError::Malformed | ScramError::OutOfOrder => "other-error",
            ScramError::InvalidUsername => "invalid-username-encoding",
            ScramError::AuthzidRefused => "other-error",
            ScramError::ChannelBindingNotSupported => "channel-binding-not-supported",
            ScramError::ChannelBindingMismatch => "channel-bindings-dont-match",
            ScramError::ExtensionNotSupported => "extensions-not-supported",
            ScramError::NonceMismatch => "other-error",
            // An unknown user fails like a wrong password: nothing tells them apart.
            ScramError::InvalidProof | ScramError::UnknownUser => "invalid-proof",
            ScramError::PasswordNotAscii | ScramError::Random => "other-error",
        }
    }
}

/// HMAC of the concatenated `parts` under `key`.
fn hmac<D: EagerHash>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes keys of any length: this cannot fail.
    let Ok(mut mac) = <Hmac<D> as KeyInit>::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of any length")
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Where an exchange is.
enum State {
    AwaitingClientFirst,
    /// client-first parsed: the username is known, the credentials are not yet.
    GotClientFirst {
        gs2_header: String,
        client_first_bare: String,
        client_nonce: String,
        username: String,
    },
    AwaitingClientFinal {
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
        keys: ScramServerKeys,
    },
    Done,
}

/// The server side of one SCRAM exchange, generic over the hash `D` (SHA-256, SHA-512; SHA-1
/// in the RFC 5802 known-answer test).
pub struct ScramServer<D: EagerHash = Sha256> {
    server_nonce: String,
    state: State,
    hash: std::marker::PhantomData<D>,
}

impl<D: EagerHash> fmt::Debug for ScramServer<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ScramServer(..)")
    }
}

impl<D: EagerHash> ScramServer<D> {
    /// An exchange with a fresh server nonce from the system's CSPRNG.
    pub fn new() -> Result<ScramServer<D>, ScramError> {
        let mut bytes = [0u8; NONCE_BYTES];
        getrandom::fill(&mut bytes).map_err(|_| ScramError::Random)?;
        Ok(ScramServer::with_nonce(&Base64::encode_string(&bytes)))
    }

    /// An exchange with a given server nonce (known-answer tests).
    pub fn with_nonce(server_nonce: &str) -> ScramServer<D> {
        ScramServer {
            server_nonce: server_nonce.to_owned(),
            state: State::AwaitingClientFirst,
            hash: std::marker::PhantomData,
        }
    }

    /// Parses client-first-message; returns the username (saslname decoded).
    pub fn client_first(&mut self, message: &[u8]) -> Result<&str, ScramError> {
        if !matches!(self.state, State::AwaitingClientFirst) {
            return self.fail(ScramError::OutOfOrder);
        }
        match parse_client_first(message) {
            Ok(state) => {
                self.state = state;
                match &self.state {
                    State::GotClientFirst { username, .. } => Ok(username),
                    _ => Err(ScramError::OutOfOrder),
                }
            }
            Err(error) => self.fail(error),
        }
    }

    /// The server-first-message, with the user's salt and iteration count.
    pub fn server_first(&mut self, keys: ScramServerKeys) -> Result<String, ScramError> {
        let State::GotClientFirst {
            gs2_header,
            client_first_bare,
            client_nonce,
            ..
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            Base64::encode_string(&keys.salt),
            keys.iterations
        );
        self.state = State::AwaitingClientFinal {
            gs2_header,
            client_first_bare,
            server_first: server_first.clone(),
            nonce,
            keys,
        };
        Ok(server_first)
    }

    /// Checks client-final-message; returns the server-final-message (`v=...`).
    pub fn client_final(&mut self, message: &[u8]) -> Result<String, ScramError> {
        let State::AwaitingClientFinal {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
            keys,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let message = text(message)?;
        // client-final-message-without-proof "," proof; the proof is the last attribute.
        let (without_proof, proof) = message.rsplit_once(",p=").ok_or(ScramError::Malformed)?;
        let mut attributes = without_proof.split(',');
        let binding = attributes
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed)?;
        let client_nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed)?;
        for extension in attributes {
            check_extension(extension)?;
        }
        if proof.contains(',') {
            return Err(ScramError::Malformed);
        }
        let binding = Base64::decode_vec(binding).map_err(|_| ScramError::Malformed)?;
        if binding != gs2_header.as_bytes() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        if !bool::from(client_nonce.as_bytes().ct_eq(nonce.as_bytes())) {
            return Err(ScramError::NonceMismatch);
        }
        let proof = Base64::decode_vec(proof).map_err(|_| ScramError::Malformed)?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac::<D>(&keys.stored_key, &[auth_message.as_bytes()]);
        if proof.len() != signature.len() {
            return Err(ScramError::InvalidProof);
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        let computed = D::digest(&client_key);
        let matches = bool::from(computed.as_slice().ct_eq(&keys.stored_key));
        if keys.decoy {
            return Err(ScramError::UnknownUser);
        }
        if !matches {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = hmac::<D>(&keys.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", Base64::encode_string(&server_signature)))
    }

    fn fail<T>(&mut self, error: ScramError) -> Result<T, ScramError> {
        self.state = State::Done;
        Err(error)
    }
}

/// A [`ScramServer`] for a mechanism chosen at run time (the one a client names).
#[derive(Debug)]
pub enum ScramSession {
    Sha256(ScramServer<Sha256>),
    Sha512(ScramServer<Sha512>),
}

impl ScramSession {
    /// An exchange for `mechanism`, with a fresh server nonce.
    pub fn new(mechanism: ScramMechanism) -> Result<ScramSession, ScramError> {
        Ok(match mechanism {
            ScramMechanism::Sha256 => ScramSession::Sha256(ScramServer::new()?),
            ScramMechanism::Sha512 => ScramSession::Sha512(ScramServer::new()?),
        })
    }

    pub fn mechanism(&self) -> ScramMechanism {
        match self {
            ScramSession::Sha256(_) => ScramMechanism::Sha256,
            ScramSession::Sha512(_) => ScramMechanism::Sha512,
        }
    }

    /// See [`ScramServer::client_first`].
    pub fn client_first(&mut self, message: &[u8]) -> Result<&str, ScramError> {
        match self {
            ScramSession::Sha256(server) => server.client_first(message),
            ScramSession::Sha512(server) => server.client_first(message),
        }
    }

    /// See [`ScramServer::server_first`].
    pub fn server_first(&mut self, keys: ScramServerKeys) -> Result<String, ScramError> {
        match self {
            ScramSession::Sha256(server) => server.server_first(keys),
            ScramSession::Sha512(server) => server.server_first(keys),
        }
    }

    /// See [`ScramServer::client_final`].
    pub fn client_final(&mut self, message: &[u8]) -> Result<String, ScramError> {
        match self {
            ScramSession::Sha256(server) => server.client_final(message),
            ScramSession::Sha512(server) => server.client_final(message),
        }
    }
}

fn text(message: &[u8]) -> Result<&str, ScramError> {
    if message.len() > MAX_MESSAGE {
        return Err(ScramError::Malformed);
    }
    std::str::from_utf8(message).map_err(|_| ScramError::Malformed)
}

/// An optional extension `x=value` is ignored; `m=` (mandatory, reserved) is refused.
fn check_extension(attribute: &str) -> Result<(), ScramError> {
    let bytes = attribute.as_bytes();
    if bytes.len() < 2 || bytes[1] != b'=' || !bytes[0].is_ascii_alphabetic() {
        return Err(ScramError::Malformed);
    }
    if bytes[0] == b'm' {
        return Err(ScramError::ExtensionNotSupported);
    }
    Ok(())
}

/// Decodes a saslname: `=2C` is `,`, `=3D` is `=`, any other `=` is invalid.
pub fn decode_saslname(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3);
        match escape {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::InvalidUsername),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(ScramError::InvalidUsername);
    }
    Ok(out)
}

/// Encodes a username as a saslname (the client's side; tests and tools).
pub fn encode_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn parse_client_first(message: &[u8]) -> Result<State, ScramError> {
    let message = text(message)?;
    let mut parts = message.splitn(3, ',');
    let (Some(flag), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ScramError::Malformed);
    };
    match flag {
        "n" | "y" => {}
        flag if flag.starts_with("p=") => return Err(ScramError::ChannelBindingNotSupported),
        _ => return Err(ScramError::Malformed),
    }
    let authzid = match authzid {
        "" => None,
        other => Some(decode_saslname(
            other.strip_prefix("a=").ok_or(ScramError::Malformed)?,
        )?),
    };
    let mut attributes = bare.split(',');
    let first = attributes.next().ok_or(ScramError::Malformed)?;
    if first.starts_with("m=") {
        return Err(ScramError::ExtensionNotSupported);
    }
    let username = decode_saslname(first.strip_prefix("n=").ok_or(ScramError::Malformed)?)?;
    let client_nonce = attributes
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(ScramError::Malformed)?;
    if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(ScramError::Malformed);
    }
    for extension in attributes {
        check_extension(extension)?;
    }
    if authzid.is_some_and(|authzid| authzid != username) {
        return Err(ScramError::AuthzidRefused);
    }
    Ok(State::GotClientFirst {
        // The gs2 header exactly as sent: what `c=` must carry back.
        gs2_header: message[..message.len() - bare.len()].to_owned(),
        client_first_bare: bare.to_owned(),
        client_nonce: client_nonce.to_owned(),
        username,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saslnames() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert_eq!(decode_saslname("plain").unwrap(), "plain");
        assert_eq!(
            decode_saslname("a=2").unwrap_err(),
            ScramError::InvalidUsername
        );
        assert_eq!(
            decode_saslname("a=41").unwrap_err(),
            ScramError::InvalidUsername
        );
        assert_eq!(
            decode_saslname("").unwrap_err(),
            ScramError::InvalidUsername
        );
        assert_eq!(encode_saslname("a,b=c"), "a=2Cb=3Dc");
    }
}
