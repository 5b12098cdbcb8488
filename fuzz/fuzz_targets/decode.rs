//! Fuzzes `Packet::decode` as a broker's read loop drives it.
//!
//! The first input byte is the control byte: bits 0-1 choose the connection's protocol version
//! (0 = 3.1, 1 = 3.1.1, 2 and 3 = 5.0), bits 2-7 how many bytes arrive per read (0 = all at once).
//! The rest is the stream. After each read every whole packet is decoded, until the decoder
//! waits for more or fails (the stream is then lost, as on a real connection).
//!
//! Every decoded packet must encode (with `encoded_len` telling the length written) and decode
//! again to itself: anything the decoder accepts, the encoder can express.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tern_codec::{Packet, ProtocolVersion};

/// Large enough for any input libFuzzer makes here, small enough to exercise the limit with the
/// remaining lengths it invents.
const MAX_PACKET_SIZE: u32 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let version = match control & 0b11 {
        0 => ProtocolVersion::V31,
        1 => ProtocolVersion::V311,
        _ => ProtocolVersion::V5,
    };
    let chunk = match usize::from(control >> 2) {
        0 => stream.len().max(1),
        n => n,
    };
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match Packet::decode(&mut buf, version, MAX_PACKET_SIZE) {
                Ok(Some(packet)) => {
                    assert!(buf.len() < before, "a packet consumes bytes");
                    check_roundtrip(&packet, version);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "waiting leaves the buffer alone");
                    break;
                }
                Err(error) => {
                    let _ = error.reason_code();
                    return;
                }
            }
        }
    }
});

fn check_roundtrip(packet: &Packet, version: ProtocolVersion) {
    let mut encoded = BytesMut::new();
    if let Err(error) = packet.encode(version, &mut encoded) {
        panic!("decoded packet does not encode: {error}\n{packet:?}");
    }
    assert_eq!(packet.encoded_len(version), Ok(encoded.len()));
    let bytes = encoded.clone();
    match Packet::decode(&mut encoded, version, u32::MAX) {
        Ok(Some(again)) => assert_eq!(&again, packet, "re-encoded as {bytes:02X?}"),
        other => panic!("re-encoded packet {bytes:02X?} decodes as {other:?}\n{packet:?}"),
    }
    assert!(encoded.is_empty(), "re-encoded packet decodes whole");
}
