//! The retained messages a new subscription sends [MQTT-3.3.1-6, MQTT-3.8.4-3], streamed from
//! the retained index instead of copied into the session's queue.
//!
//! A copy would be cut at the queue's limit (a subscriber to `site/#` would miss most of the
//! site's state) or, without a limit, cost memory in proportion to the retained set. A stream
//! is a cursor instead: the filter, the last topic taken from the index, and a small batch
//! taken ahead (at most [`BATCH`] messages). The owning connection pulls from it as its write
//! buffer and in-flight window allow, taking turns with the session's queue, so live traffic
//! keeps flowing while a large set streams, and memory stays bounded whatever the set's size.
//!
//! A stream reads the index as it goes: a topic whose retained message changes while the set
//! streams is sent with its newest message, unless a local publish stored that message after
//! the subscription was made: that publish's route reached the subscription, so the stream
//! passes over it (the retained clock, see `Broker::retained_clock`; each message comes once).
//! Streams belong to the session, so a client that loses its connection half-way gets the rest
//! when it resumes the session; they are not stored, so a broker restart ends them. An entry
//! goes when the walk has sent its last message, when the subscription is removed, when it is
//! replaced by one that sends its retained set (the stream starts over; a replacement that
//! sends none leaves it running), or when the session ends.

use std::collections::VecDeque;
use std::sync::Arc;

use tern_codec::{MqttStr, QoS};

use crate::hooks::Principal;
use crate::message::{Delivery, Message, SubscriptionIds};

/// Where a stream takes its messages from: the broker's retained index, behind its lock.
pub(crate) trait RetainedSource {
    /// Appends up to `limit` retained messages matching `filter` whose topics come after
    /// `after` in the index's order, passing over those stored at or after tick `before` of
    /// the retained clock; true once none is left.
    fn retained_batch(
        &self,
        filter: &str,
        after: Option<&MqttStr>,
        limit: usize,
        out: &mut Vec<Arc<Message>>,
        before: u64,
    ) -> bool;

    /// Whether `reader` may receive a message on `topic` (for a partial subscription).
    fn may_read(&self, reader: &Principal, topic: &str) -> bool;
}

/// Messages taken from the index ahead of sending, per stream.
pub(crate) const BATCH: usize = 64;

/// One subscription's retained set, being sent.
#[derive(Debug)]
struct RetainedStream {
    filter: MqttStr,
    /// The QoS granted to the subscription.
    granted: QoS,
    identifier: Option<u32>,
    /// The topic of the last message taken from the index.
    after: Option<MqttStr>,
    /// Taken from the index, not sent yet.
    batch: VecDeque<Arc<Message>>,
    /// Whether the walk has taken the last matching message.
    walked: bool,
    /// For a partial subscription (`FilterAccess::Partial`), who subscribed: each message is
    /// checked against its rules.
    reader: Option<Arc<Principal>>,
    /// The tick of the retained clock at which the subscription was made: a message stored
    /// after it reached the subscription from its publish, so the stream passes over it
    /// (see `Broker::retained_clock`).
    subscribed_at: u64,
}

impl RetainedStream {
    /// The next message of the stream, refilling the batch from the index when it is empty.
    fn front(&mut self, source: &dyn RetainedSource) -> Option<&Arc<Message>> {
        while self.batch.is_empty() && !self.walked {
            let mut taken = Vec::with_capacity(BATCH);
            self.walked = source.retained_batch(
                &self.filter,
                self.after.as_ref(),
                BATCH,
                &mut taken,
                self.subscribed_at,
            );
            if let Some(last) = taken.last() {
                self.after = Some(last.topic.clone());
            }
            if let Some(reader) = &self.reader {
                taken.retain(|message| source.may_read(reader, &message.topic));
            }
            self.batch.extend(taken);
        }
        self.batch.front()
    }
}

/// The retained sets a session is sending, oldest subscription first.
#[derive(Debug, Default)]
pub(crate) struct RetainedStreams {
    streams: VecDeque<RetainedStream>,
    /// Whose turn it is when both the queue and a stream have something to send.
    retained_turn: bool,
}

impl RetainedStreams {
    /// Starts sending the retained set of a new (or replaced) subscription to `filter`, made
    /// at tick `subscribed_at` of the retained clock; a stream already running for the same
    /// filter starts over.
    pub(crate) fn start(
        &mut self,
        filter: MqttStr,
        granted: QoS,
        identifier: Option<u32>,
        reader: Option<Arc<Principal>>,
        subscribed_at: u64,
    ) {
        self.stop(&filter);
        self.streams.push_back(RetainedStream {
            filter,
            granted,
            identifier,
            after: None,
            batch: VecDeque::new(),
            walked: false,
            reader,
            subscribed_at,
        });
    }

    /// Stops the stream of `filter` (the subscription went).
    pub(crate) fn stop(&mut self, filter: &str) {
        self.streams
            .retain(|stream| stream.filter.as_str() != filter);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Messages taken from the index and not sent yet, over all streams.
    pub(crate) fn buffered(&self) -> usize {
        self.streams.iter().map(|stream| stream.batch.len()).sum()
    }

    /// The QoS of the next delivery, or `None` once every stream is done (finished streams
    /// are removed here).
    pub(crate) fn next_qos(&mut self, source: &dyn RetainedSource) -> Option<QoS> {
        loop {
            let stream = self.streams.front_mut()?;
            let granted = stream.granted;
            match stream.front(source) {
                Some(message) => return Some(message.qos.min(granted)),
                None => {
                    self.streams.pop_front();
                }
            }
        }
    }

    /// Takes the next delivery (after [`RetainedStreams::next_qos`] said there is one). A
    /// retained message has no message id: the caller gives a QoS 1/2 one an id if it is to
    /// be stored.
    pub(crate) fn take(&mut self, source: &dyn RetainedSource) -> Option<Delivery> {
        self.next_qos(source)?;
        let stream = self.streams.front_mut()?;
        let message = stream.batch.pop_front()?;
        let qos = message.qos.min(stream.granted);
        Some(Delivery {
            qos,
            retain: true,
            message: message.into(),
            subscription_ids: stream
                .identifier
                .map_or(SubscriptionIds::None, SubscriptionIds::One),
            shared_filter: None,
        })
    }

    /// Whether the stream should go before the queue this time; alternates between them so
    /// neither starves the other.
    pub(crate) fn take_turn(&mut self) -> bool {
        self.retained_turn = !self.retained_turn;
        !self.retained_turn
    }
}
