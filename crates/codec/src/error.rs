//! What can be wrong with bytes from the network, and what the broker answers to each.
//!
//! Every variant names one cause; [`DecodeError::reason_code`] maps it to the reason code the
//! specification asks for (section 4.13): Malformed Packet when the bytes cannot be parsed as the
//! specification defines them, Protocol Error when they parse but break a rule about their content.
//! An MQTT 3.x connection has no reason codes: the broker closes it in either case.

use crate::packet::PacketType;
use crate::reason::ReasonCode;

/// Why a packet could not be decoded. Display texts name the spec rule where one applies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("variable byte integer longer than four bytes [MQTT-1.5.5-1]")]
    VarIntTooLong,
    #[error("variable byte integer not in its shortest form [MQTT-1.5.5-1]")]
    VarIntNotMinimal,
    #[error("packet of {size} bytes exceeds the maximum packet size of {max}")]
    PacketTooLarge { size: u32, max: u32 },
    #[error("packet type {0} is reserved [MQTT-2.1.2]")]
    ReservedPacketType(u8),
    #[error("reserved flags 0x{flags:X} in the fixed header of {packet:?} [MQTT-2.1.3-1]")]
    InvalidFixedHeaderFlags { packet: PacketType, flags: u8 },
    #[error("QoS 3 is not a quality of service [MQTT-3.3.1-4]")]
    InvalidQos,
    #[error("DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]")]
    DupOnQos0,
    #[error("{0:?} with packet identifier 0 [MQTT-2.2.1-3]")]
    ZeroPacketId(PacketType),
    #[error("{packet:?} ends inside its {field}")]
    Truncated {
        packet: PacketType,
        field: &'static str,
    },
    #[error(
        "{packet:?} has {extra} bytes after its content: remaining length disagrees [MQTT-2.1.4]"
    )]
    TrailingBytes { packet: PacketType, extra: usize },
    #[error("ill-formed UTF-8 string [MQTT-1.5.4-1]")]
    InvalidUtf8,
    #[error("UTF-8 string contains U+0000 [MQTT-1.5.4-2]")]
    NullCharacter,
    #[error("UTF-8 string longer than 65 535 bytes [MQTT-1.5.4]")]
    StringTooLong,
    #[error("protocol name is not MQTT or MQIsdp [MQTT-3.1.2-1]")]
    InvalidProtocolName,
    #[error("protocol level {0} is not supported [MQTT-3.1.2-2]")]
    UnsupportedProtocolVersion(u8),
    #[error("reserved bit of the CONNECT flags is set [MQTT-3.1.2-3]")]
    ConnectReservedFlag,
    #[error("reserved bits of the CONNACK flags are set [MQTT-3.2.2-1]")]
    ConnAckReservedFlags,
    #[error("will QoS or will retain set without the will flag [MQTT-3.1.2-11, MQTT-3.1.2-13]")]
    WillFlagsWithoutWill,
    #[error("password flag set without the user name flag [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,
    #[error("topic name is empty [MQTT-4.7.3-1]")]
    EmptyTopicName,
    #[error("topic name is empty and there is no topic alias (MQTT 5 section 3.3.2.3.4)")]
    EmptyTopicWithoutAlias,
    #[error("topic name contains a wildcard [MQTT-3.3.2-2]")]
    WildcardInTopicName,
    #[error("topic filter is empty [MQTT-4.7.3-1]")]
    EmptyTopicFilter,
    #[error("'#' is not the last level of the topic filter [MQTT-4.7.1-1]")]
    MisplacedMultiLevelWildcard,
    #[error("'+' does not occupy a whole level of the topic filter [MQTT-4.7.1-2]")]
    MisplacedSingleLevelWildcard,
    #[error(
        "shared subscription is not $share/{{ShareName}}/{{filter}} [MQTT-4.8.2-1, MQTT-4.8.2-2]"
    )]
    InvalidSharedSubscription,
    #[error("{0:?} carries no topic filter [MQTT-3.8.3-3, MQTT-3.10.3-2]")]
    NoTopicFilters(PacketType),
    #[error("reserved bits of the subscription options are set [MQTT-3.8.3-5]")]
    SubscriptionOptionsReserved,
    #[error("retain handling 3 is not defined [MQTT-3.8.3-5]")]
    InvalidRetainHandling,
    #[error("no local set on a shared subscription [MQTT-3.8.3-4]")]
    NoLocalOnSharedSubscription,
    #[error("reason code 0x{code:02X} is not allowed in {packet:?}")]
    InvalidReasonCode { packet: PacketType, code: u8 },
    #[error("property 0x{0:02X} is not defined")]
    UnknownProperty(u32),
    #[error("property 0x{property:02X} is not allowed in {packet:?}{}", if *.in_will { " will properties" } else { "" })]
    PropertyNotAllowed {
        packet: PacketType,
        property: u8,
        in_will: bool,
    },
    #[error("property 0x{0:02X} appears more than once")]
    DuplicateProperty(u8),
    #[error("property 0x{property:02X} has the invalid value {value}")]
    InvalidPropertyValue { property: u8, value: u32 },
    #[error("authentication data without an authentication method")]
    AuthenticationDataWithoutMethod,
    #[error("topic alias 0 is not permitted [MQTT-3.3.2-8]")]
    TopicAliasZero,
    #[error("response topic is not a valid topic name [MQTT-3.3.2-14]")]
    InvalidResponseTopic,
}

