//! `[[bridges]]`: the configuration of bridges to other brokers, parsed into typed values and
//! checked (names, addresses, topic rules, TLS files) with messages that `tern check-config`
//! prints. The shape of the file is the contract of issue 15; `docs/configuration.md` documents
//! every key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tern_codec::QoS;

/// One `[[bridges]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Unique among the bridges; names the bridge in logs, metrics and the admin API, and its
    /// local session (`$bridge/<name>`).
    pub name: String,
    /// The remote broker, `host:port`.
    #[serde(default)]
    pub address: Option<String>,
    /// Several remote addresses, tried in turn (instead of `address`).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// `"3.1.1"` or `"5"`.
    #[serde(default)]
    pub protocol: BridgeProtocol,
    /// The client identifier at the remote broker; default `tern-bridge-<name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Clean start at the remote: `false` keeps the remote session (and its queue) across
    /// reconnections.
    #[serde(default)]
    pub clean_start: bool,
    /// Seconds, towards the remote broker.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: u16,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// TLS towards the remote broker; absent: plain TCP.
    #[serde(default)]
    pub tls: Option<BridgeTls>,
    pub topics: Vec<TopicRule>,
    /// The user the bridge acts as on this broker: the access rules of `[auth]` for this user
    /// apply to what the bridge publishes and reads here. Unset: the bridge connects locally
    /// as an anonymous client.
    #[serde(default)]
    pub local_username: Option<String>,
    /// MQTT 3.1.1 only: the protocol level's top bit, which Mosquitto takes for a bridge (it
    /// then does not send the bridge back what the bridge published there: the loop guard
    /// that MQTT 5's No Local gives). Only for Mosquitto remotes; others refuse the CONNECT.
    #[serde(default)]
    pub try_private: bool,
    /// Messages in flight to the remote at once (and the local session's Receive Maximum).
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// The first delay before reconnecting to the remote, in milliseconds.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// The longest delay between reconnection attempts, in milliseconds.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
}

fn default_keep_alive() -> u16 {
    60
}

fn default_max_inflight() -> u16 {
    32
}

fn default_reconnect_min() -> u64 {
    500
}

fn default_reconnect_max() -> u64 {
    30_000
}

/// The MQTT version spoken to the remote broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum BridgeProtocol {
    #[serde(rename = "3.1.1")]
    V311,
    #[default]
    #[serde(rename = "5")]
    V5,
}

/// `tls = { ca, cert, key }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeTls {
    /// CA certificates (PEM) the remote's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) and its key, for a remote that asks for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Which way a topic rule carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BridgeDirection {
    /// From the remote broker to this one.
    In,
    /// From this broker to the remote one.
    Out,
    Both,
}

impl BridgeDirection {
    pub fn carries_in(self) -> bool {
        matches!(self, BridgeDirection::In | BridgeDirection::Both)
    }

    pub fn carries_out(self) -> bool {
        matches!(self, BridgeDirection::Out | BridgeDirection::Both)
    }
}

/// One entry of `topics`: Mosquitto's `topic pattern direction qos local_prefix remote_prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// A topic filter (wildcards allowed), without the prefixes.
    pub pattern: String,
    pub direction: BridgeDirection,
    /// The highest QoS the rule carries messages at (0, 1 or 2).
    #[serde(default)]
    pub qos: u8,
    /// Put before `pattern` on this broker.
    #[serde(default)]
    pub local_prefix: String,
    /// Put before `pattern` on the remote broker.
    #[serde(default)]
    pub remote_prefix: String,
}

impl TopicRule {
    /// The rule's QoS (validated: 0 to 2).
    pub fn qos(&self) -> QoS {
        QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce)
    }

    /// The filter on this broker: `local_prefix` + `pattern`.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The filter on the remote broker: `remote_prefix` + `pattern`.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }
}

/// The client identifier of a bridge's session on this broker; reserved for the bridge (a
/// network client that asks for it is refused).
pub fn local_client_id(name: &str) -> String {
    format!("{}{name}", tern_broker::BRIDGE_CLIENT_ID_PREFIX)
}

impl BridgeConfig {
    /// The remote addresses, in the order they are tried.
    pub fn address_list(&self) -> Vec<String> {
        self.address
            .iter()
            .chain(self.addresses.iter())
            .cloned()
            .collect()
    }

