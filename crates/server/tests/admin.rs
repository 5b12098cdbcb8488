//! Issue 13, `[admin]`: the server parses the table, binds the admin listener with the MQTT
//! ones, generates the token into the data directory (0600) at first start and reads it back
//! at the next, serves the API with the backend it is given, and stops with the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tern_admin::testing::FakeBackend;
use tern_server::{Durability, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-admin-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(dir: &std::path::Path, admin: &str) -> ServerConfig {
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\ndurability = \"memory\"\ndata_dir = {:?}\n[admin]\n{admin}\n",
        dir.display().to_string()
    );
    let path = dir.join("tern.toml");
    std::fs::write(&path, text).unwrap();
    ServerConfig::from_file(&path).unwrap()
}

/// One HTTP/1.1 request; the status and the body.
async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: t\r\n{auth}connection: close\r\ncontent-length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let status = answer[9..12].parse().unwrap();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Issue 13 configuration contract: `[admin] bind`, `token_file` (default: generated into the
/// data directory), `metrics_auth`; unknown keys refused.
#[test]
fn admin_table_parsed() {
    let dir = temp_dir("parse");
    let parsed = config(
        &dir,
        "bind = \"127.0.0.1:9883\"\ntoken_file = \"secret/admin.token\"\nmetrics_auth = true",
    );
    assert_eq!(parsed.admin.bind, Some("127.0.0.1:9883".parse().unwrap()));
    assert_eq!(
        parsed.admin.token_file,
        Some(dir.join("secret/admin.token"))
    );
    assert!(parsed.admin.metrics_auth);
    let default = ServerConfig::default();
    assert_eq!(default.admin.bind, None);
    assert_eq!(
        default.admin.token_path(&default.data_dir),
        default.data_dir.join("admin.token")
    );
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[admin]\nbnid = \"127.0.0.1:1\"\n").unwrap();
    assert!(ServerConfig::from_file(&path).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 13: the token is generated into the data directory at first start (32 random bytes
/// hex, mode 0600); the API refuses calls without it and answers with it, through the backend
/// the server was given; the listener closes with the server.
#[tokio::test]
async fn admin_listener_serves_the_given_backend() {
    let dir = temp_dir("serve");
    let mut config = config(&dir, "bind = \"127.0.0.1:0\"");
    config.durability = Durability::Memory;
    let mut server = Server::bind(config).await.unwrap();
    let addr = server.admin_addr().expect("the admin listener is bound");
    let token_path = dir.join("admin.token");
    let token = std::fs::read_to_string(&token_path)
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(token.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    server.set_admin_backend(Arc::new(FakeBackend::sample()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(2),
    ));

    assert_eq!(http(addr, "GET", "/api/v1/health", None).await.0, 200);
    let (status, _) = http(addr, "GET", "/api/v1/clients", None).await;
    assert_eq!(status, 401);
    let (status, body) = http(addr, "GET", "/api/v1/clients", Some(&token)).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"alpha\""), "{body}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the admin listener closed"
    );

    // The next start reads the same token back.
    let config = self::config(&dir, "bind = \"127.0.0.1:0\"");
    let server = Server::bind(config).await.unwrap();
    assert!(server.admin_addr().is_some());
    assert_eq!(std::fs::read_to_string(&token_path).unwrap().trim(), token);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without a backend set from outside, the listener serves the server's own: stats with the
/// open connections, the connected client listed.
#[tokio::test]
async fn the_broker_backend_is_served() {
    let dir = temp_dir("pending");
    let server = Server::bind(config(&dir, "bind = \"127.0.0.1:0\"\nmetrics_auth = true"))
        .await
        .unwrap();
    let addr = server.admin_addr().unwrap();
    let mqtt = server.local_addrs()[0];
    let token = std::fs::read_to_string(dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(2),
    ));
    // An MQTT 3.1.1 CONNECT (client id "c"), answered by a CONNACK: the connection is open.
    let mut client = tokio::net::TcpStream::connect(mqtt).await.unwrap();
    client
        .write_all(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c")
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    client.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    let (status, body) = http(addr, "GET", "/api/v1/stats", Some(&token)).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"version\""), "{body}");
    assert!(body.contains("\"connections\":1,"), "{body}");
    let (status, body) = http(addr, "GET", "/api/v1/clients", Some(&token)).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"client_id\":\"c\""), "{body}");
    assert_eq!(http(addr, "GET", "/metrics", None).await.0, 401);
    assert_eq!(http(addr, "GET", "/metrics", Some(&token)).await.0, 200);
    drop(client);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A busy admin port fails the start with the listener named.
#[tokio::test]
async fn busy_admin_port_fails_the_start() {
    let dir = temp_dir("busy");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let result = Server::bind(config(&dir, &format!("bind = \"127.0.0.1:{port}\""))).await;
    let error = result.err().expect("the port is taken").to_string();
    assert!(error.contains("admin"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `check_config` refuses an `[admin] token_file` that holds no usable token (too short), and
/// accepts one that does not exist yet (generated at start).
#[test]
fn check_config_reads_the_token_file() {
    let dir = temp_dir("check");
    let config = config(&dir, "bind = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"");
    tern_server::check_config(&config).unwrap();
    std::fs::write(dir.join("admin.token"), "short\n").unwrap();
    let error = tern_server::check_config(&config).unwrap_err().to_string();
    assert!(error.contains("too short"), "{error}");
    std::fs::write(dir.join("admin.token"), "a-long-enough-token-of-mine\n").unwrap();
    tern_server::check_config(&config).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
