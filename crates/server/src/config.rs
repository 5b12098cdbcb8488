//! The configuration file (TOML) of `tern serve`. Every key has a default; `docs/configuration.md`
//! documents each with its unit and what it protects against. Unknown keys are an error, so a
//! typo never passes silently.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use tern_broker::BrokerConfig;
use tern_codec::QoS;
use tern_store::DiskReserve;

use crate::admin_config::AdminConfig;
use crate::auth_config::{AuthConfig, DenyPublish};
use crate::bridge::BridgeConfig;
use crate::listener_config::{ListenerConfig, validate_all};

/// Everything `tern serve` can be told.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Addresses to accept MQTT over TCP on (beside `listeners`). Its default,
    /// 127.0.0.1:1883, applies only to a file without `[[listeners]]`.
    pub listen: Vec<SocketAddr>,
    /// Listeners of every kind (`[[listeners]]`): TCP, TLS, WebSockets, with their settings.
    pub listeners: Vec<ListenerConfig>,
    /// Threads serving connections, each with its own event loop and its own listening socket
    /// per address; 0 for one per CPU core.
    pub workers: usize,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a `RUST_LOG` directive).
    pub log_level: String,
    /// How log lines are written: `text` (human) or `json` (one object a line).
    pub log_format: LogFormat,
    /// Seconds between two publications of the `$SYS/broker/...` topics; 0 turns them off.
    pub sys_interval: u64,
    /// Directory of the store (persistent sessions, queued and in-flight messages, retained
    /// messages). Unused with `durability = "memory"`.
    pub data_dir: PathBuf,
    /// What an acknowledged message survives: `memory` (nothing: no disk at all), `process`
    /// (a crash or `kill -9` of the broker), `fsync` (a power loss).
    pub durability: Durability,
    /// Free space the store leaves on the data directory's file system: below it, new durable
    /// work (messages for persistent sessions, retained messages, subscriptions of persistent
    /// sessions) is refused until space returns. Bytes (`"256MB"`, `"1GiB"`) or a percentage
    /// of the file system (`"5%"`).
    #[serde(deserialize_with = "parsed")]
    pub min_free_disk: DiskReserve,
    /// Milliseconds a QoS 1 delivery to a connected persistent session may wait for its
    /// subscriber's acknowledgement before it is stored (0: stored at once).
    pub unstored_grace_ms: u64,
    pub limits: Limits,
    pub mqtt: MqttOptions,
    /// Authentication and access rules (`[auth]`) of every listener without its own `auth`.
    pub auth: AuthConfig,
    /// The admin listener (`[admin]`): HTTP API, `/metrics`, dashboard.
    pub admin: AdminConfig,
    /// Bridges to other brokers (`[[bridges]]`).
    pub bridges: Vec<BridgeConfig>,
    /// This node's place in a cluster (`[cluster]`); none: a single node.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Settings of the store that tests change; not in the configuration file.
    #[doc(hidden)]
    #[serde(skip)]
    pub store_tuning: StoreTuning,
    /// The file this configuration was read from (`from_file`), read again by a reload.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// What the command line set over the file (`tern serve --listen ...`): applied again to
    /// the file at every reload, so a reload neither undoes a flag nor reports it as a
    /// change that needs a restart.
    #[serde(skip)]
    pub overrides: Overrides,
}

/// Keys the command line of `tern serve` sets over the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub listen: Option<Vec<SocketAddr>>,
    pub log_level: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// `--in-memory`: `durability = "memory"`.
    pub in_memory: bool,
    /// `--allow-anonymous`: `auth.allow_anonymous = true`.
    pub allow_anonymous: bool,
}

impl Overrides {
    /// Sets the overridden keys of `config`, and keeps `self` in it for the next reload.
    pub fn apply(&self, config: &mut ServerConfig) {
        if let Some(listen) = &self.listen {
            config.listen = listen.clone();
        }
        if let Some(level) = &self.log_level {
            config.log_level = level.clone();
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if self.in_memory {
            config.durability = Durability::Memory;
        }
        if self.allow_anonymous {
            config.auth.allow_anonymous = Some(true);
        }
        config.overrides = self.clone();
    }

    /// The keys overridden, as the configuration names them (for the log at start).
    pub fn keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.listen.is_some() {
            keys.push("listen");
        }
        if self.log_level.is_some() {
            keys.push("log_level");
        }
        if self.data_dir.is_some() {
            keys.push("data_dir");
        }
        if self.in_memory {
            keys.push("durability");
        }
        if self.allow_anonymous {
            keys.push("auth.allow_anonymous");
        }
        keys
    }
}

