//! The binary encoding of stored values: a format byte, then fixed-width big-endian numbers and
//! length-prefixed strings and bytes. Decoding checks every length, tag and range and never
//! panics: damaged bytes give a [`Corrupt`] that the caller turns into an error naming the key.

use std::time::Duration;

use bytes::Bytes;
use tern_broker::persist::StoredDelivery;
use tern_broker::{InflightState, Message, SessionExpiry, SubscriptionIds, SubscriptionRecord};
use tern_codec::{MqttStr, Properties, QoS, RetainHandling, SubscriptionOptions, property_id};

use crate::clock::Clock;

/// The first byte of every value: the layout of what follows. A new layout gets a new number
/// and the decoder keeps reading the old ones.
pub(crate) const VALUE_FORMAT: u8 = 1;

/// The first byte of a cluster outbox or receipt value (see `keys::Space::ClusterOutbox`).
pub(crate) const FORWARD_FORMAT: u8 = 1;

/// Why a stored value cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Corrupt(pub(crate) String);

impl Corrupt {
    fn new(what: impl Into<String>) -> Corrupt {
        Corrupt(what.into())
    }
}

type Decoded<T> = Result<T, Corrupt>;

/// Appends the fields of one value.
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new(capacity: usize) -> Writer {
        let mut buf = Vec::with_capacity(capacity + 1);
        buf.push(VALUE_FORMAT);
        Writer { buf }
    }

    pub(crate) fn u8(&mut self, value: u8) {
        self.buf.push(value);
    }

    fn u16(&mut self, value: u16) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    pub(crate) fn u32(&mut self, value: u32) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    pub(crate) fn u64(&mut self, value: u64) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    fn bytes(&mut self, value: &[u8]) {
        // Values are below 4 GiB: MQTT packets are at most 256 MiB.
        self.u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
        self.buf.extend_from_slice(value);
    }

    fn string(&mut self, value: &MqttStr) {
        // An MqttStr is at most 65 535 bytes long.
        self.u16(u16::try_from(value.len()).unwrap_or(u16::MAX));
        self.buf.extend_from_slice(value.as_bytes());
    }

    fn duration(&mut self, value: Duration) {
        self.u64(value.as_secs());
        self.u32(value.subsec_nanos());
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads the fields of one value.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the format byte.
    pub(crate) fn new(value: &'a [u8]) -> Decoded<Reader<'a>> {
        match value.split_first() {
            None => Err(Corrupt::new("empty value")),
            Some((&VALUE_FORMAT, rest)) => Ok(Reader { buf: rest }),
            Some((format, _)) => Err(Corrupt(format!("unknown value format {format}"))),
        }
    }

    fn take(&mut self, len: usize, what: &str) -> Decoded<&'a [u8]> {
        if self.buf.len() < len {
            return Err(Corrupt(format!(
                "truncated {what}: {len} bytes expected, {} left",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Decoded<[u8; N]> {
        let bytes = self.take(N, what)?;
        bytes
            .try_into()
            .map_err(|_| Corrupt(format!("truncated {what}")))
    }

    pub(crate) fn u8(&mut self, what: &str) -> Decoded<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Decoded<u16> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &str) -> Decoded<u32> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &str) -> Decoded<u64> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn bool(&mut self, what: &str) -> Decoded<bool> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(Corrupt(format!("{what}: {other} is not a boolean"))),
        }
    }

    fn bytes(&mut self, what: &str) -> Decoded<Bytes> {
        let len = self.u32(what)?;
        let len = usize::try_from(len).map_err(|_| Corrupt(format!("{what}: too long")))?;
        Ok(Bytes::copy_from_slice(self.take(len, what)?))
    }

    fn string(&mut self, what: &str) -> Decoded<MqttStr> {
        let len = usize::from(self.u16(what)?);
        let bytes = Bytes::copy_from_slice(self.take(len, what)?);
        MqttStr::from_bytes(bytes).map_err(|error| Corrupt(format!("{what}: {error}")))
    }

    fn duration(&mut self, what: &str) -> Decoded<Duration> {
        let seconds = self.u64(what)?;
        let nanos = self.u32(what)?;
        if nanos >= 1_000_000_000 {
            return Err(Corrupt(format!("{what}: {nanos} nanoseconds")));
        }
        Ok(Duration::new(seconds, nanos))
    }

    fn qos(&mut self, what: &str) -> Decoded<QoS> {
        let value = self.u8(what)?;
        QoS::from_u8(value).ok_or_else(|| Corrupt(format!("{what}: invalid QoS {value}")))
    }

    /// Checks that nothing follows the last field.
    pub(crate) fn finish(self) -> Decoded<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Corrupt(format!(
                "{} unexpected bytes after the value",
                self.buf.len()
            )))
        }
    }
}

