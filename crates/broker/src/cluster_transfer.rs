//! A session handed from one node of a cluster to another: taken out of this broker
//! ([`Broker::export_session`]), carried as bytes ([`SessionTransfer::encode`] and
//! [`SessionTransfer::decode`]), installed on the node its client reconnected to
//! ([`Broker::import_session`]) as an offline, stored session that the next CONNECT resumes
//! with session present, its in-flight messages sent again with DUP [MQTT-4.4.0-1].
//!
//! The format is the codec's: each message is an MQTT 5 PUBLISH packet; the rest are
//! big-endian integers and length-prefixed MQTT strings behind a format byte. Decoding checks
//! every length and tag and never panics.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tern_codec::{
    DecodeError, EncodeError, MqttStr, Packet, ProtocolVersion, Publish, QoS, RetainHandling,
    SubscriptionOptions,
};

use crate::broker::{Broker, TimerKind, lock, write};
use crate::message::{ClusterMessageId, Delivery, Message, MessageRef, SubscriptionIds};
use crate::persist::{Change, RoutedBody};
use crate::session::{Came, Enqueued, Inflight, QueuedDelivery, SeenIds, Session, SessionState};
use crate::types::{InflightState, Seq, SessionExpiry, SubscriptionRecord};
use crate::unstored::Durability;

/// The first byte of an encoded transfer: its layout.
const FORMAT: u8 = 1;

/// Cluster: what the previous owner of a moved session had, before it handed the session
/// over, of the messages planned before the session's routes reached every table (see
/// [`Broker::seen_previous_owner`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviousOwner {
    /// The log index from which the previous owner's routes for the session were in every
    /// table (0: long before anything still on its way).
    pub routes_from: u64,
    /// The nodes that answered its flush, each with its run then: each of their copies
    /// planned in that run reached it.
    pub flushed: Vec<(u64, u64)>,
    /// Nodes that did not answer, each with its run and the number of its last message that
    /// had reached the previous owner when it exported the session: each of their copies
    /// planned in that run up to that number reached it (or reached it after the export,
    /// and follows as a late copy).
    pub reached: Vec<(u64, u64, u64)>,
}

impl PreviousOwner {
    /// Whether it says anything (no node listed: nothing is known to have reached it).
    pub fn is_empty(&self) -> bool {
        self.flushed.is_empty() && self.reached.is_empty()
    }
}

/// A persistent session on its way to another node: what it remembers of its client.
/// Its will is not carried: its client came back (on the other node) within the session, so
/// a pending will is not sent [MQTT-3.1.3-9].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTransfer {
    pub client_id: MqttStr,
    pub expiry: SessionExpiry,
    pub subscriptions: Vec<(MqttStr, SubscriptionRecord)>,
    /// Messages waiting to be sent, in order.
    pub queue: Vec<TransferredDelivery>,
    /// Messages sent and not acknowledged (or QoS 2 awaiting PUBCOMP), in sending order.
    pub inflight: Vec<TransferredInflight>,
    /// Inbound QoS 2 packet identifiers whose PUBREL is awaited [MQTT-4.3.3-10].
    pub inbound_qos2: Vec<u16>,
}

/// A message on its way to the session's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferredDelivery {
    /// The message, with no expiry instant (see `expires_in`) and no store id.
    pub message: Message,
    /// What was left of its Message Expiry Interval when it was exported.
    pub expires_in: Option<Duration>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: SubscriptionIds,
    pub shared_filter: Option<MqttStr>,
}

/// An outbound message in flight, with its packet identifier and where its flow stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferredInflight {
    pub packet_id: u16,
    pub state: InflightState,
    pub delivery: TransferredDelivery,
}

