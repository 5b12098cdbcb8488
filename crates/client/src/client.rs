//! The [`Client`] handle and its connection task. The task owns the stream and the
//! [`Session`]: one `select!` loop reads packets, writes what the session says, takes the
//! application's commands while there is room, hands events out, and keeps the connection
//! alive. Every buffer it holds is bounded (see [`ClientOptions`]); when one is full the loop
//! stops taking from the side that fills it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_codec::{
    Disconnect, MqttStr, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, SubAck,
    Subscribe, Subscription, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::ClientError;
use crate::handshake::establish;
use crate::link::{Link, Progress, command_to, sleep_until, take_packets, write_or_flush};
use crate::options::ClientOptions;
use crate::session::{PublishOutcome, Reply, Session};
use crate::transport::{AnyStream, Dialer, Endpoint};

/// A message, to publish or as received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Received only: the broker sent it before (3.3.1.1).
    pub dup: bool,
    /// Received only: the packet identifier it came with (0 for QoS 0).
    pub packet_id: u16,
    /// MQTT 5: message expiry, content type, response topic, correlation data, user
    /// properties; on receipt also the subscription identifiers.
    pub properties: Properties,
}

impl Message {
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>, qos: QoS) -> Message {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            ..Message::default()
        }
    }
}

/// What the CONNACK said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    pub session_present: bool,
    pub properties: Properties,
}

/// What the client tells the application, in order.
#[derive(Debug)]
pub enum Event {
    /// A connection is up (the first, or a reconnection).
    Connected(Connected),
    /// A message from a subscription. QoS 1 and 2 are acknowledged once queued for
    /// the application (the queue is bounded: reading stops while it is full); what is queued
    /// when the connection ends still comes, before [`Event::Disconnected`].
    Message(Message),
    /// The connection failed or was lost; [`Event::Reconnecting`] follows if the client
    /// reconnects, otherwise the events end.
    Disconnected(ClientError),
    /// The next attempt starts after `delay`.
    Reconnecting { attempt: u32, delay: Duration },
}

/// The events of a client; `None` once the client has ended. The client waits for them to be
/// read (also `Disconnected` and `Reconnecting`): read them, or drop this.
pub struct Events {
    events: mpsc::Receiver<Event>,
}

impl Events {
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

/// An answer still to come from the broker (PUBACK/PUBCOMP, SUBACK, UNSUBACK).
pub struct Pending<T> {
    reply: oneshot::Receiver<Result<T, ClientError>>,
}

impl<T> Future for Pending<T> {
    type Output = Result<T, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.reply)
            .poll(cx)
            .map(|result| result.unwrap_or(Err(ClientError::Closed)))
    }
}

pub(crate) enum Command {
    Publish(Publish, Reply<PublishOutcome>),
    Subscribe(Subscribe, Reply<SubAck>),
    Unsubscribe(Unsubscribe, Reply<UnsubAck>),
    /// Manual acknowledgement of an inbound QoS 1 or 2 publish.
    Ack(u16),
    Disconnect(Disconnect, oneshot::Sender<()>),
}

/// A handle on a running client; clones share it. When the last handle is dropped the client
/// disconnects normally.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    version: ProtocolVersion,
}

/// Commands the application may have in the channel before `publish` waits.
const COMMAND_CAPACITY: usize = 64;
/// Bytes read at a time.
pub(crate) const READ_CHUNK: usize = 16 * 1024;
/// Encoded bytes waiting to be written beyond which commands wait.
const WRITE_HIGH_WATER: usize = 256 * 1024;

impl Client {
    /// Starts the client's task; it connects at once. The first event says how that went.
    /// Fails only when the endpoint cannot be used (TLS files).
    pub fn start(options: ClientOptions) -> Result<(Client, Events), ClientError> {
        let mut dialers = Vec::new();
        for endpoint in std::iter::once(&options.endpoint).chain(&options.fallback_endpoints) {
            let dialer = Dialer::new(endpoint)?.for_packets_up_to(options.max_packet_size);
            dialers.push((endpoint.clone(), dialer));
        }
        let (commands, command_rx) = mpsc::channel(COMMAND_CAPACITY);
        let (event_tx, events) = mpsc::channel(options.event_capacity.max(1));
        let version = options.version;
        tokio::spawn(run(options, dialers, command_rx, event_tx));
        Ok((Client { commands, version }, Events { events }))
    }

