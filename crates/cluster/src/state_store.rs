//! The state machine openraft drives: [`StateStore`], the [`ClusterState`] in memory behind a
//! [`StateHandle`] the node's runtime reads, its last applied log id and membership, and its
//! snapshots in the `snapshot` keyspace of the cluster's database.
//!
//! Persistence is by snapshot: `apply` changes memory only; a snapshot is fsynced before
//! openraft learns of it (and so before it purges the log it covers); at open the state machine
//! is loaded from the current snapshot and openraft replays the log after it. Every applied
//! entry and every installed snapshot is also sent, once applied, as an [`Applied`] event: the
//! server updates its route index, its retained messages and its connections from them. A
//! replay after a restart sends the replayed entries again; consumers must be idempotent, as
//! `apply` itself is for them (the same entry applied to the same state answers the same).

// openraft's `StorageError` (224 bytes) is what its storage traits return; boxing it at every
// internal step would only move the allocation.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use fjall::{Database, Keyspace, PersistMode};
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use crate::command::{Request, Response};
use crate::error::ClusterError;
use crate::state::ClusterState;
use crate::storage::blocking;
use crate::types::{NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;
type Result<T> = std::result::Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, BasicNode>;
type Meta = SnapshotMeta<NodeId, BasicNode>;

const SNAPSHOT_META_KEY: &[u8] = b"meta";
const SNAPSHOT_DATA_KEY: &[u8] = b"data";

/// What the state machine applied, in log order, sent after it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The commands of the log entry at `log_index` and what they answered (one event per
    /// entry that carries commands; blank and membership entries send none).
    Commands {
        log_index: u64,
        request: Request,
        response: Response,
    },
    /// A snapshot from the leader replaced the whole state: rebuild everything derived from it.
    /// `last_index`: the log index it stands at.
    Snapshot { last_index: u64 },
}

/// A shared, read-mostly handle on the state machine's [`ClusterState`].
#[derive(Debug, Clone, Default)]
pub struct StateHandle(Arc<RwLock<ClusterState>>);

impl StateHandle {
    /// Reads the current state. Hold the guard briefly: `apply` waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, ClusterState> {
        // `apply` does not panic, so the lock is never poisoned; if it were, the state is
        // still whole (every command is applied or not).
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, ClusterState> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A snapshot's data: the state and where in the log it stands.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    last_applied: Option<LogId<NodeId>>,
    last_membership: Membership,
    state: ClusterState,
}

/// The same, to serialize without cloning the state.
#[derive(Serialize)]
struct SnapshotDataRef<'a> {
    last_applied: &'a Option<LogId<NodeId>>,
    last_membership: &'a Membership,
    state: &'a ClusterState,
}

/// Where snapshots are kept: the `snapshot` keyspace, one snapshot (its meta and its data),
/// replaced atomically.
#[derive(Clone)]
struct SnapshotSpace {
    db: Database,
    space: Keyspace,
    /// Held from reading the stored snapshot's position to writing a new one: openraft builds
    /// snapshots in a task of their own, which may end after a newer snapshot was installed.
    saving: Arc<Mutex<()>>,
}

impl SnapshotSpace {
    fn new(db: Database, space: Keyspace) -> SnapshotSpace {
        SnapshotSpace {
            db,
            space,
            saving: Arc::new(Mutex::new(())),
        }
    }

    /// Replaces the current snapshot, fsynced, unless the stored one is further in the log
    /// (a build that finished after an install of a newer snapshot): the current snapshot
    /// never goes back, since the log before it may be purged already.
    fn save(&self, meta: &Meta, data: &[u8]) -> Result<()> {
        let signature = Some(meta.signature());
        let _saving = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let stored = self
            .space
            .get(SNAPSHOT_META_KEY)
            .map_err(|e| StorageIOError::read_snapshot(signature.clone(), &e))?;
        if let Some(stored) = stored {
            // An unreadable stored meta is replaced: the new snapshot is whole.
            if let Ok(stored) = serde_json::from_slice::<Meta>(&stored)
                && stored.last_log_id > meta.last_log_id
            {
                tracing::info!(built = ?meta.last_log_id, stored = ?stored.last_log_id, "cluster snapshot not stored: a newer one is");
                return Ok(());
            }
        }
        let meta_bytes = serde_json::to_vec(meta)
            .map_err(|e| StorageIOError::write_snapshot(signature.clone(), &e))?;
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(&self.space, SNAPSHOT_META_KEY, meta_bytes);
        batch.insert(&self.space, SNAPSHOT_DATA_KEY, data);
        batch
            .commit()
            .map_err(|e| StorageIOError::write_snapshot(signature, &e).into())
    }

    /// The current snapshot's meta and data, if any.
    fn load(&self) -> std::result::Result<Option<(Meta, Vec<u8>)>, String> {
        let meta = self
            .space
            .get(SNAPSHOT_META_KEY)
            .map_err(|e| e.to_string())?;
        let data = self
            .space
            .get(SNAPSHOT_DATA_KEY)
            .map_err(|e| e.to_string())?;
        match (meta, data) {
            (None, None) => Ok(None),
            (Some(meta), Some(data)) => {
                let meta: Meta =
                    serde_json::from_slice(&meta).map_err(|e| format!("snapshot meta: {e}"))?;
                Ok(Some((meta, data.to_vec())))
            }
            _ => Err("half a snapshot (meta without data or data without meta)".to_owned()),
        }
    }
}