    /// The client identifier at the remote broker.
    pub fn remote_client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("tern-bridge-{}", self.name))
    }

    pub fn reconnect_min(&self) -> Duration {
        Duration::from_millis(self.reconnect_min_ms)
    }

    pub fn reconnect_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_ms)
    }

    /// TLS file paths relative to the configuration file's directory.
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(tls) = &mut self.tls {
            for path in [&mut tls.ca, &mut tls.cert, &mut tls.key]
                .into_iter()
                .flatten()
            {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
    }

    /// Checks what parses but cannot work; the message starts with `bridge "<name>"`.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        let fail = |what: String| Err(format!("bridge {name:?}: {what}"));
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(format!(
                "bridge {name:?}: a bridge needs a name of letters, digits, '-', '_' or '.'"
            ));
        }
        match (&self.address, self.addresses.is_empty()) {
            (None, true) => {
                return fail("needs address = \"host:port\" or addresses = [...]".into());
            }
            (Some(_), false) => return fail("give address or addresses, not both".into()),
            _ => {}
        }
        for address in self.address_list() {
            if let Err(error) = split_address(&address) {
                return fail(error);
            }
        }
        if self.client_id.as_deref() == Some("") {
            return fail("client_id may not be empty".into());
        }
        if self.password.is_some() && self.username.is_none() {
            return fail("a password needs a username".into());
        }
        if self.try_private && self.protocol == BridgeProtocol::V5 {
            return fail("try_private is for protocol \"3.1.1\" (MQTT 5 has No Local)".into());
        }
        if self.max_inflight == 0 {
            return fail("max_inflight must be at least 1".into());
        }
        if self.reconnect_min_ms == 0 || self.reconnect_max_ms < self.reconnect_min_ms {
            return fail("reconnect_min_ms must be at least 1 and at most reconnect_max_ms".into());
        }
        if let Some(tls) = &self.tls {
            if tls.ca.is_none() {
                return fail(
                    "tls needs ca, the CA certificates of the remote's certificate".into(),
                );
            }
            if tls.cert.is_some() != tls.key.is_some() {
                return fail("tls: cert and key go together".into());
            }
        }
        if self.topics.is_empty() {
            return fail("needs at least one entry in topics".into());
        }
        for rule in &self.topics {
            if let Err(error) = rule.validate() {
                return fail(format!("topic {:?}: {error}", rule.pattern));
            }
        }
        Ok(())
    }

    /// For `tern check-config`: the TLS files can be read.
    pub(crate) fn check_files(&self) -> Result<(), String> {
        if let Some(endpoint) = self.endpoints().first() {
            tern_client::transport::Dialer::new(endpoint)
                .map_err(|error| format!("bridge {:?}: {error}", self.name))?;
        }
        Ok(())
    }

    /// The client's endpoints for the address list.
    pub(crate) fn endpoints(&self) -> Vec<tern_client::Endpoint> {
        self.address_list()
            .iter()
            .filter_map(|address| split_address(address).ok())
            .map(|(host, port)| {
                let mut endpoint = tern_client::Endpoint::tcp(host, port);
                if let Some(tls) = &self.tls {
                    endpoint.transport = tern_client::Transport::Tls;
                    endpoint.tls = tern_client::TlsOptions {
                        cafile: tls.ca.clone(),
                        cert: tls.cert.clone(),
                        key: tls.key.clone(),
                        ..Default::default()
                    };
                }
                endpoint
            })
            .collect()
    }
}

impl TopicRule {
    fn validate(&self) -> Result<(), String> {
        if QoS::from_u8(self.qos).is_none() {
            return Err("qos must be 0, 1 or 2".into());
        }
        if self.pattern.is_empty() {
            return Err("pattern may not be empty".into());
        }
        for (key, prefix) in [
            ("local_prefix", &self.local_prefix),
            ("remote_prefix", &self.remote_prefix),
        ] {
            if prefix.contains(['+', '#', '\0']) {
                return Err(format!("{key} may not hold wildcards"));
            }
            if prefix.starts_with('$') {
                return Err(format!("{key} may not start with '$'"));
            }
        }
        if tern_codec::topic::split_shared(&self.pattern).is_some() {
            return Err("a shared subscription cannot be bridged".into());
        }
        for filter in [self.local_filter(), self.remote_filter()] {
            tern_codec::topic::validate_topic_filter(&filter)
                .map_err(|error| format!("{filter:?} is not a valid topic filter: {error}"))?;
        }
        Ok(())
    }
}

