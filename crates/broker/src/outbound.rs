//! What goes to the client: control packets first, then the session's messages — those to send
//! again after a reconnect, then new ones while the in-flight window allows — encoded straight
//! into the caller's write buffer, up to a byte budget per call.

use std::time::Instant;

use bytes::BytesMut;
use tern_codec::{Ack, MqttStr, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode};

use crate::broker::Broker;
use crate::connection::{Active, CloseReason, Connection, Phase};
use crate::message::Delivery;
use crate::metrics::Metrics;
use crate::session::{Inflight, InflightState, SessionState};

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
    pub fn poll_transmit(&mut self, buf: &mut BytesMut, budget: usize, now: Instant) -> bool {
        while let Some(packet) = self.outbox.pop_front() {
            self.encode_control(packet, buf);
            if buf.len() >= budget {
                return !self.outbox.is_empty() || self.is_active();
            }
        }
        let Phase::Active(active) = &mut self.phase else {
            return false;
        };
        let session = active.session.clone();
        let mut state = session.lock();
        if !state.owned_by(self.id) {
            drop(state);
            self.close(
                CloseReason::SessionTakenOver,
                Some(ReasonCode::SessionTakenOver),
                now,
            );
            while let Some(packet) = self.outbox.pop_front() {
                self.encode_control(packet, buf);
            }
            return false;
        }
        transmit_messages(&self.broker, active, &mut state, buf, budget, now)
    }

    fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Active(_))
    }

    /// Encodes a control packet. One over the client's maximum packet size loses its reason
    /// string and user properties; if it is still too large it is dropped [MQTT-3.1.2-24].
    fn encode_control(&self, mut packet: Packet, buf: &mut BytesMut) {
        if let Phase::Active(active) = &self.phase {
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

/// Sends messages of the session: first those marked for resending, then queued ones.
fn transmit_messages(
    broker: &Broker,
    active: &mut Active,
    state: &mut SessionState,
    buf: &mut BytesMut,
    budget: usize,
    now: Instant,
) -> bool {
    let metrics = broker.metrics();
    if state.resend > 0 {
        // Messages the client's (new) maximum packet size no longer admits.
        let mut dropped = Vec::new();
        for entry in state.inflight.iter_mut().filter(|entry| entry.resend) {
            if buf.len() >= budget {
                break;
            }
            entry.resend = false;
            state.resend -= 1;
            match entry.state {
                // Resent with DUP set and the original identifier [MQTT-4.4.0-1, MQTT-3.3.1-1].
                InflightState::AwaitingPubAck | InflightState::AwaitingPubRec => {
                    let id = entry.packet_id;
                    if !send_publish(active, &entry.delivery, id, true, buf, metrics, now) {
                        dropped.push(id);
                    }
                }
                InflightState::AwaitingPubComp => {
                    let pubrel = Packet::PubRel(Ack::new(entry.packet_id));
                    if let Err(error) = pubrel.encode(active.version, buf) {
                        tracing::error!(%error, "cannot encode PUBREL");
                    }
                }
            }
        }
        state
            .inflight
            .retain(|entry| !dropped.contains(&entry.packet_id));
        if state.resend > 0 {
            return true;
        }
    }
    loop {
        if buf.len() >= budget {
            return !state.queue.is_empty();
        }
        let window_full = state.inflight.len() >= active.send_window;
        let Some(front) = state.queue.front() else {
            return false;
        };
        if window_full && front.qos != QoS::AtMostOnce {
            // Order is kept: nothing overtakes a message waiting for the window.
            return false;
        }
        let Some(delivery) = state.queue.pop_front() else {
            return false;
        };
        if delivery.message.is_expired(now) {
            // An expired message is not delivered [MQTT-3.3.2-5].
            Metrics::bump(&metrics.messages_dropped_expired);
            continue;
        }
        let packet_id = if delivery.qos == QoS::AtMostOnce {
            0
        } else {
            state.allocate_packet_id()
        };
        let sent = send_publish(active, &delivery, packet_id, false, buf, metrics, now);
        if sent && delivery.qos != QoS::AtMostOnce {
            let waiting = if delivery.qos == QoS::AtLeastOnce {
                InflightState::AwaitingPubAck
            } else {
                InflightState::AwaitingPubRec
            };
            state.inflight.push_back(Inflight {
                packet_id,
                delivery,
                state: waiting,
                resend: false,
            });
        }
    }
}

/// Encodes the PUBLISH of a delivery, with a topic alias when the client takes them. Returns
/// false when the packet exceeds the client's Maximum Packet Size: it is then dropped as if it
/// had been sent [MQTT-3.1.2-25].
fn send_publish(
    active: &mut Active,
    delivery: &Delivery,
    packet_id: u16,
    dup: bool,
    buf: &mut BytesMut,
    metrics: &Metrics,
    now: Instant,
) -> bool {
    let topic = &delivery.message.topic;
    let alias = active.outbound_aliases.alias_for(topic);
    let packet = publish_packet(delivery, packet_id, dup, active.version, alias, now);
    if too_large(&packet, active.version, active.client_max_packet_size) {
        Metrics::bump(&metrics.messages_dropped_too_large);
        return false;
    }
    match packet.encode(active.version, buf) {
        Ok(()) => {
            if let Some((alias, false)) = alias {
                active.outbound_aliases.confirm(topic, alias);
            }
            Metrics::bump(&metrics.messages_sent);
            true
        }
        Err(error) => {
            tracing::error!(%error, "cannot encode PUBLISH");
            false
        }
    }
}
