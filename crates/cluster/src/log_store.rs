//! The Raft log and vote on fjall: [`LogStore`], openraft's `RaftLogStorage`.
//!
//! Durable before acknowledged: `append` writes its entries in one atomic batch, fsyncs the
//! journal (`PersistMode::SyncAll`) and only then reports them flushed to openraft; `save_vote`
//! and `truncate` fsync before they return. `purge` and `save_committed` do not: a purge lost
//! in a crash only brings back entries a snapshot already covers (the purged id is written in
//! the same atomic batch, so the two stay consistent), and the committed id is a hint that
//! lets a restart re-apply sooner. Both are handed to the OS (`PersistMode::Buffer`: they
//! survive a crash of the process, not of the machine), and the journal is one sequence, so the
//! next fsync covers them.
//!
//! Disk work runs on tokio's blocking pool (`spawn_blocking`); each call awaits its work
//! before returning, so writes reach the engine in the order openraft issued them.

// openraft's `StorageError` (224 bytes) is what its storage traits return; boxing it at every
// internal step would only move the allocation.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use fjall::{Database, Keyspace, PersistMode};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, LogState, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::storage::blocking;
use crate::types::{NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;
type Result<T> = std::result::Result<T, StorageError<NodeId>>;

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const PURGED_KEY: &[u8] = b"purged";

/// The Raft log and vote in the cluster's database. Cheap to clone (handles); a clone is also
/// the log reader the replication tasks use.
#[derive(Clone)]
pub struct LogStore {
    db: Database,
    log: Keyspace,
    meta: Keyspace,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

/// A log entry's key: its index, big-endian, so that key order is index order.
fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    source: impl Into<AnyError>,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, source).into()
}

fn fjall_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
) -> impl FnOnce(fjall::Error) -> StorageError<NodeId> {
    move |e| io_error(subject, verb, &e)
}

impl LogStore {
    pub(crate) fn new(db: Database, log: Keyspace, meta: Keyspace) -> LogStore {
        LogStore { db, log, meta }
    }

