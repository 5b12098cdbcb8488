//! What goes to the client: control packets first, then the session's messages — those to send
//! again after a reconnect, then new ones while the in-flight window allows — encoded straight
//! into the caller's write buffer, up to a byte budget per call.

use std::time::Instant;

use bytes::BytesMut;
use tern_codec::{Ack, MqttStr, Packet, PlainPublish, Properties, ProtocolVersion, Publish, QoS};

use crate::broker::Broker;
use crate::connection::{Active, Connection, Phase};
use crate::message::Delivery;
use crate::persist::{Change, RoutedBody};
use crate::session::{Inflight, Kick, QueuedDelivery, SessionState, belongs_in_store};
use crate::types::{InflightState, Seq};
use crate::unstored::Durability;

/// Builds the PUBLISH of `delivery` for a client of `version`. `alias` is the topic alias to use
/// and whether the client already knows it (then the topic is left out).
fn publish_packet(
    delivery: &Delivery,
    packet_id: u16,
    dup: bool,
    version: ProtocolVersion,
    alias: Option<(u16, bool)>,
    now: Instant,
) -> Packet {
    let message = &delivery.message;
    let mut topic = message.topic.clone();
    let properties = if version.is_v5() {
        let mut properties = message.properties.as_deref().cloned().unwrap_or_default();
        // Forwarded with the time it has left [MQTT-3.3.2-6].
        properties.message_expiry_interval = message.remaining_expiry(now);
        // The identifiers of the matching subscriptions [MQTT-3.3.4-3].
        properties.subscription_identifiers = delivery.subscription_ids.as_slice().to_vec();
        if let Some((alias, known)) = alias {
            properties.topic_alias = Some(alias);
            if known {
                topic = MqttStr::default();
            }
        }
        properties
    } else {
        Properties::default()
    };
    Packet::Publish(Publish {
        dup,
        qos: delivery.qos,
        retain: delivery.retain,
        topic,
        packet_id: if delivery.qos == QoS::AtMostOnce {
            0
        } else {
            packet_id
        },
        properties,
        payload: message.payload.clone(),
    })
}

/// Whether `packet` exceeds the client's Maximum Packet Size [MQTT-3.1.2-24].
fn too_large(packet: &Packet, version: ProtocolVersion, max: u32) -> bool {
    max != u32::MAX
        && packet
            .encoded_len(version)
            .is_ok_and(|len| len > max as usize)
}

impl Connection {
    /// Appends what is ready to send to `buf`, stopping once `buf` holds `budget` bytes.
    /// Returns true when more is ready than fit: call again once `buf` has been written.
    /// Packets that wait for the store stay back (the connection is woken when they may go).
    pub fn poll_transmit(&mut self, buf: &mut BytesMut, budget: usize, now: Instant) -> bool {
        match self.phase {
            // The answer to a deferred authentication, if it came while the connection waited.
            Phase::Deciding(_) => self.collect_auth_result(now),
            // The cluster's answer to the claim of the client id.
            Phase::Claiming(_) => self.collect_claim_result(now),
            _ => {}
        }
        let durable = self.broker.durable();
        while let Some((packet, barrier)) = self.outbox.front() {
            // A gate's last delivery wakes the connection when it closes; a route's decision
            // wakes it too.
            let Some(barrier) = barrier.seq() else {
                if matches!(barrier, crate::unstored::Barrier::Routes(..)) {
                    // The retained messages of the new subscription follow its SUBACK: no
                    // delivery overtakes a SUBACK waiting for the cluster.
                    return false;
                }
                break;
            };
            if barrier > durable {
                // Nothing may reach the client before its CONNACK.
                let before_connack = matches!(packet, Packet::ConnAck(_));
                self.wait_for_store(barrier);
                if before_connack {
                    return false;
                }
                break;
            }
            let Some((mut packet, barrier)) = self.outbox.pop_front() else {
                break;
            };
            if let crate::unstored::Barrier::Routes(_, routes) = &barrier {
                self.refuse_unrouted(&mut packet, routes);
            }
            self.encode_control(packet, buf);
            if buf.len() >= budget {
                return !self.outbox.is_empty() || self.is_active();
            }
        }
        let Phase::Active(active) = &mut self.phase else {
            return false;
        };
        // Cluster: past the node's lease, the client may be connected elsewhere: nothing more
        // is sent to it here.
        let lease_ran_out = self.broker.lease_ran_out(now);
        let session = active.session.clone();
        let mut state = session.lock();
        if lease_ran_out || !state.owned_by(self.id) || state.kicked.is_some() {
            let kicked = if lease_ran_out {
                Some(Kick::LeaseLost)
            } else {
                state.kicked
            };
            drop(state);
            self.close_displaced(kicked, now);
            // The DISCONNECT, and what was ready before it; an acknowledgement whose message is
            // not yet durable (or delivered) is not earned, and the client resends that PUBLISH
            // on the connection that took over [MQTT-4.4.0-1].
            let durable = self.broker.durable();
            while let Some((packet, barrier)) = self.outbox.pop_front() {
                if barrier.passed(durable) {
                    self.encode_control(packet, buf);
                }
            }
            return false;
        }
        let mut out = Transmit {
            broker: &self.broker,
            active,
            client_id: session.client_id(),
            buf,
            budget,
            now,
            durable,
            waiting_for: None,
        };
        let more = out.messages(&mut state);
        let waiting_for = out.waiting_for;
        drop(state);
        if let Some(seq) = waiting_for {
            self.wait_for_store(seq);
        }
        more
    }

