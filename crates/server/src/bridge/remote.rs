//! The remote side of a bridge: its tern-client connection (options from the bridge's
//! configuration, manual acknowledgement), the events of that connection (connected, lost,
//! messages) and the messages it brings for the local session.

use tern_client::{Client, ClientError, ClientOptions, Event, Events, Message};
use tern_codec::{
    MqttStr, Packet, Properties, ProtocolVersion, Publish, QoS, RetainHandling, SubscriptionOptions,
};

use super::config::BridgeProtocol;
use super::local::LocalSession;
use super::mapping::forwarded;
use super::run::{Bridge, Inbound};

/// Failed connection attempts logged at `warn` in a row before they go to `debug`.
const LOGGED_FAILURES: u32 = 3;

/// The connection to the remote broker.
pub(super) struct Remote {
    pub(super) client: Client,
    pub(super) events: Events,
    /// A connection is up.
    connected: bool,
    /// Failed attempts since the last connection (for the log's rate bound).
    failures: u32,
}

impl Bridge {
    pub(super) fn start_remote(&self) -> Result<Remote, ClientError> {
        let config = &self.config;
        let mut endpoints = config.endpoints().into_iter();
        let Some(endpoint) = endpoints.next() else {
            return Err(ClientError::Closed);
        };
        let mut options = ClientOptions::new(endpoint, config.remote_client_id());
        options.fallback_endpoints = endpoints.collect();
        options.version = match config.protocol {
            BridgeProtocol::V311 => ProtocolVersion::V311,
            BridgeProtocol::V5 => ProtocolVersion::V5,
        };
        options.clean_start = config.clean_start;
        options.keep_alive = config.keep_alive;
        options.username = config.username.clone();
        options.password = config.password.clone().map(bytes::Bytes::from);
        if options.version.is_v5() {
            // The remote keeps the session (and what it queued for the bridge) while the
            // bridge is away, unless a clean start was asked for.
            options.properties.session_expiry_interval = (!config.clean_start).then_some(u32::MAX);
            options.properties.receive_maximum = Some(config.max_inflight);
        }
        options.reconnect = Some(self.backoff());
        options.max_inflight = config.max_inflight;
        options.max_queued = usize::from(config.max_inflight).max(1024);
        options.manual_ack = true;
        options.try_private = config.try_private;
        let (client, events) = Client::start(options)?;
        Ok(Remote {
            client,
            events,
            connected: false,
            failures: 0,
        })
    }

    /// An event of the remote connection.
    pub(super) async fn on_remote(
        &self,
        event: Event,
        local: &mut LocalSession,
        remote: &mut Remote,
        inbound: &mut Inbound,
    ) {
        match event {
            Event::Connected(connected) => {
                remote.connected = true;
                remote.failures = 0;
                self.status.set_connected(true);
                tracing::info!(
                    bridge = self.name(),
                    session_present = connected.session_present,
                    "bridge connected"
                );
                // A resumed session keeps its subscriptions: subscribing again would bring
                // the retained messages again from a 3.1.1 remote (it has no retain handling).
                if !connected.session_present {
                    self.subscribe_remote(remote).await;
                }
            }
            Event::Disconnected(error) => {
                self.status.set_error(error.to_string());
                if remote.connected {
                    remote.connected = false;
                    self.status.set_connected(false);
                    tracing::warn!(bridge = self.name(), %error, "bridge lost");
                } else {
                    remote.failures = remote.failures.saturating_add(1);
                    if remote.failures <= LOGGED_FAILURES {
                        tracing::warn!(bridge = self.name(), %error, "bridge cannot connect");
                    } else {
                        tracing::debug!(bridge = self.name(), %error, "bridge cannot connect");
                    }
                }
            }
            Event::Reconnecting { attempt, delay } => {
                self.status.reconnected();
                tracing::debug!(
                    bridge = self.name(),
                    attempt,
                    delay_ms = delay.as_millis() as u64,
                    "bridge connecting"
                );
            }
            Event::Message(message) => self.forward_in(message, local, remote, inbound).await,
        }
    }

    /// The remote subscriptions of the `in` rules (MQTT 5: no local, retain as published,
    /// retained messages only for a new subscription; 3.1.1 has none of these). Made at every
    /// connection that did not resume a session.
    async fn subscribe_remote(&self, remote: &Remote) {
        let filters: Vec<(String, SubscriptionOptions)> = self
            .mapper
            .remote_filters()
            .map(|(filter, qos)| (filter.to_owned(), bridge_options(qos)))
            .collect();
        if filters.is_empty() {
            return;
        }
        let name = self.name().to_owned();
        match remote
            .client
            .subscribe(filters, Properties::default())
            .await
        {
            Ok(pending) => {
                tokio::spawn(async move {
                    match pending.await {
                        Ok(suback) => {
                            for code in suback.reason_codes.iter().filter(|c| c.is_error()) {
                                tracing::warn!(bridge = %name, code = %code, "the remote refused a subscription of the bridge");
                            }
                        }
                        Err(error) => {
                            tracing::debug!(bridge = %name, %error, "the remote subscription is sent again at the next connection");
                        }
                    }
                });
            }
            Err(error) => tracing::warn!(bridge = self.name(), %error, "bridge cannot subscribe"),
        }
    }

    /// A message from the remote broker for the local session.
    async fn forward_in(
        &self,
        message: Message,
        local: &mut LocalSession,
        remote: &Remote,
        inbound: &mut Inbound,
    ) {
        let now = std::time::Instant::now();
        let mapped = self
            .mapper
            .to_local(&message.topic)
            .and_then(|(topic, qos)| Some((MqttStr::try_from(topic).ok()?, qos)));
        let Some((topic, rule_qos)) = mapped else {
            let _ = remote.client.ack(&message).await;
            return;
        };
        let qos = rule_qos.min(message.qos);
        let mut publish = Publish {
            dup: false,
            qos,
            retain: message.retain,
            topic,
            packet_id: 0,
            properties: forwarded(message.properties.clone()),
            payload: message.payload.clone(),
        };
        self.status.carried_in(publish.payload.len());
        if qos == QoS::AtMostOnce {
            local.handle(Packet::Publish(publish), now);
            let _ = remote.client.ack(&message).await;
            return;
        }
        let Some(id) = inbound.allocate() else {
            // Cannot happen: `in_flight` stays below the window.
            return;
        };
        publish.packet_id = id;
        local.handle(Packet::Publish(publish.clone()), now);
        inbound.next_order += 1;
        inbound
            .pending
            .insert(id, (publish, message, inbound.next_order));
    }
}

/// The subscription options of a bridge's subscriptions, on either side.
pub(super) fn bridge_options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::SendAtSubscribeIfNew,
    }
}
