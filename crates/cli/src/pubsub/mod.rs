//! `tern pub` and `tern sub`: MQTT from the shell on tern-client, with the options, output,
//! messages and exit codes of `mosquitto_pub` and `mosquitto_sub`, so that a script can swap
//! one for the other.

mod args;
pub mod format;
mod publish;
mod subscribe;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use tern_client::{
    ClientError, Direction, Packet, PacketObserver, ProtocolVersion, ReasonCode, TransportError,
};

pub use args::{ConnArgs, PacketProperties, parse_url};
pub use publish::PubArgs;
pub use subscribe::SubArgs;

/// `tern pub`: returns the exit status.
pub fn pub_main(args: PubArgs) -> i32 {
    runtime_then(|| publish::run(args))
}

/// `tern sub`: returns the exit status.
pub fn sub_main(args: SubArgs) -> i32 {
    runtime_then(|| subscribe::run(args))
}

fn runtime_then<F, Fut>(body: F) -> i32
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = i32>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error: cannot start the runtime: {error}");
            return 1;
        }
    };
    let status = runtime.block_on(body());
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    status
}

/// Prints an error on stderr unless `--quiet`.
fn complain(quiet: bool, text: &str) {
    if !quiet {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{text}");
    }
}

/// mosquitto's words for a 3.x CONNACK return code.
fn connack_string(code: ReasonCode) -> &'static str {
    match code {
        ReasonCode::UnsupportedProtocolVersion => {
            "Connection Refused: unacceptable protocol version."
        }
        ReasonCode::ClientIdentifierNotValid => "Connection Refused: identifier rejected.",
        ReasonCode::ServerUnavailable => "Connection Refused: broker unavailable.",
        ReasonCode::BadUserNameOrPassword => "Connection Refused: bad user name or password.",
        ReasonCode::NotAuthorized => "Connection Refused: not authorised.",
        _ => "Connection Refused: unknown reason.",
    }
}

/// The 3.x CONNACK return code (the exit status of a refused connection).
fn connack_code(code: ReasonCode) -> i32 {
    match code {
        ReasonCode::UnsupportedProtocolVersion => 1,
        ReasonCode::ClientIdentifierNotValid => 2,
        ReasonCode::ServerUnavailable => 3,
        ReasonCode::BadUserNameOrPassword => 4,
        ReasonCode::NotAuthorized => 5,
        _ => 3,
    }
}

/// mosquitto's words for an MQTT 5 reason code.
pub fn reason_string(code: ReasonCode) -> &'static str {
    use ReasonCode as R;
    match code {
        R::Success => "Success",
        R::GrantedQos1 => "Granted QoS 1",
        R::GrantedQos2 => "Granted QoS 2",
        R::DisconnectWithWillMessage => "Disconnect with Will Message",
        R::NoMatchingSubscribers => "No matching subscribers",
        R::NoSubscriptionExisted => "No subscription existed",
        R::ContinueAuthentication => "Continue authentication",
        R::ReAuthenticate => "Re-authenticate",
        R::UnspecifiedError => "Unspecified error",
        R::MalformedPacket => "Malformed Packet",
        R::ProtocolError => "Protocol Error",
        R::ImplementationSpecificError => "Implementation specific error",
        R::UnsupportedProtocolVersion => "Unsupported Protocol Version",
        R::ClientIdentifierNotValid => "Client Identifier not valid",
        R::BadUserNameOrPassword => "Bad User Name or Password",
        R::NotAuthorized => "Not authorized",
        R::ServerUnavailable => "Server unavailable",
        R::ServerBusy => "Server busy",
        R::Banned => "Banned",
        R::ServerShuttingDown => "Server shutting down",
        R::BadAuthenticationMethod => "Bad authentication method",
        R::KeepAliveTimeout => "Keep Alive timeout",
        R::SessionTakenOver => "Session taken over",
        R::TopicFilterInvalid => "Topic Filter invalid",
        R::TopicNameInvalid => "Topic Name invalid",
        R::PacketIdentifierInUse => "Packet Identifier in use",
        R::PacketIdentifierNotFound => "Packet Identifier not found",
        R::ReceiveMaximumExceeded => "Receive Maximum exceeded",
        R::TopicAliasInvalid => "Topic Alias invalid",
        R::PacketTooLarge => "Packet too large",
        R::MessageRateTooHigh => "Message rate too high",
        R::QuotaExceeded => "Quota exceeded",
        R::AdministrativeAction => "Administrative action",
        R::PayloadFormatInvalid => "Payload format invalid",
        R::RetainNotSupported => "Retain not supported",
        R::QosNotSupported => "QoS not supported",
        R::UseAnotherServer => "Use another server",
        R::ServerMoved => "Server moved",
        R::SharedSubscriptionsNotSupported => "Shared Subscriptions not supported",
        R::ConnectionRateExceeded => "Connection rate exceeded",
        R::MaximumConnectTime => "Maximum connect time",
        R::SubscriptionIdentifiersNotSupported => "Subscription identifiers not supported",
        R::WildcardSubscriptionsNotSupported => "Wildcard Subscriptions not supported",
    }
}