/// `host:port` (an IPv6 host in brackets) into its parts.
fn split_address(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("address {address:?} needs a port (host:port)"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|port| *port > 0)
        .ok_or_else(|| format!("address {address:?}: {port:?} is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("address {address:?} needs a host"));
    }
    Ok((host.to_owned(), port))
}

/// Checks every bridge and that their names are unique.
pub fn validate_all(bridges: &[BridgeConfig]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for bridge in bridges {
        bridge.validate()?;
        if !names.insert(bridge.name.as_str()) {
            return Err(format!(
                "bridge {:?}: two bridges have this name: names must be unique",
                bridge.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<BridgeConfig>, String> {
        #[derive(Deserialize)]
        struct File {
            bridges: Vec<BridgeConfig>,
        }
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        validate_all(&file.bridges)?;
        Ok(file.bridges)
    }

    /// Issue 15: the configuration shape of the issue is read as written.
    #[test]
    fn issue_example_parses() {
        let bridges = parse(
            r#"
[[bridges]]
name = "cloud"
address = "broker.example.net:8883"
protocol = "5"
client_id = "site-7"
clean_start = false
keep_alive = 60
username = "u"
password = "p"
tls = { ca = "ca.pem" }
topics = [
  { pattern = "sensors/#", direction = "out", qos = 1, local_prefix = "", remote_prefix = "site-7/" },
  { pattern = "commands/#", direction = "in", qos = 1 },
]
"#,
        )
        .unwrap();
        let bridge = &bridges[0];
        assert_eq!(bridge.protocol, BridgeProtocol::V5);
        assert_eq!(bridge.address_list(), vec!["broker.example.net:8883"]);
        assert_eq!(bridge.topics[0].remote_filter(), "site-7/sensors/#");
        assert_eq!(bridge.topics[1].direction, BridgeDirection::In);
        assert_eq!(bridge.topics[1].qos(), QoS::AtLeastOnce);
        let endpoints = bridge.endpoints();
        assert_eq!(endpoints[0].port, 8883);
        assert_eq!(endpoints[0].transport, tern_client::Transport::Tls);
    }

    /// Issue 15: what cannot work is refused with a message naming the bridge.
    #[test]
    fn bad_bridges_are_refused() {
        let base = "[[bridges]]\nname = \"b\"\n";
        let rule = "topics = [{ pattern = \"a/#\", direction = \"out\" }]\n";
        let cases = [
            (format!("{base}{rule}"), "needs address"),
            (format!("{base}address = \"h\"\n{rule}"), "needs a port"),
            (
                format!("{base}address = \"h:1\"\naddresses = [\"h:2\"]\n{rule}"),
                "not both",
            ),
            (format!("{base}address = \"h:1\"\ntopics = []\n"), "at least one"),
            (
                format!(
                    "{base}address = \"h:1\"\ntopics = [{{ pattern = \"a/#\", direction = \"out\", qos = 3 }}]\n"
                ),
                "qos must be",
            ),
            (
                format!(
                    "{base}address = \"h:1\"\ntopics = [{{ pattern = \"a/#/b\", direction = \"in\" }}]\n"
                ),
                "not a valid topic filter",
            ),
            (
                format!(
                    "{base}address = \"h:1\"\ntopics = [{{ pattern = \"a\", direction = \"in\", local_prefix = \"x/+/\" }}]\n"
                ),
                "wildcards",
            ),
            (
                format!("{base}address = \"h:1\"\n{rule}[[bridges]]\nname = \"b\"\naddress = \"h:1\"\n{rule}"),
                "unique",
            ),
            (
                "[[bridges]]\nname = \"a b\"\naddress = \"h:1\"\ntopics = [{ pattern = \"a\", direction = \"in\" }]\n".to_owned(),
                "needs a name",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(&text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
        assert!(parse(&format!("{base}address = \"h:1\"\n{rule}oops = 1\n")).is_err());
        assert!(
            parse("[[bridges]]\nname = \"b\"\naddress = \"h:1\"\ntopics = [{ pattern = \"a\", direction = \"sideways\" }]\n")
                .is_err()
        );
    }
}
