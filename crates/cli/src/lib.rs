//! The library side of the `tern` binary: the tools beside the broker that integration tests
//! call directly. `tern serve` itself lives in main.rs.

// Data from the network must never panic the bench: no unwrap or expect outside tests.
#![warn(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

pub mod bench;
pub mod ctl;
pub mod passwd;
pub mod pubsub;
