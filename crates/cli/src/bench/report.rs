//! The result of a bench run: every figure in one `Report`, printed as a human summary or as
//! one JSON object (written by hand: a flat writer is all it needs) for scripts.

use std::fmt::Write;

use tern_codec::{ProtocolVersion, QoS};

use super::args::Scenario;
use super::check::{DeliveryCounts, Verdict};
use super::stats::Percentiles;
use super::transport::Transport;

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: Scenario,
    pub target: String,
    pub transport: Transport,
    pub version: ProtocolVersion,
    pub qos: QoS,
    pub clients: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub size: usize,
    /// Messages/s per publisher, or connections/s for conn; 0 is unlimited.
    pub rate: u64,
    pub window: u64,
    pub inflight: u16,
    /// Seconds measured (messages) or held (conn).
    pub duration_s: f64,
    pub warmup_s: f64,
    pub messages: Option<MessageFigures>,
    pub connections: Option<ConnFigures>,
    /// The bench's own CPU over the measured time: 1.0 is one core busy.
    pub bench_cpu: Option<f64>,
    pub bench_threads: usize,
    pub cores: usize,
    /// CPU of the whole machine over the measured time: `cores` when every core was busy.
    pub machine_cpu: Option<f64>,
    pub broker: Option<BrokerFigures>,
    /// Connection errors (the first few, in words) and how many there were.
    pub errors: Vec<String>,
    pub error_count: usize,
    pub verdict: Verdict,
}

/// Figures of the message scenarios.
#[derive(Debug, Clone, Default)]
pub struct MessageFigures {
    pub delivery: DeliveryCounts,
    /// Over the measured time.
    pub sent_per_s: f64,
    /// Deliveries over the measured time (a message to ten subscribers is ten).
    pub received_per_s: f64,
    /// End to end, from the send time in the payload to the read that brought it, in ns.
    pub latency: Percentiles,
    /// Times a publisher waited a whole stall period for its subscribers to make progress.
    pub stalls: u64,
}

/// Figures of the conn scenario.
#[derive(Debug, Clone, Default)]
pub struct ConnFigures {
    pub target: usize,
    pub established: usize,
    pub failed: usize,
    /// Closed by the broker while held.
    pub dropped: usize,
    /// Seconds from the first attempt to the last CONNACK.
    pub ramp_s: f64,
    /// CONNACKs per second over the ramp.
    pub connect_rate: f64,
    /// Time from starting the TCP connect to CONNACK, in ns.
    pub connack: Percentiles,
    /// Broker memory growth per established connection (needs --pid).
    pub bytes_per_connection: Option<f64>,
}

/// What /proc says about the broker (needs --pid).
#[derive(Debug, Clone, Default)]
pub struct BrokerFigures {
    pub pid: u32,
    /// CPU over the measured time: 1.0 is one core busy.
    pub cpu: Option<f64>,
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
}

fn fmt_ns(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.2} s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} µs", ns as f64 / 1e3)
    }
}

