//! Arbitrary bytes, random or mutated from valid encodings, fed in arbitrary splits: the decoder
//! never panics, never allocates while it waits for more bytes, and never allocates more than a
//! fixed multiple of the packet it looks at, which the maximum packet size bounds.
//!
//! # The allocation bound
//!
//! A counting global allocator adds up, per thread, the bytes asked of `alloc`, `alloc_zeroed`
//! and `realloc` (the whole new size, as if every reallocation moved). Decoding a packet of `L`
//! bytes (`L <= max_packet_size`) then allocates at most `FACTOR * L + SLACK`:
//!
//! - The packet's strings, binary data and payload are slices of the read buffer: no copies.
//! - What grows with `L` are the `Vec`s of a packet. The costliest element per wire byte is a
//!   user property, `(MqttStr, MqttStr)`: 64 bytes of memory for as little as 5 bytes on the wire
//!   (identifier, two empty strings), 12.8 bytes a wire byte. Subscriptions take 40 bytes per 4
//!   (10 a byte), UNSUBSCRIBE filters 32 per 3 (10.7), subscription identifiers 4 per 2 (2), and
//!   SUBACK and UNSUBACK reason codes are sized from the remaining length (1 per byte).
//! - A `Vec` grows by doubling from 4 elements, so the reallocations of one that ends with `n`
//!   elements ask for 4 + 8 + ... + C < 2C element slots, where C < 2n: under 4n slots in all.
//! - So `4 * 12.8 = 51.2` bytes per wire byte at worst: `FACTOR = 52`. Lists in one packet (a
//!   CONNECT has two property lists) share the packet's bytes, so the bound holds for their sum.
//! - `SLACK` covers what does not grow with `L`: the `Box` of a CONNECT, and the shared header
//!   `BytesMut` allocates the first time a buffer is split.
//!
//! `worst_cases_stay_within_the_bound` builds the worst packets and prints the factor each reaches.

// Test code: a failed unwrap is a failed test (clippy.toml allows it in #[test] functions;
// this extends that to the helpers and proptest bodies here).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use tern_codec::{Packet, ProtocolVersion};

use common::{encode, version, versioned_packet};

// --- the counting allocator ---

struct Counting;

thread_local! {
    // Const-initialised and without destructor: touching it never allocates.
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    let _ = ALLOCATED.try_with(|total| total.set(total.get().saturating_add(bytes)));
}

// SAFETY: every call is forwarded to `System` with the caller's arguments, unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Runs `f` and returns its result with the bytes this thread allocated meanwhile.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.with(Cell::get);
    let value = f();
    (value, ALLOCATED.with(Cell::get) - before)
}

const FACTOR: usize = 52;
const SLACK: usize = 4096;

fn bound(len: usize) -> usize {
    FACTOR * len + SLACK
}

/// Feeds `bytes` in `chunks` and decodes all it can after each; stops at the first error.
///
/// Checks on every call: `Ok(None)` allocates nothing; any other outcome allocates within the
/// bound of the bytes it could look at (the buffer, and never more than `max`). Every packet
/// decoded re-encodes, and decodes again to itself.
fn feed(
    bytes: &[u8],
    chunks: &[usize],
    version: ProtocolVersion,
    max: u32,
) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::with_capacity(bytes.len());
    let mut fed = 0;
    let mut chunks = chunks.iter().cycle();
    while fed < bytes.len() {
        let take = (*chunks.next().unwrap()).min(bytes.len() - fed);
        buf.extend_from_slice(&bytes[fed..fed + take]);
        fed += take;
        loop {
            let seen = buf.len().min(max as usize);
            let (result, allocated) = allocated_by(|| Packet::decode(&mut buf, version, max));
            match result {
                Ok(None) => {
                    prop_assert_eq!(allocated, 0, "waiting for more bytes allocates nothing");
                    break;
                }
                Ok(Some(packet)) => {
                    prop_assert!(
                        allocated <= bound(seen),
                        "{} bytes allocated for {} bytes: {:?}",
                        allocated,
                        seen,
                        packet
                    );
                    let mut again = encode(&packet, version);
                    prop_assert_eq!(packet.encoded_len(version).unwrap(), again.len());
                    let decoded = Packet::decode(&mut again, version, u32::MAX);
                    prop_assert_eq!(decoded, Ok(Some(packet)));
                    prop_assert!(again.is_empty());
                }
                Err(error) => {
                    prop_assert!(allocated <= bound(seen), "{} for {:?}", allocated, error);
                    // The reason code is defined for every error.
                    let _ = error.reason_code();
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), 0..8u8).prop_map(|(i, bit)| Mutation::Flip(i, bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for mutation in mutations {
        if bytes.is_empty() {
            return;
        }
        let at = |i: usize| i % bytes.len();
        match *mutation {
            Mutation::Set(i, b) => {
                let i = at(i);
                bytes[i] = b;
            }
            Mutation::Flip(i, bit) => {
                let i = at(i);
                bytes[i] ^= 1 << bit;
            }
            Mutation::Insert(i, b) => {
                let i = at(i);
                bytes.insert(i, b);
            }
            Mutation::Remove(i) => {
                let i = at(i);
                bytes.remove(i);
            }
            Mutation::Truncate(i) => {
                let i = at(i);
                bytes.truncate(i);
            }
        }
    }
}

fn max_packet_size() -> impl Strategy<Value = u32> {
    prop_oneof![2..64u32, 64..4096u32, Just(u32::MAX)]
}

fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            default.cases
        } else {
            2048
        },
        // Integration tests have no lib.rs to put a regressions file beside: a failure prints
        // its minimal input instead.
        failure_persistence: None,
        ..default
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_panic_nor_overallocate(
        bytes in vec(any::<u8>(), 0..512),
        version in version(),
        max in max_packet_size(),
        chunks in vec(1..64usize, 1..16),
    ) {
        feed(&bytes, &chunks, version, max)?;
    }

    /// Random bytes behind a plausible first byte, so that bodies get parsed.
    #[test]
    fn random_bodies_never_panic_nor_overallocate(
        first in any::<u8>(),
        body in vec(any::<u8>(), 0..300),
        version in version(),
        max in max_packet_size(),
        chunks in vec(1..64usize, 1..16),
    ) {
        let mut bytes = vec![first];
        let mut len = body.len();
        loop {
            let byte = (len & 0x7F) as u8;
            len >>= 7;
            bytes.push(if len > 0 { byte | 0x80 } else { byte });
            if len == 0 {
                break;
            }
        }
        bytes.extend_from_slice(&body);
        feed(&bytes, &chunks, version, max)?;
    }

    #[test]
    fn mutated_encodings_never_panic_nor_overallocate(
        (version, packets) in version().prop_flat_map(|v| (Just(v), vec(common::packet(v), 1..4))),
        mutations in vec(mutation(), 1..6),
        max in max_packet_size(),
        chunks in vec(1..64usize, 1..16),
    ) {
        let mut bytes = Vec::new();
        for packet in &packets {
            bytes.extend_from_slice(&encode(packet, version));
        }
        mutate(&mut bytes, &mutations);
        feed(&bytes, &chunks, version, max)?;
    }

    /// Unmutated, in any split and under any maximum, the allocation bound holds too.
    #[test]
    fn valid_encodings_stay_within_the_bound(
        (version, packet) in versioned_packet(),
        max in max_packet_size(),
        chunks in vec(1..64usize, 1..16),
    ) {
        feed(&encode(&packet, version), &chunks, version, max)?;
    }
}

#[test]
fn huge_remaining_length_allocates_nothing() {
    // Every prefix of a fixed header announcing 268 435 455 bytes, under a small and an unlimited
    // maximum: refused or waited for, never a byte allocated.
    let header = [0x30, 0xFF, 0xFF, 0xFF, 0x7F];
    for version in common::VERSIONS {
        for max in [1024, u32::MAX] {
            for end in 1..=header.len() {
                let mut buf = BytesMut::from(&header[..end]);
                let (result, allocated) = allocated_by(|| Packet::decode(&mut buf, version, max));
                assert_eq!(allocated, 0, "{end} header bytes, max {max}: {result:?}");
                if end == header.len() && max == 1024 {
                    assert!(result.is_err());
                } else {
                    assert_eq!(result, Ok(None));
                }
            }
        }
    }
}

// --- worst cases, built by hand ---

fn varint(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        out.push(if value > 0 { byte | 0x80 } else { byte });
        if value == 0 {
            return out;
        }
    }
}