    /// Asks the store to wake the connection once `seq` is durable (once per sequence number).
    pub(crate) fn wait_for_store(&mut self, seq: Seq) {
        if seq <= self.waiting_for_store {
            return;
        }
        self.waiting_for_store = seq;
        if let Some(persistence) = self.broker.persistence() {
            persistence.wake_when_durable(seq, self.wakeup.clone());
        }
    }

    fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Active(_))
    }

    /// Encodes a control packet. One over the client's maximum packet size loses its reason
    /// string and user properties; if it is still too large it is dropped [MQTT-3.1.2-24].
    /// A SUBACK whose filters waited for the cluster: each filter whose route could not be
    /// committed (no quorum) is answered 0x80 and its subscription removed again, so the
    /// client retries it later instead of believing it is served cluster-wide.
    fn refuse_unrouted(
        &mut self,
        packet: &mut Packet,
        routes: &[(
            usize,
            tern_codec::MqttStr,
            std::sync::Arc<crate::cluster_hook::RouteTicket>,
        )],
    ) {
        let Packet::SubAck(suback) = packet else {
            return;
        };
        let Phase::Active(active) = &self.phase else {
            return;
        };
        let session = active.session.clone();
        for (position, filter, ticket) in routes {
            if ticket.decided() == Some(false) {
                if let Some(code) = suback.reason_codes.get_mut(*position) {
                    *code = tern_codec::ReasonCode::UnspecifiedError;
                }
                self.broker.unsubscribe(&session, filter);
            }
        }
    }

    fn encode_control(&self, mut packet: Packet, buf: &mut BytesMut) {
        if let Phase::Active(active) = &self.phase {
            if active.session.traced() {
                crate::admin::trace_packet(self.client_id.as_ref(), "out", &packet);
            }
            let max = active.client_max_packet_size;
            if too_large(&packet, self.version, max) {
                strip_problem_information(&mut packet);
            }
            if too_large(&packet, self.version, max) {
                tracing::debug!(client_id = ?self.client_id, packet = ?packet.packet_type(), "packet over the client's maximum size dropped");
                return;
            }
        }
        if let Err(error) = packet.encode(self.version, buf) {
            // Only packets the broker built itself reach here; a failure is a bug, not input.
            tracing::error!(%error, packet = ?packet.packet_type(), "cannot encode packet");
        }
    }
}

/// One round of sending the session's messages into the write buffer.
struct Transmit<'a> {
    broker: &'a Broker,
    active: &'a mut Active,
    client_id: &'a MqttStr,
    buf: &'a mut BytesMut,
    budget: usize,
    now: Instant,
    /// The durable store sequence number at the start of the round.
    durable: Seq,
    /// Set when a message waits for the store.
    waiting_for: Option<Seq>,
}

