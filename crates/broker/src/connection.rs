//! The state machine of one network connection, driven from outside: the server hands it decoded
//! packets, decode errors, the end of the transport and the time, and asks it for the bytes to
//! send and the next deadline. It reads no clock and owns no socket.
//!
//! A connection is first `AwaitingConnect`, where the only packet it accepts is CONNECT
//! [MQTT-3.1.0-1]; then `Active`, holding the session, the protocol version and what the CONNECT
//! negotiated; then `Closed`. Packet handlers live in `inbound.rs`, encoding in `outbound.rs`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_codec::{DecodeError, Disconnect, MqttStr, Packet, ProtocolVersion, ReasonCode};

use crate::broker::Broker;
use crate::hooks::{
    AuthExchange, AuthRequest, AuthRequestId, ClientInfo, Principal, TransportIdentity,
};
use crate::message::Message;
use crate::session::{Kick, Session};
use crate::types::{ConnectionId, Seq, Wakeup};
use crate::unstored::{AckGate, Barrier};

/// Why a connection ended; the server logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT (MQTT 5: with a reason that does not ask for the will).
    ClientDisconnected,
    /// MQTT 5 DISCONNECT with a reason other than 0x00 (0x04 or an error): the will is published.
    ClientDisconnectedWithWill,
    /// The transport ended without DISCONNECT.
    TransportClosed,
    /// No packet within 1.5 times the keep-alive [MQTT-3.1.2-24].
    KeepAliveTimeout,
    /// No CONNECT within the connect timeout.
    ConnectTimeout,
    /// The enhanced authentication of CONNECT (MQTT 5, section 4.12) did not finish within the
    /// connect timeout; refused with CONNACK 0x87.
    AuthenticationTimeout,
    /// A deferred authentication (see [`crate::AuthDecision::Defer`]) was not answered within
    /// the connect timeout; refused with CONNACK 0x88 Server unavailable (3.x: 3).
    AuthenticatorTimeout,
    /// The cluster did not answer the claim of the client id (see
    /// [`crate::ClusterHook::claim`]) within the connect timeout; refused with CONNACK 0x88
    /// Server unavailable (3.x: 3).
    ClaimTimeout,
    /// The client's credentials expired while it was connected (a token's `exp`); MQTT 5
    /// clients get DISCONNECT 0x87 Not authorized.
    CredentialsExpired,
    /// CONNACK refused the connection with this code.
    ConnectRefused(ReasonCode),
    /// The client broke a rule; the code is the one sent (MQTT 5) or that would have been.
    ProtocolError { code: ReasonCode, detail: String },
    /// Another connection with the same client identifier took the session [MQTT-3.1.4-2].
    SessionTakenOver,
    /// The server is shutting down.
    ServerShutdown,
    /// An operator closed the connection (the admin API's kick, or the end of its session):
    /// MQTT 5 clients get DISCONNECT 0x98 Administrative action; the will is published.
    AdministrativeAction,
    /// A 3.x client sent a PUBLISH the store could not take (its disk is full, or failing), or
    /// one with a copy for a cluster node whose outbox is full: 3.x has no negative
    /// acknowledgement, so the message was not acknowledged and the
    /// connection is closed after [`STORAGE_REFUSAL_CLOSE`], for the client to send it again
    /// after it reconnects.
    StorageUnavailable,
    /// The node lost its cluster's quorum for longer than its lease: it cannot prove it is
    /// still the client id's only owner, so it lets go (MQTT 5 DISCONNECT 0x9C Use another
    /// server); the client reconnects, to a node of the majority.
    ClusterLeaseLost,
}

/// How long a 3.x connection stays open after a PUBLISH the store could not take, before it is
/// closed (see [`CloseReason::StorageUnavailable`]). Long enough that a client reconnecting at
/// once does not spin against a full disk; short enough that it is not stuck for long.
pub const STORAGE_REFUSAL_CLOSE: Duration = Duration::from_secs(5);