fn pkt(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// `count` copies of `item`.
fn many(item: &[u8], count: usize) -> Vec<u8> {
    item.repeat(count)
}

/// A property list of `count` copies of `item`.
fn property_list(item: &[u8], count: usize) -> Vec<u8> {
    let list = many(item, count);
    [varint(list.len()), list].concat()
}

#[test]
fn worst_cases_stay_within_the_bound() {
    // 8193 = 2^13 + 1 elements: the Vec has just doubled to 16 384 slots, the costliest point.
    const N: usize = 8193;
    let empty_user_property = [0x26, 0, 0, 0, 0];
    let cases: Vec<(&str, ProtocolVersion, Vec<u8>)> = vec![
        (
            "PUBLISH of empty user properties",
            ProtocolVersion::V5,
            pkt(
                0x30,
                &[&[0, 1, b't'][..], &property_list(&empty_user_property, N)].concat(),
            ),
        ),
        (
            "CONNECT with user properties in both lists",
            ProtocolVersion::V5,
            pkt(
                0x10,
                &[
                    &[0, 4, b'M', b'Q', b'T', b'T', 5, 0x06, 0, 0][..],
                    &property_list(&empty_user_property, N / 2 + 1),
                    &[0, 0],
                    &property_list(&empty_user_property, N / 2 + 1),
                    &[0, 1, b'w', 0, 0],
                ]
                .concat(),
            ),
        ),
        (
            "PUBLISH of subscription identifiers",
            ProtocolVersion::V5,
            pkt(
                0x30,
                &[&[0, 1, b't'][..], &property_list(&[0x0B, 1], N)].concat(),
            ),
        ),
        (
            "SUBSCRIBE of one-byte filters",
            ProtocolVersion::V311,
            pkt(0x82, &[&[0, 1][..], &many(&[0, 1, b'a', 0], N)].concat()),
        ),
        (
            "UNSUBSCRIBE of one-byte filters",
            ProtocolVersion::V5,
            pkt(0xA2, &[&[0, 1, 0][..], &many(&[0, 1, b'a'], N)].concat()),
        ),
        (
            "SUBACK of reason codes",
            ProtocolVersion::V5,
            pkt(0x90, &[&[0, 1, 0][..], &many(&[0x80], N)].concat()),
        ),
    ];
    for (what, version, bytes) in cases {
        let len = bytes.len();
        let mut buf = BytesMut::from(&bytes[..]);
        let (result, allocated) = allocated_by(|| Packet::decode(&mut buf, version, len as u32));
        assert!(
            matches!(result, Ok(Some(_))),
            "{what}: {:?}",
            result.map(|_| ())
        );
        println!(
            "{what}: {len} bytes, {allocated} allocated, {:.1} per byte",
            allocated as f64 / len as f64
        );
        assert!(
            allocated <= bound(len),
            "{what}: {allocated} > {}",
            bound(len)
        );
    }
}
