//! What goes to the client: control packets first, then the session's messages — those to send
//! again after a reconnect, then new ones while the in-flight window allows — encoded straight
//! into the caller's write buffer, up to a byte budget per call.

use std::time::Instant;

use bytes::BytesMut;
use tern_codec::{Ack, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode};

use crate::connection::{Active, CloseReason, Connection, Phase};
use crate::message::Delivery;
use crate::metrics::Metrics;
use crate::session::{Inflight, InflightState, SessionState};

/// Encodes a PUBLISH for `delivery` as `version` defines it.
fn publish_packet(
    delivery: &Delivery,
    packet_id: u16,
    dup: bool,
    version: ProtocolVersion,
    now: Instant,
) -> Packet {
    let message = &delivery.message;
    let properties = if version.is_v5() {
        let mut properties = message.properties.as_deref().cloned().unwrap_or_default();
        properties.message_expiry_interval = message.remaining_expiry(now);
        properties.subscription_identifiers = delivery.subscription_ids.as_slice().to_vec();
        properties
    } else {
        Properties::default()
    };
    Packet::Publish(Publish {
        dup,
        qos: delivery.qos,
        retain: delivery.retain,
        topic: message.topic.clone(),
        packet_id: if delivery.qos == QoS::AtMostOnce {
            0
        } else {
            packet_id
        },
        properties,
        payload: message.payload.clone(),
    })
}

impl Connection {
    /// Appends what is ready to send to `buf`, stopping once `buf` holds `budget` bytes.
    /// Returns true when more is ready than fit: call again once `buf` has been written.
    pub fn poll_transmit(&mut self, buf: &mut BytesMut, budget: usize, now: Instant) -> bool {
        while let Some(packet) = self.outbox.pop_front() {
            self.encode_control(&packet, buf);
            if buf.len() >= budget {
                return !self.outbox.is_empty() || self.is_active();
            }
        }
        let Phase::Active(active) = &self.phase else {
            return false;
        };
        let mut state = active.session.lock();
        if !state.owned_by(self.id) {
            drop(state);
            self.close(
                CloseReason::SessionTakenOver,
                Some(ReasonCode::SessionTakenOver),
                now,
            );
            while let Some(packet) = self.outbox.pop_front() {
                self.encode_control(&packet, buf);
            }
            return false;
        }
        let more = transmit_messages(&self.broker, active, &mut state, buf, budget, now);
        drop(state);
        more
    }

    fn is_active(&self) -> bool {
        matches!(self.phase, Phase::Active(_))
    }

    /// Encodes a control packet; one that the client's maximum packet size cannot take is
    /// dropped [MQTT-3.1.2-24].
    fn encode_control(&self, packet: &Packet, buf: &mut BytesMut) {
        if let Phase::Active(active) = &self.phase
            && packet
                .encoded_len(self.version)
                .is_ok_and(|len| len > active.client_max_packet_size as usize)
        {
            tracing::debug!(client_id = ?self.client_id, packet = ?packet.packet_type(), "packet over the client's maximum size dropped");
            return;
        }
        if let Err(error) = packet.encode(self.version, buf) {
            // Only packets the broker built itself reach here; a failure is a bug, not input.
            tracing::error!(%error, packet = ?packet.packet_type(), "cannot encode packet");
        }
    }
}

/// Sends messages of the session: first those marked for resending, then queued ones.
fn transmit_messages(
    broker: &crate::broker::Broker,
    active: &Active,
    state: &mut SessionState,
    buf: &mut BytesMut,
    budget: usize,
    now: Instant,
) -> bool {
    let version = active.version;
    let metrics = broker.metrics();
    if state.resend > 0 {
        for entry in state.inflight.iter_mut().filter(|entry| entry.resend) {
            if buf.len() >= budget {
                return true;
            }
            entry.resend = false;
            state.resend -= 1;
            let packet = match entry.state {
                // Resent with DUP set and the original identifier [MQTT-4.4.0-1, MQTT-3.3.1-1].
                InflightState::AwaitingPubAck | InflightState::AwaitingPubRec => {
                    publish_packet(&entry.delivery, entry.packet_id, true, version, now)
                }
                InflightState::AwaitingPubComp => Packet::PubRel(Ack::new(entry.packet_id)),
            };
            encode_message(&packet, active, buf, metrics);
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
            Metrics::bump(&metrics.messages_dropped_expired);
            continue;
        }
        let packet_id = if delivery.qos == QoS::AtMostOnce {
            0
        } else {
            state.allocate_packet_id()
        };
        let packet = publish_packet(&delivery, packet_id, false, version, now);
        let sent = encode_message(&packet, active, buf, metrics);
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

/// Encodes a PUBLISH or PUBREL of the message flow. Returns false when the packet exceeds the
/// client's maximum packet size and was dropped as if sent [MQTT-3.1.2-25].
fn encode_message(
    packet: &Packet,
    active: &Active,
    buf: &mut BytesMut,
    metrics: &crate::metrics::Metrics,
) -> bool {
    if active.client_max_packet_size != u32::MAX
        && packet
            .encoded_len(active.version)
            .is_ok_and(|len| len > active.client_max_packet_size as usize)
    {
        Metrics::bump(&metrics.messages_dropped_too_large);
        return false;
    }
    match packet.encode(active.version, buf) {
        Ok(()) => {
            if matches!(packet, Packet::Publish(_)) {
                Metrics::bump(&metrics.messages_sent);
            }
            true
        }
        Err(error) => {
            tracing::error!(%error, "cannot encode message");
            false
        }
    }
}
