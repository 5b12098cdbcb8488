//! The bench's MQTT client, one task per connection with tern-codec, batched I/O: the publisher
//! loop (closed-loop window, in-flight bound, rate, QoS 1/2 flows), the subscriber loop
//! (acknowledgements, feeding the delivery checker) and idle connections. Generic over the
//! transport's stream (`transport.rs`): TCP, TLS, WebSockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use tern_codec::{
    Ack, Connect, Disconnect, FixedHeader, MqttStr, Packet, Properties, ProtocolVersion, Publish,
    QoS, ReasonCode, Subscribe, Subscription, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::check::StreamCheck;
use super::payload::{self, Header};
use super::stats::Histogram;
use super::transport::{BenchStream, Connector};

/// Largest packet accepted from the broker: the most MQTT can express.
const MAX_PACKET: u32 = 268_435_460;
/// Bytes of PUBLISH packets encoded per round before they are written.
const WRITE_BUDGET: usize = 64 * 1024;
/// Read buffer growth for subscribers (deliveries) and publishers (acknowledgements).
const SUBSCRIBER_READ: usize = 64 * 1024;
const PUBLISHER_READ: usize = 8 * 1024;
/// Time for CONNECT/CONNACK and SUBSCRIBE/SUBACK.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A publisher held back by its window this long without progress counts a stall and sends on.
pub(crate) const STALL: Duration = Duration::from_secs(1);
/// Time to write DISCONNECT when a client stops.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a run is; every client task watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Clients connect and subscribe.
    Setup,
    /// Publishers publish.
    Run,
    /// Publishers stop and wait for their acknowledgements; subscribers keep receiving.
    Drain,
    /// Everyone disconnects.
    Stop,
}

/// What one publisher shares with the subscribers of its topic.
pub(crate) struct PubShared {
    /// Messages encoded so far; the next sequence number.
    pub sent: AtomicU64,
    /// Per subscriber of this publisher: how far it has got (highest sequence number received
    /// plus one; at QoS 2, messages released).
    pub progress: Box<[AtomicU64]>,
    /// While the publisher waits for its window: the progress at which it can go on (u64::MAX
    /// when it is not waiting). Subscribers wake it only when they reach it.
    pub resume_at: AtomicU64,
    pub notify: Notify,
}

impl PubShared {
    pub fn new(subscribers: usize) -> PubShared {
        PubShared {
            sent: AtomicU64::new(0),
            progress: (0..subscribers).map(|_| AtomicU64::new(0)).collect(),
            resume_at: AtomicU64::new(u64::MAX),
            notify: Notify::new(),
        }
    }

