//! Smoke runs of `tern bench` against Tern itself, in-process on an ephemeral port: short
//! closed-loop runs whose delivery check must pass, as CI runs them. Every run is bounded by
//! its duration and grace period, so a broken broker fails the test instead of hanging it.

use std::net::SocketAddr;
use std::time::Duration;

use std::path::{Path, PathBuf};

use tern::bench::{self, BenchConfig, Report, Scenario, TlsOptions, Transport};
use tern_codec::{ProtocolVersion, QoS};
use tern_server::{
    ClientAuth, Durability, ListenerConfig, ListenerKind, Server, ServerConfig, TlsConfig,
    TlsVersion,
};
use tokio::sync::oneshot;

/// A broker on 127.0.0.1:0; stops when dropped.
struct Broker {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start_broker() -> Broker {
    let config = ServerConfig {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        durability: Durability::Memory,
        ..ServerConfig::default()
    };
    start_broker_with(config).await
}

async fn start_broker_with(config: ServerConfig) -> Broker {
    let server = Server::bind(config).await.expect("bind");
    let addr = server.local_addrs()[0];
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(1),
    ));
    Broker { addr, _stop: stop }
}

fn config(broker: &Broker, scenario: Scenario, qos: QoS, clients: usize) -> BenchConfig {
    let mut config = BenchConfig::new(scenario);
    config.host = broker.addr.ip().to_string();
    config.port = broker.addr.port();
    config.qos = qos;
    config.clients = clients;
    config.duration = Duration::from_secs(1);
    config.grace = Duration::from_secs(3);
    config.progress = false;
    config
}

async fn run(config: BenchConfig) -> Report {
    let report = tokio::time::timeout(Duration::from_secs(20), bench::run(&config))
        .await
        .expect("bench run finishes")
        .expect("bench run");
    assert!(report.verdict.pass, "{}", report.summary());
    report
}

