//! Handling of CONNECT (section 3.1.4): client identifier rules, authentication (plain and, in
//! MQTT 5, enhanced with AUTH exchanges, section 4.12), the session (new, resumed or taken over)
//! and the CONNACK that tells the client what it got.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_codec::{
    Auth, ConnAck, Connect, MqttStr, Packet, Properties, ProtocolVersion, QoS, ReasonCode,
};

use crate::cluster_claim::{ClaimCompletion, ClaimDecision, ClaimGrant, ClaimId, ClaimRequest};
use crate::cluster_hook::ClusterHook;
use crate::cluster_transfer::SessionTransfer;
use crate::connection::{
    Active, Admitted, Claiming, Connection, Deciding, PendingAuth, Phase, PreparedWill,
};
use crate::hooks::{
    AuthCompletion, AuthDecision, AuthExchange, AuthRequest, AuthRequestId, AuthStep, Credentials,
    Principal,
};
use crate::message::Message;
use crate::persist::Change;
use crate::types::{Seq, SessionExpiry};

/// An AUTH packet of the exchange with `method`.
pub(crate) fn auth_packet(
    reason_code: ReasonCode,
    method: &MqttStr,
    data: Option<Bytes>,
) -> Packet {
    Packet::Auth(Auth {
        reason_code,
        properties: Properties {
            authentication_method: Some(method.clone()),
            authentication_data: data,
            ..Properties::default()
        },
    })
}

/// A copy of a string from the read buffer that owns its memory: what a connection keeps for
/// its whole life must not pin the buffer its CONNECT arrived in.
fn owned(text: &MqttStr) -> MqttStr {
    MqttStr::try_from(text.as_str()).unwrap_or_else(|_| text.clone())
}

/// Longest client identifier kept in one allocation with its reference count (see
/// [`owned_client_id`]); MQTT 3.1 allows no longer ones, and 23 makes the allocation 40 bytes.
const SHORT_CLIENT_ID: usize = 23;

/// A short client identifier and its length, the owner of the bytes of a [`Bytes`].
struct ShortClientId {
    len: u8,
    bytes: [u8; SHORT_CLIENT_ID],
}

impl AsRef<[u8]> for ShortClientId {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// [`owned`] for the client identifier, which the connection, its principal and its session
/// each hold: a copy of a short one is one allocation that its clones share (48 bytes with
/// malloc's header), where a copied `Bytes` is two (the bytes, then the shared count its first
/// clone allocates: 64 bytes; issue 14).
fn owned_client_id(text: &MqttStr) -> MqttStr {
    let source = text.as_str().as_bytes();
    if let Ok(len) = u8::try_from(source.len())
        && source.len() <= SHORT_CLIENT_ID
    {
        let mut short = ShortClientId {
            len,
            bytes: [0; SHORT_CLIENT_ID],
        };
        short.bytes[..source.len()].copy_from_slice(source);
        if let Ok(id) = MqttStr::from_bytes(Bytes::from_owner(short)) {
            return id;
        }
    }
    owned(text)
}

/// A refusal code that CONNACK can carry: an authenticator's code that it cannot (a
/// DISCONNECT-only code, a success) becomes 0x87 Not authorized, failing closed.
fn connack_refusal(code: ReasonCode) -> ReasonCode {
    if code.is_error() && code.allowed_in(tern_codec::PacketType::ConnAck) {
        code
    } else {
        ReasonCode::NotAuthorized
    }
}

/// A claim refusal CONNACK can carry: a code it cannot becomes 0x88 Server unavailable (the
/// cluster, not the client, is at fault: retryable).
fn claim_refusal(code: ReasonCode) -> ReasonCode {
    if code.is_error() && code.allowed_in(tern_codec::PacketType::ConnAck) {
        code
    } else {
        ReasonCode::ServerUnavailable
    }
}

impl Connection {
    pub(crate) fn handle_connect(&mut self, mut connect: Connect, now: Instant) {
        self.version = connect.protocol;
        // A username the listener took from the client certificate stands for the client.
        if let Some(username) = self
            .transport
            .as_ref()
            .and_then(|identity| identity.username.clone())
        {
            connect.username = Some(username);
        }
        if self.broker.is_shutting_down() {
            return self.refuse(ReasonCode::ServerUnavailable, now);
        }
        let (client_id, assigned) = match self.client_identifier(&connect) {
            Ok(identifier) => identifier,
            Err(code) => return self.refuse(code, now),
        };
        let credentials = Credentials {
            client_id: &client_id,
            username: connect.username.as_deref(),
            password: connect.password.as_deref(),
            peer: self.peer,
            protocol: connect.protocol,
            transport: self.transport.as_deref(),
            authentication_method: connect.properties.authentication_method.as_deref(),
        };
        let principal = match self.broker.authenticator().authenticate(&credentials) {
            AuthDecision::Allow(principal) => principal,
            AuthDecision::Deny(code) => return self.refuse(connack_refusal(code), now),
            AuthDecision::Defer => return self.defer_auth(connect, client_id, assigned, now),
        };
        self.authenticated(connect, client_id, assigned, principal, now);
    }

