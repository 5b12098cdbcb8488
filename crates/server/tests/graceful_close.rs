//! The broker's last word reaches a client that is still writing. When the broker ends a
//! connection with a reason (DISCONNECT, or a CONNACK refusal) while the client keeps sending,
//! closing the socket with unread bytes makes the kernel reset the connection, and the client
//! sees "connection reset" instead of the reason. These tests write through a real socket
//! without reading, then read, and expect the reason; and they check that a client that never
//! stops writing cannot keep its connection task alive past the drain's bounds.

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use tern_codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Write calls in a burst, of 16 bytes each: about 32 KiB in many small writes, below the
/// 64 KiB the broker reads and discards after its close.
const BURST: usize = 2000;
/// After its burst the client goes on writing, a write every `PACE`, for this long: the broker
/// has closed by then, so without a graceful close these writes meet the reset.
const LINGER: Duration = Duration::from_millis(300);
const PACE: Duration = Duration::from_millis(5);

/// Writes `chunks` without reading, as a client does that reads only once it has sent what it
/// had to send: `BURST` write calls at once, then one every `PACE` for `LINGER`. A write error
/// is what such a client sees instead of the broker's reason (most give up there: broken
/// pipe, connection reset), so it is returned. Bounded by `WAIT`, so a broker that neither
/// reads nor closes fails the test instead of hanging it.
async fn write_without_reading(
    stream: &mut TcpStream,
    mut chunks: impl Iterator<Item = Vec<u8>>,
) -> Result<(), ErrorKind> {
    let writing = async {
        for chunk in chunks.by_ref().take(BURST) {
            stream.write_all(&chunk).await.map_err(|e| e.kind())?;
        }
        let until = Instant::now() + LINGER;
        let mut pace = tokio::time::interval(PACE);
        while Instant::now() < until {
            pace.tick().await;
            let chunk = chunks.next().expect("chunks enough for the linger");
            stream.write_all(&chunk).await.map_err(|e| e.kind())?;
        }
        Ok(())
    };
    tokio::time::timeout(WAIT, writing)
        .await
        .expect("the broker reads or closes")
}

/// Asserts that the client could send everything: the broker had not reset the connection.
fn assert_written(written: Result<(), ErrorKind>) {
    if let Err(kind) = written {
        panic!(
            "a write failed ({kind:?}): the broker reset the connection before the client read its reason"
        );
    }
}

/// Reads until the stream ends: the packets received, and how it ended (`Ok` for an orderly
/// end of stream, the error kind for a reset).
async fn read_to_end(
    stream: &mut TcpStream,
    version: ProtocolVersion,
) -> (Vec<Packet>, Result<(), ErrorKind>) {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        while let Some(packet) =
            Packet::decode(&mut buf, version, u32::MAX).expect("broker sends valid packets")
        {
            packets.push(packet);
        }
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => panic!("the broker did not close in time; got {packets:?}"),
            Ok(Ok(0)) => return (packets, Ok(())),
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return (packets, Err(error.kind())),
        }
    }
}

/// The reason code of the DISCONNECT among `packets`, if one came.
fn disconnect_reason(packets: &[Packet]) -> Option<ReasonCode> {
    packets.iter().find_map(|packet| match packet {
        Packet::Disconnect(disconnect) => Some(disconnect.reason_code),
        _ => None,
    })
}

fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    packet.encode(version, &mut out).expect("encode");
    out.to_vec()
}

/// An MQTT 5 connection to `broker`, CONNACK read.
async fn connected_v5(broker: &TestBroker, client_id: &str) -> TcpStream {
    let connect = connect_packet(ProtocolVersion::V5, client_id, true, 30);
    let (raw, connack) = Raw::connected(broker.addr, ProtocolVersion::V5, connect).await;
    assert_eq!(connack.reason_code, ReasonCode::Success);
    raw.stream
}

/// [MQTT-3.3.4-9], section 4.9: a client that sends QoS 2 PUBLISHes past the broker's Receive
/// Maximum without reading gets DISCONNECT 0x93, not a reset.
#[tokio::test]
async fn receive_maximum_exceeded_reaches_a_client_that_keeps_writing_mqtt_3_3_4_9() {
    let mut config = config();
    config.limits.receive_maximum = 2;
    let broker = start_with(config).await;
    let mut stream = connected_v5(&broker, "burst-qos2").await;
    let publishes = (1..=u16::MAX).map(|packet_id| {
        let publish = publish_packet("t", QoS::ExactlyOnce, packet_id, b"payload!");
        encode(&Packet::Publish(publish), ProtocolVersion::V5)
    });
    assert_written(write_without_reading(&mut stream, publishes).await);
    let (packets, end) = read_to_end(&mut stream, ProtocolVersion::V5).await;
    assert_eq!(
        disconnect_reason(&packets),
        Some(ReasonCode::ReceiveMaximumExceeded),
        "packets {packets:?}, end {end:?}"
    );
}

