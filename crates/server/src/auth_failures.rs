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
/// How often a full map may be searched for stale entries.
const PURGE_EVERY: Duration = Duration::from_secs(1);

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
    /// Whether failures are also counted per client id (not only per source address): they
    /// delay guesses at one device's password from many addresses (a client id is delayed,
    /// never banned), at the price of letting anyone who knows a client id slow its logins
    /// down (by at most `max_delay_ms`).
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
    /// A ban turned into the longest delay.
    fn no_ban(self, limit: &FailureLimit) -> Penalty {
        match self {
            Penalty::Banned => Penalty::Delay(Duration::from_millis(limit.max_delay_ms)),
            other => other,
        }
    }

    fn worse(self, other: Penalty) -> Penalty {
        match (self, other) {
            (Penalty::Banned, _) | (_, Penalty::Banned) => Penalty::Banned,
            (Penalty::Delay(a), Penalty::Delay(b)) => Penalty::Delay(a.max(b)),
            (Penalty::Delay(d), _) | (_, Penalty::Delay(d)) => Penalty::Delay(d),
            _ => Penalty::None,
        }
    }
}

/// What `failures` impose under `limit` at `now`.
fn penalty_of(failures: &Failures, limit: &FailureLimit, now: Instant) -> Penalty {
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

/// Adds one failure at `now` (a count older than the memory starts again).
fn count(failures: &mut Failures, limit: &FailureLimit, now: Instant) {
    if now.duration_since(failures.last) >= limit.memory() {
        failures.count = 0;
    }
    failures.count = failures.count.saturating_add(1);
    failures.last = now;
}

/// Failures per key, in a map of bounded size. When the map is full of recent failures (a
/// flood from more keys than it holds), newcomers are counted together in one overflow entry
/// whose delay (never a ban: legitimate newcomers share it) applies to every key not tracked:
/// a flood slows unknown sources down rather than escaping the count.
struct FailureMap<K> {
    entries: HashMap<K, Failures>,
    overflow: Failures,
    /// When stale entries were last purged (at most once a second, not at every failure).
    purged: Instant,
}

impl<K: Hash + Eq> FailureMap<K> {
    fn new() -> Self {
        let now = Instant::now();
        FailureMap {
            entries: HashMap::new(),
            overflow: Failures {
                count: 0,
                last: now,
            },
            purged: now,
        }
    }

    fn record(&mut self, key: K, limit: &FailureLimit, now: Instant) {
        if let Some(failures) = self.entries.get_mut(&key) {
            return count(failures, limit, now);
        }
        if self.entries.len() >= TRACKED_MAX && now.duration_since(self.purged) >= PURGE_EVERY {
            let memory = limit.memory();
            self.entries
                .retain(|_, failures| now.duration_since(failures.last) < memory);
            self.purged = now;
        }
        if self.entries.len() >= TRACKED_MAX {
            return count(&mut self.overflow, limit, now);
        }
        self.entries.insert(
            key,
            Failures {
                count: 1,
                last: now,
            },
        );
    }

    fn penalty<Q>(&self, key: &Q, limit: &FailureLimit, now: Instant) -> Penalty
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.entries.get(key) {
            Some(failures) => penalty_of(failures, limit, now),
            None => penalty_of(&self.overflow, limit, now).no_ban(limit),
        }
    }

    fn forget<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.remove(key);
    }
}

/// The key of a source address: an IPv4 address (an IPv4-mapped IPv6 one included) as it is,
/// an IPv6 address by its /64 (anyone with IPv6 holds a /64, 2^64 addresses: counting them
/// one by one would limit nothing).
fn address_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Failures by source address and by client id, under one set of limits. A source address is
/// delayed and then banned; a client id only delayed, never banned: anyone who knows a client
/// id could otherwise keep that device out (a ban per client id would lock it out from every
/// address).
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
            self.by_addr.penalty(&address_key(addr), limit, now)
        });
        if !limit.by_client_id {
            return by_addr;
        }
        by_addr.worse(self.by_client.penalty(client_id, limit, now).no_ban(limit))
    }

    pub(crate) fn failed(&mut self, addr: Option<IpAddr>, client_id: &str, now: Instant) {
        if let Some(addr) = addr {
            self.by_addr.record(address_key(addr), &self.limit, now);
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

    /// Issue 12: the tracking maps are bounded, and a full map does not let newcomers escape
    /// the count: they share one overflow entry whose delay (not a ban) applies to every key
    /// not tracked; stale entries make room again.
    #[test]
    fn tracking_is_bounded_and_a_full_map_still_counts() {
        let limit = FailureLimit::default();
        let mut map = FailureMap::<u32>::new();
        let now = Instant::now();
        for key in 0..TRACKED_MAX as u32 {
            map.record(key, &limit, now);
        }
        assert_eq!(map.entries.len(), TRACKED_MAX);
        let newcomer = u32::MAX;
        for _ in 0..limit.ban_after * 2 {
            assert_ne!(map.penalty(&newcomer, &limit, now), Penalty::Banned);
            map.record(newcomer, &limit, now);
        }
        assert_eq!(map.entries.len(), TRACKED_MAX);
        let max = Penalty::Delay(Duration::from_millis(limit.max_delay_ms));
        assert_eq!(map.penalty(&newcomer, &limit, now), max);
        assert_eq!(
            map.penalty(&(u32::MAX - 1), &limit, now),
            max,
            "any untracked key"
        );
        let later = now + limit.memory();
        map.record(newcomer, &limit, later);
        assert_eq!(map.entries.len(), 1, "stale entries purged");
        assert_eq!(map.penalty(&(u32::MAX - 1), &limit, later), Penalty::None);
    }

    /// Issue 12: an IPv6 source is counted by its /64 (one holder has 2^64 addresses); an
    /// IPv4-mapped one as the IPv4 address.
    #[test]
    fn ipv6_sources_are_counted_by_their_64() {
        let limit = FailureLimit::default();
        let mut limiter = FailureLimiter::new(limit);
        let now = Instant::now();
        for n in 0..limit.ban_after {
            let addr = IpAddr::from([0x2001, 0xdb8, 0, 7, n as u16, 1, 2, 3]);
            limiter.failed(Some(addr), &format!("c{n}"), now);
        }
        let same_64 = IpAddr::from([0x2001, 0xdb8, 0, 7, 0xffff, 9, 9, 9]);
        assert_eq!(limiter.penalty(Some(same_64), "new", now), Penalty::Banned);
        let other_64 = IpAddr::from([0x2001, 0xdb8, 0, 8, 0, 0, 0, 1]);
        assert_eq!(limiter.penalty(Some(other_64), "new", now), Penalty::None);
        for _ in 0..limit.ban_after {
            limiter.failed(Some(IpAddr::from([192, 0, 2, 9])), "v4", now);
        }
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
        assert_eq!(limiter.penalty(Some(mapped), "x", now), Penalty::Banned);
    }

    /// Issue 12: a client id is delayed, never banned: failures with a device's client id from
    /// many addresses do not lock that device out.
    #[test]
    fn a_client_id_is_delayed_never_banned() {
        let limit = FailureLimit::default();
        let mut limiter = FailureLimiter::new(limit);
        let now = Instant::now();
        for n in 0..limit.ban_after * 3 {
            limiter.failed(Some(IpAddr::from([198, 51, 100, n as u8])), "device-7", now);
        }
        let home = Some(IpAddr::from([203, 0, 113, 1]));
        assert_eq!(
            limiter.penalty(home, "device-7", now),
            Penalty::Delay(Duration::from_millis(limit.max_delay_ms))
        );
    }
}
