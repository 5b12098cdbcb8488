//! The cluster's own fjall database (`<data-dir>/cluster`): opening it, its keyspaces and
//! format version, and the helpers the log store and the state store share.
//!
//! Keyspaces:
//! - `log`: the Raft log; key = the entry's index as a big-endian u64 (so key order is index
//!   order), value = the entry as JSON.
//! - `meta`: the format version, the vote, the last committed and the last purged log id
//!   (JSON).
//! - `snapshot`: the current snapshot only: its metadata and its data (JSON).

// openraft's `StorageError` (224 bytes) is what its storage traits return; boxing it at every
// internal step would only move the allocation.
#![allow(clippy::result_large_err)]

use std::path::Path;

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use openraft::{AnyError, StorageError, StorageIOError};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::ClusterError;
use crate::log_store::LogStore;
use crate::state_store::{Applied, StateStore};
use crate::types::NodeId;

/// The layout of keys and values this build writes and reads. Raise it with any change an
/// older build would misread.
pub const CLUSTER_FORMAT_VERSION: u32 = 1;

pub(crate) const LOG_SPACE: &str = "log";
pub(crate) const META_SPACE: &str = "meta";
pub(crate) const SNAPSHOT_SPACE: &str = "snapshot";
const SPACES: [&str; 3] = [LOG_SPACE, META_SPACE, SNAPSHOT_SPACE];

pub(crate) const FORMAT_KEY: &[u8] = b"format";

/// The engine keeps at most this much journal before it flushes memtables and drops old
/// journals (fjall's minimum). The metadata is small; the log is purged after each snapshot.
const MAX_JOURNALING_SIZE: u64 = 64 * 1024 * 1024;

/// A keyspace's memtable is flushed to a table once it holds this much.
const MAX_MEMTABLE_SIZE: u64 = 8 * 1024 * 1024;

/// Opens (or creates) the cluster's database in `dir` and returns the Raft log store and the
/// state machine, loaded from the last snapshot if there is one (openraft replays the log
/// after it). `events` receives what the state machine applies (see [`Applied`]).
///
/// Blocking (it opens files and recovers the engine's journal): call it before the runtime
/// serves, or from `spawn_blocking`.
pub fn open_storage(
    dir: &Path,
    events: UnboundedSender<Applied>,
) -> Result<(LogStore, StateStore), ClusterError> {
    std::fs::create_dir_all(dir).map_err(|source| ClusterError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let engine_error = |action: &str| {
        let path = dir.to_path_buf();
        let action = action.to_owned();
        move |source: fjall::Error| ClusterError::Engine {
            path,
            action,
            source,
        }
    };
    let db = Database::builder(dir)
        .max_journaling_size(MAX_JOURNALING_SIZE)
        // Metadata: one background worker is plenty, and the broker's store has its own.
        .worker_threads(1)
        .open()
        .map_err(engine_error("open"))?;
    for name in db.list_keyspace_names() {
        let name: &str = &name;
        if !SPACES.contains(&name) {
            return Err(ClusterError::Foreign {
                path: dir.to_path_buf(),
                name: name.to_owned(),
            });
        }
    }
    let open_space = |name: &str| -> Result<Keyspace, ClusterError> {
        db.keyspace(name, || {
            KeyspaceCreateOptions::default().max_memtable_size(MAX_MEMTABLE_SIZE)
        })
        .map_err(engine_error(&format!("open keyspace {name:?} of")))
    };
    let log = open_space(LOG_SPACE)?;
    let meta = open_space(META_SPACE)?;
    let snapshot = open_space(SNAPSHOT_SPACE)?;
    check_format(dir, &db, [&log, &meta, &snapshot], &meta)?;

    let log_store = LogStore::new(db.clone(), log, meta);
    let state_store = StateStore::load(dir.to_path_buf(), db, snapshot, events)?;
    Ok((log_store, state_store))
}

/// Checks the format version, or writes it into a new (empty) database.
fn check_format(
    dir: &Path,
    db: &Database,
    spaces: [&Keyspace; 3],
    meta: &Keyspace,
) -> Result<(), ClusterError> {
    let engine_error = |action: &'static str| {
        move |source: fjall::Error| ClusterError::Engine {
            path: dir.to_path_buf(),
            action: action.to_owned(),
            source,
        }
    };
    let stored = meta
        .get(FORMAT_KEY)
        .map_err(engine_error("read the format version of"))?;
    match stored {
        Some(value) => {
            let found = std::str::from_utf8(&value)
                .ok()
                .and_then(|text| text.parse::<u32>().ok());
            if found != Some(CLUSTER_FORMAT_VERSION) {
                return Err(ClusterError::UnsupportedVersion {
                    path: dir.to_path_buf(),
                    found: found.map_or_else(
                        || format!("unreadable ({} bytes)", value.len()),
                        |v| v.to_string(),
                    ),
                    expected: CLUSTER_FORMAT_VERSION,
                });
            }
        }
        None => {
            for space in spaces {
                if !space
                    .is_empty()
                    .map_err(engine_error("read a keyspace of"))?
                {
                    return Err(ClusterError::UnsupportedVersion {
                        path: dir.to_path_buf(),
                        found: "none (data without a format version)".to_owned(),
                        expected: CLUSTER_FORMAT_VERSION,
                    });
                }
            }
            meta.insert(FORMAT_KEY, CLUSTER_FORMAT_VERSION.to_string())
                .map_err(engine_error("write the format version to"))?;
            db.persist(fjall::PersistMode::SyncAll)
                .map_err(engine_error("persist the format version to"))?;
        }
    }
    Ok(())
}

/// Runs blocking disk work (an fsync, a read that may miss the cache) on tokio's blocking
/// pool, so the Raft core's tasks keep running. `verb` names what failed if the work could not
/// run to its end (a panic in it, a runtime shutting down).
pub(crate) async fn blocking<T, F>(
    verb: fn(AnyError) -> StorageIOError<NodeId>,
    work: F,
) -> Result<T, StorageError<NodeId>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError<NodeId>> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) => Err(verb(AnyError::new(&join)).into()),
    }
}