    /// Starts the client and waits for its first connection: `Err` if it fails (even when
    /// the client would reconnect: a first failure is usually a wrong address or password).
    pub async fn connect(
        options: ClientOptions,
    ) -> Result<(Client, Events, Connected), ClientError> {
        let (client, mut events) = Client::start(options)?;
        match events.recv().await {
            Some(Event::Connected(connected)) => Ok((client, events, connected)),
            Some(Event::Disconnected(error)) => Err(error),
            _ => Err(ClientError::Closed),
        }
    }

    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    async fn send(&self, command: Command) -> Result<(), ClientError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Queues a message; waits while the queue is full. The returned [`Pending`] resolves with
    /// the broker's acknowledgement (QoS 0: once written); it may be dropped.
    pub async fn publish(&self, message: Message) -> Result<Pending<PublishOutcome>, ClientError> {
        tern_codec::topic::validate_topic_name(&message.topic).map_err(|error| {
            ClientError::InvalidTopic {
                topic: message.topic.clone(),
                error,
            }
        })?;
        let publish = Publish {
            dup: false,
            qos: message.qos,
            retain: message.retain,
            topic: MqttStr::try_from(message.topic)?,
            packet_id: 0,
            properties: message.properties,
            payload: message.payload,
        };
        let (reply, answer) = oneshot::channel();
        self.send(Command::Publish(publish, reply)).await?;
        Ok(Pending { reply: answer })
    }

    /// Subscribes to filters, each with its options (QoS, no local, retain as published,
    /// retain handling); `properties` may carry a subscription identifier and user properties.
    pub async fn subscribe(
        &self,
        filters: impl IntoIterator<Item = (String, SubscriptionOptions)>,
        properties: Properties,
    ) -> Result<Pending<SubAck>, ClientError> {
        let mut subscriptions = Vec::new();
        for (filter, options) in filters {
            tern_codec::topic::validate_topic_filter(&filter).map_err(|error| {
                ClientError::InvalidTopic {
                    topic: filter.clone(),
                    error,
                }
            })?;
            subscriptions.push(Subscription {
                filter: MqttStr::try_from(filter)?,
                options,
            });
        }
        let subscribe = Subscribe {
            packet_id: 0,
            properties,
            subscriptions,
        };
        let (reply, answer) = oneshot::channel();
        self.send(Command::Subscribe(subscribe, reply)).await?;
        Ok(Pending { reply: answer })
    }

