//! What the admin API can ask of the broker and the shapes of the answers: the contract
//! between the HTTP layer (this crate) and the server that implements [`AdminBackend`].
//! The JSON the API sends is these types serialized as they are, so a field added here is a
//! field added to the API (documented in the OpenAPI description); none is ever renamed.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// A page of a listing: at most `limit` entries (the HTTP layer caps it at
/// [`Page::MAX_LIMIT`]) whose key (client id, topic, ...) sorts after `after`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub limit: usize,
    pub after: Option<String>,
}

impl Page {
    pub const DEFAULT_LIMIT: usize = 100;
    pub const MAX_LIMIT: usize = 1000;
}

/// The broker in figures (`GET /api/v1/stats`; the dashboard polls it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub version: String,
    pub uptime_s: u64,
    /// Open MQTT connections (past CONNACK).
    pub connections: u64,
    pub sessions_connected: u64,
    pub sessions_offline: u64,
    pub subscriptions: u64,
    pub retained_messages: u64,
    pub retained_bytes: u64,
    /// Counters since start.
    pub messages_received: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub messages_dropped: u64,
    pub auth_failures: u64,
    /// Messages waiting in session queues, and in flight to clients.
    pub queued_messages: u64,
    pub inflight_messages: u64,
    /// The store: whether it takes new durable work (false: disk full or failing), its size on
    /// disk when known.
    pub store_accepting: bool,
    pub store_bytes: Option<u64>,
}

/// A connected client (`GET /api/v1/clients`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSummary {
    pub client_id: String,
    pub username: Option<String>,
    /// `ip:port` of the client as the broker sees it (after the PROXY protocol, if any).
    pub peer: Option<String>,
    /// The `[[listeners]]` name; `None` for a `listen` address.
    pub listener: Option<String>,
    /// "3.1", "3.1.1" or "5".
    pub protocol: String,
    /// Seconds since the Unix epoch.
    pub connected_at: u64,
    pub keep_alive_s: u16,
    pub clean_start: bool,
    /// How many subscriptions the client has. In a [`ClientDetail`] the key `subscriptions`
    /// is the list itself (sent once), and this count is its length.
    #[serde(default)]
    pub subscriptions: usize,
    pub queued: usize,
    pub inflight: usize,
}

/// One client in detail (`GET /api/v1/clients/{client_id}`). In JSON the summary's fields
/// come first-level, and the key `subscriptions` is sent once, as the list (the summary's count
/// is its length): serialization and deserialization are written by hand for that (see
/// `ClientDetailWire`), so the JSON object never has a key twice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "ClientDetailWire")]
pub struct ClientDetail {
    #[serde(flatten)]
    pub summary: ClientSummary,
    pub subscriptions: Vec<SubscriptionInfo>,
    /// The session's expiry once the client is gone, in seconds; `None`: never.
    pub session_expiry_s: Option<u64>,
    /// Messages dropped because the session's queue was full.
    pub dropped: u64,
    /// Whether per-client debug tracing is on.
    pub tracing: bool,
}

/// [`ClientDetail`] as it is read: the summary's count is absent (the key `subscriptions` is
/// the list) and set from the list's length.
#[derive(Deserialize)]
struct ClientDetailWire {
    #[serde(flatten)]
    summary: ClientSummary,
    subscriptions: Vec<SubscriptionInfo>,
    session_expiry_s: Option<u64>,
    dropped: u64,
    tracing: bool,
}

impl From<ClientDetailWire> for ClientDetail {
    fn from(wire: ClientDetailWire) -> ClientDetail {
        let mut summary = wire.summary;
        summary.subscriptions = wire.subscriptions.len();
        ClientDetail {
            summary,
            subscriptions: wire.subscriptions,
            session_expiry_s: wire.session_expiry_s,
            dropped: wire.dropped,
            tracing: wire.tracing,
        }
    }
}

impl Serialize for ClientDetail {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The summary flattened, then this struct's own fields: building a JSON map keeps the
        // last `subscriptions` (the list), so the object has each key once.
        let value = serde_json::to_value(ClientDetailRef {
            summary: &self.summary,
            subscriptions: &self.subscriptions,
            session_expiry_s: self.session_expiry_s,
            dropped: self.dropped,
            tracing: self.tracing,
        })
        .map_err(serde::ser::Error::custom)?;
        value.serialize(serializer)
    }
}

#[derive(Serialize)]
struct ClientDetailRef<'a> {
    #[serde(flatten)]
    summary: &'a ClientSummary,
    subscriptions: &'a [SubscriptionInfo],
    session_expiry_s: Option<u64>,
    dropped: u64,
    tracing: bool,
}

/// A session, connected or not (`GET /api/v1/sessions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub client_id: String,
    pub connected: bool,
    /// Seconds until an offline session ends; `None` while connected or for a session that
    /// never expires.
    pub expires_in_s: Option<u64>,
    pub subscriptions: usize,
    pub queued: usize,
    pub inflight: usize,
}

