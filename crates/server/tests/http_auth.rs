//! Issue 12, HTTP: the credentials and the connection's facts POSTed as JSON to a service the
//! test starts (hyper, port 0); allow/deny and permissions from its answer; fail closed when
//! it is down, slow, errs or answers junk; a TTL cache of allow answers; bounded concurrency;
//! keep-alive connections reused. rumqttc where a client we did not write shows it; raw
//! packets where the exact reason code matters.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::v5::{Client5, QoS};
use common::{Client, Raw, connect_packet, text};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tern_codec::{ProtocolVersion, ReasonCode};
use tern_server::{AuthConfig, ListenerConfig, Server, ServerConfig};
use tokio::sync::oneshot;

/// What the test service saw.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<Value>>,
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Seen {
    fn count(&self, username: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r["username"] == username)
            .count()
    }

    fn last(&self, username: &str) -> Value {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|r| r["username"] == username)
            .cloned()
            .expect("a request for this user")
    }
}

/// The answer the service gives, by username.
async fn answer(seen: &Seen, delay: Duration, body: Value) -> Response<Full<Bytes>> {
    let json = |status: u16, text: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(text)))
            .unwrap()
    };
    let user = body["username"].as_str().unwrap_or("").to_owned();
    seen.requests.lock().unwrap().push(body);
    tokio::time::sleep(delay).await;
    match user.as_str() {
        "mallory" => json(200, r#"{"result":"deny"}"#.into()),
        "perm" => json(
            200,
            r#"{"result":"allow","publish":["out/%c"],"subscribe":["in/%u/#"]}"#.into(),
        ),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            json(200, r#"{"result":"allow"}"#.into())
        }
        "brief" => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            json(
                200,
                format!(r#"{{"result":"allow","expires_at":{}}}"#, now + 2),
            )
        }
        "err500" => json(500, r#"{"result":"allow"}"#.into()),
        "forbidden" => json(403, r#"{"error":"bad credentials"}"#.into()),
        "unauthorized" => json(401, "".into()),
        "junk" => json(200, "this is not JSON".into()),
        "maybe" => json(200, r#"{"result":"perhaps"}"#.into()),
        "big" => json(
            200,
            format!(r#"{{"result":"allow","pad":"{}"}}"#, "x".repeat(100_000)),
        ),
        _ => json(200, r#"{"result":"allow"}"#.into()),
    }
}

/// A hyper HTTP/1 service on 127.0.0.1:0 (keep-alive on), each answer after `delay`.
async fn service(delay: Duration) -> (SocketAddr, Arc<Seen>) {
    service_with(delay, None).await
}

/// The same over TLS when `tls` is given.
async fn service_with(
    delay: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let state = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            state.connections.fetch_add(1, Ordering::SeqCst);
            let state = state.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let handler = service_fn(move |request: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
                        let bytes = request.into_body().collect().await.unwrap().to_bytes();
                        let body: Value = serde_json::from_slice(&bytes).unwrap();
                        let response = answer(&state, delay, body).await;
                        state.in_flight.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(response)
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), handler).await;
                    }
                    Some(tls) => {
                        let Ok(stream) = tls.accept(stream).await else {
                            return;
                        };
                        let _ = http.serve_connection(TokioIo::new(stream), handler).await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn http_auth(url: &str, extra: &str) -> AuthConfig {
    toml::from_str(&format!("http = {{ url = {url:?}{extra} }}")).unwrap()
}

struct Running {
    addrs: Vec<SocketAddr>,
    reloader: tern_server::AuthReloader,
    _stop: oneshot::Sender<()>,
}

async fn start(config: ServerConfig) -> Running {
    let server = Server::bind(config).await.expect("bind");
    let addrs = server.local_addrs();
    let reloader = server.auth_reloader();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        let _ = server.run(stopped, Duration::from_secs(2)).await;
    });
    Running {
        addrs,
        reloader,
        _stop: stop,
    }
}

async fn broker(service: SocketAddr, extra: &str) -> Running {
    start(ServerConfig {
        auth: http_auth(&format!("http://{service}/mqtt/auth"), extra),
        ..common::config()
    })
    .await
}

/// The CONNACK code of a raw CONNECT with a username and password.
async fn connack(
    addr: SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
    username: &str,
    password: &[u8],
) -> (Raw, ReasonCode) {
    let mut connect = connect_packet(version, client_id, true, 30);
    connect.username = Some(text(username));
    connect.password = Some(Bytes::copy_from_slice(password));
    let (raw, connack) = Raw::connected(addr, version, connect).await;
    (raw, connack.reason_code)
}

/// A refused CONNECT's code (MQTT 5), and the connection closed after it [MQTT-3.2.2-7].
async fn refused(addr: SocketAddr, client_id: &str, username: &str) -> ReasonCode {
    let (mut raw, code) = connack(addr, ProtocolVersion::V5, client_id, username, b"pw").await;
    assert_ne!(code, ReasonCode::Success, "{username}");
    assert!(raw.recv().await.is_none(), "closed after the refusal");
    code
}

fn v311(addr: SocketAddr, id: &str, user: &str) -> rumqttc::MqttOptions {
    let mut opts = common::options(addr, id);
    opts.set_credentials(user, "secret-pw");
    opts
}

/// Issue 12, HTTP: an allow answer lets a rumqttc client in; a deny answer refuses with 0x86
/// Bad user name or password (3.1.1: return code 4), and denials go through the failure
/// limiter like wrong passwords.
#[tokio::test]
async fn allow_and_deny() {
    let (service, seen) = service(Duration::ZERO).await;
    let broker = broker(service, ", cache_ttl_s = 0").await;
    let addr = broker.addrs[0];
    let (client, ack) = Client::connect(v311(addr, "dev1", "alice")).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    client.disconnect().await;
    assert_eq!(
        refused(addr, "m1", "mallory").await,
        ReasonCode::BadUserNameOrPassword
    );
    let (_, code) = connack(addr, ProtocolVersion::V311, "m2", "mallory", b"x").await;
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    assert_eq!(seen.count("mallory"), 2);
    // Anonymous clients are not sent to the service: refused (0x87), no request.
    let (_, code) = Raw::connected(
        addr,
        ProtocolVersion::V5,
        connect_packet(ProtocolVersion::V5, "anon", true, 30),
    )
    .await;
    assert_eq!(code.reason_code, ReasonCode::NotAuthorized);
    assert_eq!(seen.requests.lock().unwrap().len(), 3);
}

/// Issue 12, HTTP: permissions from the answer (`%u`/`%c` substituted) for an MQTT 5 client:
/// a publish outside them is refused with PUBACK 0x87, a subscription outside them with
/// SUBACK 0x87; inside them both are granted.
#[tokio::test]
async fn permissions_from_the_answer() {
    let (service, _) = service(Duration::ZERO).await;
    let broker = broker(service, "").await;
    let mut opts = common::v5::options(broker.addrs[0], "c9");
    opts.set_credentials("perm", "pw");
    let (mut client, ack) = Client5::connect(opts).await;
    assert_eq!(
        ack.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
    let suback = client.subscribe("in/other/#", QoS::AtLeastOnce).await;
    assert_eq!(
        suback.return_codes,
        vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::NotAuthorized]
    );
    let suback = client.subscribe("in/perm/#", QoS::AtLeastOnce).await;
    assert_eq!(
        suback.return_codes,
        vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(
            QoS::AtLeastOnce
        )]
    );
    for (topic, expected) in [
        (
            "out/other",
            rumqttc::v5::mqttbytes::v5::PubAckReason::NotAuthorized,
        ),
        (
            "out/c9",
            rumqttc::v5::mqttbytes::v5::PubAckReason::NoMatchingSubscribers,
        ),
    ] {
        client
            .client
            .publish(topic, QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
        let reason = client
            .next_matching(|event| match event {
                rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::PubAck(ack)) => {
                    Some(ack.reason)
                }
                _ => None,
            })
            .await
            .unwrap();
        assert_eq!(reason, expected, "{topic}");
    }
}

/// Issue 12, HTTP, fail closed: a service that is down, answers 500, answers malformed JSON,
/// an unknown result or an oversized body refuses the client with 0x88 Server unavailable
/// (3.1.1: return code 3), retryable, never lets it in.
#[tokio::test]
async fn a_failing_service_refuses_retryably() {
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let down = broker(closed, "").await;
    assert_eq!(
        refused(down.addrs[0], "d1", "alice").await,
        ReasonCode::ServerUnavailable
    );
    let (_, code) = connack(down.addrs[0], ProtocolVersion::V311, "d2", "alice", b"x").await;
    assert_eq!(code, ReasonCode::ServerUnavailable);

    let (service, seen) = service(Duration::ZERO).await;
    let broker = broker(service, "").await;
    for user in ["err500", "junk", "maybe", "big"] {
        assert_eq!(
            refused(broker.addrs[0], user, user).await,
            ReasonCode::ServerUnavailable,
            "{user}"
        );
        assert_eq!(seen.count(user), 1, "{user}");
    }
    // Failures of the service are not the client's: not counted against its address (many
    // more than the ban threshold), a good client from the same address still gets in.
    for n in 0..10 {
        refused(broker.addrs[0], &format!("e{n}"), "err500").await;
    }
    let (_, code) = connack(broker.addrs[0], ProtocolVersion::V5, "ok", "alice", b"x").await;
    assert_eq!(code, ReasonCode::Success);
}

/// Issue 12, HTTP: a service slower than `timeout_ms` refuses the client at the timeout (0x88),
/// and a client connecting meanwhile is not held up by it.
#[tokio::test]
async fn a_slow_service_times_out_and_others_go_on() {
    let (service, _) = service(Duration::ZERO).await;
    let broker = broker(service, ", timeout_ms = 300").await;
    let addr = broker.addrs[0];
    let start = Instant::now();
    let slow = tokio::spawn(async move { refused(addr, "s1", "slow").await });
    let (client, ack) = Client::connect(v311(addr, "fast", "alice")).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    assert!(start.elapsed() < Duration::from_millis(300), "not held up");
    client.disconnect().await;
    assert_eq!(slow.await.unwrap(), ReasonCode::ServerUnavailable);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
        "refused at the timeout, after {elapsed:?}"
    );
}

/// Issue 12, HTTP: an allow answer is remembered for `cache_ttl_s`: the same credentials
/// again do not reach the service; other credentials do; after the TTL they do again.
#[tokio::test]
async fn allow_answers_are_cached_for_the_ttl() {
    let (service, seen) = service(Duration::ZERO).await;
    let broker = broker(service, ", cache_ttl_s = 1").await;
    let addr = broker.addrs[0];
    for _ in 0..3 {
        let (_, code) = connack(addr, ProtocolVersion::V5, "k1", "alice", b"pw").await;
        assert_eq!(code, ReasonCode::Success);
    }
    assert_eq!(seen.count("alice"), 1, "answered from the cache");
    let (_, code) = connack(addr, ProtocolVersion::V5, "k1", "alice", b"other").await;
    assert_eq!(code, ReasonCode::Success);
    assert_eq!(seen.count("alice"), 2, "another password is asked about");
    // Denials are not remembered.
    for _ in 0..2 {
        refused(addr, "m", "mallory").await;
    }
    assert_eq!(seen.count("mallory"), 2);
    // The TTL is a time to let pass: no event to await.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, code) = connack(addr, ProtocolVersion::V5, "k1", "alice", b"pw").await;
    assert_eq!(code, ReasonCode::Success);
    assert_eq!(seen.count("alice"), 3, "asked again after the TTL");
    // SIGHUP forgets what was remembered.
    let (_, code) = connack(addr, ProtocolVersion::V5, "k1", "alice", b"pw").await;
    assert_eq!(code, ReasonCode::Success);
    assert_eq!(seen.count("alice"), 3, "from the cache");
    broker.reloader.reload(true);
    let (_, code) = connack(addr, ProtocolVersion::V5, "k1", "alice", b"pw").await;
    assert_eq!(code, ReasonCode::Success);
    assert_eq!(seen.count("alice"), 4, "asked again after SIGHUP");
}

/// Issue 12, HTTP: denials go through the failure limiter like wrong passwords: after a few,
/// each next one waits, then the address is refused with 0x9F Connection rate exceeded
/// without asking the service.
#[tokio::test]
async fn denials_are_limited() {
    let (service, seen) = service(Duration::ZERO).await;
    let broker = broker(service, "").await;
    let addr = broker.addrs[0];
    let mut codes = Vec::new();
    for n in 0..9 {
        codes.push(refused(addr, &format!("g{n}"), "mallory").await);
    }
    assert!(
        codes[..8]
            .iter()
            .all(|code| *code == ReasonCode::BadUserNameOrPassword)
    );
    assert_eq!(codes[8], ReasonCode::ConnectionRateExceeded);
    assert_eq!(seen.count("mallory"), 8, "the banned attempt was not sent");
}

/// Issue 12, HTTP: a service that says no with a 401 or 403 status (as many do) denies: 0x86,
/// counted by the failure limiter like a `deny` answer (not taken for an outage, which would
/// let guesses through unlimited).
#[tokio::test]
async fn status_401_and_403_are_denials() {
    let (service, _) = service(Duration::ZERO).await;
    let broker = broker(service, "").await;
    let addr = broker.addrs[0];
    let mut codes = Vec::new();
    for n in 0..9 {
        let user = if n % 2 == 0 {
            "forbidden"
        } else {
            "unauthorized"
        };
        codes.push(refused(addr, &format!("s{n}"), user).await);
    }
    assert!(
        codes[..8]
            .iter()
            .all(|code| *code == ReasonCode::BadUserNameOrPassword),
        "{codes:?}"
    );
    assert_eq!(codes[8], ReasonCode::ConnectionRateExceeded);
}

/// Issue 12, HTTP: an answer's `expires_at` bounds the session: the MQTT 5 client is
/// disconnected (DISCONNECT 0x87 Not authorized) when it passes. Bounded wait.
#[tokio::test]
async fn expires_at_disconnects() {
    let (service, _) = service(Duration::ZERO).await;
    let broker = broker(service, "").await;
    let (mut raw, code) = connack(broker.addrs[0], ProtocolVersion::V5, "b1", "brief", b"pw").await;
    assert_eq!(code, ReasonCode::Success);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match raw.recv_within(left).await {
            Ok(Some(tern_codec::Packet::Disconnect(disconnect))) => {
                assert_eq!(disconnect.reason_code, ReasonCode::NotAuthorized);
                break;
            }
            Ok(Some(_)) => continue,
            Ok(None) => panic!("closed without DISCONNECT"),
            Err(()) => panic!("not disconnected within 6 s"),
        }
    }
}

