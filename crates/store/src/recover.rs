//! Reading the store back at start-up: each keyspace is scanned once, decoded and joined into
//! sessions; expired sessions and messages, and entries nothing owns any more, are collected
//! for deletion; and the in-memory index the commit thread works from is rebuilt.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tern_broker::persist::{
    MessageId, Recovered, RecoveredDelivery, RecoveredSession, RecoveredWill, StoredDelivery,
};
use tern_broker::{Message, SessionExpiry};
use tern_codec::MqttStr;

use crate::clock::Clock;
use crate::directory::ENGINE_DIR;
use crate::encoding::{self, Corrupt};
use crate::engine::{Batch, ClientEntries, Index, Spaces};
use crate::error::{StoreError, printable_key};
use crate::keys::{self, Space};

/// What the load found, and what it will delete.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) index: Index,
    pub(crate) recovered: Recovered,
    /// Deletes of what has expired or lost its owner; committed before the store serves.
    pub(crate) cleanup: Batch,
    pub(crate) report: LoadReport,
}

/// Counts for the start-up log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadReport {
    pub sessions: usize,
    pub expired_sessions: usize,
    pub messages: usize,
    pub expired_messages: usize,
    pub retained: usize,
    pub expired_retained: usize,
    /// Queue entries dropped because their message expired.
    pub expired_deliveries: usize,
    /// Entries whose session record is missing, or deliveries whose message body is missing:
    /// deleted (a store written by this crate has none).
    pub orphans: usize,
    /// Bytes at the end of the active journal that the engine's recovery dropped because they
    /// did not read back intact (see `Store::open`).
    pub journal_bytes_dropped: u64,
}

struct SessionBuild {
    session: RecoveredSession,
    entries: ClientEntries,
    /// In-flight entries with their send order, sorted at the end.
    inflight: Vec<(u64, u16, tern_broker::InflightState, RecoveredDelivery)>,
}

struct StoredMessage {
    message: Arc<Message>,
    expired: bool,
}

/// Scans every keyspace of `spaces` (the engine of data directory `dir`).
pub(crate) fn load(spaces: &Spaces, dir: &Path, clock: &Clock) -> Result<Loaded, StoreError> {
    let mut loader = Loader {
        spaces,
        dir,
        clock,
        sessions: BTreeMap::new(),
        ended: Vec::new(),
        messages: HashMap::new(),
        refs: HashMap::new(),
        max_message_id: 0,
        max_order: None,
        cleanup: Batch::default(),
        report: LoadReport::default(),
        retained: Vec::new(),
        forwards: Vec::new(),
        received: Vec::new(),
    };
    loader.sessions()?;
    loader.messages()?;
    loader.queue()?;
    loader.inflight()?;
    loader.inbound_qos2()?;
    loader.subscriptions()?;
    loader.wills()?;
    loader.retained()?;
    loader.cluster()?;
    Ok(loader.finish())
}

struct Loader<'a> {
    spaces: &'a Spaces,
    dir: &'a Path,
    clock: &'a Clock,
    sessions: BTreeMap<Bytes, SessionBuild>,
    /// Sessions whose expiry ran out while the broker was down.
    ended: Vec<Bytes>,
    messages: HashMap<MessageId, StoredMessage>,
    refs: HashMap<MessageId, u64>,
    max_message_id: MessageId,
    max_order: Option<u64>,
    cleanup: Batch,
    report: LoadReport,
    retained: Vec<Arc<Message>>,
    forwards: Vec<tern_broker::persist::RecoveredForward>,
    received: Vec<(u64, u64, u64)>,
}

