//! Applying changes to the engine: the in-memory index of what is stored (which keys exist,
//! which delivery refers to which message, reference counts of message bodies), the turning of
//! a group of changes into one coalesced write batch, and its commit to fjall.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};

use fjall::{Database, Keyspace, PersistMode, Slice};
use tern_broker::persist::{Change, MessageId};
use tern_codec::MqttStr;

use crate::clock::Clock;
use crate::encoding::{self, InflightValue, SessionValue};
use crate::keys::{self, Space};

/// The engine and one handle per keyspace.
pub(crate) struct Spaces {
    pub(crate) db: Database,
    handles: Vec<Keyspace>,
}

impl Spaces {
    /// `handles` in the order of [`Space::ALL`].
    pub(crate) fn new(db: Database, handles: Vec<Keyspace>) -> Spaces {
        debug_assert_eq!(handles.len(), Space::ALL.len());
        Spaces { db, handles }
    }

    pub(crate) fn get(&self, space: Space) -> &Keyspace {
        // `handles` holds one keyspace per `Space`, in order.
        &self.handles[space.index()]
    }
}

/// What is stored under one client identifier.
#[derive(Debug, Default)]
pub(crate) struct ClientEntries {
    pub(crate) session: bool,
    pub(crate) subscriptions: HashSet<MqttStr>,
    /// Position → message id.
    pub(crate) queue: BTreeMap<u64, MessageId>,
    /// Packet id → (send order, message id).
    pub(crate) inflight: HashMap<u16, (u64, MessageId)>,
    pub(crate) inbound_qos2: HashSet<u16>,
    pub(crate) will: bool,
}

impl ClientEntries {
    fn is_empty(&self) -> bool {
        !self.session
            && !self.will
            && self.subscriptions.is_empty()
            && self.queue.is_empty()
            && self.inflight.is_empty()
            && self.inbound_qos2.is_empty()
    }
}

/// The in-memory picture of the stored keys, so that a change can be applied without reading
/// the disk. Rebuilt at load.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub(crate) clients: HashMap<MqttStr, ClientEntries>,
    /// Stored message bodies → number of references: queue and in-flight entries referring to
    /// them, and the router's while it fans a message out (from `Message` to `MessageRouted`).
    /// A body goes when its count drops to zero.
    pub(crate) refs: HashMap<MessageId, u64>,
    /// Ids that deliveries refer to but whose body was never submitted (a bug of the caller);
    /// the body is written if it comes after all.
    pub(crate) missing: HashSet<MessageId>,
    /// The send order the next new in-flight entry gets.
    pub(crate) next_order: u64,
    /// A cluster's outbox entries on disk: (peer, run, seq).
    pub(crate) outbox: std::collections::BTreeSet<(u64, u64, u64)>,
}

/// One write of a batch.
#[derive(Debug)]
enum Op {
    Put(Slice),
    Delete,
}

#[derive(Debug)]
struct Pending {
    op: Op,
    /// Whether the key existed on disk before this batch: a key created and deleted within one
    /// batch costs no write at all.
    existed: bool,
}

/// The most writes whose room a batch keeps from one commit to the next.
const MAX_KEPT_WRITES: usize = 1 << 16;

/// The writes of one group commit, last write per key wins (the engine gives every write of a
/// batch the same sequence number, so two writes of one key must never both reach it).
#[derive(Debug, Default)]
pub(crate) struct Batch {
    writes: HashMap<(Space, Vec<u8>), Pending>,
}

impl Batch {
    /// Empties the batch and keeps its capacity: the next commit of a busy broker is about as
    /// large, and growing the map again from nothing costs rehashing and large allocations.
    /// Beyond `MAX_KEPT_WRITES` (after a burst) the memory is given back instead.
    pub(crate) fn clear(&mut self) {
        if self.writes.capacity() > MAX_KEPT_WRITES {
            self.writes = HashMap::new();
        } else {
            self.writes.clear();
        }
    }

    fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>, existed: bool) {
        self.write(space, key, Op::Put(Slice::from(value)), existed);
    }

    pub(crate) fn delete(&mut self, space: Space, key: Vec<u8>, existed: bool) {
        self.write(space, key, Op::Delete, existed);
    }

    fn write(&mut self, space: Space, key: Vec<u8>, op: Op, existed: bool) {
        match self.writes.entry((space, key)) {
            Entry::Occupied(mut entry) => entry.get_mut().op = op,
            Entry::Vacant(entry) => {
                entry.insert(Pending { op, existed });
            }
        }
    }

    /// Number of deletes per keyspace that will reach the engine.
    pub(crate) fn deletes(&self) -> [u64; Space::ALL.len()] {
        let mut deletes = [0; Space::ALL.len()];
        for ((space, _), pending) in &self.writes {
            if pending.existed && matches!(pending.op, Op::Delete) {
                deletes[space.index()] += 1;
            }
        }
        deletes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Number of writes that will reach the engine.
    pub(crate) fn len(&self) -> usize {
        self.writes
            .values()
            .filter(|pending| pending.existed || matches!(pending.op, Op::Put(_)))
            .count()
    }
}

impl Index {
    /// Applies one change to the index and records its writes in `batch`.
    pub(crate) fn apply(&mut self, change: Change, batch: &mut Batch, clock: &Clock) {
        match change {
            Change::Message(message) => {
                if message.id == 0 {
                    tracing::error!(topic = %message.topic, "message without an id submitted for storage; not stored");
                    return;
                }
                // An id names one body for ever: a body stored already (the core submits it
                // again to hold it while it moves a delivery) is not written again, only
                // referenced once more, for the router.
                let referenced_without_body = self.missing.remove(&message.id);
                if !referenced_without_body && let Some(count) = self.refs.get_mut(&message.id) {
                    *count += 1;
                    return;
                }
                let value = encoding::encode_message(&message, clock);
                batch.put(
                    Space::Messages,
                    keys::message_key(message.id).to_vec(),
                    value,
                    false,
                );
                *self.refs.entry(message.id).or_insert(0) += 1;
            }
            Change::MessageRouted { id } => self.release_ref(id, batch),
            Change::Session {
                client_id,
                expiry,
                online,
            } => {
                let value = encoding::encode_session(&SessionValue {
                    expiry,
                    online,
                    offline_since_ms: if online { 0 } else { clock.wall_ms() },
                });
                let key = keys::client_key(&client_id);
                let entries = self.clients.entry(client_id).or_default();
                batch.put(Space::Sessions, key, value, entries.session);
                entries.session = true;
            }
            Change::SessionEnded { client_id } => self.end_session(&client_id, batch),
            Change::Subscribed {
                client_id,
                filter,
                record,
            } => {
                let key = keys::subscription_key(&client_id, &filter);
                let entries = self.clients.entry(client_id).or_default();
                let existed = !entries.subscriptions.insert(filter);
                batch.put(
                    Space::Subscriptions,
                    key,
                    encoding::encode_subscription(&record),
                    existed,
                );
            }
            Change::Unsubscribed { client_id, filter } => {
                let key = keys::subscription_key(&client_id, &filter);
                let existed =
                    self.with_entries(&client_id, |entries| entries.subscriptions.remove(&filter));
                batch.delete(Space::Subscriptions, key, existed);
            }
            Change::Queued {
                client_id,
                position,
                delivery,
            } => {
                let key = keys::queue_key(&client_id, position);
                let value = encoding::encode_queued(&delivery);
                let entries = self.clients.entry(client_id).or_default();
                let previous = entries.queue.insert(position, delivery.message_id);
                batch.put(Space::Queue, key, value, previous.is_some());
                self.add_ref(delivery.message_id);
                if let Some(previous) = previous {
                    self.release_ref(previous, batch);
                }
            }
            Change::Unqueued {
                client_id,
                position,
            } => {
                let key = keys::queue_key(&client_id, position);
                let removed =
                    self.with_entries(&client_id, |entries| entries.queue.remove(&position));
                batch.delete(Space::Queue, key, removed.is_some());
                if let Some(message_id) = removed {
                    self.release_ref(message_id, batch);
                }
            }
            Change::Inflight {
                client_id,
                packet_id,
                state,
                delivery,
            } => {
                let key = keys::packet_key(&client_id, packet_id);
                let message_id = delivery.message_id;
                let next_order = self.next_order;
                let entries = self.clients.entry(client_id).or_default();
                let previous = entries.inflight.get(&packet_id).copied();
                // A new state of the same message keeps its place in the send order.
                let order = match previous {
                    Some((order, message_id)) if message_id == delivery.message_id => order,
                    _ => {
                        self.next_order += 1;
                        next_order
                    }
                };
                entries
                    .inflight
                    .insert(packet_id, (order, delivery.message_id));
                let value = encoding::encode_inflight(&InflightValue {
                    order,
                    state,
                    delivery,
                });
                batch.put(Space::Inflight, key, value, previous.is_some());
                // Count the new reference before releasing the old one: a state update of the
                // same message leaves the count as it was.
                self.add_ref(message_id);
                if let Some((_, previous)) = previous {
                    self.release_ref(previous, batch);
                }
            }
            Change::Dispatched {
                client_id,
                position,
                packet_id,
                state,
                delivery,
            } => {
                // In flight first, then out of the queue: the body keeps a reference throughout.
                let inflight = Change::Inflight {
                    client_id: client_id.clone(),
                    packet_id,
                    state,
                    delivery,
                };
                self.apply(inflight, batch, clock);
                self.apply(
                    Change::Unqueued {
                        client_id,
                        position,
                    },
                    batch,
                    clock,
                );
            }
            Change::InflightDone {
                client_id,
                packet_id,
            } => {
                let key = keys::packet_key(&client_id, packet_id);
                let removed =
                    self.with_entries(&client_id, |entries| entries.inflight.remove(&packet_id));
                batch.delete(Space::Inflight, key, removed.is_some());
                if let Some((_, message_id)) = removed {
                    self.release_ref(message_id, batch);
                }
            }
            Change::InboundQos2 {
                client_id,
                packet_id,
            } => {
                let key = keys::packet_key(&client_id, packet_id);
                let entries = self.clients.entry(client_id).or_default();
                let existed = !entries.inbound_qos2.insert(packet_id);
                batch.put(Space::InboundQos2, key, encoding::encode_inbound(), existed);
            }
            Change::InboundQos2Released {
                client_id,
                packet_id,
            } => {
                let key = keys::packet_key(&client_id, packet_id);
                let existed = self.with_entries(&client_id, |entries| {
                    entries.inbound_qos2.remove(&packet_id)
                });
                batch.delete(Space::InboundQos2, key, existed);
            }
            Change::Retained(message) => {
                // Retained topics are not indexed: assume the key may exist.
                let value = encoding::encode_message(&message, clock);
                batch.put(
                    Space::Retained,
                    message.topic.as_bytes().to_vec(),
                    value,
                    true,
                );
            }
            Change::RetainedCleared { topic } => {
                batch.delete(Space::Retained, topic.as_bytes().to_vec(), true);
            }
            Change::Will {
                client_id,
                message,
                delay,
                expiry_interval,
            } => {
                let key = keys::client_key(&client_id);
                let value = encoding::encode_will(&message, delay, expiry_interval, clock);
                let entries = self.clients.entry(client_id).or_default();
                batch.put(Space::Wills, key, value, entries.will);
                entries.will = true;
            }
            Change::WillCleared { client_id } => {
                let key = keys::client_key(&client_id);
                let existed =
                    self.with_entries(&client_id, |entries| std::mem::take(&mut entries.will));
                batch.delete(Space::Wills, key, existed);
            }
            Change::ForwardQueued {
                peer,
                run,
                seq,
                payload,
            } => {
                let mut value = Vec::with_capacity(1 + payload.len());
                value.push(encoding::FORWARD_FORMAT);
                value.extend_from_slice(&payload);
                let existed = !self.outbox.insert((peer, run, seq));
                batch.put(
                    Space::ClusterOutbox,
                    keys::outbox_key(peer, run, seq).to_vec(),
                    value,
                    existed,
                );
            }
            Change::ForwardAcked { peer, run, upto } => {
                // This run up to `upto`, and every earlier run of the peer.
                let done: Vec<(u64, u64, u64)> = self
                    .outbox
                    .range((peer, 0, 0)..=(peer, run, upto))
                    .copied()
                    .collect();
                for entry in done {
                    self.outbox.remove(&entry);
                    let (peer, run, seq) = entry;
                    batch.delete(
                        Space::ClusterOutbox,
                        keys::outbox_key(peer, run, seq).to_vec(),
                        true,
                    );
                }
            }
            Change::ForwardReceived { origin, run, seq } => {
                let mut value = Vec::with_capacity(17);
                value.push(encoding::FORWARD_FORMAT);
                value.extend_from_slice(&run.to_be_bytes());
                value.extend_from_slice(&seq.to_be_bytes());
                batch.put(
                    Space::ClusterReceived,
                    origin.to_be_bytes().to_vec(),
                    value,
                    true,
                );
            }
        }
    }

