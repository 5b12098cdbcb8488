//! The metrics endpoint's text: every figure of the broker, the store and the process, in the
//! Prometheus/OpenMetrics text exposition (the `prometheus-client` crate encodes it). Counters
//! come from the core's sharded counters (summed at the scrape); gauges are read at the scrape
//! (a walk of the sessions, the store's status, /proc), so nothing is kept up to date on the
//! message path for them. No client id or topic is ever a label: a label's values are
//! listeners, protocol versions, QoS levels and reasons, all bounded.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tern_broker::{Broker, QUEUE_DEPTH_BUCKETS};
use tern_store::Store;

use crate::server::OpenConnections;

/// Messages dropped on their way to a subscriber (queue full, expired, too large for the
/// client, not readable by the client that took the session up, QoS 0 for an offline
/// session): one figure for the API's stats and `$SYS/broker/publish/messages/dropped`.
pub(crate) fn messages_dropped(m: &tern_broker::MetricsSnapshot) -> u64 {
    m.messages_dropped_queue_full
        + m.messages_dropped_expired
        + m.messages_dropped_too_large
        + m.messages_dropped_denied
        + m.messages_dropped_offline_qos0
}

/// What the metrics are read from; shared by the admin backend and the `$SYS` task.
#[derive(Clone)]
pub(crate) struct MetricsSource {
    pub(crate) broker: Arc<Broker>,
    pub(crate) store: Option<Arc<Store>>,
    pub(crate) open: OpenConnections,
    pub(crate) started: Instant,
    /// The TLS listeners, for the expiry gauge (of the certificates they serve).
    pub(crate) tls: crate::tls::TlsReloader,
    /// `[[bridges]]`, for their gauges and counters.
    pub(crate) bridges: crate::bridge::Bridges,
    /// `[cluster]`: this node's cluster part, for its gauges and counters.
    pub(crate) cluster: Option<crate::cluster::Cluster>,
}

impl std::fmt::Debug for MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSource").finish_non_exhaustive()
    }
}

impl MetricsSource {
    /// The text exposition of every metric (OpenMetrics 1.0 text, which Prometheus reads;
    /// serve it as `application/openmetrics-text; version=1.0.0; charset=utf-8`).
    pub(crate) fn render(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut text = String::with_capacity(8 * 1024);
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            tracing::warn!(%error, "cannot encode the metrics");
        }
        text
    }
}

impl MetricsSource {
    /// Per bridge (label `bridge`): connected, messages and bytes each way (label
    /// `direction`: `in` from the remote, `out` to it), refused messages, queue depth,
    /// reconnections. Nothing without bridges.
    fn encode_bridges(&self, out: &mut Out<'_, '_>) -> std::fmt::Result {
        let bridges = self.bridges.snapshots();
        if bridges.is_empty() {
            return Ok(());
        }
        let one = |b: &crate::bridge::BridgeSnapshot| [("bridge", b.name.clone())];
        let both = |b: &crate::bridge::BridgeSnapshot, inbound: u64, outbound: u64| {
            [
                (
                    [("bridge", b.name.clone()), ("direction", "in".to_owned())],
                    inbound,
                ),
                (
                    [("bridge", b.name.clone()), ("direction", "out".to_owned())],
                    outbound,
                ),
            ]
        };
        let gauge = |value: fn(&crate::bridge::BridgeSnapshot) -> f64| {
            bridges
                .iter()
                .map(|b| (one(b), value(b)))
                .collect::<Vec<_>>()
        };
        out.gauges(
            "tern_bridge_connected",
            "Whether the bridge's connection to the remote broker is up (1) or not (0).",
            &gauge(|b| if b.connected { 1.0 } else { 0.0 }),
        )?;
        let messages: Vec<_> = bridges
            .iter()
            .flat_map(|b| both(b, b.messages_in, b.messages_out))
            .collect();
        out.counters(
            "tern_bridge_messages",
            "Messages carried by the bridge: in from the remote broker, out to it.",
            &messages,
        )?;
        let bytes: Vec<_> = bridges
            .iter()
            .flat_map(|b| both(b, b.bytes_in, b.bytes_out))
            .collect();
        out.counters(
            "tern_bridge_bytes",
            "Payload bytes carried by the bridge: in from the remote broker, out to it.",
            &bytes,
        )?;
        let refused: Vec<_> = bridges
            .iter()
            .map(|b| (one(b), b.messages_refused))
            .collect();
        out.counters(
            "tern_bridge_messages_refused",
            "Messages of the bridge a broker refused (an error acknowledgement, access rules).",
            &refused,
        )?;
        out.gauges(
            "tern_bridge_queue_depth",
            "Messages for the remote waiting in the bridge's session here (queued and in flight).",
            &gauge(|b| b.queue_depth as f64),
        )?;
        let reconnects: Vec<_> = bridges.iter().map(|b| (one(b), b.reconnects)).collect();
        out.counters(
            "tern_bridge_reconnects",
            "Connection attempts of the bridge to the remote broker after the first.",
            &reconnects,
        )
    }
}

