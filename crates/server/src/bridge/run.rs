//! The task of one bridge: the local in-process session ([`LocalSession`]) on one side, the
//! remote broker through tern-client on the other, and the acknowledgements tied across:
//!
//! - out: a message the local session delivers is published to the remote; the local PUBACK
//!   (QoS 1) or PUBREC (QoS 2) goes back only once the remote acknowledged it, so it leaves
//!   the bridge's stored session only then;
//! - in: a message from the remote is published into the local session; the remote gets its
//!   PUBACK / PUBREC (manual acknowledgement) only once the local core acknowledged it, which
//!   it does once the message is durable here.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tern_broker::Broker;
use tern_client::{Backoff, ClientError, Message, PublishOutcome};
use tern_codec::{Ack, MqttStr, Packet, Properties, Publish, QoS, Subscribe, Subscription};
use tokio::sync::watch;
use tokio::time::Instant;

use super::config::{BridgeConfig, local_client_id};
use super::local::LocalSession;
use super::mapping::{Mapper, forwarded};
use super::remote::{Remote, bridge_options};
use super::status::BridgeStatus;

/// The packet ids of the bridge's local SUBSCRIBE and UNSUBSCRIBE; local PUBLISH ids are
/// taken above them.
const SUBSCRIBE_ID: u16 = 1;
const UNSUBSCRIBE_ID: u16 = 2;
/// How long a stopping bridge waits for the local acknowledgements of messages from the
/// remote already handed to the core, so that the remote does not send them again.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

type RemoteDone =
    Pin<Box<dyn Future<Output = (u16, QoS, Result<PublishOutcome, ClientError>)> + Send>>;

/// Messages from the local session on their way to the remote.
#[derive(Default)]
struct Outbound {
    /// Local packet ids the remote has not acknowledged yet: a copy the core sends again (DUP,
    /// after the local session was resumed) is not published twice.
    pending: HashSet<u16>,
    /// The remote's acknowledgements to come.
    done: FuturesUnordered<RemoteDone>,
}

/// Messages from the remote on their way into the local session.
pub(super) struct Inbound {
    /// Published here, not acknowledged here yet, by local packet id: the publish (sent again
    /// if the local connection is resumed), the remote message (to acknowledge), its order.
    pub(super) pending: HashMap<u16, (Publish, Message, u64)>,
    /// QoS 2: PUBREL sent to the core, PUBCOMP awaited.
    released: HashSet<u16>,
    next_id: u16,
    pub(super) next_order: u64,
    /// The most in flight at once: `max_inflight`, or the core's Receive Maximum if smaller.
    window: usize,
}

impl Inbound {
    fn new() -> Inbound {
        Inbound {
            pending: HashMap::new(),
            released: HashSet::new(),
            next_id: UNSUBSCRIBE_ID,
            next_order: 0,
            window: 1,
        }
    }

    /// A packet id free in the local session (never [`SUBSCRIBE_ID`] or [`UNSUBSCRIBE_ID`]).
    pub(super) fn allocate(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_id = match self.next_id.checked_add(1) {
                Some(id) => id,
                None => UNSUBSCRIBE_ID + 1,
            };
            let id = self.next_id;
            if !self.pending.contains_key(&id) && !self.released.contains(&id) {
                return Some(id);
            }
        }
        None
    }

    fn in_flight(&self) -> usize {
        self.pending.len() + self.released.len()
    }
}

/// One configured bridge, ready to run.
pub(crate) struct Bridge {
    pub(super) config: BridgeConfig,
    pub(super) broker: Arc<Broker>,
    pub(super) status: Arc<BridgeStatus>,
    pub(super) mapper: Mapper,
}

impl Bridge {
    pub(crate) fn new(
        config: BridgeConfig,
        broker: Arc<Broker>,
        status: Arc<BridgeStatus>,
    ) -> Bridge {
        let mapper = Mapper::new(&config.topics);
        Bridge {
            config,
            broker,
            status,
            mapper,
        }
    }

    pub(super) fn backoff(&self) -> Backoff {
        Backoff {
            initial: self.config.reconnect_min(),
            max: self.config.reconnect_max(),
            factor: 2.0,
            jitter: 0.25,
        }
    }

    pub(super) fn name(&self) -> &str {
        &self.config.name
    }

