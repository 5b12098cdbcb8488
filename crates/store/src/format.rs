//! Opening the engine with the store's settings, and the store format version: written when a
//! store is created, checked at every open, so that a directory written by another program or
//! by an incompatible build of Tern is refused instead of misread.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use fjall::{Database, KeyspaceCreateOptions, PersistMode};

use crate::encoding::{decode_format_version, encode_format_version};
use crate::engine::Spaces;
use crate::error::StoreError;
use crate::keys::{FORMAT_VERSION_KEY, Space};

/// The layout of keys and values this build writes and reads. Raise it with any change to
/// `keys.rs` or to the value encodings that an older build would misread.
pub const STORE_FORMAT_VERSION: u32 = 1;

/// The engine keeps at most this much journal before it flushes memtables to tables and
/// deletes old journals (fjall's minimum; its default is 512 MiB).
const MAX_JOURNALING_SIZE: u64 = 64 * 1024 * 1024;

/// A keyspace's memtable is flushed to a table once it holds this much (fjall's default is
/// 64 MiB per keyspace; the broker keeps its own copy of the state in memory already).
const MAX_MEMTABLE_SIZE: u64 = 8 * 1024 * 1024;

/// The opened engine, and how many bytes of its active journal the engine's recovery dropped.
pub(crate) struct Opened {
    pub(crate) spaces: Spaces,
    pub(crate) journal_bytes_dropped: u64,
}

/// Opens (or creates) the engine at `path` and its keyspaces, and checks the format version.
/// `dir` is the data directory, for errors; `existing` whether the engine directory was there.
pub(crate) fn open_engine(path: &Path, dir: &Path, existing: bool) -> Result<Opened, StoreError> {
    let engine_error = |action: String| {
        move |source: fjall::Error| StoreError::Engine {
            path: path.to_path_buf(),
            action,
            source,
        }
    };
    let journal_before = active_journal(path);
    let db = Database::builder(path)
        .max_journaling_size(MAX_JOURNALING_SIZE)
        .open()
        .map_err(engine_error("open".into()))?;

    // A keyspace of another name means another program's database.
    for name in db.list_keyspace_names() {
        let name: &str = &name;
        if !Space::ALL.iter().any(|space| space.name() == name) {
            return Err(StoreError::Foreign {
                dir: dir.to_path_buf(),
                entry: format!("{}/ (engine keyspace {name:?})", path.display()),
            });
        }
    }

    let mut handles = Vec::with_capacity(Space::ALL.len());
    for space in Space::ALL {
        let handle = db
            .keyspace(space.name(), || {
                KeyspaceCreateOptions::default().max_memtable_size(MAX_MEMTABLE_SIZE)
            })
            .map_err(engine_error(format!("open keyspace {:?} of", space.name())))?;
        handles.push(handle);
    }
    let spaces = Spaces::new(db, handles);
    let journal_bytes_dropped = journal_before.map_or(0, |(journal, written)| {
        let kept = std::fs::metadata(&journal).map_or(written, |meta| meta.len());
        written.saturating_sub(kept)
    });

    let meta = spaces.get(Space::Meta);
    let stored = meta
        .get(FORMAT_VERSION_KEY)
        .map_err(engine_error("read the format version of".into()))?;
    match stored {
        Some(value) => match decode_format_version(&value) {
            Some(STORE_FORMAT_VERSION) => {}
            found => {
                return Err(StoreError::UnsupportedVersion {
                    dir: dir.to_path_buf(),
                    found: found.map_or_else(
                        || format!("unreadable ({} bytes)", value.len()),
                        |version| version.to_string(),
                    ),
                    expected: STORE_FORMAT_VERSION,
                });
            }
        },
        None => {
            // A new store; or one whose creation stopped before the version was written, which
            // then holds nothing. Data without a version is not ours to interpret.
            for space in Space::ALL {
                let empty = spaces
                    .get(space)
                    .is_empty()
                    .map_err(engine_error(format!("read keyspace {:?} of", space.name())))?;
                if !empty {
                    return Err(StoreError::MissingVersion {
                        dir: dir.to_path_buf(),
                    });
                }
            }
            if existing {
                tracing::warn!(dir = %dir.display(), "data directory holds an empty store without a format version (its creation was interrupted); initialising it");
            }
            meta.insert(
                FORMAT_VERSION_KEY,
                encode_format_version(STORE_FORMAT_VERSION),
            )
            .map_err(engine_error("write the format version to".into()))?;
            spaces
                .db
                .persist(PersistMode::SyncAll)
                .map_err(engine_error("persist the format version to".into()))?;
        }
    }
    Ok(Opened {
        spaces,
        journal_bytes_dropped,
    })
}

/// The engine's active journal (the highest-numbered `N.jnl`) and the length of its written
/// part (the engine preallocates journals with zeros), read before the engine opens it.
///
/// The engine's recovery replays the journal up to the first batch that does not decode or
/// whose checksum fails, and truncates the file there: a torn last write, or damage anywhere
/// in the journal, which it cannot tell apart. Comparing the written length before with the
/// file's length after is how the store notices, and reports, what was dropped. Best effort:
/// any I/O error here just skips the check.
fn active_journal(path: &Path) -> Option<(PathBuf, u64)> {
    let journal = std::fs::read_dir(path)
        .ok()?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let id: u64 = path
                .file_name()?
                .to_str()?
                .strip_suffix(".jnl")?
                .parse()
                .ok()?;
            Some((id, path))
        })
        .max_by_key(|(id, _)| *id)?
        .1;
    let written = written_len(&journal).ok()?;
    Some((journal, written))
}

/// The offset after the last non-zero byte of the file at `path`.
fn written_len(path: &Path) -> std::io::Result<u64> {
    const CHUNK: u64 = 1 << 20;
    let mut file = File::open(path)?;
    let mut end = file.metadata()?.len();
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let len = usize::try_from(end - start)
            .unwrap_or(buf.len())
            .min(buf.len());
        let chunk = &mut buf[..len];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(at) = chunk.iter().rposition(|&byte| byte != 0) {
            return Ok(start + at as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}