/// The shape of log lines (`log_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The store's bound on changes waiting for a commit, and a delay before each commit (a slow
/// disk). For tests: the file does not set them.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreTuning {
    pub max_pending_bytes: usize,
    pub commit_delay: Duration,
}

impl Default for StoreTuning {
    fn default() -> StoreTuning {
        StoreTuning {
            max_pending_bytes: tern_store::StoreOptions::DEFAULT_MAX_PENDING_BYTES,
            commit_delay: Duration::ZERO,
        }
    }
}

/// Reads a value written as text (a size, say) with its `FromStr`.
fn parsed<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

/// Resource limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Open client connections; further ones are closed at once.
    pub max_connections: usize,
    /// Bytes; largest packet accepted from a client.
    pub max_packet_size: u32,
    /// Outbound QoS 1/2 messages awaiting acknowledgement per client.
    pub max_inflight: u16,
    /// Messages waiting per session before the oldest is dropped.
    pub max_queued_messages: usize,
    /// Bytes of a topic name or filter.
    pub max_topic_length: usize,
    /// Levels of a topic name or filter.
    pub max_topic_levels: usize,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout: u64,
    /// MQTT 5 Receive Maximum: QoS 2 messages a client may have awaiting PUBREL.
    pub receive_maximum: u16,
    /// Topic aliases an MQTT 5 client may use towards the broker (0: none).
    pub topic_alias_maximum: u16,
    /// Longest keep-alive granted to MQTT 5 clients, in seconds (0: no maximum).
    pub max_keep_alive: u16,
    /// Subscriptions per session (0: no limit).
    pub max_subscriptions_per_session: usize,
    /// Topics with a retained message (0: no limit).
    pub max_retained_messages: usize,
    /// Bytes of all retained payloads together (0: no limit).
    pub max_retained_bytes: usize,
}

/// Protocol switches.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttOptions {
    /// Highest QoS granted and accepted: 0, 1 or 2.
    pub max_qos: u8,
    pub retain_available: bool,
    /// Queue QoS 0 messages for offline persistent sessions.
    pub queue_qos0_offline: bool,
    /// Seconds a 3.x persistent session outlives its connection; 0 keeps it for ever.
    pub persistent_session_expiry: u64,
    /// Topic aliases the broker uses towards MQTT 5 clients that accept them (0: none).
    pub outbound_topic_aliases: u16,
    pub wildcard_subscriptions: bool,
    pub shared_subscriptions: bool,
    pub subscription_identifiers: bool,
}

/// The durability level of the broker's state; see [`ServerConfig::durability`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// No store: everything is lost when the broker stops.
    Memory,
    /// Written to the operating system before it is acknowledged: survives `kill -9`.
    #[default]
    Process,
    /// Synced to the device before it is acknowledged: survives a power loss.
    Fsync,
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::Memory => "memory",
            Durability::Process => "process",
            Durability::Fsync => "fsync",
        })
    }
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 1883))],
            listeners: Vec::new(),
            workers: 0,
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            sys_interval: 10,
            data_dir: PathBuf::from("tern-data"),
            durability: Durability::default(),
            min_free_disk: DiskReserve::DEFAULT,
            unstored_grace_ms: 5,
            limits: Limits::default(),
            mqtt: MqttOptions::default(),
            auth: AuthConfig::default(),
            admin: AdminConfig::default(),
            bridges: Vec::new(),
            cluster: None,
            store_tuning: StoreTuning::default(),
            config_file: None,
            overrides: Overrides::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        let broker = BrokerConfig::default();
        Limits {
            max_connections: 100_000,
            max_packet_size: broker.max_packet_size,
            max_inflight: broker.max_inflight,
            max_queued_messages: broker.max_queued_messages,
            max_topic_length: broker.max_topic_length,
            max_topic_levels: broker.max_topic_levels,
            connect_timeout: broker.connect_timeout.as_secs(),
            receive_maximum: broker.receive_maximum,
            topic_alias_maximum: broker.topic_alias_maximum,
            max_keep_alive: broker.max_keep_alive,
            max_subscriptions_per_session: broker.max_subscriptions_per_session,
            max_retained_messages: broker.max_retained_messages,
            max_retained_bytes: broker.max_retained_bytes,
        }
    }
}

