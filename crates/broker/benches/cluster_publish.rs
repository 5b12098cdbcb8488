//! What the cluster's seam costs a publish (issue 16): the broker's whole publish path (match,
//! delivery, queue) to one online subscriber, on a single node (no hook) and on a cluster
//! node whose hook plans nothing remote for the message (local-only traffic).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, criterion_group, criterion_main};
use tern_broker::{
    Broker, BrokerConfig, ClusterHook, ClusterPlan, Connection, Message, Seq, Wakeup,
};
use tern_codec::{
    Connect, MqttStr, Packet, Properties, ProtocolVersion, QoS, Subscribe, Subscription,
    SubscriptionOptions,
};

struct Quiet;

impl Wakeup for Quiet {
    fn wake(&self) {}
}

/// A cluster with no other node interested in anything.
struct LocalOnly;

impl ClusterHook for LocalOnly {
    fn route_added(&self, _: &str, _: Option<&str>) {}
    fn route_removed(&self, _: &str, _: Option<&str>) {}
    fn plan(&self, _: &Message) -> Option<ClusterPlan> {
        None
    }
    fn forward(&self, _: &Arc<Message>, _: ClusterPlan) -> Seq {
        Seq::NONE
    }
    fn retained_changed(&self, _: &str, _: Option<&Arc<Message>>) {}
}

fn text(value: &str) -> MqttStr {
    MqttStr::try_from(value).unwrap()
}

/// A broker with one connected subscriber to `bench/+`.
fn broker(hook: Option<Arc<dyn ClusterHook>>) -> (Arc<Broker>, Connection, Instant) {
    let broker = Broker::new(BrokerConfig::default());
    if let Some(hook) = hook {
        broker.set_cluster(hook);
    }
    let now = Instant::now();
    let mut subscriber = Connection::new(broker.clone(), Arc::new(Quiet), None, now);
    subscriber.handle_packet(
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V311,
            clean_start: true,
            keep_alive: 0,
            properties: Properties::default(),
            client_id: text("subscriber"),
            will: None,
            username: None,
            password: None,
        })),
        now,
    );
    subscriber.handle_packet(
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: text("bench/+"),
                options: SubscriptionOptions::default(),
            }],
        }),
        now,
    );
    let mut out = BytesMut::new();
    subscriber.poll_transmit(&mut out, usize::MAX, now);
    (broker, subscriber, now)
}

fn bench_publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish QoS 0 to one subscriber");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    let cases: [(&str, Option<Arc<dyn ClusterHook>>); 2] = [
        ("single node (no hook)", None),
        (
            "cluster node, local-only traffic",
            Some(Arc::new(LocalOnly)),
        ),
    ];
    for (name, hook) in cases {
        let (broker, mut subscriber, now) = broker(hook);
        let topic = text("bench/1");
        let payload = Bytes::from_static(b"0123456789abcdef");
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut sent = 0u32;
        group.bench_function(name, |b| {
            b.iter(|| {
                let message = Message {
                    cluster_id: None,
                    topic: topic.clone(),
                    payload: payload.clone(),
                    qos: QoS::AtMostOnce,
                    retain: false,
                    properties: None,
                    expires_at: None,
                    publisher: None,
                    id: 0,
                };
                let reached = broker.publish(black_box(message), now);
                sent += 1;
                // The subscriber drains its queue now and then, as its task would.
                if sent % 64 == 0 {
                    subscriber.poll_transmit(&mut out, usize::MAX, now);
                    out.clear();
                }
                reached
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_publish);
criterion_main!(benches);
