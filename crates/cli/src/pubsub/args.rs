//! The options `tern pub` and `tern sub` share with `mosquitto_pub` and `mosquitto_sub`
//! (connection, identity, will, TLS, `-D` properties, `-L` URL), and how they become
//! [`ClientOptions`].

use std::path::PathBuf;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::ArgAction;
use tern_client::transport::Transport;
use tern_client::{
    ClientOptions, Endpoint, LastWill, MqttStr, Properties, ProtocolVersion, QoS, TlsOptions,
};

/// `-V`: mqttv5 / 5, mqttv311 / 311, mqttv31 / 31.
pub fn parse_version(value: &str) -> Result<ProtocolVersion, String> {
    match value {
        "mqttv5" | "5" => Ok(ProtocolVersion::V5),
        "mqttv311" | "311" => Ok(ProtocolVersion::V311),
        "mqttv31" | "31" => Ok(ProtocolVersion::V31),
        other => Err(format!(
            "{other:?}: the protocol version is mqttv5, mqttv311 or mqttv31"
        )),
    }
}

pub fn parse_qos(value: &str) -> Result<QoS, String> {
    value
        .parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| format!("{value:?}: QoS is 0, 1 or 2"))
}

/// `-x`: seconds, or -1 / 4294967295 / ∞ for a session that does not expire.
fn parse_expiry(value: &str) -> Result<u32, String> {
    match value {
        "-1" | "∞" => Ok(u32::MAX),
        other => other
            .parse::<u32>()
            .map_err(|_| format!("{other:?}: session expiry is 0 to 4294967295, -1 or ∞")),
    }
}

/// What `mosquitto_pub` and `mosquitto_sub` both accept.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// Broker host.
    #[arg(short = 'h', long = "host", default_value = "localhost")]
    pub host: String,
    /// Broker port; default 1883, 8883 with TLS.
    #[arg(short = 'p', long = "port")]
    pub port: Option<u16>,
    /// mqtt(s)://[username[:password]@]host[:port]/topic
    #[arg(short = 'L', long = "url")]
    pub url: Option<String>,
    /// Client id; default: tern_pub_ / tern_sub_ and the process id.
    #[arg(short = 'i', long = "id")]
    pub id: Option<String>,
    /// Client id prefix: the process id is appended.
    #[arg(short = 'I', long = "id-prefix", conflicts_with = "id")]
    pub id_prefix: Option<String>,
    /// Keep alive in seconds.
    #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
    pub keepalive: u16,
    /// MQTT version: mqttv5, mqttv311 or mqttv31 (also 5, 311, 31).
    #[arg(short = 'V', long = "protocol-version", value_parser = parse_version, default_value = "mqttv311")]
    pub version: ProtocolVersion,
    /// Disable clean session: the broker keeps the session (and, MQTT 5, it never expires
    /// unless -x says otherwise).
    #[arg(short = 'c', long = "disable-clean-session")]
    pub persistent: bool,
    /// MQTT 5 session expiry interval in seconds (-1 or ∞: never).
    #[arg(short = 'x', long = "session-expiry-interval", value_parser = parse_expiry, allow_hyphen_values = true)]
    pub session_expiry: Option<u32>,
    #[arg(short = 'u', long = "username")]
    pub username: Option<String>,
    #[arg(short = 'P', long = "pw")]
    pub password: Option<String>,
    #[arg(long = "will-topic")]
    pub will_topic: Option<String>,
    #[arg(long = "will-payload", requires = "will_topic")]
    pub will_payload: Option<String>,
    #[arg(long = "will-qos", value_parser = parse_qos, requires = "will_topic")]
    pub will_qos: Option<QoS>,
    #[arg(long = "will-retain", requires = "will_topic")]
    pub will_retain: bool,
    /// CA certificates (PEM) the broker's must chain to; turns TLS on.
    #[arg(long)]
    pub cafile: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Accept any broker certificate (TLS).
    #[arg(long)]
    pub insecure: bool,
    /// The transport: tcp, tls, ws, wss (Tern's addition; TLS also follows --cafile).
    #[arg(long, value_parser = |v: &str| v.parse::<Transport>())]
    pub transport: Option<Transport>,
    /// WebSockets: the HTTP path of the upgrade.
    #[arg(long, default_value = "/mqtt")]
    pub ws_path: String,
    /// MQTT 5 property: -D command name value [value], e.g. -D publish user-property k v.
    #[arg(short = 'D', long = "property", num_args = 3..=4, action = ArgAction::Append,
          value_names = ["COMMAND", "NAME", "VALUE"])]
    pub properties: Vec<String>,
    /// Print the packets sent and received.
    #[arg(short = 'd', long = "debug")]
    pub debug: bool,
    /// Print no error messages.
    #[arg(long)]
    pub quiet: bool,
    /// Accepted for compatibility: Tern always sets TCP_NODELAY.
    #[arg(long)]
    pub nodelay: bool,
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
}

