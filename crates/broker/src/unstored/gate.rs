//! The publisher's side of unstored deliveries: the gate its acknowledgement waits on, and each
//! unstored delivery's hold on that gate.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crate::types::{Seq, Wakeup};

/// What a publisher's acknowledgement waits for besides its own store sequence number: its
/// deliveries that are neither acknowledged nor stored yet.
pub(crate) struct AckGate {
    /// Deliveries of the message that are unstored (each one an [`Unstored`] alive).
    open: AtomicUsize,
    /// The store sequence number the acknowledgement waits for: the highest of the deliveries
    /// stored since, and whatever the publisher set (retained message, other sessions).
    seq: AtomicU64,
    /// The publisher connection's, woken when the last delivery closes.
    wakeup: Arc<dyn Wakeup>,
}

impl fmt::Debug for AckGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckGate")
            .field("open", &self.open.load(Ordering::Relaxed))
            .field("seq", &self.seq.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl AckGate {
    pub(crate) fn new(wakeup: Arc<dyn Wakeup>) -> Arc<AckGate> {
        Arc::new(AckGate {
            open: AtomicUsize::new(0),
            seq: AtomicU64::new(0),
            wakeup,
        })
    }

    /// `None` while a delivery is still open; then the sequence number that must be durable.
    pub(crate) fn ready(&self) -> Option<Seq> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(Seq(self.seq.load(Ordering::Acquire)))
    }

    /// The acknowledgement also waits for `seq` to be durable.
    pub(crate) fn wait_for(&self, seq: Seq) {
        self.seq.fetch_max(seq.get(), Ordering::AcqRel);
    }
}

/// A QoS 1 PUBLISH's acknowledgement while its message is routed: the gate is made when the
/// first delivery stays unstored, so a publish without one allocates nothing for it.
pub(crate) struct AckHold<'a> {
    wakeup: &'a Arc<dyn Wakeup>,
    gate: Option<Arc<AckGate>>,
}

impl<'a> AckHold<'a> {
    /// `wakeup` is the publisher connection's.
    pub(crate) fn new(wakeup: &'a Arc<dyn Wakeup>) -> AckHold<'a> {
        AckHold { wakeup, gate: None }
    }

    /// The hold of one more delivery left unstored, routed at `now`.
    pub(crate) fn unstored(&mut self, now: Instant) -> Unstored {
        let gate = self
            .gate
            .get_or_insert_with(|| AckGate::new(self.wakeup.clone()));
        Unstored::new(gate, now)
    }

    /// The gate, if a delivery stayed unstored.
    pub(crate) fn into_gate(self) -> Option<Arc<AckGate>> {
        self.gate
    }
}

/// One unstored delivery's hold on its publisher's [`AckGate`]: the acknowledgement waits while
/// it lives. Dropping it (the subscriber acknowledged, or the delivery was discarded with its
/// session or by a limit) lets the acknowledgement go; [`Unstored::stored`] makes it wait for
/// the store instead.
pub(crate) struct Unstored {
    gate: Arc<AckGate>,
    /// When the delivery was routed.
    since: Instant,
}

impl fmt::Debug for Unstored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unstored")
            .field("since", &self.since)
            .finish_non_exhaustive()
    }
}

impl Unstored {
    pub(crate) fn new(gate: &Arc<AckGate>, now: Instant) -> Unstored {
        gate.open.fetch_add(1, Ordering::AcqRel);
        Unstored {
            gate: gate.clone(),
            since: now,
        }
    }

    pub(crate) fn since(&self) -> Instant {
        self.since
    }

    /// The delivery was submitted to the store as change `seq`: the acknowledgement now waits
    /// for that to be durable.
    pub(crate) fn stored(self, seq: Seq) {
        // Raised before the drop below closes the delivery, so whoever sees it closed sees
        // the sequence number too.
        self.gate.wait_for(seq);
    }
}

impl Drop for Unstored {
    fn drop(&mut self) {
        if self.gate.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.gate.wakeup.wake();
        }
    }
}

/// What an outgoing control packet waits for before it may be sent.
#[derive(Debug)]
pub(crate) enum Barrier {
    /// This store sequence number is durable.
    Durable(Seq),
    /// The gate of a PUBLISH with unstored deliveries.
    Gate(Arc<AckGate>),
    /// A SUBACK waiting for the cluster's routes of some of its filters (the position of the
    /// filter in the SUBACK, the filter, the ticket), then for `seq` to be durable.
    Routes(
        Seq,
        Vec<(
            usize,
            tern_codec::MqttStr,
            Arc<crate::cluster_hook::RouteTicket>,
        )>,
    ),
}

impl Barrier {
    /// The sequence number that must be durable, or `None` while a gate is closed.
    pub(crate) fn seq(&self) -> Option<Seq> {
        match self {
            Barrier::Durable(seq) => Some(*seq),
            Barrier::Gate(gate) => gate.ready(),
            Barrier::Routes(seq, tickets) => tickets
                .iter()
                .all(|(_, _, ticket)| ticket.decided().is_some())
                .then_some(*seq),
        }
    }

    /// Whether the packet may go out with `durable` durable.
    pub(crate) fn passed(&self, durable: Seq) -> bool {
        self.seq().is_some_and(|seq| seq <= durable)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wakeup for Flag {
        fn wake(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_gate_opens_when_every_delivery_is_acknowledged_or_stored() {
        let flag = Arc::new(Flag::default());
        let gate = AckGate::new(flag.clone());
        let now = Instant::now();
        let first = Unstored::new(&gate, now);
        let second = Unstored::new(&gate, now);
        gate.wait_for(Seq(3));
        assert_eq!(gate.ready(), None);
        first.stored(Seq(9));
        assert_eq!(gate.ready(), None, "one delivery is still open");
        assert!(!flag.0.load(Ordering::SeqCst));
        drop(second);
        assert_eq!(gate.ready(), Some(Seq(9)), "waits for the stored delivery");
        assert!(flag.0.load(Ordering::SeqCst), "the publisher is woken");
    }
}
