//! Reason codes (MQTT 5.0 section 2.4): one enum with the specification's values, and the table of
//! which packet may carry which. MQTT 3.x return codes are mapped onto these at the edge of the codec,
//! so the broker speaks one vocabulary for every protocol version.

use crate::packet::PacketType;

/// A reason code with the value the specification gives it.
///
/// `0x00` has three names in the specification (Success, Normal disconnection, Granted QoS 0); this
/// enum calls it [`ReasonCode::Success`] and offers the other names as constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum ReasonCode {
    #[default]
    Success = 0x00,
    GrantedQos1 = 0x01,
    GrantedQos2 = 0x02,
    DisconnectWithWillMessage = 0x04,
    NoMatchingSubscribers = 0x10,
    NoSubscriptionExisted = 0x11,
    ContinueAuthentication = 0x18,
    ReAuthenticate = 0x19,
    UnspecifiedError = 0x80,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    UnsupportedProtocolVersion = 0x84,
    ClientIdentifierNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerBusy = 0x89,
    Banned = 0x8A,
    ServerShuttingDown = 0x8B,
    BadAuthenticationMethod = 0x8C,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicFilterInvalid = 0x8F,
    TopicNameInvalid = 0x90,
    PacketIdentifierInUse = 0x91,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
    QuotaExceeded = 0x97,
    AdministrativeAction = 0x98,
    PayloadFormatInvalid = 0x99,
    RetainNotSupported = 0x9A,
    QosNotSupported = 0x9B,
    UseAnotherServer = 0x9C,
    ServerMoved = 0x9D,
    SharedSubscriptionsNotSupported = 0x9E,
    ConnectionRateExceeded = 0x9F,
    MaximumConnectTime = 0xA0,
    SubscriptionIdentifiersNotSupported = 0xA1,
    WildcardSubscriptionsNotSupported = 0xA2,
}

use PacketType as P;
use ReasonCode as R;

impl ReasonCode {
    /// `0x00` as DISCONNECT calls it.
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode::Success;
    /// `0x00` as SUBACK calls it.
    pub const GRANTED_QOS_0: ReasonCode = ReasonCode::Success;

    /// Every reason code, in order of value.
    pub const ALL: [ReasonCode; 43] = [
        R::Success,
        R::GrantedQos1,
        R::GrantedQos2,
        R::DisconnectWithWillMessage,
        R::NoMatchingSubscribers,
        R::NoSubscriptionExisted,
        R::ContinueAuthentication,
        R::ReAuthenticate,
        R::UnspecifiedError,
        R::MalformedPacket,
        R::ProtocolError,
        R::ImplementationSpecificError,
        R::UnsupportedProtocolVersion,
        R::ClientIdentifierNotValid,
        R::BadUserNameOrPassword,
        R::NotAuthorized,
        R::ServerUnavailable,
        R::ServerBusy,
        R::Banned,
        R::ServerShuttingDown,
        R::BadAuthenticationMethod,
        R::KeepAliveTimeout,
        R::SessionTakenOver,
        R::TopicFilterInvalid,
        R::TopicNameInvalid,
        R::PacketIdentifierInUse,
        R::PacketIdentifierNotFound,
        R::ReceiveMaximumExceeded,
        R::TopicAliasInvalid,
        R::PacketTooLarge,
        R::MessageRateTooHigh,
        R::QuotaExceeded,
        R::AdministrativeAction,
        R::PayloadFormatInvalid,
        R::RetainNotSupported,
        R::QosNotSupported,
        R::UseAnotherServer,
        R::ServerMoved,
        R::SharedSubscriptionsNotSupported,
        R::ConnectionRateExceeded,
        R::MaximumConnectTime,
        R::SubscriptionIdentifiersNotSupported,
        R::WildcardSubscriptionsNotSupported,
    ];

    /// The code with this value, if the specification defines one.
    pub fn from_u8(value: u8) -> Option<ReasonCode> {
        // ALL is sorted by value.
        ReasonCode::ALL
            .binary_search_by_key(&value, |code| *code as u8)
            .ok()
            .map(|index| ReasonCode::ALL[index])
    }

    /// The value on the wire.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// Codes of 0x80 and above report a failure.
    pub const fn is_error(self) -> bool {
        self as u8 >= 0x80
    }

