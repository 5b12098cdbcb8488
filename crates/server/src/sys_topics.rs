//! The `$SYS/broker/...` topics, with Mosquitto's names for what Tern has, published every
//! `sys_interval` seconds by a task of the timer runtime, which walks the sessions on tokio's
//! blocking pool: retained in memory (a client that
//! subscribes later gets the last values at once), never written to the store.
//!
//! The load figures are Mosquitto's: an exponentially weighted moving average, per minute,
//! of the count over the last 1, 5 and 15 minutes, updated at each interval.

use std::time::Duration;

use bytes::Bytes;
use tern_broker::Message;
use tern_codec::{MqttStr, QoS};
use tokio::sync::watch;

use crate::metrics::MetricsSource;

/// The moving averages of one count (`load/<name>/{1min,5min,15min}`).
#[derive(Debug, Default)]
struct Load {
    last: Option<u64>,
    averages: [f64; 3],
}

const WINDOWS: [(f64, &str); 3] = [(1.0, "1min"), (5.0, "5min"), (15.0, "15min")];

impl Load {
    /// Takes the count now, `interval` seconds after the last one.
    fn update(&mut self, count: u64, interval: f64) {
        let delta = self.last.map_or(0, |last| count.saturating_sub(last)) as f64;
        self.last = Some(count);
        let per_minute = delta * 60.0 / interval;
        for (average, (minutes, _)) in self.averages.iter_mut().zip(WINDOWS) {
            let keep = (-interval / (60.0 * minutes)).exp();
            *average = *average * keep + per_minute * (1.0 - keep);
        }
    }
}

/// The loads tracked, by their name under `load/`.
const LOADS: [&str; 7] = [
    "messages/received",
    "messages/sent",
    "publish/received",
    "publish/sent",
    "bytes/received",
    "bytes/sent",
    "connections",
];

/// Publishes the `$SYS` topics every `interval` until the server stops.
pub(crate) async fn run(
    source: MetricsSource,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let source = std::sync::Arc::new(source);
    let mut loads: Vec<Load> = LOADS.iter().map(|_| Load::default()).collect();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        // The rates over the time that actually passed (a late tick is not a faster rate).
        let now = std::time::Instant::now();
        let elapsed = now.duration_since(last).as_secs_f64().max(0.001);
        last = now;
        // The walk of every session runs on tokio's blocking pool, not on this runtime,
        // which also drives the broker's timers (keep-alive, will delay, expiry).
        let walker = source.clone();
        match tokio::task::spawn_blocking(move || {
            publish(&walker, &mut loads, elapsed);
            loads
        })
        .await
        {
            Ok(back) => loads = back,
            Err(error) => {
                tracing::warn!(%error, "the $SYS round failed; $SYS stops");
                return;
            }
        }
    }
}

