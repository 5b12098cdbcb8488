//! The store's settings beyond the durability level: how much of its file system it leaves
//! free ([`DiskReserve`], the low watermark), and how many bytes of changes it lets wait for a
//! commit before it reports congestion.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::durability::Durability;

/// How the store is opened; see [`Store::open_with`](crate::Store::open_with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    pub durability: Durability,
    /// The low watermark: below this much free space on the data directory's file system the
    /// store refuses new durable work (see
    /// [`Persistence::accepts_new_work`](tern_broker::persist::Persistence::accepts_new_work))
    /// and keeps the rest for the bookkeeping that frees space. Default
    /// [`DiskReserve::DEFAULT`] (256 MB).
    pub min_free_disk: DiskReserve,
    /// Above this many bytes of changes submitted and not yet durable (an estimate: payload,
    /// topic, properties and names), the store reports congestion (see
    /// [`Persistence::congested`](tern_broker::persist::Persistence::congested)). Not a hard
    /// cap: the bytes pending reach at most this plus what connections submit before they see
    /// the congestion. Default [`StoreOptions::DEFAULT_MAX_PENDING_BYTES`] (64 MiB).
    pub max_pending_bytes: usize,
    /// Sleeps this long before each commit: a slow disk, for tests. Zero (the default) in
    /// production.
    #[doc(hidden)]
    pub commit_delay: Duration,
}

impl StoreOptions {
    pub const DEFAULT_MAX_PENDING_BYTES: usize = 64 << 20;

    /// The defaults, with `durability`.
    pub fn new(durability: Durability) -> StoreOptions {
        StoreOptions {
            durability,
            min_free_disk: DiskReserve::DEFAULT,
            max_pending_bytes: StoreOptions::DEFAULT_MAX_PENDING_BYTES,
            commit_delay: Duration::ZERO,
        }
    }
}

/// Free space to keep on a file system: a number of bytes, or a percentage of its size.
///
/// Written as a whole number with an optional unit: `"256MB"`, `"1GiB"`, `"512 KB"`, `"12345"`
/// (bytes), `"0"` (no reserve), or a percentage, `"5%"`. Units are case-insensitive: `B`, `KB`,
/// `MB`, `GB`, `TB` count in powers of 1000, `KiB`, `MiB`, `GiB`, `TiB` in powers of 1024.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskReserve {
    Bytes(u64),
    /// Percent of the file system's size, 0 to 100.
    Percent(u8),
}

impl DiskReserve {
    /// 256 MB: room for the acknowledgements, deletes and engine maintenance that free space
    /// again, with a margin for a burst of messages accepted just before the check.
    pub const DEFAULT: DiskReserve = DiskReserve::Bytes(256_000_000);

    /// The reserve in bytes on a file system of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            DiskReserve::Bytes(bytes) => bytes,
            DiskReserve::Percent(percent) => {
                u64::try_from(u128::from(total) * u128::from(percent) / 100).unwrap_or(u64::MAX)
            }
        }
    }
}

impl Default for DiskReserve {
    fn default() -> DiskReserve {
        DiskReserve::DEFAULT
    }
}

/// Units, largest first within each family; `Display` picks the one giving the smallest
/// whole number.
const UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("B", 1),
];

impl fmt::Display for DiskReserve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DiskReserve::Percent(percent) => write!(f, "{percent}%"),
            DiskReserve::Bytes(0) => f.write_str("0"),
            DiskReserve::Bytes(bytes) => {
                let (count, unit) = UNITS
                    .iter()
                    .filter(|(_, size)| bytes % size == 0)
                    .map(|(unit, size)| (bytes / size, *unit))
                    .min_by_key(|(count, _)| *count)
                    .unwrap_or((bytes, "B"));
                if unit == "B" {
                    write!(f, "{count}")
                } else {
                    write!(f, "{count}{unit}")
                }
            }
        }
    }
}

