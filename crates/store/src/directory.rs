//! The data directory itself: creating it, checking that it holds nothing but a Tern store, and
//! the lock file that keeps a second broker out while one has it open.
//!
//! Layout: `<dir>/tern.lock` (the lock; it names the holder's process id) and `<dir>/engine/`
//! (the fjall database). Nothing else may be there.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::StoreError;

pub(crate) const LOCK_FILE: &str = "tern.lock";
pub(crate) const ENGINE_DIR: &str = "engine";
/// Where a cluster node keeps its Raft log and snapshots (its own database, see tern-cluster):
/// part of the data directory, not foreign to it.
pub const CLUSTER_DIR: &str = "cluster";

/// What a file system may put into a fresh mount point; not taken for foreign data.
const FILE_SYSTEM_ENTRIES: &[&str] = &["lost+found"];

/// The exclusive lock on a data directory, held until dropped.
#[derive(Debug)]
pub(crate) struct DirLock {
    file: File,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Closing the file releases the lock as well; unlock explicitly to release it at once.
        if let Err(error) = self.file.unlock() {
            tracing::warn!(%error, "cannot unlock the data directory");
        }
    }
}

/// A data directory ready to be opened.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) lock: DirLock,
    /// Where the engine keeps its files.
    pub(crate) engine_path: PathBuf,
    /// Whether the engine directory existed already (a store was created here before).
    pub(crate) existing: bool,
}

/// Creates `dir` if missing, checks that it holds nothing foreign, and locks it.
pub(crate) fn prepare(dir: &Path) -> Result<Prepared, StoreError> {
    let io = |action: &'static str| {
        move |source: std::io::Error| StoreError::Io {
            dir: dir.to_path_buf(),
            action,
            source,
        }
    };
    fs::create_dir_all(dir).map_err(io("create the directory"))?;

    // Check before writing anything, so that a foreign directory is left as it was.
    for entry in fs::read_dir(dir).map_err(io("list the directory"))? {
        let name = entry.map_err(io("list the directory"))?.file_name();
        let ours = name == LOCK_FILE
            || name == ENGINE_DIR
            || name == CLUSTER_DIR
            || FILE_SYSTEM_ENTRIES.iter().any(|allowed| name == *allowed);
        if !ours {
            return Err(StoreError::Foreign {
                dir: dir.to_path_buf(),
                entry: name.to_string_lossy().into_owned(),
            });
        }
    }

    let lock_path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io("open the lock file"))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&lock_path)
                .ok()
                .map(|text| text.trim().to_owned())
                .filter(|text| !text.is_empty());
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
                lock_file: lock_path,
                holder,
            });
        }
        Err(TryLockError::Error(source)) => return Err(io("lock the lock file")(source)),
    }
    // Name the holder, for the error a second broker reports. Best effort: on a full disk the
    // write may fail, and the store must still open (the lock itself is held).
    if let Err(error) = file
        .set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
    {
        tracing::warn!(lock_file = %lock_path.display(), %error, "cannot write the process id into the lock file (is the disk full?); the directory is locked all the same");
    }

    let engine_path = dir.join(ENGINE_DIR);
    let existing = engine_path
        .try_exists()
        .map_err(io("look for the engine directory"))?;
    Ok(Prepared {
        lock: DirLock { file },
        engine_path,
        existing,
    })
}
