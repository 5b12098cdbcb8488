//! Packets from an active client: PUBLISH and the acknowledgement flows of both directions,
//! SUBSCRIBE, UNSUBSCRIBE, PINGREQ and DISCONNECT.

use std::time::Instant;

use tern_codec::topic::{has_wildcard, split_shared};
use tern_codec::{
    Ack, Disconnect, MqttStr, Packet, PacketType, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};

use crate::connection::{Active, CloseReason, Connection, Phase, STORAGE_REFUSAL_CLOSE};
use crate::hooks::FilterAccess;
use crate::message::Message;
use crate::persist::Change;
use crate::session::Kick;
use crate::types::{InflightState, Seq, SessionExpiry, SubscriptionRecord};
use crate::unstored::AckHold;

impl Connection {
    /// Handles one decoded packet from the client, received at `now`.
    pub fn handle_packet(&mut self, packet: Packet, now: Instant) {
        if self.traced() {
            crate::admin::trace_packet(self.client_id.as_ref(), "in", &packet);
        }
        match &mut self.phase {
            Phase::Closed => {}
            // [MQTT-3.1.4-5]: held until the CONNECT is authenticated (a driver that asks
            // `wants_input` hands nothing over meanwhile).
            Phase::Deciding(deciding) => deciding.held.push(packet),
            Phase::Claiming(claiming) => claiming.held.push(packet),
            Phase::Authenticating(_) => {
                let Phase::Authenticating(pending) =
                    std::mem::replace(&mut self.phase, Phase::Closed)
                else {
                    return;
                };
                match packet {
                    Packet::Auth(auth) => self.handle_connect_auth(auth, *pending, now),
                    _ => {
                        self.phase = Phase::Authenticating(pending);
                        self.refuse(ReasonCode::ProtocolError, now);
                    }
                }
            }
            Phase::AwaitingConnect { .. } => match packet {
                Packet::Connect(connect) => self.handle_connect(*connect, now),
                // [MQTT-3.1.0-1]: the first packet must be CONNECT; close without CONNACK.
                other => self.protocol_error(
                    ReasonCode::ProtocolError,
                    format!(
                        "first packet is {:?}, not CONNECT [MQTT-3.1.0-1]",
                        other.packet_type()
                    ),
                    now,
                ),
            },
            Phase::Active(active) => {
                active.last_received = now;
                // Cluster: past the node's lease, the client may be connected elsewhere.
                if self.broker.lease_ran_out(now) {
                    return self.close_displaced(Some(Kick::LeaseLost), now);
                }
                // A relaxed load of the session's cache line each, as the tracing check.
                if !active.session.is_owned_by(self.id) || active.session.kicked_hint() {
                    let kicked = active.session.lock().kicked;
                    return self.close_displaced(kicked, now);
                }
                self.handle_active_packet(packet, now);
            }
        }
    }

    fn active(&self) -> Option<&Active> {
        match &self.phase {
            Phase::Active(active) => Some(active),
            _ => None,
        }
    }

