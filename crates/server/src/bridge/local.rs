//! The local side of a bridge: an in-process MQTT 5 client of the broker core. It drives a
//! sans-IO [`Connection`] itself (no socket, no listener): packets go in through
//! `handle_packet`, the bytes `poll_transmit` gives are decoded back into packets with
//! tern-codec. Its transport identity (`bridge:<name>`, the bridge's `local_username`) gives it
//! the reserved client id `$bridge/<name>` and the access rules of that user.
//!
//! Its CONNECT asks for a persistent session (clean start 0, Session Expiry 0xFFFFFFFF): that
//! session is the bridge's bounded, stored queue of messages for the remote broker.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tern_broker::{Broker, CloseReason, Connection, TransportIdentity, Wakeup};
use tern_codec::{Connect, MqttStr, Packet, Properties, ProtocolVersion};
use tokio::sync::Notify;

/// Bytes encoded per `poll_transmit` round.
const TRANSMIT_BUDGET: usize = 64 * 1024;
/// The largest packet decoded from the core (MQTT's own limit): the core sends nothing larger
/// than the Maximum Packet Size of its CONNECT, which the bridge leaves unset.
const MAX_PACKET: u32 = 268_435_455;

/// Wakes the bridge's task when the core has deliveries or acknowledgements for it.
#[derive(Default)]
pub(crate) struct NotifyWakeup(pub(crate) Notify);

impl Wakeup for NotifyWakeup {
    fn wake(&self) {
        self.0.notify_one();
    }
}

/// Why the local connection ended or could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("the local connection ended: {0}")]
    Closed(String),
    #[error("the local connection sent what could not be decoded: {0}")]
    Decode(#[from] tern_codec::DecodeError),
}

/// One in-process connection to the broker core.
pub(crate) struct LocalSession {
    conn: Connection,
    wakeup: Arc<NotifyWakeup>,
    /// What the core encoded and the bridge has not decoded yet.
    transmit: BytesMut,
    /// Packets decoded but given back (see [`LocalSession::give_back`]): the next `poll`
    /// returns them first.
    held: Vec<Packet>,
}

impl LocalSession {
    /// Connects `client_id` to `broker` with clean start 0 and a session that never expires;
    /// `receive_maximum` bounds the messages in flight to the bridge.
    pub(crate) fn connect(
        broker: Arc<Broker>,
        name: &str,
        client_id: &str,
        local_username: Option<&str>,
        receive_maximum: u16,
        now: Instant,
    ) -> Result<LocalSession, LocalError> {
        let bad = |what: &str| LocalError::Closed(format!("invalid {what}"));
        let identity = TransportIdentity {
            listener: Some(Arc::from(format!(
                "{}{name}",
                tern_broker::BRIDGE_LISTENER_PREFIX
            ))),
            certificate: None,
            username: local_username
                .map(MqttStr::try_from)
                .transpose()
                .map_err(|_| bad("local_username"))?,
        };
        let wakeup = Arc::new(NotifyWakeup::default());
        let mut conn =
            Connection::with_transport(broker, wakeup.clone(), None, Some(Arc::new(identity)), now);
        let connect = Connect {
            protocol: ProtocolVersion::V5,
            clean_start: false,
            keep_alive: 0,
            properties: Properties {
                session_expiry_interval: Some(u32::MAX),
                receive_maximum: Some(receive_maximum.max(1)),
                ..Properties::default()
            },
            client_id: MqttStr::try_from(client_id).map_err(|_| bad("client id"))?,
            will: None,
            username: None,
            password: None,
        };
        conn.handle_packet(Packet::Connect(Box::new(connect)), now);
        Ok(LocalSession {
            conn,
            wakeup,
            transmit: BytesMut::new(),
            held: Vec::new(),
        })
    }

    /// Hands a packet to the core, as if the bridge had sent it.
    pub(crate) fn handle(&mut self, packet: Packet, now: Instant) {
        self.conn.handle_packet(packet, now);
    }

    /// Whether the core takes more input now: `false` while the store is congested with the
    /// bridge's own changes (see `Connection::wants_input`); the bridge is woken when it does.
    pub(crate) fn wants_input(&mut self) -> bool {
        self.conn.wants_input()
    }

    /// Runs the core's deadlines and collects every packet it has for the bridge.
    pub(crate) fn poll(
        &mut self,
        now: Instant,
        packets: &mut Vec<Packet>,
    ) -> Result<(), LocalError> {
        packets.append(&mut self.held);
        if self.conn.poll_timeout().is_some_and(|at| at <= now) {
            self.conn.handle_timeout(now);
        }
        if !self.conn.is_closed() && self.conn.server_stopping() {
            self.conn.shutdown(now);
        }
        loop {
            let more = self
                .conn
                .poll_transmit(&mut self.transmit, TRANSMIT_BUDGET, now);
            while let Some(packet) =
                Packet::decode(&mut self.transmit, ProtocolVersion::V5, MAX_PACKET)?
            {
                packets.push(packet);
            }
            if !more {
                break;
            }
        }
        if self.transmit.is_empty() {
            self.conn.release_idle_memory();
        }
        Ok(())
    }

