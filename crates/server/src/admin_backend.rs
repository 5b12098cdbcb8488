//! The server's side of the admin API: `tern_admin::AdminBackend` over the broker core's
//! queries and commands (sessions, kick, retained messages, publish, tracing), the metrics
//! text, the running configuration and its reload. The HTTP layer (tern-admin) calls it from
//! its own tasks; every call is an in-memory walk bounded by its page, or a file read on
//! tokio's blocking pool (reload).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tern_admin::api::BoxFuture;
use tern_admin::{
    AdminBackend, AdminError, ClientDetail, ClientSummary, Page, PublishRequest, Readiness,
    ReloadReport, RetainedMessage, RetainedSummary, SessionSummary, Stats, SubscriptionInfo,
    SubscriptionQuery,
};
use tern_broker::{Message, SessionReport, SubscriptionRecord};
use tern_codec::{MqttStr, Properties, ProtocolVersion, QoS};

use crate::config::{Limits, ServerConfig};
use crate::metrics::MetricsSource;
use crate::server::AuthReloader;
use crate::tls::TlsReloader;

/// Applies a new log filter to the running subscriber (installed by the binary, which owns
/// the subscriber); `Err` with the reason when the filter is not valid.
pub type LogLevelReloader = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static LOG_LEVEL_RELOADER: OnceLock<LogLevelReloader> = OnceLock::new();

/// Registers how a reload changes the log level (once per process; later calls are ignored).
pub fn set_log_level_reloader(reloader: LogLevelReloader) {
    let _ = LOG_LEVEL_RELOADER.set(reloader);
}

/// The admin backend of a running server (see [`crate::Server::admin_backend`]).
pub(crate) struct ServerBackend {
    pub(crate) source: MetricsSource,
    pub(crate) tls: TlsReloader,
    pub(crate) auth: AuthReloader,
    /// The configuration in force: what the server started with, with what reloads applied.
    pub(crate) running: Mutex<ServerConfig>,
    /// The file's keys as last read, for `config()`.
    pub(crate) file_values: Mutex<serde_json::Value>,
    /// The keys the last reload found changed that only a restart applies.
    pub(crate) pending_restart: Mutex<Vec<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Seconds since the Unix epoch of a moment of the monotonic clock.
fn unix_seconds(at: Instant) -> u64 {
    let ago = Instant::now().saturating_duration_since(at);
    SystemTime::now()
        .checked_sub(ago)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// The protocol version as the admin API, the metrics' `protocol` label and the log lines
/// all name it ("3.1", "3.1.1", "5": the API's contract).
pub(crate) fn protocol_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V31 => "3.1",
        ProtocolVersion::V311 => "3.1.1",
        ProtocolVersion::V5 => "5",
    }
}

fn summary(report: &SessionReport) -> Option<ClientSummary> {
    let connection = report.connection.as_ref()?;
    Some(ClientSummary {
        client_id: report.client_id.as_str().to_owned(),
        username: connection.username.clone(),
        peer: connection.peer.map(|peer| peer.to_string()),
        listener: connection.listener.as_deref().map(str::to_owned),
        protocol: protocol_name(connection.protocol).to_owned(),
        connected_at: unix_seconds(connection.connected_at),
        keep_alive_s: connection.keep_alive,
        clean_start: connection.clean_start,
        subscriptions: report.subscriptions,
        queued: report.queued,
        inflight: report.inflight,
    })
}

fn subscription(client_id: &str, filter: &str, record: &SubscriptionRecord) -> SubscriptionInfo {
    let options = &record.options;
    SubscriptionInfo {
        client_id: client_id.to_owned(),
        filter: filter.to_owned(),
        qos: options.qos as u8,
        no_local: options.no_local,
        retain_as_published: options.retain_as_published,
        retain_handling: options.retain_handling as u8,
        identifier: record.identifier,
    }
}

fn expiry_seconds(at: Option<Instant>) -> Option<u64> {
    at.map(|at| at.saturating_duration_since(Instant::now()).as_secs())
}

/// A page's limit: the default for 0, never above the maximum.
fn limit(page: &Page) -> usize {
    match page.limit {
        0 => Page::DEFAULT_LIMIT,
        n => n.min(Page::MAX_LIMIT),
    }
}

