//! # tern-client
//!
//! An async MQTT client on [`tern_codec`] and tokio: MQTT 3.1.1 and 5, QoS 0, 1 and 2 with an
//! outbound window (the broker's Receive Maximum), keep-alive, will, MQTT 5 properties,
//! reconnection with exponential backoff and jitter that resumes the session, over TCP, TLS,
//! WebSockets and WebSockets over TLS.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tern_client::ClientError> {
//! use tern_client::{Client, ClientOptions, Endpoint, Event, Message, QoS};
//! let options = ClientOptions::new(Endpoint::tcp("127.0.0.1", 1883), "demo");
//! let (client, mut events, _connack) = Client::connect(options).await?;
//! client.subscribe([("a/#".to_string(), Default::default())], Default::default()).await?.await?;
//! client.publish(Message::new("a/b", "hello", QoS::AtLeastOnce)).await?.await?;
//! while let Some(event) = events.recv().await {
//!     if let Event::Message(message) = event {
//!         println!("{} {:?}", message.topic, message.payload);
//!         break;
//!     }
//! }
//! client.disconnect().await
//! # }
//! ```
//!
//! ## Delivery guarantees and their limits
//!
//! - A received QoS 1 or 2 message is acknowledged (PUBACK, PUBREC) once it is queued for the
//!   application. Messages queued when the connection ends are still handed out, before
//!   [`Event::Disconnected`]: the broker will not send them again.
//! - The client tells the application everything in order and waits for it to read: an
//!   application that keeps [`Events`] but stops reading holds up reconnection (and, once the
//!   queue is full, reading from the broker). Drop `Events` to ignore events.
//! - Inbound topic aliases (MQTT 5) are resolved: set `properties.topic_alias_maximum` in
//!   the options and every [`Message`] still carries its topic (the alias stays in its
//!   properties). An alias above that maximum, or one never set on the connection, ends the
//!   connection with DISCONNECT 0x94 / 0x82.
//! - With a resumed session (clean start 0, session present 1), unacknowledged publishes go
//!   again with DUP and the same packet id, and PUBREL again; publishes beyond the broker's
//!   new Receive Maximum wait for room, ahead of new ones.
//! - Without the session (session present 0, e.g. it expired), publishes not yet acknowledged
//!   are sent again as new messages: a QoS 2 message whose PUBREC was lost may then arrive
//!   twice, so exactly-once holds only while the broker keeps the session.
//! - After DISCONNECT 0x8E (session taken over), 0x98 (administrative action), 0x9C, 0x9D or
//!   0x9F the client waits the longest delay of its [`Backoff`] before reconnecting.
//! - Over WebSockets, a message larger than `max_packet_size` + 1 MiB ends the connection.

// Data from the network must never panic the client: no unwrap or expect outside tests.
#![warn(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

mod client;
mod error;
mod handshake;
mod link;
mod options;
mod session;
pub mod transport;

pub use client::{Client, Connected, Event, Events, Message, Pending};
pub use error::ClientError;
pub use handshake::handshake;
pub use options::{Backoff, ClientOptions, Direction, LastWill, PacketObserver};
pub use session::PublishOutcome;
pub use tern_codec::ConnAck as ConnAckPacket;
pub use tern_codec::{
    Connect, MqttStr, Packet, Properties, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubAck,
    SubscriptionOptions, UnsubAck,
};
pub use transport::{Endpoint, TlsOptions, Transport, TransportError};