impl CloseReason {
    /// Whether the will is published for this ending [MQTT-3.1.2-8, MQTT-3.1.2-10].
    fn publishes_will(&self) -> bool {
        !matches!(
            self,
            CloseReason::ClientDisconnected
                | CloseReason::ServerShutdown
                | CloseReason::ConnectRefused(_)
                | CloseReason::AuthenticationTimeout
                | CloseReason::AuthenticatorTimeout
                | CloseReason::ClaimTimeout
        )
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::ClientDisconnected => f.write_str("client disconnected"),
            CloseReason::ClientDisconnectedWithWill => f.write_str("client disconnected with will"),
            CloseReason::TransportClosed => f.write_str("connection lost"),
            CloseReason::KeepAliveTimeout => f.write_str("keep-alive timeout"),
            CloseReason::ConnectTimeout => f.write_str("no CONNECT in time"),
            CloseReason::AuthenticationTimeout => {
                f.write_str("enhanced authentication not completed in time")
            }
            CloseReason::AuthenticatorTimeout => f.write_str("authentication not answered in time"),
            CloseReason::ClaimTimeout => f.write_str("the cluster did not grant the client id in time"),
            CloseReason::CredentialsExpired => f.write_str("credentials expired"),
            CloseReason::ConnectRefused(code) => write!(f, "connect refused: {code}"),
            CloseReason::ProtocolError { code, detail } => {
                write!(f, "protocol error: {detail} ({code})")
            }
            CloseReason::SessionTakenOver => f.write_str("session taken over"),
            CloseReason::ServerShutdown => f.write_str("server shutting down"),
            CloseReason::AdministrativeAction => f.write_str("administrative action"),
            CloseReason::ClusterLeaseLost => f.write_str(
                "the node lost its cluster's quorum: another node may own the client id",
            ),
            CloseReason::StorageUnavailable => f.write_str(
                "a message could not be stored (the broker's disk is full or failing); closed so that the client sends it again",
            ),
        }
    }
}

/// A will as the connection keeps it until the connection ends.
#[derive(Debug, Clone)]
pub(crate) struct PreparedWill {
    /// The will, without an expiry deadline yet.
    pub(crate) message: Message,
    /// Will Delay Interval.
    pub(crate) delay: Duration,
    /// Message Expiry Interval of the will, counted from its publication.
    pub(crate) expiry_interval: Option<u32>,
}

impl PreparedWill {
    /// The message to publish at `at`.
    fn into_message(self, at: Instant) -> Arc<Message> {
        let mut message = self.message;
        message.expires_at = self
            .expiry_interval
            .map(|seconds| at + Duration::from_secs(u64::from(seconds)));
        Arc::new(message)
    }
}

/// What a successful CONNECT established.
#[derive(Debug)]
pub(crate) struct Active {
    pub(crate) version: ProtocolVersion,
    /// Who the client is; shared with its session (`SessionState::principal`).
    pub(crate) client: Arc<ClientInfo>,
    pub(crate) session: Arc<Session>,
    /// 1.5 times the keep-alive; `None` when keep-alive is off.
    pub(crate) keep_alive_limit: Option<std::num::NonZeroU32>,
    pub(crate) last_received: Instant,
    /// Boxed: most clients have none, and an idle connection should cost little.
    pub(crate) will: Option<Box<PreparedWill>>,
    /// Outbound QoS 1/2 messages allowed in flight: the smaller of our window and the client's
    /// Receive Maximum.
    pub(crate) send_window: usize,
    /// The client's Maximum Packet Size (MQTT 5); `u32::MAX` when it set none.
    pub(crate) client_max_packet_size: u32,
    /// The Session Expiry Interval of CONNECT (MQTT 5), for the DISCONNECT rule of section 3.14.2.2.2.
    pub(crate) session_expiry_interval: u32,
    /// Request Problem Information of CONNECT: whether reason strings and user properties may
    /// go in packets other than PUBLISH, CONNACK and DISCONNECT [MQTT-3.1.2-29].
    pub(crate) problem_information: bool,
    /// Topic aliases the client set up, by alias - 1 (MQTT 5).
    #[allow(clippy::box_collection)] // 8 bytes in every connection that never aliases
    pub(crate) inbound_aliases: Option<Box<Vec<Option<MqttStr>>>>,
    pub(crate) outbound_aliases: OutboundAliases,
    /// Enhanced authentication of the connection, if CONNECT used it (boxed: rare).
    pub(crate) auth: Option<Box<EnhancedAuth>>,
    /// Whether the will was written to the store (persistent sessions).
    pub(crate) will_stored: bool,
    /// When the connection is closed because the store could not take a PUBLISH of this 3.x
    /// client (see [`CloseReason::StorageUnavailable`]).
    pub(crate) storage_close_at: Option<Instant>,
    /// Queue positions below this were queued before this connection's client took the session
    /// up (for another principal, or none: a session restored from the store): each is checked
    /// with `may_read` before it is sent, as are the entries in flight, until the queue has
    /// moved past it (0: nothing to check).
    pub(crate) judge_below: u64,
}

