//! Figures of the commit thread for the metrics endpoint: commits, their latency as a
//! histogram, and the bytes of changes committed. Written by the one commit thread only (no
//! contention), read by a scrape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the commit latency buckets, in seconds (the last bucket is +Inf).
pub const COMMIT_SECONDS_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// Live figures.
#[derive(Debug, Default)]
pub(crate) struct CommitStats {
    commits: AtomicU64,
    micros: AtomicU64,
    bytes: AtomicU64,
    buckets: [AtomicU64; COMMIT_SECONDS_BUCKETS.len()],
}

/// The commit figures at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommitFigures {
    /// Commits that succeeded.
    pub commits: u64,
    /// Their total duration, seconds.
    pub seconds_sum: f64,
    /// Commits at most as long as each bound of [`COMMIT_SECONDS_BUCKETS`] (cumulative).
    pub buckets: Vec<(f64, u64)>,
    /// Estimated bytes of the changes committed.
    pub bytes: u64,
}

impl CommitStats {
    /// Records a commit of `bytes` that took `took`.
    pub(crate) fn record(&self, took: Duration, bytes: u64) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.micros.fetch_add(micros, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        if let Some(index) = COMMIT_SECONDS_BUCKETS.iter().position(|&b| seconds <= b) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn figures(&self) -> CommitFigures {
        let mut cumulative = 0;
        let buckets = COMMIT_SECONDS_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(&bound, count)| {
                cumulative += count.load(Ordering::Relaxed);
                (bound, cumulative)
            })
            .collect();
        CommitFigures {
            commits: self.commits.load(Ordering::Relaxed),
            seconds_sum: self.micros.load(Ordering::Relaxed) as f64 / 1e6,
            buckets,
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}