/// Issue 12, HTTP: at most `max_concurrent` requests in flight (the service sees at most 2 of
/// 8 simultaneous CONNECTs at once; the others wait and all get in), over keep-alive
/// connections reused (no more connections than the bound).
#[tokio::test]
async fn concurrency_is_bounded_and_connections_reused() {
    let (service, seen) = service(Duration::from_millis(100)).await;
    let broker = broker(service, ", max_concurrent = 2, cache_ttl_s = 0").await;
    let addr = broker.addrs[0];
    let connects = (0..8).map(|n| async move {
        let (_raw, code) = connack(
            addr,
            ProtocolVersion::V5,
            &format!("p{n}"),
            &format!("u{n}"),
            b"pw",
        )
        .await;
        code
    });
    let codes = futures_util::future::join_all(connects).await;
    assert!(codes.iter().all(|code| *code == ReasonCode::Success));
    assert_eq!(seen.requests.lock().unwrap().len(), 8);
    assert_eq!(seen.max_in_flight.load(Ordering::SeqCst), 2);
    assert!(seen.connections.load(Ordering::SeqCst) <= 2);
}

/// Issue 12, HTTP: the request carries the facts: client id, username, password (UTF-8, or
/// base64 with a flag), peer address and port, listener name, transport kind (`mqtt`, `ws`),
/// protocol version, no certificate on plain TCP.
#[tokio::test]
async fn the_request_carries_the_facts() {
    let (service, seen) = service(Duration::ZERO).await;
    let mut config = common::config();
    let named: ListenerConfig = toml::from_str(&format!(
        "name = \"edge\"\nkind = \"mqtt\"\nbind = \"127.0.0.1:0\"\n\
         auth = {{ http = {{ url = \"http://{service}/mqtt/auth?x=1\", cache_ttl_s = 0 }} }}\n"
    ))
    .unwrap();
    config.listeners.push(named);
    let web: ListenerConfig = toml::from_str(&format!(
        "name = \"web\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\n\
         auth = {{ http = {{ url = \"http://{service}/mqtt/auth?x=1\", cache_ttl_s = 0 }} }}\n"
    ))
    .unwrap();
    config.listeners.push(web);
    config.auth = AuthConfig {
        allow_anonymous: Some(true),
        ..AuthConfig::default()
    };
    let broker = start(config).await;
    let edge = broker.addrs[1];
    let (raw, code) = connack(edge, ProtocolVersion::V311, "dev-7", "facts", b"p\xc3\xa9").await;
    assert_eq!(code, ReasonCode::Success);
    let local = raw_local_addr(&raw);
    let body = seen.last("facts");
    assert_eq!(body["client_id"], "dev-7");
    assert_eq!(body["password"], "pé");
    assert_eq!(body["password_base64"], false);
    assert_eq!(body["peer_address"], "127.0.0.1");
    assert_eq!(body["peer_port"], local.port());
    assert_eq!(body["listener"], "edge");
    assert_eq!(body["transport"], "mqtt");
    assert_eq!(body["protocol_version"], 4);
    assert!(body["certificate"].is_null());
    let (_, code) = connack(edge, ProtocolVersion::V5, "dev-8", "facts", b"\xff\x00\x01").await;
    assert_eq!(code, ReasonCode::Success);
    let body = seen.last("facts");
    assert_eq!(body["password"], "/wAB");
    assert_eq!(body["password_base64"], true);
    assert_eq!(body["protocol_version"], 5);
    // Over WebSockets (rumqttc), on another listener sharing the table: its name and kind.
    let ws = broker.addrs[2];
    let mut opts = rumqttc::MqttOptions::new("dev-ws", format!("ws://{ws}/mqtt"), ws.port());
    opts.set_transport(rumqttc::Transport::Ws);
    opts.set_credentials("facts-ws", "pw");
    let (client, ack) = Client::connect(opts).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    client.disconnect().await;
    let body = seen.last("facts-ws");
    assert_eq!(body["listener"], "web");
    assert_eq!(body["transport"], "ws");
    assert_eq!(body["client_id"], "dev-ws");
    // The top-level [auth] of the `listen` address has no http: nothing sent from there.
    let before = seen.requests.lock().unwrap().len();
    let (_, code) = connack(broker.addrs[0], ProtocolVersion::V5, "x", "facts", b"p").await;
    assert_eq!(code, ReasonCode::Success);
    assert_eq!(seen.requests.lock().unwrap().len(), before);
}