fn fmt_bytes(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// Thousands separated by spaces, for counts read by people.
pub(crate) fn fmt_count(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

impl Report {
    /// CPU of processes other than the bench and the broker (needs the broker's --pid).
    pub fn other_cpu(&self) -> Option<f64> {
        let broker = self.broker.as_ref()?.cpu?;
        Some((self.machine_cpu? - self.bench_cpu? - broker).max(0.0))
    }

    /// The summary people read.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "tern bench {} against {} over {} (MQTT {}, QoS {}, {} clients, {} B payload)",
            self.scenario.name(),
            self.target,
            self.transport.name(),
            self.version,
            self.qos.as_u8(),
            self.clients,
            self.size
        );
        if let Some(m) = &self.messages {
            let d = &m.delivery;
            let rate = if self.rate == 0 {
                "closed loop, unlimited".to_owned()
            } else {
                format!("{} msg/s per publisher", self.rate)
            };
            let window = if self.window == 0 {
                "open loop".to_owned()
            } else {
                format!("window {}", self.window)
            };
            let _ = writeln!(
                s,
                "  {} publishers, {} subscribers; {rate}; {window}; {:.1} s measured after {:.1} s warm-up",
                self.publishers, self.subscribers, self.duration_s, self.warmup_s
            );
            let _ = writeln!(
                s,
                "  throughput   sent {} msg/s, received {} msg/s",
                fmt_count(m.sent_per_s.round() as u64),
                fmt_count(m.received_per_s.round() as u64)
            );
            let l = &m.latency;
            if l.count > 0 {
                let _ = writeln!(
                    s,
                    "  latency      p50 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
                    fmt_ns(l.p50),
                    fmt_ns(l.p99),
                    fmt_ns(l.p999),
                    fmt_ns(l.max),
                    fmt_count(l.count)
                );
            }
            let _ = writeln!(
                s,
                "  delivery     sent {}  expected {}  received {}  lost {}  duplicates {}  out of order {}",
                fmt_count(d.sent),
                fmt_count(d.expected),
                fmt_count(d.received),
                fmt_count(d.lost),
                fmt_count(d.duplicates),
                fmt_count(d.out_of_order)
            );
            if d.malformed + d.unexpected + d.unacked + d.rejected + m.stalls > 0 {
                let _ = writeln!(
                    s,
                    "               malformed {}  unexpected {}  unacked {}  rejected {}  stalls {}",
                    d.malformed, d.unexpected, d.unacked, d.rejected, m.stalls
                );
            }
            if d.qos2_resent + d.qos2_id_reused + d.qos2_unreleased > 0 {
                let _ = writeln!(
                    s,
                    "               QoS 2 PUBLISH before PUBREL: resent (DUP) {}  packet id reused {}; \
                     PUBREL never came {}",
                    d.qos2_resent, d.qos2_id_reused, d.qos2_unreleased
                );
            }
        }
        if let Some(c) = &self.connections {
            let _ = writeln!(
                s,
                "  connections  {} of {} established, {} failed, {} dropped while held",
                fmt_count(c.established as u64),
                fmt_count(c.target as u64),
                c.failed,
                c.dropped
            );
            let _ = writeln!(
                s,
                "  connect rate {} conn/s over {:.2} s; time to CONNACK p50 {}  p99 {}  max {}",
                fmt_count(c.connect_rate.round() as u64),
                c.ramp_s,
                fmt_ns(c.connack.p50),
                fmt_ns(c.connack.p99),
                fmt_ns(c.connack.max)
            );
            if let Some(per) = c.bytes_per_connection {
                let _ = writeln!(s, "  broker memory {:.0} bytes per connection", per);
            }
        }
        if let Some(b) = &self.broker {
            let mut line = format!("  broker       pid {}", b.pid);
            if let Some(cpu) = b.cpu {
                let _ = write!(line, ", CPU {:.0}% of one core", cpu * 100.0);
            }
            if let (Some(before), Some(after)) = (b.rss_before, b.rss_after) {
                let _ = write!(line, ", RSS {} -> {}", fmt_bytes(before), fmt_bytes(after));
            }
            let _ = writeln!(s, "{line}");
        }
        if let Some(cpu) = self.bench_cpu {
            let _ = writeln!(
                s,
                "  bench CPU    {:.0}% of one core ({:.0}% of {} cores; {} runtime thread{})",
                cpu * 100.0,
                cpu * 100.0 / self.cores.max(1) as f64,
                self.cores,
                self.bench_threads,
                if self.bench_threads == 1 { "" } else { "s" }
            );
            if cpu >= 0.9 * self.bench_threads as f64 {
                let _ = writeln!(
                    s,
                    "  warning: the bench used nearly all of its {} thread(s); figures may be the \
                     bench's limit, not the broker's (try --threads)",
                    self.bench_threads
                );
            }
        }
        if let Some(machine) = self.machine_cpu {
            let others = self.other_cpu();
            let mut line = format!(
                "  machine CPU  {:.0}% of {}00%",
                machine * 100.0,
                self.cores
            );
            if let Some(others) = others {
                let _ = write!(line, " (other processes {:.0}%)", others * 100.0);
            }
            let _ = writeln!(s, "{line}");
            if others.is_some_and(|o| o > 0.15) {
                let _ = writeln!(
                    s,
                    "  warning: other processes used {:.0}% of a core during the run: the figures \
                     are disturbed",
                    others.unwrap_or(0.0) * 100.0
                );
            }
        }
        if self.error_count > 0 {
            let _ = writeln!(s, "  errors       {}", self.error_count);
            for error in &self.errors {
                let _ = writeln!(s, "    {error}");
            }
        }
        for note in &self.verdict.notes {
            let _ = writeln!(s, "  note: {note}");
        }
        for failure in &self.verdict.failures {
            let _ = writeln!(s, "  FAIL: {failure}");
        }
        let _ = writeln!(
            s,
            "{} check: {}",
            if self.connections.is_some() {
                "connection"
            } else {
                "delivery"
            },
            if self.verdict.pass { "PASS" } else { "FAIL" }
        );
        s
    }

    /// One JSON object with every figure; times in microseconds, rates per second, CPU in
    /// percent of one core.
    pub fn to_json(&self) -> String {
        let mut j = Json::default();
        j.open(None);
        j.str("scenario", self.scenario.name());
        j.str("target", &self.target);
        j.str("transport", self.transport.name());
        j.str(
            "mqtt",
            match self.version {
                ProtocolVersion::V5 => "5",
                _ => "3.1.1",
            },
        );
        j.num("qos", self.qos.as_u8());
        j.num("clients", self.clients);
        j.num("publishers", self.publishers);
        j.num("subscribers", self.subscribers);
        j.num("size", self.size);
        j.num("rate", self.rate);
        j.num("window", self.window);
        j.num("inflight", self.inflight);
        j.float("duration_s", self.duration_s);
        j.float("warmup_s", self.warmup_s);
        if let Some(m) = &self.messages {
            j.float("sent_per_s", m.sent_per_s);
            j.float("received_per_s", m.received_per_s);
            let d = &m.delivery;
            j.open(Some("delivery"));
            j.num("sent", d.sent);
            j.num("expected", d.expected);
            j.num("received", d.received);
            j.num("lost", d.lost);
            j.num("duplicates", d.duplicates);
            j.num("duplicates_without_dup", d.duplicates_without_dup);
            j.num("out_of_order", d.out_of_order);
            j.num("unclassified", d.unclassified);
            j.num("malformed", d.malformed);
            j.num("unexpected", d.unexpected);
            j.num("unacked", d.unacked);
            j.num("rejected", d.rejected);
            j.num("qos2_resent", d.qos2_resent);
            j.num("qos2_id_reused", d.qos2_id_reused);
            j.num("qos2_unreleased", d.qos2_unreleased);
            j.num("stalls", m.stalls);
            j.close();
            j.percentiles("latency_us", &m.latency);
        }
        if let Some(c) = &self.connections {
            j.open(Some("connections"));
            j.num("target", c.target);
            j.num("established", c.established);
            j.num("failed", c.failed);
            j.num("dropped", c.dropped);
            j.float("ramp_s", c.ramp_s);
            j.float("connect_rate", c.connect_rate);
            j.opt_float("bytes_per_connection", c.bytes_per_connection);
            j.close();
            j.percentiles("connack_us", &c.connack);
        }
        j.opt_float("bench_cpu_pct", self.bench_cpu.map(|c| c * 100.0));
        j.num("bench_threads", self.bench_threads);
        j.num("cores", self.cores);
        j.opt_float("machine_cpu_pct", self.machine_cpu.map(|c| c * 100.0));
        j.opt_float("other_cpu_pct", self.other_cpu().map(|c| c * 100.0));
        if let Some(b) = &self.broker {
            j.open(Some("broker"));
            j.num("pid", b.pid);
            j.opt_float("cpu_pct", b.cpu.map(|c| c * 100.0));
            j.opt_num("rss_before", b.rss_before);
            j.opt_num("rss_after", b.rss_after);
            j.close();
        }
        j.num("error_count", self.error_count);
        j.strs("errors", &self.errors);
        j.str("check", if self.verdict.pass { "PASS" } else { "FAIL" });
        j.bool("pass", self.verdict.pass);
        j.strs("failures", &self.verdict.failures);
        j.strs("notes", &self.verdict.notes);
        j.close();
        j.out
    }
}