// ---- format version (meta) ----

/// The store format version as stored under `format_version`: a bare big-endian u32, so that
/// any later layout can still read it.
pub(crate) fn encode_format_version(version: u32) -> [u8; 4] {
    version.to_be_bytes()
}

pub(crate) fn decode_format_version(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.try_into().ok()?))
}

// ---- sessions ----

/// A session as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionValue {
    pub(crate) expiry: SessionExpiry,
    pub(crate) online: bool,
    /// Wall-clock milliseconds when the connection went away (0 while online).
    pub(crate) offline_since_ms: u64,
}

const EXPIRY_AT_DISCONNECT: u8 = 0;
const EXPIRY_AFTER: u8 = 1;
const EXPIRY_NEVER: u8 = 2;

pub(crate) fn encode_session(session: &SessionValue) -> Vec<u8> {
    let mut w = Writer::new(24);
    match session.expiry {
        SessionExpiry::AtDisconnect => w.u8(EXPIRY_AT_DISCONNECT),
        SessionExpiry::After(after) => {
            w.u8(EXPIRY_AFTER);
            w.duration(after);
        }
        SessionExpiry::Never => w.u8(EXPIRY_NEVER),
    }
    w.u8(u8::from(session.online));
    w.u64(session.offline_since_ms);
    w.finish()
}

pub(crate) fn decode_session(value: &[u8]) -> Decoded<SessionValue> {
    let mut r = Reader::new(value)?;
    let expiry = match r.u8("session expiry kind")? {
        EXPIRY_AT_DISCONNECT => SessionExpiry::AtDisconnect,
        EXPIRY_AFTER => SessionExpiry::After(r.duration("session expiry")?),
        EXPIRY_NEVER => SessionExpiry::Never,
        other => return Err(Corrupt(format!("unknown session expiry kind {other}"))),
    };
    let online = r.bool("online flag")?;
    let offline_since_ms = r.u64("offline-since")?;
    r.finish()?;
    Ok(SessionValue {
        expiry,
        online,
        offline_since_ms,
    })
}

// ---- subscriptions ----

pub(crate) fn encode_subscription(record: &SubscriptionRecord) -> Vec<u8> {
    let mut w = Writer::new(6);
    let options = record.options;
    w.u8(options.qos.as_u8()
        | (u8::from(options.no_local) << 2)
        | (u8::from(options.retain_as_published) << 3)
        | ((options.retain_handling as u8) << 4));
    match record.identifier {
        None => w.u8(0),
        Some(identifier) => {
            w.u8(1);
            w.u32(identifier);
        }
    }
    w.finish()
}

pub(crate) fn decode_subscription(value: &[u8]) -> Decoded<SubscriptionRecord> {
    let mut r = Reader::new(value)?;
    let byte = r.u8("subscription options")?;
    if byte & 0b1100_0000 != 0 {
        return Err(Corrupt(format!("subscription options {byte:#04x}")));
    }
    let qos = QoS::from_u8(byte & 0b11)
        .ok_or_else(|| Corrupt(format!("subscription options {byte:#04x}: invalid QoS")))?;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendAtSubscribeIfNew,
        2 => RetainHandling::DoNotSend,
        _ => {
            return Err(Corrupt(format!(
                "subscription options {byte:#04x}: invalid retain handling"
            )));
        }
    };
    let identifier = match r.bool("subscription identifier flag")? {
        false => None,
        true => Some(r.u32("subscription identifier")?),
    };
    r.finish()?;
    Ok(SubscriptionRecord {
        options: SubscriptionOptions {
            qos,
            no_local: byte & 0b0100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        },
        identifier,
    })
}

// ---- deliveries: queue and in-flight ----

fn put_delivery(w: &mut Writer, delivery: &StoredDelivery) {
    w.u64(delivery.message_id);
    w.u8(delivery.qos.as_u8());
    w.u8(u8::from(delivery.retain));
    let ids = delivery.subscription_ids.as_slice();
    w.u32(u32::try_from(ids.len()).unwrap_or(u32::MAX));
    for &id in ids {
        w.u32(id);
    }
    match &delivery.shared_filter {
        None => w.u8(0),
        Some(filter) => {
            w.u8(1);
            w.string(filter);
        }
    }
}