impl MetricsSource {
    /// `[cluster]`: this node's Raft role (label `role`, 1 for the current one), term and
    /// indexes, the members by kind, each peer's link (label `peer`, the node id) and its
    /// outbox, the data plane's counters, the replicated state's sizes. Nothing without
    /// `[cluster]`. Peers are the cluster's nodes: a bounded label.
    fn encode_cluster(&self, out: &mut Out<'_, '_>) -> std::fmt::Result {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        let info = crate::cluster_admin::info(cluster);
        let roles: Vec<(Labels, f64)> = ["leader", "follower", "candidate", "learner", "shutdown"]
            .iter()
            .map(|role| {
                let on = if info.role == *role { 1.0 } else { 0.0 };
                ([("role", (*role).to_owned())], on)
            })
            .collect();
        out.gauges(
            "tern_cluster_role",
            "This node's Raft role: 1 for the current one.",
            &roles,
        )?;
        out.gauge(
            "tern_cluster_leader_known",
            "Whether this node knows a leader (1) or not (0: an election, no quorum).",
            if info.leader.is_some() { 1.0 } else { 0.0 },
        )?;
        out.gauge("tern_cluster_term", "The Raft term.", info.term as f64)?;
        out.gauge(
            "tern_cluster_last_log_index",
            "The index of the last entry in this node's Raft log.",
            info.last_log_index.unwrap_or(0) as f64,
        )?;
        out.gauge(
            "tern_cluster_last_applied_index",
            "The index of the last Raft entry applied to this node's state.",
            info.last_applied.unwrap_or(0) as f64,
        )?;
        out.gauge(
            "tern_cluster_voters",
            "Voting members of the Raft group.",
            info.voters.len() as f64,
        )?;
        out.gauge(
            "tern_cluster_learners",
            "Learners of the Raft group (full replicas that do not vote).",
            info.learners.len() as f64,
        )?;
        out.gauge(
            "tern_cluster_nodes",
            "Members and registered nodes of the cluster, this one included.",
            info.nodes.len() as f64,
        )?;
        if let Some(millis) = info.millis_since_quorum_ack {
            out.gauge(
                "tern_cluster_quorum_ack_age_seconds",
                "On the leader: seconds since a quorum last acknowledged it.",
                millis as f64 / 1000.0,
            )?;
        }
        let peers: Vec<&tern_admin::ClusterNodeInfo> = info
            .nodes
            .iter()
            .filter(|node| node.id != info.node_id)
            .collect();
        let per_peer = |value: fn(&tern_admin::ClusterNodeInfo) -> f64| {
            peers
                .iter()
                .map(|node| ([("peer", node.id.to_string())], value(node)))
                .collect::<Vec<(Labels, f64)>>()
        };
        out.gauges(
            "tern_cluster_link_up",
            "Whether this node's link to the peer is up (1) or not (0).",
            &per_peer(|node| if node.linked { 1.0 } else { 0.0 }),
        )?;
        out.gauges(
            "tern_cluster_pending_messages",
            "Messages for the peer in this node's outbox, not acknowledged yet.",
            &per_peer(|node| node.pending as f64),
        )?;
        let forwarding = &info.forwarding;
        out.counter(
            "tern_cluster_messages_sent",
            "Messages forwarded to other nodes (first sendings).",
            forwarding.sent,
        )?;
        out.counter(
            "tern_cluster_messages_resent",
            "Messages forwarded again after a link failed before their acknowledgement.",
            forwarding.resent,
        )?;
        out.counter(
            "tern_cluster_messages_received",
            "Messages received from other nodes, duplicates included.",
            forwarding.received,
        )?;
        out.counter(
            "tern_cluster_messages_duplicate",
            "Messages received again from another node, acknowledged and not delivered again.",
            forwarding.duplicates,
        )?;
        out.counter(
            "tern_cluster_messages_dropped",
            "Messages not forwarded: a peer's outbox was full, or the message could not be encoded.",
            forwarding.dropped,
        )?;
        out.counter(
            "tern_cluster_messages_late",
            "Messages for a session moved from this node that reached it afterwards, sent on to the session's new owner.",
            forwarding.late,
        )?;
        out.counter(
            "tern_cluster_second_copies_dropped",
            "Copies of a session's messages dropped on the node it moved to: the client had the message on its old connection, or the session holds it.",
            self.broker.metrics().snapshot().second_copies_dropped,
        )?;
        {
            use std::sync::atomic::Ordering::Relaxed;
            use tern_cluster::wire::{BYTES_IN, BYTES_OUT};
            let kinds = |bytes: &tern_cluster::wire::LinkBytes| {
                vec![
                    (
                        [("kind", "control".to_owned())],
                        bytes.control.load(Relaxed) as f64,
                    ),
                    (
                        [("kind", "data".to_owned())],
                        bytes.data.load(Relaxed) as f64,
                    ),
                ]
            };
            out.gauges(
                "tern_cluster_link_sent_bytes",
                "Bytes this process wrote to node-to-node links: control (Raft, proposals, hand-overs) and data (forwarded messages).",
                &kinds(&BYTES_OUT),
            )?;
            out.gauges(
                "tern_cluster_link_received_bytes",
                "Bytes this process read from node-to-node links, by the same kinds.",
                &kinds(&BYTES_IN),
            )?;
        }
        out.gauge(
            "tern_cluster_sessions",
            "Client ids claimed in the replicated session registry.",
            info.sessions as f64,
        )?;
        out.gauge(
            "tern_cluster_routes",
            "Routes (filter, node) in the replicated state.",
            info.routes as f64,
        )?;
        out.gauge(
            "tern_cluster_retained_messages",
            "Retained messages in the replicated state.",
            info.retained as f64,
        )
    }
}

