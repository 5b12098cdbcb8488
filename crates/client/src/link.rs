//! One connection's loop state and the steps of the connection task that do not need the task
//! itself: writing, decoding and acting on packets, taking a command.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::client::{Command, Event, Message, READ_CHUNK};
use crate::error::ClientError;
use crate::handshake::observe;
use crate::options::{Direction, PacketObserver};
use crate::session::Session;

/// What one connection knows besides the session.
pub(crate) struct Link {
    pub(crate) version: ProtocolVersion,
    pub(crate) write: BytesMut,
    pub(crate) unflushed: bool,
    /// Events not yet taken by the channel (bounded by `event_capacity`: reading stops).
    pub(crate) events: VecDeque<Event>,
    pub(crate) keep_alive: Option<Duration>,
    pub(crate) last_sent: Instant,
    pub(crate) ping_sent: Option<Instant>,
    /// The broker's Maximum Packet Size.
    pub(crate) max_outgoing: u32,
    /// The broker's Maximum QoS and Retain Available (MQTT 5 CONNACK).
    pub(crate) maximum_qos: QoS,
    pub(crate) retain_available: bool,
    pub(crate) observer: Option<PacketObserver>,
    /// MQTT 5: the Topic Alias Maximum this connection's CONNECT sent (0: no aliases).
    pub(crate) topic_alias_maximum: u16,
    /// The broker's topic aliases on this connection [MQTT-3.3.2-12]: set by a PUBLISH with a
    /// topic and an alias, read by one with the alias alone; they end with the connection.
    pub(crate) topic_aliases: HashMap<u16, String>,
    /// QoS 1 and 2 are acknowledged when the application says so ([`crate::Client::ack`]).
    pub(crate) manual_ack: bool,
}

impl Link {
    pub(crate) fn encode(&mut self, packet: &Packet) -> Result<(), ClientError> {
        observe(self.observer.as_ref(), Direction::Sent, packet);
        packet.encode(self.version, &mut self.write)?;
        Ok(())
    }

    /// When the keep-alive wants something done: a PINGREQ sent, or the broker's answer late.
    pub(crate) fn keep_alive_deadline(&self) -> Option<Instant> {
        let interval = self.keep_alive?;
        Some(match self.ping_sent {
            Some(sent) => sent + interval,
            None => self.last_sent + interval,
        })
    }
}

pub(crate) enum Progress {
    Wrote,
    Flushed,
}

/// One step of the writer: a write of what is pending, or, once all is written, a flush.
/// Cancel-safe: a write either happened (and `buf` advanced) or not.
pub(crate) async fn write_or_flush(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    buf: &mut BytesMut,
) -> Result<Progress, ClientError> {
    if buf.is_empty() {
        writer.flush().await?;
        return Ok(Progress::Flushed);
    }
    if writer.write_buf(buf).await? == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
    }
    Ok(Progress::Wrote)
}

/// Decodes every whole packet in `read` and acts on it.
pub(crate) fn take_packets(
    session: &mut Session,
    read: &mut BytesMut,
    link: &mut Link,
    out: &mut Vec<Packet>,
    max_packet_size: u32,
) -> Result<(), ClientError> {
    while let Some(packet) = Packet::decode(read, link.version, max_packet_size)? {
        observe(link.observer.as_ref(), Direction::Received, &packet);
        on_packet(session, packet, link, out)?;
        for packet in out.drain(..) {
            link.encode(&packet)?;
        }
    }
    if read.capacity() - read.len() < READ_CHUNK / 4 {
        read.reserve(READ_CHUNK);
    }
    Ok(())
}

fn on_packet(
    session: &mut Session,
    packet: Packet,
    link: &mut Link,
    out: &mut Vec<Packet>,
) -> Result<(), ClientError> {
    match packet {
        Packet::Publish(mut publish) => {
            let topic = inbound_topic(link, &mut publish)?;
            let deliver = match publish.qos {
                _ if link.manual_ack => session.inbound_manual(&publish, out),
                QoS::AtMostOnce => true,
                QoS::AtLeastOnce => {
                    out.push(Packet::PubAck(tern_codec::Ack::new(publish.packet_id)));
                    true
                }
                QoS::ExactlyOnce => {
                    out.push(Packet::PubRec(tern_codec::Ack::new(publish.packet_id)));
                    session.inbound_qos2(publish.packet_id)
                }
            };
            if deliver {
                link.events.push_back(Event::Message(Message {
                    topic,
                    payload: publish.payload,
                    qos: publish.qos,
                    retain: publish.retain,
                    dup: publish.dup,
                    packet_id: publish.packet_id,
                    properties: publish.properties,
                }));
            }
        }
        Packet::PubRel(ack) => out.push(session.release(ack.packet_id)),
        Packet::PingResp => link.ping_sent = None,
        Packet::Disconnect(disconnect) => {
            return Err(ClientError::Disconnected {
                reason_code: disconnect.reason_code,
                reason_string: disconnect
                    .properties
                    .reason_string
                    .map(|s| s.as_str().to_owned()),
            });
        }
        ack @ (Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubComp(_)
        | Packet::SubAck(_)
        | Packet::UnsubAck(_)) => session.acknowledgement(ack, out),
        other => return Err(ClientError::Unexpected(other.packet_type())),
    }
    Ok(())
}