fn read_delivery(r: &mut Reader<'_>) -> Decoded<StoredDelivery> {
    let message_id = r.u64("message id")?;
    let qos = r.qos("delivery QoS")?;
    let retain = r.bool("delivery retain flag")?;
    let count = r.u32("subscription identifier count")?;
    let subscription_ids = match count {
        0 => SubscriptionIds::None,
        1 => SubscriptionIds::One(r.u32("subscription identifier")?),
        count => {
            // Each identifier takes 4 bytes: a count the value cannot hold is corrupt, checked
            // before allocating.
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            if count > r.buf.len() / 4 {
                return Err(Corrupt(format!(
                    "{count} subscription identifiers do not fit in the value"
                )));
            }
            let mut ids = Vec::with_capacity(count);
            for _ in 0..count {
                ids.push(r.u32("subscription identifier")?);
            }
            SubscriptionIds::Many(ids.into_boxed_slice())
        }
    };
    let shared_filter = match r.bool("shared filter flag")? {
        false => None,
        true => Some(r.string("shared filter")?),
    };
    Ok(StoredDelivery {
        message_id,
        qos,
        retain,
        subscription_ids,
        shared_filter,
    })
}

pub(crate) fn encode_queued(delivery: &StoredDelivery) -> Vec<u8> {
    let mut w = Writer::new(24);
    put_delivery(&mut w, delivery);
    w.finish()
}

pub(crate) fn decode_queued(value: &[u8]) -> Decoded<StoredDelivery> {
    let mut r = Reader::new(value)?;
    let delivery = read_delivery(&mut r)?;
    r.finish()?;
    Ok(delivery)
}

/// An outbound in-flight entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InflightValue {
    /// Send order across the store: packet identifiers wrap, this does not.
    pub(crate) order: u64,
    pub(crate) state: InflightState,
    pub(crate) delivery: StoredDelivery,
}

pub(crate) fn encode_inflight(value: &InflightValue) -> Vec<u8> {
    let mut w = Writer::new(40);
    w.u64(value.order);
    w.u8(match value.state {
        InflightState::AwaitingPubAck => 0,
        InflightState::AwaitingPubRec => 1,
        InflightState::AwaitingPubComp => 2,
    });
    put_delivery(&mut w, &value.delivery);
    w.finish()
}

pub(crate) fn decode_inflight(value: &[u8]) -> Decoded<InflightValue> {
    let mut r = Reader::new(value)?;
    let order = r.u64("send order")?;
    let state = match r.u8("in-flight state")? {
        0 => InflightState::AwaitingPubAck,
        1 => InflightState::AwaitingPubRec,
        2 => InflightState::AwaitingPubComp,
        other => return Err(Corrupt(format!("unknown in-flight state {other}"))),
    };
    let delivery = read_delivery(&mut r)?;
    r.finish()?;
    Ok(InflightValue {
        order,
        state,
        delivery,
    })
}

/// An inbound QoS 2 packet id carries no data: the value is the format byte alone.
pub(crate) fn encode_inbound() -> Vec<u8> {
    Writer::new(0).finish()
}

pub(crate) fn decode_inbound(value: &[u8]) -> Decoded<()> {
    Reader::new(value)?.finish()
}

// ---- messages ----

const FLAG_RETAIN: u8 = 1 << 2;
const FLAG_EXPIRY: u8 = 1 << 3;
const FLAG_PUBLISHER: u8 = 1 << 4;
const FLAG_PROPERTIES: u8 = 1 << 5;
const FLAGS_KNOWN: u8 = 0b11 | FLAG_RETAIN | FLAG_EXPIRY | FLAG_PUBLISHER | FLAG_PROPERTIES;

/// The properties that travel with a message, as (MQTT property identifier, value) entries.
/// Other fields of [`Properties`] are not kept: a message never carries them (see
/// `Message::properties`).
fn stored_property_count(properties: &Properties) -> usize {
    usize::from(properties.payload_format_indicator.is_some())
        + usize::from(properties.content_type.is_some())
        + usize::from(properties.response_topic.is_some())
        + usize::from(properties.correlation_data.is_some())
        + properties.user_properties.len()
}