/// The bytes of the files under `dir`, `depth` levels down at most (the store's files: a
/// few dozen, so a stats call stays cheap).
fn directory_bytes(dir: &std::path::Path, depth: usize) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() && depth > 0 => directory_bytes(&entry.path(), depth - 1),
            Ok(meta) if meta.is_file() => meta.len(),
            _ => 0,
        })
        .sum()
}

/// Topics starting with `$` are the broker's own (`$SYS`, MQTT 4.7.2): written only by its
/// `$SYS` task, which keeps their accounting (left out of the retained totals and quotas,
/// never stored). The admin API, like a client, may not publish or clear them.
fn refuse_system_topic(topic: &str) -> Result<(), AdminError> {
    if topic.starts_with('$') {
        return Err(AdminError::Invalid(format!(
            "topic {topic:?}: topics starting with '$' are the broker's own"
        )));
    }
    Ok(())
}

/// Standard base64 (RFC 4648, with padding).
fn base64(bytes: &[u8]) -> String {
    use base64ct::Encoding;
    base64ct::Base64::encode_string(bytes)
}

impl AdminBackend for ServerBackend {
    fn stats(&self) -> Stats {
        let broker = &self.source.broker;
        let m = broker.metrics().snapshot();
        let totals = broker.session_totals();
        let (retained, retained_bytes) = broker.retained_totals();
        Stats {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: self.source.started.elapsed().as_secs(),
            connections: totals.connected,
            sessions_connected: totals.connected,
            sessions_offline: totals.offline,
            subscriptions: broker.subscription_count() as u64,
            retained_messages: retained as u64,
            retained_bytes: retained_bytes as u64,
            messages_received: m.messages_received,
            messages_sent: m.messages_sent,
            bytes_received: m.network_bytes_received,
            bytes_sent: m.network_bytes_sent,
            messages_dropped: crate::metrics::messages_dropped(&m),
            auth_failures: m.auth_failures,
            queued_messages: totals.queued,
            inflight_messages: totals.inflight,
            store_accepting: broker.accepts_new_work(),
            store_bytes: self
                .source
                .store
                .as_ref()
                .map(|store| directory_bytes(store.dir(), 4)),
        }
    }

    fn readiness(&self) -> Readiness {
        let broker = &self.source.broker;
        let mut reasons = Vec::new();
        if broker.is_shutting_down() {
            reasons.push("shutting down".to_owned());
        }
        if !broker.accepts_new_work() {
            let failure = self.source.store.as_ref().and_then(|s| s.status().failure);
            reasons.push(failure.unwrap_or_else(|| {
                "the store takes no new durable work (free disk space below min_free_disk)"
                    .to_owned()
            }));
        }
        Readiness {
            ready: reasons.is_empty(),
            reasons,
        }
    }

    fn clients(&self, page: &Page) -> Vec<ClientSummary> {
        self.source
            .broker
            .sessions_after(page.after.as_deref(), limit(page), true)
            .iter()
            .filter_map(summary)
            .collect()
    }

    fn client(&self, client_id: &str) -> Option<ClientDetail> {
        let broker = &self.source.broker;
        let report = broker.session_report(client_id)?;
        let summary = summary(&report)?;
        let subscriptions = broker
            .subscriptions_of(client_id)
            .unwrap_or_default()
            .iter()
            .map(|(filter, record)| subscription(client_id, filter, record))
            .collect();
        Some(ClientDetail {
            summary,
            subscriptions,
            session_expiry_s: match report.expiry {
                tern_broker::SessionExpiry::AtDisconnect => Some(0),
                tern_broker::SessionExpiry::After(d) => Some(d.as_secs()),
                tern_broker::SessionExpiry::Never => None,
            },
            dropped: report.dropped,
            tracing: report.traced,
        })
    }

    fn kick(&self, client_id: &str) -> bool {
        self.source.broker.kick(client_id)
    }

    fn sessions(&self, page: &Page) -> Vec<SessionSummary> {
        self.source
            .broker
            .sessions_after(page.after.as_deref(), limit(page), false)
            .into_iter()
            .map(|report| SessionSummary {
                connected: report.connection.is_some(),
                expires_in_s: expiry_seconds(report.expires_at),
                subscriptions: report.subscriptions,
                queued: report.queued,
                inflight: report.inflight,
                client_id: report.client_id.as_str().to_owned(),
            })
            .collect()
    }