/// [MQTT-3.2.2-15], section 4.13: a packet over the broker's Maximum Packet Size, with more
/// bytes behind it, is answered with DISCONNECT 0x95 that the client gets to read.
#[tokio::test]
async fn packet_too_large_reaches_a_client_that_keeps_writing_mqtt_3_2_2_15() {
    let mut config = config();
    config.limits.max_packet_size = 1024;
    let broker = start_with(config).await;
    let mut stream = connected_v5(&broker, "too-large").await;
    // A PUBLISH announcing 2000 bytes (over the 1024 allowed), then its body and more.
    let header = vec![0x30, 0xD0, 0x0F];
    let rest = std::iter::repeat(vec![0u8; 16]);
    assert_written(write_without_reading(&mut stream, std::iter::once(header).chain(rest)).await);
    let (packets, end) = read_to_end(&mut stream, ProtocolVersion::V5).await;
    assert_eq!(
        disconnect_reason(&packets),
        Some(ReasonCode::PacketTooLarge),
        "packets {packets:?}, end {end:?}"
    );
}

/// A refused CONNECT followed by more bytes: the client still reads its CONNACK. (3.1.1, an
/// empty client identifier without clean session: return code 2 [MQTT-3.1.3-8].)
#[tokio::test]
async fn connack_refusal_reaches_a_client_that_keeps_writing_mqtt_3_1_3_8() {
    let broker = start().await;
    let mut raw = Raw::open(broker.addr, ProtocolVersion::V311).await;
    let connect = connect_packet(ProtocolVersion::V311, "", false, 30);
    let connect = encode(&Packet::Connect(Box::new(connect)), ProtocolVersion::V311);
    // PINGREQs behind the CONNECT, eight to a write.
    let pings = std::iter::repeat([0xC0u8, 0x00].repeat(8));
    assert_written(
        write_without_reading(&mut raw.stream, std::iter::once(connect).chain(pings)).await,
    );
    let (packets, end) = read_to_end(&mut raw.stream, ProtocolVersion::V311).await;
    match packets.first() {
        Some(Packet::ConnAck(connack)) => {
            assert_eq!(connack.reason_code, ReasonCode::ClientIdentifierNotValid);
        }
        other => panic!("expected the CONNACK refusal, got {other:?} (end {end:?})"),
    }
}

/// Ends an MQTT 5 connection with DISCONNECT 0x95 and reads it; returns the stream and when the
/// DISCONNECT was read.
async fn disconnected_v5(broker: &TestBroker, client_id: &str) -> (TcpStream, Instant) {
    let mut stream = connected_v5(broker, client_id).await;
    stream
        .write_all(&[0x30, 0xD0, 0x0F])
        .await
        .expect("write the oversized header");
    let mut buf = BytesMut::new();
    loop {
        if let Some(packet) =
            Packet::decode(&mut buf, ProtocolVersion::V5, u32::MAX).expect("valid")
        {
            assert!(matches!(packet, Packet::Disconnect(_)), "got {packet:?}");
            return (stream, Instant::now());
        }
        let read = tokio::time::timeout(WAIT, stream.read_buf(&mut buf))
            .await
            .expect("DISCONNECT in time")
            .expect("read");
        assert!(read > 0, "closed before the DISCONNECT");
    }
}

/// Writes `chunk` every `pace` until a write fails (the broker's socket is gone: its kernel
/// answers with a reset); returns when the first write failed.
async fn write_until_refused(stream: &mut TcpStream, chunk: &[u8], pace: Duration) -> Instant {
    let writing = async {
        loop {
            if stream.write_all(chunk).await.is_err() {
                return Instant::now();
            }
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
        }
    };
    tokio::time::timeout(WAIT, writing)
        .await
        .expect("the broker closes the connection in time")
}

/// A slow writer cannot hold the closing connection past the drain's time bound (2 s from the
/// close; the margin is for a loaded machine).
#[tokio::test]
async fn a_slow_writer_is_cut_off_after_the_drain_time() {
    let mut config = config();
    config.limits.max_packet_size = 1024;
    let broker = start_with(config).await;
    let (mut stream, disconnected) = disconnected_v5(&broker, "slow-writer").await;
    // 16 bytes every 20 ms: 1.6 KiB in 2 s, far from the byte bound.
    let refused = write_until_refused(&mut stream, &[0u8; 16], Duration::from_millis(20)).await;
    let held = refused - disconnected;
    assert!(held < Duration::from_millis(3500), "held for {held:?}");
}

/// A fast writer is cut off by the drain's byte bound (64 KiB), long before its time bound.
#[tokio::test]
async fn a_fast_writer_is_cut_off_after_the_drain_bytes() {
    let mut config = config();
    config.limits.max_packet_size = 1024;
    let broker = start_with(config).await;
    let (mut stream, disconnected) = disconnected_v5(&broker, "fast-writer").await;
    let refused = write_until_refused(&mut stream, &[0u8; 1024], Duration::ZERO).await;
    let held = refused - disconnected;
    assert!(held < Duration::from_millis(1500), "held for {held:?}");
}