    /// Runs `f` on the entries of `client_id` (empty ones if none are stored), and forgets the
    /// client once nothing is stored under it.
    fn with_entries<T>(
        &mut self,
        client_id: &MqttStr,
        f: impl FnOnce(&mut ClientEntries) -> T,
    ) -> T {
        match self.clients.get_mut(client_id) {
            Some(entries) => {
                let result = f(entries);
                if entries.is_empty() {
                    self.clients.remove(client_id);
                }
                result
            }
            None => f(&mut ClientEntries::default()),
        }
    }

    fn add_ref(&mut self, message_id: MessageId) {
        match self.refs.get_mut(&message_id) {
            Some(count) => *count += 1,
            None => {
                // The body is not stored (never submitted, or swept): the delivery is kept, and
                // dropped at load if its message is still missing then.
                tracing::error!(
                    message_id,
                    "a delivery refers to a message body that is not stored"
                );
                self.refs.insert(message_id, 1);
                self.missing.insert(message_id);
            }
        }
    }

    /// Drops one reference; the body goes with the last.
    fn release_ref(&mut self, message_id: MessageId, batch: &mut Batch) {
        let Some(count) = self.refs.get_mut(&message_id) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count > 0 {
            return;
        }
        self.forget_body(message_id, batch);
    }