    pub async fn unsubscribe(
        &self,
        filters: impl IntoIterator<Item = String>,
        properties: Properties,
    ) -> Result<Pending<UnsubAck>, ClientError> {
        let filters = filters
            .into_iter()
            .map(MqttStr::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let unsubscribe = Unsubscribe {
            packet_id: 0,
            properties,
            filters,
        };
        let (reply, answer) = oneshot::channel();
        self.send(Command::Unsubscribe(unsubscribe, reply)).await?;
        Ok(Pending { reply: answer })
    }

    /// With [`ClientOptions::manual_ack`]: acknowledges a received QoS 1 or 2 message
    /// (PUBACK, PUBREC), which the client holds back until this is called. Nothing for QoS 0.
    /// While the connection is down the acknowledgement cannot be sent: the broker sends the
    /// message again after the reconnection (QoS 1: it is handed out again; QoS 2: it is
    /// acknowledged at once, not handed out again).
    pub async fn ack(&self, message: &Message) -> Result<(), ClientError> {
        if message.qos == QoS::AtMostOnce {
            return Ok(());
        }
        self.send(Command::Ack(message.packet_id)).await
    }

    /// Sends DISCONNECT (MQTT 5: with `reason_code`, e.g. 0x04 to have the will published) and
    /// closes the stream once what was queued before it is written. Unacknowledged messages
    /// are given up (their callers get [`ClientError::Closed`]).
    pub async fn disconnect_with(
        &self,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> Result<(), ClientError> {
        let (done, finished) = oneshot::channel();
        let disconnect = Disconnect {
            reason_code,
            properties,
        };
        self.send(Command::Disconnect(disconnect, done)).await?;
        // The task ends either way; an error only says it had ended already.
        let _ = finished.await;
        Ok(())
    }

    /// [`Client::disconnect_with`] a normal disconnection.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.disconnect_with(ReasonCode::NORMAL_DISCONNECTION, Properties::default())
            .await
    }
}

/// How a connection ended.
enum End {
    /// The application disconnected or dropped every handle.
    Shutdown,
    Lost(ClientError),
}

struct Task {
    options: ClientOptions,
    /// `endpoint`, then `fallback_endpoints`, each with its connector.
    dialers: Vec<(Endpoint, Dialer)>,
    session: Session,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
}

async fn run(
    options: ClientOptions,
    dialers: Vec<(Endpoint, Dialer)>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
) {
    let session = Session::new(options.max_inflight);
    let mut task = Task {
        options,
        dialers,
        session,
        commands,
        events,
    };
    let mut attempt = 0u32;
    // The endpoint tried next: a failed attempt moves on to the next one, in turn; a lost
    // connection is tried again where it was.
    let mut current = 0usize;
    while let Some((endpoint, dialer)) = task.dialers.get(current % task.dialers.len().max(1)) {
        let error = match establish(&task.options, endpoint, dialer).await {
            Ok((stream, read, connack)) => {
                attempt = 0;
                match task.connected(stream, read, connack).await {
                    End::Shutdown => break,
                    End::Lost(error) => error,
                }
            }
            Err(error) => {
                current = (current + 1) % task.dialers.len().max(1);
                error
            }
        };
        tracing::debug!(%error, "MQTT connection ended");
        let sent_away = sent_away(&error);
        let _ = task.events.send(Event::Disconnected(error)).await;
        let Some(backoff) = task.options.reconnect else {
            break;
        };
        // Sent away on purpose (another connection took the session, an operator kicked the
        // client, the server asked for another server): coming straight back would undo it, or
        // make two clients with one id take the session from each other in a loop. The
        // longest delay then.
        let delay = if sent_away {
            backoff.delay(u32::MAX)
        } else {
            backoff.delay(attempt)
        };
        attempt = attempt.saturating_add(1);
        let _ = task
            .events
            .send(Event::Reconnecting { attempt, delay })
            .await;
        if !task.wait_offline(delay).await {
            break;
        }
    }
    task.session.fail_all(|| ClientError::Closed);
    // Commands still in the channel get their answer: the client is closed.
    task.commands.close();
    while let Ok(command) = task.commands.try_recv() {
        fail(command);
    }
}

/// A DISCONNECT that asks the client not to come straight back: 0x8E Session taken over,
/// 0x98 Administrative action, 0x9C Use another server, 0x9D Server moved, 0x9F Connection
/// rate exceeded.
fn sent_away(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Disconnected {
            reason_code: ReasonCode::SessionTakenOver
                | ReasonCode::AdministrativeAction
                | ReasonCode::UseAnotherServer
                | ReasonCode::ServerMoved
                | ReasonCode::ConnectionRateExceeded,
            ..
        }
    )
}

fn fail(command: Command) {
    match command {
        Command::Publish(_, reply) => drop(reply.send(Err(ClientError::Closed))),
        Command::Subscribe(_, reply) => drop(reply.send(Err(ClientError::Closed))),
        Command::Unsubscribe(_, reply) => drop(reply.send(Err(ClientError::Closed))),
        Command::Ack(_) => {}
        Command::Disconnect(_, done) => drop(done.send(())),
    }
}