    /// Packets taken from `poll` and not handled: the next `poll` returns them first.
    pub(crate) fn give_back(&mut self, packets: impl IntoIterator<Item = Packet>) {
        let mut packets: Vec<Packet> = packets.into_iter().collect();
        packets.append(&mut self.held);
        self.held = packets;
    }

    /// When [`LocalSession::poll`] must run again at the latest.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.conn.poll_timeout()
    }

    /// What the core calls when it has something for the bridge.
    pub(crate) fn wakeup(&self) -> Arc<NotifyWakeup> {
        self.wakeup.clone()
    }

    #[cfg(test)]
    pub(crate) fn is_connected(&self) -> bool {
        self.conn.is_connected()
    }

    /// Why the connection ended, if it has.
    pub(crate) fn close_reason(&self) -> Option<&CloseReason> {
        self.conn.close_reason()
    }

    /// Ends the connection normally (DISCONNECT 0x00): the session stays, with its queue.
    pub(crate) fn disconnect(&mut self, now: Instant) {
        if !self.conn.is_closed() {
            self.conn
                .handle_packet(Packet::Disconnect(Default::default()), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_broker::BrokerConfig;
    use tern_codec::{Publish, QoS, RetainHandling, Subscribe, Subscription, SubscriptionOptions};

    fn subscribe(filter: &str) -> Packet {
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: MqttStr::try_from(filter).unwrap(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::SendAtSubscribeIfNew,
                },
            }],
        })
    }

    /// Issue 15: the bridge's local side connects in-process with a persistent session,
    /// subscribes, and does not get its own publications back (no local).
    #[test]
    fn local_session_connects_subscribes_and_skips_its_own() {
        let broker = Broker::new(BrokerConfig::default());
        let now = Instant::now();
        let mut local =
            LocalSession::connect(broker.clone(), "b", "$bridge/b", None, 8, now).unwrap();
        let mut packets = Vec::new();
        local.poll(now, &mut packets).unwrap();
        assert!(matches!(&packets[..], [Packet::ConnAck(ack)] if !ack.reason_code.is_error()));
        assert!(local.is_connected());
        packets.clear();
        local.handle(subscribe("a/#"), now);
        local.poll(now, &mut packets).unwrap();
        assert!(matches!(&packets[..], [Packet::SubAck(_)]));
        packets.clear();
        // Its own publication is not sent back to it.
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: MqttStr::try_from("a/own").unwrap(),
            packet_id: 0,
            properties: Properties::default(),
            payload: "x".into(),
        };
        local.handle(Packet::Publish(publish.clone()), now);
        local.poll(now, &mut packets).unwrap();
        assert!(packets.is_empty(), "{packets:?}");
        // Another publisher's message comes through.
        broker.publish(
            tern_broker::Message::from_publish(
                Publish {
                    topic: MqttStr::try_from("a/other").unwrap(),
                    ..publish
                },
                None,
                now,
            ),
            now,
        );
        local.poll(now, &mut packets).unwrap();
        assert!(
            matches!(&packets[..], [Packet::Publish(p)] if p.topic.as_str() == "a/other"),
            "{packets:?}"
        );
        local.disconnect(now);
        assert!(local.close_reason().is_some());
        assert!(broker.session("$bridge/b").is_some(), "the session stays");
    }

    /// Issue 15: `$bridge/<name>` is reserved: a client without the bridge's transport is
    /// refused with 0x85 Client Identifier not valid.
    #[test]
    fn reserved_client_id_is_refused_to_others() {
        let broker = Broker::new(BrokerConfig::default());
        let now = Instant::now();
        let wakeup = Arc::new(NotifyWakeup::default());
        let mut conn = Connection::new(broker.clone(), wakeup, None, now);
        let connect = Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 0,
            properties: Properties::default(),
            client_id: MqttStr::try_from("$bridge/b").unwrap(),
            will: None,
            username: None,
            password: None,
        };
        conn.handle_packet(Packet::Connect(Box::new(connect)), now);
        let mut buf = BytesMut::new();
        conn.poll_transmit(&mut buf, 1024, now);
        let packet = Packet::decode(&mut buf, ProtocolVersion::V5, MAX_PACKET)
            .unwrap()
            .unwrap();
        assert!(
            matches!(packet, Packet::ConnAck(ack) if ack.reason_code == tern_codec::ReasonCode::ClientIdentifierNotValid)
        );
        // Another bridge's transport does not vouch for it either.
        let other = LocalSession::connect(broker, "c", "$bridge/b", None, 8, now).unwrap();
        assert!(!other.is_connected());
    }
}