/// Which tool reports: mosquitto_pub adds a second line after a refused CONNACK.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Pub,
    Sub,
}

/// Reports a failed first connection as mosquitto's tools do; returns the exit status.
fn connect_failed(error: &ClientError, tool: Tool, quiet: bool) -> i32 {
    match error {
        ClientError::Refused {
            reason_code,
            version,
            ..
        } => {
            let (line, status) = if version.is_v5() {
                let mut line = format!("Connection error: {}", reason_string(*reason_code));
                if *reason_code == ReasonCode::UnsupportedProtocolVersion {
                    line.push_str(". Try connecting to an MQTT v5 broker, or use MQTT v3.x mode.");
                }
                (line, i32::from(reason_code.as_u8()))
            } else {
                (
                    format!("Connection error: {}", connack_string(*reason_code)),
                    connack_code(*reason_code),
                )
            };
            complain(quiet, &line);
            if tool == Tool::Pub {
                complain(
                    quiet,
                    if version.is_v5() {
                        "Error: A network protocol error occurred when communicating with the \
                         broker."
                    } else {
                        "Error: The connection was refused."
                    },
                );
            }
            status
        }
        ClientError::Transport(TransportError::Refused(_)) => {
            complain(quiet, "Error: Connection refused");
            1
        }
        ClientError::Transport(
            TransportError::Resolve { .. } | TransportError::NoAddress { .. },
        ) => {
            complain(quiet, "Unable to connect (Lookup error.).");
            1
        }
        other => {
            complain(quiet, &format!("Error: {other}"));
            1
        }
    }
}

/// `-d`: libmosquitto's debug lines for the packets, on stdout.
fn debug_observer(client_id: String, version: ProtocolVersion) -> PacketObserver {
    // libmosquitto numbers QoS 0 publishes too; the wire has no id for them.
    let qos0_mid = Arc::new(AtomicU16::new(0));
    PacketObserver(Arc::new(move |direction, packet| {
        if let Some(line) = debug_line(&client_id, version, direction, packet, &qos0_mid) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }))
}

