//! Durability levels: what a commit must reach before the store counts it as durable (and the
//! broker sends the acknowledgements that depend on it), and the configuration's names for them.

use std::fmt;
use std::str::FromStr;

use fjall::PersistMode;

/// When a committed change counts as durable.
///
/// Every commit appends one atomic batch to the engine's journal (a checksummed write-ahead
/// log); at start-up the journal is replayed and a torn last batch is dropped whole, so the
/// store is always consistent. The levels differ in what a commit must reach before it counts:
///
/// - [`Durability::Process`]: the batch has been written to the operating system (`write(2)`
///   into its page cache; fjall `PersistMode::Buffer`). It survives the broker process ending in
///   any way (crash, panic, `kill -9`, out-of-memory kill), but not an operating-system crash or
///   power loss, which may lose the last moments of commits (never corrupting what remains).
/// - [`Durability::Fsync`]: the batch has also been synced to the device (`fdatasync(2)`; fjall
///   `PersistMode::SyncData`; `F_FULLFSYNC` on macOS). It also survives an operating-system
///   crash and power loss, as far as the device honours cache flushes. `fdatasync` suffices
///   because fjall preallocates each journal file (and syncs it and its directory when it is
///   created), so appending never changes metadata needed to read the data back. Costs one
///   device sync per group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Durability {
    Process,
    Fsync,
}

impl Durability {
    pub(crate) fn persist_mode(self) -> PersistMode {
        match self {
            Durability::Process => PersistMode::Buffer,
            Durability::Fsync => PersistMode::SyncData,
        }
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        DurabilityLevel::from(*self).fmt(f)
    }
}

impl FromStr for Durability {
    type Err = ParseDurabilityError;

    /// `process` or `fsync`. (`memory` means no store; see [`DurabilityLevel`].)
    fn from_str(text: &str) -> Result<Durability, ParseDurabilityError> {
        DurabilityLevel::from_str(text)?
            .store_durability()
            .ok_or_else(|| ParseDurabilityError(text.to_owned()))
    }
}

/// The configuration's durability setting: `memory`, `process` or `fsync`.
///
/// - `memory`: no store at all; everything is lost when the broker stops.
/// - `process` and `fsync`: a store with [`Durability::Process`] or [`Durability::Fsync`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DurabilityLevel {
    #[default]
    Memory,
    Process,
    Fsync,
}

impl DurabilityLevel {
    /// The store's durability, or `None` for `memory` (open no store).
    pub fn store_durability(self) -> Option<Durability> {
        match self {
            DurabilityLevel::Memory => None,
            DurabilityLevel::Process => Some(Durability::Process),
            DurabilityLevel::Fsync => Some(Durability::Fsync),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DurabilityLevel::Memory => "memory",
            DurabilityLevel::Process => "process",
            DurabilityLevel::Fsync => "fsync",
        }
    }
}

impl From<Durability> for DurabilityLevel {
    fn from(durability: Durability) -> DurabilityLevel {
        match durability {
            Durability::Process => DurabilityLevel::Process,
            Durability::Fsync => DurabilityLevel::Fsync,
        }
    }
}

impl fmt::Display for DurabilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for DurabilityLevel {
    type Err = ParseDurabilityError;

    fn from_str(text: &str) -> Result<DurabilityLevel, ParseDurabilityError> {
        match text {
            "memory" => Ok(DurabilityLevel::Memory),
            "process" => Ok(DurabilityLevel::Process),
            "fsync" => Ok(DurabilityLevel::Fsync),
            _ => Err(ParseDurabilityError(text.to_owned())),
        }
    }
}

/// A durability name that is not one of the levels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown durability {0:?}: expected \"memory\", \"process\" or \"fsync\" (a store needs \"process\" or \"fsync\")"
)]
pub struct ParseDurabilityError(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for level in [
            DurabilityLevel::Memory,
            DurabilityLevel::Process,
            DurabilityLevel::Fsync,
        ] {
            assert_eq!(level.to_string().parse::<DurabilityLevel>(), Ok(level));
        }
        assert_eq!("fsync".parse::<Durability>(), Ok(Durability::Fsync));
        assert_eq!(Durability::Process.to_string(), "process");
        assert!("memory".parse::<Durability>().is_err());
        assert!("Fsync".parse::<DurabilityLevel>().is_err());
    }
}
