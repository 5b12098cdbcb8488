//! `tern serve`'s reload on SIGHUP, as an operator starts it (issue 13: "what is applied vs
//! what is reported"): the command line's overrides are kept by a reload, and a log level
//! that `RUST_LOG` overrides is reported as such. The real binary, its stderr read.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

struct Broker {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Broker {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Broker {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tern"));
        command
            .arg("serve")
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("tern serve");
        let stderr = child.stderr.take().expect("stderr");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Broker {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line (from now on) that contains `text`.
    fn wait_for(&mut self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with {text:?} in:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Review 13 #3: `tern serve --config F --listen ... --in-memory --log-level ...` over a file
/// that says otherwise; a SIGHUP with the file unchanged applies nothing and reports nothing
/// needing a restart (the overrides are applied to the reloaded file as at start).
#[test]
fn sighup_keeps_the_command_line_overrides() {
    let dir = temp_dir("reload-overrides");
    let file = dir.join("tern.toml");
    std::fs::write(
        &file,
        format!(
            "listen = [\"127.0.0.1:1\"]\nlog_level = \"warn\"\ndurability = \"fsync\"\n\
             data_dir = {:?}\n",
            path(&dir.join("never"))
        ),
    )
    .expect("config");
    let mut broker = Broker::start(
        &[
            "--config",
            path(&file),
            "--listen",
            "127.0.0.1:0",
            "--in-memory",
            "--log-level",
            "info",
        ],
        &[],
    );
    let overridden = broker.wait_for("the command line overrides");
    assert!(overridden.contains("listen") && overridden.contains("durability"));
    broker.wait_for("listening for MQTT");
    broker.hangup();
    let report = broker.wait_for("configuration reloaded");
    assert!(report.contains("applied=[]"), "{report}");
    assert!(report.contains("needs_restart=[]"), "{report}");
    assert!(report.contains("errors=[]"), "{report}");
    assert!(!dir.join("never").exists(), "still in memory");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Review 13 NIT 19: with `RUST_LOG` set, a changed `log_level` is reported as overridden
/// by it (a restart would not apply it either), not as needing a restart.
#[test]
fn sighup_reports_a_log_level_that_rust_log_overrides() {
    let dir = temp_dir("reload-rust-log");
    let file = dir.join("tern.toml");
    let config = |level: &str| {
        format!("listen = [\"127.0.0.1:0\"]\ndurability = \"memory\"\nlog_level = \"{level}\"\n")
    };
    std::fs::write(&file, config("info")).expect("config");
    let mut broker = Broker::start(&["--config", path(&file)], &[("RUST_LOG", "info")]);
    broker.wait_for("listening for MQTT");
    std::fs::write(&file, config("debug")).expect("config");
    broker.hangup();
    let report = broker.wait_for("configuration reloaded");
    assert!(report.contains("needs_restart=[]"), "{report}");
    assert!(report.contains("RUST_LOG"), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}
