//! The scenarios: who publishes on which topic and who listens, the phases of a run (setup,
//! warm-up, measurement, drain, stop), the progress line, and the assembly of the report from
//! what every client task saw.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::args::{BenchConfig, Scenario};
use super::check::{DeliveryCounts, Verdict, judge};
use super::client::{
    Conn, Phase, PubShared, PublisherOutcome, RunCtx, SubscriberOutcome, SubscriberPlan, hold_idle,
    is_fd_exhaustion, run_publisher, run_subscriber,
};
use super::report::{BrokerFigures, ConnFigures, MessageFigures, Report, fmt_count};
use super::stats::Histogram;
use super::sys;
use super::transport::{Connector, SourceTcp, Tcp, Tls, Transport, Ws};

/// Errors kept in words in the report; the rest are only counted.
const ERRORS_KEPT: usize = 10;
/// Deliveries must make progress this often during the drain, or the run stops waiting.
const QUIET: Duration = Duration::from_secs(2);
/// Time every client gets to connect (and subscribe) before the run gives up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the configured scenario against the broker and reports.
pub async fn run(config: &BenchConfig) -> anyhow::Result<Report> {
    config.check()?;
    let addr = tokio::net::lookup_host((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("cannot resolve {}", config.host))?
        .next()
        .with_context(|| format!("{} has no address", config.host))?;
    // Subscribers on another broker (--sub-host / --sub-port), e.g. the far end of a bridge.
    let sub_host = config.sub_host.as_deref().unwrap_or(config.host.as_str());
    let sub_addr = match (&config.sub_host, config.sub_port) {
        (None, None) => addr,
        (_, sub_port) => tokio::net::lookup_host((sub_host, sub_port.unwrap_or(config.port)))
            .await
            .with_context(|| format!("cannot resolve {sub_host}"))?
            .next()
            .with_context(|| format!("{sub_host} has no address"))?,
    };
    let addrs = Addrs {
        publish: addr,
        subscribe: sub_addr,
    };
    check_fd_limit(config)?;
    // tungstenite allocates its read buffer per connection: small when connections idle.
    let ws_read = if config.scenario == Scenario::Conn {
        4 * 1024
    } else {
        64 * 1024
    };
    let (host, port, path) = (config.host.as_str(), config.port, config.ws_path.as_str());
    // One compiled copy of the client loops per transport: TCP's has no trace of the others.
    match config.transport {
        Transport::Tcp if !config.source_addrs.is_empty() => {
            let connector = SourceTcp::new(config.source_addrs.clone());
            run_over(config, addrs, connector).await
        }
        Transport::Tcp => run_over(config, addrs, Tcp).await,
        Transport::Tls => run_over(config, addrs, Tls::new(&config.tls, host)?).await,
        Transport::Ws => run_over(config, addrs, Ws::new(Tcp, host, port, path, ws_read)).await,
        Transport::Wss => {
            let tls = Tls::new(&config.tls, host)?;
            run_over(config, addrs, Ws::new(tls, host, port, path, ws_read)).await
        }
    }
}

/// Where publishers and subscribers connect (the same broker unless --sub-host / --sub-port).
#[derive(Debug, Clone, Copy)]
struct Addrs {
    publish: SocketAddr,
    subscribe: SocketAddr,
}

async fn run_over<C: Connector>(
    config: &BenchConfig,
    addrs: Addrs,
    connector: C,
) -> anyhow::Result<Report> {
    match config.scenario {
        Scenario::Conn => run_conn(config, addrs.publish, connector).await,
        _ => run_messages(config, addrs, connector).await,
    }
}

fn check_fd_limit(config: &BenchConfig) -> anyhow::Result<()> {
    let sockets = match config.scenario {
        Scenario::Conn => config.clients,
        Scenario::Fanin | Scenario::Fanout => config.clients + 1,
        Scenario::Pairs | Scenario::Latency => 2 * config.clients,
    };
    let needed = sockets as u64 + 64;
    match sys::open_files_limit() {
        Some(limit) if limit < needed => bail!(
            "this run opens {sockets} connections but the open-files limit is {limit}: raise it \
             with `ulimit -n {needed}` (at most the hard limit, `ulimit -Hn`)"
        ),
        _ => Ok(()),
    }
}

/// Topics and listeners of a message scenario.
struct Plan {
    /// Topic of each publisher.
    topics: Vec<String>,
    subscribers: Vec<SubscriberPlan>,
    /// Subscribers each publisher has (its progress slots).
    subscribers_of: Vec<usize>,
}

fn plan(config: &BenchConfig) -> Plan {
    let prefix = &config.topic_prefix;
    let n = config.clients;
    match config.scenario {
        Scenario::Fanin => Plan {
            topics: (0..n).map(|i| format!("{prefix}/in/{i}")).collect(),
            subscribers: vec![SubscriberPlan {
                filter: format!("{prefix}/in/+"),
                streams: (0..n as u32).map(|p| (p, 0)).collect(),
            }],
            subscribers_of: vec![1; n],
        },
        Scenario::Fanout => Plan {
            topics: vec![format!("{prefix}/out")],
            subscribers: (0..n)
                .map(|slot| SubscriberPlan {
                    filter: format!("{prefix}/out"),
                    streams: vec![(0, slot)],
                })
                .collect(),
            subscribers_of: vec![n],
        },
        Scenario::Pairs | Scenario::Latency | Scenario::Conn => Plan {
            topics: (0..n).map(|i| format!("{prefix}/pair/{i}")).collect(),
            subscribers: (0..n)
                .map(|i| SubscriberPlan {
                    filter: format!("{prefix}/pair/{i}"),
                    streams: vec![(i as u32, 0)],
                })
                .collect(),
            subscribers_of: vec![1; n],
        },
    }
}

/// Counters read at the start and the end of the measured time.
struct Snapshot {
    at: Instant,
    sent: u64,
    received: u64,
    cpu: Option<Duration>,
    broker_cpu: Option<Duration>,
    machine_cpu: Option<Duration>,
}

fn snapshot(ctx: &RunCtx, pid: Option<u32>) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        sent: total_sent(ctx),
        received: ctx.received.load(Ordering::Relaxed),
        cpu: sys::cpu_time(None),
        broker_cpu: pid.and_then(|pid| sys::cpu_time(Some(pid))),
        machine_cpu: sys::machine_cpu_time(),
    }
}

