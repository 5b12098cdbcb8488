//! Failed authentications, counted per source address and per client id: after a few, each
//! next verification waits (exponential backoff), then the address or client id is refused for a
//! while without any verification (CONNACK 0x9F Connection rate exceeded). The limits are the
//! `failure_limit` table of `[auth]` (docs/configuration.md).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Keys tracked per map (source addresses, client ids): each map holds at most this many.
const TRACKED_MAX: usize = 10_000;

/// `[auth] failure_limit = { ... }`: how failed authentications are slowed down and banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailureLimit {
    /// Failures let through with no delay.
    pub free: u32,
    /// The delay before the verification after the first failure beyond the free ones,
    /// doubled at each further failure up to `max_delay_ms`.
    pub first_delay_ms: u64,
    pub max_delay_ms: u64,
    /// Failures after which the address or client id is refused without verification; 0: never.
    pub ban_after: u32,
    /// How long a ban lasts, and how long failures are remembered, from the last one.
    pub ban_seconds: u64,
    /// Whether failures are also counted per client id (not only per source address). Counting
    /// them lets nobody guess one device's password from many addresses, but lets anyone who
    /// knows a client id slow its logins down.
    pub by_client_id: bool,
}

impl Default for FailureLimit {
    fn default() -> FailureLimit {
        FailureLimit {
            free: 3,
            first_delay_ms: 50,
            max_delay_ms: 2000,
            ban_after: 8,
            ban_seconds: 60,
            by_client_id: true,
        }
    }
}

impl FailureLimit {
    /// Refuses settings that cannot work as written.
    pub fn check(&self) -> Result<(), String> {
        if self.first_delay_ms > self.max_delay_ms {
            return Err(format!(
                "failure_limit: first_delay_ms ({}) is more than max_delay_ms ({})",
                self.first_delay_ms, self.max_delay_ms
            ));
        }
        if self.ban_after != 0 && self.ban_after <= self.free {
            return Err(format!(
                "failure_limit: ban_after ({}) must be more than free ({}), or 0 for no ban",
                self.ban_after, self.free
            ));
        }
        if self.ban_seconds == 0 {
            return Err("failure_limit: ban_seconds must be at least 1".to_owned());
        }
        Ok(())
    }

    fn memory(&self) -> Duration {
        Duration::from_secs(self.ban_seconds)
    }
}

/// Recent failures of one source address or client id.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// What the failures so far impose on the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Penalty {
    None,
    Delay(Duration),
    Banned,
}

impl Penalty {
    fn worse(self, other: Penalty) -> Penalty {
        match (self, other) {
            (Penalty::Banned, _) | (_, Penalty::Banned) => Penalty::Banned,
            (Penalty::Delay(a), Penalty::Delay(b)) => Penalty::Delay(a.max(b)),
            (Penalty::Delay(d), _) | (_, Penalty::Delay(d)) => Penalty::Delay(d),
            _ => Penalty::None,
        }
    }
}

/// Failures per key, in a map of bounded size.
struct FailureMap<K> {
    entries: HashMap<K, Failures>,
}

impl<K: Hash + Eq> FailureMap<K> {
    fn new() -> Self {
        FailureMap {
            entries: HashMap::new(),
        }
    }

    fn record(&mut self, key: K, limit: &FailureLimit, now: Instant) {
        let memory = limit.memory();
        if !self.entries.contains_key(&key) && self.entries.len() >= TRACKED_MAX {
            self.entries
                .retain(|_, failures| now.duration_since(failures.last) < memory);
            if self.entries.len() >= TRACKED_MAX {
                // Full of recent failures: the newcomer is not tracked (the other map, or
                // the next purge, still limits it).
                return;
            }
        }
        let entry = self.entries.entry(key).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.duration_since(entry.last) >= memory {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
    }

    fn penalty<Q>(&self, key: &Q, limit: &FailureLimit, now: Instant) -> Penalty
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let Some(failures) = self.entries.get(key) else {
            return Penalty::None;
        };
        if now.duration_since(failures.last) >= limit.memory() {
            return Penalty::None;
        }
        if limit.ban_after != 0 && failures.count >= limit.ban_after {
            return Penalty::Banned;
        }
        if failures.count < limit.free {
            return Penalty::None;
        }
        let doublings = (failures.count - limit.free).min(16);
        let first = Duration::from_millis(limit.first_delay_ms);
        Penalty::Delay(
            first
                .saturating_mul(1 << doublings)
                .min(Duration::from_millis(limit.max_delay_ms)),
        )
    }

    fn forget<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.remove(key);
    }
}

/// Failures by source address and by client id, under one set of limits.
pub(crate) struct FailureLimiter {
    limit: FailureLimit,
    by_addr: FailureMap<IpAddr>,
    by_client: FailureMap<Box<str>>,
}

