//! # tern-store
//!
//! The broker's durable state in an embedded, crash-safe store (fjall, an LSM-tree engine with
//! a write-ahead journal): persistent sessions with their subscriptions, queued and in-flight
//! deliveries, inbound QoS 2 packet identifiers and wills; message bodies (stored once, however
//! many deliveries refer to them); and retained messages.
//!
//! - [`Store::open`] locks a data directory, checks its format version, reads everything back
//!   into a [`Recovered`](tern_broker::persist::Recovered) and starts the commit thread.
//! - [`Store`] implements the core's [`Persistence`](tern_broker::persist::Persistence):
//!   `submit` queues a change and returns its sequence number; one thread takes everything
//!   pending, writes it as one atomic batch and persists it at the configured [`Durability`]
//!   (group commit), then publishes the durable sequence number and wakes who waits for it.
//! - [`Store::close`] commits what is pending and releases the directory.
//!
//! ## On disk
//!
//! `<dir>/tern.lock` (held while open; names the holder's process id) and `<dir>/engine/`, a
//! fjall database with these keyspaces (keys: `client` is the client identifier, `NUL` a zero
//! byte, which an MQTT string never contains; numbers are big-endian):
//!
//! | keyspace | key | value |
//! | --- | --- | --- |
//! | `meta` | `format_version` | u32, [`STORE_FORMAT_VERSION`] |
//! | `sessions` | client | expiry, online flag, offline since (wall-clock ms) |
//! | `subscriptions` | client NUL filter | options byte, identifier |
//! | `queue` | client NUL position (u64) | message id, QoS, retain, subscription ids, shared filter |
//! | `inflight` | client NUL packet id (u16) | send order (u64), state, delivery as in `queue` |
//! | `inbound_qos2` | client NUL packet id (u16) | (format byte only) |
//! | `messages` | message id (u64) | the message |
//! | `retained` | topic | the message |
//! | `wills` | client | delay, the message |
//!
//! Every value starts with a format byte (1); a message holds its flags (QoS, retain), id,
//! expiry as wall-clock milliseconds, topic, publisher, the properties that travel with it, and
//! the payload. A message body is stored once under its id and deleted with the last queued
//! or in-flight entry that refers to it.

// Data read from disk must never panic the broker: no unwrap or expect outside tests.
#![warn(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

mod clock;
mod commit;
mod directory;
mod durability;
mod encoding;
mod engine;
mod error;
mod format;
mod keys;
mod maintenance;
mod options;
mod recover;
mod space;
mod store;

pub use durability::{Durability, DurabilityLevel, ParseDurabilityError};
pub use error::StoreError;
pub use format::STORE_FORMAT_VERSION;
pub use options::{DiskReserve, ParseDiskReserveError, StoreOptions};
pub use recover::LoadReport;
pub use store::{CLOSE_TIMEOUT, Store, StoreStatus};
