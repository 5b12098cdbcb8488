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
//! - [`Store::open_with`] takes [`StoreOptions`]: the durability, the low watermark
//!   (`min_free_disk`, a [`DiskReserve`]) and the bound on changes waiting for a commit
//!   (`max_pending_bytes`). [`Store::status`] reports the state for logs and metrics.
//!
//! ## When the disk is full
//!
//! - **Low watermark.** The commit thread measures the free space of the data directory's file
//!   system (before a commit once 100 ms have passed or 1 MiB was written since the last
//!   measurement, and every idle second). Below `min_free_disk` (default 256 MB, or a
//!   percentage such as `"5%"`) the store stops taking new durable work
//!   ([`Persistence::accepts_new_work`](tern_broker::persist::Persistence::accepts_new_work)
//!   is false: the core refuses new messages, retained messages and subscriptions) but keeps
//!   committing the bookkeeping that advances or removes what is stored (acknowledgements,
//!   deletes, sessions going offline, wills): the space left under the watermark is for it.
//!   It takes new work again once free space is back above the watermark by a margin (a
//!   tenth of the watermark, at least 1 MiB), so it does not flap. Each change is logged
//!   once (a warning when it starts refusing, an info when it accepts again). A file system
//!   that cannot be measured is never taken for a full one.
//! - **A commit that fails anyway** (the disk filled faster than measured, a watermark of 0,
//!   an I/O error) poisons the engine: fjall refuses every later write. The commit thread then
//!   drops the engine and reopens it from disk (which drops the failed batch's torn write from
//!   the journal), keeps its in-memory index, and retries the same batch, with backoff, for as
//!   long as it fails; on a full disk it retries as soon as space comes back. Nothing past the
//!   failed batch becomes durable meanwhile, so no acknowledgement lies; new work is refused,
//!   and [`Store::failure`] says why and what to do. When a commit succeeds again, the store
//!   takes new work again by itself. If the engine cannot be reopened because the directory
//!   is damaged, the error says so and what the operator must do, and the store keeps trying
//!   every 30 s; it never stops the broker.
//! - **Start-up on a full disk.** The store opens if it can read its data: the lock file's
//!   process id is written if possible, and the deletes of what expired while the broker was
//!   down are the commit thread's first batch, retried like any other. Below the watermark it
//!   starts out refusing new work.
//! - **A slow disk.** Changes submitted and not yet durable are counted (an estimate of their
//!   size, released when their commit is durable). Above `max_pending_bytes` (default
//!   64 MiB) the store reports
//!   [`Persistence::congested`](tern_broker::persist::Persistence::congested), and connections
//!   whose changes are not durable yet stop reading until they are. The bytes pending stay
//!   within `max_pending_bytes` plus what connections submit before they see the congestion
//!   (at most what each processes from one read); the batch being committed is counted
//!   until it is durable.
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
pub use directory::CLUSTER_DIR;
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
mod stats;
mod store;

pub use durability::{Durability, DurabilityLevel, ParseDurabilityError};
pub use error::StoreError;
pub use format::STORE_FORMAT_VERSION;
pub use options::{DiskReserve, ParseDiskReserveError, StoreOptions};
pub use recover::LoadReport;
pub use stats::{COMMIT_SECONDS_BUCKETS, CommitFigures};
pub use store::{CLOSE_TIMEOUT, Store, StoreStatus};