/// About how many bytes `message` takes stored (payload, topic, publisher, properties and
/// fixed fields): what a pending change holds in memory until it is committed.
pub(crate) fn message_size_estimate(message: &Message) -> u64 {
    let properties = message.properties.as_deref().map_or(0, |properties| {
        properties
            .content_type
            .as_ref()
            .map_or(0, |text| text.len() + 3)
            + properties
                .response_topic
                .as_ref()
                .map_or(0, |text| text.len() + 3)
            + properties
                .correlation_data
                .as_ref()
                .map_or(0, |data| data.len() + 3)
            + properties
                .user_properties
                .iter()
                .map(|(name, value)| name.len() + value.len() + 5)
                .sum::<usize>()
            + 6
    });
    let bytes = 32
        + message.payload.len()
        + message.topic.len()
        + message
            .publisher
            .as_ref()
            .map_or(0, |publisher| publisher.len())
        + properties;
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

fn put_properties(w: &mut Writer, properties: &Properties) {
    w.u32(u32::try_from(stored_property_count(properties)).unwrap_or(u32::MAX));
    if let Some(indicator) = properties.payload_format_indicator {
        w.u8(property_id::PAYLOAD_FORMAT_INDICATOR);
        w.u8(u8::from(indicator));
    }
    if let Some(content_type) = &properties.content_type {
        w.u8(property_id::CONTENT_TYPE);
        w.string(content_type);
    }
    if let Some(response_topic) = &properties.response_topic {
        w.u8(property_id::RESPONSE_TOPIC);
        w.string(response_topic);
    }
    if let Some(correlation_data) = &properties.correlation_data {
        w.u8(property_id::CORRELATION_DATA);
        w.bytes(correlation_data);
    }
    for (name, value) in &properties.user_properties {
        w.u8(property_id::USER_PROPERTY);
        w.string(name);
        w.string(value);
    }
}

fn read_properties(r: &mut Reader<'_>) -> Decoded<Properties> {
    let count = r.u32("property count")?;
    let mut properties = Properties::default();
    for _ in 0..count {
        match r.u8("property identifier")? {
            property_id::PAYLOAD_FORMAT_INDICATOR => {
                properties.payload_format_indicator = Some(r.bool("payload format indicator")?);
            }
            property_id::CONTENT_TYPE => {
                properties.content_type = Some(r.string("content type")?);
            }
            property_id::RESPONSE_TOPIC => {
                properties.response_topic = Some(r.string("response topic")?);
            }
            property_id::CORRELATION_DATA => {
                properties.correlation_data = Some(r.bytes("correlation data")?);
            }
            property_id::USER_PROPERTY => {
                let name = r.string("user property name")?;
                let value = r.string("user property value")?;
                properties.user_properties.push((name, value));
            }
            other => return Err(Corrupt(format!("unknown property identifier {other:#04x}"))),
        }
    }
    Ok(properties)
}

fn put_message(w: &mut Writer, message: &Message, clock: &Clock) {
    let properties = message
        .properties
        .as_deref()
        .filter(|properties| stored_property_count(properties) > 0);
    let mut flags = message.qos.as_u8();
    if message.retain {
        flags |= FLAG_RETAIN;
    }
    if message.expires_at.is_some() {
        flags |= FLAG_EXPIRY;
    }
    if message.publisher.is_some() {
        flags |= FLAG_PUBLISHER;
    }
    if properties.is_some() {
        flags |= FLAG_PROPERTIES;
    }
    w.u8(flags);
    w.u64(message.id);
    if let Some(at) = message.expires_at {
        w.u64(clock.to_wall_ms(at));
    }
    w.string(&message.topic);
    if let Some(publisher) = &message.publisher {
        w.string(publisher);
    }
    if let Some(properties) = properties {
        put_properties(w, properties);
    }
    w.bytes(&message.payload);
}

/// A message read back, and whether its expiry has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodedMessage {
    pub(crate) message: Message,
    pub(crate) expired: bool,
}

