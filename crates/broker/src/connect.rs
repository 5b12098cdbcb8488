//! Handling of CONNECT (section 3.1.4): client identifier rules, authentication, the session
//! (new, resumed or taken over) and the CONNACK that tells the client what it got.

use std::time::{Duration, Instant};

use tern_codec::{ConnAck, Connect, Properties, ProtocolVersion, QoS, ReasonCode};

use crate::connection::{Active, Connection, Phase, PreparedWill};
use crate::hooks::{ClientInfo, Credentials};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::session::SessionExpiry;

impl Connection {
    pub(crate) fn handle_connect(&mut self, connect: Connect, now: Instant) {
        let version = connect.protocol;
        self.version = version;
        let broker = self.broker.clone();
        let config = broker.config();

        let mut client_id = connect.client_id.clone();
        let mut assigned = false;
        if client_id.is_empty() {
            match version {
                // MQTT 3.1 requires 1 to 23 characters.
                ProtocolVersion::V31 => {
                    return self.refuse(ReasonCode::ClientIdentifierNotValid, now);
                }
                // [MQTT-3.1.3-8]: an empty identifier needs clean session in 3.1.1.
                ProtocolVersion::V311 if !connect.clean_start => {
                    return self.refuse(ReasonCode::ClientIdentifierNotValid, now);
                }
                // [MQTT-3.1.3-6, MQTT-3.1.3-7]: assign a unique one.
                _ => {
                    client_id = broker.assign_client_id(self.id);
                    assigned = true;
                }
            }
        }

        if version.is_v5() && connect.properties.authentication_method.is_some() {
            // No enhanced authentication method is configured.
            return self.refuse(ReasonCode::BadAuthenticationMethod, now);
        }
        let credentials = Credentials {
            client_id: &client_id,
            username: connect.username.as_deref(),
            password: connect.password.as_deref(),
            peer: self.peer,
            protocol: version,
        };
        if let Err(code) = broker.authenticator().authenticate(&credentials) {
            return self.refuse(code, now);
        }
        let client = ClientInfo {
            client_id: client_id.clone(),
            username: connect.username.clone(),
            peer: self.peer,
        };

        let will = match connect.will {
            None => None,
            Some(will) => {
                let allowed = config.topic_within_limits(&will.topic)
                    && !will.topic.starts_with('$')
                    && broker.authorizer().may_publish(&client, &will.topic);
                if !allowed {
                    return self.refuse(ReasonCode::NotAuthorized, now);
                }
                if will.qos > config.max_qos {
                    return self.refuse(ReasonCode::QosNotSupported, now);
                }
                if will.retain && !config.retain_available {
                    return self.refuse(ReasonCode::RetainNotSupported, now);
                }
                let delay = Duration::from_secs(u64::from(
                    will.properties.will_delay_interval.unwrap_or(0),
                ));
                let publish = tern_codec::Publish {
                    dup: false,
                    qos: will.qos,
                    retain: will.retain,
                    topic: will.topic,
                    packet_id: 0,
                    properties: will.properties,
                    payload: will.payload,
                };
                let expiry_interval = publish.properties.message_expiry_interval;
                let mut message = Message::from_publish(publish, Some(client_id.clone()), now);
                // The expiry of a will counts from when it is published, not from CONNECT.
                message.expires_at = None;
                Some(PreparedWill {
                    message,
                    delay,
                    expiry_interval,
                })
            }
        };

        let session_expiry_interval = connect.properties.session_expiry_interval.unwrap_or(0);
        let expiry = if version.is_v5() {
            SessionExpiry::from_interval(session_expiry_interval)
        } else if connect.clean_start {
            SessionExpiry::AtDisconnect
        } else {
            config
                .persistent_session_expiry
                .map_or(SessionExpiry::Never, SessionExpiry::After)
        };

        let attached = broker.attach(
            &client_id,
            connect.clean_start,
            expiry,
            self.id,
            self.wakeup.clone(),
            now,
        );

        let mut properties = Properties::default();
        if version.is_v5() {
            if assigned {
                properties.assigned_client_identifier = Some(client_id.clone());
            }
            properties.maximum_packet_size = Some(config.max_packet_size);
            if config.max_qos < QoS::ExactlyOnce {
                properties.maximum_qos = Some(config.max_qos);
            }
            if !config.retain_available {
                properties.retain_available = Some(false);
            }
        }
        self.outbox.push_back(tern_codec::Packet::ConnAck(ConnAck {
            // [MQTT-3.2.2-1, MQTT-3.2.2-2, MQTT-3.2.2-3]
            session_present: attached.present,
            reason_code: ReasonCode::Success,
            properties,
        }));
        Metrics::bump(&broker.metrics().connections_accepted);

        let receive_maximum = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        let keep_alive = connect.keep_alive;
        self.client_id = Some(client_id);
        self.phase = Phase::Active(Box::new(Active {
            version,
            client,
            session: attached.session,
            keep_alive_limit: (keep_alive > 0)
                .then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
            last_received: now,
            will,
            send_window: usize::from(receive_maximum.min(config.max_inflight)).max(1),
            client_max_packet_size: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
            session_expiry_interval,
        }));
        // Messages queued while the client was away, and the in-flight ones to resend.
        self.wakeup.wake();
    }
}
