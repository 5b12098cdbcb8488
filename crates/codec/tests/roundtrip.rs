//! Property tests over arbitrary valid packets of every version (strategies in `common`):
//! `decode(encode(p)) == p`, `encoded_len` is the number of bytes written, any split of the bytes
//! yields `Ok(None)` until the packet is whole, and packets back to back decode in order.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in #[test] functions;
// this extends that to the helpers and proptest bodies here).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use tern_codec::{Packet, ProtocolVersion};

use common::{encode, packet, version, versioned_packet};

const NO_LIMIT: u32 = u32::MAX;

/// 1024 cases a property; `PROPTEST_CASES` overrides.
fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            default.cases
        } else {
            1024
        },
        // Integration tests have no lib.rs to put a regressions file beside: a failure prints
        // its minimal input instead.
        failure_persistence: None,
        ..default
    }
}

fn roundtrip(version: ProtocolVersion, packet: &Packet) -> Result<(), TestCaseError> {
    let mut buf = encode(packet, version);
    prop_assert_eq!(packet.encoded_len(version).unwrap(), buf.len());
    // Encoding appends: what was in the buffer stays.
    let mut appended = BytesMut::from(&b"xyz"[..]);
    packet.encode(version, &mut appended).unwrap();
    prop_assert_eq!(&appended[..3], b"xyz");
    prop_assert_eq!(&appended[3..], &buf[..]);

    let decoded = Packet::decode(&mut buf, version, NO_LIMIT);
    prop_assert_eq!(decoded, Ok(Some(packet.clone())));
    prop_assert!(buf.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decode_of_encode_is_identity_v31(p in packet(ProtocolVersion::V31)) {
        roundtrip(ProtocolVersion::V31, &p)?;
    }

    #[test]
    fn decode_of_encode_is_identity_v311(p in packet(ProtocolVersion::V311)) {
        roundtrip(ProtocolVersion::V311, &p)?;
    }

    #[test]
    fn decode_of_encode_is_identity_v5(p in packet(ProtocolVersion::V5)) {
        roundtrip(ProtocolVersion::V5, &p)?;
    }

    /// The maximum packet size is exactly the encoded length: one byte less is refused, and the
    /// refusal comes from the fixed header [section 3.1.2.11.4].
    #[test]
    fn maximum_packet_size_is_inclusive((version, p) in versioned_packet()) {
        let bytes = encode(&p, version);
        let len = bytes.len() as u32;
        let mut buf = bytes.clone();
        prop_assert_eq!(Packet::decode(&mut buf, version, len), Ok(Some(p)));
        let mut buf = bytes;
        let refused = Packet::decode(&mut buf, version, len - 1);
        prop_assert_eq!(
            refused,
            Err(tern_codec::DecodeError::PacketTooLarge { size: len, max: len - 1 })
        );
    }

    /// Fed in chunks of any size, the decoder answers `Ok(None)` (and leaves the buffer alone)
    /// until the last byte arrives, then returns the packet.
    #[test]
    fn any_split_waits_for_the_whole_packet(
        (version, p) in versioned_packet(),
        chunks in vec(1..24usize, 1..64),
    ) {
        let bytes = encode(&p, version);
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut chunks = chunks.iter().cycle();
        while fed < bytes.len() {
            let take = (*chunks.next().unwrap()).min(bytes.len() - fed);
            buf.extend_from_slice(&bytes[fed..fed + take]);
            fed += take;
            let before = buf.clone();
            let result = Packet::decode(&mut buf, version, NO_LIMIT);
            if fed < bytes.len() {
                prop_assert_eq!(result, Ok(None), "after {} of {} bytes", fed, bytes.len());
                prop_assert_eq!(&buf, &before);
            } else {
                prop_assert_eq!(result, Ok(Some(p.clone())));
                prop_assert!(buf.is_empty());
            }
        }
    }

    /// Several packets in one stream, split anywhere, come out in order and nothing is left.
    #[test]
    fn packets_back_to_back_decode_in_order(
        (version, packets) in version().prop_flat_map(|v| (Just(v), vec(packet(v), 1..8))),
        chunks in vec(1..64usize, 1..32),
    ) {
        let mut stream = BytesMut::new();
        for p in &packets {
            p.encode(version, &mut stream).unwrap();
        }
        let stream = stream.freeze();

        // All at once.
        let mut buf = BytesMut::from(&stream[..]);
        let mut decoded = Vec::new();
        while let Some(p) = Packet::decode(&mut buf, version, NO_LIMIT).unwrap() {
            decoded.push(p);
        }
        prop_assert_eq!(&decoded, &packets);
        prop_assert!(buf.is_empty());

        // In chunks, decoding all that is whole after each.
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut fed = 0;
        let mut chunks = chunks.iter().cycle();
        while fed < stream.len() {
            let take = (*chunks.next().unwrap()).min(stream.len() - fed);
            buf.extend_from_slice(&stream[fed..fed + take]);
            fed += take;
            while let Some(p) = Packet::decode(&mut buf, version, NO_LIMIT).unwrap() {
                decoded.push(p);
            }
        }
        prop_assert_eq!(&decoded, &packets);
        prop_assert!(buf.is_empty());
    }
}

proptest! {
    #![proptest_config(config())]

    /// `PlainPublish` writes the same bytes as the `Publish` it stands for (no properties), and
    /// says how many.
    #[test]
    fn plain_publish_encodes_as_publish(
        v in version(),
        p in common::publish(ProtocolVersion::V311),
    ) {
        let Packet::Publish(publish) = p else { unreachable!() };
        let plain = tern_codec::PlainPublish {
            dup: publish.dup,
            qos: publish.qos,
            retain: publish.retain,
            topic: publish.topic.as_str(),
            packet_id: publish.packet_id,
            payload: &publish.payload,
        };
        let expected = encode(&Packet::Publish(publish.clone()), v);
        let mut buf = BytesMut::from(&b"xyz"[..]);
        plain.encode(v, &mut buf).unwrap();
        prop_assert_eq!(&buf[..3], b"xyz");
        prop_assert_eq!(&buf[3..], &expected[..]);
        prop_assert_eq!(plain.encoded_len(v).unwrap(), expected.len());
    }
}