fn read_message(r: &mut Reader<'_>, clock: &Clock) -> Decoded<DecodedMessage> {
    let flags = r.u8("message flags")?;
    if flags & !FLAGS_KNOWN != 0 {
        return Err(Corrupt(format!("unknown message flags {flags:#04x}")));
    }
    let qos = QoS::from_u8(flags & 0b11)
        .ok_or_else(|| Corrupt(format!("message flags {flags:#04x}: invalid QoS")))?;
    let id = r.u64("message id")?;
    let (expires_at, expired) = if flags & FLAG_EXPIRY != 0 {
        let (at, expired) = clock.to_instant(r.u64("message expiry")?);
        (Some(at), expired)
    } else {
        (None, false)
    };
    let topic = r.string("topic")?;
    let publisher = if flags & FLAG_PUBLISHER != 0 {
        Some(r.string("publisher")?)
    } else {
        None
    };
    let properties = if flags & FLAG_PROPERTIES != 0 {
        Some(std::sync::Arc::new(read_properties(r)?))
    } else {
        None
    };
    let payload = r.bytes("payload")?;
    Ok(DecodedMessage {
        message: Message {
            cluster_id: None,
            topic,
            payload,
            qos,
            retain: flags & FLAG_RETAIN != 0,
            properties,
            expires_at,
            publisher,
            id,
        },
        expired,
    })
}

/// Encodes a message; its expiry deadline becomes wall-clock time through `clock`.
pub(crate) fn encode_message(message: &Message, clock: &Clock) -> Vec<u8> {
    let mut w = Writer::new(64 + message.topic.len() + message.payload.len());
    put_message(&mut w, message, clock);
    w.finish()
}

/// Decodes a message; its expiry becomes an `Instant` of this run through `clock`.
pub(crate) fn decode_message(value: &[u8], clock: &Clock) -> Decoded<DecodedMessage> {
    let mut r = Reader::new(value)?;
    let message = read_message(&mut r, clock)?;
    r.finish()?;
    Ok(message)
}

// ---- wills ----

pub(crate) fn encode_will(
    message: &Message,
    delay: Duration,
    expiry_interval: Option<u32>,
    clock: &Clock,
) -> Vec<u8> {
    let mut w = Writer::new(81 + message.topic.len() + message.payload.len());
    w.duration(delay);
    match expiry_interval {
        Some(seconds) => {
            w.u8(1);
            w.u32(seconds);
        }
        None => w.u8(0),
    }
    put_message(&mut w, message, clock);
    w.finish()
}

