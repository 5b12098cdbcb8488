//! Issue 12, wave 2: users from a password file and access rules from an ACL file, per
//! listener (`[auth]`, a listener's `auth`), secure by default, reloaded, and failed
//! authentications limited. rumqttc where a client we did not write can show it; raw packets
//! where the exact reason code matters.
//!
//! The fixtures are `$7$` hashes made by `mosquitto_passwd -b` (PBKDF2, ~60 µs a verification):
//! fast enough for socket tests; the formats themselves are tested in tern-auth.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use common::{Client, Raw, connect_packet, options, publish_packet, subscribe_packet, text};
use tern_codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use tern_server::{AuthConfig, AuthReloader, ListenerConfig, ListenerKind, Server, ServerConfig};
use tokio::sync::oneshot;

/// alice:alice-pw, bob:bob-pw, carol:carol-pw (mosquitto_passwd 2.0, `$7$`).
const USERS: &str = "\
alice:$7$101$Y9id20v9IF0Jl3XZ$tuI/wNIywuMaQd9gB99rtGESSnVmdpWI+L3gEbxSMeeSJati61GR2j4ZQgjI01lXX0FgLLVoV/ajiVGi2zmE3g==
bob:$7$101$2gtq+VT0OnzRfQbl$j1CEXCJ7fZd6OVSvJtaXGOlBegSvQ/lAYTPFQZbsDc4YfgDwCMD2HYwNueoaxOESPPPvkQm1lvO3k0ZpTQ7KKw==
";
const CAROL: &str = "carol:$7$101$Cg8c3FLmRb3RrVt6$C32UahuUcUyFHW9ervu4Jws/wal8NdvPfwAHWjfDWt0KVOgxyg4CH0X5G34cJyfScFYl+6pA/s4FT9P+Tw6uAw==\n";

/// A file in a directory of this test process.
fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-auth-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn auth(password_file: Option<PathBuf>, acl_file: Option<PathBuf>) -> AuthConfig {
    AuthConfig {
        password_file,
        acl_file,
        ..AuthConfig::default()
    }
}

fn config(auth: AuthConfig) -> ServerConfig {
    ServerConfig {
        auth,
        ..common::config()
    }
}

struct Running {
    addrs: Vec<SocketAddr>,
    reloader: AuthReloader,
    auth: Option<tern_server::FileAuth>,
    _stop: oneshot::Sender<()>,
}

impl Running {
    fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }
}

async fn start(config: ServerConfig) -> Running {
    let server = Server::bind(config).await.expect("bind");
    let addrs = server.local_addrs();
    let reloader = server.auth_reloader();
    let auth = server.file_auth().cloned();
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
        auth,
        _stop: stop,
    }
}

/// The CONNACK code of a raw CONNECT (the connection is closed after a refusal).
async fn connack(
    addr: SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
    credentials: Option<(&str, &str)>,
) -> (Raw, ReasonCode) {
    let mut connect = connect_packet(version, client_id, true, 30);
    if let Some((username, password)) = credentials {
        connect.username = Some(text(username));
        connect.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    }
    let (raw, connack) = Raw::connected(addr, version, connect).await;
    (raw, connack.reason_code)
}

async fn refused(
    addr: SocketAddr,
    client_id: &str,
    credentials: Option<(&str, &str)>,
) -> ReasonCode {
    let (mut raw, code) = connack(addr, ProtocolVersion::V5, client_id, credentials).await;
    assert_ne!(code, ReasonCode::Success);
    // [MQTT-3.2.2-7]: closed after a refusal.
    assert!(raw.recv().await.is_none(), "closed after the refusal");
    code
}

fn rumqttc_with(addr: SocketAddr, id: &str, user: &str, password: &str) -> rumqttc::MqttOptions {
    let mut opts = options(addr, id);
    opts.set_credentials(user, password);
    opts
}