    /// Runs the bridge until `stop` turns true (or its sender goes away).
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut inbound = Inbound::new();
        let Some(mut local) = self.open_local(&mut inbound, &mut stop).await else {
            return;
        };
        let mut remote = match self.start_remote() {
            Ok(remote) => remote,
            Err(error) => {
                tracing::error!(bridge = self.name(), %error, "bridge cannot start");
                self.status.set_error(error.to_string());
                local.disconnect(std::time::Instant::now());
                return;
            }
        };
        tracing::info!(
            bridge = self.name(),
            address = %self.config.address_list().join(","),
            "bridge connecting"
        );
        let mut outbound = Outbound::default();
        let mut packets = Vec::new();
        loop {
            let now = Instant::now();
            if let Err(error) = local.poll(now.into_std(), &mut packets) {
                tracing::warn!(bridge = self.name(), %error, "bridge's local connection failed");
                local.disconnect(now.into_std());
            }
            let again = !packets.is_empty();
            for packet in packets.drain(..) {
                self.on_local(packet, &mut local, &remote, &mut outbound, &mut inbound)
                    .await;
            }
            if local.close_reason().is_some() {
                tracing::warn!(
                    bridge = self.name(),
                    reason = %local.close_reason().map(ToString::to_string).unwrap_or_default(),
                    "bridge's local connection ended; reconnecting it"
                );
                match self.open_local(&mut inbound, &mut stop).await {
                    Some(reopened) => local = reopened,
                    None => break,
                }
                continue;
            }
            let taking_in = inbound.in_flight() < inbound.window && local.wants_input();
            let deadline = local.deadline().map(Instant::from_std);
            let wakeup = local.wakeup();
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
                () = wakeup.0.notified() => {}
                () = sleep_until(deadline), if deadline.is_some() => {}
                Some((id, qos, result)) = outbound.done.next(), if !outbound.done.is_empty() => {
                    self.remote_acknowledged(id, qos, result, &mut local, &mut outbound);
                }
                event = remote.events.recv(), if taking_in => match event {
                    Some(event) => {
                        self.on_remote(event, &mut local, &mut remote, &mut inbound).await;
                    }
                    None => {
                        tracing::error!(bridge = self.name(), "bridge's client ended");
                        break;
                    }
                },
                () = std::future::ready(()), if again => {}
            }
        }
        self.finish(local, remote, &mut inbound, &mut outbound)
            .await;
    }

    /// Connects the local session (again), subscribes the `out` rules, and hands the core
    /// again what it had not acknowledged. `None` when the bridge is stopped meanwhile.
    async fn open_local(
        &self,
        inbound: &mut Inbound,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<LocalSession> {
        let mut attempt = 0u32;
        loop {
            match self.connect_local().await {
                Ok((mut local, window)) => {
                    inbound.window = usize::from(window.min(self.config.max_inflight).max(1));
                    let now = std::time::Instant::now();
                    self.subscribe_local(&mut local, now);
                    let mut order: Vec<_> = inbound.pending.values().collect();
                    order.sort_by_key(|(_, _, order)| *order);
                    for (publish, _, _) in order {
                        let mut publish = publish.clone();
                        publish.dup = true;
                        local.handle(Packet::Publish(publish), now);
                    }
                    for id in &inbound.released {
                        local.handle(Packet::PubRel(Ack::new(*id)), now);
                    }
                    return Some(local);
                }
                Err(error) => {
                    tracing::error!(bridge = self.name(), %error, "bridge's local connection refused");
                    self.status.set_error(error);
                }
            }
            let delay = self.backoff().delay(attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return None;
                    }
                }
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One attempt at the local CONNECT, waiting for its CONNACK (an authentication may be
    /// deferred; the core's connect timeout bounds it).
    async fn connect_local(&self) -> Result<(LocalSession, u16), String> {
        let client_id = local_client_id(self.name());
        let mut local = LocalSession::connect(
            self.broker.clone(),
            self.name(),
            &client_id,
            self.config.local_username.as_deref(),
            self.config.max_inflight,
            std::time::Instant::now(),
        )
        .map_err(|error| error.to_string())?;
        let mut packets = Vec::new();
        loop {
            local
                .poll(std::time::Instant::now(), &mut packets)
                .map_err(|error| error.to_string())?;
            let mut packets = packets.drain(..);
            while let Some(packet) = packets.next() {
                if let Packet::ConnAck(connack) = packet {
                    if connack.reason_code.is_error() {
                        return Err(format!("CONNACK {}", connack.reason_code));
                    }
                    // What came behind the CONNACK (a resumed session's messages) is the
                    // run loop's.
                    local.give_back(packets);
                    // The core's Receive Maximum bounds what the bridge publishes into it.
                    let window = connack.properties.receive_maximum.unwrap_or(u16::MAX);
                    return Ok((local, window));
                }
            }
            drop(packets);
            if let Some(reason) = local.close_reason() {
                return Err(reason.to_string());
            }
            let deadline = local.deadline().map(Instant::from_std);
            let wakeup = local.wakeup();
            tokio::select! {
                () = wakeup.0.notified() => {}
                () = sleep_until(deadline) => {}
            }
        }
    }

    /// The local subscriptions of the `out` rules: no local (what the bridge publishes here,
    /// the `in` traffic, never goes back out), retain as published, retained messages once
    /// per new subscription.
    fn subscribe_local(&self, local: &mut LocalSession, now: std::time::Instant) {
        let subscriptions: Vec<Subscription> = self
            .mapper
            .local_filters()
            .filter_map(|(filter, qos)| {
                Some(Subscription {
                    filter: MqttStr::try_from(filter).ok()?,
                    options: bridge_options(qos),
                })
            })
            .collect();
        // Filters of an earlier configuration (the bridge changed; its session stayed) go.
        let stale: Vec<MqttStr> = self
            .broker
            .subscriptions_of(&local_client_id(self.name()))
            .unwrap_or_default()
            .into_iter()
            .map(|(filter, _)| filter)
            .filter(|filter| !subscriptions.iter().any(|s| s.filter == *filter))
            .collect();
        if !stale.is_empty() {
            local.handle(
                Packet::Unsubscribe(tern_codec::Unsubscribe {
                    packet_id: UNSUBSCRIBE_ID,
                    properties: Properties::default(),
                    filters: stale,
                }),
                now,
            );
        }
        if subscriptions.is_empty() {
            return;
        }
        local.handle(
            Packet::Subscribe(Subscribe {
                packet_id: SUBSCRIBE_ID,
                properties: Properties::default(),
                subscriptions,
            }),
            now,
        );
    }

    /// A packet the core sent to the bridge.
    async fn on_local(
        &self,
        packet: Packet,
        local: &mut LocalSession,
        remote: &Remote,
        outbound: &mut Outbound,
        inbound: &mut Inbound,
    ) {
        let now = std::time::Instant::now();
        tracing::trace!(bridge = self.name(), ?packet, "from the local session");
        match packet {
            Packet::Publish(publish) => self.forward_out(publish, local, remote, outbound).await,
            Packet::PubRel(ack) => local.handle(Packet::PubComp(Ack::new(ack.packet_id)), now),
            Packet::PubAck(ack) => {
                if let Some((_, message, _)) = inbound.pending.remove(&ack.packet_id) {
                    if ack.reason_code.is_error() {
                        self.refused_here(&message, ack.reason_code);
                    }
                    let _ = remote.client.ack(&message).await;
                }
            }
            Packet::PubRec(ack) => {
                if let Some((_, message, _)) = inbound.pending.remove(&ack.packet_id) {
                    if ack.reason_code.is_error() {
                        self.refused_here(&message, ack.reason_code);
                    } else {
                        inbound.released.insert(ack.packet_id);
                        local.handle(Packet::PubRel(Ack::new(ack.packet_id)), now);
                    }
                    let _ = remote.client.ack(&message).await;
                }
            }
            Packet::PubComp(ack) => {
                inbound.released.remove(&ack.packet_id);
            }
            Packet::SubAck(suback) => {
                let filters: Vec<&str> = self.mapper.local_filters().map(|(f, _)| f).collect();
                for (filter, code) in filters.iter().zip(&suback.reason_codes) {
                    if code.is_error() {
                        tracing::warn!(
                            bridge = self.name(),
                            filter,
                            code = %code,
                            "bridge's local subscription refused (access rules of local_username?)"
                        );
                    }
                }
            }
            _ => {}
        }
    }

    /// A message from the local session for the remote broker.
    async fn forward_out(
        &self,
        publish: Publish,
        local: &mut LocalSession,
        remote: &Remote,
        outbound: &mut Outbound,
    ) {
        let id = publish.packet_id;
        let qos = publish.qos;
        if qos != QoS::AtMostOnce && outbound.pending.contains(&id) {
            // Sent again by the core (the local session resumed): already on its way.
            return;
        }
        let Some((topic, _)) = self.mapper.to_remote(&publish.topic) else {
            // No rule names it any more: done with it.
            local_ack(local, id, qos);
            return;
        };
        let bytes = publish.payload.len();
        let message = Message {
            topic,
            payload: publish.payload,
            qos,
            retain: publish.retain,
            properties: forwarded(publish.properties),
            ..Message::default()
        };
        match remote.client.publish(message).await {
            Ok(pending) => {
                self.status.carried_out(bytes);
                if qos != QoS::AtMostOnce {
                    outbound.pending.insert(id);
                    outbound
                        .done
                        .push(Box::pin(async move { (id, qos, pending.await) }));
                }
            }
            Err(error) => {
                tracing::warn!(bridge = self.name(), %error, "message not carried to the remote");
                self.status.refused();
                local_ack(local, id, qos);
            }
        }
    }

    /// The remote answered a message of the local session's: the core may forget it.
    fn remote_acknowledged(
        &self,
        id: u16,
        qos: QoS,
        result: Result<PublishOutcome, ClientError>,
        local: &mut LocalSession,
        outbound: &mut Outbound,
    ) {
        match result {
            // The client ended (the bridge stops): the message stays in the stored session,
            // to go after the next start.
            Err(ClientError::Closed) => return,
            Err(error) => {
                tracing::warn!(bridge = self.name(), %error, "message not carried to the remote");
                self.status.refused();
            }
            Ok(outcome) if outcome.reason_code.is_error() => {
                tracing::debug!(bridge = self.name(), code = %outcome.reason_code, "the remote refused a message");
                self.status.refused();
            }
            Ok(_) => {}
        }
        outbound.pending.remove(&id);
        local_ack(local, id, qos);
    }

    fn refused_here(&self, message: &Message, code: tern_codec::ReasonCode) {
        self.status.refused();
        tracing::debug!(bridge = self.name(), topic = %message.topic, %code, "a message from the remote was refused here");
    }

    /// The bridge stops: the messages in flight either way are given a moment to be
    /// acknowledged (so that neither side gets them again after the next start), then both
    /// sides are disconnected normally. The local session stays, with its queue. New messages
    /// from the local session are not taken meanwhile (they stay in it).
    async fn finish(
        &self,
        mut local: LocalSession,
        remote: Remote,
        inbound: &mut Inbound,
        outbound: &mut Outbound,
    ) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut packets = Vec::new();
        let mut ignored = Outbound::default();
        while (inbound.in_flight() > 0 || !outbound.done.is_empty())
            && Instant::now() < deadline
            && local.close_reason().is_none()
        {
            if local.poll(std::time::Instant::now(), &mut packets).is_err() {
                break;
            }
            let handled = !packets.is_empty();
            for packet in packets.drain(..) {
                if !matches!(packet, Packet::Publish(_)) {
                    self.on_local(packet, &mut local, &remote, &mut ignored, inbound)
                        .await;
                }
            }
            if handled {
                continue;
            }
            let wakeup = local.wakeup();
            tokio::select! {
                () = wakeup.0.notified() => {}
                () = tokio::time::sleep_until(deadline) => {}
                Some((id, qos, result)) = outbound.done.next(), if !outbound.done.is_empty() => {
                    self.remote_acknowledged(id, qos, result, &mut local, outbound);
                }
            }
        }
        local.disconnect(std::time::Instant::now());
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, remote.client.disconnect()).await;
        self.status.set_connected(false);
        tracing::info!(bridge = self.name(), "bridge stopped");
    }
}

/// Tells the core the bridge is done with one of its messages (QoS 1 PUBACK, QoS 2 PUBREC).
fn local_ack(local: &mut LocalSession, id: u16, qos: QoS) {
    let now = std::time::Instant::now();
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => local.handle(Packet::PubAck(Ack::new(id)), now),
        QoS::ExactlyOnce => local.handle(Packet::PubRec(Ack::new(id)), now),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