/// Every topic and its value now.
fn values(source: &MetricsSource, loads: &mut [Load], interval: f64) -> Vec<(String, String)> {
    let broker = &source.broker;
    let m = broker.metrics().snapshot();
    let totals = broker.session_totals();
    let (retained, _) = broker.retained_totals();
    let mut out = vec![
        (
            "version".to_owned(),
            format!("tern version {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "uptime".to_owned(),
            format!("{} seconds", source.started.elapsed().as_secs()),
        ),
        ("clients/connected".to_owned(), totals.connected.to_string()),
        ("clients/active".to_owned(), totals.connected.to_string()),
        (
            "clients/disconnected".to_owned(),
            totals.offline.to_string(),
        ),
        ("clients/inactive".to_owned(), totals.offline.to_string()),
        (
            "clients/total".to_owned(),
            (totals.connected + totals.offline).to_string(),
        ),
        (
            "messages/received".to_owned(),
            m.messages_received.to_string(),
        ),
        ("messages/sent".to_owned(), m.messages_sent.to_string()),
        (
            "publish/messages/received".to_owned(),
            m.messages_received.to_string(),
        ),
        (
            "publish/messages/sent".to_owned(),
            m.messages_sent.to_string(),
        ),
        (
            "publish/messages/dropped".to_owned(),
            crate::metrics::messages_dropped(&m).to_string(),
        ),
        (
            "bytes/received".to_owned(),
            m.network_bytes_received.to_string(),
        ),
        ("bytes/sent".to_owned(), m.network_bytes_sent.to_string()),
        (
            "subscriptions/count".to_owned(),
            broker.subscription_count().to_string(),
        ),
        ("retained messages/count".to_owned(), retained.to_string()),
        (
            // Mosquitto's: retained messages included.
            "messages/stored".to_owned(),
            (totals.queued + totals.inflight + retained as u64).to_string(),
        ),
        (
            "publish/bytes/received".to_owned(),
            (m.received_bytes_qos0 + m.received_bytes_qos1 + m.received_bytes_qos2).to_string(),
        ),
        (
            "publish/bytes/sent".to_owned(),
            (m.sent_bytes_qos0 + m.sent_bytes_qos1 + m.sent_bytes_qos2).to_string(),
        ),
    ];
    if let Some(cluster) = &source.cluster {
        out.extend(cluster_values(&crate::cluster_admin::info(cluster)));
    }
    let counts = [
        m.messages_received,
        m.messages_sent,
        m.messages_received,
        m.messages_sent,
        m.network_bytes_received,
        m.network_bytes_sent,
        m.connections_accepted,
    ];
    for ((load, name), count) in loads.iter_mut().zip(LOADS).zip(counts) {
        load.update(count, interval);
        for (average, (_, window)) in load.averages.iter().zip(WINDOWS) {
            out.push((format!("load/{name}/{window}"), format!("{average:.2}")));
        }
    }
    out
}

/// `$SYS/broker/cluster/...`: this node's id and role, the leader it knows (empty: none),
/// the term, the members, and the messages waiting for other nodes.
fn cluster_values(info: &tern_admin::ClusterInfo) -> Vec<(String, String)> {
    let ids = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    vec![
        ("cluster/node_id".to_owned(), info.node_id.to_string()),
        ("cluster/role".to_owned(), info.role.clone()),
        (
            "cluster/leader".to_owned(),
            info.leader.map(|id| id.to_string()).unwrap_or_default(),
        ),
        ("cluster/term".to_owned(), info.term.to_string()),
        ("cluster/voters".to_owned(), ids(&info.voters)),
        ("cluster/learners".to_owned(), ids(&info.learners)),
        (
            "cluster/nodes/count".to_owned(),
            info.nodes.len().to_string(),
        ),
        (
            "cluster/messages/pending".to_owned(),
            info.forwarding.pending.to_string(),
        ),
    ]
}

fn publish(source: &MetricsSource, loads: &mut [Load], interval: f64) {
    let now = std::time::Instant::now();
    for (name, value) in values(source, loads, interval) {
        let Ok(topic) = MqttStr::try_from(format!("$SYS/broker/{name}")) else {
            continue;
        };
        source.broker.publish_system(
            Message {
                cluster_id: None,
                topic,
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: None,
                expires_at: None,
                publisher: None,
                id: 0,
            },
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16, "the cluster's state in ... `$SYS`": the topics under `cluster/`.
    #[test]
    fn cluster_topics() {
        let info = tern_admin::ClusterInfo {
            node_id: 2,
            role: "follower".into(),
            leader: Some(1),
            term: 4,
            voters: vec![1, 2, 3],
            learners: vec![4],
            nodes: vec![tern_admin::ClusterNodeInfo::default(); 4],
            forwarding: tern_admin::ClusterForwarding {
                pending: 7,
                ..Default::default()
            },
            ..Default::default()
        };
        let values: std::collections::BTreeMap<String, String> =
            cluster_values(&info).into_iter().collect();
        assert_eq!(values["cluster/role"], "follower");
        assert_eq!(values["cluster/leader"], "1");
        assert_eq!(values["cluster/voters"], "1,2,3");
        assert_eq!(values["cluster/learners"], "4");
        assert_eq!(values["cluster/nodes/count"], "4");
        assert_eq!(values["cluster/messages/pending"], "7");
        let alone = tern_admin::ClusterInfo::default();
        assert_eq!(
            cluster_values(&alone)[2],
            ("cluster/leader".to_owned(), String::new())
        );
    }

    /// Mosquitto's load figures: a steady rate converges to itself (per minute).
    #[test]
    fn load_average_converges_to_the_rate() {
        let mut load = Load::default();
        let mut count = 0;
        for _ in 0..2000 {
            load.update(count, 10.0);
            count += 100; // 100 per 10 s: 600 a minute
        }
        for average in load.averages {
            assert!((average - 600.0).abs() < 1.0, "{average}");
        }
    }
}