/// Issue 12, password file: the right password gets in (rumqttc, twice: the second from the
/// cache of verifications); a wrong password and an unknown user are refused with 0x86 (3.1.1:
/// return code 4); a client without a username is refused with 0x87 where anonymous clients
/// are not allowed.
#[tokio::test]
async fn passwords_are_checked() {
    let broker = start(config(auth(Some(write("users-1", USERS)), None))).await;
    let addr = broker.addr();
    for round in 0..2 {
        let (mut client, ack) = Client::connect(rumqttc_with(
            addr,
            &format!("a{round}"),
            "alice",
            "alice-pw",
        ))
        .await;
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
        client.subscribe("t", rumqttc::QoS::AtLeastOnce).await;
        client
            .publish("t", rumqttc::QoS::AtLeastOnce, false, "hi")
            .await;
        assert_eq!(&client.recv().await.payload[..], b"hi");
        client.disconnect().await;
    }
    assert_eq!(
        refused(addr, "w", Some(("alice", "wrong"))).await,
        ReasonCode::BadUserNameOrPassword
    );
    assert_eq!(
        refused(addr, "u", Some(("mallory", "alice-pw"))).await,
        ReasonCode::BadUserNameOrPassword
    );
    assert_eq!(refused(addr, "anon", None).await, ReasonCode::NotAuthorized);
    let (_, code) = connack(addr, ProtocolVersion::V311, "w3", Some(("bob", "nope"))).await;
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
}

/// Issue 12: a listener's own `auth` replaces `[auth]` for it: anonymous clients are refused
/// on the `listen` address (password file) and let in on the listener that allows them.
#[tokio::test]
async fn anonymous_clients_per_listener() {
    let mut config = config(auth(Some(write("users-2", USERS)), None));
    let open: ListenerConfig = toml::from_str(
        "name = \"open\"\nkind = \"mqtt\"\nbind = \"127.0.0.1:0\"\nauth = { allow_anonymous = true }\n",
    )
    .unwrap();
    assert_eq!(open.kind, ListenerKind::Mqtt);
    config.listeners.push(open);
    let broker = start(config).await;
    assert_eq!(
        refused(broker.addrs[0], "anon", None).await,
        ReasonCode::NotAuthorized
    );
    let (client, ack) = Client::connect(options(broker.addrs[1], "anon")).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    client.disconnect().await;
}