/// The enhanced authentication a connection was accepted with.
#[derive(Debug)]
pub(crate) struct EnhancedAuth {
    /// The Authentication Method of CONNECT; re-authentication must use the same.
    pub(crate) method: MqttStr,
    /// A re-authentication in progress.
    pub(crate) reauth: Option<Box<dyn AuthExchange>>,
}

/// Topic aliases the broker uses towards the client: a topic gets the next free alias the first
/// time it is sent; once all are taken, further topics go out in full.
#[derive(Debug, Default)]
pub(crate) struct OutboundAliases {
    max: u16,
    /// Allocated with the first alias: most connections never use one.
    #[allow(clippy::box_collection)]
    // 8 bytes instead of 48 in every connection that never aliases
    by_topic: Option<Box<HashMap<MqttStr, u16>>>,
}

impl OutboundAliases {
    pub(crate) fn new(max: u16) -> OutboundAliases {
        OutboundAliases {
            max,
            by_topic: None,
        }
    }

    /// The alias for `topic` and whether the client already knows it; a new alias counts only
    /// once [`OutboundAliases::confirm`] records that it was sent.
    pub(crate) fn alias_for(&self, topic: &MqttStr) -> Option<(u16, bool)> {
        if self.max == 0 {
            return None;
        }
        let by_topic = self.by_topic.as_deref();
        if let Some(&alias) = by_topic.and_then(|map| map.get(topic)) {
            return Some((alias, true));
        }
        let next = u16::try_from(by_topic.map_or(0, HashMap::len) + 1)
            .ok()
            .filter(|&n| n <= self.max)?;
        Some((next, false))
    }

    /// Records that `alias` went to the client together with `topic`.
    pub(crate) fn confirm(&mut self, topic: &MqttStr, alias: u16) {
        // A copy of its own: the topic may share its buffer with a payload (a compacted
        // message, the read buffer it arrived in), which the map would keep alive.
        let owned = MqttStr::try_from(topic.as_str()).unwrap_or_else(|_| topic.clone());
        self.by_topic
            .get_or_insert_with(Box::default)
            .insert(owned, alias);
    }
}

/// A CONNECT waiting for its enhanced authentication to finish.
pub(crate) struct PendingAuth {
    pub(crate) connect: Box<tern_codec::Connect>,
    /// Who the plain authentication (if any) said the client is.
    pub(crate) principal: Principal,
    pub(crate) client_id: MqttStr,
    pub(crate) assigned: bool,
    pub(crate) method: MqttStr,
    pub(crate) exchange: Box<dyn AuthExchange>,
    pub(crate) deadline: Instant,
}

/// A CONNECT whose authentication was deferred, waiting for the answer
/// ([`Connection::handle_auth_result`]). Nothing the client sent after it is handled before
/// [MQTT-3.1.4-5]: the connection takes no input meanwhile.
#[derive(Debug)]
pub(crate) struct Deciding {
    pub(crate) connect: tern_codec::Connect,
    pub(crate) client_id: MqttStr,
    pub(crate) assigned: bool,
    pub(crate) id: AuthRequestId,
    /// The request, until the server takes it.
    pub(crate) request: Option<AuthRequest>,
    pub(crate) deadline: Instant,
    /// Packets handed over meanwhile by a driver that did not ask [`Connection::wants_input`]:
    /// handled, in order, once the connection is accepted.
    pub(crate) held: Vec<Packet>,
}

