//! Wall-clock time for what is stored: the broker's deadlines are `Instant`s of one run, which
//! mean nothing to the next, so the store converts them to milliseconds since the Unix epoch
//! and back, through one (`Instant`, `SystemTime`) pair taken per commit or per load.

use std::time::{Duration, Instant, SystemTime};

/// One reading of both clocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    instant: Instant,
    /// Milliseconds since the Unix epoch at `instant`.
    wall_ms: u64,
}

impl Clock {
    pub(crate) fn now() -> Clock {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Clock {
            instant: Instant::now(),
            wall_ms: u64::try_from(wall.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// A clock reading for tests and benchmarks: `wall_ms` at `instant`.
    #[cfg(test)]
    pub(crate) fn at(instant: Instant, wall_ms: u64) -> Clock {
        Clock { instant, wall_ms }
    }

    #[cfg(test)]
    pub(crate) fn instant(&self) -> Instant {
        self.instant
    }

    pub(crate) fn wall_ms(&self) -> u64 {
        self.wall_ms
    }

    /// The wall-clock time of `at`, rounded up to the millisecond (a deadline never moves
    /// earlier).
    pub(crate) fn to_wall_ms(self, at: Instant) -> u64 {
        if at >= self.instant {
            let ahead = at - self.instant;
            let millis =
                ahead.as_millis() + u128::from(!ahead.subsec_nanos().is_multiple_of(1_000_000));
            self.wall_ms
                .saturating_add(u64::try_from(millis).unwrap_or(u64::MAX))
        } else {
            let behind = u64::try_from((self.instant - at).as_millis()).unwrap_or(u64::MAX);
            self.wall_ms.saturating_sub(behind)
        }
    }

    /// The `Instant` of this run for the wall-clock time `wall_ms`, and whether it has passed.
    /// A time too far in the past for `Instant` becomes the earliest one it can express.
    pub(crate) fn to_instant(self, wall_ms: u64) -> (Instant, bool) {
        if wall_ms > self.wall_ms {
            let ahead = Duration::from_millis(wall_ms - self.wall_ms);
            let at = self.instant.checked_add(ahead).unwrap_or(self.instant);
            (at, false)
        } else {
            let behind = Duration::from_millis(self.wall_ms - wall_ms);
            let at = self.instant.checked_sub(behind).unwrap_or(self.instant);
            (at, true)
        }
    }

    /// How long ago `wall_ms` was (zero if it is in the future: the clock was set back).
    pub(crate) fn elapsed_since(&self, wall_ms: u64) -> Duration {
        Duration::from_millis(self.wall_ms.saturating_sub(wall_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_across_runs() {
        let start = Instant::now();
        let first = Clock::at(start, 1_000_000);
        let deadline = start + Duration::from_millis(5_500);
        let wall = first.to_wall_ms(deadline);
        assert_eq!(wall, 1_005_500);

        // The next run starts 2 s of wall-clock later, with an unrelated Instant.
        let later = Instant::now() + Duration::from_secs(100);
        let second = Clock::at(later, 1_002_000);
        let (at, expired) = second.to_instant(wall);
        assert!(!expired);
        assert_eq!(at - later, Duration::from_millis(3_500));

        let third = Clock::at(later, 1_006_000);
        assert!(third.to_instant(wall).1);
        assert_eq!(third.elapsed_since(1_005_000), Duration::from_secs(1));
        assert_eq!(third.elapsed_since(2_000_000), Duration::ZERO);
    }

    #[test]
    fn rounds_deadlines_up_and_handles_the_past() {
        let start = Instant::now() + Duration::from_secs(10);
        let clock = Clock::at(start, 10_000);
        assert_eq!(clock.to_wall_ms(start + Duration::from_micros(1)), 10_001);
        assert_eq!(clock.to_wall_ms(start - Duration::from_millis(3)), 9_997);
    }
}