/// A minimal writer of one JSON object, nested objects and string arrays.
#[derive(Default)]
struct Json {
    out: String,
    /// Whether the current object needs a comma before its next member.
    comma: Vec<bool>,
}

impl Json {
    fn key(&mut self, key: Option<&str>) {
        if let Some(first) = self.comma.last_mut() {
            if *first {
                self.out.push(',');
            }
            *first = true;
        }
        if let Some(key) = key {
            self.string(key);
            self.out.push(':');
        }
    }

    fn string(&mut self, text: &str) {
        self.out.push('"');
        for c in text.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.out, "\\u{:04x}", c as u32);
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    fn open(&mut self, key: Option<&str>) {
        self.key(key);
        self.out.push('{');
        self.comma.push(false);
    }

    fn close(&mut self) {
        self.comma.pop();
        self.out.push('}');
    }

    fn str(&mut self, key: &str, value: &str) {
        self.key(Some(key));
        self.string(value);
    }

    fn strs(&mut self, key: &str, values: &[String]) {
        self.key(Some(key));
        self.out.push('[');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.string(value);
        }
        self.out.push(']');
    }

    fn num(&mut self, key: &str, value: impl std::fmt::Display) {
        self.key(Some(key));
        let _ = write!(self.out, "{value}");
    }

    fn opt_num(&mut self, key: &str, value: Option<u64>) {
        match value {
            Some(value) => self.num(key, value),
            None => self.null(key),
        }
    }

    fn float(&mut self, key: &str, value: f64) {
        if value.is_finite() {
            self.key(Some(key));
            let _ = write!(self.out, "{:.3}", value);
        } else {
            self.null(key);
        }
    }

    fn opt_float(&mut self, key: &str, value: Option<f64>) {
        match value {
            Some(value) => self.float(key, value),
            None => self.null(key),
        }
    }

    fn bool(&mut self, key: &str, value: bool) {
        self.key(Some(key));
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn null(&mut self, key: &str) {
        self.key(Some(key));
        self.out.push_str("null");
    }

    fn percentiles(&mut self, key: &str, p: &Percentiles) {
        let us = |ns: u64| ns as f64 / 1000.0;
        self.open(Some(key));
        self.num("count", p.count);
        self.float("min", us(p.min));
        self.float("mean", us(p.mean));
        self.float("p50", us(p.p50));
        self.float("p90", us(p.p90));
        self.float("p99", us(p.p99));
        self.float("p999", us(p.p999));
        self.float("max", us(p.max));
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            scenario: Scenario::Fanin,
            target: "127.0.0.1:1883".to_owned(),
            transport: Transport::Tcp,
            version: ProtocolVersion::V311,
            qos: QoS::AtLeastOnce,
            clients: 8,
            publishers: 8,
            subscribers: 1,
            size: 64,
            rate: 0,
            window: 1000,
            inflight: 100,
            duration_s: 10.0,
            warmup_s: 1.0,
            messages: Some(MessageFigures {
                sent_per_s: 12345.5,
                received_per_s: 12345.0,
                ..MessageFigures::default()
            }),
            connections: None,
            bench_cpu: Some(0.35),
            bench_threads: 1,
            cores: 2,
            machine_cpu: None,
            broker: None,
            errors: vec!["subscriber 0: \"quoted\"\nline".to_owned()],
            error_count: 1,
            verdict: Verdict::new(),
        }
    }

    #[test]
    fn json_is_well_formed() {
        let json = report().to_json();
        assert!(json.starts_with("{\"scenario\":\"fanin\","), "{json}");
        assert!(json.contains("\"sent_per_s\":12345.500"), "{json}");
        assert!(json.contains("\"delivery\":{\"sent\":0,"), "{json}");
        assert!(json.contains("\"bench_cpu_pct\":35.000"), "{json}");
        assert!(
            json.contains(r#""errors":["subscriber 0: \"quoted\"\nline"]"#),
            "{json}"
        );
        assert!(json.ends_with("\"notes\":[]}"), "{json}");
        // Braces balance outside strings.
        let mut depth = 0i32;
        let mut in_string = false;
        let mut escaped = false;
        for c in json.chars() {
            match (in_string, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (true, false, '"') => in_string = false,
                (false, _, '"') => in_string = true,
                (false, _, '{') => depth += 1,
                (false, _, '}') => depth -= 1,
                _ => {}
            }
        }
        assert_eq!(depth, 0);
    }

    #[test]
    fn summary_says_pass_or_fail() {
        let mut report = report();
        assert!(report.summary().contains("delivery check: PASS"));
        assert!(report.summary().contains("bench CPU    35% of one core"));
        report.verdict.fail("lost".to_owned());
        let summary = report.summary();
        assert!(summary.contains("FAIL: lost"));
        assert!(summary.ends_with("delivery check: FAIL\n"));
    }

    #[test]
    fn counts_are_grouped() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1000), "1 000");
        assert_eq!(fmt_count(1234567), "1 234 567");
    }
}