    fn forget_body(&mut self, message_id: MessageId, batch: &mut Batch) {
        self.refs.remove(&message_id);
        self.missing.remove(&message_id);
        batch.delete(
            Space::Messages,
            keys::message_key(message_id).to_vec(),
            true,
        );
    }

    /// Deletes everything stored under `client_id`.
    fn end_session(&mut self, client_id: &MqttStr, batch: &mut Batch) {
        let Some(entries) = self.clients.remove(client_id) else {
            // Nothing is indexed, so nothing is stored; the session key is deleted anyway in
            // case the index missed it.
            batch.delete(Space::Sessions, keys::client_key(client_id), true);
            return;
        };
        batch.delete(
            Space::Sessions,
            keys::client_key(client_id),
            entries.session,
        );
        if entries.will {
            batch.delete(Space::Wills, keys::client_key(client_id), true);
        }
        for filter in &entries.subscriptions {
            batch.delete(
                Space::Subscriptions,
                keys::subscription_key(client_id, filter),
                true,
            );
        }
        for (&position, &message_id) in &entries.queue {
            batch.delete(Space::Queue, keys::queue_key(client_id, position), true);
            self.release_ref(message_id, batch);
        }
        for (&packet_id, &(_, message_id)) in &entries.inflight {
            batch.delete(
                Space::Inflight,
                keys::packet_key(client_id, packet_id),
                true,
            );
            self.release_ref(message_id, batch);
        }
        for &packet_id in &entries.inbound_qos2 {
            batch.delete(
                Space::InboundQos2,
                keys::packet_key(client_id, packet_id),
                true,
            );
        }
    }
}

impl Spaces {
    /// Writes `batch` to the journal atomically and persists it with `mode`. The batch is kept
    /// by the caller, so a failed commit can be tried again with the same writes, on this
    /// engine or on one reopened from disk (see `commit.rs`).
    pub(crate) fn commit(&self, batch: &Batch, mode: PersistMode) -> fjall::Result<()> {
        // Sized up front: grown by doubling, the engine's batch of a busy commit was copied
        // a dozen times.
        let mut writes = fjall::OwnedWriteBatch::with_capacity(self.db.clone(), batch.writes.len())
            .durability(Some(mode));
        for ((space, key), pending) in &batch.writes {
            match &pending.op {
                Op::Put(value) => {
                    writes.insert(self.get(*space), key.as_slice(), value.clone());
                }
                Op::Delete if pending.existed => {
                    writes.remove(self.get(*space), key.as_slice());
                }
                Op::Delete => {}
            }
        }
        writes.commit()
    }
}

#[cfg(test)]
mod tests {

    use bytes::Bytes;
    use tern_broker::persist::StoredDelivery;
    use tern_broker::{InflightState, Message, SubscriptionIds};
    use tern_codec::QoS;

    use super::*;

