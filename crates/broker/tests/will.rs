//! Will messages (section 3.1.2.5 and MQTT 5's 3.1.3.2): published when the connection ends
//! without DISCONNECT, never after one [MQTT-3.1.2-8, MQTT-3.1.2-10]; MQTT 5's Will Delay
//! Interval against the session's end and resumption, on the fake clock.

mod common;

use bytes::Bytes;
use common::*;
use tern_codec::{Connect, Disconnect, Packet, Properties, ProtocolVersion, QoS, ReasonCode, Will};

fn with_will(version: ProtocolVersion, id: &str, topic: &str, payload: &'static [u8]) -> Connect {
    let mut connect = connect_packet(version, id);
    connect.will = Some(Will {
        topic: text(topic),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    });
    connect
}

/// An MQTT 5 will on `wills/<id>` with a Will Delay Interval, in a session with an expiry.
fn delayed_will(id: &str, delay: u32, session_expiry: u32) -> Connect {
    let mut connect = with_will(V5, id, &format!("wills/{id}"), b"gone");
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(session_expiry);
    if let Some(will) = &mut connect.will {
        will.properties.will_delay_interval = Some(delay);
        will.properties.content_type = Some(text("text/plain"));
    }
    connect
}

fn watcher(net: &Net, version: ProtocolVersion, filter: &str) -> Client {
    let mut client = net.connected(version, "will-watcher");
    client.subscribe(filter, QoS::ExactlyOnce);
    client
}

#[test]
fn will_is_published_when_the_transport_closes_mqtt_3_1_2_8() {
    let net = Net::new();
    let mut watcher = watcher(&net, V311, "will/#");
    let client = net.accepted(with_will(V311, "will-dies", "will/dies", b"gone"));
    watcher.nothing();
    drop(client);
    let publish = watcher.publish_received();
    assert_eq!(publish.topic, "will/dies");
    assert_eq!(&publish.payload[..], b"gone");
    assert_eq!(publish.qos, QoS::AtLeastOnce, "published with the will QoS");
    assert!(!publish.retain);
}

#[test]
fn will_is_not_published_after_disconnect_mqtt_3_1_2_10() {
    let net = Net::new();
    let mut watcher = watcher(&net, V311, "nowill/#");
    let mut client = net.accepted(with_will(V311, "nowill", "nowill/t", b"never"));
    client.disconnect();
    client.closed_silently();
    drop(client);
    watcher.nothing();
}

#[test]
fn will_is_published_on_keep_alive_timeout() {
    let net = Net::new();
    let mut watcher = watcher(&net, V311, "ka/#");
    let mut connect = with_will(V311, "ka-will", "ka/will", b"timeout");
    connect.keep_alive = 1;
    let _client = net.accepted(connect);
    net.advance(1499);
    watcher.nothing();
    net.advance(1);
    assert_eq!(watcher.payloads(), ["timeout"]);
}

#[test]
fn will_is_published_after_a_protocol_violation() {
    let net = Net::new();
    let mut watcher = watcher(&net, V311, "pv/#");
    let mut client = net.accepted(with_will(V311, "pv-will", "pv/will", b"violated"));
    client.send_bytes(&[0x00, 0x00]); // reserved packet type 0
    client.closed_silently();
    assert_eq!(watcher.payloads(), ["violated"]);
}

#[test]
fn will_is_published_when_the_session_is_taken_over() {
    let net = Net::new();
    let mut watcher = watcher(&net, V311, "to/#");
    let mut old = net.accepted(with_will(V311, "to-will", "to/will", b"taken"));
    let _new = net.connected(V311, "to-will");
    old.closed_silently();
    assert_eq!(watcher.payloads(), ["taken"]);
}

#[test]
fn retained_will_is_kept_as_retained_message() {
    let net = Net::new();
    let mut connect = with_will(V311, "ret-will", "status/ret-will", b"offline");
    if let Some(will) = &mut connect.will {
        will.retain = true;
    }
    drop(net.accepted(connect));
    let mut late = net.connected(V311, "ret-will-late");
    late.subscribe("status/#", QoS::AtLeastOnce);
    let publish = late.publish_received();
    assert!(publish.retain);
    assert_eq!(&publish.payload[..], b"offline");
}

#[test]
fn will_waits_for_its_delay_mqtt_3_1_3_9() {
    let net = Net::new();
    let mut watcher = watcher(&net, V5, "wills/#");
    drop(net.accepted(delayed_will("delayed", 1, 60)));
    net.advance(999);
    watcher.nothing();
    net.advance(1);
    let publish = watcher.publish_received();
    assert_eq!(&publish.payload[..], b"gone");
    assert_eq!(
        publish.properties.content_type.as_deref(),
        Some("text/plain"),
        "will properties travel with it"
    );
}

#[test]
fn will_is_dropped_when_the_session_resumes_within_the_delay() {
    let net = Net::new();
    let mut watcher = watcher(&net, V5, "wills/#");
    drop(net.accepted(delayed_will("resumes", 2, 60)));
    net.advance(300);
    let (_client, connack) = net.connect(persistent(V5, "resumes"));
    assert!(connack.session_present);
    net.advance(10_000);
    watcher.nothing();
}

#[test]
fn will_goes_out_when_the_session_ends_before_the_delay_mqtt_3_1_3_9() {
    let net = Net::new();
    let mut watcher = watcher(&net, V5, "wills/#");
    drop(net.accepted(delayed_will("short-session", 30, 1)));
    net.advance(999);
    watcher.nothing();
    net.advance(1);
    assert_eq!(
        watcher.payloads(),
        ["gone"],
        "at the session's end, not after 30 s"
    );
    assert!(net.session("short-session").is_none());
}

#[test]
fn disconnect_with_will_message_0x04_publishes_it() {
    let net = Net::new();
    let mut watcher = watcher(&net, V5, "wills/#");
    let mut client = net.accepted(delayed_will("asks-for-will", 0, 0));
    client.send(Packet::Disconnect(Disconnect::new(
        ReasonCode::DisconnectWithWillMessage,
    )));
    client.closed_silently();
    assert_eq!(watcher.payloads(), ["gone"]);
    // A normal disconnection does not.
    let mut client = net.accepted(delayed_will("normal-bye", 0, 0));
    client.send(Packet::Disconnect(Disconnect::default()));
    client.closed_silently();
    drop(client);
    watcher.nothing();
}