impl DecodeError {
    /// The reason code an MQTT 5 receiver sends in its DISCONNECT (or CONNACK) for this error.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError as E;
        match self {
            E::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            E::UnsupportedProtocolVersion(_) => ReasonCode::UnsupportedProtocolVersion,
            E::TopicAliasZero => ReasonCode::TopicAliasInvalid,
            E::EmptyTopicWithoutAlias
            | E::NoTopicFilters(_)
            | E::InvalidRetainHandling
            | E::NoLocalOnSharedSubscription
            | E::DuplicateProperty(_)
            | E::InvalidPropertyValue { .. }
            | E::AuthenticationDataWithoutMethod
            | E::ZeroPacketId(_) => ReasonCode::ProtocolError,
            E::VarIntTooLong
            | E::VarIntNotMinimal
            | E::ReservedPacketType(_)
            | E::InvalidFixedHeaderFlags { .. }
            | E::InvalidQos
            | E::DupOnQos0
            | E::Truncated { .. }
            | E::TrailingBytes { .. }
            | E::InvalidUtf8
            | E::NullCharacter
            | E::StringTooLong
            | E::InvalidProtocolName
            | E::ConnectReservedFlag
            | E::ConnAckReservedFlags
            | E::WillFlagsWithoutWill
            | E::PasswordWithoutUsername
            | E::EmptyTopicName
            | E::WildcardInTopicName
            | E::EmptyTopicFilter
            | E::MisplacedMultiLevelWildcard
            | E::MisplacedSingleLevelWildcard
            | E::InvalidSharedSubscription
            | E::SubscriptionOptionsReserved
            | E::InvalidReasonCode { .. }
            | E::UnknownProperty(_)
            | E::PropertyNotAllowed { .. }
            | E::InvalidResponseTopic => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a packet could not be encoded. A packet the broker built from decoded input never fails;
/// these guard packets assembled by hand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{0:?} would be longer than 268 435 455 bytes")]
    PacketTooLarge(PacketType),
    #[error("{field} is {len} bytes; binary data is limited to 65 535")]
    BinaryTooLong { field: &'static str, len: usize },
    #[error("{0:?} at QoS > 0 needs a non-zero packet identifier [MQTT-2.2.1-3]")]
    ZeroPacketId(PacketType),
    #[error("subscription identifier {0} is outside 1..=268 435 455")]
    InvalidSubscriptionIdentifier(u32),
    #[error("property 0x{property:02X} is not allowed in {packet:?}")]
    PropertyNotAllowed { packet: PacketType, property: u8 },
    #[error("reason code {code} is not allowed in {packet:?}")]
    ReasonCodeNotAllowed {
        packet: PacketType,
        code: ReasonCode,
    },
    #[error("{packet:?} does not exist in protocol level {level}")]
    NotInVersion { packet: PacketType, level: u8 },
}
