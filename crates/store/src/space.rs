//! Watching the free space of the data directory's file system, so that the store stops
//! taking new durable work before the engine runs out of space (the low watermark), and takes
//! it again once there is room, without flapping around the threshold.
//!
//! The commit thread measures (one `statvfs`) before a commit once 100 ms have passed or 1 MiB
//! has been written since the last measurement, on idle ticks, and while a failed commit waits
//! for its retry; the result is published through atomics that `accepts_new_work` and
//! `status` read.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::options::DiskReserve;

/// Measure again once this long has passed since the last measurement...
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// ...or once this much has been written.
pub(crate) const CHECK_BYTES: u64 = 1 << 20;
/// The least margin above the watermark before new work is taken again.
const MIN_HYSTERESIS: u64 = 1 << 20;

/// `free` when it is unknown (never measured, or `statvfs` failed).
const UNKNOWN: u64 = u64::MAX;

/// What the commit thread publishes about the file system.
#[derive(Debug)]
pub(crate) struct SpaceState {
    /// Free bytes at the last measurement, or `UNKNOWN`.
    free: AtomicU64,
    /// The watermark in bytes at the last measurement.
    watermark: AtomicU64,
    /// Below the watermark (and not yet back above it with the margin).
    low: AtomicBool,
}

impl SpaceState {
    pub(crate) fn new(watermark: u64) -> SpaceState {
        SpaceState {
            free: AtomicU64::new(UNKNOWN),
            watermark: AtomicU64::new(watermark),
            low: AtomicBool::new(false),
        }
    }

    pub(crate) fn low(&self) -> bool {
        self.low.load(Ordering::Acquire)
    }

    pub(crate) fn free(&self) -> Option<u64> {
        Some(self.free.load(Ordering::Relaxed)).filter(|&free| free != UNKNOWN)
    }

    pub(crate) fn watermark(&self) -> u64 {
        self.watermark.load(Ordering::Relaxed)
    }
}

/// Free and total bytes of the file system holding `path`, for an unprivileged user (the
/// blocks reserved for root are not counted as free).
#[cfg(unix)]
pub(crate) fn measure(path: &Path) -> std::io::Result<(u64, u64)> {
    let stat = rustix::fs::statvfs(path)?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let total = stat.f_blocks.saturating_mul(stat.f_frsize);
    Ok((free, total))
}

#[cfg(not(unix))]
pub(crate) fn measure(_path: &Path) -> std::io::Result<(u64, u64)> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "free space is not measured on this platform",
    ))
}

/// The commit thread's side: when to measure, and the transitions it logs.
#[derive(Debug)]
pub(crate) struct SpaceWatch {
    dir: PathBuf,
    reserve: DiskReserve,
    last_check: Option<Instant>,
    written_since: u64,
    /// A failed measurement has been logged (once, until one succeeds again).
    failure_logged: bool,
}

impl SpaceWatch {
    pub(crate) fn new(dir: PathBuf, reserve: DiskReserve) -> SpaceWatch {
        SpaceWatch {
            dir,
            reserve,
            last_check: None,
            written_since: 0,
            failure_logged: false,
        }
    }

    /// Counts bytes written since the last measurement.
    pub(crate) fn wrote(&mut self, bytes: u64) {
        self.written_since = self.written_since.saturating_add(bytes);
    }

    /// Measures if it is time to (or `force`); returns the free bytes if it measured.
    pub(crate) fn maybe_check(&mut self, state: &SpaceState, force: bool) -> Option<u64> {
        let due = force
            || self.written_since >= CHECK_BYTES
            || self
                .last_check
                .is_none_or(|last| last.elapsed() >= CHECK_INTERVAL);
        if due { self.check(state) } else { None }
    }