/// Writes one family: a descriptor, then one sample per label set.
struct Out<'a, 'b> {
    encoder: &'a mut DescriptorEncoder<'b>,
}

impl Out<'_, '_> {
    fn counter(&mut self, name: &str, help: &str, value: u64) -> std::fmt::Result {
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        metric.encode_counter::<NoLabelSet, u64, u64>(&value, None)
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl Into<f64>) -> std::fmt::Result {
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        metric.encode_gauge(&value.into())
    }

    fn counters<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(L, u64)],
    ) -> std::fmt::Result {
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, value) in samples {
            metric
                .encode_family(labels)?
                .encode_counter::<NoLabelSet, u64, u64>(value, None)?;
        }
        Ok(())
    }

    fn gauges<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: &[(L, f64)],
    ) -> std::fmt::Result {
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, value) in samples {
            metric.encode_family(labels)?.encode_gauge(value)?;
        }
        Ok(())
    }

    /// A histogram from cumulative bucket counts (`(bound, count <= bound)`) and the total.
    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        sum: f64,
        count: u64,
        cumulative: &[(f64, u64)],
    ) -> std::fmt::Result {
        let mut buckets = Vec::with_capacity(cumulative.len() + 1);
        let mut before = 0;
        for &(bound, total) in cumulative {
            buckets.push((bound, total.saturating_sub(before)));
            before = total;
        }
        buckets.push((f64::MAX, count.saturating_sub(before)));
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

type Labels = [(&'static str, String); 1];

fn qos_labels(values: [u64; 3]) -> Vec<(Labels, u64)> {
    values
        .iter()
        .enumerate()
        .map(|(qos, &value)| ([("qos", qos.to_string())], value))
        .collect()
}

impl Collector for MetricsSource {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.broker.metrics().snapshot();
        let totals = self.broker.session_totals();
        let (retained, retained_bytes) = self.broker.retained_totals();
        let mut out = Out {
            encoder: &mut encoder,
        };
        let info = |v: &str| [("version", v.to_owned())];
        out.gauges(
            "tern_build_info",
            "The running version of Tern.",
            &[(info(env!("CARGO_PKG_VERSION")), 1.0)],
        )?;
        out.gauge(
            "tern_uptime_seconds",
            "Seconds since the broker started.",
            self.started.elapsed().as_secs_f64(),
        )?;
        // Connections and sessions.
        let connections: Vec<([(&str, String); 2], f64)> = totals
            .connections
            .iter()
            .map(|(listener, protocol, n)| {
                (
                    [
                        ("listener", listener.as_deref().unwrap_or("").to_owned()),
                        (
                            "protocol",
                            crate::admin_backend::protocol_name(*protocol).to_owned(),
                        ),
                    ],
                    *n as f64,
                )
            })
            .collect();
        out.gauges(
            "tern_connections",
            "MQTT connections past CONNACK, by listener name (empty: a `listen` address) and protocol version.",
            &connections,
        )?;
        out.gauge(
            "tern_open_sockets",
            "Accepted sockets, those still before CONNECT included (what max_connections counts).",
            self.open.get() as f64,
        )?;
        out.gauges(
            "tern_sessions",
            "Sessions by state.",
            &[
                ([("state", "connected".to_owned())], totals.connected as f64),
                ([("state", "offline".to_owned())], totals.offline as f64),
            ],
        )?;
        out.gauge(
            "tern_subscriptions",
            "Subscriptions in the index.",
            self.broker.subscription_count() as f64,
        )?;
        out.gauge(
            "tern_retained_messages",
            "Retained messages.",
            retained as f64,
        )?;
        out.gauge(
            "tern_retained_bytes",
            "Bytes of the retained messages' payloads.",
            retained_bytes as f64,
        )?;
        out.gauge(
            "tern_queued_messages",
            "Messages waiting in session queues.",
            totals.queued as f64,
        )?;
        out.gauge(
            "tern_inflight_messages",
            "Outbound QoS 1/2 messages awaiting acknowledgement.",
            totals.inflight as f64,
        )?;
        let depth_buckets: Vec<(f64, u64)> = QUEUE_DEPTH_BUCKETS
            .iter()
            .zip(totals.queue_depths)
            .map(|(&bound, n)| (bound as f64, n))
            .collect();
        let sessions = totals.queue_depths[QUEUE_DEPTH_BUCKETS.len()];
        out.histogram(
            "tern_session_queue_depth",
            "Sessions by the number of messages in their queue.",
            totals.queued as f64,
            sessions,
            &depth_buckets,
        )?;
        // Counters of the core.
        out.counter(
            "tern_connections_accepted",
            "CONNECTs accepted.",
            m.connections_accepted,
        )?;
        out.counter(
            "tern_connections_refused",
            "CONNECTs refused with a CONNACK error.",
            m.connections_refused,
        )?;
        out.counter(
            "tern_auth_failures",
            "CONNECTs refused for bad credentials or not authorized.",
            m.auth_failures,
        )?;
        out.counter(
            "tern_connections_kicked",
            "Connections closed by an operator (kick, session deleted).",
            m.connections_kicked,
        )?;
        out.counters(
            "tern_messages_received",
            "PUBLISH packets received from clients, by QoS.",
            &qos_labels([m.received_qos0, m.received_qos1, m.received_qos2]),
        )?;
        out.counters(
            "tern_messages_sent",
            "PUBLISH packets sent to clients, by QoS.",
            &qos_labels([m.sent_qos0, m.sent_qos1, m.sent_qos2]),
        )?;
        out.counters(
            "tern_payload_received_bytes",
            "Payload bytes of the PUBLISH packets received, by QoS.",
            &qos_labels([
                m.received_bytes_qos0,
                m.received_bytes_qos1,
                m.received_bytes_qos2,
            ]),
        )?;
        out.counters(
            "tern_payload_sent_bytes",
            "Payload bytes of the PUBLISH packets sent, by QoS.",
            &qos_labels([m.sent_bytes_qos0, m.sent_bytes_qos1, m.sent_bytes_qos2]),
        )?;
        out.counter(
            "tern_network_received_bytes",
            "Bytes of MQTT read from clients.",
            m.network_bytes_received,
        )?;
        out.counter(
            "tern_network_sent_bytes",
            "Bytes of MQTT written to clients.",
            m.network_bytes_sent,
        )?;
        out.counter(
            "tern_messages_queued",
            "Deliveries pushed into session queues.",
            m.messages_queued,
        )?;
        let reason = |r: &str, v: u64| ([("reason", r.to_owned())], v);
        out.counters(
            "tern_messages_dropped",
            "Messages dropped, by reason.",
            &[
                reason("queue_full", m.messages_dropped_queue_full),
                reason("expired", m.messages_dropped_expired),
                reason("too_large", m.messages_dropped_too_large),
                reason("denied", m.messages_dropped_denied),
                reason("offline_qos0", m.messages_dropped_offline_qos0),
                reason("retained_storage_full", m.retained_dropped_storage_full),
            ],
        )?;
        out.counters(
            "tern_messages_refused",
            "PUBLISH packets refused, by reason.",
            &[
                reason("denied", m.messages_refused),
                reason("storage_full", m.messages_refused_storage_full),
                reason("cluster_full", m.messages_refused_cluster_full),
            ],
        )?;
        out.counter(
            "tern_subscriptions_refused_storage_full",
            "Subscriptions of stored sessions refused while the store took no new work.",
            m.subscriptions_refused_storage_full,
        )?;
        out.counter(
            "tern_wills_published",
            "Wills published.",
            m.wills_published,
        )?;
        out.counter(
            "tern_sessions_expired",
            "Sessions ended by their expiry.",
            m.sessions_expired,
        )?;
        out.gauge(
            "tern_storage_alarm",
            "1 while the store refuses new durable work (disk full or failing).",
            m.storage_alarm as f64,
        )?;
        if let Some(store) = &self.store {
            let status = store.status();
            let commits = store.commit_figures();
            out.histogram(
                "tern_store_commit_seconds",
                "Duration of the store's group commits.",
                commits.seconds_sum,
                commits.commits,
                &commits.buckets,
            )?;
            out.counter(
                "tern_store_committed_bytes",
                "Estimated bytes of the changes committed.",
                commits.bytes,
            )?;
            out.gauge(
                "tern_store_pending_bytes",
                "Estimated bytes of changes waiting for a commit.",
                status.pending_bytes as f64,
            )?;
            if let Some(free) = status.free_bytes {
                out.gauge(
                    "tern_store_free_disk_bytes",
                    "Free bytes on the data directory's file system.",
                    free as f64,
                )?;
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()) as f64;
        let expiries: Vec<(Labels, f64)> = self
            .tls
            .expiries()
            .into_iter()
            .map(|(listener, not_after)| ([("listener", listener)], not_after as f64 - now))
            .collect();
        if !expiries.is_empty() {
            out.gauges(
                "tern_certificate_expiry_seconds",
                "Seconds until the listener's certificate expires (negative: expired).",
                &expiries,
            )?;
        }
        if let Some(not_after) = self.tls.cluster_expiry() {
            out.gauge(
                "tern_cluster_certificate_expiry_seconds",
                "Seconds until the certificate of [cluster] tls in use expires (negative: expired).",
                not_after as f64 - now,
            )?;
        }
        self.encode_bridges(&mut out)?;
        self.encode_cluster(&mut out)?;
        if let Some(process) = process::read() {
            out.counter_f64(
                "process_cpu_seconds",
                "User and system CPU time of the process.",
                process.cpu_seconds,
            )?;
            out.gauge(
                "process_resident_memory_bytes",
                "Resident memory of the process.",
                process.resident_bytes as f64,
            )?;
            out.gauge(
                "process_virtual_memory_bytes",
                "Virtual memory of the process.",
                process.virtual_bytes as f64,
            )?;
            out.gauge(
                "process_open_fds",
                "Open file descriptors.",
                process.open_fds as f64,
            )?;
            if let Some(max) = process.max_fds {
                out.gauge("process_max_fds", "The file descriptor limit.", max as f64)?;
            }
        }
        Ok(())
    }
}

impl Out<'_, '_> {
    fn counter_f64(&mut self, name: &str, help: &str, value: f64) -> std::fmt::Result {
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        metric.encode_counter::<NoLabelSet, f64, f64>(&value, None)
    }
}

/// The process's CPU time, memory and descriptors, from /proc (Linux; `None` elsewhere).
pub(crate) mod process {
    pub(crate) struct Process {
        pub(crate) cpu_seconds: f64,
        pub(crate) resident_bytes: u64,
        pub(crate) virtual_bytes: u64,
        pub(crate) open_fds: u64,
        pub(crate) max_fds: Option<u64>,
    }

    /// Clock ticks per second of /proc/self/stat's times (USER_HZ: 100 on every Linux
    /// architecture Tern builds for).
    const TICKS_PER_SECOND: f64 = 100.0;
    /// The fields of /proc/self/stat after the command name (which is in parentheses and
    /// may hold spaces and parentheses of its own): the first is field 3, the state.
    pub(super) fn stat_fields(stat: &str) -> Vec<&str> {
        let after_name = stat.rfind(')').and_then(|end| stat.get(end + 1..));
        after_name.map_or_else(Vec::new, |rest| rest.split_whitespace().collect())
    }

    /// `VmRSS` of /proc/self/status, in bytes (the kernel gives kB whatever the page size,
    /// where /proc/self/stat counts pages: 4 KiB or 64 KiB depending on the kernel).
    pub(super) fn status_rss_bytes(status: &str) -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    pub(crate) fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let fields = stat_fields(&stat);
        // Field 14 (utime) is the 12th after the name (field 3 is the first).
        let number = |index: usize| fields.get(index)?.parse::<u64>().ok();
        let cpu = (number(11)? + number(12)?) as f64 / TICKS_PER_SECOND;
        let virtual_bytes = number(20)?;
        let resident_bytes = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| status_rss_bytes(&status))
            .unwrap_or(0);
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| {
                let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
                line.split_whitespace().nth(3)?.parse().ok()
            });
        Some(Process {
            cpu_seconds: cpu,
            resident_bytes,
            virtual_bytes,
            open_fds,
            max_fds,
        })
    }
}

