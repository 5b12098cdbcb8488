//! Issue 16, `tern ctl cluster status | join | leave` against real `tern serve` processes with
//! `[cluster]` in their configuration files: a node started without seeds is a cluster of
//! one; a second one, whose seed never answers, joins it through `tern ctl cluster join`;
//! both list each other; `tern ctl cluster leave 2` removes it.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

struct Node {
    child: Child,
    config: PathBuf,
    /// `ADDR:PORT` of the admin listener and of the cluster links, from the log.
    admin: String,
    cluster: String,
}

impl Node {
    /// `tern serve --config` with `[admin]` and `[cluster]` (ports 0), once both listen.
    fn start(dir: &Path, id: u64, seeds: &[String]) -> Node {
        let data = dir.join(format!("node{id}"));
        let config = dir.join(format!("node{id}.toml"));
        let seeds: Vec<String> = seeds.iter().map(|s| format!("{s:?}")).collect();
        std::fs::write(
            &config,
            format!(
                "listen = [\"127.0.0.1:0\"]\ndurability = \"process\"\ndata_dir = {:?}\n\
                 [admin]\nbind = \"127.0.0.1:0\"\n\
                 [cluster]\nnode_id = {id}\nbind = \"127.0.0.1:0\"\nseeds = [{}]\n\
                 heartbeat_ms = 50\nelection_timeout_ms = 300\n",
                data.display().to_string(),
                seeds.join(", ")
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["serve", "--log-level", "info", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tern serve");
        let stderr = child.stderr.take().expect("stderr");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut admin, mut cluster) = (None, None);
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while admin.is_none() || cluster.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines.recv_timeout(left) else {
                panic!("node {id} did not start:\n{}", seen.join("\n"));
            };
            if line.contains("admin API, /metrics") {
                admin = field(&line, "addr=");
            }
            if line.contains("cluster node started") {
                cluster = field(&line, "advertise=").map(|a| a.trim_matches('"').to_owned());
            }
            seen.push(line);
        }
        // The log is not read further: the pipe is drained by the thread until it ends.
        Node {
            child,
            config,
            admin: admin.unwrap(),
            cluster: cluster.unwrap(),
        }
    }

    /// Runs `tern ctl --config F --url U ARGS`; (success, stdout, stderr).
    fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_tern"))
            .arg("ctl")
            .arg("--config")
            .arg(&self.config)
            .arg("--url")
            .arg(format!("http://{}", self.admin))
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (success, stdout, stderr) = self.ctl(args);
        assert!(success, "tern ctl {args:?}: {stderr}");
        stdout
    }

    /// `cluster status --json` until `check` holds.
    fn until(&self, what: &str, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (success, stdout, _) = self.ctl(&["--json", "cluster", "status"]);
            if success {
                let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
                if check(&status) {
                    return status;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {stdout}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value after `key` in a log line, up to the next space.
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(key)? + key.len();
    Some(line[start..].split_whitespace().next()?.to_owned())
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Issue 16: "a new node must be able to join a running cluster without restarting the
/// others", and `tern ctl cluster status | join | leave` as an operator runs them.
#[test]
fn ctl_cluster_join_status_leave_on_real_nodes() {
    let dir = temp_dir("cluster-ctl");
    let first = Node::start(&dir, 1, &[]);
    first.until("a cluster of one", |s| s["leader"] == 1);
    // A seed that takes connections and never answers: node 2 waits outside.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let second = Node::start(&dir, 2, &[silent.local_addr().unwrap().to_string()]);
    let status = second.ok(&["cluster", "status"]);
    assert!(status.contains("leader -"), "not a member yet: {status}");

    let joined = second.ok(&["cluster", "join", &first.cluster]);
    assert_eq!(
        joined.trim(),
        format!("joined the cluster through {}", first.cluster)
    );
    // Two nodes keep one voter: node 2 is a learner on both.
    for node in [&first, &second] {
        node.until("node 2 a learner", |s| {
            s["leader"] == 1
                && s["voters"] == serde_json::json!([1])
                && s["learners"] == serde_json::json!([2])
                && s["nodes"].as_array().is_some_and(|nodes| {
                    nodes.len() == 2 && nodes.iter().all(|n| n["mqtt_addrs"][0].is_string())
                })
        });
    }
    let table = first.ok(&["cluster", "status"]);
    assert!(table.starts_with("node 1 (leader), leader 1"), "{table}");
    assert!(table.contains("voters: 1  learners: 2"), "{table}");
    let row = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row {id}: {table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(row("1")[1..3], ["leader", first.cluster.as_str()]);
    assert_eq!(row("1")[4], "self");
    assert_eq!(row("2")[1..3], ["learner", second.cluster.as_str()]);

    // Joining again: refused, with the API's reason.
    let (success, _, stderr) = second.ctl(&["cluster", "join", &first.cluster]);
    assert!(!success);
    assert!(stderr.contains("(409)"), "{stderr}");

    assert_eq!(
        first.ok(&["cluster", "leave", "2"]).trim(),
        "node 2 left the cluster"
    );
    first.until("node 2 gone", |s| {
        s["learners"] == serde_json::json!([])
            && s["nodes"].as_array().is_some_and(|n| n.len() == 1)
    });
    drop(second);
    drop(first);
    drop(silent);
    let _ = std::fs::remove_dir_all(&dir);
}