impl Default for MqttOptions {
    fn default() -> MqttOptions {
        let broker = BrokerConfig::default();
        MqttOptions {
            max_qos: broker.max_qos.as_u8(),
            retain_available: broker.retain_available,
            queue_qos0_offline: broker.queue_qos0_offline,
            persistent_session_expiry: 0,
            outbound_topic_aliases: broker.outbound_topic_aliases,
            wildcard_subscriptions: broker.wildcard_subscriptions,
            shared_subscriptions: broker.shared_subscriptions,
            subscription_identifiers: broker.subscription_identifiers,
        }
    }
}

/// The longest `unstored_grace_ms`: a publisher whose subscriber stalls waits about this long
/// for its PUBACK.
const MAX_UNSTORED_GRACE_MS: u64 = 1000;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A value of a file that parses but cannot be used, with the line it is on.
    #[error("{path}:{line}: {message}")]
    InvalidAt {
        path: String,
        line: usize,
        message: String,
    },
}

/// The line (1-based) of `text` that an `Invalid` message is about: the `[[listeners]]` or
/// `[[bridges]]` header of the listener or bridge it names, or the line that sets the key it
/// starts with.
fn locate(text: &str, message: &str) -> Option<usize> {
    let table = [
        ("listener \"", "[[listeners]]"),
        ("bridge \"", "[[bridges]]"),
    ]
    .into_iter()
    .find_map(|(prefix, header)| Some((message.strip_prefix(prefix)?, header)));
    if let Some((rest, table_header)) = table
        && let Some(name) = rest.split('"').next()
    {
        let mut header = None;
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.starts_with(table_header) {
                header = Some(index + 1);
            } else if let Some(value) = line.strip_prefix("name")
                && let Some(value) = value.trim_start().strip_prefix('=')
                && value.trim().trim_matches('"') == name
            {
                return header.or(Some(index + 1));
            }
        }
        return None;
    }
    let key = message
        .split([' ', ':'])
        .next()?
        .rsplit('.')
        .next()
        .filter(|key| !key.is_empty())?;
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|index| index + 1)
}

impl ServerConfig {
    /// Reads a configuration file.
    pub fn from_file(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = ServerConfig::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        // Certificate paths are relative to the file that names them.
        let base = path.parent().unwrap_or(Path::new("."));
        for listener in &mut config.listeners {
            listener.resolve_paths(base);
        }
        config.auth.resolve_paths(base);
        config.admin.resolve_paths(base);
        for bridge in &mut config.bridges {
            bridge.resolve_paths(base);
        }
        if let Some(cluster) = &mut config.cluster {
            cluster.resolve_paths(base);
        }
        config.validate().map_err(|error| match error {
            ConfigError::Invalid(message) => match locate(&text, &message) {
                Some(line) => ConfigError::InvalidAt {
                    path: path.display().to_string(),
                    line,
                    message,
                },
                None => ConfigError::Invalid(message),
            },
            other => other,
        })?;
        config.config_file = Some(path.to_path_buf());
        Ok(config)
    }