#[cfg(test)]
mod process_tests {
    use super::process::{stat_fields, status_rss_bytes};

    /// Review 13 NIT 15: /proc/self/stat read without a panic whatever the command name
    /// (a `)` at the very end, or none), and the RSS read in bytes from `VmRSS` (kB), not
    /// counted in pages of an assumed size.
    #[test]
    fn proc_files_are_read_without_assumptions() {
        assert_eq!(stat_fields("12 (a) b) S 1 2")[..2], ["S", "1"]);
        assert!(stat_fields("12 (tern)").is_empty());
        assert!(stat_fields("12 (tern").is_empty());
        assert!(stat_fields("").is_empty());
        let status = "Name:\ttern\nVmPeak:\t 9000 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(status_rss_bytes(status), Some(2048 * 1024));
        assert_eq!(status_rss_bytes("Name: x\n"), None);
        let live = super::process::read().expect("/proc on Linux");
        assert!(live.resident_bytes > 0);
    }
}

#[cfg(test)]
mod dropped_tests {
    /// Review 13 NIT 17: the stats' `messages_dropped` and `$SYS publish/messages/dropped`
    /// are one figure: every delivery drop, the ones denied at take-over included; a
    /// retained message not kept (storage full) is not a dropped delivery.
    #[test]
    fn one_figure_of_dropped_messages() {
        let m = tern_broker::MetricsSnapshot {
            messages_dropped_queue_full: 1,
            messages_dropped_expired: 2,
            messages_dropped_too_large: 4,
            messages_dropped_denied: 8,
            messages_dropped_offline_qos0: 16,
            retained_dropped_storage_full: 32,
            ..Default::default()
        };
        assert_eq!(super::messages_dropped(&m), 31);
    }
}
