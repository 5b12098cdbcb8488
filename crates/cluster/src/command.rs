//! What nodes propose to the cluster and what applying it answers. Commands are batched: one
//! log entry carries a [`Request`] of many, and its [`Response`] holds one [`Outcome`] per
//! command, in order.

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// One log entry's worth of commands, applied in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub commands: Vec<Command>,
}

/// What applying a [`Request`] answered: one outcome per command, in the same order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub outcomes: Vec<Outcome>,
}

/// How a subscription of a persistent session is kept in the registry: its options as the
/// MQTT 5 SUBSCRIBE options byte (QoS, No Local, Retain As Published, Retain Handling) and its
/// subscription identifier, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SubscriptionOptions {
    pub options: u8,
    pub identifier: Option<u32>,
}

/// A retained message as the cluster keeps it: what a node needs to deliver it to a new
/// subscriber. Properties are the MQTT 5 PUBLISH properties as encoded on the wire (empty
/// when none), so the state machine needs no codec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedMessage {
    pub topic: String,
    #[serde(with = "crate::command::base64_bytes")]
    pub payload: Vec<u8>,
    pub qos: u8,
    #[serde(with = "crate::command::base64_bytes")]
    pub properties: Vec<u8>,
    /// When it stops being retained, in milliseconds since the Unix epoch (MQTT 5 Message
    /// Expiry Interval), if ever. Nodes compare it with their clock when they read it; the
    /// state machine keeps it as it is (no clock in `apply`).
    pub expires_at_ms: Option<u64>,
    /// The node whose client set it (that node has it already and does not apply it again).
    #[serde(default)]
    pub origin: NodeId,
}

/// A change to the cluster's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A node joined (or changed its addresses): its cluster address and the MQTT addresses
    /// clients may use.
    RegisterNode {
        node: NodeId,
        cluster_addr: String,
        mqtt_addrs: Vec<String>,
    },
    /// A node left the cluster for good: its routes and shared-group memberships go; the
    /// sessions it owned stay registered without a live owner (same epoch) until claimed
    /// elsewhere. `UnknownNode` if it is not registered.
    RemoveNode { node: NodeId },
    /// `node` takes `client_id` over (a CONNECT there). Always succeeds for a registered node:
    /// the claim's epoch is the previous one plus one (for a client id not registered: one
    /// more than the highest epoch any released session held, 1 in a new cluster, so an epoch
    /// is never given twice to one client id), and the outcome names the previous live owner
    /// so it can close its connection and hand the session over.
    Claim {
        client_id: String,
        node: NodeId,
        /// Whether the session outlives its connection (it then keeps its durable
        /// subscriptions in the registry). A non-persistent claim drops any it had.
        persistent: bool,
        /// The CONNECT asked for a new session (MQTT Clean Start = 1): the durable
        /// subscriptions of the previous session go [MQTT-3.1.2-4]. Absent in older
        /// serializations: false.
        #[serde(default)]
        clean_start: bool,
    },
    /// `node` no longer holds a queue for the session of `client_id` (it returned it to the
    /// owner, handed it over, or never had one): taken off the session's pending returns, if
    /// `epoch` is still the current claim's (otherwise refused as stale). A persistent claim
    /// without clean start adds the previous owner to the pending returns; a non-persistent
    /// or clean-start claim and a release clear them.
    Returned {
        client_id: String,
        epoch: u64,
        node: NodeId,
    },
    /// Changes nothing: `node` learns, once it has applied it, that its state holds every
    /// entry committed before it (a node that restarted waits for this before it acts on
    /// who owns its sessions). `nonce` tells its barriers apart.
    Barrier { node: NodeId, nonce: u64 },
    /// The session of `client_id` ended (a clean disconnect of a non-persistent session, an
    /// expiry): the claim and its durable subscriptions go, if `epoch` is still the current
    /// one (otherwise refused as stale).
    Release { client_id: String, epoch: u64 },
    /// A persistent session's subscription was added or replaced (fenced by `epoch`). For a
    /// non-persistent session: `Done`, nothing stored.
    Subscribe {
        client_id: String,
        epoch: u64,
        filter: String,
        options: SubscriptionOptions,
    },
    /// A persistent session's subscription was removed (fenced by `epoch`).
    Unsubscribe {
        client_id: String,
        epoch: u64,
        filter: String,
    },
    /// `node` has a local subscriber for `filter` (its first one). Idempotent; `UnknownNode`
    /// if `node` is not registered.
    AddRoute { filter: String, node: NodeId },
    /// `node` has no local subscriber for `filter` anymore (its last one went). Idempotent.
    RemoveRoute { filter: String, node: NodeId },
    /// `node` has a member of the shared subscription `$share/{group}/{filter}`. Idempotent;
    /// `UnknownNode` if `node` is not registered.
    AddShared {
        group: String,
        filter: String,
        node: NodeId,
    },
    /// `node` has no member of that shared subscription anymore. Idempotent.
    RemoveShared {
        group: String,
        filter: String,
        node: NodeId,
    },
    /// `node`'s complete set of routes and shared-group memberships, replacing what the
    /// registry held for it (sent when a node starts or rejoins, so a crash between a local
    /// change and its proposal leaves nothing stale). `UnknownNode` if it is not registered.
    SyncRoutes {
        node: NodeId,
        filters: Vec<String>,
        shared: Vec<(String, String)>,
    },
    /// The retained message of a topic was set (replacing any).
    Retain { message: RetainedMessage },
    /// The retained message of a topic was cleared.
    ClearRetained {
        topic: String,
        /// The node whose client cleared it.
        #[serde(default)]
        origin: NodeId,
    },
}

/// What applying one [`Command`] answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied.
    Done,
    /// A claim was granted with this epoch; `previous` is the owner it was taken from and the
    /// epoch it held, if the client id was registered.
    Claimed {
        epoch: u64,
        previous: Option<(NodeId, u64)>,
    },
    /// Refused: the command's epoch is not the current claim's (`current`, 0 when the client
    /// id is not registered). The proposer's session was taken over meanwhile.
    StaleEpoch { current: u64 },
    /// Refused: the node is not registered.
    UnknownNode,
}

/// Bytes as base64 text in serialized commands (JSON on the wire and in the log).
pub(crate) mod base64_bytes {
    use base64ct::{Base64, Encoding};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&Base64::encode_string(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Base64::decode_vec(&text).map_err(serde::de::Error::custom)
    }
}