    /// How far the slowest subscriber has got.
    pub fn min_progress(&self) -> u64 {
        self.progress
            .iter()
            .map(|p| p.load(Ordering::SeqCst))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// A subscriber's progress moved to `progress` in `slot`: wakes the publisher if it waits
    /// for that much.
    pub fn advance(&self, slot: usize, progress: u64) {
        // SeqCst pairs with the publisher's store of `resume_at` and load of `progress`: one of
        // the two sides sees the other's write, so no wake-up is lost.
        self.progress[slot].store(progress, Ordering::SeqCst);
        if progress >= self.resume_at.load(Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }
}

/// Settings and counters every client task of a message run shares.
pub(crate) struct RunCtx {
    /// The shared start instant of payload send times.
    pub epoch: std::time::Instant,
    pub qos: QoS,
    pub size: usize,
    /// 0: open loop.
    pub window: u64,
    pub inflight: u16,
    /// Messages/s per publisher; 0 is unlimited.
    pub rate: u64,
    pub keep_alive: u16,
    pub grace: Duration,
    pub pubs: Box<[PubShared]>,
    /// Deliveries so far, duplicates included.
    pub received: AtomicU64,
    /// Latency is recorded for messages sent at or after this (ns since `epoch`).
    pub measure_from_ns: AtomicU64,
    /// Connections open now.
    pub connected: AtomicUsize,
}

impl RunCtx {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// Whether an error is the process running out of file descriptors.
pub(crate) fn is_fd_exhaustion(error: &anyhow::Error) -> bool {
    error.to_string().contains("EMFILE")
}

/// The username and password bench clients present; `%i` in either is replaced with the
/// client's number within its role (`--username dev%i --password pw%i`: a user per client).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Login {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Login {
    /// The login of client number `i`.
    pub fn for_client(&self, i: usize) -> Login {
        let fill = |template: &Option<String>| {
            template
                .as_ref()
                .map(|text| text.replace("%i", &i.to_string()))
        };
        Login {
            username: fill(&self.username),
            password: fill(&self.password),
        }
    }
}

/// An MQTT connection past CONNACK.
pub(crate) struct Conn<S> {
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    version: ProtocolVersion,
    /// The broker's Receive Maximum (MQTT 5); 65 535 otherwise.
    receive_maximum: u16,
}

impl<S: BenchStream> Conn<S> {
    /// Connects, sends CONNECT with a clean session and waits for a successful CONNACK.
    pub async fn open<C: Connector<Stream = S>>(
        connector: &C,
        addr: SocketAddr,
        client_id: &str,
        version: ProtocolVersion,
        keep_alive: u16,
        login: &Login,
    ) -> anyhow::Result<Conn<S>> {
        Conn::open_session(
            connector, addr, client_id, version, keep_alive, false, login,
        )
        .await
    }

    /// [`Conn::open`], with a persistent session when `persistent` (clean session 0; MQTT 5:
    /// session expiry 300 s).
    pub async fn open_session<C: Connector<Stream = S>>(
        connector: &C,
        addr: SocketAddr,
        client_id: &str,
        version: ProtocolVersion,
        keep_alive: u16,
        persistent: bool,
        login: &Login,
    ) -> anyhow::Result<Conn<S>> {
        let mut stream = connector.connect(addr).await?;
        let mut rbuf = BytesMut::with_capacity(64);
        let mut properties = Properties::default();
        if persistent && version.is_v5() {
            properties.session_expiry_interval = Some(300);
        }
        let connect = Connect {
            protocol: version,
            clean_start: !persistent,
            keep_alive,
            properties,
            client_id: MqttStr::try_from(client_id).context("client id")?,
            will: None,
            username: match &login.username {
                Some(username) => Some(MqttStr::try_from(username.as_str()).context("username")?),
                None => None,
            },
            password: login
                .password
                .as_ref()
                .map(|password| bytes::Bytes::copy_from_slice(password.as_bytes())),
        };
        // The handshake is tern-client's; the loops after it drive the stream themselves.
        let connack = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tern_client::handshake(&mut stream, connect, MAX_PACKET, &mut rbuf, None),
        )
        .await
        .context("no answer from the broker")??;
        Ok(Conn {
            stream,
            rbuf,
            wbuf: BytesMut::with_capacity(64),
            version,
            receive_maximum: connack.properties.receive_maximum.unwrap_or(u16::MAX),
        })
    }

    async fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        packet.encode(self.version, &mut self.wbuf)?;
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            self.stream.write_all_buf(&mut self.wbuf).await?;
            self.stream.flush().await
        })
        .await
        .context("write timed out")??;
        Ok(())
    }

    /// The next packet, within the handshake timeout.
    async fn read_packet(&mut self) -> anyhow::Result<Packet> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        loop {
            if let Some(packet) = Packet::decode(&mut self.rbuf, self.version, MAX_PACKET)? {
                return Ok(packet);
            }
            self.rbuf.reserve(256);
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf))
                .await
                .context("no answer from the broker")??;
            if read == 0 {
                bail!("broker closed the connection");
            }
        }
    }

    /// Subscribes to `filter` at `qos` and checks the broker granted that QoS.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let subscribe = Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: MqttStr::try_from(filter).context("topic filter")?,
                options: SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            }],
        };
        self.send(&Packet::Subscribe(subscribe)).await?;
        loop {
            match self.read_packet().await? {
                Packet::SubAck(suback) if suback.packet_id == 1 => {
                    let code = suback.reason_codes.first().copied();
                    let granted = code.and_then(|c| QoS::from_u8(c.as_u8()));
                    return match granted {
                        Some(granted) if granted == qos => Ok(()),
                        Some(granted) => bail!(
                            "broker granted QoS {} instead of {} on {filter}",
                            granted.as_u8(),
                            qos.as_u8()
                        ),
                        None => bail!("subscription to {filter} refused: {code:?}"),
                    };
                }
                Packet::PingResp => {}
                other => bail!("expected SUBACK, got {:?}", other.packet_type()),
            }
        }
    }

    /// The socket alone, its buffers freed: what an idle connection keeps.
    pub fn into_stream(self) -> S {
        self.stream
    }
}

/// A PUBLISH encoded once; each message copies it and patches packet id and payload header.
pub(crate) struct PublishTemplate {
    bytes: Vec<u8>,
    packet_id_at: Option<usize>,
    payload_at: usize,
}

