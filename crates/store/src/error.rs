//! What can go wrong when the store opens, reads back or writes its data directory. Every error
//! that stops a start names the directory, keyspace or file concerned and says what to do.

use std::path::PathBuf;

/// Advice for a data directory that cannot be read back.
const DAMAGED: &str = "the data directory is damaged: restore it from a backup, or move it away to start with an empty store";

/// An error of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation on the data directory failed.
    #[error("data directory {}: cannot {action}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// Another process (or another store in this process) holds the directory.
    #[error(
        "data directory {} is in use by another broker (lock file {} is held{}); stop the other broker or choose another directory",
        dir.display(),
        lock_file.display(),
        holder.as_ref().map(|pid| format!(" by process {pid}")).unwrap_or_default()
    )]
    Locked {
        dir: PathBuf,
        lock_file: PathBuf,
        /// The process id the lock file names, if it could be read.
        holder: Option<String>,
    },

    /// The directory holds something a Tern store never writes.
    #[error(
        "{} is not a Tern data directory: it contains {entry:?}, which a Tern store never holds; choose an empty or new directory, or move the foreign files away",
        dir.display()
    )]
    Foreign { dir: PathBuf, entry: String },

    /// The storage engine holds data but no store format version.
    #[error(
        "data directory {} holds data but no store format version, so it was not written by Tern or is damaged; restore it from a backup, or move it away to start with an empty store",
        dir.display()
    )]
    MissingVersion { dir: PathBuf },

    /// The store was written in a format this build does not read.
    #[error(
        "data directory {} has store format version {found}, but this build of Tern reads version {expected}; run a matching build of Tern, or move the directory away to start with an empty store",
        dir.display()
    )]
    UnsupportedVersion {
        dir: PathBuf,
        found: String,
        expected: u32,
    },

    /// The storage engine refused to open or read the directory.
    #[error("storage engine failed to {action} {}: {source}; {}", path.display(), engine_advice(source))]
    Engine {
        path: PathBuf,
        action: String,
        #[source]
        source: fjall::Error,
    },

    /// The storage engine panicked while opening the directory.
    #[error("storage engine failed (panicked) while opening {}: {message}; {DAMAGED}", path.display())]
    EnginePanic { path: PathBuf, message: String },

    /// A stored record cannot be decoded.
    #[error("data directory {}: corrupt record in keyspace {keyspace:?}, key {key}: {reason}; {DAMAGED}", dir.display())]
    Corrupt {
        dir: PathBuf,
        keyspace: &'static str,
        /// The key, with bytes outside printable ASCII escaped.
        key: String,
        reason: String,
    },

    /// The commit thread could not be started.
    #[error("cannot start the store's commit thread: {0}")]
    Thread(#[source] std::io::Error),

    /// `close` gave up waiting for the commit thread.
    #[error(
        "data directory {}: the last changes could not be committed within {seconds} s; they may be lost",
        dir.display()
    )]
    CloseTimedOut { dir: PathBuf, seconds: u64 },
}

/// What to do about an engine error: a full file system is not damage.
fn engine_advice(source: &fjall::Error) -> &'static str {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(source);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        {
            return "the data directory's file system is full: free space on it";
        }
        current = error.source();
    }
    DAMAGED
}

/// A key as text for an error message: printable ASCII as is, other bytes escaped.
pub(crate) fn printable_key(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_not_called_damage() {
        let error = |source| StoreError::Engine {
            path: PathBuf::from("/data/engine"),
            action: "open".into(),
            source,
        };
        let full = error(fjall::Error::Io(std::io::Error::from_raw_os_error(28))).to_string();
        assert!(full.contains("file system is full: free space"), "{full}");
        assert!(!full.contains("damaged"), "{full}");
        let damaged = error(fjall::Error::InvalidVersion(None)).to_string();
        assert!(damaged.contains("restore it from a backup"), "{damaged}");
    }
}
