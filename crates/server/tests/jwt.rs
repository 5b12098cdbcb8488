//! Issue 12, JWT: a token in the CONNECT's password field (HS256 with a secret file, ES256
//! with a JWKS file), `exp` required, audience and client-id binding, topic permissions from
//! claims, and a session disconnected when its token expires. rumqttc where a client we did
//! not write shows it; raw packets where the exact reason code matters.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64ct::{Base64UrlUnpadded, Encoding};
use bytes::Bytes;
use common::{Client, Raw, connect_packet, options, text};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use tern_codec::{Packet, ProtocolVersion, ReasonCode};
use tern_server::{AuthConfig, JwtConfig, Server, ServerConfig};
use tokio::sync::oneshot;

const SECRET: &[u8] = b"a shared secret of the test, long enough";

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: &[u8]) -> String {
    Base64UrlUnpadded::encode_string(bytes)
}

fn hs256(claims: &str) -> String {
    let message = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(claims.as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let tag = ring::hmac::sign(&key, message.as_bytes());
    format!("{message}.{}", b64(tag.as_ref()))
}

fn jwt_config(extra: &str) -> JwtConfig {
    let secret = write("secret", SECRET);
    toml::from_str(&format!(
        "algorithms = [\"HS256\"]\nsecret_file = {:?}\n{extra}",
        secret.display().to_string()
    ))
    .unwrap()
}

fn config(jwt: JwtConfig) -> ServerConfig {
    ServerConfig {
        auth: AuthConfig {
            jwt: Some(jwt),
            ..AuthConfig::default()
        },
        ..common::config()
    }
}

struct Running {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// The server as `tern` runs it (`Server::bind`: the `[auth]` table wired).
async fn start(config: ServerConfig) -> Running {
    let server = Server::bind(config).await.expect("bind");
    let addr = server.local_addrs()[0];
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        let _ = server.run(stopped, Duration::from_secs(2)).await;
    });
    Running { addr, _stop: stop }
}

/// The CONNACK code of a raw MQTT 5 CONNECT with this token as password.
async fn connack(addr: SocketAddr, client_id: &str, token: &str) -> (Raw, ReasonCode) {
    let mut connect = connect_packet(ProtocolVersion::V5, client_id, true, 30);
    connect.username = Some(text("user"));
    connect.password = Some(Bytes::copy_from_slice(token.as_bytes()));
    let (raw, connack) = Raw::connected(addr, ProtocolVersion::V5, connect).await;
    (raw, connack.reason_code)
}

fn with_token(addr: SocketAddr, id: &str, token: &str) -> rumqttc::MqttOptions {
    let mut opts = options(addr, id);
    opts.set_credentials("user", token);
    opts
}