    fn delete_session(&self, client_id: &str) -> bool {
        self.source.broker.delete_session(client_id, Instant::now())
    }

    /// The page's `after` is the last entry's client id and filter joined by a NUL
    /// (`"client\0filter"`, with or without `client_id`), or a client id alone.
    fn subscriptions(&self, query: &SubscriptionQuery) -> Vec<SubscriptionInfo> {
        let broker = &self.source.broker;
        let limit = limit(&query.page);
        // The key of the contract (`SubscriptionQuery`): client id and filter joined by a NUL,
        // which neither may contain [MQTT-1.5.4-2]; a client id alone: after all of its.
        let after = query
            .page
            .after
            .as_deref()
            .map(|a| a.split_once('\0').unwrap_or((a, "\u{10FFFF}")));
        if let Some(client_id) = &query.client_id {
            return broker
                .subscriptions_of(client_id)
                .unwrap_or_default()
                .iter()
                .filter(|(f, _)| query.filter.as_deref().is_none_or(|w| f.as_str() == w))
                .filter(|(f, _)| after.is_none_or(|a| (client_id.as_str(), f.as_str()) > a))
                .take(limit)
                .map(|(filter, record)| subscription(client_id, filter, record))
                .collect();
        }
        broker
            .subscriptions_after(after, query.filter.as_deref(), limit)
            .iter()
            .map(|(client_id, filter, record)| subscription(client_id, filter, record))
            .collect()
    }

    fn retained(&self, filter: &str, page: &Page) -> Result<Vec<RetainedSummary>, AdminError> {
        let filter = if filter.is_empty() { "#" } else { filter };
        tern_codec::topic::validate_topic_filter(filter)
            .map_err(|error| AdminError::Invalid(format!("filter {filter:?}: {error}")))?;
        if tern_codec::topic::split_shared(filter).is_some() {
            return Err(AdminError::Invalid(
                "a shared subscription filter matches no retained message".to_owned(),
            ));
        }
        Ok(self
            .source
            .broker
            .retained_after(filter, page.after.as_deref(), limit(page))
            .iter()
            .map(|message| RetainedSummary {
                topic: message.topic.as_str().to_owned(),
                qos: message.qos as u8,
                payload_bytes: message.payload.len(),
            })
            .collect())
    }

    fn retained_message(&self, topic: &str) -> Option<RetainedMessage> {
        let message = self.source.broker.retained_message(topic)?;
        let now = Instant::now();
        Some(RetainedMessage {
            topic: message.topic.as_str().to_owned(),
            qos: message.qos as u8,
            payload: std::str::from_utf8(&message.payload)
                .ok()
                .map(str::to_owned),
            payload_base64: base64(&message.payload),
            content_type: message
                .properties
                .as_ref()
                .and_then(|p| p.content_type.as_ref())
                .map(|c| c.as_str().to_owned()),
            expires_in_s: message.remaining_expiry(now).map(u64::from),
        })
    }

    fn delete_retained(&self, topic: &str) -> Result<bool, AdminError> {
        tern_codec::topic::validate_topic_name(topic)
            .map_err(|error| AdminError::Invalid(format!("topic {topic:?}: {error}")))?;
        refuse_system_topic(topic)?;
        Ok(self.source.broker.clear_retained(topic))
    }

