//! A fake [`AdminBackend`] with state the tests set and inspect: the HTTP layer's tests and
//! `tern ctl`'s run against it (feature `testing`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::api::*;

/// What the fake broker holds. Everything public: a test arranges it, then reads what the
/// API did to it.
#[derive(Debug, Default, Clone)]
pub struct FakeState {
    pub stats: Stats,
    pub ready: bool,
    pub clients: BTreeMap<String, ClientDetail>,
    /// Offline sessions (connected ones are the clients).
    pub offline_sessions: BTreeMap<String, SessionSummary>,
    pub retained: BTreeMap<String, RetainedMessage>,
    pub published: Vec<PublishRequest>,
    pub kicked: Vec<String>,
    pub reloads: usize,
    pub metrics: String,
    pub config: serde_json::Value,
    /// Messages counted in and out at each `stats` call (a broker with traffic, for the
    /// dashboard's rates).
    pub traffic_per_poll: (u64, u64),
    /// How many times `stats` was called, and how many times it had been at the last kick
    /// (the dashboard's test: polling goes on after a kick).
    pub stats_calls: usize,
    pub stats_calls_at_kick: usize,
    /// `stats` sleeps this long first (a slow backend: the listener's runtime must not stall).
    pub stats_delay: std::time::Duration,
    pub bridges: Vec<BridgeInfo>,
    /// The cluster (`None`: a node without `[cluster]`), the addresses `cluster_join` was
    /// given, and what it answers (`None`: it succeeds).
    pub cluster: Option<ClusterInfo>,
    pub cluster_joins: Vec<String>,
    pub cluster_join_refusal: Option<AdminError>,
}

/// The fake backend: a [`FakeState`] behind a mutex.
#[derive(Debug, Clone, Default)]
pub struct FakeBackend {
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeBackend {
    pub fn new() -> FakeBackend {
        FakeBackend::default()
    }

    /// A backend with two connected clients (`alpha`, `beta` with one subscription each),
    /// one offline session (`gamma`), and two retained messages.
    pub fn sample() -> FakeBackend {
        let fake = FakeBackend::new();
        {
            let mut state = fake.lock();
            state.ready = true;
            state.bridges = vec![BridgeInfo {
                name: "cloud".into(),
                addresses: vec!["broker.example.net:8883".into()],
                connected: true,
                messages_out: 12,
                bytes_out: 340,
                messages_in: 3,
                bytes_in: 45,
                messages_refused: 0,
                reconnects: 1,
                queue_depth: 0,
                last_error: None,
            }];
            state.cluster = Some(sample_cluster());
            state.stats = Stats {
                version: "0.1.0".into(),
                uptime_s: 42,
                connections: 2,
                sessions_connected: 2,
                sessions_offline: 1,
                subscriptions: 2,
                retained_messages: 2,
                retained_bytes: 7,
                store_accepting: true,
                ..Stats::default()
            };
            for (id, filter) in [("alpha", "sensors/#"), ("beta", "alerts/+")] {
                state.add_client(id, &[filter]);
            }
            state.offline_sessions.insert(
                "gamma".into(),
                SessionSummary {
                    client_id: "gamma".into(),
                    connected: false,
                    expires_in_s: Some(3600),
                    subscriptions: 0,
                    queued: 3,
                    inflight: 0,
                },
            );
            state.set_retained("sensors/temp", b"21.5");
            state.set_retained("sensors/bin", &[0xff, 0x00, 0x01]);
            state.metrics = "# TYPE tern_connections gauge\ntern_connections 2\n".into();
            state.config = serde_json::json!({
                "listen": ["127.0.0.1:1883"],
                "auth": { "password_file": "<redacted>" },
            });
        }
        fake
    }

    pub fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Node 1 of four: 1 leads, 2 and 3 vote, 4 learns; the link to 3 is down with 5 messages
/// waiting for it.
fn sample_cluster() -> ClusterInfo {
    let node = |id: u64, voter: bool, linked: bool, pending: u64| ClusterNodeInfo {
        id,
        cluster_addr: format!("10.0.0.{id}:7883"),
        mqtt_addrs: vec![format!("10.0.0.{id}:1883")],
        voter,
        linked,
        pending,
    };
    ClusterInfo {
        node_id: 1,
        role: "leader".into(),
        leader: Some(1),
        term: 3,
        last_log_index: Some(120),
        last_applied: Some(120),
        voters: vec![1, 2, 3],
        learners: vec![4],
        nodes: vec![
            node(1, true, true, 0),
            node(2, true, true, 0),
            node(3, true, false, 5),
            node(4, false, true, 0),
        ],
        millis_since_quorum_ack: Some(12),
        sessions: 7,
        routes: 4,
        retained: 2,
        forwarding: ClusterForwarding {
            sent: 100,
            resent: 5,
            received: 80,
            duplicates: 1,
            dropped: 0,
            pending: 5,
            late: 0,
        },
    }
}

impl FakeState {
    /// A connected client with subscriptions to `filters` at QoS 1.
    pub fn add_client(&mut self, client_id: &str, filters: &[&str]) {
        let subscriptions: Vec<SubscriptionInfo> = filters
            .iter()
            .map(|filter| SubscriptionInfo {
                client_id: client_id.into(),
                filter: (*filter).into(),
                qos: 1,
                ..SubscriptionInfo::default()
            })
            .collect();
        let summary = ClientSummary {
            client_id: client_id.into(),
            username: Some(format!("user-{client_id}")),
            peer: Some("127.0.0.1:50000".into()),
            listener: None,
            protocol: "5".into(),
            connected_at: 1_700_000_000,
            keep_alive_s: 60,
            clean_start: true,
            subscriptions: subscriptions.len(),
            queued: 0,
            inflight: 0,
        };
        self.clients.insert(
            client_id.into(),
            ClientDetail {
                summary,
                subscriptions,
                session_expiry_s: None,
                dropped: 0,
                tracing: false,
            },
        );
    }

    pub fn set_retained(&mut self, topic: &str, payload: &[u8]) {
        self.retained.insert(
            topic.into(),
            RetainedMessage {
                topic: topic.into(),
                qos: 0,
                payload: std::str::from_utf8(payload).ok().map(str::to_owned),
                payload_base64: base64(payload),
                content_type: None,
                expires_in_s: None,
            },
        );
    }
}

/// Standard base64 with padding (enough for test payloads).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The entries of `map` whose key sorts after `page.after`, at most `page.limit`.
fn paged<'a, V>(map: impl Iterator<Item = (&'a String, V)>, page: &Page) -> Vec<V> {
    map.filter(|(key, _)| {
        page.after
            .as_deref()
            .is_none_or(|after| key.as_str() > after)
    })
    .take(page.limit)
    .map(|(_, value)| value)
    .collect()
}