    fn handle_active_packet(&mut self, packet: Packet, now: Instant) {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish, now),
            Packet::PubAck(ack) => self.on_puback(&ack),
            Packet::PubRec(ack) => self.on_pubrec(&ack),
            Packet::PubRel(ack) => self.on_pubrel(&ack),
            Packet::PubComp(ack) => self.on_pubcomp(&ack),
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe),
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe),
            Packet::PingReq => self.send(Packet::PingResp, Seq::NONE),
            Packet::Disconnect(disconnect) => self.on_disconnect(disconnect, now),
            Packet::Connect(_) => self.protocol_error(
                ReasonCode::ProtocolError,
                "second CONNECT [MQTT-3.1.0-2]",
                now,
            ),
            Packet::Auth(auth) => self.handle_reauth(auth, now),
            other @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => self.protocol_error(
                ReasonCode::ProtocolError,
                format!("{:?} is sent only by servers", other.packet_type()),
                now,
            ),
        }
    }

    /// Queues an acknowledgement that goes out once `barrier` is durable.
    fn ack(&mut self, packet: PacketType, packet_id: u16, reason_code: ReasonCode, barrier: Seq) {
        let packet = self.ack_packet(packet, packet_id, reason_code);
        self.send(packet, barrier);
    }

    fn ack_packet(&self, packet: PacketType, packet_id: u16, reason_code: ReasonCode) -> Packet {
        let ack = Ack {
            reason_code,
            properties: self.problem_properties(reason_code),
            ..Ack::new(packet_id)
        };
        match packet {
            PacketType::PubAck => Packet::PubAck(ack),
            PacketType::PubRec => Packet::PubRec(ack),
            PacketType::PubRel => Packet::PubRel(ack),
            _ => Packet::PubComp(ack),
        }
    }

    /// Properties with a reason string explaining an error code, when the client allows them
    /// [MQTT-3.1.2-29].
    fn problem_properties(&self, code: ReasonCode) -> Properties {
        let allowed = self
            .active()
            .is_some_and(|active| active.version.is_v5() && active.problem_information);
        if !allowed || !code.is_error() {
            return Properties::default();
        }
        Properties {
            reason_string: MqttStr::try_from(reason_text(code)).ok(),
            ..Properties::default()
        }
    }

    /// Replaces a topic alias with its topic (MQTT 5 section 3.3.2.3.4), or records a new alias.
    /// `Err` carries the DISCONNECT reason.
    fn resolve_topic_alias(
        &mut self,
        publish: &mut Publish,
    ) -> Result<(), (ReasonCode, &'static str)> {
        let Some(alias) = publish.properties.topic_alias.take() else {
            return Ok(());
        };
        let maximum = self.broker.config().topic_alias_maximum;
        let Phase::Active(active) = &mut self.phase else {
            return Ok(());
        };
        if alias == 0 || alias > maximum {
            return Err((
                ReasonCode::TopicAliasInvalid,
                "topic alias out of range [MQTT-3.3.2-9]",
            ));
        }
        let index = usize::from(alias - 1);
        if publish.topic.is_empty() {
            let known = active
                .inbound_aliases
                .as_deref()
                .and_then(|aliases| aliases.get(index));
            match known.cloned().flatten() {
                Some(topic) => publish.topic = topic,
                None => {
                    return Err((
                        ReasonCode::ProtocolError,
                        "topic alias used before it was set up",
                    ));
                }
            }
        } else {
            let aliases = active.inbound_aliases.get_or_insert_with(Box::default);
            if aliases.len() <= index {
                aliases.resize(index + 1, None);
            }
            aliases[index] = Some(publish.topic.clone());
        }
        Ok(())
    }

    fn on_publish(&mut self, mut publish: Publish, now: Instant) {
        let Some(active) = self.active() else { return };
        let version = active.version;
        let broker = self.broker.clone();
        let config = broker.config();
        broker
            .metrics()
            .received(publish.qos, publish.payload.len());

        if publish.qos > config.max_qos {
            return self.protocol_error(
                ReasonCode::QosNotSupported,
                "QoS above the maximum [MQTT-3.2.2-11]",
                now,
            );
        }
        if publish.retain && !config.retain_available {
            return self.protocol_error(
                ReasonCode::RetainNotSupported,
                "retain not available [MQTT-3.2.2-14]",
                now,
            );
        }
        if version.is_v5() {
            if let Err((code, detail)) = self.resolve_topic_alias(&mut publish) {
                return self.protocol_error(code, detail, now);
            }
            if !publish.properties.subscription_identifiers.is_empty() {
                return self.protocol_error(
                    ReasonCode::ProtocolError,
                    "subscription identifier in a PUBLISH from a client [MQTT-3.3.4-6]",
                    now,
                );
            }
        }
        let ack_packet = match publish.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(PacketType::PubAck),
            QoS::ExactlyOnce => Some(PacketType::PubRec),
        };
        let packet_id = publish.packet_id;

        if let Some(refusal) = self.publish_refusal(&publish) {
            broker
                .metrics()
                .bump(crate::metrics::Counter::MessagesRefused);
            tracing::debug!(client_id = ?self.client_id, topic = %publish.topic, %refusal, "publish refused");
            if refusal == ReasonCode::PayloadFormatInvalid && ack_packet.is_none() {
                // QoS 0 has no acknowledgement to carry the refusal.
                return self.protocol_error(
                    refusal,
                    "payload is not UTF-8 as its format indicator says",
                    now,
                );
            }
            if refusal == ReasonCode::NotAuthorized
                && !version.is_v5()
                && broker.config().deny_publish_disconnects_v3
            {
                // Configured to close a 3.x client that publishes where it may not (3.x has no
                // negative acknowledgement; the other choice acknowledges and drops).
                return self.protocol_error(refusal, "publish not authorized", now);
            }
            if let Some(ack) = ack_packet {
                // 3.x has no way to refuse: acknowledge and drop [MQTT-3.3.5-2].
                let code = if version.is_v5() {
                    refusal
                } else {
                    ReasonCode::Success
                };
                self.ack(ack, packet_id, code, Seq::NONE);
            }
            return;
        }

        // A full or failing disk: what would need new durable work is refused, the rest goes
        // on (see `Persistence::accepts_new_work`).
        let mut store_retained = true;
        if !broker.accepts_new_work() {
            let sets_retained = publish.retain && !publish.payload.is_empty();
            match ack_packet {
                // QoS 0 has no acknowledgement to refuse with: the message is forwarded but
                // does not replace the retained one (which would be lost with the next start).
                None if sets_retained => {
                    store_retained = false;
                    broker
                        .metrics()
                        .bump(crate::metrics::Counter::RetainedDroppedStorageFull);
                }
                None => {}
                Some(ack) => {
                    // A QoS 2 PUBLISH sent again after its PUBREC was lost was taken already:
                    // it is acknowledged again below, not refused.
                    let resent = publish.qos == QoS::ExactlyOnce
                        && self.active().is_some_and(|active| {
                            active.session.lock().inbound_qos2.contains(&packet_id)
                        });
                    // While commits fail, even the packet identifier of a stored session's QoS 2
                    // PUBLISH would wait for one with no bound.
                    let stalls = publish.qos == QoS::ExactlyOnce
                        && broker.commits_failing()
                        && self
                            .active()
                            .is_some_and(|active| active.session.lock().stores());
                    if !resent
                        && (stalls
                            || broker.needs_new_storage(
                                &publish.topic,
                                publish.qos,
                                sets_retained,
                                self.client_id.as_ref(),
                            ))
                    {
                        return self.refuse_publish(ack, packet_id, Refusal::StorageFull, now);
                    }
                }
            }
        }

        // A cluster node this message would go to takes no more: refused like a full store's
        // (a QoS 2 PUBLISH sent again was taken already and is acknowledged below).
        if let Some(ack) = ack_packet
            && broker.cluster_refuses(&publish.topic)
            && !(publish.qos == QoS::ExactlyOnce
                && self
                    .active()
                    .is_some_and(|active| active.session.lock().inbound_qos2.contains(&packet_id)))
        {
            return self.refuse_publish(ack, packet_id, Refusal::ClusterFull, now);
        }

        let Some(active) = self.active() else { return };
        let mut barrier = Seq::NONE;
        // A stored QoS 2 identifier and the routing of its message become durable together: a
        // crash between them would leave an identifier whose message is lost (the resent
        // PUBLISH is taken for a duplicate) or a message routed again when it is resent.
        let mut group = None;
        if publish.qos == QoS::ExactlyOnce {
            let mut state = active.session.lock();
            if state.inbound_qos2.contains(&packet_id) {
                // A resent QoS 2 PUBLISH is acknowledged again but not forwarded twice
                // [MQTT-4.3.3-9, MQTT-4.3.3-10]. Its PUBREC, like the first, waits until the
                // message is durable (after a reconnect the CONNACK already waited for more, but
                // the acknowledgement does not rely on that).
                drop(state);
                let barrier = broker.submitted();
                return self.ack(PacketType::PubRec, packet_id, ReasonCode::Success, barrier);
            }
            if version.is_v5() && state.inbound_qos2.len() >= usize::from(config.receive_maximum) {
                drop(state);
                return self.protocol_error(
                    ReasonCode::ReceiveMaximumExceeded,
                    "more QoS 2 messages awaiting PUBREL than the Receive Maximum [MQTT-3.3.4-9]",
                    now,
                );
            }
            state.inbound_qos2.push(packet_id);
            if state.stores() {
                group = broker.atomic();
                barrier = broker.persist(|| Change::InboundQos2 {
                    client_id: active.session.client_id().clone(),
                    packet_id,
                });
            }
        }

        // A QoS 1 message's acknowledgement may wait for its subscribers instead of the store
        // (see `unstored`).
        // Not while the store is congested: held deliveries would be stored later by the sweep,
        // beyond the reach of this connection's input barrier, which bounds the backlog.
        let mut hold = (publish.qos == QoS::AtLeastOnce
            && broker.persistence().is_some()
            && !config.unstored_grace.is_zero()
            && !broker.store_congested())
        .then(|| AckHold::new(&self.wakeup));
        let message = Message::from_publish(publish, self.client_id.clone(), now);
        let (reached, seq) = broker.publish_tracked(message, now, hold.as_mut(), store_retained);
        let gate = hold.and_then(AckHold::into_gate);
        drop(group);
        // The changes this PUBLISH caused hold back further input while the store is congested.
        self.input_barrier = self.input_barrier.max(barrier.max(seq));
        if let Some(ack) = ack_packet {
            let code = if reached == 0 && version.is_v5() {
                ReasonCode::NoMatchingSubscribers
            } else {
                ReasonCode::Success
            };
            // Acknowledged once the message is as durable as the store promises, or delivered.
            let barrier = barrier.max(seq);
            match gate {
                Some(gate) => {
                    gate.wait_for(barrier);
                    let packet = self.ack_packet(ack, packet_id, code);
                    match gate.ready() {
                        Some(seq) => self.send(packet, seq),
                        None => self.send_gated(packet, gate),
                    }
                }
                None => self.ack(ack, packet_id, code, barrier),
            }
        }
    }

    /// Refuses a QoS 1/2 PUBLISH that would need new durable work while the store takes none,
    /// or whose copy a cluster node's full outbox could not take: MQTT 5 PUBACK/PUBREC 0x97
    /// Quota exceeded (no identifier is kept, so the flow ends there [MQTT-4.3.3-4]); a 3.x
    /// client gets no acknowledgement (none could say "not taken") and its connection is
    /// closed after [`STORAGE_REFUSAL_CLOSE`], so that it reconnects and sends the message
    /// again. Nothing is forwarded.
    fn refuse_publish(&mut self, ack: PacketType, packet_id: u16, why: Refusal, now: Instant) {
        let (counter, text) = match why {
            Refusal::StorageFull => (
                crate::metrics::Counter::MessagesRefusedStorageFull,
                STORAGE_FULL_TEXT,
            ),
            Refusal::ClusterFull => (
                crate::metrics::Counter::MessagesRefusedClusterFull,
                CLUSTER_FULL_TEXT,
            ),
        };
        self.broker.metrics().bump(counter);
        tracing::debug!(client_id = ?self.client_id, reason = text, "publish refused");
        if self.version.is_v5() {
            let mut packet = self.ack_packet(ack, packet_id, ReasonCode::QuotaExceeded);
            // The reason string, where the client allows one, says which quota.
            if let Packet::PubAck(ack) | Packet::PubRec(ack) = &mut packet
                && ack.properties.reason_string.is_some()
            {
                ack.properties.reason_string = MqttStr::try_from(text).ok();
            }
            return self.send(packet, Seq::NONE);
        }
        if let Phase::Active(active) = &mut self.phase {
            active
                .storage_close_at
                .get_or_insert(now + STORAGE_REFUSAL_CLOSE);
        }
    }

    /// Why a PUBLISH may not be forwarded, if it may not: topic limits, or the authoriser (whose
    /// default refuses the broker's `$` topics).
    fn publish_refusal(&self, publish: &Publish) -> Option<ReasonCode> {
        let active = self.active()?;
        let config = self.broker.config();
        if !config.topic_within_limits(&publish.topic) {
            return Some(ReasonCode::TopicNameInvalid);
        }
        if !self
            .broker
            .authorizer()
            .may_publish(&active.client, &publish.topic)
        {
            return Some(ReasonCode::NotAuthorized);
        }
        if active.version.is_v5()
            && publish.properties.payload_format_indicator == Some(true)
            && std::str::from_utf8(&publish.payload).is_err()
        {
            // [MQTT-3.3.2-4]: the payload claims to be UTF-8 and is not.
            return Some(ReasonCode::PayloadFormatInvalid);
        }
        if publish.retain
            && !publish.payload.is_empty()
            && !self
                .broker
                .retained_quota_allows(&publish.topic, publish.payload.len())
        {
            return Some(ReasonCode::QuotaExceeded);
        }
        None
    }

    /// Ends the outbound flow of `packet_id` if it is in `expected` state.
    fn complete_inflight(&mut self, packet_id: u16, expected: InflightState) {
        let Some(active) = self.active() else { return };
        let mut state = active.session.lock();
        if let Some(index) = state.inflight_position(packet_id)
            && state.inflight[index].state == expected
        {
            let entry = state.remove_inflight(index);
            // Only a stored delivery has anything in the store to delete.
            if entry.is_some_and(|entry| entry.durability.is_stored()) {
                self.broker.persist(|| Change::InflightDone {
                    client_id: active.session.client_id().clone(),
                    packet_id,
                });
            }
        }
    }

    fn on_puback(&mut self, ack: &Ack) {
        self.complete_inflight(ack.packet_id, InflightState::AwaitingPubAck);
    }

    /// PUBREC of an outbound QoS 2 message: the PUBREL goes out (from the in-flight entry, once
    /// its new state is durable) [MQTT-4.3.3-4].
    fn on_pubrec(&mut self, ack: &Ack) {
        if ack.reason_code.is_error() {
            // MQTT 5: the client refused the message; the flow ends here.
            return self.complete_inflight(ack.packet_id, InflightState::AwaitingPubRec);
        }
        let Some(active) = self.active() else { return };
        let session = active.session.clone();
        let mut state = session.lock();
        let Some(index) = state.inflight_position(ack.packet_id) else {
            drop(state);
            let code = if self.version.is_v5() {
                ReasonCode::PacketIdentifierNotFound
            } else {
                ReasonCode::Success
            };
            return self.ack(PacketType::PubRel, ack.packet_id, code, Seq::NONE);
        };
        let entry = &mut state.inflight[index];
        entry.state = InflightState::AwaitingPubComp;
        entry.send_after = if entry.durability.is_stored() {
            self.broker.persist(|| Change::Inflight {
                client_id: session.client_id().clone(),
                packet_id: entry.packet_id,
                state: InflightState::AwaitingPubComp,
                delivery: entry.delivery.stored(),
            })
        } else {
            Seq::NONE
        };
        if !entry.pending {
            entry.pending = true;
            state.pending += 1;
        }
    }

    fn on_pubcomp(&mut self, ack: &Ack) {
        self.complete_inflight(ack.packet_id, InflightState::AwaitingPubComp);
    }

    /// PUBREL of an inbound QoS 2 message: forget its identifier and complete [MQTT-4.3.3-11].
    fn on_pubrel(&mut self, ack: &Ack) {
        let Some(active) = self.active() else { return };
        let mut state = active.session.lock();
        let mut barrier = Seq::NONE;
        let known = match state
            .inbound_qos2
            .iter()
            .position(|&id| id == ack.packet_id)
        {
            Some(index) => {
                state.inbound_qos2.swap_remove(index);
                if state.stores() {
                    // PUBCOMP waits for this: once the client has it, it may reuse the id.
                    barrier = self.broker.persist(|| Change::InboundQos2Released {
                        client_id: active.session.client_id().clone(),
                        packet_id: ack.packet_id,
                    });
                }
                true
            }
            None => false,
        };
        drop(state);
        self.input_barrier = self.input_barrier.max(barrier);
        let code = if known || !self.version.is_v5() {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        self.ack(PacketType::PubComp, ack.packet_id, code, barrier);
    }

    fn on_subscribe(&mut self, subscribe: Subscribe) {
        let Some(active) = self.active() else { return };
        let version = active.version;
        let session = active.session.clone();
        let client = active.client.clone();
        let broker = self.broker.clone();
        let config = broker.config();
        let identifier = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        // 3.x has one failure code for every refusal.
        let failure = |v5_code: ReasonCode| {
            if version.is_v5() {
                v5_code
            } else {
                ReasonCode::UnspecifiedError
            }
        };
        let (id_in_use, stored) = {
            let state = session.lock();
            (
                state.inbound_qos2.contains(&subscribe.packet_id),
                state.stores(),
            )
        };
        // A full or failing disk: a stored session may replace a subscription (the write
        // takes the place of the old one) but not add one.
        let refuses_new = stored && !broker.accepts_new_work();

        let mut reason_codes = Vec::with_capacity(subscribe.subscriptions.len());
        let mut retained = Vec::new();
        let mut barrier = Seq::NONE;
        // Filters whose cluster route is still being decided: the SUBACK waits for them.
        let mut routes = Vec::new();
        // Rules reloaded while this SUBSCRIBE was judged (see below).
        let access_epoch = broker.access_epoch();
        for subscription in subscribe.subscriptions {
            let filter = subscription.filter;
            let shared = split_shared(&filter).is_some();
            // Access is decided for the filter, once (issue 12): all of it, none, or part of
            // it (then checked per message). A shared subscription is judged by its filter.
            let access = broker
                .authorizer()
                .classify(&client, split_shared(&filter).map_or(&filter, |(_, f)| f));
            let refusal = if id_in_use {
                // The identifier still belongs to a QoS 2 PUBLISH awaiting PUBREL.
                Some(ReasonCode::PacketIdentifierInUse)
            } else if !config.topic_within_limits(&filter) {
                Some(ReasonCode::TopicFilterInvalid)
            } else if shared && !config.shared_subscriptions {
                Some(ReasonCode::SharedSubscriptionsNotSupported)
            } else if !config.wildcard_subscriptions && has_wildcard(&filter) {
                Some(ReasonCode::WildcardSubscriptionsNotSupported)
            } else if identifier.is_some() && !config.subscription_identifiers {
                Some(ReasonCode::SubscriptionIdentifiersNotSupported)
            } else if access == FilterAccess::Denied {
                // 3.1.1 SUBACK 0x80, MQTT 5 0x87.
                Some(ReasonCode::NotAuthorized)
            } else if !broker.subscription_quota_allows(&session, &filter) {
                Some(ReasonCode::QuotaExceeded)
            } else if refuses_new && !session.lock().subscriptions.contains_key(&filter) {
                broker
                    .metrics()
                    .bump(crate::metrics::Counter::SubscriptionsRefusedStorageFull);
                Some(ReasonCode::QuotaExceeded)
            } else {
                None
            };
            if let Some(code) = refusal {
                reason_codes.push(failure(code));
                continue;
            }
            let granted = subscription.options.qos.min(config.max_qos);
            let record = SubscriptionRecord {
                options: SubscriptionOptions {
                    qos: granted,
                    ..subscription.options
                },
                identifier,
            };
            let partial = access == FilterAccess::Partial;
            let Some(subscribed) = broker.subscribe(&session, &filter, record, partial) else {
                reason_codes.push(failure(ReasonCode::UnspecifiedError));
                continue;
            };
            barrier = barrier.max(subscribed.seq);
            if let Some(hook) = broker.cluster() {
                let (plain, group) = match split_shared(&filter) {
                    Some((group, plain)) => (plain, Some(group)),
                    None => (&*filter, None),
                };
                if let Some(ticket) = hook.route_pending(plain, group) {
                    ticket.watch(self.wakeup.clone());
                    routes.push((reason_codes.len(), filter.clone(), ticket));
                }
            }
            reason_codes.push(granted_code(granted));
            // Retained messages for the new subscription, as `subscribe` decided.
            if let Some(subscribed_at) = subscribed.retained_from {
                retained.push((filter, granted, partial, subscribed_at));
            }
        }
        // A re-check of the rules (a reload) that ran while these filters were judged may have
        // missed what this SUBSCRIBE added after it looked at the session: judge the session
        // again under the new rules (rare; the common path pays one atomic load).
        let rejudged = broker.access_epoch() != access_epoch;
        if rejudged {
            broker.recheck_session(&session);
        }
        let worst = reason_codes.iter().copied().find(|code| code.is_error());
        let suback = SubAck {
            packet_id: subscribe.packet_id,
            properties: worst
                .map(|code| self.problem_properties(code))
                .unwrap_or_default(),
            reason_codes,
        };
        self.input_barrier = self.input_barrier.max(barrier);
        if routes.is_empty() {
            self.send(Packet::SubAck(suback), barrier);
        } else {
            self.outbox.push_back((
                Packet::SubAck(suback),
                crate::unstored::Barrier::Routes(barrier, routes),
            ));
        }
        // Streamed from the index as the connection can take them, not copied into the queue
        // (whose limit would cut a large set): see `retained_stream`.
        if !retained.is_empty() {
            let mut state = session.lock();
            for (filter, granted, partial, subscribed_at) in retained {
                let reader = if partial || rejudged {
                    Some(client.clone())
                } else {
                    None
                };
                state.stream_retained(filter, granted, identifier, reader, subscribed_at);
            }
        }
    }

    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let Some(active) = self.active() else { return };
        let session = active.session.clone();
        let client = active.client.clone();
        let version = active.version;
        let config = self.broker.config();
        let mut barrier = Seq::NONE;
        let reason_codes: Vec<ReasonCode> = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                if !config.topic_within_limits(filter) {
                    return ReasonCode::TopicFilterInvalid;
                }
                // A subscription that exists is always removed: that cannot widen what the
                // client sees, and it must be able to drop one its rights no longer cover.
                let (existed, seq) = self.broker.unsubscribe(&session, filter);
                barrier = barrier.max(seq);
                if existed {
                    ReasonCode::Success
                } else if !self.broker.authorizer().may_subscribe(&client, filter) {
                    ReasonCode::NotAuthorized
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect();
        let worst = reason_codes.iter().copied().find(|code| code.is_error());
        // UNSUBACK is sent even when nothing was subscribed [MQTT-3.10.4-5].
        let unsuback = UnsubAck {
            packet_id: unsubscribe.packet_id,
            properties: worst
                .map(|code| self.problem_properties(code))
                .unwrap_or_default(),
            reason_codes: if version.is_v5() {
                reason_codes
            } else {
                Vec::new()
            },
        };
        self.input_barrier = self.input_barrier.max(barrier);
        self.send(Packet::UnsubAck(unsuback), barrier);
    }

    fn on_disconnect(&mut self, disconnect: Disconnect, now: Instant) {
        let Some(active) = self.active() else { return };
        if active.version == ProtocolVersion::V5 {
            if let Some(interval) = disconnect.properties.session_expiry_interval {
                if active.session_expiry_interval == 0 && interval != 0 {
                    return self.protocol_error(
                        ReasonCode::ProtocolError,
                        "session expiry set at DISCONNECT after 0 at CONNECT (section 3.14.2.2.2)",
                        now,
                    );
                }
                active.session.lock().expiry = SessionExpiry::from_interval(interval);
            }
            // Only Normal Disconnection removes the will [MQTT-3.1.2-10]; 0x04 and the error
            // codes leave it to be published.
            if disconnect.reason_code != ReasonCode::NORMAL_DISCONNECTION {
                return self.close(CloseReason::ClientDisconnectedWithWill, None, now);
            }
        }
        self.close(CloseReason::ClientDisconnected, None, now);
    }
}