/// Which subscriptions to list: every one, a client's, or those whose filter is `filter`.
/// Listed by client id, then filter; a page's `after` is the last entry's client id and filter
/// joined by a NUL (`"client\0filter"`: neither may contain one, [MQTT-1.5.4-2]), in both
/// modes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionQuery {
    pub client_id: Option<String>,
    pub filter: Option<String>,
    pub page: Page,
}

/// A subscription (`GET /api/v1/subscriptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionInfo {
    pub client_id: String,
    /// As subscribed, `$share/group/...` included.
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub identifier: Option<u32>,
}

/// A retained message in a listing (`GET /api/v1/retained?filter=...`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedSummary {
    pub topic: String,
    pub qos: u8,
    pub payload_bytes: usize,
}

/// A retained message whole (`GET /api/v1/retained/message?topic=...`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedMessage {
    pub topic: String,
    pub qos: u8,
    /// The payload as text when it is UTF-8, else `None` (see `payload_base64`).
    pub payload: Option<String>,
    /// The payload in standard base64, always.
    pub payload_base64: String,
    pub content_type: Option<String>,
    /// Seconds left before it expires (MQTT 5 Message Expiry Interval); `None`: never.
    pub expires_in_s: Option<u64>,
}

/// `POST /api/v1/publish`: a message published by the broker itself (as no client), with
/// the given QoS and retain flag. Exactly one of `payload` (UTF-8) and `payload_base64`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRequest {
    pub topic: String,
    #[serde(default)]
    pub payload: Option<String>,
    #[serde(default)]
    pub payload_base64: Option<String>,
    #[serde(default)]
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    /// MQTT 5 Message Expiry Interval, seconds.
    #[serde(default)]
    pub message_expiry_s: Option<u32>,
    #[serde(default)]
    pub content_type: Option<String>,
}

/// What a reload did (`POST /api/v1/reload`, and SIGHUP in the log): what was read again,
/// and what changed in the file but needs a restart to apply (reported, never ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub applied: Vec<String>,
    pub needs_restart: Vec<String>,
    pub errors: Vec<String>,
}

/// `GET /api/v1/ready`: ready when every listener is bound and the store takes work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    pub reasons: Vec<String>,
}

/// One bridge to another broker (`GET /api/v1/bridges`, `[[bridges]]` of the configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeInfo {
    pub name: String,
    /// The remote addresses, in the order they are tried.
    pub addresses: Vec<String>,
    /// Whether the connection to the remote broker is up.
    pub connected: bool,
    /// Messages carried from this broker to the remote, and their payload bytes.
    pub messages_out: u64,
    pub bytes_out: u64,
    /// Messages carried from the remote broker to this one, and their payload bytes.
    pub messages_in: u64,
    pub bytes_in: u64,
    /// Messages a broker refused (an error acknowledgement, the access rules here).
    pub messages_refused: u64,
    /// Connection attempts to the remote after the first.
    pub reconnects: u64,
    /// Messages for the remote waiting in the bridge's session here (queued and in flight).
    pub queue_depth: u64,
    /// The last connection error, if any.
    pub last_error: Option<String>,
}

/// `GET /api/v1/bridges`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeList {
    pub items: Vec<BridgeInfo>,
}

/// `GET /api/v1/cluster`: this node's view of its cluster (`[cluster]`): its Raft role and
/// indexes, the members, the replicated state's sizes, and the data plane's figures. A node
/// without `[cluster]` answers 404.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub node_id: u64,
    /// "leader", "follower", "candidate", "learner" or "shutdown".
    pub role: String,
    /// The leader this node knows, if any.
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Every member and registered node, by id.
    pub nodes: Vec<ClusterNodeInfo>,
    /// Milliseconds since the leader last heard from a quorum (on the leader only).
    pub millis_since_quorum_ack: Option<u64>,
    /// Sizes of the replicated state as this node applied it: client ids claimed, routes
    /// (filter, node), retained messages.
    pub sessions: u64,
    pub routes: u64,
    pub retained: u64,
    /// Messages this node forwarded to others and took from them.
    pub forwarding: ClusterForwarding,
}

/// One node of a cluster, as the answering node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNodeInfo {
    pub id: u64,
    /// The address other nodes dial for its links.
    pub cluster_addr: String,
    /// The MQTT addresses clients use to reach it.
    pub mqtt_addrs: Vec<String>,
    pub voter: bool,
    /// Whether the answering node's link to it is up (always true for itself).
    pub linked: bool,
    /// Messages for it in the answering node's outbox, not acknowledged yet.
    pub pending: u64,
}

/// The data plane's counters since the node started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterForwarding {
    /// Messages sent to other nodes (first sendings).
    pub sent: u64,
    /// Messages sent again after a link failed before their acknowledgement.
    pub resent: u64,
    /// Messages received from other nodes, duplicates included.
    pub received: u64,
    /// Messages received again and not delivered again.
    pub duplicates: u64,
    /// Messages not forwarded: a peer's outbox was full, or the message could not be encoded.
    pub dropped: u64,
    /// Messages waiting for another node's acknowledgement, over all links.
    pub pending: u64,
    /// Late copies: messages for a session moved from this node that reached it afterwards,
    /// sent on to the session's new owner.
    #[serde(default)]
    pub late: u64,
}