    /// Waits for the answer of a deferred authentication.
    fn defer_auth(&mut self, connect: Connect, client_id: MqttStr, assigned: bool, now: Instant) {
        let id = self.broker.defer_auth(self.wakeup.clone());
        let request = AuthRequest {
            id,
            client_id: client_id.to_string(),
            username: connect.username.as_ref().map(ToString::to_string),
            password: connect.password.as_ref().map(|password| password.to_vec()),
            peer: self.peer,
            protocol: connect.protocol,
            transport: self.transport.clone(),
            authentication_method: connect
                .properties
                .authentication_method
                .as_ref()
                .map(ToString::to_string),
            completion: AuthCompletion {
                broker: Arc::downgrade(&self.broker),
                id,
            },
        };
        let deadline = self.connect_deadline(now);
        self.phase = Phase::Deciding(Box::new(Deciding {
            connect,
            client_id,
            assigned,
            id,
            request: Some(request),
            deadline,
            held: Vec::new(),
        }));
    }

    /// The deferred authentication waiting to be decided, once: the server decides it (off
    /// the connection's thread if it likes) and gives the answer back with
    /// [`Connection::handle_auth_result`] or the request's [`AuthRequest::completion`].
    pub fn take_auth_request(&mut self) -> Option<AuthRequest> {
        match &mut self.phase {
            Phase::Deciding(deciding) => deciding.request.take(),
            _ => None,
        }
    }

    /// Whether a deferred decision is waiting for its answer: an authentication, or (in a
    /// cluster) the claim of the client id. The connection takes no input meanwhile.
    pub fn is_deciding(&self) -> bool {
        matches!(self.phase, Phase::Deciding(_) | Phase::Claiming(_))
    }

    /// Takes an answer the server gave through an [`AuthCompletion`], if one came.
    pub(crate) fn collect_auth_result(&mut self, now: Instant) {
        let Phase::Deciding(deciding) = &self.phase else {
            return;
        };
        let id = deciding.id;
        if let Some(result) = self.broker.take_auth_result(id) {
            self.handle_auth_result(id, result, now);
        }
    }

    /// The answer to the deferred authentication `id`: the CONNECT goes on (to its enhanced
    /// authentication, if it asked for one, or to CONNACK) or is refused with the code. An
    /// answer for another request (stale, or unknown) is ignored.
    pub fn handle_auth_result(
        &mut self,
        id: AuthRequestId,
        result: Result<Principal, ReasonCode>,
        now: Instant,
    ) {
        match &self.phase {
            Phase::Deciding(deciding) if deciding.id == id => {}
            _ => return,
        }
        let Phase::Deciding(deciding) = std::mem::replace(&mut self.phase, Phase::Closed) else {
            return;
        };
        self.broker.forget_auth(id);
        let Deciding {
            connect,
            client_id,
            assigned,
            held,
            ..
        } = *deciding;
        match result {
            Ok(principal) => self.authenticated(connect, client_id, assigned, principal, now),
            Err(code) => self.refuse(connack_refusal(code), now),
        }
        for packet in held {
            self.handle_packet(packet, now);
        }
    }