    pub fn from_toml(text: &str) -> Result<ServerConfig, ConfigError> {
        let config = ServerConfig::parse(text).map_err(|source| ConfigError::Parse {
            path: "configuration".to_owned(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses without validating. A file with `[[listeners]]` and no `listen` opens only its
    /// listeners, not the default 127.0.0.1:1883 beside them.
    fn parse(text: &str) -> Result<ServerConfig, toml::de::Error> {
        let mut config: ServerConfig = toml::from_str(text)?;
        if !config.listeners.is_empty() {
            let table: toml::Table = toml::from_str(text)?;
            if !table.contains_key("listen") {
                config.listen.clear();
            }
        }
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |text: &str| Err(ConfigError::Invalid(text.to_owned()));
        if self.listen.is_empty() && self.listeners.is_empty() {
            return invalid("no listener: give listen addresses or [[listeners]]");
        }
        validate_all(&self.listen, &self.listeners).map_err(ConfigError::Invalid)?;
        self.validate_auth().map_err(ConfigError::Invalid)?;
        crate::bridge::validate_all(&self.bridges).map_err(ConfigError::Invalid)?;
        self.validate_bridge_users().map_err(ConfigError::Invalid)?;
        if let Some(cluster) = &self.cluster {
            cluster.validate().map_err(ConfigError::Invalid)?;
        }
        if QoS::from_u8(self.mqtt.max_qos).is_none() {
            return invalid("mqtt.max_qos must be 0, 1 or 2");
        }
        if self.limits.max_inflight == 0 || self.limits.max_inflight == u16::MAX {
            return invalid("limits.max_inflight must be between 1 and 65534");
        }
        if self.limits.max_packet_size < 64 {
            return invalid("limits.max_packet_size must be at least 64 bytes");
        }
        if self.limits.receive_maximum == 0 {
            return invalid("limits.receive_maximum must be at least 1");
        }
        if self.limits.max_topic_levels == 0 || self.limits.max_topic_length == 0 {
            return invalid("limits.max_topic_length and limits.max_topic_levels must be positive");
        }
        if self.unstored_grace_ms > MAX_UNSTORED_GRACE_MS {
            return invalid("unstored_grace_ms must be at most 1000");
        }
        Ok(())
    }

    /// Checks each listener's authentication settings (its own `auth`, or `[auth]`).
    /// A bridge without `local_username` connects here as an anonymous client of the
    /// top-level `[auth]`: refused at start when that table does not let anonymous clients in
    /// (the bridge would only log "local connection refused" forever).
    fn validate_bridge_users(&self) -> Result<(), String> {
        // The address whose policy the top-level table gives (see `FileAuth::from_config`).
        let addr = self
            .listen
            .iter()
            .map(|addr| addr.ip())
            .find(|ip| !crate::auth_config::is_loopback(*ip))
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        if self.auth.anonymous_allowed(addr, false) {
            return Ok(());
        }
        match self.bridges.iter().find(|b| b.local_username.is_none()) {
            Some(bridge) => Err(format!(
                "bridge {:?}: needs local_username: [auth] does not let anonymous clients in",
                bridge.name
            )),
            None => Ok(()),
        }
    }

    fn validate_auth(&self) -> Result<(), String> {
        if let Some(limit) = &self.auth.failure_limit {
            limit.check()?;
        }
        for addr in &self.listen {
            self.auth
                .validate_for(&format!("listen address {addr}"), addr.ip(), false)?;
        }
        for listener in &self.listeners {
            if let Some(own) = &listener.auth {
                let broker_wide = [
                    ("deny_publish", own.deny_publish.is_some()),
                    ("failure_limit", own.failure_limit.is_some()),
                ];
                if let Some((key, _)) = broker_wide.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "listener {:?}: {key} applies to the whole broker: set it in [auth]",
                        listener.name
                    ));
                }
            }
            let auth = listener.auth.as_ref().unwrap_or(&self.auth);
            auth.validate_for(
                &format!("listener {:?}", listener.name),
                listener.reach(),
                listener.certificates_required(),
            )?;
        }
        Ok(())
    }

    /// The authentication settings of the listener named `name` (`None`: a `listen` address).
    pub fn auth_for(&self, name: Option<&str>) -> &AuthConfig {
        name.and_then(|name| self.listeners.iter().find(|l| l.name == name))
            .and_then(|listener| listener.auth.as_ref())
            .unwrap_or(&self.auth)
    }

    /// The number of worker threads: `workers`, or one per core.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The broker core's part of the configuration.
    pub fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            max_packet_size: self.limits.max_packet_size,
            max_inflight: self.limits.max_inflight,
            max_queued_messages: self.limits.max_queued_messages,
            queue_qos0_offline: self.mqtt.queue_qos0_offline,
            max_topic_length: self.limits.max_topic_length,
            max_topic_levels: self.limits.max_topic_levels,
            connect_timeout: Duration::from_secs(self.limits.connect_timeout),
            max_qos: QoS::from_u8(self.mqtt.max_qos).unwrap_or(QoS::ExactlyOnce),
            retain_available: self.mqtt.retain_available,
            persistent_session_expiry: match self.mqtt.persistent_session_expiry {
                0 => None,
                seconds => Some(Duration::from_secs(seconds)),
            },
            receive_maximum: self.limits.receive_maximum,
            topic_alias_maximum: self.limits.topic_alias_maximum,
            outbound_topic_aliases: self.mqtt.outbound_topic_aliases,
            max_keep_alive: self.limits.max_keep_alive,
            wildcard_subscriptions: self.mqtt.wildcard_subscriptions,
            shared_subscriptions: self.mqtt.shared_subscriptions,
            subscription_identifiers: self.mqtt.subscription_identifiers,
            max_subscriptions_per_session: self.limits.max_subscriptions_per_session,
            max_retained_messages: self.limits.max_retained_messages,
            max_retained_bytes: self.limits.max_retained_bytes,
            unstored_grace: Duration::from_millis(self.unstored_grace_ms),
            deny_publish_disconnects_v3: self.auth.deny_publish == Some(DenyPublish::Disconnect),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(
            ServerConfig::from_toml("").unwrap(),
            ServerConfig::default()
        );
    }