    fn publish(&self, request: PublishRequest) -> Result<(), AdminError> {
        let broker = &self.source.broker;
        if broker.is_shutting_down() {
            return Err(AdminError::Unavailable("shutting down".to_owned()));
        }
        tern_codec::topic::validate_topic_name(&request.topic)
            .map_err(|error| AdminError::Invalid(format!("topic: {error}")))?;
        refuse_system_topic(&request.topic)?;
        let topic = MqttStr::try_from(request.topic.as_str())
            .map_err(|error| AdminError::Invalid(format!("topic: {error}")))?;
        let payload =
            match (request.payload, request.payload_base64) {
                (Some(text), None) => Bytes::from(text),
                (None, Some(encoded)) => {
                    use base64ct::Encoding;
                    Bytes::from(base64ct::Base64::decode_vec(&encoded).map_err(|_| {
                        AdminError::Invalid("payload_base64: not base64".to_owned())
                    })?)
                }
                (None, None) => Bytes::new(),
                (Some(_), Some(_)) => {
                    return Err(AdminError::Invalid(
                        "give payload or payload_base64, not both".to_owned(),
                    ));
                }
            };
        let qos = match request.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            other => return Err(AdminError::Invalid(format!("qos {other}: 0, 1 or 2"))),
        };
        if (request.retain || qos != QoS::AtMostOnce) && !broker.accepts_new_work() {
            return Err(AdminError::Unavailable(
                "the store takes no new durable work".to_owned(),
            ));
        }
        let mut properties = Properties::default();
        if let Some(content_type) = request.content_type {
            properties.content_type = Some(
                MqttStr::try_from(content_type)
                    .map_err(|error| AdminError::Invalid(format!("content_type: {error}")))?,
            );
        }
        let now = Instant::now();
        let message = Message {
            cluster_id: None,
            topic,
            payload,
            qos,
            retain: request.retain,
            properties: (properties != Properties::default()).then(|| Arc::new(properties)),
            expires_at: request
                .message_expiry_s
                .map(|s| now + std::time::Duration::from_secs(u64::from(s))),
            publisher: None,
            id: 0,
        };
        tracing::info!(topic = %message.topic, qos = request.qos, retain = request.retain, event = "admin_publish", "message published by the admin API");
        broker.publish(message, now);
        Ok(())
    }

    fn set_client_tracing(&self, client_id: &str, on: bool) -> bool {
        let done = self.source.broker.set_client_tracing(client_id, on);
        if done {
            tracing::info!(
                client_id,
                on,
                event = "client_tracing",
                "per-client tracing switched"
            );
        }
        done
    }

    fn metrics_text(&self) -> String {
        self.source.render()
    }

    /// `running`: the keys in force (the file's, with the command line's overrides and what
    /// reloads applied; not what waits for a restart); `values`: the file as last read;
    /// `pending_restart`: the keys whose file value differs from the running one until a
    /// restart; `overridden`: the keys the command line sets.
    fn config(&self) -> serde_json::Value {
        let values = lock(&self.file_values).clone();
        let pending = lock(&self.pending_restart).clone();
        let running = lock(&self.running);
        serde_json::json!({
            "file": running.config_file.as_ref().map(|p| p.display().to_string()),
            "values": values,
            "log_level": running.log_level,
            "running": running_values(&running),
            "pending_restart": pending,
            "overridden": running.overrides.keys(),
        })
    }

    fn bridges(&self) -> Vec<tern_admin::BridgeInfo> {
        self.source.bridges.snapshots()
    }

    fn cluster(&self) -> Option<tern_admin::ClusterInfo> {
        self.source.cluster.as_ref().map(crate::cluster_admin::info)
    }

    fn cluster_join(&self, addr: String) -> BoxFuture<'_, Result<(), AdminError>> {
        Box::pin(async move {
            match &self.source.cluster {
                Some(cluster) => crate::cluster_admin::join(cluster, &addr).await,
                None => Err(AdminError::NotFound(tern_admin::NOT_CLUSTERED.into())),
            }
        })
    }

    fn cluster_leave(&self, node: Option<u64>) -> BoxFuture<'_, Result<u64, AdminError>> {
        Box::pin(async move {
            match &self.source.cluster {
                Some(cluster) => crate::cluster_admin::leave(cluster, node).await,
                None => Err(AdminError::NotFound(tern_admin::NOT_CLUSTERED.into())),
            }
        })
    }

    fn reload(&self) -> BoxFuture<'_, ReloadReport> {
        Box::pin(async move {
            let this = self.reload_parts();
            let mut report = tokio::task::spawn_blocking(move || this.run())
                .await
                .unwrap_or_else(|error| {
                    let report = ReloadReport {
                        errors: vec![format!("the reload failed: {error}")],
                        ..ReloadReport::default()
                    };
                    (report, None, serde_json::Value::Null)
                });
            if let Some(config) = &report.1 {
                let changed = self.source.bridges.apply(&config.bridges).await;
                if !changed.is_empty() {
                    report
                        .0
                        .applied
                        .push(format!("bridges ({})", changed.join(", ")));
                }
                *lock(&self.running) = config.clone();
                *lock(&self.file_values) = report.2.clone();
                *lock(&self.pending_restart) = report.0.needs_restart.clone();
            }
            log_report(&report.0);
            report.0
        })
    }
}