    /// Goes on with a CONNECT whose plain authentication said who the client is.
    fn authenticated(
        &mut self,
        connect: Connect,
        client_id: MqttStr,
        assigned: bool,
        mut principal: Principal,
        now: Instant,
    ) {
        // What the core knows of the connection is not the authenticator's to change.
        principal.client_id = client_id.clone();
        principal.peer = self.peer;
        principal.transport = self.transport.clone();
        if principal.username.is_none() {
            principal.username = connect.username.as_ref().map(owned);
        }
        if principal.expires_at.is_some_and(|at| at <= now) {
            // Credentials that have expired already do not let a client in.
            return self.refuse(ReasonCode::NotAuthorized, now);
        }
        let Some(method) = connect.properties.authentication_method.clone() else {
            return self.accept(connect, principal, assigned, None, now);
        };
        // Enhanced authentication (MQTT 5 only: the property exists nowhere else).
        let Some(authenticator) = self.broker.hooks().enhanced_for(&method).cloned() else {
            return self.refuse(ReasonCode::BadAuthenticationMethod, now);
        };
        let mut exchange = authenticator.begin_for(&principal);
        let step = exchange.step(connect.properties.authentication_data.as_deref());
        self.connect_auth_step(
            PendingAuth {
                connect: Box::new(connect),
                principal,
                client_id,
                assigned,
                method,
                exchange,
                deadline: self.connect_deadline(now),
            },
            step,
            now,
        );
    }

    fn connect_deadline(&self, now: Instant) -> Instant {
        match &self.phase {
            Phase::AwaitingConnect { deadline } => *deadline,
            _ => now + self.broker.config().connect_timeout,
        }
    }

    /// The client identifier to use and whether the broker assigned it, or the CONNACK refusal.
    fn client_identifier(&self, connect: &Connect) -> Result<(MqttStr, bool), ReasonCode> {
        if connect.protocol == ProtocolVersion::V31 && connect.client_id.chars().count() > 23 {
            // MQTT 3.1 section 3.1: the identifier is 1 to 23 characters; longer is refused
            // with return code 2.
            return Err(ReasonCode::ClientIdentifierNotValid);
        }
        if let Some(bridge) = connect
            .client_id
            .strip_prefix(crate::hooks::BRIDGE_CLIENT_ID_PREFIX)
        {
            // Reserved for the bridge of that name, which the server connects in-process.
            let vouched = self
                .transport
                .as_ref()
                .and_then(|identity| identity.listener.as_deref())
                .and_then(|listener| listener.strip_prefix(crate::hooks::BRIDGE_LISTENER_PREFIX))
                == Some(bridge);
            if !vouched {
                return Err(ReasonCode::ClientIdentifierNotValid);
            }
        }
        if !connect.client_id.is_empty() {
            return Ok((owned_client_id(&connect.client_id), false));
        }
        match connect.protocol {
            // MQTT 3.1 requires 1 to 23 characters.
            ProtocolVersion::V31 => Err(ReasonCode::ClientIdentifierNotValid),
            // [MQTT-3.1.3-8]: an empty identifier needs clean session in 3.1.1.
            ProtocolVersion::V311 if !connect.clean_start => {
                Err(ReasonCode::ClientIdentifierNotValid)
            }
            // [MQTT-3.1.3-6, MQTT-3.1.3-7]: assign a unique one.
            _ => Ok((self.broker.assign_client_id(self.id), true)),
        }
    }

