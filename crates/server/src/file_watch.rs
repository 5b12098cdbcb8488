//! Files the server reads again when they change (TLS certificates, password and ACL files):
//! how often they are looked at, and the loop that looks until the server stops.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// How often watched files are looked at, unless the environment says otherwise.
pub(crate) const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// The interval the tuning variable `var` sets (milliseconds; not part of the configuration
/// file, tests shorten it), [`WATCH_INTERVAL`] without it; `None` for 0 (not watched: reloads
/// come from SIGHUP only).
pub(crate) fn watch_interval(var: &str) -> Option<Duration> {
    match std::env::var(var) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(0) => None,
            Ok(ms) => Some(Duration::from_millis(ms)),
            Err(_) => {
                tracing::warn!(value = %text, "{var} is not a number of milliseconds: ignored");
                Some(WATCH_INTERVAL)
            }
        },
        Err(_) => Some(WATCH_INTERVAL),
    }
}

/// Runs `look` every `interval` (a late tick is delayed, not doubled) until `stop` changes.
pub(crate) async fn every<F, Fut>(interval: Duration, mut stop: watch::Receiver<bool>, mut look: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => look().await,
        }
    }
}
