//! The sweep of unstored deliveries: the sessions that hold some, and how a session's unstored
//! deliveries are stored (after the grace period, when the connection goes, or before a stored
//! delivery is sent behind them).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tern_codec::MqttStr;

use crate::message::Delivery;
use crate::persist::{Change, Persistence, RoutedBody};
use crate::session::{Session, SessionState};
use crate::types::{Seq, Wakeup};
use crate::unstored::Durability;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The sessions holding unstored deliveries, swept every half grace period by the broker's
/// timer task while there are any: a delivery is stored between one and one and a half grace
/// periods after it was routed.
pub(crate) struct Sweeper {
    grace: Duration,
    listed: Mutex<Listed>,
    /// The timer task's, woken when the list stops being empty.
    wakeup: Mutex<Option<Arc<dyn Wakeup>>>,
}

#[derive(Default)]
struct Listed {
    /// Each session at most once (its `listed` flag says whether it is here).
    sessions: Vec<Arc<Session>>,
    /// When the list last stopped being empty, or was last swept.
    since: Option<Instant>,
}

impl Sweeper {
    pub(crate) fn new(grace: Duration) -> Sweeper {
        Sweeper {
            grace,
            listed: Mutex::default(),
            wakeup: Mutex::default(),
        }
    }

    pub(crate) fn set_wakeup(&self, wakeup: Arc<dyn Wakeup>) {
        *lock(&self.wakeup) = Some(wakeup);
    }

    /// Adds a session whose `listed` flag its caller has just set.
    pub(crate) fn list(&self, session: &Arc<Session>, now: Instant) {
        let first = {
            let mut listed = lock(&self.listed);
            listed.sessions.push(session.clone());
            if listed.sessions.len() == 1 {
                listed.since = Some(now);
            }
            listed.sessions.len() == 1
        };
        if first && let Some(wakeup) = lock(&self.wakeup).as_ref() {
            wakeup.wake();
        }
    }

    /// When the next sweep is due, if anything is listed.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.due_for(&lock(&self.listed))
    }

    fn due_for(&self, listed: &Listed) -> Option<Instant> {
        if listed.sessions.is_empty() {
            return None;
        }
        listed.since.map(|since| since + self.grace / 2)
    }

    /// Stores the deliveries unstored for longer than the grace period, if a sweep is due.
    pub(crate) fn sweep(&self, persist: Option<&dyn Persistence>, now: Instant) {
        let sessions = {
            let mut listed = lock(&self.listed);
            if self.due_for(&listed).is_none_or(|due| due > now) {
                return;
            }
            listed.since = Some(now);
            std::mem::take(&mut listed.sessions)
        };
        let cutoff = now.checked_sub(self.grace);
        let mut still = Vec::new();
        for session in sessions {
            let mut state = session.lock();
            let left = match cutoff {
                Some(cutoff) => state.store_unstored(session.client_id(), persist, Some(cutoff)),
                None => None,
            };
            if left.is_some() || (cutoff.is_none() && state.unstored > 0) {
                drop(state);
                still.push(session);
            } else {
                state.listed = false;
            }
        }
        if !still.is_empty() {
            lock(&self.listed).sessions.append(&mut still);
        }
    }
}

/// One pass of [`SessionState::store_unstored`].
struct Sweep<'a> {
    persist: Option<&'a dyn Persistence>,
    cutoff: Option<Instant>,
    /// Deliveries left unstored, and when the oldest of them was routed.
    kept: usize,
    oldest: Option<Instant>,
}