    /// Whether the specification allows this code in a packet of type `packet` (table 2-6).
    pub fn allowed_in(self, packet: PacketType) -> bool {
        const ACKS: &[PacketType] = &[P::PubAck, P::PubRec];
        let packets: &[PacketType] = match self {
            R::Success => &[
                P::ConnAck,
                P::PubAck,
                P::PubRec,
                P::PubRel,
                P::PubComp,
                P::SubAck,
                P::UnsubAck,
                P::Disconnect,
                P::Auth,
            ],
            R::GrantedQos1 | R::GrantedQos2 => &[P::SubAck],
            R::DisconnectWithWillMessage => &[P::Disconnect],
            R::NoMatchingSubscribers => ACKS,
            R::NoSubscriptionExisted => &[P::UnsubAck],
            R::ContinueAuthentication | R::ReAuthenticate => &[P::Auth],
            R::UnspecifiedError | R::ImplementationSpecificError | R::NotAuthorized => &[
                P::ConnAck,
                P::PubAck,
                P::PubRec,
                P::SubAck,
                P::UnsubAck,
                P::Disconnect,
            ],
            R::MalformedPacket
            | R::ProtocolError
            | R::ServerBusy
            | R::BadAuthenticationMethod
            | R::PacketTooLarge
            | R::RetainNotSupported
            | R::QosNotSupported
            | R::UseAnotherServer
            | R::ServerMoved
            | R::ConnectionRateExceeded => &[P::ConnAck, P::Disconnect],
            R::UnsupportedProtocolVersion
            | R::ClientIdentifierNotValid
            | R::BadUserNameOrPassword
            | R::ServerUnavailable
            | R::Banned => &[P::ConnAck],
            R::ServerShuttingDown
            | R::KeepAliveTimeout
            | R::SessionTakenOver
            | R::ReceiveMaximumExceeded
            | R::TopicAliasInvalid
            | R::MessageRateTooHigh
            | R::AdministrativeAction
            | R::MaximumConnectTime => &[P::Disconnect],
            R::TopicFilterInvalid => &[P::SubAck, P::UnsubAck, P::Disconnect],
            R::TopicNameInvalid | R::PayloadFormatInvalid => {
                &[P::ConnAck, P::PubAck, P::PubRec, P::Disconnect]
            }
            R::PacketIdentifierInUse => &[P::PubAck, P::PubRec, P::SubAck, P::UnsubAck],
            R::PacketIdentifierNotFound => &[P::PubRel, P::PubComp],
            R::QuotaExceeded => &[P::ConnAck, P::PubAck, P::PubRec, P::SubAck, P::Disconnect],
            R::SharedSubscriptionsNotSupported
            | R::SubscriptionIdentifiersNotSupported
            | R::WildcardSubscriptionsNotSupported => &[P::SubAck, P::Disconnect],
        };
        packets.contains(&packet)
    }
}

impl std::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} (0x{:02X})", self, *self as u8)
    }
}

/// The MQTT 3.x CONNACK return code (3.1.1 section 3.2.2.3) for a reason code.
///
/// Refusals without a 3.x equivalent become "server unavailable" (3), the closest 3.x meaning.
pub(crate) fn connack_v3_code(code: ReasonCode) -> u8 {
    match code {
        R::Success => 0,
        R::UnsupportedProtocolVersion => 1,
        R::ClientIdentifierNotValid => 2,
        R::BadUserNameOrPassword => 4,
        R::NotAuthorized | R::Banned => 5,
        _ => 3,
    }
}

/// The reason code for an MQTT 3.x CONNACK return code; `None` for the reserved values 6-255.
pub(crate) fn connack_from_v3_code(code: u8) -> Option<ReasonCode> {
    Some(match code {
        0 => R::Success,
        1 => R::UnsupportedProtocolVersion,
        2 => R::ClientIdentifierNotValid,
        3 => R::ServerUnavailable,
        4 => R::BadUserNameOrPassword,
        5 => R::NotAuthorized,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_sorted_and_values_round_trip() {
        for pair in ReasonCode::ALL.windows(2) {
            assert!(pair[0] < pair[1]);
        }
        for code in ReasonCode::ALL {
            assert_eq!(ReasonCode::from_u8(code.as_u8()), Some(code));
        }
        let defined = (0..=255u8).filter_map(ReasonCode::from_u8).count();
        assert_eq!(defined, ReasonCode::ALL.len());
        assert_eq!(ReasonCode::from_u8(0x03), None);
    }

    #[test]
    fn table_2_6_spot_checks() {
        assert!(R::Success.allowed_in(P::Auth));
        assert!(!R::Success.allowed_in(P::Publish));
        assert!(R::GrantedQos2.allowed_in(P::SubAck));
        assert!(!R::GrantedQos2.allowed_in(P::PubAck));
        assert!(R::NoMatchingSubscribers.allowed_in(P::PubRec));
        assert!(!R::NoMatchingSubscribers.allowed_in(P::PubComp));
        assert!(R::PacketIdentifierNotFound.allowed_in(P::PubRel));
        assert!(R::SessionTakenOver.allowed_in(P::Disconnect));
        assert!(!R::SessionTakenOver.allowed_in(P::ConnAck));
        assert!(R::ServerBusy.allowed_in(P::ConnAck));
        assert!(R::QuotaExceeded.allowed_in(P::SubAck));
        assert!(!R::QuotaExceeded.allowed_in(P::UnsubAck));
        // 0x9F is listed for CONNACK and DISCONNECT (table 2-6 and section 3.14.2.1).
        assert!(R::ConnectionRateExceeded.allowed_in(P::ConnAck));
        assert!(R::ConnectionRateExceeded.allowed_in(P::Disconnect));
    }

    #[test]
    fn v3_connack_codes_round_trip() {
        for value in 0..=5 {
            let code = connack_from_v3_code(value).unwrap();
            assert_eq!(connack_v3_code(code), value);
        }
        assert_eq!(connack_from_v3_code(6), None);
    }
}