    /// Acts on one step of the exchange that authenticates a CONNECT.
    fn connect_auth_step(&mut self, pending: PendingAuth, step: AuthStep, now: Instant) {
        match step {
            AuthStep::Continue(data) => {
                self.send(
                    auth_packet(ReasonCode::ContinueAuthentication, &pending.method, data),
                    Seq::NONE,
                );
                self.phase = Phase::Authenticating(Box::new(pending));
            }
            AuthStep::Success(data) => {
                let PendingAuth {
                    connect,
                    mut principal,
                    client_id,
                    assigned,
                    method,
                    mut exchange,
                    ..
                } = pending;
                // What the exchange proved becomes the principal (section 4.12).
                if let Err(code) = exchange.authenticated(&mut principal) {
                    return self.refuse(connack_refusal(code), now);
                }
                principal.client_id = client_id;
                principal.peer = self.peer;
                principal.transport = self.transport.clone();
                if principal.expires_at.is_some_and(|at| at <= now) {
                    return self.refuse(ReasonCode::NotAuthorized, now);
                }
                self.accept(*connect, principal, assigned, Some((method, data)), now);
            }
            AuthStep::Failure(code) => self.refuse(code, now),
        }
    }

    /// AUTH from a client whose CONNECT is being authenticated.
    pub(crate) fn handle_connect_auth(
        &mut self,
        auth: Auth,
        mut pending: PendingAuth,
        now: Instant,
    ) {
        // Until CONNACK, a refusal is the only way to end it [MQTT-3.14.0-1].
        if auth.reason_code != ReasonCode::ContinueAuthentication
            || auth.properties.authentication_method.as_ref() != Some(&pending.method)
        {
            return self.refuse(ReasonCode::ProtocolError, now);
        }
        let step = pending
            .exchange
            .step(auth.properties.authentication_data.as_deref());
        self.connect_auth_step(pending, step, now);
    }

    /// Goes on with an authenticated CONNECT: checks its will and whether its session can be
    /// stored, then (in a cluster) claims the client id, then attaches the session.
    fn accept(
        &mut self,
        mut connect: Connect,
        client: Principal,
        assigned: bool,
        auth: Option<(MqttStr, Option<Bytes>)>,
        now: Instant,
    ) {
        let will = match self.prepare_will(connect.will.take(), &client, now) {
            Ok(will) => will,
            Err(code) => return self.refuse(code, now),
        };
        let config = self.broker.config();
        let expiry = if connect.protocol.is_v5() {
            SessionExpiry::from_interval(connect.properties.session_expiry_interval.unwrap_or(0))
        } else if connect.clean_start {
            SessionExpiry::AtDisconnect
        } else {
            config
                .persistent_session_expiry
                .map_or(SessionExpiry::Never, SessionExpiry::After)
        };
        // While the store's commits fail, the CONNACK of a persistent session would wait for
        // the session's write with no bound: refused instead (0x88, 3.x: 0x03 Server
        // unavailable), so the client retries later; clean sessions need no write.
        if expiry != SessionExpiry::AtDisconnect && self.broker.commits_failing() {
            return self.refuse(ReasonCode::ServerUnavailable, now);
        }
        let admitted = Admitted {
            connect,
            client,
            assigned,
            auth,
            will,
            expiry,
        };
        match self.broker.cluster().cloned() {
            None => self.admit(admitted, None, now),
            Some(hook) => self.claim(&*hook, admitted, now),
        }
    }

