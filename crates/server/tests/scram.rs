//! Issue 12, SCRAM: SCRAM-SHA-256 and SCRAM-SHA-512 over MQTT 5 enhanced authentication
//! (section 4.12) at CONNECT and at re-authentication, with `$scram$` users of a password file.
//!
//! rumqttc 0.25.1's event loop cannot carry an AUTH exchange (it has no AuthManager: any
//! packet before CONNACK but CONNACK is an error), so the packets are encoded and decoded with
//! rumqttc's own MQTT 5 codec over a socket (AUTH, whose types rumqttc does not export, is
//! encoded here by hand from section 3.15), and the SCRAM client is written here from RFC 5802
//! (it calls none of the server's code). A plain CONNECT password against a `$scram$` line is
//! shown with rumqttc's client as it is.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use base64ct::{Base64, Encoding};
use bytes::{Bytes, BytesMut};
use hmac::{EagerHash, Hmac, KeyInit, Mac};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, DisconnectReasonCode, Login, Packet,
    PubAckReason, Publish,
};
use sha2::{Digest, Sha256, Sha512};
use tern_server::{AuthConfig, ScramConfig, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-scram-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A password file with SCRAM users `sam` (`pencil`) and `tim` (`eraser`, 8192 iterations)
/// beside a line `mosquitto_passwd` 2.0 wrote; an ACL that gives each user their own topics.
fn auth(name: &str, scram: ScramConfig) -> AuthConfig {
    let sam = tern_auth::hash_scram(b"pencil", 4096.try_into().unwrap()).unwrap();
    let tim = tern_auth::hash_scram(b"eraser", 8192.try_into().unwrap()).unwrap();
    let passwords = write(
        &format!("{name}.passwd"),
        &format!(
            "alice:$7$101$yXEnakcxPrZ0zOg1$XLw2qSoOKPgo3P5QCgH/Iawvvgs/+ci5Gm6G2N2fyLfpQOui0Csk0Sc6D8u62Mfn5w+KxYlMlx/BKIFg31VhCw==\nsam:{sam}\ntim:{tim}\n"
        ),
    );
    let acl = write(&format!("{name}.acl"), "pattern readwrite %u/#\n");
    AuthConfig {
        password_file: Some(passwords),
        acl_file: Some(acl),
        scram: Some(scram),
        ..AuthConfig::default()
    }
}

struct Running {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// The server as `tern` runs it (`Server::bind`: the `[auth]` table wired).
async fn start(auth: AuthConfig) -> Running {
    let config = ServerConfig {
        auth,
        ..common::config()
    };
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

/// MQTT 5 packets encoded and decoded by rumqttc's codec.
struct Wire {
    stream: TcpStream,
    buffer: BytesMut,
}

impl Wire {
    async fn open(addr: SocketAddr) -> Wire {
        Wire {
            stream: TcpStream::connect(addr).await.unwrap(),
            buffer: BytesMut::new(),
        }
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, None).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next packet, or `None` once the server closed the connection.
    async fn recv(&mut self) -> Option<Packet> {
        match self.recv_frame().await {
            Some(Frame::Packet(packet)) => Some(*packet),
            Some(Frame::Auth(auth)) => panic!("unexpected AUTH {auth:?}"),
            None => None,
        }
    }

    /// The next AUTH (which rumqttc 0.25.1 cannot decode: decoded here).
    async fn recv_auth(&mut self) -> AuthFrame {
        match self.recv_frame().await {
            Some(Frame::Auth(auth)) => auth,
            other => panic!("expected AUTH, got {other:?}"),
        }
    }

    async fn recv_frame(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(auth) = decode_auth(&mut self.buffer) {
                    return Some(Frame::Auth(auth));
                }
                match Packet::read(&mut self.buffer, None) {
                    Ok(packet) => return Some(Frame::Packet(Box::new(packet))),
                    Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(error) => panic!("undecodable packet: {error:?}"),
                }
                if self.stream.read_buf(&mut self.buffer).await.unwrap_or(0) == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("an answer in time")
    }
}

#[derive(Debug)]
enum Frame {
    Packet(Box<Packet>),
    Auth(AuthFrame),
}

/// An AUTH packet: its reason code, Authentication Method and Data.
#[derive(Debug)]
struct AuthFrame {
    code: u8,
    method: String,
    data: String,
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<usize> {
    let (mut value, mut shift) = (0usize, 0);
    loop {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
        shift += 7;
    }
}

fn read_field(bytes: &[u8], at: &mut usize) -> String {
    let length = usize::from(u16::from_be_bytes([bytes[*at], bytes[*at + 1]]));
    let field = String::from_utf8(bytes[*at + 2..*at + 2 + length].to_vec()).unwrap();
    *at += 2 + length;
    field
}

/// Decodes an AUTH (section 3.15) at the head of `buffer`, if one is there whole.
fn decode_auth(buffer: &mut BytesMut) -> Option<AuthFrame> {
    if buffer.first()? >> 4 != 15 {
        return None;
    }
    let mut at = 1;
    let length = read_varint(buffer, &mut at)?;
    if buffer.len() < at + length {
        return None;
    }
    let frame = buffer.split_to(at + length);
    let body = &frame[at..];
    let code = body[0];
    let mut at = 1;
    let properties = read_varint(body, &mut at).unwrap();
    let end = at + properties;
    let (mut method, mut data) = (String::new(), String::new());
    while at < end {
        let id = body[at];
        at += 1;
        match id {
            0x15 => method = read_field(body, &mut at),
            0x16 => data = read_field(body, &mut at),
            0x1F => drop(read_field(body, &mut at)),
            0x26 => drop((read_field(body, &mut at), read_field(body, &mut at))),
            other => panic!("unexpected AUTH property {other:#x}"),
        }
    }
    Some(AuthFrame { code, method, data })
}

fn connect(client_id: &str, method: &str, data: &str, username: Option<&str>) -> Packet {
    let mut properties = ConnectProperties::new();
    properties.authentication_method = Some(method.to_owned());
    properties.authentication_data = Some(Bytes::copy_from_slice(data.as_bytes()));
    let connect = Connect {
        keep_alive: 30,
        client_id: client_id.to_owned(),
        clean_start: true,
        properties: Some(properties),
    };
    let login = username.map(|user| Login {
        username: user.to_owned(),
        password: String::new(),
    });
    Packet::Connect(connect, None, login)
}

const CONTINUE: u8 = 0x18;
const REAUTHENTICATE: u8 = 0x19;

/// AUTH (section 3.15): reason code, then the Authentication Method (0x15) and Data (0x16).
fn auth_packet(code: u8, method: &str, data: &str) -> Vec<u8> {
    let mut properties = vec![0x15];
    properties.extend((method.len() as u16).to_be_bytes());
    properties.extend(method.as_bytes());
    properties.push(0x16);
    properties.extend((data.len() as u16).to_be_bytes());
    properties.extend(data.as_bytes());
    let mut body = vec![code];
    push_varint(&mut body, properties.len());
    body.extend(properties);
    let mut packet = vec![0xF0];
    push_varint(&mut packet, body.len());
    packet.extend(body);
    packet
}

fn push_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value % 128) as u8;
        value /= 128;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The Authentication Data of a server's AUTH 0x18 [MQTT-4.12.0-2, MQTT-4.12.0-5].
fn challenge(auth: AuthFrame, method: &str) -> String {
    assert_eq!(auth.code, CONTINUE);
    assert_eq!(auth.method, method);
    auth.data
}

fn mac<D: EagerHash>(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<D> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The client side of SCRAM (RFC 5802 section 3), for one exchange.
struct ScramClient {
    bare: String,
    nonce: String,
    expected_server_final: Option<String>,
}

impl ScramClient {
    fn new(user: &str, nonce: &str) -> ScramClient {
        ScramClient {
            bare: format!("n={user},r={nonce}"),
            nonce: nonce.to_owned(),
            expected_server_final: None,
        }
    }

    fn first(&self) -> String {
        format!("n,,{}", self.bare)
    }

    fn fields(server_first: &str) -> (String, Vec<u8>, u32) {
        let (mut nonce, mut salt, mut count) = (String::new(), Vec::new(), 0);
        for attribute in server_first.split(',') {
            match attribute.split_at(2) {
                ("r=", value) => nonce = value.to_owned(),
                ("s=", value) => salt = Base64::decode_vec(value).unwrap(),
                ("i=", value) => count = value.parse().unwrap(),
                _ => {}
            }
        }
        (nonce, salt, count)
    }

    fn last<D: EagerHash>(&mut self, password: &str, server_first: &str) -> String {
        let (nonce, salt, count) = ScramClient::fields(server_first);
        assert!(nonce.starts_with(&self.nonce) && nonce.len() > self.nonce.len());
        let mut salted = vec![0u8; <D as Digest>::output_size()];
        pbkdf2::pbkdf2_hmac::<D>(password.as_bytes(), &salt, count, &mut salted);
        let client_key = mac::<D>(&salted, b"Client Key");
        let stored_key = D::digest(&client_key).to_vec();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.bare);
        let signature = mac::<D>(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = mac::<D>(&salted, b"Server Key");
        self.expected_server_final = Some(format!(
            "v={}",
            Base64::encode_string(&mac::<D>(&server_key, auth_message.as_bytes()))
        ));
        format!("{without_proof},p={}", Base64::encode_string(&proof))
    }
}

/// A full SCRAM exchange at CONNECT with hash `D`; the CONNACK, checked to carry the
/// ServerSignature when it is a success.
async fn scram_connect<D: EagerHash>(
    wire: &mut Wire,
    method: &str,
    client_id: &str,
    user: &str,
    password: &str,
) -> ConnAck {
    let mut client = ScramClient::new(user, "rOprNGfwEbeRWgbNEkqO");
    wire.send(connect(client_id, method, &client.first(), None))
        .await;
    let server_first = challenge(wire.recv_auth().await, method);
    let last = client.last::<D>(password, &server_first);
    wire.send_bytes(&auth_packet(CONTINUE, method, &last)).await;
    let connack = match wire.recv().await {
        Some(Packet::ConnAck(connack)) => connack,
        other => panic!("expected CONNACK, got {other:?}"),
    };
    if connack.code == ConnectReturnCode::Success {
        let properties = connack.properties.clone().unwrap();
        assert_eq!(properties.authentication_method.as_deref(), Some(method));
        let data = properties.authentication_data.unwrap();
        // The client verifies the server (RFC 5802 section 3: ServerSignature).
        assert_eq!(
            std::str::from_utf8(&data).unwrap(),
            client.expected_server_final.unwrap()
        );
    }
    connack
}

async fn puback(wire: &mut Wire, topic: &str, pkid: u16) -> PubAckReason {
    let mut publish = Publish::new(topic, QoS::AtLeastOnce, "x", None);
    publish.pkid = pkid;
    wire.send(Packet::Publish(publish)).await;
    match wire.recv().await {
        Some(Packet::PubAck(ack)) => ack.reason,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// Issue 12: "SCRAM-SHA-256 and SCRAM-SHA-512 over MQTT 5 AUTH": both mechanisms at CONNECT
/// [MQTT-4.12.0-2, MQTT-4.12.0-3, MQTT-4.12.0-5]; the SCRAM user becomes the principal (its ACL
/// rules apply: PUBACK 0x87 outside `sam/#`).
#[tokio::test]
async fn scram_sha256_and_sha512_at_connect() {
    let server = start(auth("both", ScramConfig::Enabled(true))).await;
    let mut wire = Wire::open(server.addr).await;
    let connack =
        scram_connect::<Sha256>(&mut wire, "SCRAM-SHA-256", "c256", "sam", "pencil").await;
    assert_eq!(connack.code, ConnectReturnCode::Success);
    assert_eq!(
        puback(&mut wire, "sam/x", 1).await,
        PubAckReason::NoMatchingSubscribers
    );
    assert_eq!(
        puback(&mut wire, "tim/x", 2).await,
        PubAckReason::NotAuthorized
    );

    let mut wire = Wire::open(server.addr).await;
    let connack =
        scram_connect::<Sha512>(&mut wire, "SCRAM-SHA-512", "c512", "tim", "eraser").await;
    assert_eq!(connack.code, ConnectReturnCode::Success);
    assert_eq!(
        puback(&mut wire, "tim/x", 1).await,
        PubAckReason::NoMatchingSubscribers
    );
    assert_eq!(
        puback(&mut wire, "sam/x", 2).await,
        PubAckReason::NotAuthorized
    );
}

/// Issue 12 ("and re-authentication"), [MQTT-4.12.1-1]: a SCRAM re-authentication on a live
/// connection ends with AUTH 0x00 and the ServerSignature; one that names another user is
/// refused [MQTT-4.12.1-2] with DISCONNECT 0x87 and the connection is closed.
#[tokio::test]
async fn scram_reauthentication() {
    let server = start(auth("reauth", ScramConfig::Enabled(true))).await;
    let method = "SCRAM-SHA-512";
    let mut wire = Wire::open(server.addr).await;
    let connack = scram_connect::<Sha512>(&mut wire, method, "re", "sam", "pencil").await;
    assert_eq!(connack.code, ConnectReturnCode::Success);

    let mut client = ScramClient::new("sam", "second-nonce");
    wire.send_bytes(&auth_packet(REAUTHENTICATE, method, &client.first()))
        .await;
    let server_first = challenge(wire.recv_auth().await, method);
    let last = client.last::<Sha512>("pencil", &server_first);
    wire.send_bytes(&auth_packet(CONTINUE, method, &last)).await;
    let auth = wire.recv_auth().await;
    assert_eq!((auth.code, auth.method.as_str()), (0x00, method));
    assert_eq!(auth.data, client.expected_server_final.unwrap());
    assert_eq!(
        puback(&mut wire, "sam/x", 1).await,
        PubAckReason::NoMatchingSubscribers
    );

    // Another user (with the right password) on the same connection: refused.
    let client = ScramClient::new("tim", "third-nonce");
    wire.send_bytes(&auth_packet(REAUTHENTICATE, method, &client.first()))
        .await;
    match wire.recv().await {
        Some(Packet::Disconnect(disconnect)) => {
            assert_eq!(disconnect.reason_code, DisconnectReasonCode::NotAuthorized)
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert_eq!(wire.recv().await, None);
}

/// Issue 12 ("SCRAM with a wrong proof", "unknown user"): refused alike with CONNACK 0x86;
/// an unknown user gets a salt and iteration count like a real one's, the same at each try
/// (and across restarts: the decoys' key comes from the password file).
#[tokio::test]
async fn wrong_password_and_unknown_user_are_refused_alike() {
    let server = start(auth("refused", ScramConfig::Enabled(true))).await;
    let method = "SCRAM-SHA-256";
    let mut wire = Wire::open(server.addr).await;
    let connack = scram_connect::<Sha256>(&mut wire, method, "w1", "sam", "pencil!").await;
    assert_eq!(connack.code, ConnectReturnCode::BadUserNamePassword);
    assert_eq!(wire.recv().await, None);

    let mut salts = Vec::new();
    for attempt in 0..2 {
        let mut wire = Wire::open(server.addr).await;
        let client = ScramClient::new("nobody", "n0nce");
        wire.send(connect(
            &format!("u{attempt}"),
            method,
            &client.first(),
            None,
        ))
        .await;
        let server_first = challenge(wire.recv_auth().await, method);
        let (_, salt, count) = ScramClient::fields(&server_first);
        // The iteration count the file's users have (sam 4096, tim 8192: a tie goes to the
        // larger), so it does not tell a decoy from a user.
        assert_eq!((salt.len(), count), (16, 8192));
        salts.push(salt);
        let mut client = client;
        let last = client.last::<Sha256>("guess", &server_first);
        wire.send_bytes(&auth_packet(CONTINUE, method, &last)).await;
        match wire.recv().await {
            Some(Packet::ConnAck(connack)) => {
                assert_eq!(connack.code, ConnectReturnCode::BadUserNamePassword)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
    assert_eq!(salts[0], salts[1], "a stable decoy");
    // A user with an argon2id/$7$ line only has no SCRAM credentials: refused the same way.
    let mut wire = Wire::open(server.addr).await;
    let connack = scram_connect::<Sha256>(&mut wire, method, "w2", "alice", "alice-secret").await;
    assert_eq!(connack.code, ConnectReturnCode::BadUserNamePassword);
}

/// [MQTT-4.12.0-1]: a method the listener does not offer is refused with CONNACK 0x8C Bad
/// authentication method (`scram` lists SHA-256 only here).
#[tokio::test]
async fn a_method_not_configured_is_refused() {
    let server = start(auth(
        "one",
        ScramConfig::Mechanisms(vec!["SCRAM-SHA-256".into()]),
    ))
    .await;
    for method in ["SCRAM-SHA-512", "SCRAM-SHA-1", "PLAIN"] {
        let mut wire = Wire::open(server.addr).await;
        wire.send(connect("m", method, "n,,n=sam,r=abc", None))
            .await;
        match wire.recv().await {
            Some(Packet::ConnAck(connack)) => {
                assert_eq!(
                    connack.code,
                    ConnectReturnCode::BadAuthenticationMethod,
                    "{method}"
                )
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
    let mut wire = Wire::open(server.addr).await;
    let connack = scram_connect::<Sha256>(&mut wire, "SCRAM-SHA-256", "ok", "sam", "pencil").await;
    assert_eq!(connack.code, ConnectReturnCode::Success);
}

/// A CONNECT username must be the SCRAM user: refused with 0x87 otherwise; a malformed
/// client-first is refused with 0x87 too.
#[tokio::test]
async fn the_connect_username_must_be_the_scram_user() {
    let server = start(auth("names", ScramConfig::Enabled(true))).await;
    let method = "SCRAM-SHA-256";
    let client = ScramClient::new("sam", "abc");
    for (username, first) in [(Some("tim"), client.first()), (None, "garbage".to_owned())] {
        let mut wire = Wire::open(server.addr).await;
        wire.send(connect("n", method, &first, username)).await;
        match wire.recv().await {
            Some(Packet::ConnAck(connack)) => {
                assert_eq!(connack.code, ConnectReturnCode::NotAuthorized)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
}

/// Issue 12 (failures limited per address and client id): wrong SCRAM proofs count like wrong
/// passwords; after the ban threshold the client id is refused at CONNECT with 0x9F.
#[tokio::test]
async fn failed_exchanges_lead_to_a_ban() {
    let server = start(auth("ban", ScramConfig::Enabled(true))).await;
    let method = "SCRAM-SHA-256";
    let mut codes = Vec::new();
    for _ in 0..10 {
        let mut wire = Wire::open(server.addr).await;
        let client = ScramClient::new("sam", "abc");
        wire.send(connect("banned", method, &client.first(), None))
            .await;
        match wire.recv_frame().await {
            Some(Frame::Auth(auth)) => {
                let server_first = challenge(auth, method);
                let mut client = client;
                let last = client.last::<Sha256>("wrong", &server_first);
                wire.send_bytes(&auth_packet(CONTINUE, method, &last)).await;
                match wire.recv().await {
                    Some(Packet::ConnAck(connack)) => codes.push(connack.code),
                    other => panic!("expected CONNACK, got {other:?}"),
                }
            }
            Some(Frame::Packet(packet)) => match *packet {
                Packet::ConnAck(connack) => codes.push(connack.code),
                other => panic!("expected CONNACK, got {other:?}"),
            },
            other => panic!("expected AUTH or CONNACK, got {other:?}"),
        }
    }
    assert_eq!(codes[0], ConnectReturnCode::BadUserNamePassword);
    assert_eq!(
        codes[9],
        ConnectReturnCode::ConnectionRateExceeded,
        "{codes:?}"
    );
}

/// A `$scram$` line also verifies a plain CONNECT password (rumqttc's client as it is).
#[tokio::test]
async fn a_plain_password_against_a_scram_line() {
    let server = start(auth("plain", ScramConfig::Enabled(true))).await;
    let mut options = common::options(server.addr, "plain");
    options.set_credentials("sam", "pencil");
    let (_client, connack) = common::Client::connect(options).await;
    assert_eq!(connack.code, rumqttc::ConnectReturnCode::Success);
    // A wrong one is refused (0x86), through rumqttc's MQTT 5 codec.
    let mut wire = Wire::open(server.addr).await;
    let connect = Connect {
        keep_alive: 30,
        client_id: "plain2".into(),
        clean_start: true,
        properties: None,
    };
    wire.send(Packet::Connect(
        connect,
        None,
        Some(Login::new("sam", "pencil?")),
    ))
    .await;
    match wire.recv().await {
        Some(Packet::ConnAck(connack)) => {
            assert_eq!(connack.code, ConnectReturnCode::BadUserNamePassword)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}
