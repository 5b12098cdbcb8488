//! The timers of offline sessions are removed when the client comes back or the session ends,
//! so reconnects do not pile them up (each held its session alive until it fired).

mod common;

use bytes::Bytes;
use common::{Client, Net, V5, connect_packet, text};
use tern_codec::{Connect, Properties, QoS, Will};

const EXPIRY: u32 = 3600;

/// MQTT 5, resuming the session "roamer" that lasts an hour offline, with a will delayed by
/// `will_delay` seconds if given.
fn roamer(will_delay: Option<u32>) -> Connect {
    let mut connect = connect_packet(V5, "roamer");
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(EXPIRY);
    connect.will = will_delay.map(|delay| Will {
        topic: text("status/roamer"),
        payload: Bytes::from_static(b"offline"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: Some(delay),
            ..Properties::default()
        },
    });
    connect
}

fn timers(net: &Net) -> usize {
    net.broker.pending_timers()
}

#[test]
fn ten_thousand_reconnects_leave_one_expiry_timer() {
    let net = Net::new();
    for _ in 0..10_000 {
        let client: Client = net.accepted(roamer(None));
        net.advance(10);
        // Lost without DISCONNECT.
        drop(client);
    }
    assert_eq!(timers(&net), 1);
    // The one left still ends the session when it runs out [MQTT-3.1.2-23].
    net.advance(u64::from(EXPIRY) * 1000);
    assert!(net.session("roamer").is_none());
    assert_eq!(timers(&net), 0);
}

#[test]
fn reconnects_within_the_will_delay_leave_no_will_timer() {
    let net = Net::new();
    for _ in 0..1_000 {
        let client = net.accepted(roamer(Some(60)));
        net.advance(10);
        drop(client);
    }
    // The last connection's expiry and will.
    assert_eq!(timers(&net), 2);
    // Back within the delay: neither the will [MQTT-3.1.3-9] nor the expiry stays.
    net.advance(1_000);
    let _online = net.accepted(roamer(None));
    assert_eq!(timers(&net), 0);
}

#[test]
fn a_will_still_fires_after_its_delay() {
    let net = Net::new();
    let mut watcher = net.connected(V5, "watcher");
    watcher.subscribe("status/#", QoS::AtMostOnce);
    drop(net.accepted(roamer(Some(5))));
    net.advance(4_999);
    assert!(watcher.publishes().is_empty());
    net.advance(1);
    let got = watcher.publishes();
    assert!(matches!(got.as_slice(), [p] if p.topic.as_str() == "status/roamer"));
    // The expiry timer remains; the will's is gone.
    assert_eq!(timers(&net), 1);
}
