//! Issue 13, `tern ctl`: the admin API from the shell, against a running API (tern-admin's
//! router over a fake backend, 127.0.0.1 port 0): every command, table and `--json` output,
//! the token from a file, errors on stderr with exit 1.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use serde_json::Value;
use tern_admin::testing::FakeBackend;
use tern_admin::{AdminOptions, Token};

const TOKEN: &str = "ctl-test-token-0123456789abcdef";

/// Serves the API over `fake` on its own runtime thread; the address.
fn serve(fake: &FakeBackend) -> SocketAddr {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let backend = Arc::new(fake.clone());
    std::thread::spawn(move || {
        let options = AdminOptions::new(Token::new(TOKEN).unwrap());
        // Ends with the test process.
        let _ = runtime.block_on(tern_admin::serve(
            listener,
            backend,
            options,
            std::future::pending(),
        ));
    });
    addr
}

/// Runs `tern ctl --url ... ARGS`; (exit success, stdout, stderr).
fn ctl(addr: SocketAddr, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("ctl")
        .arg("--url")
        .arg(format!("http://{addr}"))
        .arg("--token")
        .arg(TOKEN)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn ok(addr: SocketAddr, args: &[&str]) -> String {
    let (success, stdout, stderr) = ctl(addr, args);
    assert!(success, "tern ctl {args:?}: {stderr}");
    stdout
}

fn json(addr: SocketAddr, args: &[&str]) -> Value {
    let mut with = vec!["--json"];
    with.extend_from_slice(args);
    serde_json::from_str(&ok(addr, &with)).unwrap()
}

/// Issue 13: `tern ctl clients`, `client ID`, `kick ID` as a table and as JSON.
#[test]
fn clients_client_kick() {
    let fake = FakeBackend::sample();
    let addr = serve(&fake);
    let table = ok(addr, &["clients"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("CLIENT_ID  USERNAME"), "{table}");
    assert!(lines[1].starts_with("alpha      user-alpha"), "{table}");
    assert_eq!(lines.len(), 3, "{table}");
    let list = json(addr, &["clients"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let detail = ok(addr, &["client", "beta"]);
    assert!(detail.contains("client_id: beta"), "{detail}");
    assert!(detail.contains("username: user-beta"), "{detail}");
    assert_eq!(ok(addr, &["kick", "alpha"]).trim(), "kicked alpha");
    assert_eq!(fake.lock().kicked, ["alpha"]);
    let (success, _, stderr) = ctl(addr, &["kick", "alpha"]);
    assert!(!success);
    assert!(
        stderr.contains("no client connected as \"alpha\" (404)"),
        "{stderr}"
    );
}

/// Listings are walked to the end, page after page (1000 a page).
#[test]
fn clients_listing_walks_every_page() {
    let fake = FakeBackend::new();
    for i in 0..1203 {
        fake.lock().add_client(&format!("c{i:04}"), &[]);
    }
    let addr = serve(&fake);
    let list = json(addr, &["clients"]);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1203);
    assert_eq!(ids[1202], "c1202");
}

#[test]
fn sessions_and_delete_session() {
    let fake = FakeBackend::sample();
    let addr = serve(&fake);
    let table = ok(addr, &["sessions"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("gamma") && l.contains("false") && l.contains("3600")),
        "{table}"
    );
    assert_eq!(
        ok(addr, &["delete-session", "gamma"]).trim(),
        "deleted the session of gamma"
    );
    assert!(!fake.lock().offline_sessions.contains_key("gamma"));
}

/// Issue 15: `tern ctl bridges` lists the bridges and their state.
#[test]
fn bridges_are_listed() {
    let fake = FakeBackend::sample();
    let addr = serve(&fake);
    let table = ok(addr, &["bridges"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("cloud") && l.contains("true") && l.contains("12")),
        "{table}"
    );
    let listed = json(addr, &["bridges"]);
    assert_eq!(listed[0]["addresses"][0], "broker.example.net:8883");
}

/// Issue 16: `tern ctl cluster status` shows the node's role, the leader, the voters and a
/// row per node with its addresses and link; `cluster join ADDR` and `cluster leave [NODE]`
/// call the API; a node without `[cluster]` says so.
#[test]
fn cluster_status_join_leave() {
    let fake = FakeBackend::sample();
    let addr = serve(&fake);
    let status = ok(addr, &["cluster", "status"]);
    assert!(
        status.starts_with("node 1 (leader), leader 1, term 3"),
        "{status}"
    );
    assert!(status.contains("voters: 1,2,3  learners: 4"), "{status}");
    assert!(status.contains("NODE  ROLE     CLUSTER_ADDR"), "{status}");
    let row = |id: &str| {
        status
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row for node {id}: {status}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("1"),
        ["1", "leader", "10.0.0.1:7883", "10.0.0.1:1883", "self", "0"]
    );
    assert_eq!(
        row("3")[1..],
        ["voter", "10.0.0.3:7883", "10.0.0.3:1883", "down", "5"]
    );
    assert_eq!(row("4")[1], "learner");
    let json_status = json(addr, &["cluster", "status"]);
    assert_eq!(json_status["leader"], 1);
    assert_eq!(json_status["nodes"][2]["linked"], false);

    assert_eq!(
        ok(addr, &["cluster", "join", "10.0.0.9:7883"]).trim(),
        "joined the cluster through 10.0.0.9:7883"
    );
    assert_eq!(fake.lock().cluster_joins, ["10.0.0.9:7883"]);
    fake.lock().cluster_join_refusal = Some(tern_admin::AdminError::Conflict(
        "already a member of a cluster".into(),
    ));
    let (success, _, stderr) = ctl(addr, &["cluster", "join", "10.0.0.9:7883"]);
    assert!(!success);
    assert!(
        stderr.contains("already a member of a cluster (409)"),
        "{stderr}"
    );
    let (success, _, stderr) = ctl(addr, &["cluster", "join", "nowhere"]);
    assert!(!success && stderr.contains("(400)"), "{stderr}");

    assert_eq!(
        ok(addr, &["cluster", "leave", "4"]).trim(),
        "node 4 left the cluster"
    );
    assert_eq!(json(addr, &["cluster", "leave"])["node"], 1);
    let left = fake.lock().cluster.clone().unwrap();
    assert_eq!(left.voters, [2, 3]);
    assert!(left.learners.is_empty());
    let (success, _, stderr) = ctl(addr, &["cluster", "leave", "9"]);
    assert!(!success && stderr.contains("(404)"), "{stderr}");

    fake.lock().cluster = None;
    let (success, _, stderr) = ctl(addr, &["cluster", "status"]);
    assert!(!success);
    assert!(stderr.contains("not part of a cluster"), "{stderr}");
}

#[test]
fn subscriptions_all_and_by_client() {
    let fake = FakeBackend::sample();
    let addr = serve(&fake);
    let all = json(addr, &["subscriptions"]);
    assert_eq!(all.as_array().unwrap().len(), 2);
    let beta = json(addr, &["subscriptions", "--client", "beta"]);
    assert_eq!(beta[0]["filter"], "alerts/+");
    let table = ok(addr, &["subscriptions", "--client", "alpha"]);
    assert!(table.contains("sensors/#"), "{table}");
}

/// `retained [FILTER]`, `retained-get TOPIC`, `retained-delete TOPIC`.
#[test]
fn retained_list_get_delete() {
    let fake = FakeBackend::sample();
    let addr = serve(&fake);
    let table = ok(addr, &["retained"]);
    assert!(
        table.contains("sensors/temp") && table.contains("sensors/bin"),
        "{table}"
    );
    let only = json(addr, &["retained", "sensors/temp"]);
    assert_eq!(only.as_array().unwrap().len(), 1);
    let message = ok(addr, &["retained-get", "sensors/temp"]);
    assert!(message.contains("payload: 21.5"), "{message}");
    assert!(ok(addr, &["retained-delete", "sensors/temp"]).contains("cleared"));
    let (success, _, stderr) = ctl(addr, &["retained-get", "sensors/temp"]);
    assert!(!success && stderr.contains("404"), "{stderr}");
}

/// `publish TOPIC MESSAGE -q 1 -r` reaches the backend as a publish request.
#[test]
fn publish_with_qos_and_retain() {
    let fake = FakeBackend::sample();
    let addr = serve(&fake);
    assert_eq!(
        ok(addr, &["publish", "cmd/lamp", "on", "-q", "1", "-r"]).trim(),
        "published to cmd/lamp"
    );
    let state = fake.lock();
    let published = &state.published[0];
    assert_eq!(
        (
            published.topic.as_str(),
            published.payload.as_deref(),
            published.qos,
            published.retain
        ),
        ("cmd/lamp", Some("on"), 1, true)
    );
}

#[test]
fn stats_config_reload_trace() {
    let fake = FakeBackend::sample();
    let addr = serve(&fake);
    assert!(ok(addr, &["stats"]).contains("connections: 2"));
    assert_eq!(json(addr, &["stats"])["retained_messages"], 2);
    assert!(ok(addr, &["config"]).contains("<redacted>"));
    assert!(ok(addr, &["reload"]).contains("needs_restart: [\"listen\"]"));
    assert_eq!(fake.lock().reloads, 1);
    assert!(ok(addr, &["trace", "beta", "on"]).contains("tracing: true"));
    assert!(fake.lock().clients["beta"].tracing);
    ok(addr, &["trace", "beta", "off"]);
    assert!(!fake.lock().clients["beta"].tracing);
}

/// The token from the data directory's admin.token (`--data-dir`); a wrong token refused
/// (401) with exit 1 and a message that says the token was refused, and where it came from.
#[test]
fn data_dir_token_and_wrong_token() {
    let fake = FakeBackend::sample();
    let addr = serve(&fake);
    let dir = std::env::temp_dir().join(format!("tern-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("admin.token"), format!("{TOKEN}\n")).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["ctl", "--url", &format!("http://{addr}"), "--data-dir"])
        .arg(&dir)
        .arg("stats")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "ctl",
            "--url",
            &format!("http://{addr}"),
            "--token",
            "not-the-token-at-all",
            "clients",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the admin API refused the token (from --token) (401)"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `tern ctl --url http://ADDR ARGS` with `env` set and TERN_ADMIN_TOKEN otherwise unset.
fn ctl_with(addr: SocketAddr, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tern"));
    command
        .env_remove("TERN_ADMIN_TOKEN")
        .args(["ctl", "--url", &format!("http://{addr}")])
        .args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

/// Review 13 #9: the token from `--token-file` (read and checked as the broker does: an empty
/// file is an error that says so, not a 401), and from TERN_ADMIN_TOKEN.
#[test]
fn token_file_and_environment() {
    let fake = FakeBackend::sample();
    let addr = serve(&fake);
    let dir = std::env::temp_dir().join(format!("tern-ctl-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("my.token");
    std::fs::write(&file, format!("  {TOKEN}\n")).unwrap();
    let file_arg = file.to_str().unwrap();
    let output = ctl_with(addr, &[], &["--token-file", file_arg, "stats"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("connections: 2"));
    // A wrong token in the file: the message names the file.
    std::fs::write(&file, "wrong-token-wrong-token-wrong\n").unwrap();
    let output = ctl_with(addr, &[], &["--token-file", file_arg, "stats"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refused the token (from ") && stderr.contains("my.token"),
        "{stderr}"
    );
    // An empty file: said so, no request sent.
    std::fs::write(&file, "").unwrap();
    let output = ctl_with(addr, &[], &["--token-file", file_arg, "stats"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("too short (0 characters"), "{stderr}");
    // The environment variable.
    let output = ctl_with(addr, &[("TERN_ADMIN_TOKEN", TOKEN)], &["--json", "stats"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stats: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stats["connections"], 2);
    let output = ctl_with(
        addr,
        &[("TERN_ADMIN_TOKEN", "wrong-token-wrong-token-wrong")],
        &["stats"],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("(from TERN_ADMIN_TOKEN) (401)"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Review 13 #7: a client id with an escape sequence and a newline reaches the table escaped:
/// no ESC byte on the terminal, and one data row for it.
#[test]
fn control_characters_escaped_in_tables() {
    let fake = FakeBackend::sample();
    let evil = "evil\u{1b}[2J\nrow";
    fake.lock().add_client(evil, &["a/b"]);
    fake.lock()
        .set_retained("t/evil", "x\u{1b}]0;owned\u{7}".as_bytes());
    let addr = serve(&fake);
    let table = ok(addr, &["clients"]);
    assert!(!table.contains('\u{1b}'), "{table:?}");
    assert_eq!(table.lines().count(), 4, "{table}");
    assert_eq!(
        table.lines().filter(|l| l.starts_with("evil")).count(),
        1,
        "{table}"
    );
    assert!(table.contains("evil\\e[2J\\nrow"), "{table}");
    let detail = ok(addr, &["client", evil]);
    assert!(!detail.contains('\u{1b}'), "{detail:?}");
    let message = ok(addr, &["retained-get", "t/evil"]);
    assert!(
        !message.contains('\u{1b}') && !message.contains('\u{7}'),
        "{message:?}"
    );
    assert!(message.contains("x\\e]0;owned\\x07"), "{message}");
    // JSON stays exact.
    let list = json(addr, &["clients"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|c| c["client_id"] == evil)
    );
}

/// Review 13 #8: an API that accepts the connection but never answers (a full backlog, a
/// stopped broker) makes `tern ctl` give up at --timeout with exit 1, not hang.
#[test]
fn gives_up_at_the_timeout() {
    // Bound but never accepted: the kernel completes the handshake, nobody answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let started = std::time::Instant::now();
    let output = ctl_with(addr, &[], &["--token", TOKEN, "--timeout", "1", "stats"]);
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "the admin API at {addr} did not answer within 1 s"
        )),
        "{stderr}"
    );
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    drop(silent);
}

/// Review 13 #23: `publish --file` (text as it is, binary in base64), `--expiry`,
/// `--content-type`.
#[test]
fn publish_from_a_file_with_properties() {
    let fake = FakeBackend::sample();
    let addr = serve(&fake);
    let dir = std::env::temp_dir().join(format!("tern-ctl-pub-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("text");
    std::fs::write(&text, "line one\nline two\n").unwrap();
    let binary = dir.join("binary");
    std::fs::write(&binary, [0xffu8, 0x00, 0x01]).unwrap();
    ok(
        addr,
        &[
            "publish",
            "a/text",
            "-f",
            text.to_str().unwrap(),
            "--expiry",
            "60",
            "--content-type",
            "text/plain",
        ],
    );
    ok(
        addr,
        &["publish", "a/bin", "--file", binary.to_str().unwrap()],
    );
    let (success, _, stderr) = ctl(addr, &["publish", "a/none"]);
    assert!(!success, "a publish without a message or a file is refused");
    assert!(stderr.contains("<MESSAGE>"), "{stderr}");
    let state = fake.lock();
    let first = &state.published[0];
    assert_eq!(first.payload.as_deref(), Some("line one\nline two\n"));
    assert_eq!(first.message_expiry_s, Some(60));
    assert_eq!(first.content_type.as_deref(), Some("text/plain"));
    let second = &state.published[1];
    assert_eq!(second.payload, None);
    assert_eq!(second.payload_base64.as_deref(), Some("/wAB"));
    drop(state);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Review 13 #23: `--config FILE` takes the URL from `[admin] bind` and the token from the
/// configuration's token file (relative to the file).
#[test]
fn url_and_token_from_the_broker_configuration() {
    let fake = FakeBackend::sample();
    let addr = serve(&fake);
    let dir = std::env::temp_dir().join(format!("tern-ctl-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("secret.token"), format!("{TOKEN}\n")).unwrap();
    let config = dir.join("tern.toml");
    std::fs::write(
        &config,
        format!(
            "listen = [\"127.0.0.1:1883\"]\n[admin]\nbind = \"{addr}\"\ntoken_file = \"secret.token\"\n"
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tern"))
        .env_remove("TERN_ADMIN_TOKEN")
        .args(["ctl", "--config"])
        .arg(&config)
        .args(["--json", "stats"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stats: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stats["connections"], 2);
    let _ = std::fs::remove_dir_all(&dir);
}