impl Task {
    /// Serves one connection until it ends.
    async fn connected(
        &mut self,
        stream: Box<dyn AnyStream>,
        mut read: BytesMut,
        connack: tern_codec::ConnAck,
    ) -> End {
        let properties = connack.properties;
        if let Some(id) = &properties.assigned_client_identifier {
            // A reconnection resumes the session under the identifier the broker gave.
            self.options.client_id = id.as_str().to_owned();
        }
        let keep_alive = properties
            .server_keep_alive
            .unwrap_or(self.options.keep_alive);
        let mut link = Link {
            version: self.options.version,
            write: BytesMut::new(),
            unflushed: false,
            events: VecDeque::new(),
            keep_alive: (keep_alive > 0).then(|| Duration::from_secs(u64::from(keep_alive))),
            last_sent: Instant::now(),
            ping_sent: None,
            max_outgoing: properties.maximum_packet_size.unwrap_or(u32::MAX),
            maximum_qos: properties.maximum_qos.unwrap_or(QoS::ExactlyOnce),
            retain_available: properties.retain_available.unwrap_or(true),
            observer: self.options.observer.clone(),
            topic_alias_maximum: if self.options.version.is_v5() {
                self.options.properties.topic_alias_maximum.unwrap_or(0)
            } else {
                0
            },
            topic_aliases: HashMap::new(),
            manual_ack: self.options.manual_ack,
        };
        let receive_maximum = properties.receive_maximum.unwrap_or(u16::MAX);
        let mut out = self
            .session
            .resume(connack.session_present, receive_maximum);
        self.session.next_to_send(&mut out);
        for packet in &out {
            if let Err(error) = link.encode(packet) {
                return End::Lost(error);
            }
        }
        link.events.push_back(Event::Connected(Connected {
            session_present: connack.session_present,
            properties,
        }));
        let end = match self.drive(stream, &mut read, &mut link).await {
            Ok(end) => end,
            Err(error) => End::Lost(error),
        };
        // What was received before the end goes to the application before it hears of the
        // end: QoS 1 and 2 messages among it may have been acknowledged already, and the
        // broker will not send them again (MQTT 4.3.2, 4.3.3). This waits for the application
        // to read them, unless it has dropped its `Events`.
        for event in link.events.drain(..) {
            if self.events.send(event).await.is_err() {
                break;
            }
        }
        end
    }

    async fn drive(
        &mut self,
        stream: Box<dyn AnyStream>,
        read: &mut BytesMut,
        link: &mut Link,
    ) -> Result<End, ClientError> {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut disconnecting: Option<oneshot::Sender<()>> = None;
        let mut out = Vec::new();
        // What the writer works on; handlers encode into `link.write` meanwhile.
        let mut sending = BytesMut::new();
        let events = self.events.clone();
        let max_packet_size = self.options.max_packet_size;
        let event_capacity = self.options.event_capacity.max(1);
        // Packets already in the buffer (sent right behind the CONNACK).
        if let Err(error) = take_packets(&mut self.session, read, link, &mut out, max_packet_size) {
            return Err(farewell(error, &mut writer, &mut sending, link).await);
        }
        loop {
            if sending.is_empty() {
                std::mem::swap(&mut sending, &mut link.write);
            }
            if disconnecting.is_some() && sending.is_empty() && !link.unflushed {
                let _ = writer.shutdown().await;
                if let Some(done) = disconnecting.take() {
                    let _ = done.send(());
                }
                return Ok(End::Shutdown);
            }
            // Reading stops while the application has not taken its events, or while the
            // answers to what was read (acknowledgements) cannot be written.
            let read_room =
                link.events.len() < event_capacity && link.write.len() < WRITE_HIGH_WATER;
            let command_room = disconnecting.is_none()
                && self.session.queued() < self.options.max_queued
                && link.write.len() < WRITE_HIGH_WATER;
            let keep_alive = link.keep_alive_deadline();
            let writing = !sending.is_empty() || link.unflushed;
            tokio::select! {
                progress = write_or_flush(&mut writer, &mut sending), if writing => {
                    match progress? {
                        Progress::Wrote => {
                            link.unflushed = true;
                            link.last_sent = Instant::now();
                        }
                        Progress::Flushed => link.unflushed = false,
                    }
                }
                permit = events.reserve(), if !link.events.is_empty() => {
                    match (permit, link.events.pop_front()) {
                        (Ok(permit), Some(event)) => permit.send(event),
                        // Nobody listens any more: events are dropped, the client goes on.
                        _ => link.events.clear(),
                    }
                }
                got = reader.read_buf(read), if read_room => {
                    if got? == 0 {
                        return Err(ClientError::ClosedByBroker);
                    }
                    if let Err(error) =
                        take_packets(&mut self.session, read, link, &mut out, max_packet_size)
                    {
                        return Err(farewell(error, &mut writer, &mut sending, link).await);
                    }
                }
                command = self.commands.recv(), if command_room => {
                    match command {
                        Some(Command::Disconnect(disconnect, done)) => {
                            link.encode(&Packet::Disconnect(disconnect))?;
                            disconnecting = Some(done);
                        }
                        Some(command) => command_to(&mut self.session, command, link, &mut out)?,
                        None => {
                            // Every handle dropped: a normal disconnection.
                            link.encode(&Packet::Disconnect(Disconnect::default()))?;
                            let (done, _) = oneshot::channel();
                            disconnecting = Some(done);
                        }
                    }
                }
                () = sleep_until(keep_alive), if keep_alive.is_some() => {
                    if link.ping_sent.is_some() {
                        return Err(ClientError::KeepAliveTimeout);
                    }
                    link.encode(&Packet::PingReq)?;
                    link.ping_sent = Some(Instant::now());
                }
            }
        }
    }
}