    /// Asks the cluster whether this node may own the client id (issue 16): granted now,
    /// refused, or pending until [`Connection::handle_claim_result`].
    fn claim(&mut self, hook: &dyn ClusterHook, admitted: Admitted, now: Instant) {
        let id = self.broker.defer_claim(self.wakeup.clone());
        let request = ClaimRequest {
            client_id: admitted.client.client_id.to_string(),
            clean_start: admitted.connect.clean_start,
            persistent: admitted.expiry != SessionExpiry::AtDisconnect,
            expiry: admitted.expiry,
            completion: ClaimCompletion {
                broker: Arc::downgrade(&self.broker),
                id,
            },
        };
        match hook.claim(request) {
            ClaimDecision::Granted => {
                let transfer = self.broker.forget_claim(id);
                self.admit(admitted, transfer, now);
            }
            ClaimDecision::Refused(code) => {
                let unclaimed = self.broker.forget_claim(id);
                self.broker.keep_unclaimed(unclaimed, now);
                self.refuse(claim_refusal(code), now);
            }
            ClaimDecision::Pending => {
                let deadline = self.connect_deadline(now);
                self.phase = Phase::Claiming(Box::new(Claiming {
                    admitted,
                    id,
                    deadline,
                    held: Vec::new(),
                }));
            }
        }
    }

    /// Takes the cluster's answer to the pending claim, if it came.
    pub(crate) fn collect_claim_result(&mut self, now: Instant) {
        let Phase::Claiming(claiming) = &self.phase else {
            return;
        };
        let id = claiming.id;
        if let Some(result) = self.broker.take_claim_result(id) {
            self.handle_claim_result(id, result, now);
        }
    }

    /// The cluster's answer to claim `id`: a grant attaches the session (first importing the
    /// one the previous owner handed over, if any) and sends CONNACK, then handles what the
    /// client sent meanwhile; a refusal is CONNACK with its code. An answer for another claim
    /// (stale, unknown) is ignored.
    pub fn handle_claim_result(
        &mut self,
        id: ClaimId,
        result: Result<ClaimGrant, ReasonCode>,
        now: Instant,
    ) {
        match &self.phase {
            Phase::Claiming(claiming) if claiming.id == id => {}
            _ => return,
        }
        let Phase::Claiming(claiming) = std::mem::replace(&mut self.phase, Phase::Closed) else {
            return;
        };
        // An answer that came through the broker meanwhile is superseded by this one; its
        // session (if any) is kept.
        let superseded = self.broker.forget_claim(id);
        self.broker.keep_unclaimed(superseded, now);
        let Claiming { admitted, held, .. } = *claiming;
        match result {
            Ok(grant) => self.admit(admitted, grant.transfer, now),
            Err(code) => self.refuse(claim_refusal(code), now),
        }
        for packet in held {
            self.handle_packet(packet, now);
        }
    }

    /// The will of a CONNECT, checked (access, QoS, retain) and prepared, or the CONNACK
    /// refusal.
    fn prepare_will(
        &self,
        will: Option<tern_codec::Will>,
        client: &Principal,
        now: Instant,
    ) -> Result<Option<Box<PreparedWill>>, ReasonCode> {
        let config = self.broker.config();
        let client_id = &client.client_id;
        Ok(match will {
            None => None,
            Some(will) => {
                let allowed = config.topic_within_limits(&will.topic)
                    && self.broker.authorizer().may_publish(client, &will.topic);
                if !allowed {
                    return Err(ReasonCode::NotAuthorized);
                }
                if will.qos > config.max_qos {
                    return Err(ReasonCode::QosNotSupported);
                }
                if will.retain && !config.retain_available {
                    return Err(ReasonCode::RetainNotSupported);
                }
                let delay = Duration::from_secs(u64::from(
                    will.properties.will_delay_interval.unwrap_or(0),
                ));
                let expiry_interval = will.properties.message_expiry_interval;
                let publish = tern_codec::Publish {
                    dup: false,
                    qos: will.qos,
                    retain: will.retain,
                    topic: will.topic,
                    packet_id: 0,
                    properties: will.properties,
                    payload: will.payload,
                };
                let mut message =
                    Message::from_publish(publish, Some(client_id.clone()), now).compacted();
                // The expiry of a will counts from when it is published, not from CONNECT.
                message.expires_at = None;
                Some(Box::new(PreparedWill {
                    message,
                    delay,
                    expiry_interval,
                }))
            }
        })
    }