impl<'a> Sweep<'a> {
    fn new(persist: Option<&'a dyn Persistence>, cutoff: Option<Instant>) -> Sweep<'a> {
        Sweep {
            persist,
            cutoff,
            kept: 0,
            oldest: None,
        }
    }

    /// Whether a delivery is unstored and old enough to be stored.
    fn due(&self, durability: &Durability) -> bool {
        match durability {
            Durability::Unstored(unstored) => {
                self.cutoff.is_none_or(|cutoff| unstored.since() <= cutoff)
            }
            Durability::Volatile | Durability::Stored => false,
        }
    }

    /// Stores the delivery of one queue or in-flight entry if it is unstored and `due`
    /// (`change` is its entry's change): it becomes stored, or volatile if its session is no
    /// longer stored. Returns whether it was unstored.
    fn entry(
        &mut self,
        durability: &mut Durability,
        delivery: &Delivery,
        due: bool,
        change: impl FnOnce() -> Change,
    ) -> bool {
        let Durability::Unstored(unstored) = durability else {
            return false;
        };
        if !due {
            let since = unstored.since();
            self.kept += 1;
            self.oldest = Some(self.oldest.map_or(since, |oldest| oldest.min(since)));
            return true;
        }
        let (now, seq) = match self.persist {
            Some(persist) => {
                // Body, entry and the router's release, as the router itself would store it.
                let mut body = RoutedBody::new(Some(persist));
                body.hold(&delivery.message);
                (Durability::Stored, persist.submit(change()))
            }
            None => (Durability::Volatile, Seq::NONE),
        };
        if let Durability::Unstored(unstored) = std::mem::replace(durability, now) {
            // The publisher's acknowledgement now waits for the store (or for nothing).
            unstored.stored(seq);
        }
        true
    }
}

impl SessionState {
    /// Submits the unstored deliveries routed at or before `cutoff` (all of them with `None`)
    /// to the store, and lets their publishers' acknowledgements wait for that instead. A
    /// session no longer stored keeps nothing: its deliveries just stop holding the
    /// acknowledgements back. Returns when the oldest delivery left unstored was routed.
    pub(crate) fn store_unstored(
        &mut self,
        client_id: &MqttStr,
        persist: Option<&dyn Persistence>,
        cutoff: Option<Instant>,
    ) -> Option<Instant> {
        let mut sweep = Sweep::new(persist.filter(|_| self.stored), cutoff);
        let last_due = self
            .inflight
            .iter()
            .rposition(|entry| sweep.due(&entry.durability));
        let mut left = self
            .unstored
            .saturating_sub(self.sweep_inflight(client_id, &mut sweep, last_due));
        // The queue (whose order is in its keys) from the back: unstored deliveries are recent
        // ones, so a long stored backlog is not walked.
        for queued in self.queue.iter_mut().rev() {
            if left == 0 {
                break;
            }
            let change = || Change::Queued {
                client_id: client_id.clone(),
                position: queued.position,
                delivery: queued.delivery.stored(),
            };
            let due = sweep.due(&queued.durability);
            if sweep.entry(&mut queued.durability, &queued.delivery, due, change) {
                left -= 1;
            }
        }
        self.unstored = sweep.kept;
        sweep.oldest
    }

    /// Stores every unstored delivery in flight: before a stored delivery goes in flight
    /// behind them, so the store keeps the order they were sent in.
    pub(crate) fn store_unstored_inflight(
        &mut self,
        client_id: &MqttStr,
        persist: Option<&dyn Persistence>,
    ) {
        if self.unstored == 0 {
            return;
        }
        let mut sweep = Sweep::new(persist.filter(|_| self.stored), None);
        let seen = self.sweep_inflight(client_id, &mut sweep, Some(usize::MAX));
        self.unstored = self.unstored.saturating_sub(seen);
    }

    /// Stores the unstored in-flight deliveries up to index `through`, oldest first, and keeps
    /// the later ones: the store numbers in-flight entries in the order they reach it and sends
    /// them again in that order after a restart [MQTT-4.6.0-1], so none may overtake an older
    /// one (routing times of two publishers may be out of order by a little). Returns how many
    /// were unstored.
    fn sweep_inflight(
        &mut self,
        client_id: &MqttStr,
        sweep: &mut Sweep<'_>,
        through: Option<usize>,
    ) -> usize {
        let mut seen = 0;
        for (index, entry) in self.inflight.iter_mut().enumerate() {
            let change = || Change::Inflight {
                client_id: client_id.clone(),
                packet_id: entry.packet_id,
                state: entry.state,
                delivery: entry.delivery.stored(),
            };
            let due = through.is_some_and(|last| index <= last);
            if sweep.entry(&mut entry.durability, &entry.delivery, due, change) {
                seen += 1;
            }
        }
        seen
    }
}