/// The properties of each packet `-D` can name.
#[derive(Debug, Default, Clone)]
pub struct PacketProperties {
    pub connect: Properties,
    pub publish: Properties,
    pub subscribe: Properties,
    pub unsubscribe: Properties,
    pub disconnect: Properties,
    pub will: Properties,
}

fn string(value: &str) -> anyhow::Result<MqttStr> {
    MqttStr::try_from(value).with_context(|| format!("{value:?} is not a valid MQTT string"))
}

fn number<T: std::str::FromStr>(name: &str, value: &str) -> anyhow::Result<T> {
    value
        .parse()
        .map_err(|_| anyhow::anyhow!("Error: Invalid value {value:?} for property {name}."))
}

fn flag(name: &str, value: &str) -> anyhow::Result<bool> {
    match value {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => bail!("Error: Invalid value {value:?} for property {name}."),
    }
}

impl PacketProperties {
    /// `-D command name value [value]` as mosquitto's clients read it, from the values of all
    /// `-D` in order (user-property takes two values, every other property one).
    pub fn parse(flat: &[String], version: ProtocolVersion) -> anyhow::Result<Self> {
        let mut all = PacketProperties::default();
        if !flat.is_empty() && !version.is_v5() {
            bail!("Error: -D argument given, but MQTT v5 not in use.");
        }
        let mut items = Vec::new();
        let mut rest = flat;
        while !rest.is_empty() {
            let take = if rest.get(1).map(String::as_str) == Some("user-property") {
                4
            } else {
                3
            };
            if rest.len() < take {
                bail!("Error: -D needs a command, a property name and a value.");
            }
            items.push(rest[..take].to_vec());
            rest = &rest[take..];
        }
        for item in &items {
            let (command, name, value) = match item.as_slice() {
                [c, n, v] | [c, n, v, _] => (c.as_str(), n.as_str(), v.as_str()),
                _ => bail!("Error: -D needs a command, a property name and a value."),
            };
            let props = match command {
                "connect" => &mut all.connect,
                "publish" => &mut all.publish,
                "subscribe" => &mut all.subscribe,
                "unsubscribe" => &mut all.unsubscribe,
                "disconnect" => &mut all.disconnect,
                "will" => &mut all.will,
                other => bail!("Error: Invalid command {other} given in -D."),
            };
            match name {
                "user-property" => {
                    let [_, _, key, value] = item.as_slice() else {
                        bail!("Error: user-property needs a name and a value.");
                    };
                    props.user_properties.push((string(key)?, string(value)?));
                }
                "payload-format-indicator" => {
                    props.payload_format_indicator = Some(flag(name, value)?)
                }
                "message-expiry-interval" => {
                    props.message_expiry_interval = Some(number(name, value)?)
                }
                "content-type" => props.content_type = Some(string(value)?),
                "response-topic" => props.response_topic = Some(string(value)?),
                "correlation-data" => {
                    props.correlation_data = Some(Bytes::copy_from_slice(value.as_bytes()))
                }
                "subscription-identifier" => {
                    props.subscription_identifiers.push(number(name, value)?)
                }
                "session-expiry-interval" => {
                    props.session_expiry_interval = Some(number(name, value)?)
                }
                "will-delay-interval" => props.will_delay_interval = Some(number(name, value)?),
                "receive-maximum" => props.receive_maximum = Some(number(name, value)?),
                "topic-alias-maximum" => props.topic_alias_maximum = Some(number(name, value)?),
                "maximum-packet-size" => props.maximum_packet_size = Some(number(name, value)?),
                "request-problem-information" => {
                    props.request_problem_information = Some(flag(name, value)?)
                }
                "request-response-information" => {
                    props.request_response_information = Some(flag(name, value)?)
                }
                "reason-string" => props.reason_string = Some(string(value)?),
                other => bail!("Error: Invalid property name {other} given in -D."),
            }
        }
        Ok(all)
    }
}

/// What `-L` gives.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub topic: Option<String>,
}