/// Why a transfer could not be encoded, decoded or imported.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransferError {
    #[error("unknown session transfer format {0}")]
    Format(u8),
    #[error("truncated session transfer: {0}")]
    Truncated(&'static str),
    #[error("invalid session transfer: {0}")]
    Invalid(&'static str),
    #[error("session transfer: a message: {0}")]
    Message(#[from] DecodeError),
    #[error("session transfer: a message cannot be encoded: {0}")]
    Encode(#[from] EncodeError),
    #[error("session transfer: {0} bytes after the end")]
    Trailing(usize),
    #[error("a session that ends with its connection is not transferred")]
    NotPersistent,
    #[error("the client is connected to this node")]
    Connected,
    #[error("no session of this client id here")]
    NoSession,
}

impl TransferredDelivery {
    fn from_delivery(delivery: &Delivery, now: Instant) -> TransferredDelivery {
        let mut message = Message::clone(&delivery.message);
        let expires_in = message
            .expires_at
            .take()
            .map(|at| at.saturating_duration_since(now));
        message.id = 0;
        TransferredDelivery {
            message,
            expires_in,
            qos: delivery.qos,
            retain: delivery.retain,
            subscription_ids: delivery.subscription_ids.clone(),
            shared_filter: delivery.shared_filter.clone(),
        }
    }

    /// The delivery on this node: its expiry counted from `now`, its body under a new store
    /// id (0 for QoS 0, which is never stored).
    fn into_delivery(self, broker: &Broker, now: Instant) -> Delivery {
        let mut message = self.message;
        message.expires_at = self.expires_in.map(|left| now + left);
        if message.qos != QoS::AtMostOnce {
            message.id = broker.new_message_id();
        }
        Delivery {
            message: MessageRef::Shared(Arc::new(message.compacted())),
            qos: self.qos,
            retain: self.retain,
            subscription_ids: self.subscription_ids,
            shared_filter: self.shared_filter,
        }
    }
}

impl SessionTransfer {
    /// Takes the transfer out of a session's state (the session is ending).
    fn from_state(client_id: &MqttStr, state: &SessionState, now: Instant) -> SessionTransfer {
        let mut subscriptions: Vec<(MqttStr, SubscriptionRecord)> = state
            .subscriptions
            .iter()
            .map(|(filter, record)| (filter.clone(), *record))
            .collect();
        subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
        SessionTransfer {
            client_id: client_id.clone(),
            expiry: state.expiry,
            subscriptions,
            queue: state
                .queue
                .iter()
                .map(|queued| TransferredDelivery::from_delivery(&queued.delivery, now))
                .collect(),
            inflight: state
                .inflight
                .iter()
                .map(|entry| TransferredInflight {
                    packet_id: entry.packet_id,
                    state: entry.state,
                    delivery: TransferredDelivery::from_delivery(&entry.delivery, now),
                })
                .collect(),
            inbound_qos2: state.inbound_qos2.clone(),
        }
    }

    /// The transfer as bytes (see the module comment).
    pub fn encode(&self) -> Result<Vec<u8>, TransferError> {
        let mut w = BytesMut::with_capacity(256);
        w.put_u8(FORMAT);
        put_str(&mut w, &self.client_id);
        match self.expiry {
            SessionExpiry::AtDisconnect => w.put_u8(0),
            SessionExpiry::After(after) => {
                w.put_u8(1);
                put_duration(&mut w, after);
            }
            SessionExpiry::Never => w.put_u8(2),
        }
        put_len(&mut w, self.subscriptions.len());
        for (filter, record) in &self.subscriptions {
            put_str(&mut w, filter);
            let options = record.options;
            w.put_u8(
                options.qos.as_u8()
                    | (u8::from(options.no_local) << 2)
                    | (u8::from(options.retain_as_published) << 3)
                    | ((options.retain_handling as u8) << 4),
            );
            put_option_u32(&mut w, record.identifier);
        }
        put_len(&mut w, self.queue.len());
        for delivery in &self.queue {
            put_delivery(&mut w, delivery)?;
        }
        put_len(&mut w, self.inflight.len());
        for entry in &self.inflight {
            w.put_u16(entry.packet_id);
            w.put_u8(match entry.state {
                InflightState::AwaitingPubAck => 0,
                InflightState::AwaitingPubRec => 1,
                InflightState::AwaitingPubComp => 2,
            });
            put_delivery(&mut w, &entry.delivery)?;
        }
        put_len(&mut w, self.inbound_qos2.len());
        for &packet_id in &self.inbound_qos2 {
            w.put_u16(packet_id);
        }
        Ok(w.to_vec())
    }

    /// Reads a transfer [`SessionTransfer::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<SessionTransfer, TransferError> {
        let mut r = Reader(bytes);
        let format = r.u8("format")?;
        if format != FORMAT {
            return Err(TransferError::Format(format));
        }
        let client_id = r.string("client id")?;
        let expiry = match r.u8("session expiry")? {
            0 => SessionExpiry::AtDisconnect,
            1 => SessionExpiry::After(r.duration()?),
            2 => SessionExpiry::Never,
            _ => return Err(TransferError::Invalid("session expiry kind")),
        };
        // Each count is checked against the bytes left (an entry takes at least one) before
        // anything is allocated for it.
        let count = r.count(3)?;
        let mut subscriptions = Vec::with_capacity(count);
        for _ in 0..count {
            let filter = r.string("filter")?;
            let byte = r.u8("subscription options")?;
            let qos = QoS::from_u8(byte & 0b11).ok_or(TransferError::Invalid("granted QoS"))?;
            let retain_handling = match (byte >> 4) & 0b11 {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendAtSubscribeIfNew,
                2 => RetainHandling::DoNotSend,
                _ => return Err(TransferError::Invalid("retain handling")),
            };
            if byte & 0b1100_0000 != 0 {
                return Err(TransferError::Invalid("subscription options"));
            }
            let identifier = r.option_u32("subscription identifier")?;
            let options = SubscriptionOptions {
                qos,
                no_local: byte & 0b0100 != 0,
                retain_as_published: byte & 0b1000 != 0,
                retain_handling,
            };
            subscriptions.push((
                filter,
                SubscriptionRecord {
                    options,
                    identifier,
                },
            ));
        }
        let count = r.count(8)?;
        let mut queue = Vec::with_capacity(count);
        for _ in 0..count {
            queue.push(r.delivery()?);
        }
        let count = r.count(11)?;
        let mut inflight = Vec::with_capacity(count);
        for _ in 0..count {
            let packet_id = r.u16("packet identifier")?;
            let state = match r.u8("in-flight state")? {
                0 => InflightState::AwaitingPubAck,
                1 => InflightState::AwaitingPubRec,
                2 => InflightState::AwaitingPubComp,
                _ => return Err(TransferError::Invalid("in-flight state")),
            };
            if packet_id == 0 {
                return Err(TransferError::Invalid("packet identifier 0"));
            }
            let delivery = r.delivery()?;
            inflight.push(TransferredInflight {
                packet_id,
                state,
                delivery,
            });
        }
        let count = r.count(2)?;
        let mut inbound_qos2 = Vec::with_capacity(count);
        for _ in 0..count {
            inbound_qos2.push(r.u16("inbound packet identifier")?);
        }
        if !r.0.is_empty() {
            return Err(TransferError::Trailing(r.0.len()));
        }
        Ok(SessionTransfer {
            client_id,
            expiry,
            subscriptions,
            queue,
            inflight,
            inbound_qos2,
        })
    }
}

fn put_len(w: &mut BytesMut, len: usize) {
    // Counts of one session: far below 4 G (a queue and a window are bounded).
    w.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

fn put_str(w: &mut BytesMut, value: &MqttStr) {
    // An MqttStr is at most 65 535 bytes long.
    w.put_u16(u16::try_from(value.len()).unwrap_or(u16::MAX));
    w.put_slice(value.as_bytes());
}

fn put_option_str(w: &mut BytesMut, value: Option<&MqttStr>) {
    match value {
        None => w.put_u8(0),
        Some(value) => {
            w.put_u8(1);
            put_str(w, value);
        }
    }
}

fn put_option_u32(w: &mut BytesMut, value: Option<u32>) {
    match value {
        None => w.put_u8(0),
        Some(value) => {
            w.put_u8(1);
            w.put_u32(value);
        }
    }
}

fn put_duration(w: &mut BytesMut, value: Duration) {
    w.put_u64(value.as_secs());
    w.put_u32(value.subsec_nanos());
}

/// A delivery: its own fields, then the message as an MQTT 5 PUBLISH.
fn put_delivery(w: &mut BytesMut, delivery: &TransferredDelivery) -> Result<(), TransferError> {
    let id = delivery.message.cluster_id.as_deref();
    w.put_u8(
        delivery.qos.as_u8() | (u8::from(delivery.retain) << 2) | (u8::from(id.is_some()) << 3),
    );
    if let Some(id) = id {
        w.put_u64(id.node);
        w.put_u64(id.run);
        w.put_u64(id.number);
    }
    let ids = delivery.subscription_ids.as_slice();
    put_len(w, ids.len());
    for &id in ids {
        w.put_u32(id);
    }
    put_option_str(w, delivery.shared_filter.as_ref());
    put_option_str(w, delivery.message.publisher.as_ref());
    match delivery.expires_in {
        None => w.put_u8(0),
        Some(left) => {
            w.put_u8(1);
            put_duration(w, left);
        }
    }
    let message = &delivery.message;
    let publish = Publish {
        dup: false,
        qos: message.qos,
        retain: message.retain,
        topic: message.topic.clone(),
        // Any non-zero identifier: the packet is only a container here.
        packet_id: u16::from(message.qos != QoS::AtMostOnce),
        properties: message.properties.as_deref().cloned().unwrap_or_default(),
        payload: message.payload.clone(),
    };
    let packet = Packet::Publish(publish);
    let len = packet.encoded_len(ProtocolVersion::V5)?;
    put_len(w, len);
    packet.encode(ProtocolVersion::V5, w)?;
    Ok(())
}

/// Reads the fields [`SessionTransfer::encode`] wrote, checking each length.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], TransferError> {
        if self.0.len() < len {
            return Err(TransferError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], TransferError> {
        self.take(N, what)?
            .try_into()
            .map_err(|_| TransferError::Truncated(what))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, TransferError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, TransferError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, TransferError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, TransferError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// A count of entries of at least `min_size` bytes each, checked against what is left.
    fn count(&mut self, min_size: usize) -> Result<usize, TransferError> {
        let count = usize::try_from(self.u32("count")?).unwrap_or(usize::MAX);
        if count > self.0.len() / min_size {
            return Err(TransferError::Truncated("more entries than bytes"));
        }
        Ok(count)
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, TransferError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(TransferError::Invalid(what)),
        }
    }

    fn string(&mut self, what: &'static str) -> Result<MqttStr, TransferError> {
        let len = usize::from(self.u16(what)?);
        let bytes = bytes::Bytes::copy_from_slice(self.take(len, what)?);
        MqttStr::from_bytes(bytes).map_err(|_| TransferError::Invalid(what))
    }

    fn option_string(&mut self, what: &'static str) -> Result<Option<MqttStr>, TransferError> {
        Ok(match self.flag(what)? {
            false => None,
            true => Some(self.string(what)?),
        })
    }

    fn option_u32(&mut self, what: &'static str) -> Result<Option<u32>, TransferError> {
        Ok(match self.flag(what)? {
            false => None,
            true => Some(self.u32(what)?),
        })
    }

    fn duration(&mut self) -> Result<Duration, TransferError> {
        let seconds = u64::from_be_bytes(self.array("duration")?);
        let nanos = self.u32("duration")?;
        if nanos >= 1_000_000_000 {
            return Err(TransferError::Invalid("duration"));
        }
        Ok(Duration::new(seconds, nanos))
    }

    fn delivery(&mut self) -> Result<TransferredDelivery, TransferError> {
        let flags = self.u8("delivery flags")?;
        if flags & !0b1111 != 0 {
            return Err(TransferError::Invalid("delivery flags"));
        }
        let qos = QoS::from_u8(flags & 0b11).ok_or(TransferError::Invalid("delivery QoS"))?;
        let retain = flags & 0b100 != 0;
        let cluster_id = if flags & 0b1000 != 0 {
            Some(Box::new(ClusterMessageId {
                node: self.u64("message node")?,
                run: self.u64("message run")?,
                number: self.u64("message number")?,
                planned_at: 0,
            }))
        } else {
            None
        };
        let count = self.count(4)?;
        let mut subscription_ids = SubscriptionIds::None;
        for _ in 0..count {
            subscription_ids.push(self.u32("subscription identifier")?);
        }
        let shared_filter = self.option_string("shared filter")?;
        let publisher = self.option_string("publisher")?;
        let expires_in = match self.flag("expiry flag")? {
            false => None,
            true => Some(self.duration()?),
        };
        let len = usize::try_from(self.u32("message length")?).unwrap_or(usize::MAX);
        let mut packet = BytesMut::from(self.take(len, "message")?);
        let publish = match Packet::decode(&mut packet, ProtocolVersion::V5, u32::MAX)? {
            Some(Packet::Publish(publish)) if packet.is_empty() => publish,
            _ => return Err(TransferError::Invalid("message")),
        };
        let properties = (!publish.properties.is_empty()).then(|| Arc::new(publish.properties));
        let message = Message {
            cluster_id,
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties,
            expires_at: None,
            publisher,
            id: 0,
        };
        Ok(TransferredDelivery {
            message,
            expires_in,
            qos,
            retain,
            subscription_ids,
            shared_filter,
        })
    }
}

impl Broker {
    /// Takes the offline session of `client_id` out of this broker for another node of a
    /// cluster: its subscriptions (their routes reported gone), queued messages, messages in
    /// flight with their packet identifiers and states, inbound QoS 2 identifiers and expiry.
    /// The session ends here (the store forgets it) and its pending will is dropped, as for a
    /// client that resumed its session [MQTT-3.1.3-9]. `None` when there is no such session
    /// or a connection is still attached (after [`Broker::take_over`], once it has closed).
    pub fn export_session(&self, client_id: &str, now: Instant) -> Option<SessionTransfer> {
        let mut transfer = None;
        let client = MqttStr::try_from(client_id).ok()?;
        self.end_offline_session(client_id, |state| {
            transfer = Some(SessionTransfer::from_state(&client, state, now));
        });
        transfer
    }

    /// Installs a session handed over by another node: offline, stored (so it survives a
    /// restart), its subscriptions indexed (their routes reported), its expiry counted from
    /// `now`. The next CONNECT of its client without clean start resumes it with session
    /// present, and its messages in flight go out again, PUBLISH with DUP [MQTT-4.4.0-1].
    /// An offline session of the same client id here is replaced (without its will). Returns
    /// the store sequence number the hand-over's acknowledgement must wait for.
    pub fn import_session(
        &self,
        transfer: SessionTransfer,
        now: Instant,
    ) -> Result<Seq, TransferError> {
        let session = self.session_from_transfer(transfer, now)?;
        self.install_session(session, now)
            .ok_or(TransferError::Connected)
    }

    /// Cluster, closing the move window: a *shell* of the session of `transfer`'s client id
    /// (its durable subscriptions from the registry, nothing queued), made by a claim before
    /// it asks the previous owner for the session: installed like [`Broker::import_session`],
    /// it queues what its routes bring meanwhile, and [`Broker::adopt_handed_over`] merges it
    /// with what is handed over. The claim's `epoch` names what it remembers for late copies
    /// ([`Broker::seen_window`], [`Broker::forget_seen`]). It has the CONNECT's expiry (what
    /// a restart before the client attaches finds) but does not expire while it is a shell.
    pub fn import_shell(
        &self,
        transfer: SessionTransfer,
        epoch: u64,
        now: Instant,
    ) -> Result<Seq, TransferError> {
        let session = self.session_from_transfer(transfer, now)?;
        {
            let mut state = session.lock();
            state.shell = true;
            // Late copies may come once the session is handed over: what reaches the shell
            // is remembered from now on (see `Broker::publish_late`).
            state.seen = Some(Box::new(SeenIds::new(epoch)));
        }
        let seq = self
            .install_session(session.clone(), now)
            .ok_or(TransferError::Connected)?;
        // No expiry while the claim runs (its client attaches, or the hand-over replaces
        // the shell); the store keeps the CONNECT's for a restart in between.
        let mut state = session.lock();
        if let Some(at) = state.expires_at.take() {
            self.remove_timer(at, TimerKind::SessionExpiry, &session);
        }
        Ok(seq)
    }

    /// Cluster: the session of `client_id`, offline here once another node's claim took its
    /// connection, waits for its hand-over: its pending will is dropped (its client has
    /// connected on that node [MQTT-3.1.3-9]; forgotten in the store too) and its expiry
    /// stops (the hand-over, or a return of it to its new owner, ends it here).
    pub fn hold_for_hand_over(&self, client_id: &str) {
        let Some(session) = self.session(client_id) else {
            return;
        };
        let mut state = session.lock();
        if state.ended || state.owner.is_some() {
            return;
        }
        if let Some(will) = state.pending_will.take() {
            self.remove_timer(will.publish_at, TimerKind::WillDelay, &session);
            if state.stored {
                self.persist(|| Change::WillCleared {
                    client_id: session.client_id().clone(),
                });
            }
        }
        if let Some(at) = state.expires_at.take() {
            self.remove_timer(at, TimerKind::SessionExpiry, &session);
        }
    }

    /// Cluster: the session of `client_id` here, if the claim `epoch` made its shell, no
    /// longer remembers the cluster ids of what was queued for it since, and takes no late
    /// copy (none of that move can come any more). What it knows of the nodes that flushed
    /// stays until [`Broker::forget_move`].
    pub fn forget_seen(&self, client_id: &str, epoch: u64) {
        if let Some(session) = self.session(client_id) {
            let mut state = session.lock();
            if let Some(seen) = state.seen.as_deref_mut()
                && seen.epoch == epoch
            {
                seen.no_late_copies();
                if !seen.knows_anything() {
                    state.seen = None;
                }
            }
        }
    }

    /// Cluster: the session of `client_id` here, if the claim `epoch` made its shell,
    /// forgets all it knew of that move (no copy planned before the move's routes reached
    /// every table is expected any more).
    pub fn forget_move(&self, client_id: &str, epoch: u64) {
        if let Some(session) = self.session(client_id) {
            let mut state = session.lock();
            if state.seen.as_ref().is_some_and(|seen| seen.epoch == epoch) {
                state.seen = None;
            }
        }
    }

    /// Cluster: whether the session of `client_id` here still knows something of the move
    /// the claim `epoch` made ([`Broker::forget_move`] forgets it).
    pub fn knows_of_move(&self, client_id: &str, epoch: u64) -> bool {
        self.session(client_id).is_some_and(|session| {
            session
                .lock()
                .seen
                .as_ref()
                .is_some_and(|seen| seen.epoch == epoch)
        })
    }

    /// Cluster: the previous owner of the session of `client_id` here, whose shell the
    /// claim `epoch` made, handed it over having had `had`: the copies of the nodes that
    /// answered its flush (node id, run), each planned in that run before the session's
    /// routes reached every table, and those of the nodes that did not, up to the number of
    /// the last one that had reached it (node id, run, number). It delivered each on the old
    /// connection or handed it over. A copy of one that this node's routes bring to a plain
    /// subscription (to the shell, or to the session later) is dropped: the client may have
    /// taken it already ([MQTT-4.3.3-2] for QoS 2). Set before the shell merges with what
    /// was handed over ([`Broker::adopt_handed_over`]), which drops the shell's copies of
    /// them.
    ///
    /// Only copies planned from `had.routes_from` on: the log index from which the previous
    /// owner's routes for the session were in every table (a copy planned before may have
    /// gone to the owner before it, and come here only). Never a late copy: one that reached
    /// the previous owner after the export (sent after a later one of its node) comes as
    /// one, and is the client's only copy then.
    pub fn seen_previous_owner(&self, client_id: &str, epoch: u64, had: PreviousOwner) {
        if let Some(session) = self.session(client_id)
            && let Some(seen) = session.lock().seen.as_deref_mut()
            && seen.epoch == epoch
        {
            seen.set_previous_owner(had);
        }
    }

    /// Cluster: the log index from which every table routed the session of `client_id` to
    /// this node, if a move brought it here recently (it still remembers that move:
    /// `u64::MAX` when its routes were not known to be everywhere); `None` for a session that
    /// did not (its routes were everywhere long before anything still on its way).
    pub fn moved_in_at(&self, client_id: &str) -> Option<u64> {
        let session = self.session(client_id)?;
        let state = session.lock();
        state.seen.as_deref().map(|seen| seen.window)
    }

    /// Cluster: the routes of the session of `client_id` here, whose shell the claim `epoch`
    /// made, are in every table from log index `window` on: what was planned from then on
    /// came here only, and need not be remembered for late copies.
    pub fn seen_window(&self, client_id: &str, epoch: u64, window: u64) {
        if let Some(session) = self.session(client_id)
            && let Some(seen) = session.lock().seen.as_deref_mut()
            && seen.epoch == epoch
        {
            seen.window = window;
        }
    }

    /// Cluster: whether the session of `client_id` here is a shell ([`Broker::import_shell`])
    /// waiting for its hand-over.
    pub fn has_shell(&self, client_id: &str) -> bool {
        self.session(client_id).is_some_and(|session| {
            let state = session.lock();
            state.shell && !state.ended
        })
    }

    /// Cluster: ends the shell of `client_id` here ([`Broker::import_shell`]), with what it
    /// queued; false (nothing done) when the client id's session here is not a shell.
    #[allow(clippy::mutable_key_type)]
    pub fn end_shell(&self, client_id: &str) -> bool {
        let mut sessions = lock(&self.sessions);
        let Some(shell) = sessions
            .get(client_id)
            .map(|entry| entry.0.clone())
            .filter(|session| {
                let state = session.lock();
                state.shell && !state.ended && state.owner.is_none()
            })
        else {
            return false;
        };
        // The registry stays locked: nothing attaches to or replaces it in between.
        drop(self.end_session_in(&mut sessions, &shell, |_| {}));
        true
    }

    /// Cluster, closing the move window: installs a session handed over by another node in
    /// place of the shell this node made of it before asking for it
    /// ([`Broker::import_shell`]). The handed-over messages come first, in flight and then
    /// queued, in their order; then the shell's queued messages that are not among them:
    /// while the routes change, one message can reach both nodes, and its
    /// [`Message::cluster_id`] tells (the shell's copy is dropped). Within the queue limit:
    /// beyond it the oldest queued messages are dropped, as for any full queue. The session's
    /// subscriptions are the handed-over ones. Done under the registry's and the index's
    /// locks, so no message routed meanwhile finds neither session. Without a shell here, as
    /// [`Broker::import_session`] (an offline session that is not a shell is replaced).
    #[allow(clippy::mutable_key_type)]
    pub fn adopt_handed_over(
        &self,
        mut transfer: SessionTransfer,
        now: Instant,
    ) -> Result<Seq, TransferError> {
        let mut sessions = lock(&self.sessions);
        let shell = sessions
            .get(transfer.client_id.as_str())
            .map(|entry| entry.0.clone())
            .filter(|session| session.lock().shell);
        let Some(shell) = shell else {
            drop(sessions);
            return self.import_session(transfer, now);
        };
        if shell.is_online() || shell.lock().owner.is_some() {
            return Err(TransferError::Connected);
        }
        let mut index = write(&self.subscriptions);
        // The shell's copies the previous owner had, and the number of those it handed over.
        let mut had = Vec::new();
        let mut second_copies = 0;
        {
            let state = shell.lock();
            let seen = state.seen.as_deref();
            let held: HashSet<ClusterMessageId> = transfer
                .inflight
                .iter()
                .map(|entry| &entry.delivery)
                .chain(&transfer.queue)
                .filter_map(|delivery| delivery.message.cluster_id.as_deref().copied())
                .collect();
            let mut shell_deliveries = Vec::new();
            for delivery in state
                .inflight
                .iter()
                .map(|entry| &entry.delivery)
                .chain(state.queue.iter().map(|queued| &queued.delivery))
            {
                let Some(id) = delivery.message.cluster_id.as_deref() else {
                    shell_deliveries.push(TransferredDelivery::from_delivery(delivery, now));
                    continue;
                };
                if held.contains(id) {
                    second_copies += 1;
                    continue;
                }
                // A group's copy went to this node only: the previous owner had none of it.
                if delivery.shared_filter.is_none()
                    && seen.is_some_and(|seen| seen.previous_owner_had(id))
                {
                    had.push(*id);
                    continue;
                }
                shell_deliveries.push(TransferredDelivery::from_delivery(delivery, now));
            }
            transfer.queue.extend(shell_deliveries);
        }
        let limit = self.live_limits.max_queued_messages();
        if transfer.queue.len() > limit {
            let over = transfer.queue.len() - limit;
            transfer.queue.drain(..over);
            for _ in 0..over {
                self.metrics()
                    .bump(crate::metrics::Counter::MessagesDroppedQueueFull);
            }
        }
        // What the shell was given, and what was handed over, stays known to late copies
        // (but for the copies dropped as the previous owner's).
        let mut seen = shell.lock().seen.take();
        if let Some(seen) = seen.as_deref_mut() {
            for id in &had {
                seen.forget(id);
            }
            transfer
                .inflight
                .iter()
                .map(|entry| &entry.delivery)
                .chain(&transfer.queue)
                .filter_map(|delivery| delivery.message.cluster_id.as_deref())
                .for_each(|id| {
                    seen.record(*id);
                });
        }
        let session = self.session_from_transfer(transfer, now)?;
        session.lock().seen = seen;
        self.metrics().add(
            crate::metrics::Counter::SecondCopiesDropped,
            second_copies + had.len() as u64,
        );
        Ok(self.replace_session(&mut sessions, &mut index, Some(&shell), session, now))
    }

    /// A new offline session holding what `transfer` carries (not installed yet).
    fn session_from_transfer(
        &self,
        transfer: SessionTransfer,
        now: Instant,
    ) -> Result<Arc<Session>, TransferError> {
        if transfer.expiry == SessionExpiry::AtDisconnect {
            return Err(TransferError::NotPersistent);
        }
        let mut ids = HashSet::with_capacity(transfer.inflight.len());
        if !transfer
            .inflight
            .iter()
            .all(|entry| ids.insert(entry.packet_id))
        {
            return Err(TransferError::Invalid(
                "a packet identifier in flight twice",
            ));
        }
        let session = Arc::new(Session::new(transfer.client_id, transfer.expiry));
        {
            let mut state = session.lock();
            state.subscriptions = transfer.subscriptions.into_iter().collect();
            let mut queue = VecDeque::with_capacity(transfer.queue.len());
            for delivery in transfer.queue {
                queue.push_back(QueuedDelivery {
                    position: state.next_position,
                    delivery: delivery.into_delivery(self, now),
                    durability: Durability::Volatile,
                });
                state.next_position += 1;
            }
            state.queue = queue;
            for entry in transfer.inflight {
                state.push_inflight(Inflight {
                    packet_id: entry.packet_id,
                    delivery: entry.delivery.into_delivery(self, now),
                    state: entry.state,
                    // Sent again when the client resumes [MQTT-4.4.0-1].
                    pending: true,
                    dup: true,
                    send_after: Seq::NONE,
                    durability: Durability::Volatile,
                });
            }
            state.pending = state.inflight.len();
            state.inbound_qos2 = transfer.inbound_qos2;
        }
        Ok(session)
    }

    /// The offline sessions here and the queue position each would give its next message:
    /// what a node that restarts (or learns that another node claimed them) remembers as the
    /// end of what it may return (see [`Broker::export_returned`]).
    pub fn offline_sessions(&self) -> Vec<(String, u64)> {
        self.sessions_where(|session| !session.is_online())
            .into_iter()
            .filter_map(|session| {
                let state = session.lock();
                (!state.ended && state.owner.is_none())
                    .then(|| (session.client_id().to_string(), state.next_position))
            })
            .collect()
    }

    /// The queue position the next message of `client_id`'s session here would get.
    pub fn next_queue_position(&self, client_id: &str) -> Option<u64> {
        self.session(client_id)
            .map(|session| session.lock().next_position)
    }

    /// Cluster, "return the queue": takes the offline session of `client_id` out of this
    /// broker (as [`Broker::export_session`]: it ends here, its routes go, its will is
    /// dropped), keeping of its queue only the messages queued before position `before`
    /// (later ones reached it while the session's owner elsewhere had its routes: that owner
    /// has them). Its messages in flight are all kept.
    pub fn export_returned(
        &self,
        client_id: &str,
        before: u64,
        now: Instant,
    ) -> Option<SessionTransfer> {
        let mut transfer = None;
        let client = MqttStr::try_from(client_id).ok()?;
        self.end_offline_session(client_id, |state| {
            transfer = Some(returned_part(&client, state, before, now));
        });
        transfer
    }

    /// Cluster, "return the queue": what [`Broker::export_returned`] would take of the
    /// offline session of `client_id`, leaving it here (the first of a return's two steps:
    /// the copy ends here only once the owner has it). `None` when there is no offline
    /// session of that client id.
    pub fn peek_returned(
        &self,
        client_id: &str,
        before: u64,
        now: Instant,
    ) -> Option<SessionTransfer> {
        let client = MqttStr::try_from(client_id).ok()?;
        let session = self.session(client_id)?;
        let state = session.lock();
        if state.ended || state.owner.is_some() {
            return None;
        }
        Some(returned_part(&client, &state, before, now))
    }

    /// Cluster, "return the queue": appends the messages of `returned` (a copy of this
    /// client's session that another node held) to the session of its client id here, as
    /// any routed message is queued: after what waits already, within the queue limit
    /// (dropping the oldest), stored for a stored session, sent at once to a connected client.
    /// Its messages in flight come first, then its queue; they go out as new PUBLISH packets
    /// with packet identifiers of this session. A QoS 2 message whose PUBREC came (awaiting
    /// PUBCOMP) was received by the client and is not sent again. Its subscriptions are not
    /// merged (the registry gave this session the durable ones). Returns the store sequence
    /// number the return's acknowledgement must wait for; [`TransferError::NoSession`] when
    /// there is no live session of that client id here.
    pub fn merge_returned(
        &self,
        returned: SessionTransfer,
        now: Instant,
    ) -> Result<Seq, TransferError> {
        let session = self
            .session(returned.client_id.as_str())
            .ok_or(TransferError::NoSession)?;
        if session.lock().ended {
            return Err(TransferError::NoSession);
        }
        let deliveries = returned
            .inflight
            .into_iter()
            .filter(|entry| entry.state != InflightState::AwaitingPubComp)
            .map(|entry| entry.delivery)
            .chain(returned.queue);
        let mut seq = Seq::NONE;
        for delivery in deliveries {
            let delivery = delivery.into_delivery(self, now);
            let mut body = RoutedBody::new(self.persistence());
            // Not dropped as a copy the previous owner of a move had: this copy of the
            // session held it, which that owner may not have had.
            let pushed = session.enqueue(
                delivery,
                self.queueing(Came::Returned),
                self.persistence(),
                &mut body,
                None,
            );
            seq = seq.max(pushed.seq);
            match pushed.outcome {
                Enqueued::Queued => self.metrics().bump(crate::metrics::Counter::MessagesQueued),
                Enqueued::QueuedDroppingOldest => {
                    self.metrics().bump(crate::metrics::Counter::MessagesQueued);
                    self.metrics()
                        .bump(crate::metrics::Counter::MessagesDroppedQueueFull);
                }
                Enqueued::Duplicate => self
                    .metrics()
                    .bump(crate::metrics::Counter::SecondCopiesDropped),
                Enqueued::Discarded => self
                    .metrics()
                    .bump(crate::metrics::Counter::MessagesDroppedOfflineQos0),
            }
        }
        // Ended meanwhile (handed over to another node): some of the messages may have gone
        // with it, the rest were discarded; the sender tries again (duplicates rather than
        // a loss).
        if session.lock().ended {
            return Err(TransferError::NoSession);
        }
        Ok(seq)
    }
}

/// What a return takes of a session: its state, with of its queue only the messages queued
/// before position `before`.
fn returned_part(
    client: &MqttStr,
    state: &SessionState,
    before: u64,
    now: Instant,
) -> SessionTransfer {
    let mut taken = SessionTransfer::from_state(client, state, now);
    taken.queue = state
        .queue
        .iter()
        .filter(|queued| queued.position < before)
        .map(|queued| TransferredDelivery::from_delivery(&queued.delivery, now))
        .collect();
    taken
}
