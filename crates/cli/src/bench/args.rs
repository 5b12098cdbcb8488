//! The command line of `tern bench` and the resolved configuration of a run: per-scenario
//! defaults (clients, rate) are filled in here, and impossible combinations refused, so the
//! rest of the bench works from one checked `BenchConfig`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use tern_codec::{ProtocolVersion, QoS};

use super::client::Login;
use super::payload::HEADER_LEN;
use super::transport::{TlsOptions, Transport};

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Open --clients connections at --rate connections/s and hold them for --duration.
    Conn,
    /// --clients publishers on bench/in/{i} to one subscriber on bench/in/+.
    Fanin,
    /// One publisher to --clients subscribers of one topic.
    Fanout,
    /// --clients publisher/subscriber pairs, each on its own topic.
    Pairs,
    /// Pairs at a fixed rate (default 1 pair, 1000 msg/s): end-to-end latency percentiles.
    Latency,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Conn => "conn",
            Scenario::Fanin => "fanin",
            Scenario::Fanout => "fanout",
            Scenario::Pairs => "pairs",
            Scenario::Latency => "latency",
        }
    }
}

const AFTER_HELP: &str = "\
Closed loop: a subscriber has at most --window messages outstanding (each of its publishers runs
at most its share ahead of its slowest subscriber, and at QoS 1/2 at most --inflight messages
unacknowledged), so the figures are the rate the broker sustains, not
how much it buffers. Every payload carries publisher, sequence number and send time; subscribers
check loss, duplicates and order against the promise of the QoS, and the run exits with status 1
when the delivery check fails.

Many connections need file descriptors on both sides: raise the limit with `ulimit -n 65536`
(up to the hard limit, `ulimit -Hn`) in the shell that runs the bench and the one that runs the
broker.

Examples:
  tern bench fanin --clients 8 --qos 1 --duration 10
  tern bench fanout --clients 100
  tern bench latency --qos 1 --rate 1000
  tern bench conn --clients 10000 --rate 1000 --pid $(pidof tern)
  tern bench conn --clients 10000 --rate 0 --username 'dev%i' --password 'pw%i'
  tern bench conn --transport tls --port 8883 --cafile ca.pem --clients 2000 --rate 0
  tern bench fanin --transport wss --port 8443 --insecure --qos 1";

/// Load generator and delivery check against a running MQTT broker.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = AFTER_HELP)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Broker host name or address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Subscribers connect to this host instead of --host (TCP only): with --sub-port, the
    /// publishers on one broker and the subscribers on another, e.g. through a bridge.
    #[arg(long)]
    pub sub_host: Option<String>,
    /// Subscribers connect to this port instead of --port (TCP only; see --sub-host).
    #[arg(long)]
    pub sub_port: Option<u16>,
    /// What carries MQTT: tcp, tls, ws (WebSockets) or wss (WebSockets over TLS).
    #[arg(long, default_value = "tcp", value_parser = |v: &str| v.parse::<Transport>())]
    pub transport: Transport,
    /// TLS: the CA certificates (PEM) the broker's certificate must chain to.
    #[arg(long)]
    pub cafile: Option<PathBuf>,
    /// TLS: accept any broker certificate (signatures in the handshake are still checked).
    #[arg(long)]
    pub insecure: bool,
    /// TLS: a client certificate chain (PEM), for brokers that ask for one (with --key).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// TLS: the client certificate's private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// TLS: the name to ask for (SNI) and to find in the certificate; default: --host.
    #[arg(long)]
    pub server_name: Option<String>,
    /// WebSockets: the HTTP path of the upgrade.
    #[arg(long, default_value = "/mqtt")]
    pub ws_path: String,
    /// The username every client presents; `%i` is replaced with the client's number
    /// (subscribers first, then publishers), so `dev%i` gives each client its own user.
    #[arg(long)]
    pub username: Option<String>,
    /// The password every client presents (`%i` as in --username).
    #[arg(long)]
    pub password: Option<String>,
    /// QoS of publishes and subscriptions: 0, 1 or 2.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload bytes (at least the 24-byte bench header).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds to measure (after --warmup); for conn, seconds to hold the connections.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring starts (messages still checked).
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Messages/s per publisher (0: as fast as the closed loop allows); for conn,
    /// connections/s. Default: 1000 for latency and conn, 0 otherwise.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Publishers (fanin), subscribers (fanout), pairs (pairs, latency) or connections (conn).
    /// Default: fanin 8, fanout 100, pairs 100, latency 1, conn 1000.
    #[arg(long)]
    pub clients: Option<usize>,
    /// MQTT version: 3.1.1 or 5.
    #[arg(long = "mqtt", default_value = "3.1.1", value_parser = parse_version)]
    pub mqtt: ProtocolVersion,
    /// Print one JSON object with every figure on stdout (the summary goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Messages a subscriber may have outstanding: each publisher runs at most its share (the
    /// window divided by the publishers the subscriber hears) ahead of its slowest subscriber.
    /// 0: open loop, unbounded.
    #[arg(long, default_value_t = 1000)]
    pub window: u64,
    /// Unacknowledged QoS 1/2 publishes per publisher (capped by the broker's Receive Maximum).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Seconds to wait after publishing stops for the last deliveries and acknowledgements.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
    /// Keep-alive in seconds announced in CONNECT; PINGREQ is sent when idle.
    #[arg(long, default_value_t = 60)]
    pub keepalive: u16,
    /// Subscribers connect with a persistent session (clean session 0; MQTT 5: session expiry
    /// 300 s), so a broker with a store writes their QoS 1/2 messages to it.
    #[arg(long)]
    pub persistent: bool,
    /// conn: connection attempts in progress at once.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Broker process id: its CPU time and resident memory (VmRSS) are read from /proc.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Topic prefix (default bench/<bench process id>, so concurrent runs do not mix).
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// Threads of the bench's runtime; 1 leaves the other cores to the broker.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// TCP: bind each connection's local address in turn from this list (commas) or IPv4
    /// range (`127.0.0.2-127.0.0.33`), each with an ephemeral port: one address has only one
    /// port range, so more than about 28 000-60 000 connections need several
    #[arg(long)]
    pub source_addrs: Option<String>,
}