    /// Completes an admitted CONNECT: the session (after importing `transfer`, a session
    /// handed over by the previous owner in a cluster), CONNACK.
    fn admit(&mut self, admitted: Admitted, transfer: Option<SessionTransfer>, now: Instant) {
        let Admitted {
            connect,
            client,
            assigned,
            auth,
            will,
            expiry,
        } = admitted;
        let version = connect.protocol;
        let broker = self.broker.clone();
        let config = broker.config();
        let client_id = client.client_id.clone();
        let session_expiry_interval = connect.properties.session_expiry_interval.unwrap_or(0);
        // A session handed over by the node that owned the client id: installed offline
        // here (in place of the shell the claim made, whose messages not handed over follow
        // the handed-over ones), so the attach below resumes it (session present, in-flight
        // messages re-sent with DUP [MQTT-4.4.0-1]). A clean start discards it anyway
        // [MQTT-3.1.2-4].
        let mut imported = Seq::NONE;
        if let Some(transfer) = transfer.filter(|_| !connect.clean_start) {
            if transfer.client_id != client_id {
                tracing::warn!(client_id = %client_id, "handed-over session of another client id ignored");
            } else {
                match broker.adopt_handed_over(transfer, now) {
                    Ok(seq) => imported = seq,
                    Err(error) => {
                        tracing::warn!(client_id = %client_id, %error, "handed-over session not imported");
                    }
                }
            }
        }

        // Server Keep Alive: MQTT 5 clients asking for more than the maximum (or none) get it.
        let mut keep_alive = connect.keep_alive;
        let mut server_keep_alive = None;
        if version.is_v5()
            && config.max_keep_alive > 0
            && (keep_alive == 0 || keep_alive > config.max_keep_alive)
        {
            keep_alive = config.max_keep_alive;
            server_keep_alive = Some(keep_alive);
        }

        let attached = broker.attach(
            &client_id,
            connect.clean_start,
            expiry,
            self.id,
            self.wakeup.clone(),
            now,
        );

        // The session keeps who its client is (partial subscriptions are checked against it,
        // and re-checks after a reload); a resumed session's subscriptions are judged again
        // for this principal, which may not be the last one's.
        let client = Arc::new(client);
        {
            let mut state = attached.session.lock();
            state.principal = Some(client.clone());
            attached.session.set_kicked(&mut state, None);
            state.connection = Some(crate::admin::ConnectionFacts {
                protocol: version,
                connected_at: now,
                keep_alive,
                clean_start: connect.clean_start,
            });
        }
        if attached.present {
            broker.recheck_session(&attached.session);
        }
        // What waits was routed for the session's last client (or, restored from the store,
        // for a client nobody has authenticated since): this one gets only what it may read.
        // Taken after the re-check: a message routed through a subscription as it was judged
        // for the last client sits below this mark (the re-check replaced each entry under the
        // index's write lock, which every routing holds for reading).
        let judge_below = {
            let state = attached.session.lock();
            let backlog = !state.queue.is_empty() || !state.inflight.is_empty();
            if attached.present && backlog {
                state.next_position.max(1)
            } else {
                0
            }
        };

        let mut properties = Properties::default();
        if version.is_v5() {
            properties =
                self.connack_properties(assigned.then(|| client_id.clone()), server_keep_alive);
            if let Some((method, data)) = &auth {
                properties.authentication_method = Some(method.clone());
                properties.authentication_data = data.clone();
            }
        }
        // The will of a persistent session is stored with it, to be published after a restart
        // as after a lost connection.
        let mut barrier = attached.seq.max(imported);
        let mut will_stored = false;
        if let Some(will) = &will {
            let state = attached.session.lock();
            if state.stores() {
                will_stored = true;
                let message = Arc::new(will.message.clone());
                barrier = barrier.max(broker.persist(|| Change::Will {
                    client_id: client_id.clone(),
                    message,
                    delay: will.delay,
                    expiry_interval: will.expiry_interval,
                }));
            }
        } else if attached.present {
            // A resumed session forgets the will its previous connection stored: published at
            // a take-over, or waiting for a delay the client came back within [MQTT-3.1.3-9],
            // it would otherwise be published (again) after a restart.
            let state = attached.session.lock();
            if state.stores() {
                barrier = barrier.max(broker.persist(|| Change::WillCleared {
                    client_id: client_id.clone(),
                }));
            }
        }
        let connack = ConnAck {
            // [MQTT-3.2.2-1, MQTT-3.2.2-2, MQTT-3.2.2-3]; MQTT 3.1 has no such flag.
            session_present: attached.present && version != ProtocolVersion::V31,
            reason_code: ReasonCode::Success,
            properties,
        };
        self.send(Packet::ConnAck(connack), barrier);
        broker
            .metrics()
            .bump(crate::metrics::Counter::ConnectionsAccepted);

        let props = &connect.properties;
        let receive_maximum = props.receive_maximum.unwrap_or(u16::MAX);
        let outbound_aliases = if version.is_v5() {
            props
                .topic_alias_maximum
                .unwrap_or(0)
                .min(config.outbound_topic_aliases)
        } else {
            0
        };
        self.client_id = Some(client_id);
        self.phase = Phase::Active(Box::new(Active {
            version,
            client,
            session: attached.session,
            // 1.5 times the keep-alive, in milliseconds [MQTT-3.1.2-24].
            keep_alive_limit: std::num::NonZeroU32::new(u32::from(keep_alive) * 1500),
            last_received: now,
            will,
            send_window: usize::from(receive_maximum.min(config.max_inflight)).max(1),
            client_max_packet_size: props.maximum_packet_size.unwrap_or(u32::MAX),
            session_expiry_interval,
            problem_information: props.request_problem_information.unwrap_or(true),
            inbound_aliases: None,
            outbound_aliases: crate::connection::OutboundAliases::new(outbound_aliases),
            auth: auth.map(|(method, _)| {
                Box::new(crate::connection::EnhancedAuth {
                    method,
                    reauth: None,
                })
            }),
            will_stored,
            storage_close_at: None,
            judge_below,
        }));
        // Messages queued while the client was away, and the in-flight ones to resend.
        self.wakeup.wake();
    }

