//! SCRAM (RFC 5802, RFC 7677), the server side: the RFCs' known-answer vectors, round trips
//! with SHA-256 and SHA-512 against a client written here from the RFC (it shares no code with
//! the server's), and every refusal.

use std::num::NonZeroU32;

use base64ct::{Base64, Encoding};
use hmac::{EagerHash, Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256, Sha512};
use tern_auth::scram::{
    ScramCredentials, ScramError, ScramKeys, ScramMechanism, ScramServer, ScramServerKeys,
    check_scram_password,
};
use tern_auth::{StoredHash, hash_scram};

fn iterations(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn keys_of(salt: &[u8], count: u32, keys: ScramKeys) -> ScramServerKeys {
    ScramServerKeys {
        salt: salt.into(),
        iterations: iterations(count),
        stored_key: keys.stored_key,
        server_key: keys.server_key,
        decoy: false,
    }
}

/// RFC 5802 section 5: the SCRAM-SHA-1 example (user "user", password "pencil"), with the
/// generic server instantiated for SHA-1.
#[test]
fn rfc5802_sha1_vector() {
    let salt = Base64::decode_vec("QSXCR+Q6sek8bf92").unwrap();
    let keys = ScramKeys::derive::<sha1::Sha1>(b"pencil", &salt, 4096);
    let mut server = ScramServer::<sha1::Sha1>::with_nonce("3rfcNHYJY1ZVvWVs7j");
    assert_eq!(
        server.client_first(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"),
        Ok("user")
    );
    assert_eq!(
        server.server_first(keys_of(&salt, 4096, keys)).unwrap(),
        "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    );
    assert_eq!(
        server
            .client_final(b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
            .unwrap(),
        "v=rmF9pqV8S7suAoZWja4dJRkFsKQ="
    );
}

const RFC7677_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const RFC7677_SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC7677_CLIENT_FINAL: &[u8] = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";

fn rfc7677_server(credentials: &ScramCredentials) -> ScramServer<Sha256> {
    let mut server = ScramServer::<Sha256>::with_nonce("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
    assert_eq!(
        server.client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"),
        Ok("user")
    );
    let first = server
        .server_first(credentials.server_keys(ScramMechanism::Sha256))
        .unwrap();
    assert_eq!(first, RFC7677_SERVER_FIRST);
    server
}

/// RFC 7677 section 3: the SCRAM-SHA-256 example (user "user", password "pencil"), through the
/// stored credentials (`$scram$` line) the server would read from a password file.
#[test]
fn rfc7677_sha256_vector() {
    let salt = Base64::decode_vec(RFC7677_SALT).unwrap();
    let credentials = ScramCredentials::derive(b"pencil", &salt, iterations(4096));
    let line = StoredHash::Scram(Box::new(credentials.clone())).to_string();
    let parsed = StoredHash::parse(&line).unwrap();
    assert_eq!(parsed.to_string(), line);
    let credentials = parsed.scram().unwrap();
    let mut server = rfc7677_server(credentials);
    assert_eq!(
        server.client_final(RFC7677_CLIENT_FINAL).unwrap(),
        "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    );
    // The same line verifies a plain CONNECT password by recomputing StoredKey.
    assert!(parsed.verify(b"pencil"));
    assert!(!parsed.verify(b"pencil2"));
}

/// A SCRAM client written from RFC 5802 section 3 (independent of the server's code).
struct Client {
    gs2: &'static str,
    bare: String,
    nonce: String,
}

fn mac<D: EagerHash>(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<D> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

impl Client {
    fn new(gs2: &'static str, user: &str, nonce: &str) -> Client {
        Client {
            gs2,
            bare: format!("n={user},r={nonce}"),
            nonce: nonce.to_owned(),
        }
    }

    fn first(&self) -> String {
        format!("{}{}", self.gs2, self.bare)
    }

    /// client-final-message for `server_first`, and the ServerSignature to expect.
    fn finish<D: EagerHash>(&self, password: &str, server_first: &str) -> (String, String) {
        let mut nonce = "";
        let mut salt = Vec::new();
        let mut count = 0;
        for attribute in server_first.split(',') {
            match attribute.split_at(2) {
                ("r=", value) => nonce = value,
                ("s=", value) => salt = Base64::decode_vec(value).unwrap(),
                ("i=", value) => count = value.parse().unwrap(),
                _ => {}
            }
        }
        assert!(nonce.starts_with(&self.nonce) && nonce.len() > self.nonce.len());
        let mut salted = vec![0u8; <D as Digest>::output_size()];
        pbkdf2::pbkdf2_hmac::<D>(password.as_bytes(), &salt, count, &mut salted);
        let client_key = mac::<D>(&salted, b"Client Key");
        let stored_key = D::digest(&client_key).to_vec();
        let without_proof = format!("c={},r={nonce}", Base64::encode_string(self.gs2.as_bytes()));
        let auth_message = format!("{},{server_first},{without_proof}", self.bare);
        let signature = mac::<D>(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = mac::<D>(&salted, b"Server Key");
        let server_signature = mac::<D>(&server_key, auth_message.as_bytes());
        (
            format!("{without_proof},p={}", Base64::encode_string(&proof)),
            format!("v={}", Base64::encode_string(&server_signature)),
        )
    }
}

fn round_trip<D: EagerHash>(
    mechanism: ScramMechanism,
    stored: &ScramCredentials,
    gs2: &'static str,
    password: &str,
) -> Result<(), ScramError> {
    let client = Client::new(gs2, "alice", "clientnonce123");
    let mut server = ScramServer::<D>::new()?;
    assert_eq!(server.client_first(client.first().as_bytes())?, "alice");
    let first = server.server_first(stored.server_keys(mechanism))?;
    let (last, expected) = client.finish::<D>(password, &first);
    let final_message = server.client_final(last.as_bytes())?;
    assert_eq!(final_message, expected, "the client verifies the server");
    Ok(())
}

/// SCRAM-SHA-512 and SCRAM-SHA-256 with credentials made by `hash_scram` (the `tern passwd
/// --scram` path), gs2 headers `n,,` and `y,,`; a wrong password fails at the proof.
#[test]
fn round_trips_and_wrong_password() {
    let line = hash_scram(b"s3cret pass", iterations(4096)).unwrap();
    assert!(line.starts_with("$scram$4096$"), "{line}");
    let stored = StoredHash::parse(&line).unwrap();
    let credentials = stored.scram().unwrap();
    for gs2 in ["n,,", "y,,"] {
        round_trip::<Sha512>(ScramMechanism::Sha512, credentials, gs2, "s3cret pass").unwrap();
        round_trip::<Sha256>(ScramMechanism::Sha256, credentials, gs2, "s3cret pass").unwrap();
    }
    assert_eq!(
        round_trip::<Sha512>(ScramMechanism::Sha512, credentials, "n,,", "wrong"),
        Err(ScramError::InvalidProof)
    );
    // A proof made with the other mechanism's hash does not pass either.
    let client = Client::new("n,,", "alice", "abc");
    let mut server = ScramServer::<Sha512>::new().unwrap();
    server.client_first(client.first().as_bytes()).unwrap();
    let first = server
        .server_first(credentials.server_keys(ScramMechanism::Sha512))
        .unwrap();
    let (last, _) = client.finish::<Sha256>("s3cret pass", &first);
    assert_eq!(
        server.client_final(last.as_bytes()),
        Err(ScramError::InvalidProof)
    );
}

/// An unknown user gets a decoy salt that is stable for a name and server key (and differs
/// between names), and fails at the proof, whatever the password.
#[test]
fn unknown_users_get_a_stable_decoy() {
    let secret = [9u8; 32];
    let a = ScramServerKeys::decoy(&secret, ScramMechanism::Sha256, "nobody", iterations(4096));
    let b = ScramServerKeys::decoy(&secret, ScramMechanism::Sha256, "nobody", iterations(4096));
    let c = ScramServerKeys::decoy(&secret, ScramMechanism::Sha256, "other", iterations(4096));
    assert_eq!(a.salt, b.salt);
    assert_ne!(a.salt, c.salt);
    assert_eq!(a.salt.len(), 16);
    let client = Client::new("n,,", "nobody", "n0nce");
    let mut server = ScramServer::<Sha256>::new().unwrap();
    server.client_first(client.first().as_bytes()).unwrap();
    let first = server.server_first(a).unwrap();
    let (last, _) = client.finish::<Sha256>("anything", &first);
    let error = server.client_final(last.as_bytes()).unwrap_err();
    assert_eq!(error, ScramError::UnknownUser);
    assert_eq!(
        error.server_error(),
        ScramError::InvalidProof.server_error()
    );
}

fn rfc7677_credentials() -> ScramCredentials {
    let salt = Base64::decode_vec(RFC7677_SALT).unwrap();
    ScramCredentials::derive(b"pencil", &salt, iterations(4096))
}

/// RFC 5802 section 5.1: the nonce in client-final must be the one the server sent; the
/// channel binding must repeat the gs2 header; a proof that does not decode is refused.
#[test]
fn client_final_refusals() {
    let credentials = rfc7677_credentials();
    let cases: [(&[u8], ScramError); 7] = [
        (
            b"c=biws,r=rOprNGfwEbeRWgbNEkqOXXX,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            ScramError::NonceMismatch,
        ),
        (
            b"c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            ScramError::ChannelBindingMismatch,
        ),
        (
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAAZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            ScramError::InvalidProof,
        ),
        (
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA",
            ScramError::InvalidProof,
        ),
        (
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=!!",
            ScramError::Malformed,
        ),
        (
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            ScramError::Malformed,
        ),
        (
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,m=x,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            ScramError::ExtensionNotSupported,
        ),
    ];
    for (message, expected) in cases {
        let mut server = rfc7677_server(&credentials);
        assert_eq!(
            server.client_final(message),
            Err(expected),
            "{}",
            String::from_utf8_lossy(message)
        );
        // The exchange is over after a failure.
        assert_eq!(
            server.client_final(RFC7677_CLIENT_FINAL),
            Err(ScramError::OutOfOrder)
        );
    }
    // Still the right answer for the right message (nothing above was a fluke).
    let mut server = rfc7677_server(&credentials);
    assert!(server.client_final(RFC7677_CLIENT_FINAL).is_ok());
}

/// RFC 5802 section 7: malformed client-first messages, channel binding `p=` (not offered),
/// `m=` extensions, bad saslnames and a foreign authzid are refused.
#[test]
fn client_first_refusals() {
    let cases: [(&[u8], ScramError); 11] = [
        (
            b"p=tls-unique,,n=user,r=abc",
            ScramError::ChannelBindingNotSupported,
        ),
        (b"x,,n=user,r=abc", ScramError::Malformed),
        (b"n,,n=user", ScramError::Malformed),
        (b"n,,r=abc,n=user", ScramError::Malformed),
        (b"n,,n=us=er,r=abc", ScramError::InvalidUsername),
        (b"n,,n=,r=abc", ScramError::InvalidUsername),
        (b"n,,m=ext,n=user,r=abc", ScramError::ExtensionNotSupported),
        (b"n,,n=user,r=", ScramError::Malformed),
        (b"n,a=admin,n=user,r=abc", ScramError::AuthzidRefused),
        (b"n,,n=user,r=a\xffb", ScramError::Malformed),
        (b"", ScramError::Malformed),
    ];
    for (message, expected) in cases {
        let mut server = ScramServer::<Sha256>::new().unwrap();
        assert_eq!(
            server.client_first(message).map(str::to_owned),
            Err(expected),
            "{}",
            String::from_utf8_lossy(message)
        );
    }
    // Accepted: an authzid equal to the username, escaped names, optional extensions.
    let mut server = ScramServer::<Sha256>::new().unwrap();
    assert_eq!(
        server.client_first(b"y,a=a=2Cb,n=a=2Cb,r=abc,x=1"),
        Ok("a,b")
    );
    let oversized = format!("n,,n=user,r={}", "a".repeat(5000));
    let mut server = ScramServer::<Sha256>::new().unwrap();
    assert_eq!(
        server.client_first(oversized.as_bytes()),
        Err(ScramError::Malformed)
    );
}

/// The steps come in order: client-final before server-first, client-first twice.
#[test]
fn wrong_order_is_refused() {
    let credentials = rfc7677_credentials();
    let mut server = ScramServer::<Sha256>::new().unwrap();
    assert_eq!(
        server.client_final(RFC7677_CLIENT_FINAL),
        Err(ScramError::OutOfOrder)
    );
    assert!(
        server
            .server_first(credentials.server_keys(ScramMechanism::Sha256))
            .is_err()
    );
    let mut server = ScramServer::<Sha256>::new().unwrap();
    server.client_first(b"n,,n=user,r=abc").unwrap();
    assert_eq!(
        server.client_first(b"n,,n=user,r=abc"),
        Err(ScramError::OutOfOrder)
    );
}

/// SASLprep decision: SCRAM credentials are made from printable ASCII only.
#[test]
fn scram_passwords_are_printable_ascii() {
    assert!(check_scram_password(b"pencil with spaces ~").is_ok());
    for bad in [&b""[..], b"tab\there", "caf\u{e9}".as_bytes(), b"nul\0"] {
        assert_eq!(check_scram_password(bad), Err(ScramError::PasswordNotAscii));
        assert!(hash_scram(bad, iterations(4096)).is_err());
    }
}

/// The `$scram$` line: malformed ones are named, never quoted.
#[test]
fn malformed_scram_lines() {
    let good = hash_scram(b"pw", iterations(10)).unwrap();
    assert!(StoredHash::parse(&good).is_ok());
    for bad in [
        "$scram$0$c2FsdA==$AA:AA$AA:AA",
        "$scram$10$c2FsdA==$AA:AA",
        "$scram$10$c2FsdA==$AAAA$AAAA",
        "$scram$10$$AA:AA$AA:AA",
    ] {
        let error = StoredHash::parse(bad).unwrap_err().to_string();
        assert!(error.starts_with("$scram$"), "{error}");
    }
}

/// The server's side of an exchange is cheap enough for the connection's task (no pool):
/// measured here (a debug build, so an upper bound) over 500 whole exchanges with the RFC 7677
/// messages; printed with `--nocapture`.
#[test]
fn the_server_side_costs_microseconds() {
    let credentials = rfc7677_credentials();
    let start = std::time::Instant::now();
    const ROUNDS: u32 = 500;
    for _ in 0..ROUNDS {
        let mut server = rfc7677_server(&credentials);
        assert!(server.client_final(RFC7677_CLIENT_FINAL).is_ok());
    }
    let each = start.elapsed() / ROUNDS;
    println!("one SCRAM-SHA-256 server exchange: {each:?}");
    assert!(each < std::time::Duration::from_millis(5), "{each:?}");
}
