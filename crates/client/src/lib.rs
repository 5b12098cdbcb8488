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
