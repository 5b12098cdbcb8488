//! Issue 16: in-process clusters of three Tern nodes on loopback, driven by rumqttc clients:
//! a message published on one node reaches subscribers on the others, a retained message set
//! on one is seen from the others, a shared subscription's members on several nodes share
//! its messages.

mod common;

use std::time::Duration;

use common::Client;
use common::cluster::{route_known, temp_dir, three_nodes, until};
use rumqttc::QoS;

/// Subscribe on A, publish on C: delivered at QoS 0 and 1, in order (issue 16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_on_one_node_reaches_subscribers_on_others() {
    let dir = temp_dir("route");
    let nodes = three_nodes(&dir).await;
    let mut subscriber = Client::simple(nodes[0].addr, "sub-a").await;
    subscriber
        .subscribe("sensors/+/temp", QoS::AtLeastOnce)
        .await;
    route_known(&nodes, "sensors/+/temp", 1).await;

    let publisher = Client::simple(nodes[2].addr, "pub-c").await;
    for i in 0..20 {
        let qos = if i % 2 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        publisher
            .publish("sensors/kitchen/temp", qos, false, format!("{i}"))
            .await;
    }
    // Every message arrives; per QoS in the order published [MQTT-4.6.0-5] (the order
    // holds per topic and QoS: QoS 0 may overtake QoS 1 as on a single node).
    let mut received = Vec::new();
    for _ in 0..20 {
        let message = subscriber.recv().await;
        assert_eq!(message.topic, "sensors/kitchen/temp");
        let n: u32 = std::str::from_utf8(&message.payload)
            .unwrap()
            .parse()
            .unwrap();
        received.push(n);
    }
    let even: Vec<u32> = received.iter().copied().filter(|n| n % 2 == 0).collect();
    let odd: Vec<u32> = received.iter().copied().filter(|n| n % 2 == 1).collect();
    assert_eq!(
        even,
        (0..20).step_by(2).collect::<Vec<u32>>(),
        "QoS 0 in order"
    );
    assert_eq!(
        odd,
        (1..20).step_by(2).collect::<Vec<u32>>(),
        "QoS 1 in order"
    );
    // A subscriber on the publisher's own node gets it as well, once.
    let mut local = Client::simple(nodes[2].addr, "sub-c").await;
    local.subscribe("sensors/#", QoS::AtMostOnce).await;
    route_known(&nodes, "sensors/#", 3).await;
    publisher
        .publish("sensors/hall/temp", QoS::AtLeastOnce, false, "x")
        .await;
    assert_eq!(local.recv().await.payload, &b"x"[..]);
    assert_eq!(subscriber.recv().await.payload, &b"x"[..]);
    for node in nodes {
        node.shutdown().await;
    }
}

/// A retained message set on A is seen from B by a later subscriber [MQTT-3.3.1-6]; cleared
/// on C, it is gone everywhere [MQTT-3.3.1-10].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_set_on_one_node_is_seen_from_the_others() {
    let dir = temp_dir("retained");
    let nodes = three_nodes(&dir).await;
    let publisher = Client::simple(nodes[0].addr, "pub-a").await;
    publisher
        .publish("status/door", QoS::AtLeastOnce, true, "open")
        .await;
    until("the retained message everywhere", || {
        nodes.iter().all(|node| {
            node.cluster
                .node()
                .state()
                .retained_message("status/door")
                .is_some()
        })
    })
    .await;
    let mut reader = Client::simple(nodes[1].addr, "reader-b").await;
    reader.subscribe("status/#", QoS::AtLeastOnce).await;
    let message = reader.recv().await;
    assert_eq!(message.topic, "status/door");
    assert_eq!(message.payload, &b"open"[..]);
    assert!(message.retain, "sent as retained to a new subscriber");

    let clearer = Client::simple(nodes[2].addr, "clear-c").await;
    clearer
        .publish("status/door", QoS::AtLeastOnce, true, "")
        .await;
    until("the retained message gone everywhere", || {
        nodes.iter().all(|node| {
            node.cluster
                .node()
                .state()
                .retained_message("status/door")
                .is_none()
        })
    })
    .await;
    // Give the clear a moment to reach node 2's core (applied after the state).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut late = Client::simple(nodes[1].addr, "late-b").await;
    late.subscribe("status/#", QoS::AtLeastOnce).await;
    let nothing = late
        .next_matching_within(Duration::from_millis(500), |event| match event {
            rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        })
        .await;
    assert!(
        nothing.is_err(),
        "no retained message after the clear: {nothing:?}"
    );
    for node in nodes {
        node.shutdown().await;
    }
}

/// A shared subscription with members on two nodes: each message published on the third goes
/// to exactly one member; both get some [MQTT-4.8.2-?: one member per message].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_subscription_picks_among_members_on_all_nodes() {
    let dir = temp_dir("shared");
    let nodes = three_nodes(&dir).await;
    let mut a = Client::simple(nodes[0].addr, "worker-a").await;
    a.subscribe("$share/g/jobs/#", QoS::AtLeastOnce).await;
    let mut b = Client::simple(nodes[1].addr, "worker-b").await;
    b.subscribe("$share/g/jobs/#", QoS::AtLeastOnce).await;
    until("the group on nodes 1 and 2 everywhere", || {
        nodes.iter().all(|node| {
            node.cluster
                .node()
                .state()
                .shared()
                .any(|(group, filter, holders)| {
                    group == "g" && filter == "jobs/#" && holders.len() == 2
                })
        })
    })
    .await;
    let publisher = Client::simple(nodes[2].addr, "boss-c").await;
    let total = 40;
    for i in 0..total {
        publisher
            .publish("jobs/build", QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    let mut seen = std::collections::BTreeSet::new();
    let (mut got_a, mut got_b) = (0, 0);
    while seen.len() < total {
        tokio::select! {
            message = a.recv() => { got_a += 1; assert!(seen.insert(message.payload.to_vec()), "one member per message"); }
            message = b.recv() => { got_b += 1; assert!(seen.insert(message.payload.to_vec()), "one member per message"); }
        }
    }
    assert!(
        got_a > 0 && got_b > 0,
        "both members got some: {got_a} / {got_b}"
    );
    for node in nodes {
        node.shutdown().await;
    }
}