/// A CONNECT authenticated and checked (will, limits), ready to attach its session: what
/// waits while the cluster decides the claim of its client id.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// The CONNECT, its will taken out (prepared in `will`).
    pub(crate) connect: tern_codec::Connect,
    pub(crate) client: Principal,
    pub(crate) assigned: bool,
    /// The enhanced authentication's method and its last data, if CONNECT used one.
    pub(crate) auth: Option<(MqttStr, Option<bytes::Bytes>)>,
    pub(crate) will: Option<Box<PreparedWill>>,
    pub(crate) expiry: crate::types::SessionExpiry,
}

/// A CONNECT waiting for the cluster to grant its client id
/// ([`Connection::handle_claim_result`]). Like [`Deciding`], it takes no input meanwhile.
#[derive(Debug)]
pub(crate) struct Claiming {
    pub(crate) admitted: Admitted,
    pub(crate) id: crate::cluster_claim::ClaimId,
    pub(crate) deadline: Instant,
    /// Packets handed over meanwhile: handled, in order, once the claim is granted.
    pub(crate) held: Vec<Packet>,
}

impl std::fmt::Debug for dyn AuthExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthExchange")
    }
}

impl std::fmt::Debug for PendingAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAuth")
            .field("client_id", &self.client_id)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(crate) enum Phase {
    AwaitingConnect {
        deadline: Instant,
    },
    /// CONNECT received, its authentication deferred: waiting for the answer.
    Deciding(Box<Deciding>),
    /// CONNECT authenticated, the cluster's claim of its client id pending.
    Claiming(Box<Claiming>),
    /// CONNECT received; AUTH packets go back and forth before CONNACK.
    Authenticating(Box<PendingAuth>),
    Active(Box<Active>),
    Closed,
}

/// One network connection's MQTT state.
pub struct Connection {
    pub(crate) broker: Arc<Broker>,
    pub(crate) id: ConnectionId,
    /// Where the broker keeps this connection's wakeup.
    slot: u32,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) wakeup: Arc<dyn Wakeup>,
    pub(crate) phase: Phase,
    /// Control packets waiting to be encoded, in order, each with what it waits for.
    pub(crate) outbox: VecDeque<(Packet, Barrier)>,
    pub(crate) close_reason: Option<Box<CloseReason>>,
    /// The protocol version in use (the CONNECT's, once it came).
    pub(crate) version: ProtocolVersion,
    pub(crate) client_id: Option<MqttStr>,
    /// What the transport knows of the client (listener, client certificate): shared by the
    /// connections of a listener when it is only the listener's name, so an idle connection
    /// pays a pointer for it.
    pub(crate) transport: Option<Arc<TransportIdentity>>,
    /// The highest store sequence number the connection asked to be woken for.
    pub(crate) waiting_for_store: Seq,
    /// The highest store sequence number of the changes the client's own packets caused
    /// (PUBLISH, SUBSCRIBE, ...), while they may not be durable: while the store is congested,
    /// the connection takes no input until they are (see [`Connection::wants_input`]).
    pub(crate) input_barrier: Seq,
}

impl Connection {
    /// A new connection from `peer`; `wakeup` is called when deliveries wait for it or it has
    /// been taken over.
    pub fn new(
        broker: Arc<Broker>,
        wakeup: Arc<dyn Wakeup>,
        peer: Option<SocketAddr>,
        now: Instant,
    ) -> Connection {
        Connection::with_transport(broker, wakeup, peer, None, now)
    }