/// The reason string of a refusal for want of storage.
const STORAGE_FULL_TEXT: &str = "the broker's storage is full: not stored, try again later";
const CLUSTER_FULL_TEXT: &str =
    "a cluster node this message goes to takes no more for now: not taken, try again later";

/// Why a QoS 1/2 PUBLISH is refused with 0x97 (see `Connection::refuse_publish`).
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// The store takes no new work (disk full or failing).
    StorageFull,
    /// A cluster node's outbox is full.
    ClusterFull,
}

/// The reason string sent with an error code (when the client allows reason strings).
fn reason_text(code: ReasonCode) -> &'static str {
    match code {
        ReasonCode::NotAuthorized => "not authorized",
        ReasonCode::TopicNameInvalid => "topic name over the length or level limit",
        ReasonCode::TopicFilterInvalid => "topic filter over the length or level limit",
        ReasonCode::QuotaExceeded => "quota exceeded",
        ReasonCode::PayloadFormatInvalid => "payload is not valid UTF-8",
        ReasonCode::PacketIdentifierInUse => "packet identifier in use",
        ReasonCode::PacketIdentifierNotFound => "packet identifier not found",
        ReasonCode::SharedSubscriptionsNotSupported => "shared subscriptions are disabled",
        ReasonCode::WildcardSubscriptionsNotSupported => "wildcard subscriptions are disabled",
        ReasonCode::SubscriptionIdentifiersNotSupported => "subscription identifiers are disabled",
        _ => "refused",
    }
}

fn granted_code(qos: QoS) -> ReasonCode {
    match qos {
        QoS::AtMostOnce => ReasonCode::Success,
        QoS::AtLeastOnce => ReasonCode::GrantedQos1,
        QoS::ExactlyOnce => ReasonCode::GrantedQos2,
    }
}
