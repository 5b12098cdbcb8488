//! A log-linear histogram of durations in nanoseconds (about 3 % resolution, fixed memory) for
//! end-to-end latency and time to CONNACK, merged across tasks at the end of a run.

/// Sub-buckets per power of two: 2^5 = 32, so a bucket spans at most 1/32 of its value.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this have a bucket each.
const LINEAR: u64 = 2 * SUB;
/// Enough buckets for every u64.
const BUCKETS: usize = (LINEAR + (64 - (SUB_BITS as u64 + 1)) * SUB) as usize;

#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new()
    }
}

/// Summary of a histogram, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub mean: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

fn bucket(value: u64) -> usize {
    if value < LINEAR {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros(); // >= SUB_BITS + 1
    let shift = exponent - SUB_BITS;
    let sub = (value >> shift) & (SUB - 1);
    (LINEAR + u64::from(exponent - SUB_BITS - 1) * SUB + sub) as usize
}

/// The smallest value that falls in `index`.
fn lower_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < LINEAR {
        return index;
    }
    let exponent = (index - LINEAR) / SUB + u64::from(SUB_BITS) + 1;
    let sub = (index - LINEAR) % SUB;
    (SUB + sub) << (exponent - u64::from(SUB_BITS))
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    pub fn record(&mut self, value: u64) {
        self.counts[bucket(value)] += 1;
        self.total += 1;
        self.sum += u128::from(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The value below which a fraction `q` of the samples lie (midpoint of its bucket, kept
    /// within the observed minimum and maximum).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let low = lower_bound(index);
                let high = if index + 1 < BUCKETS {
                    lower_bound(index + 1)
                } else {
                    u64::MAX
                };
                let mid = low + (high - low) / 2;
                return mid.clamp(self.min, self.max);
            }
        }
        self.max
    }

    pub fn percentiles(&self) -> Percentiles {
        if self.total == 0 {
            return Percentiles::default();
        }
        Percentiles {
            count: self.total,
            min: self.min,
            mean: (self.sum / u128::from(self.total)) as u64,
            p50: self.quantile(0.50),
            p90: self.quantile(0.90),
            p99: self.quantile(0.99),
            p999: self.quantile(0.999),
            max: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_u64() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
        for index in 1..BUCKETS {
            let low = lower_bound(index);
            assert_eq!(bucket(low), index, "index {index}");
            assert_eq!(bucket(low - 1), index - 1, "index {index}");
        }
    }

    #[test]
    fn quantiles_are_within_three_percent() {
        let mut histogram = Histogram::new();
        for value in 1..=100_000u64 {
            histogram.record(value * 1000);
        }
        let p = histogram.percentiles();
        let near = |got: u64, want: u64| (got as f64 - want as f64).abs() / want as f64 <= 0.032;
        assert!(near(p.p50, 50_000_000), "{}", p.p50);
        assert!(near(p.p99, 99_000_000), "{}", p.p99);
        assert!(near(p.p999, 99_900_000), "{}", p.p999);
        assert_eq!(p.min, 1000);
        assert_eq!(p.max, 100_000_000);
        assert_eq!(p.count, 100_000);
    }

    #[test]
    fn merge_adds_up() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        a.record(10);
        b.record(1_000_000);
        a.merge(&b);
        assert_eq!(a.percentiles().count, 2);
        assert_eq!(a.percentiles().min, 10);
        assert_eq!(a.percentiles().max, 1_000_000);
        assert_eq!(Histogram::new().percentiles(), Percentiles::default());
    }
}