/// A will read back: its message (and whether that has expired), its delay and its Message
/// Expiry Interval.
pub(crate) fn decode_will(
    value: &[u8],
    clock: &Clock,
) -> Decoded<(DecodedMessage, Duration, Option<u32>)> {
    let mut r = Reader::new(value)?;
    let delay = r.duration("will delay")?;
    let expiry_interval = if r.bool("will expiry flag")? {
        Some(r.u32("will expiry interval")?)
    } else {
        None
    };
    let message = read_message(&mut r, clock)?;
    r.finish()?;
    Ok((message, delay, expiry_interval))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn s(text: &'static str) -> MqttStr {
        MqttStr::from_static(text)
    }

    fn full_message(now: Instant) -> Message {
        Message {
            cluster_id: None,
            topic: s("plant/7/temp"),
            payload: Bytes::from_static(b"\x00\x01binary\xff"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: Some(std::sync::Arc::new(Properties {
                payload_format_indicator: Some(true),
                content_type: Some(s("application/json")),
                response_topic: Some(s("reply/here")),
                correlation_data: Some(Bytes::from_static(b"\x01\x02")),
                user_properties: vec![(s("a"), s("1")), (s("a"), s("2")), (s("b"), s(""))],
                ..Properties::default()
            })),
            expires_at: Some(now + Duration::from_secs(30)),
            publisher: Some(s("publisher-1")),
            id: 42,
        }
    }

    #[test]
    fn message_round_trips_every_field() {
        let now = Instant::now();
        let clock = Clock::at(now, 5_000_000);
        let message = full_message(now);
        let decoded = decode_message(&encode_message(&message, &clock), &clock).unwrap();
        assert!(!decoded.expired);
        assert_eq!(decoded.message, message);

        let bare = Message {
            cluster_id: None,
            topic: s("t"),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: None,
            expires_at: None,
            publisher: None,
            id: 0,
        };
        let decoded = decode_message(&encode_message(&bare, &clock), &clock).unwrap();
        assert_eq!(decoded.message, bare);
    }

    #[test]
    fn message_expiry_is_wall_clock() {
        let now = Instant::now();
        let written = Clock::at(now, 1_000_000);
        let value = encode_message(&full_message(now), &written);
        // Read 31 s later (wall clock), in a run whose Instants are unrelated.
        let later = Clock::at(Instant::now(), 1_031_000);
        assert!(decode_message(&value, &later).unwrap().expired);
        let sooner = Clock::at(Instant::now(), 1_010_000);
        let decoded = decode_message(&value, &sooner).unwrap();
        assert!(!decoded.expired);
        let left = decoded.message.expires_at.unwrap() - sooner.instant();
        assert_eq!(left, Duration::from_secs(20));
    }

    #[test]
    fn properties_that_never_travel_are_not_stored() {
        let now = Instant::now();
        let clock = Clock::at(now, 0);
        let mut message = full_message(now);
        message.properties = Some(std::sync::Arc::new(Properties {
            topic_alias: Some(3),
            ..Properties::default()
        }));
        let decoded = decode_message(&encode_message(&message, &clock), &clock).unwrap();
        assert_eq!(decoded.message.properties, None);
    }

    #[test]
    fn session_subscription_delivery_round_trip() {
        for expiry in [
            SessionExpiry::AtDisconnect,
            SessionExpiry::After(Duration::new(3600, 5)),
            SessionExpiry::Never,
        ] {
            let value = SessionValue {
                expiry,
                online: false,
                offline_since_ms: 77,
            };
            assert_eq!(decode_session(&encode_session(&value)).unwrap(), value);
        }

        for retain_handling in [
            RetainHandling::SendAtSubscribe,
            RetainHandling::SendAtSubscribeIfNew,
            RetainHandling::DoNotSend,
        ] {
            let record = SubscriptionRecord {
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: false,
                    retain_handling,
                },
                identifier: Some(268_435_455),
            };
            assert_eq!(
                decode_subscription(&encode_subscription(&record)).unwrap(),
                record
            );
        }

        for ids in [
            SubscriptionIds::None,
            SubscriptionIds::One(9),
            SubscriptionIds::Many(vec![1, 2, 3].into_boxed_slice()),
        ] {
            let delivery = StoredDelivery {
                message_id: u64::MAX,
                qos: QoS::AtLeastOnce,
                retain: true,
                subscription_ids: ids,
                shared_filter: Some(s("$share/g/a/#")),
            };
            assert_eq!(decode_queued(&encode_queued(&delivery)).unwrap(), delivery);
            let inflight = InflightValue {
                order: 12,
                state: InflightState::AwaitingPubComp,
                delivery,
            };
            assert_eq!(
                decode_inflight(&encode_inflight(&inflight)).unwrap(),
                inflight
            );
        }
        decode_inbound(&encode_inbound()).unwrap();
    }

    #[test]
    fn will_round_trips() {
        let now = Instant::now();
        let clock = Clock::at(now, 9);
        let mut message = full_message(now);
        message.expires_at = None;
        let value = encode_will(&message, Duration::from_secs(5), Some(60), &clock);
        let (decoded, delay, expiry) = decode_will(&value, &clock).unwrap();
        assert_eq!(decoded.message, message);
        assert_eq!(delay, Duration::from_secs(5));
        assert_eq!(expiry, Some(60));
        let value = encode_will(&message, Duration::ZERO, None, &clock);
        assert_eq!(decode_will(&value, &clock).unwrap().2, None);
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error_or_a_value_never_a_panic() {
        let now = Instant::now();
        let clock = Clock::at(now, 1_000);
        let value = encode_will(&full_message(now), Duration::from_secs(1), Some(7), &clock);
        for len in 0..value.len() {
            assert!(decode_will(&value[..len], &clock).is_err(), "prefix {len}");
        }
        let mut longer = value.clone();
        longer.push(0);
        assert!(decode_will(&longer, &clock).is_err());
        for at in 0..value.len() {
            for bit in 0..8 {
                let mut flipped = value.clone();
                flipped[at] ^= 1 << bit;
                let _ = decode_will(&flipped, &clock);
                let _ = decode_message(&flipped, &clock);
                let _ = decode_inflight(&flipped);
                let _ = decode_session(&flipped);
                let _ = decode_subscription(&flipped);
            }
        }
        assert_eq!(
            decode_session(&[2, 0]).unwrap_err(),
            Corrupt::new("unknown value format 2")
        );
    }

    #[test]
    fn absurd_counts_do_not_allocate() {
        let mut w = Writer::new(16);
        w.u64(1);
        w.u8(1);
        w.u8(0);
        w.u32(u32::MAX);
        assert!(decode_queued(&w.finish()).is_err());
    }
}