    /// Measures now and publishes the result; logs a change between refusing and accepting.
    pub(crate) fn check(&mut self, state: &SpaceState) -> Option<u64> {
        self.last_check = Some(Instant::now());
        self.written_since = 0;
        let (free, total) = match measure(&self.dir) {
            Ok(measured) => {
                if self.failure_logged {
                    tracing::info!(dir = %self.dir.display(), "free space of the data directory can be measured again");
                    self.failure_logged = false;
                }
                measured
            }
            Err(error) => {
                // Unknown is not low: a file system that cannot say must not stop the broker.
                if !self.failure_logged {
                    tracing::warn!(dir = %self.dir.display(), %error, "cannot measure the free space of the data directory; the low watermark is not enforced until it can");
                    self.failure_logged = true;
                }
                state.free.store(UNKNOWN, Ordering::Relaxed);
                self.set_low(state, false, None, state.watermark());
                return None;
            }
        };
        let watermark = self.reserve.bytes(total);
        state.free.store(free, Ordering::Relaxed);
        state.watermark.store(watermark, Ordering::Relaxed);
        let low = if state.low() {
            free < watermark.saturating_add(hysteresis(watermark))
        } else {
            free < watermark
        };
        self.set_low(state, low, Some(free), watermark);
        Some(free)
    }

    fn set_low(&self, state: &SpaceState, low: bool, free: Option<u64>, watermark: u64) {
        if state.low.swap(low, Ordering::AcqRel) == low {
            return;
        }
        let Some(free) = free else {
            // Reached only from low to not low, after a failed measurement (logged already).
            tracing::info!(dir = %self.dir.display(), "accepting new messages, retained messages and subscriptions again: free space is unknown");
            return;
        };
        if low {
            tracing::warn!(
                dir = %self.dir.display(),
                free,
                watermark,
                min_free_disk = %self.reserve,
                "data directory's file system is below its low watermark: refusing new messages, retained messages and subscriptions; free space to recover"
            );
        } else {
            tracing::info!(
                dir = %self.dir.display(),
                free,
                watermark,
                "data directory's file system is above its low watermark again: accepting new messages, retained messages and subscriptions"
            );
        }
    }
}

/// How far above the watermark free space must rise before new work is taken again.
pub(crate) fn hysteresis(watermark: u64) -> u64 {
    (watermark / 10).max(MIN_HYSTERESIS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_file_system_of_a_directory() {
        let (free, total) = measure(&std::env::temp_dir()).unwrap();
        assert!(total > 0);
        assert!(free <= total);
    }

    #[test]
    fn refuses_below_the_watermark_and_accepts_above_it_with_a_margin() {
        let dir = std::env::temp_dir();
        let (free, _) = measure(&dir).unwrap();
        // A watermark above what is free: low.
        let mut watch = SpaceWatch::new(dir.clone(), DiskReserve::Bytes(free + (64 << 20)));
        let state = SpaceState::new(0);
        watch.check(&state);
        assert!(state.low());
        assert!(state.free().is_some());
        // A watermark of zero: never low.
        let mut watch = SpaceWatch::new(dir.clone(), DiskReserve::Bytes(0));
        watch.check(&state);
        assert!(!state.low());
        assert_eq!(hysteresis(0), 1 << 20);
        assert_eq!(hysteresis(1 << 30), (1 << 30) / 10);
    }

    #[test]
    fn a_failed_measurement_is_unknown_not_low() {
        let state = SpaceState::new(0);
        state.low.store(true, Ordering::Relaxed);
        let mut watch = SpaceWatch::new(
            PathBuf::from("/nonexistent/tern-store-space-test"),
            DiskReserve::Bytes(u64::MAX),
        );
        assert_eq!(watch.check(&state), None);
        assert!(!state.low());
        assert_eq!(state.free(), None);
    }

    #[test]
    fn measures_when_due_only() {
        let state = SpaceState::new(0);
        let mut watch = SpaceWatch::new(std::env::temp_dir(), DiskReserve::Bytes(0));
        assert!(watch.maybe_check(&state, false).is_some(), "first check");
        // As if just measured, however slowly this test runs.
        watch.last_check = Some(Instant::now() + Duration::from_secs(3600));
        assert!(watch.maybe_check(&state, false).is_none(), "just checked");
        watch.last_check = Some(Instant::now() + Duration::from_secs(3600));
        watch.wrote(CHECK_BYTES);
        assert!(watch.maybe_check(&state, false).is_some(), "1 MiB written");
        assert!(watch.maybe_check(&state, true).is_some(), "forced");
    }
}