fn raw_local_addr(raw: &Raw) -> SocketAddr {
    raw.stream.local_addr().unwrap()
}

#[allow(deprecated)] // the ring provider: see tls.rs
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for `localhost`, its PEM written to a file: (acceptor, ca file).
fn tls_service_config(name: &str) -> (tokio_rustls::TlsAcceptor, std::path::PathBuf) {
    use rustls_pki_types::pem::PemObject;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = certified.cert.pem();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
            rustls_pki_types::PrivateKeyDer::from_pem_slice(
                certified.signing_key.serialize_pem().as_bytes(),
            )
            .unwrap(),
        )
        .unwrap();
    let dir = std::env::temp_dir().join(format!("tern-http-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, cert_pem).unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), path)
}

/// Issue 12, HTTP over https: the service's certificate verified against `ca_file` (allow and
/// deny answered); a certificate from another authority fails closed (0x88).
#[tokio::test]
async fn https_with_a_ca_file() {
    let (acceptor, ca) = tls_service_config("ca.pem");
    let (service, seen) = service_with(Duration::ZERO, Some(acceptor)).await;
    let url = format!("https://localhost:{}/auth", service.port());
    let extra = format!(", ca_file = {:?}", ca.display().to_string());
    let broker = start(ServerConfig {
        auth: http_auth(&url, &extra),
        ..common::config()
    })
    .await;
    let addr = broker.addrs[0];
    let (client, ack) = Client::connect(v311(addr, "tls1", "alice")).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    client.disconnect().await;
    assert_eq!(
        refused(addr, "tls2", "mallory").await,
        ReasonCode::BadUserNameOrPassword
    );
    assert_eq!(seen.requests.lock().unwrap().len(), 2);

    let (_, other_ca) = tls_service_config("other-ca.pem");
    let extra = format!(", ca_file = {:?}", other_ca.display().to_string());
    let untrusted = start(ServerConfig {
        auth: http_auth(&url, &extra),
        ..common::config()
    })
    .await;
    assert_eq!(
        refused(untrusted.addrs[0], "tls3", "alice").await,
        ReasonCode::ServerUnavailable
    );
    assert_eq!(seen.requests.lock().unwrap().len(), 2, "nothing sent");
}

/// Issue 12, HTTP: with `max_concurrent` requests in flight, a further CONNECT waits for a
/// permit, bounded by the core's connect timeout (then CONNACK 0x88), and its request is never
/// sent to the saturated service.
#[tokio::test]
async fn a_saturated_service_is_bounded_by_the_connect_timeout() {
    let (service, seen) = service(Duration::ZERO).await;
    let mut config = ServerConfig {
        auth: http_auth(
            &format!("http://{service}/mqtt/auth"),
            ", max_concurrent = 1, timeout_ms = 60000",
        ),
        ..common::config()
    };
    config.limits.connect_timeout = 1;
    let broker = start(config).await;
    let addr = broker.addrs[0];
    let _slow =
        tokio::spawn(async move { connack(addr, ProtocolVersion::V5, "s", "slow", b"p").await });
    common::wait_until("the slow request reached the service", || {
        seen.count("slow") == 1
    })
    .await;
    let start = Instant::now();
    let (_, code) = connack(addr, ProtocolVersion::V5, "q", "alice", b"pw").await;
    assert_eq!(code, ReasonCode::ServerUnavailable);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(seen.count("alice"), 0);
}

/// Issue 12, HTTP: the connect rate through the service, cold (every CONNECT asks it) and warm
/// (answered from the cache). A measurement, not a check: `cargo test -p tern-server --test
/// http_auth -- --ignored --nocapture connect_rate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn connect_rate() {
    const CLIENTS: usize = 2000;
    const PARALLEL: usize = 32;
    let (service, seen) = service(Duration::ZERO).await;
    let broker = broker(service, ", cache_ttl_s = 600").await;
    let addr = broker.addrs[0];
    for round in ["cold", "warm"] {
        let start = Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let workers = (0..PARALLEL).map(|_| {
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= CLIENTS {
                        return;
                    }
                    let (_, code) = connack(
                        addr,
                        ProtocolVersion::V5,
                        &format!("r{n}"),
                        &format!("user{n}"),
                        b"pw",
                    )
                    .await;
                    assert_eq!(code, ReasonCode::Success);
                }
            })
        });
        for worker in futures_util::future::join_all(workers).await {
            worker.unwrap();
        }
        let elapsed = start.elapsed();
        println!(
            "{round}: {CLIENTS} connects in {elapsed:?}, {:.0}/s; service asked {} times so far, \
             {} connections",
            CLIENTS as f64 / elapsed.as_secs_f64(),
            seen.requests.lock().unwrap().len(),
            seen.connections.load(Ordering::SeqCst)
        );
    }
}