fn total_sent(ctx: &RunCtx) -> u64 {
    ctx.pubs
        .iter()
        .map(|p| p.sent.load(Ordering::Relaxed))
        .sum()
}

/// Waits for `count` clients to report ready; the first failure ends the wait.
async fn wait_ready(
    ready: &mut mpsc::UnboundedReceiver<Result<(), String>>,
    count: usize,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    for _ in 0..count {
        match tokio::time::timeout_at(deadline, ready.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(error))) => bail!("setting up {what}: {error}"),
            Ok(None) => bail!("setting up {what}: a client task ended"),
            Err(_) => bail!("setting up {what}: timed out"),
        }
    }
    Ok(())
}

/// Prints a progress line on stderr every second until aborted.
fn spawn_progress(mut line: impl FnMut(f64) -> String + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick =
            tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
        loop {
            tick.tick().await;
            eprintln!("{}", line(start.elapsed().as_secs_f64()));
        }
    })
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Setup => "setup",
        Phase::Run => "run",
        Phase::Drain => "drain",
        Phase::Stop => "stop",
    }
}

fn keep_error(errors: &mut Vec<String>, count: &mut usize, error: String) {
    *count += 1;
    if errors.len() < ERRORS_KEPT {
        errors.push(error);
    }
}

/// The outcome of client task `i` (a `role`) joined within a timeout; a task that failed or
/// did not stop is counted among the errors.
fn finished<T>(
    joined: Result<Result<Option<T>, tokio::task::JoinError>, tokio::time::error::Elapsed>,
    role: &str,
    i: usize,
    errors: &mut Vec<String>,
    count: &mut usize,
) -> Option<T> {
    match joined {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => {
            keep_error(errors, count, format!("{role} {i} task failed: {error}"));
            None
        }
        Err(_) => {
            keep_error(errors, count, format!("{role} {i} did not stop"));
            None
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn broker_figures(
    pid: Option<u32>,
    cpu: Option<f64>,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
) -> Option<BrokerFigures> {
    pid.map(|pid| BrokerFigures {
        pid,
        cpu,
        rss_before,
        rss_after,
    })
}

async fn run_messages<C: Connector>(
    config: &BenchConfig,
    addrs: Addrs,
    connector: C,
) -> anyhow::Result<Report> {
    let addr = addrs.publish;
    let sub_addr = addrs.subscribe;
    let Plan {
        topics,
        subscribers,
        subscribers_of,
    } = plan(config);
    let publishers = topics.len();
    let subscriber_count = subscribers.len();
    // The window is what one subscriber may have outstanding: split among the publishers it
    // hears, so fan-in does not ask the broker to buffer publishers x window for one session.
    let heard = subscribers
        .iter()
        .map(|s| s.streams.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let window = if config.window == 0 {
        0
    } else {
        (config.window / heard as u64).max(1)
    };
    let ctx = Arc::new(RunCtx {
        epoch: std::time::Instant::now(),
        qos: config.qos,
        size: config.size,
        window,
        inflight: config.inflight,
        rate: config.rate,
        keep_alive: config.keep_alive,
        grace: config.grace,
        pubs: subscribers_of.iter().map(|&n| PubShared::new(n)).collect(),
        received: AtomicU64::new(0),
        measure_from_ns: AtomicU64::new(0),
        connected: AtomicUsize::new(0),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let handshakes = Arc::new(Semaphore::new(config.concurrency));
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let id_prefix = format!("tb{}", std::process::id());
    let rss_before = config.pid.and_then(|pid| sys::rss_bytes(Some(pid)));

    // Subscribers first: a message published before its subscription exists would be "lost".
    let mut sub_tasks: Vec<JoinHandle<Option<SubscriberOutcome>>> = Vec::new();
    for (i, sub_plan) in subscribers.into_iter().enumerate() {
        let ctx = ctx.clone();
        let phase = phase_rx.clone();
        let ready = ready_tx.clone();
        let handshakes = handshakes.clone();
        let client_id = format!("{id_prefix}-s{i}");
        let (version, keep_alive, qos) = (config.version, config.keep_alive, config.qos);
        let persistent = config.persistent;
        let connector = connector.clone();
        let login = config.login.for_client(i);
        sub_tasks.push(tokio::spawn(async move {
            let opened = async {
                let _permit = handshakes.acquire().await?;
                let mut conn = Conn::open_session(
                    &connector, sub_addr, &client_id, version, keep_alive, persistent, &login,
                )
                .await?;
                conn.subscribe(&sub_plan.filter, qos).await?;
                anyhow::Ok(conn)
            }
            .await;
            match opened {
                Ok(conn) => {
                    let _ = ready.send(Ok(()));
                    Some(run_subscriber(conn, ctx, i, sub_plan, phase).await)
                }
                Err(error) => {
                    let _ = ready.send(Err(format!("subscriber {i}: {error:#}")));
                    None
                }
            }
        }));
    }
    if let Err(error) = wait_ready(&mut ready_rx, subscriber_count, "subscribers").await {
        let _ = phase_tx.send(Phase::Stop);
        return Err(error);
    }

    let mut pub_tasks: Vec<JoinHandle<Option<PublisherOutcome>>> = Vec::new();
    for (i, topic) in topics.into_iter().enumerate() {
        let ctx = ctx.clone();
        let phase = phase_rx.clone();
        let ready = ready_tx.clone();
        let handshakes = handshakes.clone();
        let client_id = format!("{id_prefix}-p{i}");
        let (version, keep_alive) = (config.version, config.keep_alive);
        let connector = connector.clone();
        // Numbered after the subscribers, so `%i` names every client once.
        let login = config.login.for_client(subscriber_count + i);
        pub_tasks.push(tokio::spawn(async move {
            let opened = async {
                let _permit = handshakes.acquire().await?;
                Conn::open(&connector, addr, &client_id, version, keep_alive, &login).await
            }
            .await;
            match opened {
                Ok(conn) => {
                    let _ = ready.send(Ok(()));
                    let count = publishers as u32;
                    Some(run_publisher(conn, ctx, i as u32, count, topic, phase).await)
                }
                Err(error) => {
                    let _ = ready.send(Err(format!("publisher {i}: {error:#}")));
                    None
                }
            }
        }));
    }
    if let Err(error) = wait_ready(&mut ready_rx, publishers, "publishers").await {
        let _ = phase_tx.send(Phase::Stop);
        return Err(error);
    }

    // Go.
    let t0 = Instant::now();
    let measure_start = t0 + config.warmup;
    let measure_end = measure_start + config.duration;
    let from_ns = measure_start
        .into_std()
        .saturating_duration_since(ctx.epoch)
        .as_nanos() as u64;
    ctx.measure_from_ns.store(from_ns, Ordering::Relaxed);
    let _ = phase_tx.send(Phase::Run);
    let progress = config.progress.then(|| {
        let ctx = ctx.clone();
        let phase = phase_rx.clone();
        let (mut last_sent, mut last_received, mut last_at) = (0u64, 0u64, 0.0f64);
        spawn_progress(move |elapsed| {
            let sent = total_sent(&ctx);
            let received = ctx.received.load(Ordering::Relaxed);
            let span = (elapsed - last_at).max(1e-9);
            let line = format!(
                "[{elapsed:6.1}s] {:<5} sent {:>11} msg/s  recv {:>11} msg/s  conns {}  (total sent {}, recv {})",
                phase_name(*phase.borrow()),
                fmt_count(((sent - last_sent) as f64 / span) as u64),
                fmt_count(((received - last_received) as f64 / span) as u64),
                ctx.connected.load(Ordering::Relaxed),
                fmt_count(sent),
                fmt_count(received),
            );
            (last_sent, last_received, last_at) = (sent, received, elapsed);
            line
        })
    });

    tokio::time::sleep_until(measure_start).await;
    let start = snapshot(&ctx, config.pid);
    tokio::time::sleep_until(measure_end).await;
    let end = snapshot(&ctx, config.pid);
    let _ = phase_tx.send(Phase::Drain);

    // Publishers wait (up to the grace period) for their last acknowledgements.
    let mut errors = Vec::new();
    let mut error_count = 0;
    let mut counts = DeliveryCounts::default();
    let mut stalls = 0;
    let mut final_sent = vec![0u64; publishers];
    for (i, task) in pub_tasks.into_iter().enumerate() {
        let joined = tokio::time::timeout(config.grace + Duration::from_secs(5), task).await;
        final_sent[i] = ctx.pubs[i].sent.load(Ordering::Acquire);
        if let Some(outcome) = finished(joined, "publisher", i, &mut errors, &mut error_count) {
            final_sent[i] = outcome.sent.max(final_sent[i]);
            counts.unacked += outcome.unacked;
            counts.rejected += outcome.rejected;
            stalls += outcome.stalls;
            if let Some(error) = outcome.error {
                keep_error(&mut errors, &mut error_count, error);
            }
        }
    }
    counts.sent = final_sent.iter().sum();

    // Subscribers get the last deliveries: until all arrived, or none came for a while, or
    // the grace period is over.
    let deadline = Instant::now() + config.grace;
    let quiet = QUIET.min(config.grace);
    let mut last_received = ctx.received.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let complete = ctx.pubs.iter().zip(&final_sent).all(|(shared, &sent)| {
            shared
                .progress
                .iter()
                .all(|p| p.load(Ordering::SeqCst) >= sent)
        });
        let now = Instant::now();
        if complete || now >= deadline || now.duration_since(last_change) >= quiet {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let received = ctx.received.load(Ordering::Relaxed);
        if received != last_received {
            last_received = received;
            last_change = Instant::now();
        }
    }
    let _ = phase_tx.send(Phase::Stop);
    let rss_after = config.pid.and_then(|pid| sys::rss_bytes(Some(pid)));

    let mut latency = Histogram::new();
    for (i, task) in sub_tasks.into_iter().enumerate() {
        let joined = tokio::time::timeout(Duration::from_secs(5), task).await;
        if let Some(outcome) = finished(joined, "subscriber", i, &mut errors, &mut error_count) {
            for (publisher, check) in &outcome.streams {
                check.add_to(final_sent[*publisher as usize], &mut counts);
            }
            counts.malformed += outcome.malformed;
            counts.unexpected += outcome.unexpected;
            counts.qos2_resent += outcome.qos2_resent;
            counts.qos2_id_reused += outcome.qos2_id_reused;
            counts.qos2_unreleased += outcome.qos2_unreleased;
            latency.merge(&outcome.latency);
            if let Some(error) = outcome.error {
                keep_error(&mut errors, &mut error_count, error);
            }
        }
    }
    if let Some(progress) = progress {
        progress.abort();
    }

    let measured = end.at.duration_since(start.at);
    let secs = measured.as_secs_f64().max(1e-9);
    let mut verdict = Verdict::new();
    if error_count > 0 {
        verdict.fail(format!(
            "{error_count} client connection errors (first: {})",
            errors.first().map_or("", String::as_str)
        ));
    }
    judge(config.qos, &counts, &mut verdict);
    if stalls > 0 {
        verdict.note(format!(
            "publishers waited {stalls} times a whole {:.0} s without delivery progress, then \
             sent on",
            super::client::STALL.as_secs_f64()
        ));
    }
    Ok(Report {
        scenario: config.scenario,
        target: if sub_addr == addr {
            addr.to_string()
        } else {
            format!("{addr} (subscribers: {sub_addr})")
        },
        transport: config.transport,
        version: config.version,
        qos: config.qos,
        clients: config.clients,
        publishers,
        subscribers: subscriber_count,
        size: config.size,
        rate: config.rate,
        window: config.window,
        inflight: config.inflight,
        duration_s: secs,
        warmup_s: config.warmup.as_secs_f64(),
        messages: Some(MessageFigures {
            delivery: counts,
            sent_per_s: (end.sent - start.sent) as f64 / secs,
            received_per_s: (end.received - start.received) as f64 / secs,
            latency: latency.percentiles(),
            stalls,
        }),
        connections: None,
        bench_cpu: sys::cpu_share(start.cpu, end.cpu, measured),
        bench_threads: config.threads,
        cores: cores(),
        machine_cpu: sys::cpu_share(start.machine_cpu, end.machine_cpu, measured),
        broker: broker_figures(
            config.pid,
            sys::cpu_share(start.broker_cpu, end.broker_cpu, measured),
            rss_before,
            rss_after,
        ),
        errors,
        error_count,
        verdict,
    })
}

/// Shared tallies of the conn scenario.
#[derive(Default)]
struct ConnTally {
    established: AtomicUsize,
    failed: AtomicUsize,
    dropped: AtomicUsize,
    /// Attempts finished (established or failed).
    done: AtomicUsize,
    out_of_fds: AtomicBool,
    connack: Mutex<Histogram>,
    last_connack: Mutex<Option<Instant>>,
    errors: Mutex<(Vec<String>, usize)>,
}

impl ConnTally {
    fn error(&self, error: String) {
        let mut guard = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        let (errors, count) = &mut *guard;
        keep_error(errors, count, error);
    }
}

async fn run_conn<C: Connector>(
    config: &BenchConfig,
    addr: SocketAddr,
    connector: C,
) -> anyhow::Result<Report> {
    let target = config.clients;
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let tally = Arc::new(ConnTally::default());
    let handshakes = Arc::new(Semaphore::new(config.concurrency));
    let id_prefix = format!("tb{}", std::process::id());
    let rss_before = config.pid.and_then(|pid| sys::rss_bytes(Some(pid)));
    let broker_cpu_before = config.pid.and_then(|pid| sys::cpu_time(Some(pid)));
    let cpu_before = sys::cpu_time(None);
    let machine_before = sys::machine_cpu_time();

    let t0 = Instant::now();
    let progress = config.progress.then(|| {
        let tally = tally.clone();
        let mut last = 0usize;
        spawn_progress(move |elapsed| {
            let up = tally.established.load(Ordering::Relaxed);
            let dropped = tally.dropped.load(Ordering::Relaxed);
            let line = format!(
                "[{elapsed:6.1}s] conns {} of {} (+{}/s)  failed {}  dropped {}",
                fmt_count(up as u64),
                fmt_count(target as u64),
                fmt_count(up.saturating_sub(last) as u64),
                tally.failed.load(Ordering::Relaxed),
                dropped
            );
            last = up;
            line
        })
    });

    let mut tasks = Vec::with_capacity(target);
    for i in 0..target {
        if config.rate > 0 {
            let at =
                Duration::from_nanos((i as u128 * 1_000_000_000 / u128::from(config.rate)) as u64);
            tokio::time::sleep_until(t0 + at).await;
        }
        if tally.out_of_fds.load(Ordering::Relaxed) {
            break;
        }
        let permit = handshakes.clone().acquire_owned().await?;
        let tally = tally.clone();
        let phase = phase_rx.clone();
        let client_id = format!("{id_prefix}-c{i}");
        let (version, keep_alive) = (config.version, config.keep_alive);
        let connector = connector.clone();
        let login = config.login.for_client(i);
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let opened =
                Conn::open(&connector, addr, &client_id, version, keep_alive, &login).await;
            let now = Instant::now();
            match opened {
                Ok(conn) => {
                    tally
                        .connack
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(now.duration_since(started).as_nanos() as u64);
                    *tally.last_connack.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
                    tally.established.fetch_add(1, Ordering::Relaxed);
                    tally.done.fetch_add(1, Ordering::Release);
                    drop(permit);
                    let stream = conn.into_stream();
                    if let Err(error) = hold_idle(stream, version, keep_alive, phase).await {
                        tally.dropped.fetch_add(1, Ordering::Relaxed);
                        tally.error(format!("connection {i}: {error:#}"));
                    }
                }
                Err(error) => {
                    if is_fd_exhaustion(&error) {
                        tally.out_of_fds.store(true, Ordering::Relaxed);
                    }
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    tally.done.fetch_add(1, Ordering::Release);
                    drop(permit);
                    tally.error(format!("connection {i}: {error:#}"));
                }
            }
        }));
    }
    let launched = tasks.len();
    while tally.done.load(Ordering::Acquire) < launched {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ramp_end = tally
        .last_connack
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or(t0);
    let established = tally.established.load(Ordering::Relaxed);

    // Hold.
    tokio::time::sleep(config.duration).await;
    let rss_after = config.pid.and_then(|pid| sys::rss_bytes(Some(pid)));
    let broker_cpu_after = config.pid.and_then(|pid| sys::cpu_time(Some(pid)));
    let cpu_after = sys::cpu_time(None);
    let machine_after = sys::machine_cpu_time();
    let wall = t0.elapsed();
    let _ = phase_tx.send(Phase::Stop);
    let deadline = Instant::now() + Duration::from_secs(10);
    for task in tasks {
        if tokio::time::timeout_at(deadline, task).await.is_err() {
            break;
        }
    }
    if let Some(progress) = progress {
        progress.abort();
    }

    let failed = tally.failed.load(Ordering::Relaxed) + (target - launched);
    let dropped = tally.dropped.load(Ordering::Relaxed);
    let ramp_s = ramp_end.duration_since(t0).as_secs_f64();
    let (errors, error_count) =
        std::mem::take(&mut *tally.errors.lock().unwrap_or_else(|e| e.into_inner()));
    let connack = tally
        .connack
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .percentiles();
    let bytes_per_connection = match (rss_before, rss_after) {
        (Some(before), Some(after)) if established > 0 => {
            Some((after as f64 - before as f64) / established as f64)
        }
        _ => None,
    };
    let mut verdict = Verdict::new();
    if established < target {
        verdict.fail(format!(
            "{} of {target} connections not established",
            target - established
        ));
    }
    if launched < target {
        verdict.fail(format!(
            "stopped after {launched} attempts: out of file descriptors (raise `ulimit -n`)"
        ));
    }
    if dropped > 0 {
        verdict.fail(format!(
            "{dropped} connections closed by the broker while idle"
        ));
    }
    Ok(Report {
        scenario: Scenario::Conn,
        target: addr.to_string(),
        transport: config.transport,
        version: config.version,
        qos: config.qos,
        clients: target,
        publishers: 0,
        subscribers: 0,
        size: config.size,
        rate: config.rate,
        window: config.window,
        inflight: config.inflight,
        duration_s: config.duration.as_secs_f64(),
        warmup_s: 0.0,
        messages: None,
        connections: Some(ConnFigures {
            target,
            established,
            failed,
            dropped,
            ramp_s,
            connect_rate: if ramp_s > 0.0 {
                established as f64 / ramp_s
            } else {
                0.0
            },
            connack,
            bytes_per_connection,
        }),
        bench_cpu: sys::cpu_share(cpu_before, cpu_after, wall),
        bench_threads: config.threads,
        cores: cores(),
        machine_cpu: sys::cpu_share(machine_before, machine_after, wall),
        broker: broker_figures(
            config.pid,
            sys::cpu_share(broker_cpu_before, broker_cpu_after, wall),
            rss_before,
            rss_after,
        ),
        errors,
        error_count,
        verdict,
    })
}
