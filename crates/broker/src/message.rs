//! An application message as the broker holds it, and the per-subscriber handle that refers to it.
//!
//! A publish is turned into one `Message` and matched once; every subscriber gets a [`Delivery`]
//! (a share of the message, plus its own QoS, retain flag and subscription identifiers), so
//! neither the payload nor anything else is copied or allocated per subscriber.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern_codec::{MqttStr, Properties, Publish, QoS};

/// An application message inside the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: MqttStr,
    pub payload: Bytes,
    /// QoS as published.
    pub qos: QoS,
    /// RETAIN as published.
    pub retain: bool,
    /// The MQTT 5 properties that travel with the message (payload format, content type,
    /// response topic, correlation data, user properties); `None` when there are none. Shared,
    /// so a copy of the message for another subscriber allocates nothing.
    pub properties: Option<Arc<Properties>>,
    /// When the Message Expiry Interval runs out.
    pub expires_at: Option<Instant>,
    /// Client identifier of the publisher, for No Local; `None` for messages of the broker.
    pub publisher: Option<MqttStr>,
    /// The id under which the message body is stored; 0 when it is not stored.
    pub id: crate::types::MessageId,
    /// Cluster: the message's identity across nodes, given by the node it was published on
    /// when any copy of it goes to another node (`None` otherwise, and on a single node). A
    /// session handed from one node to another tells by it which of the messages the new
    /// node's shell queued it carries already (see `Broker::adopt_handed_over`). Not stored.
    /// Boxed: most messages have none, and a `Message` moves often on the publish path.
    pub cluster_id: Option<Box<ClusterMessageId>>,
}

/// A message's identity in a cluster: the node it was published on, that node's run (its
/// start) and a number counted per run. Two ids are equal when these three are.
#[derive(Debug, Clone, Copy)]
pub struct ClusterMessageId {
    pub node: u64,
    pub run: u64,
    pub number: u64,
    /// Not part of the identity: the log index of the route table the message was planned
    /// with on its node (0 where not known: a message handed over in a session). A session
    /// whose hand-over may bring late copies remembers the ids of what was planned before its
    /// routes reached every table (see `Broker::publish_late`).
    pub planned_at: u64,
}

impl PartialEq for ClusterMessageId {
    fn eq(&self, other: &Self) -> bool {
        (self.node, self.run, self.number) == (other.node, other.run, other.number)
    }
}

impl Eq for ClusterMessageId {}

impl std::hash::Hash for ClusterMessageId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.node, self.run, self.number).hash(state);
    }
}

impl Message {
    /// The message a PUBLISH carries. The topic must already be resolved (no alias left).
    pub fn from_publish(publish: Publish, publisher: Option<MqttStr>, now: Instant) -> Message {
        let Publish {
            qos,
            retain,
            topic,
            properties,
            payload,
            ..
        } = publish;
        let expires_at = properties
            .message_expiry_interval
            .map(|seconds| now + Duration::from_secs(u64::from(seconds)));
        Message {
            topic,
            payload,
            qos,
            retain,
            properties: forwarded_properties(properties),
            expires_at,
            publisher,
            id: 0,
            cluster_id: None,
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Seconds left of the Message Expiry Interval, rounded up, to forward [MQTT-3.3.2-6].
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(seconds).unwrap_or(u32::MAX)
        })
    }

    /// A copy whose topic, payload and publisher own their memory, in one buffer, for
    /// messages kept long (retained, queued for offline sessions), so they do not pin the read
    /// buffer they arrived in.
    pub fn compacted(&self) -> Message {
        let topic = self.topic.as_bytes();
        let publisher = self.publisher.as_ref().map(MqttStr::as_bytes);
        let mut all = BytesMut::with_capacity(
            topic.len() + self.payload.len() + publisher.map_or(0, |p| p.len()),
        );
        all.extend_from_slice(topic);
        all.extend_from_slice(&self.payload);
        if let Some(publisher) = publisher {
            all.extend_from_slice(publisher);
        }
        let all = all.freeze();
        let topic_end = topic.len();
        let payload_end = topic_end + self.payload.len();
        // The copies hold the same bytes, which were valid strings: the checks cannot fail.
        let topic =
            MqttStr::from_bytes(all.slice(..topic_end)).unwrap_or_else(|_| self.topic.clone());
        let publisher = self.publisher.as_ref().map(|publisher| {
            MqttStr::from_bytes(all.slice(payload_end..)).unwrap_or_else(|_| publisher.clone())
        });
        Message {
            topic,
            payload: all.slice(topic_end..payload_end),
            publisher,
            ..self.clone()
        }
    }
}