impl Loader<'_> {
    /// A cluster's outbox and receipts (empty on a single node).
    fn cluster(&mut self) -> Result<(), StoreError> {
        self.scan(Space::ClusterOutbox, |this, key, value| {
            let (peer, run, seq) =
                keys::parse_outbox_key(key).ok_or_else(|| Corrupt("outbox key".into()))?;
            let payload = match value.split_first() {
                Some((&encoding::FORWARD_FORMAT, rest)) => Bytes::copy_from_slice(rest),
                _ => return Err(Corrupt("outbox value of an unknown format".into())),
            };
            this.forwards.push(tern_broker::persist::RecoveredForward {
                peer,
                run,
                seq,
                payload,
            });
            Ok(())
        })?;
        self.scan(Space::ClusterReceived, |this, key, value| {
            let origin = <[u8; 8]>::try_from(key)
                .map(u64::from_be_bytes)
                .map_err(|_| Corrupt("receipt key".into()))?;
            let (run, seq) = match value.split_first() {
                Some((&encoding::FORWARD_FORMAT, rest)) if rest.len() == 16 => {
                    let mut run = [0u8; 8];
                    let mut seq = [0u8; 8];
                    run.copy_from_slice(&rest[..8]);
                    seq.copy_from_slice(&rest[8..]);
                    (u64::from_be_bytes(run), u64::from_be_bytes(seq))
                }
                _ => return Err(Corrupt("receipt value of an unknown format".into())),
            };
            this.received.push((origin, run, seq));
            Ok(())
        })
    }
    /// Calls `f` with each entry of `space`, in key order.
    fn scan(
        &mut self,
        space: Space,
        mut f: impl FnMut(&mut Self, &[u8], &[u8]) -> Result<(), Corrupt>,
    ) -> Result<(), StoreError> {
        for guard in self.spaces.get(space).iter() {
            let (key, value) = guard.into_inner().map_err(|source| StoreError::Engine {
                path: self.dir.join(ENGINE_DIR),
                action: format!("read keyspace {:?} of", space.name()),
                source,
            })?;
            f(self, &key, &value).map_err(|Corrupt(reason)| StoreError::Corrupt {
                dir: self.dir.to_path_buf(),
                keyspace: space.name(),
                key: printable_key(&key),
                reason,
            })?;
        }
        Ok(())
    }

    fn sessions(&mut self) -> Result<(), StoreError> {
        self.scan(Space::Sessions, |this, key, value| {
            let client_id = mqtt_str(key, "client identifier")?;
            let stored = encoding::decode_session(value)?;
            let offline_for = if stored.online {
                std::time::Duration::ZERO
            } else {
                this.clock.elapsed_since(stored.offline_since_ms)
            };
            let expired = match stored.expiry {
                // Never stored by the core; it would have ended when its connection did.
                SessionExpiry::AtDisconnect => true,
                SessionExpiry::After(after) => !stored.online && offline_for > after,
                SessionExpiry::Never => false,
            };
            let key = Bytes::copy_from_slice(key);
            if expired {
                this.cleanup.delete(Space::Sessions, key.to_vec(), true);
                this.ended.push(key);
                this.report.expired_sessions += 1;
                return Ok(());
            }
            this.sessions.insert(
                key,
                SessionBuild {
                    session: RecoveredSession {
                        client_id,
                        expiry: stored.expiry,
                        offline_for,
                        subscriptions: Vec::new(),
                        queue: Vec::new(),
                        inflight: Vec::new(),
                        inbound_qos2: Vec::new(),
                        will: None,
                    },
                    entries: ClientEntries {
                        session: true,
                        ..ClientEntries::default()
                    },
                    inflight: Vec::new(),
                },
            );
            Ok(())
        })
    }

    fn messages(&mut self) -> Result<(), StoreError> {
        self.scan(Space::Messages, |this, key, value| {
            let id = keys::parse_u64(key).ok_or_else(|| Corrupt("not a message id".into()))?;
            let decoded = encoding::decode_message(value, this.clock)?;
            if decoded.message.id != id {
                return Err(Corrupt(format!(
                    "the value holds message id {}",
                    decoded.message.id
                )));
            }
            this.max_message_id = this.max_message_id.max(id);
            this.messages.insert(
                id,
                StoredMessage {
                    message: Arc::new(decoded.message),
                    expired: decoded.expired,
                },
            );
            Ok(())
        })
    }

    /// The live session a per-session key belongs to; `None` (and the key deleted) if it has
    /// none.
    fn owner(&mut self, space: Space, key: &[u8], client: &[u8]) -> Option<&mut SessionBuild> {
        if !self.sessions.contains_key(client) {
            self.cleanup.delete(space, key.to_vec(), true);
            if !self.ended.iter().any(|ended| ended == client) {
                self.report.orphans += 1;
            }
            return None;
        }
        self.sessions.get_mut(client)
    }

    /// The delivery with its message, or why it is dropped.
    fn delivery(
        &mut self,
        stored: StoredDelivery,
        keep_expired: bool,
    ) -> Option<RecoveredDelivery> {
        self.max_message_id = self.max_message_id.max(stored.message_id);
        let Some(message) = self.messages.get(&stored.message_id) else {
            self.report.orphans += 1;
            return None;
        };
        if message.expired && !keep_expired {
            self.report.expired_deliveries += 1;
            return None;
        }
        *self.refs.entry(stored.message_id).or_default() += 1;
        Some(RecoveredDelivery {
            message: message.message.clone(),
            qos: stored.qos,
            retain: stored.retain,
            subscription_ids: stored.subscription_ids,
            shared_filter: stored.shared_filter,
        })
    }

    fn queue(&mut self) -> Result<(), StoreError> {
        self.scan(Space::Queue, |this, key, value| {
            let (client, rest) = split(key)?;
            let position =
                keys::parse_u64(rest).ok_or_else(|| Corrupt("not a queue position".into()))?;
            let stored = encoding::decode_queued(value)?;
            if this.owner(Space::Queue, key, client).is_none() {
                return Ok(());
            }
            let message_id = stored.message_id;
            let Some(delivery) = this.delivery(stored, false) else {
                this.cleanup.delete(Space::Queue, key.to_vec(), true);
                return Ok(());
            };
            if let Some(build) = this.sessions.get_mut(client) {
                build.session.queue.push((position, delivery));
                build.entries.queue.insert(position, message_id);
            }
            Ok(())
        })
    }

    fn inflight(&mut self) -> Result<(), StoreError> {
        self.scan(Space::Inflight, |this, key, value| {
            let (client, rest) = split(key)?;
            let packet_id =
                keys::parse_u16(rest).ok_or_else(|| Corrupt("not a packet identifier".into()))?;
            let stored = encoding::decode_inflight(value)?;
            if this.owner(Space::Inflight, key, client).is_none() {
                return Ok(());
            }
            let message_id = stored.delivery.message_id;
            // Onward delivery has started: the flow completes even if the message expired.
            let Some(delivery) = this.delivery(stored.delivery, true) else {
                this.cleanup.delete(Space::Inflight, key.to_vec(), true);
                return Ok(());
            };
            this.max_order = Some(
                this.max_order
                    .map_or(stored.order, |max| max.max(stored.order)),
            );
            if let Some(build) = this.sessions.get_mut(client) {
                build
                    .inflight
                    .push((stored.order, packet_id, stored.state, delivery));
                build
                    .entries
                    .inflight
                    .insert(packet_id, (stored.order, message_id));
            }
            Ok(())
        })
    }

    fn inbound_qos2(&mut self) -> Result<(), StoreError> {
        self.scan(Space::InboundQos2, |this, key, value| {
            let (client, rest) = split(key)?;
            let packet_id =
                keys::parse_u16(rest).ok_or_else(|| Corrupt("not a packet identifier".into()))?;
            encoding::decode_inbound(value)?;
            if let Some(build) = this.owner(Space::InboundQos2, key, client) {
                build.session.inbound_qos2.push(packet_id);
                build.entries.inbound_qos2.insert(packet_id);
            }
            Ok(())
        })
    }

    fn subscriptions(&mut self) -> Result<(), StoreError> {
        self.scan(Space::Subscriptions, |this, key, value| {
            let (client, rest) = split(key)?;
            let filter = mqtt_str(rest, "topic filter")?;
            let record = encoding::decode_subscription(value)?;
            if let Some(build) = this.owner(Space::Subscriptions, key, client) {
                build.entries.subscriptions.insert(filter.clone());
                build.session.subscriptions.push((filter, record));
            }
            Ok(())
        })
    }

    fn wills(&mut self) -> Result<(), StoreError> {
        self.scan(Space::Wills, |this, key, value| {
            let (decoded, delay, expiry_interval) = encoding::decode_will(value, this.clock)?;
            this.max_message_id = this.max_message_id.max(decoded.message.id);
            if this.owner(Space::Wills, key, key).is_none() {
                return Ok(());
            }
            if decoded.expired {
                this.cleanup.delete(Space::Wills, key.to_vec(), true);
                return Ok(());
            }
            if let Some(build) = this.sessions.get_mut(key) {
                build.entries.will = true;
                build.session.will = Some(RecoveredWill {
                    message: Arc::new(decoded.message),
                    delay,
                    expiry_interval,
                });
            }
            Ok(())
        })
    }

    fn retained(&mut self) -> Result<(), StoreError> {
        self.scan(Space::Retained, |this, key, value| {
            let decoded = encoding::decode_message(value, this.clock)?;
            if decoded.message.topic.as_bytes() != key {
                return Err(Corrupt(format!(
                    "the value holds topic {:?}",
                    decoded.message.topic.as_str()
                )));
            }
            this.max_message_id = this.max_message_id.max(decoded.message.id);
            if decoded.expired {
                this.cleanup.delete(Space::Retained, key.to_vec(), true);
                this.report.expired_retained += 1;
            } else {
                this.retained.push(Arc::new(decoded.message));
            }
            Ok(())
        })
    }

    fn finish(mut self) -> Loaded {
        // Bodies nothing refers to any more: expired, or left by deliveries dropped above.
        for (&id, stored) in &self.messages {
            if self.refs.contains_key(&id) {
                self.report.messages += 1;
            } else {
                if stored.expired {
                    self.report.expired_messages += 1;
                }
                self.cleanup
                    .delete(Space::Messages, keys::message_key(id).to_vec(), true);
            }
        }

        let mut index = Index {
            refs: self.refs,
            next_order: self.max_order.map_or(0, |max| max.saturating_add(1)),
            outbox: self
                .forwards
                .iter()
                .map(|forward| (forward.peer, forward.run, forward.seq))
                .collect(),
            ..Index::default()
        };
        let mut sessions = Vec::with_capacity(self.sessions.len());
        for (_, mut build) in self.sessions {
            build.inflight.sort_by_key(|(order, ..)| *order);
            build.session.inflight = build
                .inflight
                .into_iter()
                .map(|(_, packet_id, state, delivery)| (packet_id, state, delivery))
                .collect();
            index
                .clients
                .insert(build.session.client_id.clone(), build.entries);
            sessions.push(build.session);
        }
        self.report.sessions = sessions.len();
        self.report.retained = self.retained.len();

        Loaded {
            index,
            recovered: Recovered {
                sessions,
                retained: self.retained,
                next_message_id: self.max_message_id.saturating_add(1).max(1),
                forwards: self.forwards,
                received: self.received,
            },
            cleanup: self.cleanup,
            report: self.report,
        }
    }
}

fn split(key: &[u8]) -> Result<(&[u8], &[u8]), Corrupt> {
    keys::split_client(key)
        .ok_or_else(|| Corrupt("no separator after the client identifier".into()))
}

fn mqtt_str(bytes: &[u8], what: &str) -> Result<MqttStr, Corrupt> {
    MqttStr::from_bytes(Bytes::copy_from_slice(bytes))
        .map_err(|error| Corrupt(format!("{what}: {error}")))
}