impl Transmit<'_> {
    fn full(&self) -> bool {
        self.buf.len() >= self.budget
    }

    /// Sends the in-flight entries that wait to go out (in order), then queued messages while
    /// the in-flight window allows. Returns true when the budget ran out with more to send.
    fn messages(&mut self, state: &mut SessionState) -> bool {
        if state.pending > 0 && !self.pending_inflight(state) {
            // Something waits (budget, store or window); nothing overtakes it. Only the budget
            // makes it worth calling again at once.
            return self.full() && self.waiting_for.is_none();
        }
        self.queued(state)
    }

    /// Returns true when every pending entry went out.
    fn pending_inflight(&mut self, state: &mut SessionState) -> bool {
        let window = self.active.send_window;
        let mut dropped = Vec::new();
        let mut sent = 0;
        for (index, entry) in state
            .inflight
            .iter_mut()
            .enumerate()
            .filter(|(_, entry)| entry.pending)
        {
            if entry.send_after > self.durable {
                self.waiting_for = Some(entry.send_after);
                break;
            }
            // A session resumed with a smaller Receive Maximum than its messages went out
            // under: only the oldest `window` of them are sent again now, the others as
            // acknowledgements make room [MQTT-3.3.4-7]. (Every message sent on this
            // connection sits within the first `window` entries, so the client never has more
            // unacknowledged.)
            if index >= window {
                break;
            }
            if self.full() {
                break;
            }
            entry.pending = false;
            sent += 1;
            match entry.state {
                // A resent PUBLISH keeps its identifier and has DUP set [MQTT-4.4.0-1,
                // MQTT-3.3.1-1].
                InflightState::AwaitingPubAck | InflightState::AwaitingPubRec => {
                    let id = entry.packet_id;
                    if self.active.judge_below != 0 && !self.may_read(&entry.delivery) {
                        // Sent to the session's last client; not for this one.
                        self.broker
                            .metrics()
                            .bump(crate::metrics::Counter::MessagesDroppedDenied);
                        dropped.push(id);
                        continue;
                    }
                    if !self.send_publish(&entry.delivery, id, entry.dup) {
                        dropped.push(id);
                    }
                    entry.dup = true;
                }
                InflightState::AwaitingPubComp => {
                    let pubrel = Packet::PubRel(Ack::new(entry.packet_id));
                    if let Err(error) = pubrel.encode(self.active.version, self.buf) {
                        tracing::error!(%error, "cannot encode PUBREL");
                    }
                }
            }
        }
        state.pending -= sent;
        for packet_id in dropped {
            let entry = state
                .inflight_position(packet_id)
                .and_then(|index| state.remove_inflight(index));
            if entry.is_some_and(|entry| entry.durability.is_stored()) {
                self.broker.persist(|| Change::InflightDone {
                    client_id: self.client_id.clone(),
                    packet_id,
                });
            }
        }
        state.pending == 0
    }

    /// Whether the connection's client may read the delivery's topic (for what was queued
    /// before it took the session up).
    fn may_read(&self, delivery: &Delivery) -> bool {
        self.broker
            .authorizer()
            .may_read(&self.active.client, &delivery.message.topic)
    }

    /// Sends queued messages in order, taking turns with the retained sets being streamed for
    /// new subscriptions; QoS 1/2 ones enter the in-flight window.
    fn queued(&mut self, state: &mut SessionState) -> bool {
        let metrics = self.broker.metrics();
        loop {
            if self.full() {
                return !state.queue.is_empty() || state.retained.is_some();
            }
            let Some((position, delivery, durability)) = self.next_delivery(state) else {
                self.active.judge_below = 0;
                return false;
            };
            let judged = position.is_some_and(|position| position < self.active.judge_below);
            if position.is_some() && !judged {
                // The queue has moved past what was there when the client took the session up.
                self.active.judge_below = 0;
            }
            // An unstored delivery goes in flight unstored; dropped, it just lets go of its
            // publisher's acknowledgement.
            let stored = durability.is_stored();
            if durability.is_unstored() {
                // Counted again if it goes in flight.
                state.unstored = state.unstored.saturating_sub(1);
            }
            // A queued delivery dropped unsent only leaves the queue; one that is sent moves in
            // flight with `Change::Dispatched`. A streamed retained one is not in the store
            // before it is sent.
            let unqueued = |position: Option<u64>| {
                if let Some(position) = position.filter(|_| stored) {
                    self.broker.persist(|| Change::Unqueued {
                        client_id: self.client_id.clone(),
                        position,
                    });
                }
            };
            if delivery.message.is_expired(self.now) {
                // An expired message is not delivered [MQTT-3.3.2-5].
                metrics.bump(crate::metrics::Counter::MessagesDroppedExpired);
                unqueued(position);
                continue;
            }
            if judged && !self.may_read(&delivery) {
                metrics.bump(crate::metrics::Counter::MessagesDroppedDenied);
                unqueued(position);
                continue;
            }
            if delivery.qos == QoS::AtMostOnce {
                self.send_publish(&delivery, 0, false);
                continue;
            }
            let max = self.active.client_max_packet_size;
            if max != u32::MAX {
                let probe =
                    publish_packet(&delivery, 1, false, self.active.version, None, self.now);
                if too_large(&probe, self.active.version, max) {
                    // Dropped as if it had been sent [MQTT-3.1.2-25].
                    metrics.bump(crate::metrics::Counter::MessagesDroppedTooLarge);
                    unqueued(position);
                    continue;
                }
            }
            let packet_id = state.allocate_packet_id();
            let waiting = if delivery.qos == QoS::AtLeastOnce {
                InflightState::AwaitingPubAck
            } else {
                InflightState::AwaitingPubRec
            };
            let seq = if stored {
                // Unstored deliveries sent before it reach the store before it does.
                state.store_unstored_inflight(self.client_id, self.broker.persistence());
                self.store_dispatched(position, packet_id, waiting, &delivery)
            } else {
                Seq::NONE
            };
            // A QoS 2 PUBLISH goes out only once its identifier is durable, so a restart cannot
            // make the client see it twice.
            let gated = waiting == InflightState::AwaitingPubRec && seq > self.durable;
            if !gated {
                self.send_publish(&delivery, packet_id, false);
            }
            if durability.is_unstored() {
                state.unstored += 1;
            }
            state.push_inflight(Inflight {
                packet_id,
                delivery,
                state: waiting,
                pending: gated,
                dup: !gated,
                send_after: seq,
                durability,
            });
            if gated {
                state.pending += 1;
                self.waiting_for = Some(seq);
                return false;
            }
        }
    }

    /// The next delivery to send — its queue position (none for a streamed retained message)
    /// and its durability (for a streamed one, whether it is to be stored when it goes in
    /// flight) — from the queue or a retained stream, whichever may go;
    /// when both may, they take turns. A QoS 1/2 delivery waits while the in-flight window is
    /// full, and nothing in the queue overtakes one that waits.
    fn next_delivery(
        &mut self,
        state: &mut SessionState,
    ) -> Option<(Option<u64>, Delivery, Durability)> {
        let window_full = state.inflight.len() >= self.active.send_window;
        let may_go = |qos: QoS| !window_full || qos == QoS::AtMostOnce;
        let queue_ready = state
            .queue
            .front()
            .is_some_and(|front| may_go(front.delivery.qos));
        let streams = state.retained.as_mut();
        let stream_qos = streams.and_then(|streams| streams.next_qos(self.broker));
        if stream_qos.is_none() {
            // Every retained set has been sent.
            state.retained = None;
        }
        let stream_ready = stream_qos.is_some_and(may_go);
        let from_stream = match (queue_ready, stream_ready) {
            (false, false) => return None,
            (true, false) => false,
            (false, true) => true,
            (true, true) => state.retained.as_mut().is_some_and(|s| s.take_turn()),
        };
        if from_stream {
            let mut delivery = state.retained.as_mut()?.take(self.broker)?;
            if delivery.qos != QoS::AtMostOnce && delivery.message.id == 0 {
                // Stored in flight under its body, if the session is stored.
                delivery.message.to_mut().id = self.broker.new_message_id();
            }
            let durability = if state.stores() && belongs_in_store(&delivery) {
                Durability::Stored
            } else {
                Durability::Volatile
            };
            return Some((None, delivery, durability));
        }
        let QueuedDelivery {
            position,
            delivery,
            durability,
        } = state.queue.pop_front()?;
        Some((Some(position), delivery, durability))
    }

    /// Submits a delivery going in flight: a queued one moves from the queue in one change; a
    /// streamed retained one is stored with its body, as the router would store it.
    fn store_dispatched(
        &self,
        position: Option<u64>,
        packet_id: u16,
        waiting: InflightState,
        delivery: &Delivery,
    ) -> Seq {
        let client_id = || self.client_id.clone();
        match position {
            Some(position) => self.broker.persist(|| Change::Dispatched {
                client_id: client_id(),
                position,
                packet_id,
                state: waiting,
                delivery: delivery.stored(),
            }),
            None => {
                let mut body = RoutedBody::new(self.broker.persistence());
                body.hold(&delivery.message);
                self.broker.persist(|| Change::Inflight {
                    client_id: client_id(),
                    packet_id,
                    state: waiting,
                    delivery: delivery.stored(),
                })
            }
        }
    }

    /// Encodes the PUBLISH of a delivery, with a topic alias when the client takes them.
    /// Returns false when the packet exceeds the client's Maximum Packet Size: it is then
    /// dropped as if it had been sent [MQTT-3.1.2-25].
    fn send_publish(&mut self, delivery: &Delivery, packet_id: u16, dup: bool) -> bool {
        let active = &mut *self.active;
        let metrics = self.broker.metrics();
        let topic = &delivery.message.topic;
        let alias = active.outbound_aliases.alias_for(topic);
        if alias.is_none() && !active.session.traced() {
            if let Some(plain) = plain_publish(delivery, packet_id, dup, active.version) {
                return self.send_plain(plain, delivery);
            }
        }
        let packet = publish_packet(delivery, packet_id, dup, active.version, alias, self.now);
        if active.session.traced() {
            crate::admin::trace_packet(Some(active.session.client_id()), "out", &packet);
        }
        if too_large(&packet, active.version, active.client_max_packet_size) {
            metrics.bump(crate::metrics::Counter::MessagesDroppedTooLarge);
            return false;
        }
        match packet.encode(active.version, self.buf) {
            Ok(()) => {
                if let Some((alias, false)) = alias {
                    active.outbound_aliases.confirm(topic, alias);
                }
                metrics.sent(delivery.qos, delivery.message.payload.len());
                true
            }
            Err(error) => {
                tracing::error!(%error, "cannot encode PUBLISH");
                false
            }
        }
    }
}