impl FailureLimiter {
    pub(crate) fn new(limit: FailureLimit) -> FailureLimiter {
        FailureLimiter {
            limit,
            by_addr: FailureMap::new(),
            by_client: FailureMap::new(),
        }
    }

    /// What the next attempt from `addr` for `client_id` must bear.
    pub(crate) fn penalty(&self, addr: Option<IpAddr>, client_id: &str, now: Instant) -> Penalty {
        let limit = &self.limit;
        let by_addr = addr.map_or(Penalty::None, |addr| {
            self.by_addr.penalty(&addr, limit, now)
        });
        if !limit.by_client_id {
            return by_addr;
        }
        by_addr.worse(self.by_client.penalty(client_id, limit, now))
    }

    pub(crate) fn failed(&mut self, addr: Option<IpAddr>, client_id: &str, now: Instant) {
        if let Some(addr) = addr {
            self.by_addr.record(addr, &self.limit, now);
        }
        if self.limit.by_client_id && !client_id.is_empty() {
            self.by_client
                .record(Box::from(client_id), &self.limit, now);
        }
    }

    pub(crate) fn succeeded(&mut self, client_id: &str) {
        self.by_client.forget(client_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: failures are limited, backoff then a temporary ban, per key, and forgotten
    /// after the ban time.
    #[test]
    fn backoff_then_ban_then_forgotten() {
        let limit = FailureLimit::default();
        let mut map = FailureMap::<IpAddr>::new();
        let addr = IpAddr::from([192, 0, 2, 1]);
        let start = Instant::now();
        let first = Duration::from_millis(limit.first_delay_ms);
        for _ in 0..limit.free {
            assert_eq!(map.penalty(&addr, &limit, start), Penalty::None);
            map.record(addr, &limit, start);
        }
        assert_eq!(map.penalty(&addr, &limit, start), Penalty::Delay(first));
        map.record(addr, &limit, start);
        assert_eq!(map.penalty(&addr, &limit, start), Penalty::Delay(first * 2));
        for _ in limit.free + 1..limit.ban_after {
            map.record(addr, &limit, start);
        }
        assert_eq!(map.penalty(&addr, &limit, start), Penalty::Banned);
        let later = start + limit.memory();
        assert_eq!(map.penalty(&addr, &limit, later), Penalty::None);
        map.record(addr, &limit, later);
        assert_eq!(map.entries[&addr].count, 1);
    }

    /// Issue 12: the limits are configuration — no ban with `ban_after = 0` (the delay stays
    /// capped), and client ids not counted with `by_client_id = false`.
    #[test]
    fn the_limits_are_configurable() {
        let limit = FailureLimit {
            free: 1,
            first_delay_ms: 10,
            max_delay_ms: 40,
            ban_after: 0,
            ban_seconds: 5,
            by_client_id: false,
        };
        limit.check().unwrap();
        let mut limiter = FailureLimiter::new(limit);
        let addr = Some(IpAddr::from([192, 0, 2, 7]));
        let now = Instant::now();
        for _ in 0..100 {
            limiter.failed(addr, "device", now);
        }
        assert_eq!(
            limiter.penalty(addr, "device", now),
            Penalty::Delay(Duration::from_millis(40))
        );
        // Another address, the same client id: not limited.
        assert_eq!(
            limiter.penalty(Some(IpAddr::from([192, 0, 2, 8])), "device", now),
            Penalty::None
        );
        assert_eq!(
            limiter.penalty(addr, "device", now + Duration::from_secs(5)),
            Penalty::None
        );
    }

    /// Settings that cannot work are refused with a message that names the keys.
    #[test]
    fn impossible_limits_are_refused() {
        let bad = [
            FailureLimit {
                first_delay_ms: 3000,
                ..FailureLimit::default()
            },
            FailureLimit {
                ban_after: 2,
                ..FailureLimit::default()
            },
            FailureLimit {
                ban_seconds: 0,
                ..FailureLimit::default()
            },
        ];
        for limit in bad {
            let error = limit.check().unwrap_err();
            assert!(error.starts_with("failure_limit: "), "{error}");
        }
        FailureLimit::default().check().unwrap();
    }

    /// Issue 12: the tracking maps are bounded.
    #[test]
    fn tracking_is_bounded() {
        let limit = FailureLimit::default();
        let mut map = FailureMap::<u32>::new();
        let now = Instant::now();
        for key in 0..(TRACKED_MAX as u32 + 50) {
            map.record(key, &limit, now);
        }
        assert_eq!(map.entries.len(), TRACKED_MAX);
        map.record(u32::MAX, &limit, now + limit.memory());
        assert_eq!(map.entries.len(), 1);
    }
}