impl PublishTemplate {
    pub fn new(
        topic: &str,
        qos: QoS,
        size: usize,
        version: ProtocolVersion,
    ) -> anyhow::Result<PublishTemplate> {
        let payload = payload::template(size);
        let size = payload.len();
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: MqttStr::try_from(topic).context("topic")?,
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
            properties: Properties::default(),
            payload: Bytes::from(payload),
        };
        let mut buf = BytesMut::new();
        Packet::Publish(publish).encode(version, &mut buf)?;
        let header = FixedHeader::parse(&buf, version, MAX_PACKET)?
            .context("encoded PUBLISH has no fixed header")?;
        let packet_id_at = (qos != QoS::AtMostOnce).then_some(header.header_len + 2 + topic.len());
        if let Some(at) = packet_id_at {
            if buf.get(at..at + 2) != Some(&[0, 1][..]) {
                bail!("unexpected PUBLISH layout");
            }
        }
        Ok(PublishTemplate {
            payload_at: buf.len() - size,
            bytes: buf.to_vec(),
            packet_id_at,
        })
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends one PUBLISH with `packet_id` (ignored at QoS 0) and `header` to `out`.
    pub fn append(&self, out: &mut BytesMut, packet_id: u16, header: &Header) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        let message = &mut out[start..];
        if let Some(at) = self.packet_id_at {
            message[at..at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        header.write(&mut message[self.payload_at..]);
    }
}

/// A set of packet identifiers (1..=65535), allocated on first use.
#[derive(Default)]
struct IdSet {
    bits: Vec<u64>,
    len: u32,
}

impl IdSet {
    fn contains(&self, id: u16) -> bool {
        self.bits
            .get(usize::from(id >> 6))
            .is_some_and(|word| word & (1 << (id & 63)) != 0)
    }

    /// Adds `id`; false if it was there.
    fn insert(&mut self, id: u16) -> bool {
        if self.bits.is_empty() {
            self.bits = vec![0; 1024];
        }
        let word = &mut self.bits[usize::from(id >> 6)];
        let bit = 1 << (id & 63);
        let added = *word & bit == 0;
        *word |= bit;
        self.len += u32::from(added);
        added
    }

    /// Removes `id`; false if it was not there.
    fn remove(&mut self, id: u16) -> bool {
        let Some(word) = self.bits.get_mut(usize::from(id >> 6)) else {
            return false;
        };
        let bit = 1 << (id & 63);
        let removed = *word & bit != 0;
        *word &= !bit;
        self.len -= u32::from(removed);
        removed
    }
}

/// Packet identifiers of a publisher's unacknowledged QoS 1/2 messages: handed out in turn,
/// skipping those still in use, so no two messages in flight share one.
#[derive(Default)]
struct PacketIds {
    in_use: IdSet,
    /// QoS 2: PUBREC received, PUBREL sent, PUBCOMP awaited.
    released: IdSet,
    last: u16,
}

impl PacketIds {
    fn in_flight(&self) -> u32 {
        self.in_use.len
    }

    /// A free identifier; `None` when all 65 535 are in flight.
    fn allocate(&mut self) -> Option<u16> {
        if self.in_use.len >= u32::from(u16::MAX) {
            return None;
        }
        loop {
            self.last = self.last.checked_add(1).unwrap_or(1);
            if self.in_use.insert(self.last) {
                return Some(self.last);
            }
        }
    }

