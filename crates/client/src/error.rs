//! The client's errors: one variant per cause.

use tern_codec::{
    DecodeError, EncodeError, InvalidMqttStr, PacketType, ProtocolVersion, QoS, ReasonCode,
};

use crate::transport::TransportError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The stream to the broker could not be opened.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Reading or writing the stream failed.
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    /// The broker answered CONNECT with a refusal.
    #[error("connection refused: {reason_code}")]
    Refused {
        reason_code: ReasonCode,
        version: ProtocolVersion,
        reason_string: Option<String>,
    },
    /// No CONNACK in time.
    #[error("no CONNACK within the connect timeout")]
    ConnectTimeout,
    /// The broker closed the stream without DISCONNECT.
    #[error("the broker closed the connection")]
    ClosedByBroker,
    /// The broker sent DISCONNECT (MQTT 5, with a reason).
    #[error("disconnected by the broker: {reason_code}{}", reason_string.as_deref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Disconnected {
        reason_code: ReasonCode,
        reason_string: Option<String>,
    },
    /// No PINGRESP within the keep-alive after a PINGREQ.
    #[error("keep-alive timeout: the broker did not answer PINGREQ")]
    KeepAliveTimeout,
    /// The broker sent bytes that are not MQTT.
    #[error("malformed packet from the broker: {0}")]
    Decode(#[from] DecodeError),
    /// The broker sent a packet a client never receives (or AUTH, which this client does not do).
    #[error("unexpected {0:?} from the broker")]
    Unexpected(PacketType),
    /// The broker broke a rule of the protocol (e.g. an unknown topic alias); MQTT 5: the
    /// client sent DISCONNECT with `reason_code` before closing.
    #[error("protocol error by the broker: {detail}")]
    ProtocolViolation {
        reason_code: ReasonCode,
        detail: String,
    },
    /// A packet the application asked for cannot be encoded.
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    /// A topic, client id or property is not a valid MQTT string.
    #[error("invalid string: {0}")]
    InvalidString(#[from] InvalidMqttStr),
    /// A topic name or filter breaks the rules of section 4.7.
    #[error("invalid topic {topic:?}: {error}")]
    InvalidTopic { topic: String, error: DecodeError },
    /// The packet is larger than the broker's Maximum Packet Size.
    #[error("packet of {size} bytes is larger than the broker accepts ({max})")]
    PacketTooLarge { size: usize, max: u32 },
    /// The broker's Maximum QoS is lower than the publish's.
    #[error("the broker takes QoS {} at most", .0.as_u8())]
    QosNotSupported(QoS),
    /// The broker does not keep retained messages.
    #[error("the broker does not keep retained messages")]
    RetainNotSupported,
    /// All 65 535 packet identifiers are in use.
    #[error("no free packet identifier")]
    NoPacketId,
    /// QoS 0 publish while not connected: at most once means not at all then.
    #[error("not connected")]
    NotConnected,
    /// The client has ended (disconnected, or gave up on a lost connection).
    #[error("the client is closed")]
    Closed,
}
