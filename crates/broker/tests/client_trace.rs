//! Issue 13, per-client debug tracing: what a traced client's packets put in the log. A test
//! binary of its own: it installs a log subscriber for its thread, and the broker's trace call
//! sites met by other tests running beside it, with no subscriber, were seen to stay disabled
//! for it (tracing caches a call site's interest process-wide).

mod common;

use std::sync::Arc;

use common::{Net, V311};
use tern_codec::QoS;

/// A log sink for one test: what the subscriber writes, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Issue 13 "per-client debug tracing switched on at run time": the traced client's packets,
/// both ways, are logged at INFO under `tern::client_trace` (shown whatever the level); an
/// untraced client's are not; switched off, nothing more.
#[test]
fn traced_client_packets_are_logged() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let net = Net::new();
        let mut traced = net.connected(V311, "traced-one");
        let mut other = net.connected(V311, "untraced");
        assert!(net.broker.set_client_tracing("traced-one", true));
        traced.subscribe("t/#", QoS::AtMostOnce);
        other.publish("t/1", QoS::AtMostOnce, b"hello");
        traced.publish_received();
        // Review 13 NIT 25: a large payload is cut in the trace, its length given.
        let mut big = vec![b'a'; 300];
        big.extend_from_slice(b"TAIL");
        other.publish("t/2", QoS::AtMostOnce, &big);
        traced.publish_received();
        assert!(net.broker.set_client_tracing("traced-one", false));
        traced.subscribe("u/#", QoS::AtMostOnce);
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("client trace"))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l.contains("client_id=\"traced-one\"") || l.contains("client_id=traced-one")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("direction=\"in\"") || l.contains("direction=in")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("direction=\"out\"") || l.contains("direction=out")),
        "{text}"
    );
    assert!(lines.iter().any(|l| l.contains("Subscribe")), "{text}");
    assert!(!text.contains("TAIL"), "the payload is cut: {text}");
    assert!(text.contains("payload_bytes=304"), "{text}");
    assert!(
        !text.contains("u/#"),
        "nothing after tracing went off: {text}"
    );
}