    /// Reads and decodes a JSON value of the meta keyspace.
    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &'static [u8],
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>> {
        let Some(value) = self
            .meta
            .get(key)
            .map_err(fjall_error(subject.clone(), ErrorVerb::Read))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&value).map(Some).map_err(|e| {
            io_error(
                subject,
                ErrorVerb::Read,
                AnyError::error(format!(
                    "corrupt {:?} in the cluster's meta keyspace: {e}",
                    String::from_utf8_lossy(key)
                )),
            )
        })
    }

    /// Writes a JSON value to the meta keyspace, fsynced if `mode` says so.
    fn write_meta<T: Serialize>(
        &self,
        key: &'static [u8],
        value: &T,
        subject: ErrorSubject<NodeId>,
        mode: Option<PersistMode>,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Write, &e))?;
        let mut batch = self.db.batch().durability(mode);
        batch.insert(&self.meta, key, bytes);
        batch
            .commit()
            .map_err(fjall_error(subject, ErrorVerb::Write))
    }

    /// Decodes a stored entry and checks it is the one its key names.
    fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry> {
        let index = <[u8; 8]>::try_from(key)
            .map(u64::from_be_bytes)
            .map_err(|_| {
                io_error(
                    ErrorSubject::Logs,
                    ErrorVerb::Read,
                    AnyError::error(format!("a log key of {} bytes (8 expected)", key.len())),
                )
            })?;
        let entry: Entry = serde_json::from_slice(value).map_err(|e| {
            io_error(
                ErrorSubject::LogIndex(index),
                ErrorVerb::Read,
                AnyError::error(format!("corrupt log entry: {e}")),
            )
        })?;
        if entry.log_id.index != index {
            return Err(io_error(
                ErrorSubject::LogIndex(index),
                ErrorVerb::Read,
                AnyError::error(format!(
                    "the entry stored at index {index} is entry {}",
                    entry.log_id
                )),
            ));
        }
        Ok(entry)
    }

    fn read_range(&self, start: u64, end_inclusive: u64) -> Result<Vec<Entry>> {
        if start > end_inclusive {
            return Ok(Vec::new());
        }
        let mut entries = Vec::new();
        for guard in self.log.range(log_key(start)..=log_key(end_inclusive)) {
            let (key, value) = guard
                .into_inner()
                .map_err(fjall_error(ErrorSubject::Logs, ErrorVerb::Read))?;
            entries.push(Self::decode_entry(&key, &value)?);
        }
        Ok(entries)
    }

    fn last_log_id(&self) -> Result<Option<LogId<NodeId>>> {
        let Some(guard) = self.log.last_key_value() else {
            return Ok(None);
        };
        let (key, value) = guard
            .into_inner()
            .map_err(fjall_error(ErrorSubject::Logs, ErrorVerb::Read))?;
        Ok(Some(Self::decode_entry(&key, &value)?.log_id))
    }

    /// Deletes the entries with keys in `range` and writes `purged` in the same atomic batch.
    fn delete_range(
        &self,
        range: impl RangeBounds<[u8; 8]>,
        purged: Option<&LogId<NodeId>>,
        mode: Option<PersistMode>,
    ) -> Result<()> {
        let mut batch = self.db.batch().durability(mode);
        for guard in self.log.range(range) {
            let key = guard
                .key()
                .map_err(fjall_error(ErrorSubject::Logs, ErrorVerb::Read))?;
            batch.remove(&self.log, key);
        }
        if let Some(purged) = purged {
            let bytes = serde_json::to_vec(purged)
                .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &e))?;
            batch.insert(&self.meta, PURGED_KEY, bytes);
        }
        batch
            .commit()
            .map_err(fjall_error(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}

/// `[start, end]` of the indexes a range names; `start > end` when it names none.
fn index_bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => match s.checked_add(1) {
            Some(s) => s,
            None => return (1, 0),
        },
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e,
        Bound::Excluded(&e) => match e.checked_sub(1) {
            Some(e) => e,
            None => return (1, 0),
        },
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>> {
        let (start, end) = index_bounds(&range);
        let this = self.clone();
        blocking(StorageIOError::read_logs, move || {
            this.read_range(start, end)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let this = self.clone();
        blocking(StorageIOError::read_logs, move || {
            let last_purged_log_id: Option<LogId<NodeId>> =
                this.read_meta(PURGED_KEY, ErrorSubject::Logs)?;
            let last_log_id = this.last_log_id()?.or(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        let this = self.clone();
        let vote = *vote;
        blocking(StorageIOError::write_vote, move || {
            this.write_meta(
                VOTE_KEY,
                &vote,
                ErrorSubject::Vote,
                Some(PersistMode::SyncAll),
            )
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        let this = self.clone();
        blocking(StorageIOError::read_vote, move || {
            this.read_meta(VOTE_KEY, ErrorSubject::Vote)
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        let this = self.clone();
        blocking(StorageIOError::write, move || {
            // Not fsynced: see the module comment.
            this.write_meta(
                COMMITTED_KEY,
                &committed,
                ErrorSubject::Store,
                Some(PersistMode::Buffer),
            )
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        let this = self.clone();
        blocking(StorageIOError::read, move || {
            Ok(this
                .read_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY, ErrorSubject::Store)?
                .flatten())
        })
        .await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
            encoded.push((entry.log_id.index, bytes));
        }
        let this = self.clone();
        let written = blocking(StorageIOError::write_logs, move || {
            let mut batch = this.db.batch().durability(Some(PersistMode::SyncAll));
            for (index, bytes) in encoded {
                batch.insert(&this.log, log_key(index), bytes);
            }
            batch
                .commit()
                .map_err(fjall_error(ErrorSubject::Logs, ErrorVerb::Write))
        })
        .await;
        match written {
            Ok(()) => {
                // Only now, on disk: openraft may acknowledge the entries.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let this = self.clone();
        blocking(StorageIOError::write_logs, move || {
            this.delete_range(log_key(log_id.index).., None, Some(PersistMode::SyncAll))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        let this = self.clone();
        blocking(StorageIOError::write_logs, move || {
            // Not fsynced: see the module comment.
            this.delete_range(
                ..=log_key(log_id.index),
                Some(&log_id),
                Some(PersistMode::Buffer),
            )
        })
        .await
    }
}