/// A disk reserve that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid free disk space {text:?}: {reason}; expected a whole number of bytes with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), such as \"256MB\", or a percentage of the file system, such as \"5%\""
)]
pub struct ParseDiskReserveError {
    text: String,
    reason: &'static str,
}

impl FromStr for DiskReserve {
    type Err = ParseDiskReserveError;

    fn from_str(text: &str) -> Result<DiskReserve, ParseDiskReserveError> {
        let error = |reason| ParseDiskReserveError {
            text: text.to_owned(),
            reason,
        };
        let trimmed = text.trim();
        let digits = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(digits);
        if number.is_empty() {
            return Err(error("no number"));
        }
        let number: u64 = number.parse().map_err(|_| error("number too large"))?;
        let unit = unit.trim_start();
        if unit == "%" {
            return u8::try_from(number)
                .ok()
                .filter(|percent| *percent <= 100)
                .map(DiskReserve::Percent)
                .ok_or_else(|| error("a percentage is at most 100"));
        }
        let size = if unit.is_empty() {
            1
        } else {
            UNITS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(unit))
                .map(|(_, size)| *size)
                .ok_or_else(|| error("unknown unit"))?
        };
        number
            .checked_mul(size)
            .map(DiskReserve::Bytes)
            .ok_or_else(|| error("number too large"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bytes_units_and_percentages() {
        let cases = [
            ("256MB", DiskReserve::Bytes(256_000_000)),
            ("1GiB", DiskReserve::Bytes(1 << 30)),
            ("512KB", DiskReserve::Bytes(512_000)),
            ("512 kb", DiskReserve::Bytes(512_000)),
            ("3 mib", DiskReserve::Bytes(3 << 20)),
            ("2TB", DiskReserve::Bytes(2_000_000_000_000)),
            ("1tib", DiskReserve::Bytes(1 << 40)),
            ("7B", DiskReserve::Bytes(7)),
            ("0", DiskReserve::Bytes(0)),
            ("12345", DiskReserve::Bytes(12345)),
            (" 5% ", DiskReserve::Percent(5)),
            ("100%", DiskReserve::Percent(100)),
            ("0%", DiskReserve::Percent(0)),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<DiskReserve>(), Ok(expected), "{text}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_size() {
        for text in [
            "",
            "MB",
            "-5MB",
            "1.5GB",
            "5 %%",
            "101%",
            "12 parsecs",
            "99999999999999999999",
            "20000000TB",
        ] {
            let error = text.parse::<DiskReserve>().unwrap_err();
            assert!(error.to_string().contains("\"256MB\""), "{error}");
        }
    }

    #[test]
    fn display_round_trips() {
        for reserve in [
            DiskReserve::DEFAULT,
            DiskReserve::Bytes(0),
            DiskReserve::Bytes(1),
            DiskReserve::Bytes(12345),
            DiskReserve::Bytes(1 << 30),
            DiskReserve::Bytes(3 << 20),
            DiskReserve::Bytes(1_024_000),
            DiskReserve::Bytes(u64::MAX),
            DiskReserve::Percent(5),
            DiskReserve::Percent(0),
        ] {
            let text = reserve.to_string();
            assert_eq!(text.parse::<DiskReserve>(), Ok(reserve), "{text}");
        }
        assert_eq!(DiskReserve::DEFAULT.to_string(), "256MB");
        assert_eq!(DiskReserve::Bytes(1 << 30).to_string(), "1GiB");
        assert_eq!(DiskReserve::Percent(5).to_string(), "5%");
    }

    #[test]
    fn percent_is_of_the_file_system() {
        assert_eq!(DiskReserve::Percent(5).bytes(1_000_000), 50_000);
        assert_eq!(DiskReserve::Percent(100).bytes(u64::MAX), u64::MAX);
        assert_eq!(DiskReserve::Bytes(42).bytes(7), 42);
    }
}