fn parse_version(text: &str) -> Result<ProtocolVersion, String> {
    match text {
        "3.1.1" | "311" | "4" => Ok(ProtocolVersion::V311),
        "5" | "5.0" => Ok(ProtocolVersion::V5),
        other => Err(format!(
            "unsupported MQTT version {other:?}: use 3.1.1 or 5"
        )),
    }
}

/// A checked run configuration.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub scenario: Scenario,
    pub host: String,
    pub port: u16,
    /// Where subscribers connect, when not to host:port (TCP only; not for conn).
    pub sub_host: Option<String>,
    pub sub_port: Option<u16>,
    pub transport: Transport,
    /// For tls and wss.
    pub tls: TlsOptions,
    /// For ws and wss.
    pub ws_path: String,
    /// What each client presents (a template; see [`Login::for_client`]).
    pub login: Login,
    pub qos: QoS,
    pub size: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Per publisher (messages/s) or, for conn, connections/s; 0 is unlimited.
    pub rate: u64,
    pub clients: usize,
    pub version: ProtocolVersion,
    /// 0: open loop.
    pub window: u64,
    pub inflight: u16,
    pub grace: Duration,
    pub keep_alive: u16,
    /// Subscribers keep a persistent session, so the broker stores their QoS 1/2 messages.
    pub persistent: bool,
    pub concurrency: usize,
    pub pid: Option<u32>,
    pub topic_prefix: String,
    pub threads: usize,
    pub progress: bool,
    pub json: bool,
    /// Local addresses the TCP connections bind in turn (empty: the system chooses).
    pub source_addrs: Vec<std::net::IpAddr>,
}

impl BenchConfig {
    /// The defaults of `scenario`, aimed at 127.0.0.1:1883.
    pub fn new(scenario: Scenario) -> BenchConfig {
        let (clients, rate) = match scenario {
            Scenario::Conn => (1000, 1000),
            Scenario::Fanin => (8, 0),
            Scenario::Fanout => (100, 0),
            Scenario::Pairs => (100, 0),
            Scenario::Latency => (1, 1000),
        };
        BenchConfig {
            scenario,
            host: "127.0.0.1".to_owned(),
            port: 1883,
            sub_host: None,
            sub_port: None,
            transport: Transport::Tcp,
            tls: TlsOptions::default(),
            ws_path: "/mqtt".to_owned(),
            login: Login::default(),
            qos: QoS::AtMostOnce,
            size: 64,
            duration: Duration::from_secs(10),
            warmup: Duration::ZERO,
            rate,
            clients,
            version: ProtocolVersion::V311,
            window: 1000,
            inflight: 100,
            grace: Duration::from_secs(5),
            keep_alive: 60,
            persistent: false,
            concurrency: 100,
            pid: None,
            topic_prefix: format!("bench/{}", std::process::id()),
            threads: 1,
            progress: true,
            json: false,
            source_addrs: Vec::new(),
        }
    }