/// mqtt(s)://[username[:password]@]host[:port]/topic
pub fn parse_url(url: &str) -> anyhow::Result<Url> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else {
        bail!("Error: Unsupported URL scheme.");
    };
    let (authority, topic) = match rest.split_once('/') {
        Some((authority, topic)) => (authority, Some(topic.to_owned())),
        None => (rest, None),
    };
    let (credentials, hostport) = match authority.rsplit_once('@') {
        Some((credentials, hostport)) => (Some(credentials), hostport),
        None => (None, authority),
    };
    let (username, password) = match credentials {
        Some(c) => match c.split_once(':') {
            Some((u, p)) => (Some(u.to_owned()), Some(p.to_owned())),
            None => (Some(c.to_owned()), None),
        },
        None => (None, None),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || hostport.starts_with('[') => {
            let port = port
                .parse::<u16>()
                .map_err(|_| anyhow::anyhow!("Error: Invalid port in URL."))?;
            (host, Some(port))
        }
        _ => (hostport, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("Error: Invalid URL for -L argument specified - host missing.");
    }
    Ok(Url {
        tls,
        username,
        password,
        host: host.to_owned(),
        port,
        topic: topic.filter(|t| !t.is_empty()),
    })
}

impl ConnArgs {
    /// The client's options; `default_id` is e.g. "tern_sub_".
    pub fn client_options(
        &self,
        default_id: &str,
        properties: &PacketProperties,
    ) -> anyhow::Result<(ClientOptions, Option<String>)> {
        let url = self.url.as_deref().map(parse_url).transpose()?;
        let mut host = self.host.clone();
        let mut port = self.port;
        let mut username = self.username.clone();
        let mut password = self.password.clone();
        let mut url_topic = None;
        let mut tls = self.cafile.is_some() || self.insecure && self.transport.is_none();
        if let Some(url) = url {
            host = url.host;
            port = url.port.or(port);
            username = url.username.or(username);
            password = url.password.or(password);
            url_topic = url.topic;
            tls |= url.tls;
        }
        let transport = match self.transport {
            Some(transport) => transport,
            None if tls => Transport::Tls,
            None => Transport::Tcp,
        };
        let port = port.unwrap_or(if transport.uses_tls() { 8883 } else { 1883 });
        let endpoint = Endpoint {
            transport,
            host,
            port,
            ws_path: self.ws_path.clone(),
            tls: TlsOptions {
                cafile: self.cafile.clone(),
                insecure: self.insecure,
                cert: self.cert.clone(),
                key: self.key.clone(),
                server_name: None,
            },
        };
        let id = match (&self.id, &self.id_prefix) {
            (Some(id), _) => id.clone(),
            (None, Some(prefix)) => format!("{prefix}{}", std::process::id()),
            (None, None) => format!("{default_id}{}", std::process::id()),
        };
        let mut options = ClientOptions::new(endpoint, id);
        options.version = self.version;
        options.keep_alive = self.keepalive;
        options.clean_start = !self.persistent;
        options.username = username;
        options.password = password.map(Bytes::from);
        if password_without_username(&options) {
            bail!("Error: A password requires a username (MQTT 3.1.1).");
        }
        options.properties = properties.connect.clone();
        if self.version.is_v5() && options.properties.session_expiry_interval.is_none() {
            let expiry = self
                .session_expiry
                .unwrap_or(if self.persistent { u32::MAX } else { 0 });
            if expiry > 0 {
                options.properties.session_expiry_interval = Some(expiry);
            }
        }
        if let Some(topic) = &self.will_topic {
            options.will = Some(LastWill {
                topic: topic.clone(),
                payload: self
                    .will_payload
                    .clone()
                    .map(Bytes::from)
                    .unwrap_or_default(),
                qos: self.will_qos.unwrap_or_default(),
                retain: self.will_retain,
                properties: properties.will.clone(),
            });
        }
        Ok((options, url_topic))
    }
}

fn password_without_username(options: &ClientOptions) -> bool {
    options.password.is_some() && options.username.is_none() && !options.version.is_v5()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13: -L mqtt(s)://user:pass@host:port/topic
    #[test]
    fn url_parts() {
        assert_eq!(
            parse_url("mqtts://alice:s3cret@broker.example:8884/a/b").unwrap(),
            Url {
                tls: true,
                username: Some("alice".into()),
                password: Some("s3cret".into()),
                host: "broker.example".into(),
                port: Some(8884),
                topic: Some("a/b".into()),
            }
        );
        let plain = parse_url("mqtt://localhost/t").unwrap();
        assert_eq!(
            (plain.tls, plain.port, plain.topic.as_deref()),
            (false, None, Some("t"))
        );
        assert!(parse_url("http://x/t").is_err());
    }

    #[test]
    fn properties_by_command() {
        let items: Vec<String> = [
            "publish",
            "user-property",
            "k",
            "v",
            "publish",
            "message-expiry-interval",
            "30",
            "connect",
            "session-expiry-interval",
            "60",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = PacketProperties::parse(&items, ProtocolVersion::V5).unwrap();
        assert_eq!(p.publish.user_properties.len(), 1);
        assert_eq!(p.publish.message_expiry_interval, Some(30));
        assert_eq!(p.connect.session_expiry_interval, Some(60));
        assert!(PacketProperties::parse(&items, ProtocolVersion::V311).is_err());
    }
}