/// Issue 12, JWT: a valid HS256 token gets a rumqttc client in; expired, tampered, unsigned
/// (`alg: none`), wrong-audience tokens and a plain password are refused with 0x86 Bad
/// username or password; `sub` bound to the client id refuses a mismatch.
#[tokio::test]
async fn hs256_tokens_are_checked() {
    let broker = start(config(jwt_config(
        "audience = \"tern\"\nbind_client_id = \"sub\"",
    )))
    .await;
    let addr = broker.addr;
    let exp = now() + 600;
    let good = hs256(&format!(r#"{{"sub":"dev1","aud":"tern","exp":{exp}}}"#));
    let (client, ack) = Client::connect(with_token(addr, "dev1", &good)).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    client.disconnect().await;

    let expired = hs256(&format!(
        r#"{{"sub":"dev1","aud":"tern","exp":{}}}"#,
        now() - 10
    ));
    let mut tampered = good.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let forged_claims = format!(
        "{}.{}.{}",
        good.split('.').next().unwrap(),
        b64(format!(r#"{{"sub":"dev1","aud":"tern","exp":{}}}"#, exp + 1000).as_bytes()),
        good.split('.').nth(2).unwrap()
    );
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none"}"#),
        good.split('.').nth(1).unwrap()
    );
    let wrong_audience = hs256(&format!(r#"{{"sub":"dev1","aud":"other","exp":{exp}}}"#));
    let no_exp = hs256(r#"{"sub":"dev1","aud":"tern"}"#);
    for (what, id, token) in [
        ("expired", "dev1", expired.as_str()),
        ("tampered signature", "dev1", tampered.as_str()),
        ("tampered claims", "dev1", forged_claims.as_str()),
        ("alg none", "dev1", unsigned.as_str()),
        ("wrong audience", "dev1", wrong_audience.as_str()),
        ("no exp", "dev1", no_exp.as_str()),
        ("sub is not the client id", "dev2", good.as_str()),
        ("not a token", "dev1", "a-password"),
    ] {
        let (_, code) = connack(addr, id, token).await;
        assert_eq!(code, ReasonCode::BadUserNameOrPassword, "{what}");
    }
}

/// Issue 12, JWT: an ES256 token verified with a key from a JWKS file (a P-256 key made here).
#[tokio::test]
async fn es256_with_a_jwks_file() {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let jwks = format!(
        r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"k1","x":"{}","y":"{}"}}]}}"#,
        b64(&point[1..33]),
        b64(&point[33..65])
    );
    let jwks = write("jwks.json", jwks.as_bytes());
    let jwt: JwtConfig = toml::from_str(&format!(
        "algorithms = [\"ES256\"]\njwks_file = {:?}\n",
        jwks.display().to_string()
    ))
    .unwrap();
    let broker = start(config(jwt)).await;
    let message = format!(
        "{}.{}",
        b64(br#"{"alg":"ES256","kid":"k1"}"#),
        b64(format!(r#"{{"exp":{}}}"#, now() + 600).as_bytes())
    );
    let signature = pair.sign(&rng, message.as_bytes()).unwrap();
    let token = format!("{message}.{}", b64(signature.as_ref()));
    let (client, ack) = Client::connect(with_token(broker.addr, "es", &token)).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    client.disconnect().await;
    // The HS256 token of the same claims is not accepted here (algorithm not listed).
    let hs = hs256(&format!(r#"{{"exp":{}}}"#, now() + 600));
    let (_, code) = connack(broker.addr, "hs", &hs).await;
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
}

/// Issue 12, JWT: topic permissions from the `publish`/`subscribe` claims with `%c`: a filter
/// outside them is refused (3.1.1 SUBACK 0x80), one inside is granted, and a publish outside
/// them is not delivered.
#[tokio::test]
async fn permissions_from_claims() {
    let broker = start(config(jwt_config(""))).await;
    let token = hs256(&format!(
        r#"{{"exp":{},"publish":["out/%c"],"subscribe":["in/%c/#"]}}"#,
        now() + 600
    ));
    let (mut client, ack) = Client::connect(with_token(broker.addr, "d7", &token)).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    let refused = client
        .subscribe("in/other/#", rumqttc::QoS::AtLeastOnce)
        .await;
    assert_eq!(
        refused.return_codes,
        vec![rumqttc::SubscribeReasonCode::Failure]
    );
    let granted = client.subscribe("in/d7/#", rumqttc::QoS::AtLeastOnce).await;
    assert_eq!(
        granted.return_codes,
        vec![rumqttc::SubscribeReasonCode::Success(
            rumqttc::QoS::AtLeastOnce
        )]
    );
    // Publishing to its own subscription's topic is not allowed (publish is out/%c only), so
    // nothing arrives; out/d7 is allowed (acknowledged).
    client
        .publish("in/d7/x", rumqttc::QoS::AtLeastOnce, false, "no")
        .await;
    client
        .publish("out/d7", rumqttc::QoS::AtLeastOnce, false, "yes")
        .await;
    let (other, _) = Client::connect(with_token(
        broker.addr,
        "d8",
        &hs256(&format!(
            r#"{{"exp":{},"publish":["in/d7/#"]}}"#,
            now() + 600
        )),
    ))
    .await;
    other
        .client
        .publish("in/d7/y", rumqttc::QoS::AtLeastOnce, false, "from d8")
        .await
        .unwrap();
    assert_eq!(&client.recv().await.payload[..], b"from d8");
}

/// Issue 12, JWT: a session whose token expires while connected is disconnected (MQTT 5
/// DISCONNECT 0x87 Not authorized), bounded wait.
#[tokio::test]
async fn expiry_while_connected_disconnects() {
    let broker = start(config(jwt_config(""))).await;
    let token = hs256(&format!(r#"{{"exp":{}}}"#, now() + 2));
    let (mut raw, code) = connack(broker.addr, "short", &token).await;
    assert_eq!(code, ReasonCode::Success);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match raw.recv_within(left).await {
            Ok(Some(Packet::Disconnect(disconnect))) => {
                assert_eq!(disconnect.reason_code, ReasonCode::NotAuthorized);
                break;
            }
            Ok(Some(_)) => continue,
            Ok(None) => panic!("closed without DISCONNECT"),
            Err(()) => panic!("not disconnected within 6 s"),
        }
    }
}

/// The fixture's RSA key pair (2048 bits, made with `openssl genpkey`): the signer of the
/// RS256 tests, and its public half as PEM and as JWKS `n`/`e`.
fn rsa_fixture() -> ring::signature::RsaKeyPair {
    let pem = include_str!("fixtures/jwt-rsa-private.pem");
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let der = base64ct::Base64::decode_vec(&body).expect("base64");
    ring::signature::RsaKeyPair::from_pkcs8(&der).expect("a PKCS#8 RSA key")
}

fn rs256(pair: &ring::signature::RsaKeyPair, header: &str, claims: &str) -> String {
    let message = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let mut signature = vec![0; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        message.as_bytes(),
        &mut signature,
    )
    .expect("sign");
    format!("{message}.{}", b64(&signature))
}

/// Issue 12, JWT: RS256 tokens verified with the public key from a PEM file (`key_file`) and
/// from a JWKS file (`n`, `e`); a token whose claims were changed after signing, or whose
/// signature was changed, is refused (0x86).
#[tokio::test]
async fn rs256_with_a_pem_key_and_with_a_jwks_file() {
    let pair = rsa_fixture();
    let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
    let jwks = format!(
        r#"{{"keys":[{{"kty":"RSA","kid":"r1","n":"{}","e":"{}"}}]}}"#,
        b64(&public.n),
        b64(&public.e)
    );
    let jwks = write("rsa.jwks", jwks.as_bytes());
    let pem = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt-rsa-public.pem"
    ));
    let claims = format!(r#"{{"exp":{}}}"#, now() + 600);
    for (source, header) in [
        (
            format!("key_file = {:?}", pem.display().to_string()),
            r#"{"alg":"RS256"}"#,
        ),
        (
            format!("jwks_file = {:?}", jwks.display().to_string()),
            r#"{"alg":"RS256","kid":"r1"}"#,
        ),
    ] {
        let jwt: JwtConfig =
            toml::from_str(&format!("algorithms = [\"RS256\"]\n{source}\n")).unwrap();
        let broker = start(config(jwt)).await;
        let token = rs256(&pair, header, &claims);
        let (client, ack) = Client::connect(with_token(broker.addr, "rs", &token)).await;
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{source}");
        client.disconnect().await;
        // Claims changed after signing: refused.
        let original: Vec<&str> = token.split('.').collect();
        let mut parts = original.clone();
        let forged_claims = b64(format!(r#"{{"exp":{}}}"#, now() + 6000).as_bytes());
        parts[1] = &forged_claims;
        let (_, code) = connack(broker.addr, "forged", &parts.join(".")).await;
        assert_eq!(code, ReasonCode::BadUserNameOrPassword, "{source}");
        // A signature changed in one byte: refused.
        let mut signature = Base64UrlUnpadded::decode_vec(parts[2]).unwrap();
        signature[10] ^= 1;
        let tampered = format!("{}.{}.{}", original[0], original[1], b64(&signature));
        let (_, code) = connack(broker.addr, "tampered", &tampered).await;
        assert_eq!(code, ReasonCode::BadUserNameOrPassword, "{source}");
    }
}

/// Issue 12, JWT and the ACL file: the CONNECT's username is not trusted when no claim binds
/// it (anyone can write any), so it does not pick the ACL's `user` block or `%u`: a valid token
/// without `sub`, sent with the username of a user the ACL favours, gets only the rules for
/// clients without a username; a token whose `sub` names that user gets that user's rules.
#[tokio::test]
async fn the_acl_user_is_the_one_the_token_vouches_for() {
    let acl = write(
        "vouched.acl",
        b"topic read public/#\nuser alice\ntopic read secret/#\npattern read devices/%u/#\n",
    );
    let mut server_config = config(jwt_config(""));
    server_config.auth.acl_file = Some(acl);
    let broker = start(server_config).await;
    let cases = [
        (
            "no sub, username alice",
            format!(r#"{{"exp":{}}}"#, now() + 600),
            false,
        ),
        (
            "sub alice",
            format!(r#"{{"exp":{},"sub":"alice"}}"#, now() + 600),
            true,
        ),
    ];
    for (what, claims, alice) in cases {
        let mut opts = options(broker.addr, "vouched");
        opts.set_credentials("alice", hs256(&claims));
        let (mut client, ack) = Client::connect(opts).await;
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{what}");
        let granted = rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtMostOnce);
        let code = |suback: rumqttc::SubAck| suback.return_codes[0];
        for filter in ["secret/#", "devices/alice/#"] {
            let suback = client.subscribe(filter, rumqttc::QoS::AtMostOnce).await;
            assert_eq!(code(suback) == granted, alice, "{what}: {filter}");
        }
        // The lines before any `user` are for clients without a username (Mosquitto's rule).
        let public = client.subscribe("public/#", rumqttc::QoS::AtMostOnce).await;
        assert_eq!(code(public) == granted, !alice, "{what}: public/#");
        client.disconnect().await;
    }
}
