//! The shape of the log lines operators parse (issue 13 "one line per connect, disconnect,
//! auth failure and kick with a stable shape"), in `log_format = "text"`: what a client
//! sends cannot forge a line. A test binary of its own: the subscriber is the process's.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Client, wait_until};
use tern_server::Server;
use tokio::sync::oneshot;

/// A log sink: what the subscriber writes, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Review 13 #8: a client id with a line break (the codec accepts U+0001..U+001F: MQTT only
/// says SHOULD NOT) is quoted and escaped in the connect and disconnect lines, as in the
/// auth failure and kick lines: one line per event, none forged.
#[tokio::test]
async fn a_client_id_with_a_line_break_writes_one_line() {
    let captured = Captured::default();
    let sink = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .init();
    let server = Server::bind(common::config()).await.expect("bind");
    let addr = server.local_addrs()[0];
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        let _ = server.run(stopped, Duration::from_secs(2)).await;
    });
    let forged =
        "a\n1999-01-01T00:00:00Z  INFO tern_server::connection: client connected client_id=admin";
    let client = Client::simple(addr, forged).await;
    wait_until("the connect logged", || {
        captured.text().contains("client connected")
    })
    .await;
    // The server's shutdown closes the connection: the disconnect line is written.
    let _ = stop.send(());
    let _ = running.await;
    drop(client);
    let text = captured.text();
    let escaped = r#"client_id="a\n1999-01-01T00:00:00Z  INFO tern_server::connection: client connected client_id=admin""#;
    let connects: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("event=\"connect\""))
        .collect();
    assert_eq!(connects.len(), 1, "{text}");
    assert!(connects[0].contains(escaped), "{text}");
    let disconnects: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("event=\"disconnect\""))
        .collect();
    assert_eq!(disconnects.len(), 1, "{text}");
    assert!(disconnects[0].contains(escaped), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("1999-01-01")), "{text}");
}