    pub fn from_args(args: &BenchArgs) -> anyhow::Result<BenchConfig> {
        let mut config = BenchConfig::new(args.scenario);
        config.host = args.host.clone();
        config.port = args.port;
        config.sub_host = args.sub_host.clone();
        config.sub_port = args.sub_port;
        config.transport = args.transport;
        config.tls = TlsOptions {
            cafile: args.cafile.clone(),
            insecure: args.insecure,
            cert: args.cert.clone(),
            key: args.key.clone(),
            server_name: args.server_name.clone(),
        };
        config.ws_path = args.ws_path.clone();
        config.login = Login {
            username: args.username.clone(),
            password: args.password.clone(),
        };
        config.qos = match QoS::from_u8(args.qos) {
            Some(qos) => qos,
            None => bail!("--qos must be 0, 1 or 2"),
        };
        config.size = args.size;
        config.duration = seconds("--duration", args.duration)?;
        config.warmup = seconds("--warmup", args.warmup)?;
        config.grace = seconds("--grace", args.grace)?;
        if let Some(rate) = args.rate {
            config.rate = rate;
        }
        if let Some(clients) = args.clients {
            config.clients = clients;
        }
        config.version = args.mqtt;
        config.window = args.window;
        config.inflight = args.inflight;
        config.keep_alive = args.keepalive;
        config.persistent = args.persistent;
        config.concurrency = args.concurrency;
        config.pid = args.pid;
        if let Some(prefix) = &args.topic_prefix {
            config.topic_prefix = prefix.trim_end_matches('/').to_owned();
        }
        config.threads = args.threads;
        config.progress = !args.quiet;
        config.json = args.json;
        if let Some(addrs) = &args.source_addrs {
            config.source_addrs = super::transport::parse_source_addrs(addrs)?;
        }
        config.check()?;
        Ok(config)
    }

