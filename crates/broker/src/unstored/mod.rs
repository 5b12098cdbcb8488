//! Deliveries to online persistent sessions that are kept out of the store while their
//! acknowledgement may come first, and the publisher acknowledgements that wait for them.
//!
//! A QoS 1 message routed to a persistent session whose client is connected is usually
//! acknowledged by that client within a millisecond or two. Storing it (body, queue entry, in
//! flight entry) and then deleting it again is most of what the store does under such traffic,
//! and buys nothing when the subscriber's PUBACK arrives first. So such a delivery starts
//! *unstored*: the publisher's PUBACK waits on an [`AckGate`] until each of its unstored
//! deliveries is either acknowledged by its subscriber (nothing left to keep) or stored and
//! durable. A delivery still unacknowledged after the grace period (`unstored_grace` in the
//! broker's configuration) is stored like any other (by the broker's sweep), as is every
//! unstored delivery of a session whose connection goes.
//! Nothing acknowledged to a publisher is ever held only in memory.
//!
//! Every queued and in-flight delivery carries its [`Durability`]: volatile, unstored (holding
//! its publisher's gate) or stored. `gate.rs` has the publisher's side (the gate and each
//! delivery's hold on it), `sweep.rs` the sweep and how a session stores its unstored
//! deliveries.

mod gate;
mod sweep;

pub(crate) use gate::{AckGate, AckHold, Barrier, Unstored};
pub(crate) use sweep::Sweeper;

/// Where a queued or in-flight delivery stands with the store.
#[derive(Debug)]
pub(crate) enum Durability {
    /// Not kept in the store: a QoS 0 message, a session that ends with its connection, or a
    /// broker without a store. Nothing about it is ever submitted.
    Volatile,
    /// Belongs in the store but is held in memory while its subscriber may acknowledge it
    /// first; its publisher's acknowledgement waits meanwhile (see [`Unstored`]).
    Unstored(Unstored),
    /// Submitted to the store: whatever happens to it next is submitted too.
    Stored,
}

impl Durability {
    pub(crate) fn is_stored(&self) -> bool {
        matches!(self, Durability::Stored)
    }

    pub(crate) fn is_unstored(&self) -> bool {
        matches!(self, Durability::Unstored(_))
    }
}