/// The running configuration's keys that a reload or the command line can make differ from
/// the file (the top-level keys, `[limits]`, `[mqtt]`, `auth.allow_anonymous`); secrets are
/// not among them. `[[listeners]]`, `[admin]` and the rest of `[auth]` change only at a
/// restart: the file's values of them run unless `pending_restart` names them.
fn running_values(running: &ServerConfig) -> serde_json::Value {
    let mut value = serde_json::json!({
        "listen": running.listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "workers": running.workers,
        "log_level": running.log_level,
        "log_format": running.log_format,
        "sys_interval": running.sys_interval,
        "data_dir": running.data_dir.display().to_string(),
        "durability": running.durability,
        "unstored_grace_ms": running.unstored_grace_ms,
        "limits": running.limits,
        "mqtt": running.mqtt,
        "auth": {"allow_anonymous": running.auth.allow_anonymous},
    });
    redact(&mut value);
    value
}

/// Logs what a reload did (the API's and SIGHUP's).
pub(crate) fn log_report(report: &ReloadReport) {
    tracing::info!(
        applied = ?report.applied,
        needs_restart = ?report.needs_restart,
        errors = ?report.errors,
        event = "reload",
        "configuration reloaded"
    );
}

/// What a reload works with, off the event loop.
pub(crate) struct Reload {
    pub(crate) path: Option<PathBuf>,
    pub(crate) running: ServerConfig,
    pub(crate) tls: TlsReloader,
    pub(crate) auth: AuthReloader,
    /// Whether any listener, or `[cluster] tls`, has a certificate to read again.
    pub(crate) has_tls: bool,
    pub(crate) broker: Arc<tern_broker::Broker>,
}

impl ServerBackend {
    fn reload_parts(&self) -> Reload {
        let running = lock(&self.running).clone();
        Reload {
            path: running.config_file.clone(),
            running,
            tls: self.tls.clone(),
            auth: self.auth.clone(),
            has_tls: !self.source.tls.is_empty(),
            broker: self.source.broker.clone(),
        }
    }
}

impl Reload {
    /// Reads the file again; applies the log level, the password/ACL files and the
    /// certificates; names every other key that changed as needing a restart. Returns the
    /// report, the configuration now in force (`None` if the file could not be used) and the
    /// file's values. Blocking.
    pub(crate) fn run(self) -> (ReloadReport, Option<ServerConfig>, serde_json::Value) {
        let mut report = ReloadReport::default();
        let (new, values) = match &self.path {
            Some(path) => match ServerConfig::from_file(path) {
                Ok(config) => (Some(config), file_values(path)),
                Err(error) => {
                    report.errors.push(format!(
                        "{error} (the file's keys stay as they run; the auth files and \
                         certificates it names are read again all the same)"
                    ));
                    (None, serde_json::Value::Null)
                }
            },
            None => (None, serde_json::Value::Null),
        };
        // The files the running configuration names are read again even when the file
        // does not parse: a certificate rotation does not wait for a typo's fix.
        let auth = self.auth.reload(true);
        if auth.password_files + auth.acl_files + auth.jwt_keys > 0 {
            report.applied.push(format!(
                "auth files ({} password, {} ACL, {} JWT key)",
                auth.password_files, auth.acl_files, auth.jwt_keys
            ));
        }
        let tls_errors = self.tls.reload_errors();
        if !tls_errors.is_empty() {
            report.errors.extend(tls_errors);
        } else if self.has_tls {
            report.applied.push("certificates".to_owned());
        }
        let Some(mut new) = new else {
            return (report, None, values);
        };
        let old = &self.running;
        // The command line's keys stay as `tern serve` set them at start.
        old.overrides.apply(&mut new);
        if new.log_level != old.log_level {
            match LOG_LEVEL_RELOADER.get() {
                Some(apply) => match apply(&new.log_level) {
                    Ok(()) => report.applied.push("log_level".to_owned()),
                    Err(error) => {
                        report.errors.push(format!("log_level: {error}"));
                        new.log_level = old.log_level.clone();
                    }
                },
                None => report.needs_restart.push("log_level".to_owned()),
            }
        }
        let mut running = old.clone();
        // Applied by the caller (the bridges' tasks are async): see `Bridges::apply`; not when
        // a bridge's TLS files cannot be used (it could not start), then they run as they are.
        match new.bridges.iter().try_for_each(|b| b.check_files()) {
            Ok(()) => running.bridges = new.bridges.clone(),
            Err(error) => report
                .errors
                .push(format!("{error} (the bridges run as they are)")),
        }
        self.apply_limits(old, &new, &mut running, &mut report);
        report.needs_restart.extend(restart_keys(old, &new));
        // What needs a restart stays as it runs.
        running.log_level = new.log_level;
        (report, Some(running), values)
    }
}