    fn free(&mut self, id: u16) -> bool {
        self.released.remove(id);
        self.in_use.remove(id)
    }
}

/// What a publisher did.
#[derive(Debug, Default)]
pub(crate) struct PublisherOutcome {
    pub sent: u64,
    pub acked: u64,
    pub unacked: u64,
    pub rejected: u64,
    pub stalls: u64,
    pub error: Option<String>,
}

/// What a [`write_step`] did.
enum Written {
    Bytes(usize),
    Flushed,
}

/// One step of a client loop's writing: some of `wbuf`; or, once it is all written, a flush of
/// what the transport holds (TLS records, WebSocket frames; under load the next write pushes
/// them out anyway). For TCP (`BUFFERS_WRITES` false) this is the plain write: the loops call
/// it only with bytes to write, as they did before transports.
async fn write_step<S: BenchStream, W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    wbuf: &mut BytesMut,
) -> std::io::Result<Written> {
    if !S::BUFFERS_WRITES || !wbuf.is_empty() {
        writer.write_buf(wbuf).await.map(Written::Bytes)
    } else {
        writer.flush().await.map(|()| Written::Flushed)
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Ping when nothing was written for three quarters of the keep-alive.
fn ping_interval(keep_alive: u16) -> Option<Duration> {
    (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 750))
}

/// Publishes on `topic` from the start of `Run` to the start of `Drain`, then waits for the last
/// acknowledgements (up to the grace period) and disconnects.
pub(crate) async fn run_publisher<S: BenchStream>(
    mut conn: Conn<S>,
    ctx: Arc<RunCtx>,
    id: u32,
    publishers: u32,
    topic: String,
    mut phase: watch::Receiver<Phase>,
) -> PublisherOutcome {
    let mut outcome = PublisherOutcome::default();
    ctx.connected.fetch_add(1, Ordering::Relaxed);
    let started = phase.wait_for(|p| *p >= Phase::Run).await.is_ok();
    if started {
        if let Err(error) = publish(
            &mut conn,
            &ctx,
            id,
            publishers,
            &topic,
            &mut phase,
            &mut outcome,
        )
        .await
        {
            outcome.error = Some(format!("publisher {id}: {error:#}"));
        }
    }
    if outcome.error.is_none() {
        let _ = goodbye(&mut conn).await;
    }
    ctx.connected.fetch_sub(1, Ordering::Relaxed);
    outcome
}

async fn goodbye<S: BenchStream>(conn: &mut Conn<S>) -> anyhow::Result<()> {
    Packet::Disconnect(Disconnect::default()).encode(conn.version, &mut conn.wbuf)?;
    tokio::time::timeout(GOODBYE_TIMEOUT, async {
        conn.stream.write_all_buf(&mut conn.wbuf).await?;
        conn.stream.flush().await?;
        conn.stream.shutdown().await
    })
    .await??;
    Ok(())
}

async fn publish<S: BenchStream>(
    conn: &mut Conn<S>,
    ctx: &RunCtx,
    id: u32,
    publishers: u32,
    topic: &str,
    phase: &mut watch::Receiver<Phase>,
    outcome: &mut PublisherOutcome,
) -> anyhow::Result<()> {
    let shared = &ctx.pubs[id as usize];
    let qos = ctx.qos;
    let version = conn.version;
    let template = PublishTemplate::new(topic, qos, ctx.size, version)?;
    let inflight_max = u32::from(ctx.inflight.min(conn.receive_maximum));
    let window = ctx.window;
    // Resume only when an eighth of the window (or of the in-flight slots) is free: fewer,
    // larger batches, and fewer wake-ups, whatever the broker's own batching.
    let low_water = (window / 8).max(1);
    let inflight_low_water = (inflight_max / 8).max(1);
    let mut ids = PacketIds::default();
    // Publishers start their rate schedules spread over one interval, not all at once.
    let start = Instant::now();
    let stagger = 1_000_000_000u64
        .checked_div(ctx.rate)
        .map_or(0, |interval| {
            interval * u64::from(id) / u64::from(publishers.max(1))
        });
    let origin = start + Duration::from_nanos(stagger);
    let mut next_seq: u64 = 0;
    // Raised after a stall, so a lost tail (QoS 0) cannot block the publisher for ever.
    let mut window_floor: u64 = 0;
    let mut blocked_since: Option<Instant> = None;
    // The slowest subscriber's progress as last seen, and when it last moved.
    let mut seen_progress: u64 = 0;
    let mut progress_at = Instant::now();
    let mut running = *phase.borrow() < Phase::Drain;
    let mut drain_deadline: Option<Instant> = (!running).then(|| Instant::now() + ctx.grace);
    let ping_every = ping_interval(ctx.keep_alive);
    let mut last_write = Instant::now();

    let Conn {
        stream, rbuf, wbuf, ..
    } = conn;
    let (mut reader, mut writer) = stream.split();
    // Written bytes that may wait in the transport (TLS, WebSockets) until flushed.
    let mut unflushed = false;

    // The loop is a block so that what was sent and what is unacknowledged are recorded
    // however it ends.
    let result: anyhow::Result<()> = async {
        loop {
            let now = Instant::now();
            let mut wait_window = false;
            let mut rate_wait: Option<Instant> = None;
            if running {
                let room = WRITE_BUDGET.saturating_sub(wbuf.len()) / template.len();
                let mut allow = if wbuf.is_empty() { room.max(1) } else { room } as u64;
                if window > 0 {
                    let progress = shared.min_progress();
                    if progress != seen_progress {
                        seen_progress = progress;
                        progress_at = now;
                    }
                    let free = (progress.max(window_floor) + window).saturating_sub(next_seq);
                    if free < low_water {
                        // Announce the progress needed, then look again: a subscriber that got
                        // there in between did not know it had to wake us.
                        let needed = (next_seq + low_water).saturating_sub(window);
                        shared.resume_at.store(needed, Ordering::SeqCst);
                        if shared.min_progress() >= needed {
                            shared.resume_at.store(u64::MAX, Ordering::SeqCst);
                            continue;
                        }
                        wait_window = true;
                        allow = 0;
                        let since = *blocked_since.get_or_insert(now);
                        if now.duration_since(since.max(progress_at)) >= STALL {
                            // Held back, and not one message arrived for a whole stall period:
                            // note it and send on.
                            outcome.stalls += 1;
                            window_floor = next_seq;
                            blocked_since = None;
                            wait_window = false;
                            shared.resume_at.store(u64::MAX, Ordering::SeqCst);
                            allow = window.min(room.max(1) as u64);
                        }
                    } else {
                        blocked_since = None;
                        shared.resume_at.store(u64::MAX, Ordering::SeqCst);
                        allow = allow.min(free);
                    }
                }
                if qos != QoS::AtMostOnce {
                    let slots = inflight_max.saturating_sub(ids.in_flight());
                    // Wait for acknowledgements until enough slots are free (some are in flight,
                    // so they will come).
                    let slots = if slots < inflight_low_water { 0 } else { slots };
                    allow = allow.min(u64::from(slots));
                }
                if ctx.rate > 0 {
                    let due = if now >= origin {
                        (now.duration_since(origin).as_nanos() * u128::from(ctx.rate)
                            / 1_000_000_000) as u64
                            + 1
                    } else {
                        0
                    };
                    let by_rate = due.saturating_sub(next_seq);
                    if by_rate == 0 {
                        let at = u128::from(next_seq) * 1_000_000_000 / u128::from(ctx.rate);
                        rate_wait = Some(origin + Duration::from_nanos(at as u64));
                    }
                    allow = allow.min(by_rate);
                }
                if allow > 0 {
                    let sent_ns = ctx.now_ns();
                    for _ in 0..allow {
                        let packet_id = if qos == QoS::AtMostOnce {
                            0
                        } else {
                            match ids.allocate() {
                                Some(packet_id) => packet_id,
                                None => break,
                            }
                        };
                        let header = Header {
                            publisher: id,
                            seq: next_seq,
                            sent_ns,
                        };
                        template.append(wbuf, packet_id, &header);
                        next_seq += 1;
                    }
                    shared.sent.store(next_seq, Ordering::Release);
                }
            } else if ids.in_flight() == 0 && wbuf.is_empty() {
                break;
            }
            if rbuf.capacity() - rbuf.len() < 512 {
                rbuf.reserve(PUBLISHER_READ);
            }
            let stall_at = blocked_since.map(|since| since.max(progress_at) + STALL);
            let ping_at = ping_every.map(|every| last_write + every);

            tokio::select! {
                biased;
                changed = phase.changed(), if running => {
                    if changed.is_err() || *phase.borrow() >= Phase::Drain {
                        running = false;
                        drain_deadline = Some(Instant::now() + ctx.grace);
                    }
                }
                // Writes first: PUBRELs and new PUBLISHes must not wait while acknowledgements
                // keep arriving.
                written = write_step::<S, _>(&mut writer, wbuf), if !wbuf.is_empty() || unflushed => {
                    match written.context("write")? {
                        Written::Bytes(0) => bail!("broker closed the connection"),
                        Written::Bytes(_) => {
                            unflushed = S::BUFFERS_WRITES;
                            last_write = Instant::now();
                        }
                        Written::Flushed => unflushed = false,
                    }
                }
                read = reader.read_buf(rbuf) => {
                    if read.context("read")? == 0 {
                        bail!("broker closed the connection");
                    }
                    while let Some(packet) = Packet::decode(rbuf, version, MAX_PACKET)? {
                        handle_ack(packet, qos, &mut ids, wbuf, version, outcome)?;
                    }
                }
                () = shared.notify.notified(), if wait_window => {}
                () = sleep_until(stall_at), if wait_window => {}
                () = sleep_until(rate_wait), if rate_wait.is_some() => {}
                () = sleep_until(ping_at), if ping_at.is_some() => {
                    Packet::PingReq.encode(version, wbuf)?;
                    last_write = Instant::now();
                }
                () = sleep_until(drain_deadline), if drain_deadline.is_some() => break,
            }
        }
        Ok(())
    }
    .await;
    outcome.sent = next_seq;
    outcome.unacked = u64::from(ids.in_flight());
    result
}

/// Handles what a broker sends a publisher: acknowledgements and PINGRESP.
fn handle_ack(
    packet: Packet,
    qos: QoS,
    ids: &mut PacketIds,
    wbuf: &mut BytesMut,
    version: ProtocolVersion,
    outcome: &mut PublisherOutcome,
) -> anyhow::Result<()> {
    match packet {
        Packet::PubAck(ack) if qos == QoS::AtLeastOnce => {
            if !ids.free(ack.packet_id) {
                bail!("PUBACK for packet id {} not in flight", ack.packet_id);
            }
            outcome.acked += 1;
            if ack.reason_code.is_error() {
                outcome.rejected += 1;
            }
        }
        Packet::PubRec(ack) if qos == QoS::ExactlyOnce => {
            if !ids.in_use.contains(ack.packet_id) {
                bail!("PUBREC for packet id {} not in flight", ack.packet_id);
            }
            if ack.reason_code.is_error() {
                // Refused: the exchange ends here [MQTT-4.3.3].
                ids.free(ack.packet_id);
                outcome.acked += 1;
                outcome.rejected += 1;
            } else {
                ids.released.insert(ack.packet_id);
                Packet::PubRel(Ack::new(ack.packet_id)).encode(version, wbuf)?;
            }
        }
        Packet::PubComp(ack) if qos == QoS::ExactlyOnce => {
            if !ids.released.contains(ack.packet_id) {
                bail!("PUBCOMP for packet id {} not released", ack.packet_id);
            }
            ids.free(ack.packet_id);
            outcome.acked += 1;
        }
        Packet::PingResp => {}
        Packet::Disconnect(disconnect) => {
            bail!("broker sent DISCONNECT ({})", disconnect.reason_code)
        }
        other => bail!("unexpected {:?} from the broker", other.packet_type()),
    }
    Ok(())
}

/// Which publishers a subscriber hears, and under which progress slot of theirs.
pub(crate) struct SubscriberPlan {
    pub filter: String,
    /// (publisher id, slot in that publisher's `progress`), sorted by publisher id.
    pub streams: Vec<(u32, usize)>,
}

/// What a subscriber saw.
#[derive(Default)]
pub(crate) struct SubscriberOutcome {
    /// (publisher id, its sequence as received), for each publisher the subscriber hears.
    pub streams: Vec<(u32, StreamCheck)>,
    pub latency: Histogram,
    pub malformed: u64,
    pub unexpected: u64,
    pub qos2_resent: u64,
    pub qos2_id_reused: u64,
    pub qos2_unreleased: u64,
    pub error: Option<String>,
}

/// Receives until `Stop`, acknowledging QoS 1/2 deliveries and checking every payload.
pub(crate) async fn run_subscriber<S: BenchStream>(
    mut conn: Conn<S>,
    ctx: Arc<RunCtx>,
    id: usize,
    plan: SubscriberPlan,
    mut phase: watch::Receiver<Phase>,
) -> SubscriberOutcome {
    let mut outcome = SubscriberOutcome {
        streams: plan
            .streams
            .iter()
            .map(|&(publisher, _)| (publisher, StreamCheck::default()))
            .collect(),
        ..SubscriberOutcome::default()
    };
    ctx.connected.fetch_add(1, Ordering::Relaxed);
    match subscribe_loop(&mut conn, &ctx, &plan, &mut phase, &mut outcome).await {
        Ok(()) => {
            let _ = goodbye(&mut conn).await;
        }
        Err(error) => outcome.error = Some(format!("subscriber {id}: {error:#}")),
    }
    ctx.connected.fetch_sub(1, Ordering::Relaxed);
    outcome
}

/// No stream: the delivery was malformed or from a publisher this subscriber does not hear.
const NO_STREAM: u32 = u32::MAX;

async fn subscribe_loop<S: BenchStream>(
    conn: &mut Conn<S>,
    ctx: &RunCtx,
    plan: &SubscriberPlan,
    phase: &mut watch::Receiver<Phase>,
    outcome: &mut SubscriberOutcome,
) -> anyhow::Result<()> {
    let version = conn.version;
    let size = ctx.size;
    let ping_every = ping_interval(ctx.keep_alive);
    let mut last_write = Instant::now();
    // QoS 2 deliveries awaiting PUBREL: a PUBLISH with one of these ids is not delivered again.
    let mut awaiting_release = IdSet::default();
    // At QoS 2 a message counts for the closed loop once released (PUBREL received), not when
    // it arrives: so the broker's open QoS 2 flows stay within the window too, and a broker
    // that delivers faster than it completes them cannot pile them up. `owner` gives the stream
    // of each packet id awaiting PUBREL (allocated on first use), `released` the count per
    // stream.
    let exactly_once = ctx.qos == QoS::ExactlyOnce;
    let mut owner: Vec<u32> = Vec::new();
    let mut released = vec![0u64; plan.streams.len()];
    // Progress last told to each publisher, parallel to `plan.streams`.
    let mut told = vec![0u64; plan.streams.len()];
    let Conn {
        stream, rbuf, wbuf, ..
    } = conn;
    let (mut reader, mut writer) = stream.split();
    // Written bytes that may wait in the transport (TLS, WebSockets) until flushed.
    let mut unflushed = false;

    loop {
        outcome.qos2_unreleased = u64::from(awaiting_release.len);
        if *phase.borrow() >= Phase::Stop {
            return Ok(());
        }
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(SUBSCRIBER_READ);
        }
        let ping_at = ping_every.map(|every| last_write + every);
        tokio::select! {
            biased;
            changed = phase.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            // Acknowledgements go out before more is read: under a steady stream of
            // deliveries a read is always ready, and PUBACK/PUBREC must not wait for a pause.
            written = write_step::<S, _>(&mut writer, wbuf), if !wbuf.is_empty() || unflushed => {
                match written.context("write")? {
                    Written::Bytes(0) => bail!("broker closed the connection"),
                    Written::Bytes(_) => {
                        unflushed = S::BUFFERS_WRITES;
                        last_write = Instant::now();
                    }
                    Written::Flushed => unflushed = false,
                }
            }
            read = reader.read_buf(rbuf) => {
                if read.context("read")? == 0 {
                    bail!("broker closed the connection");
                }
                let now_ns = ctx.now_ns();
                let measure_from = ctx.measure_from_ns.load(Ordering::Relaxed);
                let mut delivered = 0u64;
                let mut progressed = false;
                while let Some(packet) = Packet::decode(rbuf, version, MAX_PACKET)? {
                    match packet {
                        Packet::Publish(publish) => {
                            match publish.qos {
                                QoS::AtMostOnce => {}
                                QoS::AtLeastOnce => {
                                    Packet::PubAck(Ack::new(publish.packet_id))
                                        .encode(version, wbuf)?;
                                }
                                QoS::ExactlyOnce => {
                                    Packet::PubRec(Ack::new(publish.packet_id))
                                        .encode(version, wbuf)?;
                                    if !awaiting_release.insert(publish.packet_id) {
                                        // Not delivered again [MQTT-4.3.3]; without DUP the
                                        // broker reused an identifier still in flight.
                                        if publish.dup {
                                            outcome.qos2_resent += 1;
                                        } else {
                                            outcome.qos2_id_reused += 1;
                                        }
                                        continue;
                                    }
                                }
                            }
                            delivered += 1;
                            let stream = deliver(&publish, size, now_ns, measure_from, outcome);
                            if publish.qos == QoS::ExactlyOnce {
                                if owner.is_empty() {
                                    owner = vec![NO_STREAM; usize::from(u16::MAX) + 1];
                                }
                                owner[usize::from(publish.packet_id)] =
                                    stream.map_or(NO_STREAM, |index| index as u32);
                            }
                        }
                        Packet::PubRel(ack) => {
                            let known = awaiting_release.remove(ack.packet_id);
                            if known {
                                let stream = owner
                                    .get(usize::from(ack.packet_id))
                                    .and_then(|&index| released.get_mut(index as usize));
                                if let Some(count) = stream {
                                    *count += 1;
                                    progressed = true;
                                }
                            }
                            let mut comp = Ack::new(ack.packet_id);
                            if !known && version.is_v5() {
                                comp.reason_code = ReasonCode::PacketIdentifierNotFound;
                            }
                            Packet::PubComp(comp).encode(version, wbuf)?;
                        }
                        Packet::PingResp => {}
                        Packet::Disconnect(disconnect) => {
                            bail!("broker sent DISCONNECT ({})", disconnect.reason_code)
                        }
                        other => bail!("unexpected {:?} from the broker", other.packet_type()),
                    }
                }
                if delivered > 0 {
                    ctx.received.fetch_add(delivered, Ordering::Relaxed);
                    progressed = true;
                }
                if progressed {
                    let streams = plan.streams.iter().zip(&outcome.streams).zip(&released);
                    for (((&(publisher, slot), (_, check)), &released), told) in
                        streams.zip(&mut told)
                    {
                        let progress = if exactly_once {
                            released
                        } else {
                            check.progress()
                        };
                        if progress != *told {
                            *told = progress;
                            ctx.pubs[publisher as usize].advance(slot, progress);
                        }
                    }
                }
            }
            () = sleep_until(ping_at), if ping_at.is_some() => {
                Packet::PingReq.encode(version, wbuf)?;
                last_write = Instant::now();
            }
        }
    }
}