    /// [`Connection::new`] for a client whose transport vouches for something: the listener
    /// it came through, a verified client certificate (see [`TransportIdentity`]).
    pub fn with_transport(
        broker: Arc<Broker>,
        wakeup: Arc<dyn Wakeup>,
        peer: Option<SocketAddr>,
        transport: Option<Arc<TransportIdentity>>,
        now: Instant,
    ) -> Connection {
        let deadline = now + broker.config().connect_timeout;
        let (id, slot) = broker.register_connection(wakeup.clone());
        Connection {
            id,
            slot,
            broker,
            peer,
            transport,
            wakeup,
            phase: Phase::AwaitingConnect { deadline },
            outbox: VecDeque::new(),
            close_reason: None,
            version: ProtocolVersion::V311,
            client_id: None,
            waiting_for_store: Seq::NONE,
            input_barrier: Seq::NONE,
        }
    }

    /// Whether the server is shutting down: the caller then calls [`Connection::shutdown`].
    pub fn server_stopping(&self) -> bool {
        self.broker.is_shutting_down()
    }

    /// The protocol version to decode the next packet with.
    pub fn protocol_version(&self) -> ProtocolVersion {
        self.version
    }

    /// The largest packet to accept from the client.
    pub fn max_packet_size(&self) -> u32 {
        self.broker.config().max_packet_size
    }

    /// The client identifier, once CONNECT has been handled (assigned ones included).
    pub fn client_id(&self) -> Option<&MqttStr> {
        self.client_id.as_ref()
    }

    /// The connection's identifier (what [`crate::Session::owner`] names).
    #[doc(hidden)]
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Whether CONNECT has been accepted.
    pub fn is_connected(&self) -> bool {
        matches!(self.phase, Phase::Active(_))
    }

    /// Whether the connection has ended: the server sends what `poll_transmit` still gives,
    /// then closes the transport.
    pub fn is_closed(&self) -> bool {
        self.close_reason.is_some()
    }