fn debug_line(
    id: &str,
    version: ProtocolVersion,
    direction: Direction,
    packet: &Packet,
    qos0_mid: &AtomicU16,
) -> Option<String> {
    let verb = match direction {
        Direction::Sent => "sending",
        Direction::Received => "received",
    };
    let what = match packet {
        Packet::Connect(_) => "CONNECT".to_owned(),
        Packet::ConnAck(c) => format!("CONNACK ({})", connack_number(c, version)),
        Packet::Publish(p) => {
            let mid = if p.packet_id == 0 && direction == Direction::Sent {
                qos0_mid.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
            } else {
                p.packet_id
            };
            format!(
                "PUBLISH (d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
                u8::from(p.dup),
                p.qos.as_u8(),
                u8::from(p.retain),
                mid,
                p.topic,
                p.payload.len()
            )
        }
        Packet::PubAck(a) if direction == Direction::Received => {
            format!(
                "PUBACK (Mid: {}, RC:{})",
                a.packet_id,
                a.reason_code.as_u8()
            )
        }
        Packet::PubAck(a) => format!("PUBACK (m{}, rc{})", a.packet_id, a.reason_code.as_u8()),
        Packet::PubRec(a) if direction == Direction::Received => {
            format!("PUBREC (Mid: {})", a.packet_id)
        }
        Packet::PubRec(a) => format!("PUBREC (m{}, rc{})", a.packet_id, a.reason_code.as_u8()),
        Packet::PubRel(a) if direction == Direction::Received => {
            format!("PUBREL (Mid: {})", a.packet_id)
        }
        Packet::PubRel(a) => format!("PUBREL (m{})", a.packet_id),
        Packet::PubComp(a) if direction == Direction::Received => {
            format!(
                "PUBCOMP (Mid: {}, RC:{})",
                a.packet_id,
                a.reason_code.as_u8()
            )
        }
        Packet::PubComp(a) => format!("PUBCOMP (m{})", a.packet_id),
        Packet::Subscribe(s) => {
            let lines: Vec<String> = s
                .subscriptions
                .iter()
                .map(|sub| {
                    let o = &sub.options;
                    let options = (o.retain_handling as u8) << 4
                        | u8::from(o.retain_as_published) << 3
                        | u8::from(o.no_local) << 2;
                    format!(
                        "Client {id} sending SUBSCRIBE (Mid: {}, Topic: {}, QoS: {}, Options: \
                         0x{options:02x})",
                        s.packet_id,
                        sub.filter,
                        o.qos.as_u8()
                    )
                })
                .collect();
            return Some(lines.join("\n"));
        }
        Packet::SubAck(ack) => {
            // mosquitto_sub's own line follows libmosquitto's at once.
            let granted: Vec<String> = ack
                .reason_codes
                .iter()
                .map(|code| code.as_u8().to_string())
                .collect();
            format!(
                "SUBACK\nSubscribed (mid: {}): {}",
                ack.packet_id,
                granted.join(", ")
            )
        }
        Packet::Unsubscribe(u) => {
            let lines: Vec<String> = u
                .filters
                .iter()
                .map(|f| {
                    format!(
                        "Client {id} sending UNSUBSCRIBE (Mid: {}, Topic: {f})",
                        u.packet_id
                    )
                })
                .collect();
            return Some(lines.join("\n"));
        }
        Packet::UnsubAck(_) => "UNSUBACK".to_owned(),
        Packet::PingReq => "PINGREQ".to_owned(),
        Packet::PingResp => "PINGRESP".to_owned(),
        Packet::Disconnect(_) => "DISCONNECT".to_owned(),
        Packet::Auth(_) => "AUTH".to_owned(),
    };
    Some(format!("Client {id} {verb} {what}"))
}

/// CONNACK's code as the wire carried it in `version`.
fn connack_number(connack: &tern_client::ConnAckPacket, version: ProtocolVersion) -> i32 {
    if version.is_v5() {
        i32::from(connack.reason_code.as_u8())
    } else if connack.reason_code == ReasonCode::Success {
        0
    } else {
        connack_code(connack.reason_code)
    }
}

/// Whether `topic` matches `filter` (section 4.7): for `tern sub -T`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    // Topics starting with $ are not matched by filters starting with a wildcard [MQTT-4.7.2-1].
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for part in filter.split('/') {
        match part {
            "#" => return true,
            "+" => {
                if levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_matching_mqtt_4_7() {
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(topic_matches("$SYS/#", "$SYS/x"));
        assert!(!topic_matches("a/b", "a/b/c"));
    }
}
