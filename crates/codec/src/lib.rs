//! # tern-codec
//!
//! The MQTT wire format of protocol levels 3 (MQTT 3.1), 4 (3.1.1) and 5 (5.0): every control
//! packet, decoded from and encoded to bytes. No I/O and no runtime: the caller owns the buffers.
//!
//! - [`Packet::decode`] reads from a `BytesMut` as bytes arrive: `Ok(None)` until a whole packet is
//!   there; the maximum packet size is enforced from the fixed header, before the body is waited
//!   for. Topic names, strings and payloads of the result are slices of the read buffer.
//! - [`Packet::encode`] appends a packet in the requested version.
//! - Every check the specification puts on a receiver is made; each failure is a
//!   [`DecodeError`] variant that names its rule and maps to the reason code to answer with.

// Data from the network must never panic the broker: no unwrap or expect outside tests.
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod connect;
mod control;
mod error;
mod packet;
mod properties;
mod publish;
mod qos;
mod reason;
mod string;
mod subscribe;
pub mod topic;
mod varint;
mod wire;

pub use connect::{ConnAck, Connect, Will};
pub use control::{Auth, Disconnect};
pub use error::{DecodeError, EncodeError};
pub use packet::{FixedHeader, Packet, PacketType};
pub use properties::{
    Properties, PropertyPlace, id as property_id, is_defined as property_defined, property_allowed,
};
pub use publish::{Ack, PlainPublish, Publish};
pub use qos::{ProtocolVersion, QoS};
pub use reason::ReasonCode;
pub use string::{InvalidMqttStr, MAX_STRING_LEN, MqttStr};
pub use subscribe::{
    RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions, UnsubAck, Unsubscribe,
};
pub use varint::MAX_VARINT;