    /// Why it ended.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close_reason.as_deref()
    }

    /// The next moment `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::AwaitingConnect { deadline } => Some(*deadline),
            Phase::Deciding(deciding) => Some(deciding.deadline),
            Phase::Claiming(claiming) => Some(claiming.deadline),
            Phase::Authenticating(pending) => Some(pending.deadline),
            Phase::Active(active) => {
                let keep_alive = active.keep_alive_limit.map(|limit| {
                    active.last_received + Duration::from_millis(u64::from(limit.get()))
                });
                [
                    keep_alive,
                    active.storage_close_at,
                    active.client.expires_at,
                ]
                .into_iter()
                .flatten()
                .min()
            }
            Phase::Closed => None,
        }
    }

    /// Whether the server should read and hand over more input. `false` while the store is
    /// congested (a slow disk: more changes wait than it keeps in memory) and changes this
    /// client's packets caused are not durable yet; the connection is woken when they are.
    /// So a publisher is slowed to the disk's pace (its acknowledgements wait as well) and
    /// the store's backlog stays bounded, while clients that wait for nothing from the store
    /// (QoS 0, clean sessions) read on.
    pub fn wants_input(&mut self) -> bool {
        if let Phase::Deciding(_) | Phase::Claiming(_) = self.phase {
            // [MQTT-3.1.4-5]: nothing after CONNECT is handled before it is authenticated
            // (and, in a cluster, before the client id is this node's).
            return false;
        }
        if self.input_barrier == Seq::NONE {
            return true;
        }
        if self.input_barrier <= self.broker.durable() {
            self.input_barrier = Seq::NONE;
            return true;
        }
        if !self.broker.store_congested() {
            return true;
        }
        self.wait_for_store(self.input_barrier);
        false
    }

    /// Closes the connection if the connect timeout (which also bounds an enhanced
    /// authentication exchange) or the keep-alive has run out.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.poll_timeout() else {
            return;
        };
        if now < deadline {
            return;
        }
        match self.phase {
            Phase::AwaitingConnect { .. } => self.close(CloseReason::ConnectTimeout, None, now),
            // Before CONNACK a refusal is the only packet that can carry a reason: no DISCONNECT
            // before a successful CONNACK [MQTT-3.14.0-1], and the server that rejects an
            // authentication "MAY send a CONNACK with a Reason Code of 0x80 or above" and then
            // closes [MQTT-4.12.0-4]. 0x87 Not authorized: the client did not prove who it is,
            // so it may not connect. Not 0x8D Keep Alive timeout, which CONNACK cannot carry
            // and which names another rule; not 0x8C Bad authentication method, as the method
            // was accepted; not 0x86, which is about a user name and password.
            Phase::Authenticating(_) => self.refuse_as(
                ReasonCode::NotAuthorized,
                CloseReason::AuthenticationTimeout,
                now,
            ),
            // The authenticator did not answer: fail closed. 0x88 Server unavailable (3.x: 3),
            // not 0x86/0x87: the credentials were not judged, the back end is the one at fault,
            // and a client that reads it retries later rather than giving up on them.
            Phase::Deciding(_) => self.refuse_as(
                ReasonCode::ServerUnavailable,
                CloseReason::AuthenticatorTimeout,
                now,
            ),
            // The cluster could not decide in time (no quorum, a slow hand-over): 0x88 too,
            // which a client reads as "retry later".
            Phase::Claiming(_) => self.refuse_as(
                ReasonCode::ServerUnavailable,
                CloseReason::ClaimTimeout,
                now,
            ),
            Phase::Active(ref active) if active.client.expires_at.is_some_and(|at| at <= now) => {
                // Section 4.12 and 3.14.2.1: the client is no longer authorized. 0x87 Not
                // authorized rather than 0xA0 Maximum connect time: the end comes from the
                // client's credentials, not a limit of the server's, and reconnecting with the
                // same token would be refused.
                self.close(
                    CloseReason::CredentialsExpired,
                    Some(ReasonCode::NotAuthorized),
                    now,
                );
            }
            Phase::Active(ref active) if active.storage_close_at.is_some_and(|at| at <= now) => {
                self.close(CloseReason::StorageUnavailable, None, now);
            }
            Phase::Active(_) | Phase::Closed => self.close(
                CloseReason::KeepAliveTimeout,
                Some(ReasonCode::KeepAliveTimeout),
                now,
            ),
        }
    }

    /// The transport ended (end of stream or an error) without DISCONNECT.
    pub fn handle_transport_closed(&mut self, now: Instant) {
        if !self.is_closed() {
            self.close(CloseReason::TransportClosed, None, now);
        }
    }

    /// The connection lost its session (taken over here or on another node of a cluster, or
    /// ended or kicked by an operator): closes with the matching reason. Called on the rare
    /// path only.
    pub(crate) fn close_displaced(&mut self, kicked: Option<Kick>, now: Instant) {
        let (reason, code) = match kicked {
            Some(Kick::Operator) => (
                CloseReason::AdministrativeAction,
                ReasonCode::AdministrativeAction,
            ),
            Some(Kick::LeaseLost) => (CloseReason::ClusterLeaseLost, ReasonCode::UseAnotherServer),
            Some(Kick::ClaimedElsewhere) | None => {
                (CloseReason::SessionTakenOver, ReasonCode::SessionTakenOver)
            }
        };
        self.close(reason, Some(code), now);
    }

    /// Whether per-client debug tracing is on for this connection's client.
    pub fn traced(&self) -> bool {
        matches!(&self.phase, Phase::Active(active) if active.session.traced())
    }

    /// The broker this connection belongs to.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The server is shutting down: MQTT 5 clients get DISCONNECT 0x8B.
    pub fn shutdown(&mut self, now: Instant) {
        if !self.is_closed() {
            self.close(
                CloseReason::ServerShutdown,
                Some(ReasonCode::ServerShuttingDown),
                now,
            );
        }
    }

    /// The bytes from the client could not be decoded; the stream cannot go on.
    pub fn handle_decode_error(&mut self, error: &DecodeError, now: Instant) {
        if self.is_closed() {
            return;
        }
        if let (Phase::AwaitingConnect { .. }, DecodeError::UnsupportedProtocolVersion(_)) =
            (&self.phase, error)
        {
            // [MQTT-3.1.2-2]: CONNACK return code 0x01 (unacceptable protocol version), in the
            // 3.1.1 layout (`20 02 00 01`), whatever the level. It is the one answer every
            // client can read: 3.1 has the same layout and code, and a client of a level we do
            // not know cannot be expected to read the MQTT 5 layout (Mosquitto answers so too).
            // The codec also gets here for a known level under the other version's name
            // ("MQTT" 3, "MQIsdp" 4 or 5), which the same answer suits.
            self.version = ProtocolVersion::V311;
            self.refuse(ReasonCode::UnsupportedProtocolVersion, now);
            return;
        }
        self.protocol_error(error.reason_code(), error.to_string(), now);
    }

    /// Ends the connection for a broken rule: MQTT 5 clients get DISCONNECT with `code` (once
    /// CONNACK has been sent), 3.x clients a plain close.
    pub(crate) fn protocol_error(
        &mut self,
        code: ReasonCode,
        detail: impl Into<String>,
        now: Instant,
    ) {
        let detail = detail.into();
        tracing::debug!(connection = self.id.get(), %code, %detail, "protocol error");
        self.close(CloseReason::ProtocolError { code, detail }, Some(code), now);
    }

    /// Ends the connection: queues a DISCONNECT for MQTT 5 clients past CONNACK
    /// [MQTT-3.14.0-1], publishes or schedules the will as the reason demands, and leaves the
    /// session to the broker.
    pub(crate) fn close(
        &mut self,
        reason: CloseReason,
        disconnect: Option<ReasonCode>,
        now: Instant,
    ) {
        if self.is_closed() {
            return;
        }
        let phase = std::mem::replace(&mut self.phase, Phase::Closed);
        match &phase {
            Phase::Deciding(deciding) => self.broker.forget_auth(deciding.id),
            Phase::Claiming(claiming) => {
                let unclaimed = self.broker.forget_claim(claiming.id);
                self.broker.keep_unclaimed(unclaimed, now);
            }
            _ => {}
        }
        if let Phase::Active(active) = phase {
            if let (Some(code), ProtocolVersion::V5) = (disconnect, active.version) {
                let mut packet = Disconnect::new(code);
                // A reason string is always allowed in DISCONNECT (section 3.14.2.2.3).
                packet.properties.reason_string = MqttStr::try_from(reason.to_string()).ok();
                self.outbox
                    .push_back((Packet::Disconnect(packet), Barrier::Durable(Seq::NONE)));
            }
            self.finish_session(*active, &reason, now);
        }
        self.close_reason = Some(Box::new(reason));
    }

    /// The will and the session at the end of an active connection.
    fn finish_session(&mut self, active: Active, reason: &CloseReason, now: Instant) {
        let Active {
            session,
            mut will,
            will_stored,
            client,
            ..
        } = active;
        // A will is checked when it is set (CONNECT), again when the connection ends, and a
        // delayed one once more when its delay runs out: the access rules may have changed
        // meanwhile (a reload).
        if will.as_ref().is_some_and(|will| {
            reason.publishes_will()
                && !self
                    .broker
                    .authorizer()
                    .may_publish(&client, &will.message.topic)
        }) {
            tracing::debug!(client_id = %client.client_id, "will not published: not authorized");
            self.broker
                .metrics()
                .bump(crate::metrics::Counter::MessagesRefused);
            will = None;
        }
        let owner = session.lock().owned_by(self.id);
        let deferred = owner
            && reason.publishes_will()
            && will.as_ref().is_some_and(|will| !will.delay.is_zero());
        let broker = self.broker.clone();
        // Forgetting the stored will and publishing it become durable together: a crash between
        // them would lose the will or publish it twice.
        let group = if will_stored && owner && !deferred {
            broker.atomic()
        } else {
            None
        };
        if will_stored && owner && !deferred {
            // The will is published now or discarded: the store forgets it. (A deferred will
            // stays stored, to be published after a restart too.)
            let state = session.lock();
            if state.stores() {
                self.broker.persist(|| crate::persist::Change::WillCleared {
                    client_id: session.client_id().clone(),
                });
            }
        }
        if let Some(will) = will.filter(|_| reason.publishes_will()) {
            let will = *will;
            if will.delay.is_zero() {
                self.broker.publish_will(will.into_message(now), now);
            } else if owner {
                let at = now + will.delay;
                self.broker
                    .defer_will(&session, will.into_message(at), at, client.clone());
            } else if session.lock().ended {
                // Taken over with a clean start: the session has ended, so the will is due.
                self.broker.publish_will(will.into_message(now), now);
            }
            // Otherwise the session was resumed within the delay: no will [MQTT-3.1.3-9].
        }
        drop(group);
        self.broker.detach(&session, self.id, now);
    }

    /// Gives back memory held for traffic while the connection is idle: the control-packet
    /// queue keeps its capacity (a few hundred bytes a packet) otherwise.
    pub fn release_idle_memory(&mut self) {
        if self.outbox.is_empty() && self.outbox.capacity() > 0 {
            self.outbox = VecDeque::new();
        }
    }

    /// Queues a control packet that may go out once `barrier` is durable (0: at once).
    pub(crate) fn send(&mut self, packet: Packet, barrier: Seq) {
        self.outbox.push_back((packet, Barrier::Durable(barrier)));
    }

    /// Queues a control packet that may go out once `gate` opens and what it then waits for is
    /// durable.
    pub(crate) fn send_gated(&mut self, packet: Packet, gate: Arc<AckGate>) {
        self.outbox.push_back((packet, Barrier::Gate(gate)));
    }

    /// Refuses a CONNECT with a CONNACK carrying `code` [MQTT-3.2.2-4], then closes.
    pub(crate) fn refuse(&mut self, code: ReasonCode, now: Instant) {
        self.refuse_as(code, CloseReason::ConnectRefused(code), now);
    }

    /// Refuses a CONNECT with a CONNACK carrying `code`, then closes for `reason`.
    fn refuse_as(&mut self, code: ReasonCode, reason: CloseReason, now: Instant) {
        let connack = tern_codec::ConnAck {
            session_present: false,
            reason_code: code,
            properties: Default::default(),
        };
        self.outbox
            .push_back((Packet::ConnAck(connack), Barrier::Durable(Seq::NONE)));
        let metrics = self.broker.metrics();
        metrics.bump(crate::metrics::Counter::ConnectionsRefused);
        if matches!(
            code,
            ReasonCode::BadUserNameOrPassword
                | ReasonCode::NotAuthorized
                | ReasonCode::BadAuthenticationMethod
        ) {
            metrics.bump(crate::metrics::Counter::AuthFailures);
        }
        self.close(reason, None, now);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        match &self.phase {
            // Dropped while its authentication or claim was being decided: a late answer is
            // dropped.
            Phase::Deciding(deciding) => self.broker.forget_auth(deciding.id),
            // (A grant's session that came meanwhile is dropped: the server closes a
            // connection before it drops it, and `close` keeps it.)
            Phase::Claiming(claiming) => drop(self.broker.forget_claim(claiming.id)),
            _ => {}
        }
        self.broker.deregister_connection(self.slot);
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("client_id", &self.client_id)
            .field("version", &self.version)
            .field("close_reason", &self.close_reason)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod size_probe {
    /// What every connection (and every session, and every subscription) costs, printed so
    /// that growth is seen: `cargo test -p tern-broker --lib size_probe -- --nocapture`.
    #[test]
    fn sizes() {
        use std::mem::size_of;
        let sizes = [
            ("Connection", size_of::<super::Connection>()),
            ("Phase", size_of::<super::Phase>()),
            ("Active", size_of::<super::Active>()),
            ("ClientInfo", size_of::<crate::hooks::ClientInfo>()),
            ("SessionState", size_of::<crate::session::SessionState>()),
            ("Session", size_of::<crate::session::Session>()),
            ("Subscriber", size_of::<crate::broker::Subscriber>()),
        ];
        for (name, size) in sizes {
            eprintln!("{name} {size}");
        }
        // The connection itself does not grow for deferred authentication: its pending state
        // is one more boxed phase.
        assert!(size_of::<super::Connection>() <= 184);
    }
}