/// A CA and a certificate it signs (PEM): (ca, cert, key).
fn issue(ca_name: &str, cn: &str, sans: &[&str], client: bool) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let mut params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = KeyPair::generate().unwrap();
    let cert = params
        .signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

/// Issue 12, HTTP: on a TLS listener with client certificates, the request carries the
/// certificate's identity (CN and SANs) beside the CONNECT's username, and the transport
/// `mqtts`.
#[tokio::test]
async fn the_request_carries_the_client_certificate() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let dir = std::env::temp_dir().join(format!("tern-http-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let put = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (server_ca, server_cert, server_key) =
        issue("server ca", "tern", &["localhost", "127.0.0.1"], false);
    let (client_ca, client_cert, client_key) =
        issue("client ca", "sensor-7", &["sensor-7.example"], true);
    let (service, seen) = service(Duration::ZERO).await;
    let mut config = common::config();
    let listener: ListenerConfig = toml::from_str(&format!(
        "name = \"secure\"\nkind = \"mqtts\"\nbind = \"127.0.0.1:0\"\n\
         tls = {{ cert = {:?}, key = {:?}, client_ca = {:?}, client_auth = \"required\" }}\n\
         auth = {{ http = {{ url = \"http://{service}/auth\", cache_ttl_s = 0 }} }}\n",
        put("server.pem", &server_cert),
        put("server.key", &server_key),
        put("client-ca.pem", &client_ca),
    ))
    .unwrap();
    config.listeners.push(listener);
    let broker = start(config).await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server_ca.as_bytes()).unwrap())
        .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(client_cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(client_key.as_bytes()).unwrap(),
        )
        .unwrap();
    let mut opts = v311(broker.addrs[1], "dev-tls", "certified");
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(Arc::new(client)),
    ));
    let (client, ack) = Client::connect(opts).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    client.disconnect().await;
    let body = seen.last("certified");
    assert_eq!(body["transport"], "mqtts");
    assert_eq!(body["listener"], "secure");
    assert_eq!(body["certificate"]["common_name"], "sensor-7");
    assert_eq!(
        body["certificate"]["alt_names"],
        serde_json::json!(["sensor-7.example"])
    );
}
