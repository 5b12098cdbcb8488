//! Decode and encode of the packets a broker handles most: a 3.1.1 CONNECT, QoS 1 PUBLISH with
//! 64 B and 1 KiB payloads in 3.1.1 and 5.0, and the PUBACK that answers them.
//!
//! Decode measures the read path: a `BytesMut` holding exactly the packet's bytes, as a fresh read
//! buffer would, goes to `Packet::decode`. Filling that buffer is setup (`iter_batched_ref`), and
//! the decoded packet and the emptied buffer are dropped outside the measurement. A fresh buffer
//! is the costly case: the first packet split off a `BytesMut` allocates its shared header.
//!
//! Encode measures `Packet::encode` into a write buffer that is reused, as a connection's would be:
//! clearing it is part of the loop and costs a store.
//!
//! `decode_stream` decodes a buffer of several packets, one after another, as a read loop does:
//! its figures are per packet (criterion's time per iteration divided by the elements).
//!
//! Run with `cargo bench -j2 -p tern-codec`.

// The benchmark packets are constants: failing to encode them is a bug to stop at.
#![allow(clippy::expect_used)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tern_codec::{
    Ack, Connect, DecodeError, MqttStr, Packet, Properties, ProtocolVersion, Publish, QoS,
};

const MAX_PACKET_SIZE: u32 = 1 << 20;

fn connect() -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: MqttStr::from_static("sensor-0042"),
        will: None,
        username: Some(MqttStr::from_static("device")),
        password: Some(Bytes::from_static(b"correct horse battery staple")),
    }))
}

fn publish(payload_len: usize) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: MqttStr::from_static("sensors/0042/temperature"),
        packet_id: 4242,
        properties: Properties::default(),
        payload: Bytes::from(vec![0xA5; payload_len]),
    })
}

fn cases() -> Vec<(&'static str, ProtocolVersion, Packet)> {
    use ProtocolVersion::{V5, V311};
    vec![
        ("connect_v311", V311, connect()),
        ("publish_qos1_64B_v311", V311, publish(64)),
        ("publish_qos1_1KiB_v311", V311, publish(1024)),
        ("publish_qos1_64B_v5", V5, publish(64)),
        ("publish_qos1_1KiB_v5", V5, publish(1024)),
        ("puback_v5", V5, Packet::PubAck(Ack::new(4242))),
    ]
}

fn encoded(packet: &Packet, version: ProtocolVersion) -> Bytes {
    let mut buf = BytesMut::new();
    packet
        .encode(version, &mut buf)
        .expect("benchmark packets encode");
    buf.freeze()
}

/// Where a decoded packet is put: part of the input, so that writing it is measured but dropping
/// it (and the emptied buffer) is not.
type Decoded = Option<Result<Option<Packet>, DecodeError>>;

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (name, version, packet) in cases() {
        let bytes = encoded(&packet, version);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || (BytesMut::from(&bytes[..]), Decoded::None),
                |(buf, slot)| {
                    *slot = Some(Packet::decode(buf, black_box(version), MAX_PACKET_SIZE));
                },
                // Batches of 256 inputs stay in cache, as a connection's read buffer is when it is
                // decoded. `SmallInput` would make batches of a tenth of a sample, up to some
                // 10^5 inputs (tens of MB) for a 50 ns routine: cache misses, not decoding.
                BatchSize::NumIterations(256),
            );
        });
    }
    group.finish();
}

/// Packets in a stream buffer: about what one 4 KiB read brings of 64-byte PUBLISHes.
const STREAM_PACKETS: usize = 48;

/// Decodes a buffer holding `STREAM_PACKETS` packets one after another, as a connection's read
/// loop does after a read: only the first split of a fresh buffer allocates, so this is the
/// per-packet cost a busy connection pays. Reported per packet.
fn decode_stream(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_stream");
    for (name, version, packet) in cases() {
        let one = encoded(&packet, version);
        let mut stream = BytesMut::new();
        for _ in 0..STREAM_PACKETS {
            stream.extend_from_slice(&one);
        }
        group.throughput(Throughput::Elements(STREAM_PACKETS as u64));
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || {
                    (
                        BytesMut::from(&stream[..]),
                        Vec::<Packet>::with_capacity(STREAM_PACKETS),
                    )
                },
                |(buf, packets)| {
                    while let Ok(Some(packet)) =
                        Packet::decode(buf, black_box(version), MAX_PACKET_SIZE)
                    {
                        packets.push(packet);
                    }
                },
                BatchSize::NumIterations(16),
            );
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (name, version, packet) in cases() {
        let len = packet
            .encoded_len(version)
            .expect("benchmark packets encode");
        group.throughput(Throughput::Bytes(len as u64));
        let mut buf = BytesMut::with_capacity(len);
        group.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                black_box(&packet)
                    .encode(black_box(version), &mut buf)
                    .expect("benchmark packets encode");
                black_box(buf.len());
            });
        });
    }
    group.finish();
}

criterion_group!(benches, decode, decode_stream, encode);
criterion_main!(benches);