fn assert_delivered(report: &Report) {
    let messages = report.messages.as_ref().expect("message figures");
    let delivery = &messages.delivery;
    assert!(delivery.sent > 0, "{}", report.summary());
    assert!(delivery.received > 0, "{}", report.summary());
    assert_eq!(delivery.received, delivery.expected, "{}", report.summary());
    assert_eq!(delivery.lost, 0);
    assert_eq!(delivery.duplicates, 0);
    assert_eq!(delivery.out_of_order, 0);
    assert!(messages.received_per_s > 0.0);
    assert!(messages.latency.count > 0);
    assert_eq!(report.error_count, 0, "{:?}", report.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanin_qos1_passes_the_delivery_check() {
    let broker = start_broker().await;
    let report = run(config(&broker, Scenario::Fanin, QoS::AtLeastOnce, 4)).await;
    assert_eq!((report.publishers, report.subscribers), (4, 1));
    assert_delivered(&report);
    assert!(report.to_json().contains("\"check\":\"PASS\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_qos2_passes_the_delivery_check() {
    let broker = start_broker().await;
    let report = run(config(&broker, Scenario::Pairs, QoS::ExactlyOnce, 4)).await;
    assert_eq!((report.publishers, report.subscribers), (4, 4));
    assert_delivered(&report);
    let delivery = &report.messages.as_ref().expect("message figures").delivery;
    assert_eq!(delivery.unacked, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_fanout_at_a_fixed_rate_passes_the_delivery_check() {
    let broker = start_broker().await;
    let mut config = config(&broker, Scenario::Fanout, QoS::AtLeastOnce, 5);
    config.version = ProtocolVersion::V5;
    config.rate = 500;
    let report = run(config).await;
    assert_delivered(&report);
    let messages = report.messages.as_ref().expect("message figures");
    // One publisher at 500 msg/s for 1 s, to 5 subscribers.
    assert!(
        (400..=600).contains(&messages.delivery.sent),
        "{}",
        report.summary()
    );
    assert_eq!(messages.delivery.expected, 5 * messages.delivery.sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conn_opens_and_holds_every_connection() {
    let broker = start_broker().await;
    let mut config = config(&broker, Scenario::Conn, QoS::AtMostOnce, 50);
    config.rate = 0;
    config.pid = Some(std::process::id());
    let report = run(config).await;
    let connections = report.connections.as_ref().expect("connection figures");
    assert_eq!(connections.established, 50);
    assert_eq!(connections.dropped, 0);
    assert_eq!(connections.connack.count, 50);
    assert!(connections.bytes_per_connection.is_some());
}

/// A CA and a server certificate for localhost and 127.0.0.1 (rcgen, EC P-256), written to a
/// fresh directory: (directory, CA file, certificate file, key file).
fn certificates(name: &str) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = std::env::temp_dir().join(format!("tern-bench-smoke-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params
        .signed_by(&key, &Issuer::new(ca_params, ca_key))
        .unwrap();
    let write = |file: &str, text: String| {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca = write("ca.pem", ca.pem());
    let cert = write("server.pem", cert.pem());
    let key = write("server.key", key.serialize_pem());
    (dir, ca, cert, key)
}

/// A broker whose one listener is of `kind` (with TLS from `cert` and `key` when it needs it).
async fn start_listener(kind: ListenerKind, cert: &Path, key: &Path) -> Broker {
    let tls = kind.uses_tls().then(|| TlsConfig {
        cert: cert.to_owned(),
        key: key.to_owned(),
        client_ca: None,
        client_auth: ClientAuth::None,
        crl: Vec::new(),
        min_version: TlsVersion::Tls12,
        use_identity_as_username: None,
        sni: Vec::new(),
    });
    let config = ServerConfig {
        listen: Vec::new(),
        listeners: vec![ListenerConfig {
            name: kind.as_str().to_owned(),
            kind,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_connections: None,
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
            tls,
            path: "/mqtt".to_owned(),
            allowed_origins: Vec::new(),
            auth: None,
        }],
        durability: Durability::Memory,
        ..ServerConfig::default()
    };
    start_broker_with(config).await
}

/// Issue 11 (`tern bench --transport tcp|tls|ws|wss`): fan-in at QoS 1 passes the delivery
/// check and the conn scenario holds every connection over `transport`.
async fn transport_smoke(transport: Transport, kind: ListenerKind) {
    let (dir, ca, cert, key) = certificates(transport.name());
    let broker = start_listener(kind, &cert, &key).await;
    let tls = TlsOptions {
        cafile: transport.uses_tls().then(|| ca.clone()),
        ..TlsOptions::default()
    };
    let mut fanin = config(&broker, Scenario::Fanin, QoS::AtLeastOnce, 4);
    fanin.transport = transport;
    fanin.tls = tls.clone();
    let report = run(fanin).await;
    assert_delivered(&report);
    assert!(
        report
            .to_json()
            .contains(&format!("\"transport\":\"{}\"", transport.name()))
    );

    let mut conn = config(&broker, Scenario::Conn, QoS::AtMostOnce, 50);
    conn.transport = transport;
    conn.tls = tls;
    conn.rate = 0;
    let report = run(conn).await;
    let connections = report.connections.as_ref().expect("connection figures");
    assert_eq!(connections.established, 50);
    assert_eq!(connections.dropped, 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_transport_passes() {
    transport_smoke(Transport::Tls, ListenerKind::Mqtts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_transport_passes() {
    transport_smoke(Transport::Ws, ListenerKind::Ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_transport_passes() {
    transport_smoke(Transport::Wss, ListenerKind::Wss).await;
}

/// `--transport tcp` (the default) said so in the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_transport_is_reported() {
    let broker = start_broker().await;
    let mut config = config(&broker, Scenario::Pairs, QoS::AtLeastOnce, 2);
    config.transport = Transport::Tcp;
    let report = run(config).await;
    assert_delivered(&report);
    assert!(report.to_json().contains("\"transport\":\"tcp\""));
    assert!(report.summary().contains(" over tcp "));
}