impl Reload {
    /// Applies the limits the broker can change while it runs (see `RuntimeLimits`).
    fn apply_limits(
        &self,
        old: &ServerConfig,
        new: &ServerConfig,
        running: &mut ServerConfig,
        report: &mut ReloadReport,
    ) {
        let mut limits = self.broker.runtime_limits();
        macro_rules! apply {
            ($($field:ident),*) => {
                $(if old.limits.$field != new.limits.$field {
                    limits.$field = new.limits.$field;
                    running.limits.$field = new.limits.$field;
                    report.applied.push(concat!("limits.", stringify!($field)).to_owned());
                })*
            };
        }
        apply!(
            max_queued_messages,
            max_subscriptions_per_session,
            max_retained_messages,
            max_retained_bytes
        );
        self.broker.set_runtime_limits(limits);
    }
}

/// The keys whose change only a restart applies (`max_connections`: the descriptor table is
/// sized for it at start; the others are announced to clients at CONNACK or read at start).
fn restart_keys(old: &ServerConfig, new: &ServerConfig) -> Vec<String> {
    let mut keys = Vec::new();
    let mut compare = |key: &str, changed: bool| {
        if changed {
            keys.push(key.to_owned());
        }
    };
    // Destructured whole, so that a key added to the configuration cannot be forgotten here:
    // each is compared (a change needs a restart) or named as applied at run time.
    let ServerConfig {
        listen,
        listeners,
        workers,
        log_level: _, // applied (the log filter is reloaded)
        log_format,
        sys_interval,
        data_dir,
        durability,
        min_free_disk,
        unstored_grace_ms,
        limits,
        mqtt,
        auth,
        admin,
        bridges,
        cluster,
        store_tuning,
        config_file: _, // where the file is, not a key of it
        overrides: _,   // the command line's, applied to `new` as to `old`
    } = new;
    compare("listen", *listen != old.listen);
    compare("listeners", *listeners != old.listeners);
    compare("workers", *workers != old.workers);
    compare("log_format", *log_format != old.log_format);
    compare("sys_interval", *sys_interval != old.sys_interval);
    compare("data_dir", *data_dir != old.data_dir);
    compare("durability", *durability != old.durability);
    compare("min_free_disk", *min_free_disk != old.min_free_disk);
    compare(
        "unstored_grace_ms",
        *unstored_grace_ms != old.unstored_grace_ms,
    );
    compare("mqtt", *mqtt != old.mqtt);
    compare("admin", *admin != old.admin);
    let _ = bridges; // applied: changed bridges are restarted (`Bridges::apply`)
    compare("cluster", *cluster != old.cluster);
    compare("store_tuning", *store_tuning != old.store_tuning);
    // The files `[auth]` names are read again; which files, and the other auth settings,
    // are fixed at start.
    compare("auth", *auth != old.auth);
    let Limits {
        max_connections,
        max_packet_size,
        max_inflight,
        max_queued_messages: _, // applied
        max_topic_length,
        max_topic_levels,
        connect_timeout,
        receive_maximum,
        topic_alias_maximum,
        max_keep_alive,
        max_subscriptions_per_session: _, // applied
        max_retained_messages: _,         // applied
        max_retained_bytes: _,            // applied
    } = limits;
    let was = &old.limits;
    compare(
        "limits.max_connections",
        *max_connections != was.max_connections,
    );
    compare(
        "limits.max_packet_size",
        *max_packet_size != was.max_packet_size,
    );
    compare("limits.max_inflight", *max_inflight != was.max_inflight);
    compare(
        "limits.max_topic_length",
        *max_topic_length != was.max_topic_length,
    );
    compare(
        "limits.max_topic_levels",
        *max_topic_levels != was.max_topic_levels,
    );
    compare(
        "limits.connect_timeout",
        *connect_timeout != was.connect_timeout,
    );
    compare(
        "limits.receive_maximum",
        *receive_maximum != was.receive_maximum,
    );
    compare(
        "limits.topic_alias_maximum",
        *topic_alias_maximum != was.topic_alias_maximum,
    );
    compare(
        "limits.max_keep_alive",
        *max_keep_alive != was.max_keep_alive,
    );
    keys
}