/// Issue 12 (secure by default): a non-loopback listen address with no password file and no
/// explicit allow_anonymous does not start, and the error says what to add; with
/// allow_anonymous it starts. (Refused before anything is bound.)
#[tokio::test]
async fn a_network_listener_without_authentication_does_not_start() {
    let mut open = common::config();
    open.listen = vec![SocketAddr::from(([0, 0, 0, 0], 0))];
    let error = match Server::bind(open).await {
        Ok(_) => panic!("a network listener without authentication started"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("listen address 0.0.0.0:0")
            && error.contains("password_file")
            && error.contains("allow_anonymous = true"),
        "{error}"
    );
}

const ACL: &str = "\
user alice
topic readwrite alice/#
topic read public/#
user bob
topic write public/#
topic write alice/#
";

/// Issue 12, access rules: a denied PUBLISH is PUBACK 0x87 in MQTT 5, an allowed one is
/// delivered; a SUBSCRIBE outside what may be read is SUBACK 0x87 in MQTT 5 and 0x80 in 3.1.1,
/// one inside is granted.
#[tokio::test]
async fn the_acl_decides_publish_and_subscribe() {
    let broker = start(config(auth(
        Some(write("users-3", USERS)),
        Some(write("acl-3", ACL)),
    )))
    .await;
    let addr = broker.addr();
    let (mut alice, code) = connack(
        addr,
        ProtocolVersion::V5,
        "alice",
        Some(("alice", "alice-pw")),
    )
    .await;
    assert_eq!(code, ReasonCode::Success);
    alice
        .send(&subscribe_packet(
            1,
            &[
                ("alice/#", QoS::AtLeastOnce),
                ("secret/#", QoS::AtLeastOnce),
            ],
        ))
        .await;
    match alice.recv().await {
        Some(Packet::SubAck(suback)) => assert_eq!(
            suback.reason_codes,
            vec![ReasonCode::GrantedQos1, ReasonCode::NotAuthorized]
        ),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    alice
        .send(&Packet::Publish(publish_packet(
            "public/x",
            QoS::AtLeastOnce,
            2,
            b"no",
        )))
        .await;
    match alice.recv().await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.reason_code, ReasonCode::NotAuthorized),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    alice
        .send(&Packet::Publish(publish_packet(
            "alice/x",
            QoS::AtLeastOnce,
            3,
            b"yes",
        )))
        .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        match alice.recv().await {
            Some(Packet::PubAck(ack)) => {
                assert_eq!(ack.reason_code, ReasonCode::Success);
                got.push("ack");
            }
            Some(Packet::Publish(publish)) => {
                assert_eq!(&publish.payload[..], b"yes");
                got.push("message");
                if publish.packet_id != 0 {
                    alice
                        .send(&Packet::PubAck(tern_codec::Ack::new(publish.packet_id)))
                        .await;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    let (mut bob, code) =
        connack(addr, ProtocolVersion::V311, "bob", Some(("bob", "bob-pw"))).await;
    assert_eq!(code, ReasonCode::Success);
    bob.send(&subscribe_packet(1, &[("public/#", QoS::AtMostOnce)]))
        .await;
    match bob.recv().await {
        Some(Packet::SubAck(suback)) => {
            // 3.1.1's only failure code, 0x80.
            assert_eq!(suback.reason_codes, vec![ReasonCode::UnspecifiedError]);
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// Issue 12, reloads: a new password file applies to new connections (a removed user is
/// refused, an added one gets in, a connected client stays); a new ACL re-checks connected
/// clients' subscriptions (one no longer readable is removed: a message on it does not come,
/// while one published after it on a topic still readable does).
#[tokio::test]
async fn password_and_acl_files_are_reloaded() {
    let users = write("users-4", USERS);
    let acl = write("acl-4", ACL);
    let broker = start(config(auth(Some(users.clone()), Some(acl.clone())))).await;
    let addr = broker.addr();
    let (mut alice, ack) = Client::connect(rumqttc_with(addr, "alice", "alice", "alice-pw")).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    alice.subscribe("alice/#", rumqttc::QoS::AtMostOnce).await;
    alice.subscribe("public/#", rumqttc::QoS::AtMostOnce).await;

    // The password file: bob out, carol in.
    let alice_line = USERS.lines().next().unwrap();
    std::fs::write(&users, format!("{alice_line}\n{CAROL}")).unwrap();
    let reloader = broker.reloader.clone();
    let changed = tokio::task::spawn_blocking(move || reloader.reload(true))
        .await
        .unwrap();
    assert_eq!(changed.password_files, 1);
    assert_eq!(
        refused(addr, "bob", Some(("bob", "bob-pw"))).await,
        ReasonCode::BadUserNameOrPassword
    );
    let (carol, ack) = Client::connect(rumqttc_with(addr, "carol", "carol", "carol-pw")).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    carol.disconnect().await;

    // The ACL: alice may no longer read alice/#; carol may write both.
    std::fs::write(
        &acl,
        "user alice\ntopic write alice/#\ntopic read public/#\nuser carol\ntopic write #\n",
    )
    .unwrap();
    let reloader = broker.reloader.clone();
    let changed = tokio::task::spawn_blocking(move || reloader.reload(true))
        .await
        .unwrap();
    assert_eq!(changed.acl_files, 1);
    let (carol, _) = Client::connect(rumqttc_with(addr, "carol2", "carol", "carol-pw")).await;
    carol
        .publish("alice/x", rumqttc::QoS::AtLeastOnce, false, "gone")
        .await;
    carol
        .publish("public/y", rumqttc::QoS::AtLeastOnce, false, "still")
        .await;
    assert_eq!(&alice.recv().await.payload[..], b"still");
}

/// Issue 12, failed authentications limited: 50 bad CONNECTs from one address (one client id
/// each, sequential) are answered ever more slowly, then refused at once with 0x9F for a
/// while; a legitimate client whose password was verified before still connects from the same
/// address meanwhile. Bounded: the whole run takes a few seconds.
#[tokio::test]
async fn failed_authentications_are_limited() {
    let broker = start(config(auth(Some(write("users-5", USERS)), None))).await;
    let addr = broker.addr();
    let (alice, ack) = Client::connect(rumqttc_with(addr, "alice", "alice", "alice-pw")).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    alice.disconnect().await;

    let started = std::time::Instant::now();
    let mut codes = Vec::new();
    for n in 0..50 {
        codes.push(refused(addr, &format!("guess-{n}"), Some(("bob", "guess"))).await);
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert!(
        codes[..3]
            .iter()
            .all(|code| *code == ReasonCode::BadUserNameOrPassword)
    );
    assert!(
        codes[10..]
            .iter()
            .all(|code| *code == ReasonCode::ConnectionRateExceeded),
        "{codes:?}"
    );
    // The legitimate client, from the same address, while the guesser is banned.
    let (alice, ack) = Client::connect(rumqttc_with(addr, "alice", "alice", "alice-pw")).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    alice.disconnect().await;
    // A right password from a refused address, not verified before: refused too (the ban
    // is per address), with the ban's code.
    assert_eq!(
        refused(addr, "bob", Some(("bob", "bob-pw"))).await,
        ReasonCode::ConnectionRateExceeded
    );
}

/// Issue 12, "1 000 failing CONNECTs a second from one address while a legitimate client
/// connects": a guesser on 127.0.0.2 sends wrong passwords at about 1 000 CONNECTs a second for
/// three seconds; meanwhile legitimate clients (rumqttc, from 127.0.0.1, never verified before)
/// connect, subscribe and publish. Every guess is refused (0x86, then 0x9F once the address is
/// banned, with no verification), every legitimate client gets in and its message through.
/// Bounded: 3 000 attempts at most, at most 200 in progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_failing_connects_does_not_keep_others_out() {
    const ATTEMPTS: usize = 3000;
    let broker = start(config(auth(
        Some(write("users-flood", &format!("{USERS}{CAROL}"))),
        None,
    )))
    .await;
    let addr = broker.addr();
    let flood = tokio::spawn(async move {
        let in_progress = std::sync::Arc::new(tokio::sync::Semaphore::new(200));
        let mut ticks = tokio::time::interval(Duration::from_millis(1));
        let mut attempts = tokio::task::JoinSet::new();
        for n in 0..ATTEMPTS {
            ticks.tick().await;
            let Ok(permit) = in_progress.clone().try_acquire_owned() else {
                // As a real flood would: an attempt that cannot start now is skipped.
                continue;
            };
            attempts.spawn(async move {
                let _permit = permit;
                let source = IpAddr::from([127, 0, 0, 2]);
                let mut raw = Raw::open_from(addr, ProtocolVersion::V5, source).await;
                let mut connect = connect_packet(ProtocolVersion::V5, &format!("g{n}"), true, 30);
                connect.username = Some(text("bob"));
                connect.password = Some(Bytes::from_static(b"guess"));
                raw.send(&Packet::Connect(Box::new(connect))).await;
                match raw.recv().await {
                    Some(Packet::ConnAck(connack)) => connack.reason_code,
                    other => panic!("expected CONNACK, got {other:?}"),
                }
            });
        }
        let mut codes = Vec::new();
        while let Some(code) = attempts.join_next().await {
            codes.push(code.expect("an attempt"));
        }
        codes
    });

    // The legitimate clients, while the flood runs: each user's first verification.
    let mut subscriber_options = rumqttc_with(addr, "alice-sub", "alice", "alice-pw");
    subscriber_options.set_clean_session(true);
    let (mut subscriber, ack) = Client::connect(subscriber_options).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    subscriber
        .subscribe("fleet/#", rumqttc::QoS::AtLeastOnce)
        .await;
    for (user, password) in [("bob", "bob-pw"), ("carol", "carol-pw")] {
        let (publisher, ack) =
            Client::connect(rumqttc_with(addr, &format!("{user}-pub"), user, password)).await;
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{user}");
        publisher
            .publish(
                &format!("fleet/{user}"),
                rumqttc::QoS::AtLeastOnce,
                false,
                user,
            )
            .await;
        let message = subscriber.recv().await;
        assert_eq!(message.payload, Bytes::from(user.as_bytes().to_vec()));
        publisher.disconnect().await;
    }
    assert!(
        !flood.is_finished(),
        "the legitimate clients ran during the flood"
    );

    let codes = flood.await.expect("the flood");
    assert!(codes.len() >= ATTEMPTS / 3, "only {} attempts", codes.len());
    let banned = codes
        .iter()
        .filter(|code| **code == ReasonCode::ConnectionRateExceeded)
        .count();
    assert!(
        codes.iter().all(|code| matches!(
            code,
            ReasonCode::BadUserNameOrPassword | ReasonCode::ConnectionRateExceeded
        )),
        "every guess refused"
    );
    assert!(
        banned + 50 >= codes.len(),
        "banned without verification: {banned} of {}",
        codes.len()
    );
    subscriber.disconnect().await;
}

/// Issue 12, "hashing is a denial-of-service door": a client that sends CONNECT with a
/// password and goes away at once costs no verification once its turn comes (the work is
/// skipped when nobody waits for the answer). 200 such clients, each from its own address (so
/// no ban interferes) against 2 verification slots: far fewer than 200 hashes are verified,
/// and a legitimate client still gets in.
#[tokio::test]
async fn verifications_nobody_waits_for_are_skipped() {
    // argon2id (tern passwd's parameters): each verification costs milliseconds.
    let argon = "dave:$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$Yyq0Z5mKqzXPjXXh2j6PSwZQFwLd0AnqA6ukqL0a3fA\n";
    let broker = start(config(auth(
        Some(write("users-gone", &format!("{USERS}{argon}"))),
        None,
    )))
    .await;
    let addr = broker.addr();
    for n in 0..200u32 {
        let source = IpAddr::from([127, 0, 1 + (n / 250) as u8, 1 + (n % 250) as u8]);
        let mut raw = Raw::open_from(addr, ProtocolVersion::V311, source).await;
        let mut connect = connect_packet(ProtocolVersion::V311, &format!("gone-{n}"), true, 30);
        connect.username = Some(text("dave"));
        connect.password = Some(Bytes::from_static(b"wrong"));
        raw.send(&Packet::Connect(Box::new(connect))).await;
        drop(raw);
    }
    // A legitimate client after them: verified in its turn.
    let (alice, ack) = Client::connect(rumqttc_with(addr, "alice", "alice", "alice-pw")).await;
    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
    alice.disconnect().await;
    let done = broker
        .auth
        .as_ref()
        .expect("file auth")
        .verifications_done();
    assert!(done < 100, "{done} verifications for 200 clients gone");
}

/// Issue 12 with the store: a persistent session restored after a restart has no principal
/// until its client connects again (nobody has authenticated for it since). What is queued for
/// it meanwhile goes, when a client takes it up, only where that client may read: alice (who
/// may read everything) subscribed `#` before the restart; after it, bob (who may read `b/#`
/// only) takes the session up with the same client id and gets `b/x` but not `a/x`.
#[tokio::test]
async fn a_restored_session_gives_its_new_client_only_what_it_may_read() {
    let dir = std::env::temp_dir().join(format!("tern-auth-restored-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let acl = write(
        "restored.acl",
        "user alice\ntopic read #\nuser bob\ntopic read b/#\nuser carol\ntopic write #\n",
    );
    let mut server_config = config(auth(
        Some(write("users-restored", &format!("{USERS}{CAROL}"))),
        Some(acl),
    ));
    server_config.durability = tern_server::Durability::Process;
    server_config.data_dir = dir.clone();
    let run = |config: ServerConfig| async move {
        let server = Server::bind(config).await.expect("bind");
        let addr = server.local_addrs()[0];
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            let _ = server.run(stopped, Duration::from_secs(2)).await;
        });
        (addr, stop, task)
    };
    let persistent = |addr, id: &str, user: &str, password: &str| {
        let mut opts = rumqttc_with(addr, id, user, password);
        opts.set_clean_session(false);
        opts
    };

    let (addr, stop, task) = run(server_config.clone()).await;
    let (mut alice, _) = Client::connect(persistent(addr, "shared", "alice", "alice-pw")).await;
    alice.subscribe("#", rumqttc::QoS::AtLeastOnce).await;
    alice.disconnect().await;
    drop(stop);
    task.await.expect("the first broker stops");

    let (addr, _stop, _task) = run(server_config).await;
    let (carol, _) = Client::connect(rumqttc_with(addr, "carol", "carol", "carol-pw")).await;
    for topic in ["a/x", "b/x"] {
        carol
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, topic)
            .await;
    }
    carol.disconnect().await;
    let (mut bob, ack) = Client::connect(persistent(addr, "shared", "bob", "bob-pw")).await;
    assert!(ack.session_present, "the restored session is taken up");
    let first = bob.recv().await;
    assert_eq!(first.topic, "b/x");
    // Nothing else comes: a/x was dropped (bounded wait for an absence).
    let more = bob
        .next_matching_within(Duration::from_millis(500), |event| match event {
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish)) => Some(publish.clone()),
            _ => None,
        })
        .await;
    assert!(more.is_err(), "only b/x: {more:?}");
    bob.disconnect().await;
    let _ = std::fs::remove_dir_all(&dir);
}