/// The topic of a received PUBLISH, through its topic alias if it has one (MQTT 5 3.3.2.3.4).
/// An alias above the maximum the client sent, or an empty topic with an alias the broker has
/// not set on this connection, is a protocol error [MQTT-3.3.2-9, MQTT-3.3.2-10]. The alias
/// stays in the message's properties (as `mosquitto_sub -F %A` shows it).
fn inbound_topic(
    link: &mut Link,
    publish: &mut tern_codec::Publish,
) -> Result<String, ClientError> {
    let Some(alias) = publish.properties.topic_alias else {
        if publish.topic.is_empty() {
            return Err(ClientError::ProtocolViolation {
                reason_code: ReasonCode::ProtocolError,
                detail: "PUBLISH with an empty topic and no topic alias".to_owned(),
            });
        }
        return Ok(publish.topic.as_str().to_owned());
    };
    if alias == 0 || alias > link.topic_alias_maximum {
        return Err(ClientError::ProtocolViolation {
            reason_code: ReasonCode::TopicAliasInvalid,
            detail: format!(
                "topic alias {alias} is above the maximum of {}",
                link.topic_alias_maximum
            ),
        });
    }
    if publish.topic.is_empty() {
        return link.topic_aliases.get(&alias).cloned().ok_or_else(|| {
            ClientError::ProtocolViolation {
                reason_code: ReasonCode::ProtocolError,
                detail: format!("topic alias {alias} was never set on this connection"),
            }
        });
    }
    let topic = publish.topic.as_str().to_owned();
    link.topic_aliases.insert(alias, topic.clone());
    Ok(topic)
}

pub(crate) fn command_to(
    session: &mut Session,
    command: Command,
    link: &mut Link,
    out: &mut Vec<Packet>,
) -> Result<(), ClientError> {
    match command {
        Command::Publish(mut publish, reply) => {
            // What the broker said it does not take would be a protocol error
            // [MQTT-3.2.2-11, MQTT-3.2.2-14]: refused here instead.
            if publish.qos > link.maximum_qos {
                let _ = reply.send(Err(ClientError::QosNotSupported(link.maximum_qos)));
                return Ok(());
            }
            if publish.retain && !link.retain_available {
                let _ = reply.send(Err(ClientError::RetainNotSupported));
                return Ok(());
            }
            if publish.qos != QoS::AtMostOnce {
                // A placeholder for the size check: the window gives the real one.
                publish.packet_id = 1;
            }
            let packet = Packet::Publish(publish);
            let size = match packet.encoded_len(link.version) {
                Ok(size) => size,
                Err(error) => {
                    let _ = reply.send(Err(error.into()));
                    return Ok(());
                }
            };
            if size > link.max_outgoing as usize {
                let _ = reply.send(Err(ClientError::PacketTooLarge {
                    size,
                    max: link.max_outgoing,
                }));
                return Ok(());
            }
            let Packet::Publish(publish) = packet else {
                return Ok(());
            };
            if let Some(packet) = session.publish(publish, Some(reply)) {
                out.push(packet);
            }
            session.next_to_send(out);
        }
        Command::Subscribe(subscribe, reply) => {
            out.extend(session.subscribe(subscribe, reply));
        }
        Command::Unsubscribe(unsubscribe, reply) => {
            out.extend(session.unsubscribe(unsubscribe, reply));
        }
        Command::Ack(packet_id) => out.extend(session.app_ack(packet_id)),
        Command::Disconnect(_, done) => drop(done.send(())),
    }
    for packet in out.drain(..) {
        link.encode(&packet)?;
    }
    Ok(())
}

pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