/// Keys whose values are secrets: shown as "<redacted>". Generous on purpose: a key named
/// like a secret is hidden unless it names a file or a directory.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    if key.ends_with("_file") || key.ends_with("_path") || key.ends_with("_dir") {
        return false;
    }
    [
        "password",
        "passwd",
        "secret",
        "token",
        "psk",
        "credential",
        "apikey",
        "api_key",
        "hmac",
        "authorization",
        "private",
        "cookie",
    ]
    .iter()
    .any(|word| key.contains(word))
        || key == "key"
        || key.ends_with("_key")
}

/// A URL's userinfo and query (where credentials travel: `https://user:pass@host/?api_key=`)
/// replaced by "<redacted>"; other text as it is.
fn redact_url(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return None;
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => format!("<redacted>@{host}"),
        None => authority.to_owned(),
    };
    let path = match path.split_once('?') {
        Some((before, _)) => format!("{before}?<redacted>"),
        None => match path.split_once('#') {
            Some((before, _)) => before.to_owned(),
            None => path.to_owned(),
        },
    };
    let redacted = format!("{scheme}://{host}{path}");
    (redacted != text).then_some(redacted)
}

fn redact(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if is_secret(key) && !value.is_object() {
                    *value = serde_json::Value::String("<redacted>".to_owned());
                } else {
                    redact(value);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        serde_json::Value::String(text) => {
            if let Some(redacted) = redact_url(text) {
                *text = redacted;
            }
        }
        _ => {}
    }
}

/// The keys of the configuration file as JSON, secrets redacted (`Null` if unreadable).
pub(crate) fn file_values(path: &std::path::Path) -> serde_json::Value {
    let Ok(text) = std::fs::read_to_string(path) else {
        return serde_json::Value::Null;
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return serde_json::Value::Null;
    };
    let mut value = serde_json::to_value(table).unwrap_or(serde_json::Value::Null);
    redact(&mut value);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13 "the running configuration with secrets redacted".
    #[test]
    fn secrets_are_redacted() {
        let mut value = serde_json::json!({
            "auth": {"password_file": "p", "http": {"token": "t", "url": "u"}},
            "listeners": [{"tls": {"key": "k.pem", "cert": "c.pem"}}],
            "jwt": {"secret": "s"},
        });
        redact(&mut value);
        assert_eq!(value["auth"]["password_file"], "p");
        assert_eq!(value["auth"]["http"]["token"], "<redacted>");
        assert_eq!(value["auth"]["http"]["url"], "u");
        assert_eq!(value["listeners"][0]["tls"]["key"], "<redacted>");
        assert_eq!(value["listeners"][0]["tls"]["cert"], "c.pem");
        assert_eq!(value["jwt"]["secret"], "<redacted>");
    }

    /// Review 13 #10: secrets inside values (a URL's userinfo and query) and keys named like
    /// secrets beyond the first list are hidden too; files and plain URLs stay readable.
    #[test]
    fn secrets_inside_values_are_redacted() {
        let mut value = serde_json::json!({
            "auth": {"http": {"url": "https://user:pass@auth.example:8443/check?api_key=k#frag"}},
            "plain": "http://auth.example/check",
            "api_key": "a", "hmac": "h", "shared_key": "s", "authorization": "Bearer x",
            "jwt_keys": ["k1.pem"], "key_file": "k.pem", "max_keep_alive": 60,
        });
        redact(&mut value);
        assert_eq!(
            value["auth"]["http"]["url"],
            "https://<redacted>@auth.example:8443/check?<redacted>"
        );
        assert_eq!(value["plain"], "http://auth.example/check");
        for key in ["api_key", "hmac", "shared_key", "authorization"] {
            assert_eq!(value[key], "<redacted>", "{key}");
        }
        assert_eq!(value["jwt_keys"][0], "k1.pem");
        assert_eq!(value["key_file"], "k.pem");
        assert_eq!(value["max_keep_alive"], 60);
    }
}