    #[test]
    fn keys_are_read_and_unknown_keys_refused() {
        let config = ServerConfig::from_toml(
            "listen = [\"127.0.0.1:1884\", \"[::1]:1885\"]\n[limits]\nmax_queued_messages = 5\n[mqtt]\nmax_qos = 1\n",
        )
        .unwrap();
        assert_eq!(config.listen.len(), 2);
        assert_eq!(config.broker_config().max_queued_messages, 5);
        assert_eq!(config.broker_config().max_qos, QoS::AtLeastOnce);
        assert!(ServerConfig::from_toml("lisen = []").is_err());
        let stored =
            ServerConfig::from_toml("data_dir = \"/var/lib/tern\"\ndurability = \"fsync\"")
                .unwrap();
        assert_eq!(stored.durability, Durability::Fsync);
        assert_eq!(stored.data_dir, PathBuf::from("/var/lib/tern"));
        assert!(ServerConfig::from_toml("durability = \"disk\"").is_err());
        assert!(ServerConfig::from_toml("[mqtt]\nmax_qos = 3").is_err());
    }

    #[test]
    fn min_free_disk_is_a_size_or_a_percentage() {
        assert_eq!(ServerConfig::default().min_free_disk, DiskReserve::DEFAULT);
        let bytes = ServerConfig::from_toml("min_free_disk = \"1GiB\"").unwrap();
        assert_eq!(bytes.min_free_disk, DiskReserve::Bytes(1 << 30));
        let percent = ServerConfig::from_toml("min_free_disk = \"5%\"").unwrap();
        assert_eq!(percent.min_free_disk, DiskReserve::Percent(5));
        let error = ServerConfig::from_toml("min_free_disk = \"lots\"").unwrap_err();
        assert!(error.to_string().contains("min_free_disk"), "{error}");
        assert!(ServerConfig::from_toml("min_free_disk = 5").is_err());
    }

    /// Issue 13: `log_format = "text" | "json"` and `sys_interval` (default 10, 0 = off).
    #[test]
    fn log_format_and_sys_interval_are_read() {
        let defaults = ServerConfig::default();
        assert_eq!(
            (defaults.log_format, defaults.sys_interval),
            (LogFormat::Text, 10)
        );
        let config = ServerConfig::from_toml("log_format = \"json\"\nsys_interval = 0").unwrap();
        assert_eq!(
            (config.log_format, config.sys_interval),
            (LogFormat::Json, 0)
        );
        assert!(ServerConfig::from_toml("log_format = \"xml\"").is_err());
    }

    #[test]
    fn an_invalid_value_is_reported_with_its_line() {
        let text = "workers = 1\nunstored_grace_ms = 5000\n";
        let message = ServerConfig::from_toml(text).unwrap_err().to_string();
        assert_eq!(
            locate(text, message.trim_start_matches("invalid configuration: ")),
            Some(2)
        );
        let text = "[[listeners]]\nname = \"a\"\nkind = \"mqtt\"\nbind = \"127.0.0.1:1\"\n\n[[listeners]]\nname = \"b\"\nkind = \"mqtts\"\nbind = \"127.0.0.1:2\"\n";
        let message = ServerConfig::from_toml(text).unwrap_err().to_string();
        assert!(
            message.contains("listener \"b\" (mqtts): needs tls"),
            "{message}"
        );
        assert_eq!(
            locate(text, message.trim_start_matches("invalid configuration: ")),
            Some(6)
        );
    }

    #[test]
    fn the_unstored_grace_is_bounded_and_zero_turns_it_off() {
        assert_eq!(
            ServerConfig::default().broker_config().unstored_grace,
            Duration::from_millis(5)
        );
        let off = ServerConfig::from_toml("unstored_grace_ms = 0").unwrap();
        assert!(off.broker_config().unstored_grace.is_zero());
        assert!(ServerConfig::from_toml("unstored_grace_ms = 1000").is_ok());
        assert!(ServerConfig::from_toml("unstored_grace_ms = 1001").is_err());
    }

