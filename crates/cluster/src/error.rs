//! The errors of opening the cluster's storage. Errors while Raft runs are openraft's
//! `StorageError`s (see `log_store.rs` and `state_store.rs`).

use std::path::PathBuf;

/// Why the cluster's storage could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot create the cluster directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster database {}: cannot {action}: {source}", path.display())]
    Engine {
        path: PathBuf,
        action: String,
        source: fjall::Error,
    },
    #[error(
        "cluster database {}: holds a keyspace {name:?} Tern does not write (another program's database?)",
        path.display()
    )]
    Foreign { path: PathBuf, name: String },
    #[error(
        "cluster database {}: format version {found}, this build reads version {expected}",
        path.display()
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: String,
        expected: u32,
    },
    #[error("cluster database {}: corrupt {what}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
}