/// How long the client tries to write its DISCONNECT after a protocol error by the broker.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// The connection ends on `error` found in what the broker sent. A protocol violation is
/// answered (MQTT 5) with DISCONNECT and its reason code [MQTT-4.13.1-1]; with it go the
/// acknowledgements already encoded, so the broker does not send those messages again.
/// Writing is tried for a short time only: the broker may not be reading.
async fn farewell(
    error: ClientError,
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    sending: &mut BytesMut,
    link: &mut Link,
) -> ClientError {
    if let ClientError::ProtocolViolation { reason_code, .. } = &error {
        if link.version.is_v5() {
            let disconnect = Disconnect {
                reason_code: *reason_code,
                properties: Properties::default(),
            };
            if link.encode(&Packet::Disconnect(disconnect)).is_ok() {
                sending.unsplit(std::mem::take(&mut link.write));
                let write = async {
                    writer.write_all(sending).await?;
                    writer.flush().await?;
                    writer.shutdown().await
                };
                let _ = tokio::time::timeout(FAREWELL_TIMEOUT, write).await;
            }
        }
    }
    error
}

impl Task {
    /// Waits `delay` before the next attempt, taking commands meanwhile: QoS 1 and 2 publishes
    /// and requests wait for the connection; a QoS 0 publish fails (at most once). Returns
    /// `false` when the application disconnects.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            let room = self.session.queued() < self.options.max_queued;
            tokio::select! {
                () = &mut sleep => return true,
                command = self.commands.recv(), if room => match command {
                    None => return false,
                    Some(Command::Disconnect(_, done)) => {
                        let _ = done.send(());
                        return false;
                    }
                    Some(Command::Publish(publish, reply)) if publish.qos == QoS::AtMostOnce => {
                        let _ = reply.send(Err(ClientError::NotConnected));
                    }
                    Some(Command::Publish(publish, reply)) => {
                        self.session.publish(publish, Some(reply));
                    }
                    // Sent when the connection is back (the session resends open requests).
                    Some(Command::Subscribe(subscribe, reply)) => {
                        self.session.subscribe(subscribe, reply);
                    }
                    Some(Command::Unsubscribe(unsubscribe, reply)) => {
                        self.session.unsubscribe(unsubscribe, reply);
                    }
                    // Not sent (see `Client::ack`), but the session's state moves on.
                    Some(Command::Ack(packet_id)) => drop(self.session.app_ack(packet_id)),
                },
            }
        }
    }
}
