//! What a client is told before it connects: the endpoint, the CONNECT it sends, its limits
//! (in-flight window, queues) and how it reconnects.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tern_codec::{Packet, Properties, ProtocolVersion, QoS};

use crate::transport::Endpoint;

/// The last will: published by the broker when the connection ends without DISCONNECT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastWill {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 will properties (will delay, message expiry, content type, user properties...).
    pub properties: Properties,
}

/// Reconnection after a lost connection: exponential backoff with jitter, so that many clients
/// cut off at once do not all come back in the same instant (a reconnect storm).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The delay before the first attempt.
    pub initial: Duration,
    /// The delay never grows past this.
    pub max: Duration,
    /// Each failed attempt multiplies the delay by this.
    pub factor: f64,
    /// The share of the delay that is random: 0.0 (none) to 1.0 (anywhere from 0 to the delay).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            factor: 2.0,
            jitter: 0.25,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0 = the first reconnection).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.initial.as_secs_f64() * self.factor.max(1.0).powi(attempt.min(64) as i32);
        let base = base.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let random = random_unit();
        Duration::from_secs_f64(base * (1.0 - jitter * random))
    }
}

/// A number in [0, 1) from the standard library's per-process random hash keys and the clock
/// (good enough to spread reconnections; not for anything secret).
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    hasher.write_u32(nanos);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Which way a packet went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Sent,
    Received,
}

/// Sees every packet the client sends (as it is queued for writing) and receives (as it is
/// decoded): for debug output such as `tern sub -d`. It runs on the client's task: keep it short.
#[derive(Clone)]
pub struct PacketObserver(pub Arc<ObserverFn>);

/// The function a [`PacketObserver`] calls.
pub type ObserverFn = dyn Fn(Direction, &Packet) + Send + Sync;

impl std::fmt::Debug for PacketObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PacketObserver")
    }
}

/// Everything a [`Client`](crate::Client) needs to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub endpoint: Endpoint,
    pub version: ProtocolVersion,
    /// May be empty: the broker then assigns one (MQTT 5) or needs clean start (3.1.1).
    pub client_id: String,
    /// Clean start (MQTT 5) / clean session (3.1.1). With `false` the broker keeps the session,
    /// and a reconnection resumes it: unacknowledged publishes are sent again with DUP, and
    /// releases again.
    pub clean_start: bool,
    /// Seconds; 0 = no keep-alive. The broker's Server Keep Alive takes its place when sent.
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub will: Option<LastWill>,
    /// MQTT 5 CONNECT properties (session expiry, receive maximum, user properties...).
    pub properties: Properties,
    /// `None`: a lost connection ends the client; otherwise reconnect with this backoff.
    pub reconnect: Option<Backoff>,
    /// The most QoS 1 and 2 publishes unacknowledged at once; the broker's Receive Maximum
    /// lowers it.
    pub max_inflight: u16,
    /// Publishes waiting for room in the window (or for the connection); beyond this,
    /// `publish` waits. Bounds the memory a slow broker can make the client hold.
    pub max_queued: usize,
    /// Events (messages, connection changes) the application has not read yet; beyond this
    /// the client stops reading from the broker (TCP pushes back on it).
    pub event_capacity: usize,
    /// The largest packet accepted from the broker (bytes); sent as Maximum Packet Size (MQTT 5).
    pub max_packet_size: u32,
    /// Time for the connection and the CONNACK.
    pub connect_timeout: Duration,
    pub observer: Option<PacketObserver>,
    /// Inbound QoS 1 and 2 are acknowledged only when the application calls
    /// [`Client::ack`](crate::Client::ack) (a bridge: once the message is durable where it
    /// goes), instead of once queued for it. A message not acknowledged is not handed out
    /// again when the broker sends it again.
    pub manual_ack: bool,
    /// Endpoints tried after `endpoint`, in turn: a connection attempt that fails moves to the
    /// next (after the backoff delay), and the last wraps round to `endpoint`.
    pub fallback_endpoints: Vec<Endpoint>,
    /// Sets the top bit of CONNECT's protocol level (Mosquitto's `try_private`): a Mosquitto
    /// broker then takes the client for a bridge and does not send it back what it published
    /// (MQTT 3.1.1 has no No Local). Brokers that do not know it refuse the connection.
    pub try_private: bool,
}

impl ClientOptions {
    /// Defaults for a client of `endpoint` named `client_id`: MQTT 3.1.1, clean start,
    /// keep-alive 60 s, no reconnection.
    pub fn new(endpoint: Endpoint, client_id: impl Into<String>) -> ClientOptions {
        ClientOptions {
            endpoint,
            version: ProtocolVersion::V311,
            client_id: client_id.into(),
            clean_start: true,
            keep_alive: 60,
            username: None,
            password: None,
            will: None,
            properties: Properties::default(),
            reconnect: None,
            max_inflight: 64,
            max_queued: 1024,
            event_capacity: 256,
            max_packet_size: 256 * 1024 * 1024 - 1,
            connect_timeout: Duration::from_secs(15),
            observer: None,
            manual_ack: false,
            fallback_endpoints: Vec::new(),
            try_private: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13: reconnection backs off exponentially up to its cap, with jitter below the delay.
    #[test]
    fn backoff_grows_to_its_cap_with_jitter_below() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            factor: 2.0,
            jitter: 0.5,
        };
        for attempt in 0..10 {
            let full = (0.1 * 2f64.powi(attempt as i32)).min(2.0);
            let delay = backoff.delay(attempt).as_secs_f64();
            assert!(
                delay <= full + 1e-9 && delay >= full * 0.5 - 1e-9,
                "{attempt}: {delay}"
            );
        }
    }
}
