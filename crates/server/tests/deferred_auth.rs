//! Issue 12, decisions that may wait: a CONNECT the core's authenticator defers is decided by
//! the server's `AsyncAuthenticator` off the connection's task and handed back; the default
//! hook refuses (nothing is let in by a back end nobody configured), and one that never answers
//! is refused at the connect timeout with CONNACK 0x88 / return code 3 (fail closed).
//! rumqttc is the client for the accepted case; raw packets check the refusal codes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Client, Raw, config, connect_packet, options, text};
use tern_codec::{ProtocolVersion, ReasonCode};
use tern_server::broker::{
    AuthDecision, AuthRequest, Authenticator, Credentials, Hooks, Principal,
};
use tern_server::{AsyncAuthenticator, AuthFuture, Server, ServerConfig};
use tokio::sync::oneshot;

/// Defers every CONNECT to the server.
struct Defer;

impl Authenticator for Defer {
    fn authenticate(&self, _: &Credentials<'_>) -> AuthDecision {
        AuthDecision::Defer
    }
}

/// Answers after a pause (as a remote service would): "alice" with password "pw" only.
struct SlowPasswords;

impl AsyncAuthenticator for SlowPasswords {
    fn authenticate(&self, request: AuthRequest) -> AuthFuture {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if request.username.as_deref() == Some("alice")
                && request.password.as_deref() == Some(&b"pw"[..])
            {
                Ok(Principal::from_credentials(&request.credentials()))
            } else {
                Err(ReasonCode::BadUserNameOrPassword)
            }
        })
    }
}

/// Never answers.
struct Silent;

impl AsyncAuthenticator for Silent {
    fn authenticate(&self, _: AuthRequest) -> AuthFuture {
        Box::pin(std::future::pending())
    }
}

/// A server whose CONNECTs are all deferred to `hook` (`None`: the default hook).
async fn start(
    config: ServerConfig,
    hook: Option<Arc<dyn AsyncAuthenticator>>,
) -> (std::net::SocketAddr, oneshot::Sender<()>) {
    let hooks = Hooks {
        authenticator: Arc::new(Defer),
        ..Hooks::default()
    };
    let server = match hook {
        Some(hook) => Server::bind_with_auth(config, hooks, hook).await,
        None => Server::bind_with_hooks(config, hooks).await,
    }
    .expect("bind");
    let addr = server.local_addrs()[0];
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        let _ = server.run(stopped, Duration::from_secs(2)).await;
    });
    (addr, stop)
}

async fn refusal(addr: std::net::SocketAddr, username: Option<&str>) -> ReasonCode {
    let mut connect = connect_packet(ProtocolVersion::V311, "raw", true, 30);
    if let Some(username) = username {
        connect.username = Some(text(username));
        connect.password = Some(bytes::Bytes::from_static(b"wrong"));
    }
    let (mut raw, connack) = Raw::connected(addr, ProtocolVersion::V311, connect).await;
    // Refused: the broker closes after the CONNACK [MQTT-3.2.2-5].
    assert!(raw.recv().await.is_none(), "closed after the refusal");
    connack.reason_code
}

/// A deferred CONNECT answered by the server's hook: the right password gets in and the
/// client works (rumqttc); a wrong one is refused with the hook's code (3.1.1 return code 4).
#[tokio::test]
async fn the_servers_hook_decides_a_deferred_connect() {
    let (addr, _stop) = start(config(), Some(Arc::new(SlowPasswords))).await;
    let mut opts = options(addr, "alice-1");
    opts.set_credentials("alice", "pw");
    let (mut client, connack) = Client::connect(opts).await;
    assert_eq!(connack.code, rumqttc::ConnectReturnCode::Success);
    client.subscribe("t", rumqttc::QoS::AtLeastOnce).await;
    client
        .publish("t", rumqttc::QoS::AtLeastOnce, false, "hello")
        .await;
    assert_eq!(&client.recv().await.payload[..], b"hello");

    assert_eq!(
        refusal(addr, Some("alice")).await,
        ReasonCode::BadUserNameOrPassword
    );
}

/// With no hook configured, a deferred CONNECT is refused (0x87, 3.1.1 return code 5): the
/// default fails closed.
#[tokio::test]
async fn the_default_hook_refuses() {
    let (addr, _stop) = start(config(), None).await;
    assert_eq!(refusal(addr, None).await, ReasonCode::NotAuthorized);
}

/// A hook that never answers: refused at the connect timeout with 0x88 Server unavailable
/// (3.1.1 return code 3).
#[tokio::test]
async fn an_unanswered_connect_is_refused_at_the_connect_timeout() {
    let mut config = config();
    config.limits.connect_timeout = 1;
    let (addr, _stop) = start(config, Some(Arc::new(Silent))).await;
    assert_eq!(refusal(addr, None).await, ReasonCode::ServerUnavailable);
}

/// [MQTT-3.1.4-5]: packets that arrive right behind a deferred CONNECT (in the same write) are
/// not processed until it is authenticated, and are processed once it is: the PUBLISH sent
/// with the CONNECT reaches a subscriber after the hook allowed the client.
#[tokio::test]
async fn packets_behind_a_deferred_connect_are_handled_after_the_answer() {
    let (addr, _stop) = start(config(), Some(Arc::new(SlowPasswords))).await;
    let mut opts = options(addr, "watcher");
    opts.set_credentials("alice", "pw");
    let (mut watcher, _) = Client::connect(opts).await;
    watcher.subscribe("t", rumqttc::QoS::AtMostOnce).await;

    let mut connect = connect_packet(ProtocolVersion::V311, "pipelined", true, 30);
    connect.username = Some(text("alice"));
    connect.password = Some(bytes::Bytes::from_static(b"pw"));
    let mut bytes = bytes::BytesMut::new();
    tern_codec::Packet::Connect(Box::new(connect))
        .encode(ProtocolVersion::V311, &mut bytes)
        .unwrap();
    tern_codec::Packet::Publish(common::publish_packet(
        "t",
        tern_codec::QoS::AtMostOnce,
        0,
        b"behind",
    ))
    .encode(ProtocolVersion::V311, &mut bytes)
    .unwrap();
    let mut raw = Raw::open(addr, ProtocolVersion::V311).await;
    raw.send_bytes(&bytes).await;
    match raw.recv().await {
        Some(tern_codec::Packet::ConnAck(connack)) => {
            assert_eq!(connack.reason_code, ReasonCode::Success)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert_eq!(&watcher.recv().await.payload[..], b"behind");
}
