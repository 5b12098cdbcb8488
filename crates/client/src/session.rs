//! The client's side of the session state (MQTT 5 section 4.1), with no I/O: packet
//! identifiers, the outbound window of QoS 1 and 2 publishes, the queue behind it, the
//! subscribe and unsubscribe requests awaiting their acknowledgement, and the inbound QoS 2
//! packet ids held until PUBREL. The connection task feeds it packets and sends what it returns.
//!
//! What removes an entry: an outbound publish leaves at PUBACK, at PUBCOMP (QoS 2), or at an
//! error PUBREC; a request at its SUBACK/UNSUBACK; an inbound QoS 2 id at PUBREL; everything
//! when the client ends (the waiting callers get [`ClientError::Closed`]).

use std::collections::{HashMap, HashSet, VecDeque};

use tern_codec::{
    Ack, Packet, Properties, Publish, QoS, ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use tokio::sync::oneshot;

use crate::error::ClientError;

/// How a publish ended: the broker's reason code and properties (QoS 0: `Success` once written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    pub reason_code: ReasonCode,
    pub properties: Properties,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// A QoS 1 or 2 publish sent and not yet acknowledged.
struct InFlight {
    /// Order of sending: a resumed session sends them again in this order [MQTT-4.6.0-1].
    seq: u64,
    stage: Stage,
    reply: Option<Reply<PublishOutcome>>,
}

enum Stage {
    /// Waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published(Box<Publish>),
    /// QoS 2: PUBREL sent, waiting for PUBCOMP.
    Released,
}

enum Request {
    Subscribe(Subscribe, Reply<SubAck>),
    Unsubscribe(Unsubscribe, Reply<UnsubAck>),
}

/// Queued publishes and requests not yet sent.
pub(crate) struct Waiting {
    pub(crate) publish: Publish,
    pub(crate) reply: Option<Reply<PublishOutcome>>,
}

pub(crate) struct Session {
    next_id: u16,
    next_seq: u64,
    inflight: HashMap<u16, InFlight>,
    /// Publishes (QoS 1 and 2) waiting for room in the window.
    waiting: VecDeque<Waiting>,
    requests: HashMap<u16, Request>,
    inbound_qos2: HashSet<u16>,
    /// Manual acknowledgement ([`crate::ClientOptions::manual_ack`]): inbound QoS 1 and 2
    /// publishes handed to the application and not acknowledged by it yet, by packet id. An
    /// entry leaves when the application acknowledges it, or when a reconnection finds the
    /// session gone (session present 0).
    awaiting_ack: HashMap<u16, QoS>,
    /// Resumed publishes in flight (in `inflight`) not sent again yet: the broker's new Receive
    /// Maximum had no room for them [MQTT-3.3.4-7]. They go first as room frees, in order.
    held: VecDeque<u16>,
    /// The most publishes in flight: ours, capped by the broker's Receive Maximum.
    window: usize,
    max_inflight: usize,
}

impl Session {
    pub(crate) fn new(max_inflight: u16) -> Session {
        let max_inflight = usize::from(max_inflight.max(1));
        Session {
            next_id: 1,
            next_seq: 0,
            inflight: HashMap::new(),
            waiting: VecDeque::new(),
            requests: HashMap::new(),
            inbound_qos2: HashSet::new(),
            awaiting_ack: HashMap::new(),
            held: VecDeque::new(),
            window: max_inflight,
            max_inflight,
        }
    }

    pub(crate) fn queued(&self) -> usize {
        self.waiting.len()
    }

    /// A free packet identifier; `None` when all 65 535 are in use.
    fn allocate_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) && !self.requests.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// After CONNACK: sets the window from the broker's Receive Maximum and returns what must
    /// be sent again. With the session resumed (`session_present`), unacknowledged publishes
    /// go again with DUP and releases again [MQTT-4.4.0-1]; without it the broker has
    /// forgotten them, so publishes go again as new ones, and a release's message, which the
    /// broker had already taken (PUBREC), counts as delivered. Unanswered requests are sent
    /// again either way (subscribing twice changes nothing). The inbound QoS 2 ids are kept
    /// only with the session.
    pub(crate) fn resume(&mut self, session_present: bool, receive_maximum: u16) -> Vec<Packet> {
        self.window = self.max_inflight.min(usize::from(receive_maximum.max(1)));
        if !session_present {
            self.inbound_qos2.clear();
            self.awaiting_ack.clear();
        }
        self.held.clear();
        // Releases count in the window too (no PUBCOMP yet), and go again whatever it is.
        let mut sent = self
            .inflight
            .values()
            .filter(|f| matches!(f.stage, Stage::Released))
            .count();
        let mut order: Vec<(u64, u16)> = self.inflight.iter().map(|(id, f)| (f.seq, *id)).collect();
        order.sort_unstable();
        let mut out = Vec::new();
        let mut renew = Vec::new();
        for (_, id) in order {
            let Some(flight) = self.inflight.get_mut(&id) else {
                continue;
            };
            match (&mut flight.stage, session_present) {
                (Stage::Published(publish), true) => {
                    publish.dup = true;
                    if sent < self.window {
                        sent += 1;
                        out.push(Packet::Publish((**publish).clone()));
                    } else {
                        self.held.push_back(id);
                    }
                }
                (Stage::Released, true) => out.push(Packet::PubRel(Ack::new(id))),
                (Stage::Published(_), false) => renew.push(id),
                (Stage::Released, false) => {
                    if let Some(flight) = self.inflight.remove(&id) {
                        answer(flight.reply, Ok(success()));
                    }
                }
            }
        }
        // Sent again as new publishes, ahead of those that never went.
        for id in renew.into_iter().rev() {
            if let Some(InFlight {
                stage: Stage::Published(publish),
                reply,
                ..
            }) = self.inflight.remove(&id)
            {
                let mut publish = *publish;
                publish.dup = false;
                self.waiting.push_front(Waiting { publish, reply });
            }
        }
        let mut ids: Vec<u16> = self.requests.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            match self.requests.get(&id) {
                Some(Request::Subscribe(s, _)) => out.push(Packet::Subscribe(s.clone())),
                Some(Request::Unsubscribe(u, _)) => out.push(Packet::Unsubscribe(u.clone())),
                None => {}
            }
        }
        out
    }

    /// Queues a publish. QoS 0 is returned at once to be sent (and its caller answered);
    /// QoS 1 and 2 wait their turn in the window: call [`Session::next_to_send`].
    pub(crate) fn publish(
        &mut self,
        publish: Publish,
        reply: Option<Reply<PublishOutcome>>,
    ) -> Option<Packet> {
        if publish.qos == QoS::AtMostOnce {
            answer(reply, Ok(success()));
            return Some(Packet::Publish(publish));
        }
        self.waiting.push_back(Waiting { publish, reply });
        None
    }

    /// The queued publishes the window has room for, given their packet ids.
    pub(crate) fn next_to_send(&mut self, out: &mut Vec<Packet>) {
        while self.inflight.len().saturating_sub(self.held.len()) < self.window {
            if let Some(id) = self.held.pop_front() {
                if let Some(InFlight {
                    stage: Stage::Published(publish),
                    ..
                }) = self.inflight.get(&id)
                {
                    out.push(Packet::Publish((**publish).clone()));
                }
                continue;
            }
            let Some(Waiting { mut publish, reply }) = self.waiting.pop_front() else {
                break;
            };
            let Some(id) = self.allocate_id() else {
                self.waiting.push_front(Waiting { publish, reply });
                break;
            };
            publish.packet_id = id;
            out.push(Packet::Publish(publish.clone()));
            self.next_seq += 1;
            self.inflight.insert(
                id,
                InFlight {
                    seq: self.next_seq,
                    stage: Stage::Published(Box::new(publish)),
                    reply,
                },
            );
        }
    }

    pub(crate) fn subscribe(
        &mut self,
        mut subscribe: Subscribe,
        reply: Reply<SubAck>,
    ) -> Option<Packet> {
        let Some(id) = self.allocate_id() else {
            let _ = reply.send(Err(ClientError::NoPacketId));
            return None;
        };
        subscribe.packet_id = id;
        let packet = Packet::Subscribe(subscribe.clone());
        self.requests
            .insert(id, Request::Subscribe(subscribe, reply));
        Some(packet)
    }

    pub(crate) fn unsubscribe(
        &mut self,
        mut unsubscribe: Unsubscribe,
        reply: Reply<UnsubAck>,
    ) -> Option<Packet> {
        let Some(id) = self.allocate_id() else {
            let _ = reply.send(Err(ClientError::NoPacketId));
            return None;
        };
        unsubscribe.packet_id = id;
        let packet = Packet::Unsubscribe(unsubscribe.clone());
        self.requests
            .insert(id, Request::Unsubscribe(unsubscribe, reply));
        Some(packet)
    }

    /// An acknowledgement from the broker; returns what to send in answer. An id we do not
    /// know is ignored (a duplicate after a resend).
    pub(crate) fn acknowledgement(&mut self, packet: Packet, out: &mut Vec<Packet>) {
        if !self.held.is_empty() {
            // An answer for a message not sent again yet: it is no longer to be sent.
            if let Packet::PubAck(ack) | Packet::PubRec(ack) | Packet::PubComp(ack) = &packet {
                self.held.retain(|id| *id != ack.packet_id);
            }
        }
        match packet {
            Packet::PubAck(ack) => {
                if let Some(flight) = self.inflight.remove(&ack.packet_id) {
                    answer(flight.reply, Ok(outcome(ack)));
                }
            }
            Packet::PubRec(ack) => {
                let id = ack.packet_id;
                if ack.reason_code.is_error() {
                    // The flow ends here [MQTT-4.3.3]: no PUBREL for a refused message.
                    if let Some(flight) = self.inflight.remove(&id) {
                        answer(flight.reply, Ok(outcome(ack)));
                    }
                } else if let Some(flight) = self.inflight.get_mut(&id) {
                    flight.stage = Stage::Released;
                    out.push(Packet::PubRel(Ack::new(id)));
                } else {
                    // A PUBREC for a flow we have ended: release it, or the broker holds it.
                    out.push(Packet::PubRel(Ack {
                        reason_code: ReasonCode::PacketIdentifierNotFound,
                        ..Ack::new(id)
                    }));
                }
            }
            Packet::PubComp(ack) => {
                if let Some(flight) = self.inflight.remove(&ack.packet_id) {
                    answer(flight.reply, Ok(outcome(ack)));
                }
            }
            Packet::SubAck(suback) => {
                if let Some(Request::Subscribe(_, reply)) = self.requests.remove(&suback.packet_id)
                {
                    let _ = reply.send(Ok(suback));
                }
            }
            Packet::UnsubAck(unsuback) => {
                if let Some(Request::Unsubscribe(_, reply)) =
                    self.requests.remove(&unsuback.packet_id)
                {
                    let _ = reply.send(Ok(unsuback));
                }
            }
            _ => {}
        }
        self.next_to_send(out);
    }

    /// An inbound QoS 2 PUBLISH: `true` when it is new and must be handed to the application;
    /// a copy the broker sends again before PUBREL is not [MQTT-4.3.3-9].
    pub(crate) fn inbound_qos2(&mut self, packet_id: u16) -> bool {
        self.inbound_qos2.insert(packet_id)
    }

    /// Manual acknowledgement: an inbound PUBLISH; `true` when it is to be handed to the
    /// application. Nothing is acknowledged here: [`Session::app_ack`] does it. A copy sent
    /// again (after a reconnection) of one the application holds is not handed out twice; of
    /// a QoS 2 one already acknowledged (PUBREC sent), it gets PUBREC again [MQTT-4.3.3-9].
    pub(crate) fn inbound_manual(&mut self, publish: &Publish, out: &mut Vec<Packet>) -> bool {
        let id = publish.packet_id;
        match publish.qos {
            QoS::AtMostOnce => true,
            QoS::ExactlyOnce if self.inbound_qos2.contains(&id) => {
                out.push(Packet::PubRec(Ack::new(id)));
                false
            }
            qos => self.awaiting_ack.insert(id, qos).is_none(),
        }
    }

    /// Manual acknowledgement: the application is done with inbound `packet_id`; returns the
    /// PUBACK or PUBREC to send (none for an id not awaiting, e.g. from before a reconnection
    /// that lost the session). Offline the packet is dropped: the broker sends the PUBLISH
    /// again, and a QoS 2 one then gets its PUBREC at once.
    pub(crate) fn app_ack(&mut self, packet_id: u16) -> Option<Packet> {
        match self.awaiting_ack.remove(&packet_id)? {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(Packet::PubAck(Ack::new(packet_id))),
            QoS::ExactlyOnce => {
                self.inbound_qos2.insert(packet_id);
                Some(Packet::PubRec(Ack::new(packet_id)))
            }
        }
    }

    /// PUBREL: the id may be used for a new message from here on.
    pub(crate) fn release(&mut self, packet_id: u16) -> Packet {
        let known = self.inbound_qos2.remove(&packet_id);
        Packet::PubComp(Ack {
            reason_code: if known {
                ReasonCode::Success
            } else {
                ReasonCode::PacketIdentifierNotFound
            },
            ..Ack::new(packet_id)
        })
    }

    /// The client ends: every waiting caller learns it.
    pub(crate) fn fail_all(&mut self, error: impl Fn() -> ClientError) {
        self.held.clear();
        for (_, flight) in self.inflight.drain() {
            answer(flight.reply, Err(error()));
        }
        for waiting in self.waiting.drain(..) {
            answer(waiting.reply, Err(error()));
        }
        for (_, request) in self.requests.drain() {
            match request {
                Request::Subscribe(_, reply) => {
                    let _ = reply.send(Err(error()));
                }
                Request::Unsubscribe(_, reply) => {
                    let _ = reply.send(Err(error()));
                }
            }
        }
    }
}