/// MQTT topic matching, enough for the tests (`+` and `#`).
fn matches(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        match (part, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (part, Some(level)) if part == level => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

impl AdminBackend for FakeBackend {
    fn stats(&self) -> Stats {
        let delay = {
            let mut state = self.lock();
            state.stats_calls += 1;
            state.stats_delay
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut state = self.lock();
        let (received, sent) = state.traffic_per_poll;
        state.stats.messages_received += received;
        state.stats.messages_sent += sent;
        state.stats.clone()
    }

    fn readiness(&self) -> Readiness {
        let ready = self.lock().ready;
        Readiness {
            ready,
            reasons: if ready {
                Vec::new()
            } else {
                vec!["the store refuses work".into()]
            },
        }
    }

    fn clients(&self, page: &Page) -> Vec<ClientSummary> {
        let state = self.lock();
        paged(
            state.clients.iter().map(|(k, v)| (k, v.summary.clone())),
            page,
        )
    }

    fn client(&self, client_id: &str) -> Option<ClientDetail> {
        self.lock().clients.get(client_id).cloned()
    }

    fn kick(&self, client_id: &str) -> bool {
        let mut state = self.lock();
        let kicked = state.clients.remove(client_id).is_some();
        if kicked {
            state.kicked.push(client_id.into());
            state.stats_calls_at_kick = state.stats_calls;
        }
        kicked
    }

    fn sessions(&self, page: &Page) -> Vec<SessionSummary> {
        let state = self.lock();
        let mut all: BTreeMap<String, SessionSummary> = state.offline_sessions.clone();
        for (id, client) in &state.clients {
            all.insert(
                id.clone(),
                SessionSummary {
                    client_id: id.clone(),
                    connected: true,
                    expires_in_s: None,
                    subscriptions: client.summary.subscriptions,
                    queued: client.summary.queued,
                    inflight: client.summary.inflight,
                },
            );
        }
        paged(all.iter(), page).into_iter().cloned().collect()
    }

    fn delete_session(&self, client_id: &str) -> bool {
        let mut state = self.lock();
        let offline = state.offline_sessions.remove(client_id).is_some();
        offline || state.clients.remove(client_id).is_some()
    }

    fn subscriptions(&self, query: &SubscriptionQuery) -> Vec<SubscriptionInfo> {
        let state = self.lock();
        let all: BTreeMap<String, SubscriptionInfo> = state
            .clients
            .values()
            .flat_map(|client| client.subscriptions.iter())
            .filter(|s| query.client_id.as_ref().is_none_or(|id| *id == s.client_id))
            .filter(|s| query.filter.as_ref().is_none_or(|f| *f == s.filter))
            .map(|s| (format!("{}\u{0}{}", s.client_id, s.filter), s.clone()))
            .collect();
        paged(all.iter(), &query.page)
            .into_iter()
            .cloned()
            .collect()
    }

    fn retained(&self, filter: &str, page: &Page) -> Result<Vec<RetainedSummary>, AdminError> {
        if filter.is_empty() {
            return Err(AdminError::Invalid("an empty topic filter".into()));
        }
        let state = self.lock();
        Ok(paged(
            state
                .retained
                .iter()
                .filter(|(topic, _)| matches(filter, topic))
                .map(|(topic, m)| {
                    (
                        topic,
                        RetainedSummary {
                            topic: topic.clone(),
                            qos: m.qos,
                            payload_bytes: m.payload_base64.len() / 4 * 3
                                - m.payload_base64.matches('=').count(),
                        },
                    )
                }),
            page,
        ))
    }

    fn retained_message(&self, topic: &str) -> Option<RetainedMessage> {
        self.lock().retained.get(topic).cloned()
    }

    fn delete_retained(&self, topic: &str) -> Result<bool, AdminError> {
        if topic.contains(['+', '#']) {
            return Err(AdminError::Invalid("a topic name has no wildcards".into()));
        }
        Ok(self.lock().retained.remove(topic).is_some())
    }

    fn publish(&self, request: PublishRequest) -> Result<(), AdminError> {
        if request.topic.is_empty() || request.topic.contains(['+', '#']) {
            return Err(AdminError::Invalid(format!(
                "not a topic name: {:?}",
                request.topic
            )));
        }
        let mut state = self.lock();
        if !state.ready {
            return Err(AdminError::Unavailable("shutting down".into()));
        }
        if request.retain {
            let payload = request.payload.clone().unwrap_or_default();
            state.set_retained(&request.topic, payload.as_bytes());
        }
        state.published.push(request);
        Ok(())
    }

    fn set_client_tracing(&self, client_id: &str, on: bool) -> bool {
        match self.lock().clients.get_mut(client_id) {
            Some(client) => {
                client.tracing = on;
                true
            }
            None => false,
        }
    }

    fn metrics_text(&self) -> String {
        self.lock().metrics.clone()
    }

    fn config(&self) -> serde_json::Value {
        self.lock().config.clone()
    }

    fn bridges(&self) -> Vec<BridgeInfo> {
        self.lock().bridges.clone()
    }

    fn cluster(&self) -> Option<ClusterInfo> {
        self.lock().cluster.clone()
    }

    fn cluster_join(&self, addr: String) -> BoxFuture<'_, Result<(), AdminError>> {
        Box::pin(async move {
            let mut state = self.lock();
            if state.cluster.is_none() {
                return Err(AdminError::NotFound(NOT_CLUSTERED.into()));
            }
            state.cluster_joins.push(addr);
            match state.cluster_join_refusal.clone() {
                Some(refusal) => Err(refusal),
                None => Ok(()),
            }
        })
    }

    /// Removes the node from the fake cluster's lists.
    fn cluster_leave(&self, node: Option<u64>) -> BoxFuture<'_, Result<u64, AdminError>> {
        Box::pin(async move {
            let mut state = self.lock();
            let Some(cluster) = state.cluster.as_mut() else {
                return Err(AdminError::NotFound(NOT_CLUSTERED.into()));
            };
            let node = node.unwrap_or(cluster.node_id);
            if !cluster.nodes.iter().any(|n| n.id == node) {
                return Err(AdminError::NotFound(format!("node {node} is not a member")));
            }
            cluster.nodes.retain(|n| n.id != node);
            cluster.voters.retain(|id| *id != node);
            cluster.learners.retain(|id| *id != node);
            Ok(node)
        })
    }

    fn reload(&self) -> BoxFuture<'_, ReloadReport> {
        Box::pin(async move {
            self.lock().reloads += 1;
            ReloadReport {
                applied: vec!["limits".into(), "log_level".into()],
                needs_restart: vec!["listen".into()],
                errors: Vec::new(),
            }
        })
    }
}