    /// CONNACK properties that tell the truth about the configuration (section 3.2.2.3).
    fn connack_properties(
        &self,
        assigned: Option<MqttStr>,
        server_keep_alive: Option<u16>,
    ) -> Properties {
        let config = self.broker.config();
        let unless = |available: bool| (!available).then_some(false);
        Properties {
            assigned_client_identifier: assigned,
            server_keep_alive,
            maximum_packet_size: Some(config.max_packet_size),
            receive_maximum: (config.receive_maximum < u16::MAX).then_some(config.receive_maximum),
            topic_alias_maximum: (config.topic_alias_maximum > 0)
                .then_some(config.topic_alias_maximum),
            maximum_qos: (config.max_qos < QoS::ExactlyOnce).then_some(config.max_qos),
            retain_available: unless(config.retain_available),
            wildcard_subscription_available: unless(config.wildcard_subscriptions),
            subscription_identifier_available: unless(config.subscription_identifiers),
            shared_subscription_available: unless(config.shared_subscriptions),
            ..Properties::default()
        }
    }

    /// AUTH from an active client: re-authentication (section 4.12.1).
    pub(crate) fn handle_reauth(&mut self, auth: Auth, now: Instant) {
        let Phase::Active(active) = &mut self.phase else {
            return;
        };
        let Some(enhanced) = active.auth.as_deref_mut() else {
            return self.protocol_error(
                ReasonCode::ProtocolError,
                "AUTH without an authentication method at CONNECT",
                now,
            );
        };
        let method = enhanced.method.clone();
        if auth.properties.authentication_method.as_ref() != Some(&method) {
            return self.protocol_error(
                ReasonCode::ProtocolError,
                "AUTH with another authentication method",
                now,
            );
        }
        let step = match (auth.reason_code, enhanced.reauth.as_mut()) {
            (ReasonCode::ReAuthenticate, None) => {
                let Some(authenticator) = self.broker.hooks().enhanced_for(&method).cloned() else {
                    return self.protocol_error(
                        ReasonCode::BadAuthenticationMethod,
                        "method no longer configured",
                        now,
                    );
                };
                let mut exchange: Box<dyn AuthExchange> = authenticator.begin_for(&active.client);
                let step = exchange.step(auth.properties.authentication_data.as_deref());
                enhanced.reauth = Some(exchange);
                step
            }
            (ReasonCode::ContinueAuthentication, Some(exchange)) => {
                exchange.step(auth.properties.authentication_data.as_deref())
            }
            _ => {
                return self.protocol_error(ReasonCode::ProtocolError, "AUTH out of sequence", now);
            }
        };
        match step {
            AuthStep::Continue(data) => {
                self.send(
                    auth_packet(ReasonCode::ContinueAuthentication, &method, data),
                    Seq::NONE,
                );
            }
            AuthStep::Success(data) => {
                let Some(mut exchange) = enhanced.reauth.take() else {
                    return;
                };
                // The re-authentication's principal replaces the connection's: new access
                // rules, new expiry. A different user is refused: a connection does not
                // change users (its session, subscriptions and will are the first one's).
                let mut principal = Principal::clone(&active.client);
                if let Err(code) = exchange.authenticated(&mut principal) {
                    let code = if code.allowed_in(tern_codec::PacketType::Disconnect) {
                        code
                    } else {
                        ReasonCode::NotAuthorized
                    };
                    return self.protocol_error(code, "re-authentication refused", now);
                }
                principal.client_id = active.client.client_id.clone();
                principal.peer = active.client.peer;
                principal.transport = active.client.transport.clone();
                if principal.username != active.client.username {
                    return self.protocol_error(
                        ReasonCode::NotAuthorized,
                        "re-authentication as another user",
                        now,
                    );
                }
                if principal.expires_at.is_some_and(|at| at <= now) {
                    return self.protocol_error(
                        ReasonCode::NotAuthorized,
                        "re-authentication with expired credentials",
                        now,
                    );
                }
                let client = Arc::new(principal);
                active.client = client.clone();
                let session = active.session.clone();
                session.lock().principal = Some(client);
                self.broker.recheck_session(&session);
                self.send(auth_packet(ReasonCode::Success, &method, data), Seq::NONE);
            }
            AuthStep::Failure(code) => {
                let code = if code.allowed_in(tern_codec::PacketType::Disconnect) {
                    code
                } else {
                    ReasonCode::NotAuthorized
                };
                self.protocol_error(code, "re-authentication failed", now);
            }
        }
    }
}

#[cfg(test)]
mod client_id_tests {
    use super::*;

    /// Issue 14 (idle memory): a client identifier kept in one allocation is the same string
    /// as the CONNECT's, at every length around the limit of the short form, and its clones
    /// share it.
    #[test]
    fn owned_client_id_keeps_the_identifier() {
        for text in [
            "",
            "a",
            "tb1234-c9999",
            "é€𝄞-unicode",
            &"x".repeat(23),
            &"y".repeat(24),
            &"z".repeat(300),
        ] {
            let source = MqttStr::try_from(text).unwrap();
            let owned = owned_client_id(&source);
            assert_eq!(owned.as_str(), text);
            let clone = owned.clone();
            assert_eq!(clone.as_str().as_ptr(), owned.as_str().as_ptr());
        }
    }
}