    /// Refuses what cannot run.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.size < HEADER_LEN {
            bail!("--size must be at least {HEADER_LEN} bytes (the bench header)");
        }
        if self.size > 256 * 1024 * 1024 {
            bail!("--size is larger than an MQTT packet can be");
        }
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if self.clients > u32::MAX as usize {
            bail!("--clients is too large");
        }
        if self.duration.is_zero() {
            bail!("--duration must be positive");
        }
        if self.threads == 0 {
            bail!("--threads must be at least 1");
        }
        if !self.source_addrs.is_empty() && self.transport != Transport::Tcp {
            bail!("--source-addrs is for --transport tcp only");
        }
        if self.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if self.topic_prefix.is_empty()
            || self.topic_prefix.contains(['+', '#', '\0'])
            || self.topic_prefix.len() > 1000
        {
            bail!("--topic-prefix must be a non-empty topic name without wildcards");
        }
        if self.scenario == Scenario::Latency && self.rate == 0 {
            bail!("latency needs a fixed --rate (messages/s per publisher)");
        }
        let tls = &self.tls;
        let tls_options = tls.cafile.is_some()
            || tls.insecure
            || tls.cert.is_some()
            || tls.key.is_some()
            || tls.server_name.is_some();
        if tls_options && !self.transport.uses_tls() {
            bail!(
                "--cafile, --insecure, --cert, --key and --server-name are for --transport tls or wss"
            );
        }
        if self.transport.uses_tls() && tls.cafile.is_none() && !tls.insecure {
            bail!(
                "--transport {} needs --cafile (the CA of the broker's certificate) or --insecure",
                self.transport.name()
            );
        }
        if self.sub_host.is_some() || self.sub_port.is_some() {
            if self.transport != Transport::Tcp {
                bail!("--sub-host and --sub-port are for --transport tcp");
            }
            if self.scenario == Scenario::Conn {
                bail!("--sub-host and --sub-port are for the message scenarios, not conn");
            }
        }
        if self.ws_path != "/mqtt" && !self.transport.uses_websockets() {
            bail!("--ws-path is for --transport ws or wss");
        }
        if !self.ws_path.starts_with('/') || self.ws_path.contains(char::is_whitespace) {
            bail!("--ws-path must begin with / and have no spaces");
        }
        if let Some(pid) = self.pid {
            if !super::sys::process_exists(pid) {
                bail!("--pid {pid}: no such process");
            }
        }
        Ok(())
    }
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    if !value.is_finite() || !(0.0..=1e9).contains(&value) {
        bail!("{name} must be a number of seconds, not {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(line: &[&str]) -> anyhow::Result<BenchConfig> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(line.iter().copied()))?;
        BenchConfig::from_args(&cli.args)
    }

    #[test]
    fn scenario_defaults() {
        let fanout = parse(&["fanout"]).unwrap();
        assert_eq!((fanout.clients, fanout.rate), (100, 0));
        let latency = parse(&["latency", "--qos", "1"]).unwrap();
        assert_eq!((latency.clients, latency.rate), (1, 1000));
        assert_eq!(latency.qos, QoS::AtLeastOnce);
        let conn = parse(&["conn", "--clients", "10000", "--rate", "500"]).unwrap();
        assert_eq!((conn.clients, conn.rate), (10_000, 500));
    }

    #[test]
    fn options() {
        let config = parse(&[
            "pairs",
            "--mqtt",
            "5",
            "--size",
            "256",
            "--duration",
            "2.5",
            "--port",
            "1999",
            "--window",
            "0",
            "--json",
            "--quiet",
        ])
        .unwrap();
        assert_eq!(config.version, ProtocolVersion::V5);
        assert_eq!(config.size, 256);
        assert_eq!(config.duration, Duration::from_millis(2500));
        assert_eq!(config.port, 1999);
        assert_eq!(config.window, 0);
        assert!(config.json && !config.progress);
        assert_eq!(config.transport, Transport::Tcp);
    }

    #[test]
    fn transports() {
        let tls = parse(&["conn", "--transport", "tls", "--cafile", "ca.pem"]).unwrap();
        assert_eq!(tls.transport, Transport::Tls);
        assert_eq!(
            tls.tls.cafile.as_deref(),
            Some(std::path::Path::new("ca.pem"))
        );
        let wss = parse(&[
            "fanin",
            "--transport",
            "wss",
            "--insecure",
            "--ws-path",
            "/ws",
            "--server-name",
            "broker.test",
        ])
        .unwrap();
        assert_eq!(wss.transport, Transport::Wss);
        assert!(wss.tls.insecure);
        assert_eq!(wss.ws_path, "/ws");
        assert_eq!(wss.tls.server_name.as_deref(), Some("broker.test"));
        let ws = parse(&["pairs", "--transport", "ws"]).unwrap();
        assert_eq!(ws.ws_path, "/mqtt");
    }

    /// Issue 15 (bridge benchmark): publishers on one broker, subscribers on another.
    #[test]
    fn subscriber_address() {
        let split = parse(&["fanin", "--port", "1883", "--sub-port", "1884"]).unwrap();
        assert_eq!((split.port, split.sub_port), (1883, Some(1884)));
        assert_eq!(split.sub_host, None);
        let host = parse(&["pairs", "--sub-host", "10.0.0.2"]).unwrap();
        assert_eq!(host.sub_host.as_deref(), Some("10.0.0.2"));
        assert!(parse(&["conn", "--sub-port", "1884"]).is_err());
        assert!(parse(&["pairs", "--transport", "ws", "--sub-port", "1884"]).is_err());
    }

    #[test]
    fn refusals() {
        assert!(parse(&["pairs", "--size", "10"]).is_err());
        assert!(parse(&["pairs", "--qos", "3"]).is_err());
        assert!(parse(&["pairs", "--mqtt", "3.1"]).is_err());
        assert!(parse(&["pairs", "--clients", "0"]).is_err());
        assert!(parse(&["latency", "--rate", "0"]).is_err());
        assert!(parse(&["pairs", "--duration", "-1"]).is_err());
        assert!(parse(&["pairs", "--topic-prefix", "a/+"]).is_err());
        assert!(parse(&["pairs", "--transport", "tls"]).is_err());
        assert!(parse(&["pairs", "--insecure"]).is_err());
        assert!(parse(&["pairs", "--ws-path", "/x"]).is_err());
        assert!(parse(&["pairs", "--transport", "ws", "--ws-path", "x"]).is_err());
        assert!(
            parse(&[
                "pairs",
                "--transport",
                "tls",
                "--insecure",
                "--cert",
                "c.pem"
            ])
            .is_err()
        );
    }
}