/// `POST /api/v1/cluster/join`: this node joins the cluster the node at `addr` (its cluster
/// address, `HOST:PORT`) belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterJoinRequest {
    pub addr: String,
}

/// `POST /api/v1/cluster/leave`: `node` leaves the cluster (default: the node asked).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterLeaveRequest {
    #[serde(default)]
    pub node: Option<u64>,
}

/// What a backend without `[cluster]` answers to the cluster's routes (404).
pub const NOT_CLUSTERED: &str = "this node is not part of a cluster ([cluster] is not configured)";

/// Why a request to the backend failed; the HTTP layer maps each to a status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// 404.
    #[error("not found: {0}")]
    NotFound(String),
    /// 400: the request is not valid (a bad topic, both payload fields, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// 503: the broker cannot do it now (shutting down, the store refuses work).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// 409: the request conflicts with the state (a node asked to join is already a member).
    #[error("conflict: {0}")]
    Conflict(String),
}

/// A boxed future, for the backend's one asynchronous call.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the admin API asks of the broker. The calls may be made from any thread, and may
/// block for as long as the work takes (walking every session for `stats`, fanning out a
/// `publish`, telling the store): the HTTP layer runs every call on a blocking thread (tokio's
/// `spawn_blocking`), never on the runtime it serves on, which in `tern serve` also drives the
/// broker's timers, signals and shutdown. `reload` is driven there too, with the runtime's
/// handle. A call should still be bounded: the listener serves `max_connections` at once.
pub trait AdminBackend: Send + Sync + 'static {
    fn stats(&self) -> Stats;
    fn readiness(&self) -> Readiness;
    /// Connected clients, by client id.
    fn clients(&self, page: &Page) -> Vec<ClientSummary>;
    fn client(&self, client_id: &str) -> Option<ClientDetail>;
    /// Closes a client's connection (MQTT 5: DISCONNECT 0x98 Administrative action; the will
    /// is published as for any other close); false when it is not connected.
    fn kick(&self, client_id: &str) -> bool;
    /// Sessions, connected or not, by client id.
    fn sessions(&self, page: &Page) -> Vec<SessionSummary>;
    /// Ends a session (and closes its connection, if any, as `kick`); false when none.
    fn delete_session(&self, client_id: &str) -> bool;
    fn subscriptions(&self, query: &SubscriptionQuery) -> Vec<SubscriptionInfo>;
    /// Retained messages whose topic matches `filter`, by topic.
    fn retained(&self, filter: &str, page: &Page) -> Result<Vec<RetainedSummary>, AdminError>;
    fn retained_message(&self, topic: &str) -> Option<RetainedMessage>;
    /// Clears a retained message (and from the store); false when there was none.
    fn delete_retained(&self, topic: &str) -> Result<bool, AdminError>;
    fn publish(&self, request: PublishRequest) -> Result<(), AdminError>;
    /// Turns per-client debug tracing on or off; false when the client is not connected.
    fn set_client_tracing(&self, client_id: &str, on: bool) -> bool;
    /// Every metric in the OpenMetrics 1.0 text format (what Prometheus scrapes).
    fn metrics_text(&self) -> String;
    /// The running configuration, secrets (passwords, keys, tokens) replaced by "<redacted>".
    fn config(&self) -> serde_json::Value;
    /// Reads the configuration file and the files it names again, applies what can change at
    /// run time, reports the rest.
    fn reload(&self) -> BoxFuture<'_, ReloadReport>;
    /// The bridges to other brokers and their state, in the configuration's order (none by
    /// default: a backend without bridges).
    fn bridges(&self) -> Vec<BridgeInfo> {
        Vec::new()
    }
    /// This node's view of its cluster; `None` without `[cluster]` (the default).
    fn cluster(&self) -> Option<ClusterInfo> {
        None
    }
    /// This node joins the cluster of the node at `addr` (a cluster address, `HOST:PORT`):
    /// `Conflict` when it is a member already, `Unavailable` when no leader answered.
    fn cluster_join(&self, addr: String) -> BoxFuture<'_, Result<(), AdminError>> {
        let _ = addr;
        Box::pin(async { Err(AdminError::NotFound(NOT_CLUSTERED.into())) })
    }
    /// Removes `node` (default: this one) from the cluster, through its leader; the id of the
    /// node removed. `NotFound` when it is not a member, `Conflict` when it may not leave (the
    /// only voter), `Unavailable` when no leader answered.
    fn cluster_leave(&self, node: Option<u64>) -> BoxFuture<'_, Result<u64, AdminError>> {
        let _ = node;
        Box::pin(async { Err(AdminError::NotFound(NOT_CLUSTERED.into())) })
    }
}