/// The index in `streams` of `publisher`'s stream.
fn stream_index(streams: &[(u32, StreamCheck)], publisher: u32) -> Option<usize> {
    if let [(only, _)] = streams {
        return (*only == publisher).then_some(0);
    }
    streams.binary_search_by_key(&publisher, |&(id, _)| id).ok()
}

/// Checks one delivered message against its publisher's sequence; returns its stream.
fn deliver(
    publish: &Publish,
    size: usize,
    now_ns: u64,
    measure_from: u64,
    outcome: &mut SubscriberOutcome,
) -> Option<usize> {
    let Ok(header) = Header::read(&publish.payload, size) else {
        outcome.malformed += 1;
        return None;
    };
    let Some(index) = stream_index(&outcome.streams, header.publisher) else {
        outcome.unexpected += 1;
        return None;
    };
    outcome.streams[index].1.record(header.seq, publish.dup);
    if header.sent_ns >= measure_from {
        outcome
            .latency
            .record(now_ns.saturating_sub(header.sent_ns));
    }
    Some(index)
}

/// Completes at `Stop` (or when the run is gone), holding no watch `Ref` across an await.
async fn wait_for_stop(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p >= Phase::Stop).await.is_ok();
}

/// Keeps an idle connection open until `Stop`, answering keep-alive; an error if the broker
/// closes it first.
pub(crate) async fn hold_idle<S: BenchStream>(
    mut stream: S,
    version: ProtocolVersion,
    keep_alive: u16,
    mut phase: watch::Receiver<Phase>,
) -> anyhow::Result<()> {
    let ping_every = ping_interval(keep_alive);
    let mut last_write = Instant::now();
    // Only PINGRESP is expected; its bytes are read and dropped.
    let mut scratch = [0u8; 16];
    loop {
        let ping_at = ping_every.map(|every| last_write + every);
        tokio::select! {
            biased;
            () = wait_for_stop(&mut phase) => {
                let mut bye = BytesMut::with_capacity(2);
                Packet::Disconnect(Disconnect::default()).encode(version, &mut bye)?;
                // The broker closes the connection after DISCONNECT: waiting for its close
                // (rather than closing first) leaves the TIME_WAIT on the broker's side, so
                // thousands of connections closed at once do not use up the bench's ports
                // for the next run.
                let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
                    stream.write_all(&bye).await?;
                    stream.flush().await?;
                    while stream.read(&mut scratch).await? > 0 {}
                    stream.shutdown().await
                })
                .await;
                return Ok(());
            }
            read = stream.read(&mut scratch) => {
                if read.context("read")? == 0 {
                    bail!("broker closed an idle connection");
                }
            }
            () = sleep_until(ping_at), if ping_at.is_some() => {
                let mut ping = BytesMut::with_capacity(2);
                Packet::PingReq.encode(version, &mut ping)?;
                stream.write_all(&ping).await.context("write")?;
                stream.flush().await.context("write")?;
                last_write = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_messages_decode_as_sent() {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let template = PublishTemplate::new("bench/1/in/7", qos, 100, version).unwrap();
                let mut buf = BytesMut::new();
                for seq in 0..3u64 {
                    let header = Header {
                        publisher: 7,
                        seq,
                        sent_ns: 1000 + seq,
                    };
                    template.append(&mut buf, 500 + seq as u16, &header);
                }
                assert_eq!(buf.len(), 3 * template.len());
                for seq in 0..3u64 {
                    let Some(Packet::Publish(publish)) =
                        Packet::decode(&mut buf, version, MAX_PACKET).unwrap()
                    else {
                        panic!("not a PUBLISH");
                    };
                    assert_eq!(publish.qos, qos);
                    assert_eq!(&*publish.topic, "bench/1/in/7");
                    let want_id = if qos == QoS::AtMostOnce {
                        0
                    } else {
                        500 + seq as u16
                    };
                    assert_eq!(publish.packet_id, want_id);
                    assert_eq!(publish.payload.len(), 100);
                    let header = Header::read(&publish.payload, 100).unwrap();
                    assert_eq!((header.publisher, header.seq), (7, seq));
                    assert_eq!(header.sent_ns, 1000 + seq);
                }
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn packet_ids_never_collide() {
        let mut ids = PacketIds::default();
        let first: Vec<u16> = (0..100).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(first[0], 1);
        assert_eq!(ids.in_flight(), 100);
        // Free all but id 5, then go round the whole space: 5 must be skipped.
        for &id in &first {
            if id != 5 {
                assert!(ids.free(id));
            }
        }
        assert!(!ids.free(1));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..65_534 {
            let id = ids.allocate().unwrap();
            assert_ne!(id, 5);
            assert_ne!(id, 0);
            assert!(seen.insert(id));
        }
        assert_eq!(ids.allocate(), None);
        assert!(ids.free(5));
        assert_eq!(ids.allocate(), Some(5));
    }

    #[test]
    fn streams_are_found_by_publisher() {
        let one = vec![(7, StreamCheck::default())];
        assert_eq!(stream_index(&one, 7), Some(0));
        assert_eq!(stream_index(&one, 0), None);
        let many: Vec<(u32, StreamCheck)> =
            (0..10).map(|p| (p * 2, StreamCheck::default())).collect();
        assert_eq!(stream_index(&many, 0), Some(0));
        assert_eq!(stream_index(&many, 18), Some(9));
        assert_eq!(stream_index(&many, 5), None);
        assert_eq!(stream_index(&[], 5), None);
    }

    #[test]
    fn id_set() {
        let mut set = IdSet::default();
        assert!(!set.contains(9));
        assert!(!set.remove(9));
        assert!(set.insert(9));
        assert!(!set.insert(9));
        assert!(set.contains(9));
        assert!(set.insert(65_535));
        assert_eq!(set.len, 2);
        assert!(set.remove(9));
        assert_eq!(set.len, 1);
    }
}