fn decode_data(data: &[u8]) -> std::result::Result<SnapshotData, String> {
    serde_json::from_slice(data).map_err(|e| format!("snapshot data: {e}"))
}

fn read_snapshot_error(reason: String) -> StorageError<NodeId> {
    StorageIOError::new(
        ErrorSubject::Snapshot(None),
        ErrorVerb::Read,
        AnyError::error(reason),
    )
    .into()
}

/// The state machine: see the module comment.
pub struct StateStore {
    state: StateHandle,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    snapshots: SnapshotSpace,
    events: UnboundedSender<Applied>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("last_applied", &self.last_applied)
            .field("membership", &self.membership)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// Loads the state machine from the current snapshot in `space`, if there is one.
    pub(crate) fn load(
        path: PathBuf,
        db: Database,
        space: Keyspace,
        events: UnboundedSender<Applied>,
    ) -> std::result::Result<StateStore, ClusterError> {
        let snapshots = SnapshotSpace::new(db, space);
        let corrupt = |reason: String| ClusterError::Corrupt {
            path: path.clone(),
            what: "snapshot",
            reason,
        };
        let mut store = StateStore {
            state: StateHandle::default(),
            last_applied: None,
            membership: Membership::default(),
            snapshots,
            events,
        };
        if let Some((meta, data)) = store.snapshots.load().map_err(corrupt)? {
            let data = decode_data(&data).map_err(corrupt)?;
            if data.last_applied != meta.last_log_id {
                return Err(corrupt(format!(
                    "its data stands at {:?}, its meta at {:?}",
                    data.last_applied, meta.last_log_id
                )));
            }
            tracing::info!(last_applied = ?data.last_applied, "cluster state loaded from its snapshot");
            *store.state.write() = data.state;
            store.last_applied = data.last_applied;
            store.membership = data.last_membership;
        }
        Ok(store)
    }

    /// The handle the runtime reads the state through (take it before handing the store to
    /// openraft).
    pub fn state(&self) -> StateHandle {
        self.state.clone()
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.last_applied
    }

    fn send(&self, event: Applied) {
        // A runtime that stopped listening is shutting down: nothing to tell.
        if self.events.send(event).is_err() {
            tracing::debug!("cluster state event dropped: no receiver");
        }
    }
}

/// Builds a snapshot from a copy of the state taken when openraft asked for the builder (so
/// later applies do not change it). Serializing and writing happen on the blocking pool: the
/// state machine's task only pays for the copy (measured in `docs/architecture.md`).
pub struct SnapshotBuilder {
    meta: Meta,
    state: Arc<ClusterState>,
    snapshots: SnapshotSpace,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let snapshots = self.snapshots.clone();
        let meta = self.meta.clone();
        let state = Arc::clone(&self.state);
        let data = blocking(StorageIOError::write_state_machine, move || {
            let data = serde_json::to_vec(&SnapshotDataRef {
                last_applied: &meta.last_log_id,
                last_membership: &meta.last_membership,
                state: &state,
            })
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
            // Durable before openraft learns of it: it purges the log the snapshot covers.
            snapshots.save(&meta, &data)?;
            Ok(data)
        })
        .await?;
        tracing::debug!(last_log_id = ?self.meta.last_log_id, bytes = data.len(), "cluster snapshot built");
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership)> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        let mut events = Vec::new();
        {
            let mut state = self.state.write();
            for entry in entries {
                self.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => responses.push(Response::default()),
                    EntryPayload::Normal(request) => {
                        let response = state.apply_request(&request);
                        responses.push(response.clone());
                        events.push(Applied::Commands {
                            log_index: entry.log_id.index,
                            request,
                            response,
                        });
                    }
                    EntryPayload::Membership(membership) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), membership);
                        responses.push(Response::default());
                    }
                }
            }
        }
        for event in events {
            self.send(event);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let state = Arc::new(self.state.read().clone());
        let snapshot_id = match &self.last_applied {
            Some(log_id) => log_id.to_string(),
            None => "none".to_owned(),
        };
        SnapshotBuilder {
            meta: Meta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
                snapshot_id,
            },
            state,
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let bytes = snapshot.into_inner();
        let data = decode_data(&bytes).map_err(|reason| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::error(reason),
            ))
        })?;
        let snapshots = self.snapshots.clone();
        let saved_meta = meta.clone();
        blocking(StorageIOError::write_state_machine, move || {
            snapshots.save(&saved_meta, &bytes)
        })
        .await?;
        // Stored: now it is the state machine.
        *self.state.write() = data.state;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        tracing::info!(last_log_id = ?meta.last_log_id, "cluster snapshot installed");
        self.send(Applied::Snapshot {
            last_index: meta.last_log_id.map_or(0, |id| id.index),
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let snapshots = self.snapshots.clone();
        let loaded = blocking(StorageIOError::read_state_machine, move || {
            snapshots.load().map_err(read_snapshot_error)
        })
        .await?;
        Ok(loaded.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