/// Keeps only the properties a message carries to its subscribers: Topic Alias and Subscription
/// Identifier belong to one hop, and Message Expiry is recomputed on delivery.
fn forwarded_properties(properties: Properties) -> Option<Arc<Properties>> {
    let forwarded = Properties {
        payload_format_indicator: properties.payload_format_indicator,
        content_type: properties.content_type,
        response_topic: properties.response_topic,
        correlation_data: properties.correlation_data,
        user_properties: properties.user_properties,
        ..Properties::default()
    };
    if forwarded.is_empty() {
        None
    } else {
        Some(Arc::new(forwarded))
    }
}

/// Subscription identifiers of the subscriptions a delivery matched (MQTT 5).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SubscriptionIds {
    #[default]
    None,
    One(u32),
    Many(Box<[u32]>),
}

impl SubscriptionIds {
    pub fn push(&mut self, id: u32) {
        *self = match std::mem::take(self) {
            SubscriptionIds::None => SubscriptionIds::One(id),
            SubscriptionIds::One(first) => SubscriptionIds::Many(Box::new([first, id])),
            SubscriptionIds::Many(ids) => {
                let mut ids = ids.into_vec();
                ids.push(id);
                SubscriptionIds::Many(ids.into_boxed_slice())
            }
        };
    }

    pub fn as_slice(&self) -> &[u32] {
        match self {
            SubscriptionIds::None => &[],
            SubscriptionIds::One(id) => std::slice::from_ref(id),
            SubscriptionIds::Many(ids) => ids,
        }
    }
}

/// A delivery's message: the message itself when it goes to one subscriber, a share of one
/// copy when it goes to several (see `Broker::route`). Two are equal when their messages are.
#[derive(Debug, Clone)]
pub enum MessageRef {
    Own(Message),
    Shared(Arc<Message>),
}

impl MessageRef {
    /// The message, to change (a shared one is copied first if others hold it).
    pub fn to_mut(&mut self) -> &mut Message {
        match self {
            MessageRef::Own(message) => message,
            MessageRef::Shared(shared) => Arc::make_mut(shared),
        }
    }
}

impl PartialEq for MessageRef {
    fn eq(&self, other: &MessageRef) -> bool {
        **self == **other
    }
}

impl Eq for MessageRef {}

impl std::ops::Deref for MessageRef {
    type Target = Message;

    fn deref(&self) -> &Message {
        match self {
            MessageRef::Own(message) => message,
            MessageRef::Shared(shared) => shared,
        }
    }
}

impl From<Message> for MessageRef {
    fn from(message: Message) -> MessageRef {
        MessageRef::Own(message)
    }
}

impl From<Arc<Message>> for MessageRef {
    fn from(message: Arc<Message>) -> MessageRef {
        MessageRef::Shared(message)
    }
}

/// One message on its way to one session. Each delivery of one publish shares the message: a
/// delivery per subscriber costs one count on it, and neither the payload nor anything else is
/// copied or allocated per subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message: MessageRef,
    /// min(published QoS, granted QoS).
    pub qos: QoS,
    /// The RETAIN flag to send.
    pub retain: bool,
    pub subscription_ids: SubscriptionIds,
    /// For a delivery to a member of a shared subscription: that subscription's filter
    /// (`$share/{group}/{filter}`), so the message can go to another member if this one leaves.
    pub shared_filter: Option<MqttStr>,
}