impl Transmit<'_> {
    /// [`Transmit::send_publish`] for a PUBLISH without properties, encoded from the
    /// delivery's buffers in place.
    fn send_plain(&mut self, plain: PlainPublish<'_>, delivery: &Delivery) -> bool {
        let active = &*self.active;
        let metrics = self.broker.metrics();
        let max = active.client_max_packet_size;
        if max != u32::MAX
            && plain
                .encoded_len(active.version)
                .is_ok_and(|len| len > max as usize)
        {
            metrics.bump(crate::metrics::Counter::MessagesDroppedTooLarge);
            return false;
        }
        match plain.encode(active.version, self.buf) {
            Ok(()) => {
                metrics.sent(delivery.qos, delivery.message.payload.len());
                true
            }
            Err(error) => {
                tracing::error!(%error, "cannot encode PUBLISH");
                false
            }
        }
    }
}

/// The PUBLISH of `delivery` as a [`PlainPublish`], when it has no properties to carry: in
/// 3.x always, in 5.0 when the message has no properties and no expiry and no subscription
/// identifier applies (the caller has checked that no topic alias is used). Encoding it takes
/// no share of the message's buffers: a fan-out's deliveries are encoded on other threads at the
/// same time, and every share taken and given back is a write to one counter they all use.
fn plain_publish(
    delivery: &Delivery,
    packet_id: u16,
    dup: bool,
    version: ProtocolVersion,
) -> Option<PlainPublish<'_>> {
    let message = &delivery.message;
    if version.is_v5()
        && (message.properties.is_some()
            || message.expires_at.is_some()
            || !delivery.subscription_ids.as_slice().is_empty())
    {
        return None;
    }
    Some(PlainPublish {
        dup,
        qos: delivery.qos,
        retain: delivery.retain,
        topic: message.topic.as_str(),
        packet_id: if delivery.qos == QoS::AtMostOnce {
            0
        } else {
            packet_id
        },
        payload: &message.payload,
    })
}

/// Removes the reason string and user properties of an acknowledgement or DISCONNECT.
fn strip_problem_information(packet: &mut Packet) {
    let properties = match packet {
        Packet::ConnAck(p) => &mut p.properties,
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            &mut p.properties
        }
        Packet::SubAck(p) => &mut p.properties,
        Packet::UnsubAck(p) => &mut p.properties,
        Packet::Disconnect(p) => &mut p.properties,
        Packet::Auth(p) => &mut p.properties,
        _ => return,
    };
    properties.reason_string = None;
    properties.user_properties.clear();
}