    fn message(id: MessageId) -> Change {
        Change::Message(Message {
            cluster_id: None,
            topic: MqttStr::from_static("t"),
            payload: Bytes::from_static(b"p"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            expires_at: None,
            publisher: None,
            id,
        })
    }

    fn delivery(message_id: MessageId) -> StoredDelivery {
        StoredDelivery {
            message_id,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: SubscriptionIds::None,
            shared_filter: None,
        }
    }

    fn queued(position: u64, message_id: MessageId) -> Change {
        Change::Queued {
            client_id: MqttStr::from_static("c"),
            position,
            delivery: delivery(message_id),
        }
    }

    fn message_write(batch: &Batch, id: MessageId) -> Option<&'static str> {
        batch
            .writes
            .get(&(Space::Messages, keys::message_key(id).to_vec()))
            .map(|pending| match (&pending.op, pending.existed) {
                (Op::Put(_), _) => "put",
                (Op::Delete, true) => "delete",
                (Op::Delete, false) => "nothing",
            })
    }

    fn routed(id: MessageId) -> Change {
        Change::MessageRouted { id }
    }

    #[test]
    fn a_body_nothing_refers_to_goes_once_routed() {
        let clock = Clock::now();
        let mut index = Index::default();
        let mut batch = Batch::default();
        index.apply(message(1), &mut batch, &clock);
        index.apply(message(2), &mut batch, &clock);
        index.apply(queued(0, 2), &mut batch, &clock);
        index.apply(routed(1), &mut batch, &clock);
        index.apply(routed(2), &mut batch, &clock);
        assert_eq!(
            message_write(&batch, 1),
            Some("nothing"),
            "created and dropped: no write"
        );
        assert_eq!(message_write(&batch, 2), Some("put"), "referenced: kept");
        assert_eq!(index.refs.get(&2), Some(&1));
    }

    #[test]
    fn a_delivery_before_its_body_still_gets_the_body_stored() {
        let clock = Clock::now();
        let mut index = Index::default();
        let mut batch = Batch::default();
        index.apply(queued(0, 5), &mut batch, &clock);
        index.apply(message(5), &mut batch, &clock);
        index.apply(routed(5), &mut batch, &clock);
        assert_eq!(message_write(&batch, 5), Some("put"));
        assert_eq!(index.refs.get(&5), Some(&1));
    }

    fn unqueued(position: u64) -> Change {
        Change::Unqueued {
            client_id: MqttStr::from_static("c"),
            position,
        }
    }

    #[test]
    fn the_router_reference_keeps_a_body_through_a_fan_out() {
        let clock = Clock::now();
        let mut index = Index::default();
        let mut batch = Batch::default();
        // Routed to c (served at once), then to d, whose Queued comes after c is done.
        index.apply(message(1), &mut batch, &clock);
        index.apply(queued(0, 1), &mut batch, &clock);
        index.apply(unqueued(0), &mut batch, &clock);
        assert_eq!(message_write(&batch, 1), Some("put"), "held by the router");
        index.apply(
            Change::Queued {
                client_id: MqttStr::from_static("d"),
                position: 0,
                delivery: delivery(1),
            },
            &mut batch,
            &clock,
        );
        index.apply(routed(1), &mut batch, &clock);
        assert!(index.missing.is_empty());
        assert_eq!(index.refs.get(&1), Some(&1));

        // The last reference takes the body along at once.
        let mut later = Batch::default();
        index.apply(
            Change::Unqueued {
                client_id: MqttStr::from_static("d"),
                position: 0,
            },
            &mut later,
            &clock,
        );
        assert_eq!(message_write(&later, 1), Some("delete"));
        assert!(index.refs.is_empty());
    }

    #[test]
    fn a_cycle_within_one_batch_writes_nothing() {
        let clock = Clock::now();
        let mut index = Index::default();
        let mut batch = Batch::default();
        index.apply(message(1), &mut batch, &clock);
        index.apply(queued(0, 1), &mut batch, &clock);
        index.apply(routed(1), &mut batch, &clock);
        index.apply(
            Change::Inflight {
                client_id: MqttStr::from_static("c"),
                packet_id: 1,
                state: InflightState::AwaitingPubAck,
                delivery: delivery(1),
            },
            &mut batch,
            &clock,
        );
        index.apply(unqueued(0), &mut batch, &clock);
        index.apply(
            Change::InflightDone {
                client_id: MqttStr::from_static("c"),
                packet_id: 1,
            },
            &mut batch,
            &clock,
        );
        assert_eq!(
            batch.len(),
            0,
            "a message delivered within one commit costs no write"
        );
        assert!(index.clients.is_empty());
        assert!(index.refs.is_empty());
    }
}