fn success() -> PublishOutcome {
    PublishOutcome {
        reason_code: ReasonCode::Success,
        properties: Properties::default(),
    }
}

fn outcome(ack: Ack) -> PublishOutcome {
    PublishOutcome {
        reason_code: ack.reason_code,
        properties: ack.properties,
    }
}

fn answer(reply: Option<Reply<PublishOutcome>>, result: Result<PublishOutcome, ClientError>) {
    if let Some(reply) = reply {
        // The caller may have stopped waiting: nothing to tell then.
        let _ = reply.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::MqttStr;

    fn publish(qos: QoS) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: MqttStr::from_static("t"),
            packet_id: 0,
            properties: Properties::default(),
            payload: bytes::Bytes::from_static(b"x"),
        }
    }

    /// Issue 13: the outbound window is the broker's Receive Maximum (MQTT 5 3.3.4: the client
    /// sends no more than Receive Maximum unacknowledged QoS 1 and 2 publishes).
    #[test]
    fn window_holds_to_receive_maximum_mqtt_3_3_4_9() {
        let mut session = Session::new(64);
        session.resume(false, 2);
        for _ in 0..5 {
            assert!(session.publish(publish(QoS::AtLeastOnce), None).is_none());
        }
        let mut out = Vec::new();
        session.next_to_send(&mut out);
        assert_eq!(out.len(), 2);
        let Packet::Publish(first) = &out[0] else {
            panic!("{out:?}")
        };
        let mut more = Vec::new();
        session.acknowledgement(Packet::PubAck(Ack::new(first.packet_id)), &mut more);
        assert_eq!(more.len(), 1, "one acknowledged, one more goes");
        assert_eq!(session.queued(), 2);
    }

    /// MQTT-4.4.0-1: on a resumed session unacknowledged PUBLISH go again with DUP, in order,
    /// and PUBREL for the released ones.
    #[test]
    fn resume_resends_publish_with_dup_and_pubrel_mqtt_4_4_0_1() {
        let mut session = Session::new(10);
        session.resume(false, 10);
        session.publish(publish(QoS::ExactlyOnce), None);
        session.publish(publish(QoS::AtLeastOnce), None);
        let mut out = Vec::new();
        session.next_to_send(&mut out);
        let ids: Vec<u16> = out
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.packet_id),
                _ => None,
            })
            .collect();
        let mut rel = Vec::new();
        session.acknowledgement(Packet::PubRec(Ack::new(ids[0])), &mut rel);
        assert!(matches!(rel.as_slice(), [Packet::PubRel(a)] if a.packet_id == ids[0]));
        let again = session.resume(true, 10);
        assert!(matches!(&again[0], Packet::PubRel(a) if a.packet_id == ids[0]));
        assert!(matches!(&again[1], Packet::Publish(p) if p.dup && p.packet_id == ids[1]));
    }

    /// MQTT-3.3.4-7 with MQTT-4.4.0-1: a resumed session whose broker now takes fewer
    /// publishes at once (Receive Maximum 1) gets the unacknowledged ones again one at a time,
    /// each with DUP and its id, in order, the next when the previous is acknowledged.
    #[test]
    fn resume_resends_within_the_new_receive_maximum_mqtt_3_3_4_7() {
        let mut session = Session::new(10);
        session.resume(false, 10);
        for _ in 0..3 {
            session.publish(publish(QoS::AtLeastOnce), None);
        }
        let mut out = Vec::new();
        session.next_to_send(&mut out);
        let ids: Vec<u16> = out
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.packet_id),
                _ => None,
            })
            .collect();
        assert_eq!(ids.len(), 3);
        // One more waiting behind them.
        session.publish(publish(QoS::AtLeastOnce), None);
        let again = session.resume(true, 1);
        assert!(
            matches!(again.as_slice(), [Packet::Publish(p)] if p.dup && p.packet_id == ids[0]),
            "{again:?}"
        );
        for (n, id) in ids.iter().enumerate() {
            let mut next = Vec::new();
            session.acknowledgement(Packet::PubAck(Ack::new(*id)), &mut next);
            match ids.get(n + 1) {
                Some(following) => assert!(
                    matches!(next.as_slice(), [Packet::Publish(p)] if p.dup && p.packet_id == *following),
                    "{next:?}"
                ),
                None => assert!(
                    matches!(next.as_slice(), [Packet::Publish(p)] if !p.dup),
                    "then the waiting one: {next:?}"
                ),
            }
        }
    }

    /// MQTT 5 3.2.2.1.1 (session present 0): the broker forgot the session, so publishes
    /// unacknowledged go again as new ones (no DUP, new ids), and a QoS 2 message already
    /// released counts as delivered.
    #[test]
    fn resume_without_session_renews_publishes_and_settles_releases() {
        let mut session = Session::new(10);
        session.resume(false, 10);
        let (tx_rel, mut rx_rel) = oneshot::channel();
        session.publish(publish(QoS::ExactlyOnce), Some(tx_rel));
        session.publish(publish(QoS::AtLeastOnce), None);
        let mut out = Vec::new();
        session.next_to_send(&mut out);
        let Packet::Publish(first) = &out[0] else {
            panic!("{out:?}")
        };
        session.acknowledgement(Packet::PubRec(Ack::new(first.packet_id)), &mut Vec::new());
        let again = session.resume(false, 10);
        assert!(again.is_empty(), "nothing is resent as is: {again:?}");
        let outcome = rx_rel.try_recv().expect("settled").expect("delivered");
        assert_eq!(outcome.reason_code, ReasonCode::Success);
        let mut renewed = Vec::new();
        session.next_to_send(&mut renewed);
        assert!(
            matches!(renewed.as_slice(), [Packet::Publish(p)] if !p.dup && p.qos == QoS::AtLeastOnce)
        );
    }

    fn inbound(qos: QoS, id: u16, dup: bool) -> Publish {
        Publish {
            packet_id: id,
            dup,
            ..publish(qos)
        }
    }

    /// Issue 15 (manual acknowledgement): QoS 1 and 2 are acknowledged only when the
    /// application says so; a resend of one it holds is not handed out twice.
    #[test]
    fn manual_ack_waits_for_the_application() {
        let mut session = Session::new(10);
        let mut out = Vec::new();
        assert!(session.inbound_manual(&inbound(QoS::AtLeastOnce, 3, false), &mut out));
        assert!(session.inbound_manual(&inbound(QoS::ExactlyOnce, 4, false), &mut out));
        assert!(
            out.is_empty(),
            "nothing acknowledged before the application"
        );
        assert!(!session.inbound_manual(&inbound(QoS::AtLeastOnce, 3, true), &mut out));
        assert!(!session.inbound_manual(&inbound(QoS::ExactlyOnce, 4, true), &mut out));
        assert!(out.is_empty());
        assert!(matches!(session.app_ack(3), Some(Packet::PubAck(a)) if a.packet_id == 3));
        assert!(matches!(session.app_ack(4), Some(Packet::PubRec(a)) if a.packet_id == 4));
        assert!(session.app_ack(3).is_none(), "acknowledged once");
        assert!(session.inbound_manual(&inbound(QoS::AtMostOnce, 0, false), &mut out));
    }

    /// Issue 15 with MQTT-4.3.3-9: a QoS 2 message the application acknowledged (PUBREC),
    /// sent again after a reconnection with the session, gets PUBREC again and is not handed
    /// out again, also when the acknowledgement was given while offline; PUBREL ends it.
    #[test]
    fn manual_ack_qos2_resend_is_answered_not_redelivered() {
        let mut session = Session::new(10);
        let mut out = Vec::new();
        assert!(session.inbound_manual(&inbound(QoS::ExactlyOnce, 9, false), &mut out));
        // Acknowledged while the connection was down: the packet is dropped.
        assert!(session.app_ack(9).is_some());
        session.resume(true, 10);
        assert!(!session.inbound_manual(&inbound(QoS::ExactlyOnce, 9, true), &mut out));
        assert!(matches!(out.as_slice(), [Packet::PubRec(a)] if a.packet_id == 9));
        assert!(
            matches!(session.release(9), Packet::PubComp(a) if a.reason_code == ReasonCode::Success)
        );
        // Without the session the application's late acknowledgement sends nothing.
        out.clear();
        assert!(session.inbound_manual(&inbound(QoS::AtLeastOnce, 5, false), &mut out));
        session.resume(false, 10);
        assert!(session.app_ack(5).is_none());
    }

    /// MQTT-4.3.3-9: a QoS 2 message sent again before PUBREL is not delivered twice.
    #[test]
    fn inbound_qos2_held_until_pubrel_mqtt_4_3_3_9() {
        let mut session = Session::new(10);
        assert!(session.inbound_qos2(7));
        assert!(!session.inbound_qos2(7));
        assert!(
            matches!(session.release(7), Packet::PubComp(a) if a.reason_code == ReasonCode::Success)
        );
        assert!(session.inbound_qos2(7));
    }
}
