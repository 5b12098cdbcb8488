//! Opening a connection: the stream from the [`Dialer`], CONNECT built from the options, and
//! the wait for a successful CONNACK. [`handshake`] is public for code that drives its own
//! stream afterwards (the bench).

use bytes::BytesMut;
use tern_codec::{Connect, MqttStr, Packet, Properties, Will};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::client::READ_CHUNK;
use crate::error::ClientError;
use crate::options::{ClientOptions, Direction, PacketObserver};
use crate::transport::{AnyStream, Dialer};

/// Opens the stream, sends CONNECT and waits for a successful CONNACK.
pub(crate) async fn establish(
    options: &ClientOptions,
    endpoint: &crate::transport::Endpoint,
    dialer: &Dialer,
) -> Result<(Box<dyn AnyStream>, BytesMut, tern_codec::ConnAck), ClientError> {
    let attempt = async {
        let mut stream = dialer.dial(&endpoint.host, endpoint.port).await?;
        let mut read = BytesMut::with_capacity(READ_CHUNK);
        let connack = handshake_as(
            &mut stream,
            connect_packet(options)?,
            options.try_private,
            options.max_packet_size,
            &mut read,
            options.observer.as_ref(),
        )
        .await?;
        Ok((stream, read, connack))
    };
    tokio::time::timeout(options.connect_timeout, attempt)
        .await
        .map_err(|_| ClientError::ConnectTimeout)?
}

/// The MQTT handshake on a stream just opened: sends `connect` and waits for a successful
/// CONNACK, which it returns; bytes read past it stay in `read` (packets the broker sent right
/// behind). For code that drives its own stream (the bench's hot loops); no timeout: wrap it.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    connect: Connect,
    max_packet_size: u32,
    read: &mut BytesMut,
    observer: Option<&PacketObserver>,
) -> Result<tern_codec::ConnAck, ClientError> {
    handshake_as(stream, connect, false, max_packet_size, read, observer).await
}

/// [`handshake`], with the protocol level's top bit set when `bridge` (Mosquitto's
/// `try_private`, see [`crate::ClientOptions::try_private`]).
async fn handshake_as<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    connect: Connect,
    bridge: bool,
    max_packet_size: u32,
    read: &mut BytesMut,
    observer: Option<&PacketObserver>,
) -> Result<tern_codec::ConnAck, ClientError> {
    let version = connect.protocol;
    let connect = Packet::Connect(Box::new(connect));
    observe(observer, Direction::Sent, &connect);
    let mut buf = BytesMut::new();
    connect.encode(version, &mut buf)?;
    if bridge {
        mark_as_bridge(&mut buf);
    }
    stream.write_all(&buf).await?;
    stream.flush().await?;
    loop {
        if let Some(packet) = Packet::decode(read, version, max_packet_size)? {
            observe(observer, Direction::Received, &packet);
            return match packet {
                Packet::ConnAck(connack) if connack.reason_code.is_error() => {
                    Err(ClientError::Refused {
                        reason_code: connack.reason_code,
                        version,
                        reason_string: connack
                            .properties
                            .reason_string
                            .as_ref()
                            .map(|s| s.as_str().to_owned()),
                    })
                }
                Packet::ConnAck(connack) => Ok(connack),
                other => Err(ClientError::Unexpected(other.packet_type())),
            };
        }
        if read.capacity() == read.len() {
            read.reserve(256);
        }
        if stream.read_buf(read).await? == 0 {
            return Err(ClientError::ClosedByBroker);
        }
    }
}

fn connect_packet(options: &ClientOptions) -> Result<Connect, ClientError> {
    let v5 = options.version.is_v5();
    let mut properties = if v5 {
        options.properties.clone()
    } else {
        Properties::default()
    };
    if v5 && properties.maximum_packet_size.is_none() {
        properties.maximum_packet_size = Some(options.max_packet_size);
    }
    let will = match &options.will {
        Some(will) => Some(Will {
            topic: MqttStr::try_from(will.topic.as_str())?,
            payload: will.payload.clone(),
            qos: will.qos,
            retain: will.retain,
            properties: if v5 {
                will.properties.clone()
            } else {
                Properties::default()
            },
        }),
        None => None,
    };
    Ok(Connect {
        protocol: options.version,
        clean_start: options.clean_start,
        keep_alive: options.keep_alive,
        properties,
        client_id: MqttStr::try_from(options.client_id.as_str())?,
        will,
        username: options
            .username
            .as_deref()
            .map(MqttStr::try_from)
            .transpose()?,
        password: options.password.clone(),
    })
}

pub(crate) fn observe(observer: Option<&PacketObserver>, direction: Direction, packet: &Packet) {
    if let Some(observer) = observer {
        (observer.0)(direction, packet);
    }
}

/// Sets the top bit of an encoded CONNECT's protocol level (0x84 for 3.1.1): Mosquitto then
/// takes the client for a bridge and does not send it back the messages it published (its
/// `try_private`). The level follows the fixed header's first byte, the Remaining Length
/// (1 to 4 bytes, the last without its top bit) and the protocol name (2 + 4 or 6 bytes).
fn mark_as_bridge(buf: &mut BytesMut) {
    let Some(length_bytes) = buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0) else {
        return;
    };
    let name_at = 1 + length_bytes + 1;
    let (Some(&high), Some(&low)) = (buf.get(name_at), buf.get(name_at + 1)) else {
        return;
    };
    let level_at = name_at + 2 + usize::from(u16::from_be_bytes([high, low]));
    if let Some(level) = buf.get_mut(level_at) {
        *level |= 0x80;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::ProtocolVersion;

    /// Issue 15 (try_private): the bridge bit goes on the protocol level byte, 4 -> 0x84.
    #[test]
    fn bridge_bit_on_the_protocol_level() {
        let connect = Connect {
            protocol: ProtocolVersion::V311,
            clean_start: false,
            keep_alive: 60,
            properties: Default::default(),
            client_id: MqttStr::from_static("bridge"),
            will: None,
            username: None,
            password: None,
        };
        let mut buf = BytesMut::new();
        Packet::Connect(Box::new(connect))
            .encode(ProtocolVersion::V311, &mut buf)
            .unwrap();
        assert_eq!(&buf[4..8], b"MQTT");
        assert_eq!(buf[8], 4);
        mark_as_bridge(&mut buf);
        assert_eq!(buf[8], 0x84);
    }
}