    /// Issue 12, secure by default: a listener on 127.0.0.1 behind a proxy (PROXY header or
    /// trusted `X-Forwarded-For`) serves other hosts' clients, so without authentication and
    /// without an explicit `allow_anonymous` it does not start; the same listener without the
    /// proxy does.
    #[test]
    fn a_loopback_listener_behind_a_proxy_needs_authentication() {
        let listener = |extra: &str| {
            format!("[[listeners]]\nname = \"p\"\nkind = \"mqtt\"\nbind = \"127.0.0.1:1\"\n{extra}")
        };
        assert!(ServerConfig::from_toml(&listener("")).is_ok());
        for proxy in [
            "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\n",
            "trusted_proxies = [\"127.0.0.1\"]\n",
        ] {
            let error = ServerConfig::from_toml(&listener(proxy))
                .unwrap_err()
                .to_string();
            assert!(error.contains("password_file"), "{error}");
            let open = format!("{proxy}auth = {{ allow_anonymous = true }}\n");
            assert!(ServerConfig::from_toml(&listener(&open)).is_ok());
        }
    }

    /// Issue 12: `[auth]` and a listener's `auth` are read, their paths resolved against the
    /// configuration file's directory, `deny_publish` reaches the core, and `deny_publish` in
    /// a listener's table is refused naming the listener.
    #[test]
    fn auth_tables_are_read_and_resolved() {
        let dir = std::env::temp_dir().join(format!("tern-auth-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tern.toml");
        std::fs::write(
            &path,
            "listen = [\"127.0.0.1:1883\"]\n[auth]\npassword_file = \"users\"\ndeny_publish = \"disconnect\"\n\n[[listeners]]\nname = \"lan\"\nkind = \"mqtt\"\nbind = \"0.0.0.0:1884\"\nauth = { acl_file = \"/etc/lan.acl\", allow_anonymous = true }\n",
        )
        .unwrap();
        let config = ServerConfig::from_file(&path).unwrap();
        assert_eq!(config.auth.password_file, Some(dir.join("users")));
        assert!(config.broker_config().deny_publish_disconnects_v3);
        assert!(
            !ServerConfig::default()
                .broker_config()
                .deny_publish_disconnects_v3
        );
        let lan = config.auth_for(Some("lan"));
        assert_eq!(lan.acl_file, Some(PathBuf::from("/etc/lan.acl")));
        assert_eq!(
            lan.password_file, None,
            "a listener's table replaces [auth] whole"
        );
        assert_eq!(config.auth_for(None).password_file, Some(dir.join("users")));
        let text = "[[listeners]]\nname = \"l\"\nkind = \"mqtt\"\nbind = \"127.0.0.1:1\"\nauth = { deny_publish = \"drop\" }\n";
        let error = ServerConfig::from_toml(text).unwrap_err().to_string();
        assert!(
            error.contains("listener \"l\"") && error.contains("deny_publish"),
            "{error}"
        );
        assert!(ServerConfig::from_toml("[auth]\ndeny_publish = \"kick\"").is_err());
        assert!(ServerConfig::from_toml("[auth]\npassword = \"x\"").is_err());
    }

    /// Issue 12: the failure limits are configuration, top-level only, checked at load.
    #[test]
    fn failure_limit_is_read_and_checked() {
        let config = ServerConfig::from_toml(
            "[auth]\nfailure_limit = { ban_after = 0, max_delay_ms = 500, by_client_id = false }\n",
        )
        .unwrap();
        let limit = config.auth.failure_limit.unwrap();
        assert_eq!(limit.ban_after, 0);
        assert_eq!(limit.max_delay_ms, 500);
        assert!(!limit.by_client_id);
        assert_eq!(limit.free, crate::FailureLimit::default().free);
        let error = ServerConfig::from_toml("[auth]\nfailure_limit = { ban_after = 2 }\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("ban_after"), "{error}");
        assert!(ServerConfig::from_toml("[auth]\nfailure_limit = { bans = 2 }\n").is_err());
        let text = "[[listeners]]\nname = \"l\"\nkind = \"mqtt\"\nbind = \"127.0.0.1:1\"\nauth = { failure_limit = { free = 1 } }\n";
        let error = ServerConfig::from_toml(text).unwrap_err().to_string();
        assert!(
            error.contains("listener \"l\"") && error.contains("failure_limit"),
            "{error}"
        );
    }

    #[test]
    fn the_documented_example_is_the_default() {
        let doc = include_str!("../../../docs/configuration.md");
        let start = doc.find("```toml\n").expect("an example") + "```toml\n".len();
        let end = start + doc[start..].find("```").expect("its end");
        assert_eq!(
            ServerConfig::from_toml(&doc[start..end]).unwrap(),
            ServerConfig::default()
        );
    }
}
