//! HTTP authentication (`http = { ... }` in `[auth]` or a listener's `auth`): the CONNECT's
//! credentials and the connection's facts are POSTed as JSON to a URL, and the answer allows
//! or denies, with optional topic permissions (the same engine as ACL files and JWT claims,
//! `Acl::from_permissions`).
//!
//! - **Fail closed**: a service that cannot be reached, is slower than `timeout_ms`, answers
//!   anything but 2xx, malformed JSON or a body over [`MAX_ANSWER`] bytes refuses the client
//!   with a retryable code (the caller turns [`Outcome::Unavailable`] into CONNACK 0x88 Server
//!   unavailable, 3.1.1 return code 3); never allowed. One warning line a second at most says
//!   what failed (never the password), with how many failures it stands for.
//! - At most `max_concurrent` requests at once (a semaphore): past that a CONNECT waits for a
//!   permit, bounded by the core's connect timeout.
//! - Keep-alive connections are reused: a small pool of our own over hyper's low-level
//!   `client::conn::http1` (idle senders in a vector, at most `max_concurrent`). hyper-util's
//!   legacy client would bring tower and its connector traits for what is, here, one origin and
//!   a vector; ours also puts the TLS handshake (tokio-rustls, `ca_file`) under the same
//!   timeout as the rest of the exchange.
//! - Allow answers are remembered for `cache_ttl_s` (bounded like the password cache: two
//!   generations of [`CACHE_CAPACITY`]), keyed by an HMAC-SHA256 under a random per-process
//!   key of everything sent but the peer's port (which changes at every reconnection): the
//!   password is never stored. Denials and failures are not remembered.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64ct::{Base64, Encoding};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use ring::hmac;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use serde_json::{Value, json};
use tern_auth::{Acl, Permissions};
use tern_broker::Credentials;
use tern_codec::ReasonCode;
use tokio::sync::Semaphore;

use crate::file_auth::AuthError;

/// The largest answer read; a longer body is a failure of the service.
pub(crate) const MAX_ANSWER: usize = 64 * 1024;
/// Allow answers remembered, per generation (two generations: at most twice this).
const CACHE_CAPACITY: usize = 10_000;
/// At most one warning about the service this often.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

fn default_timeout_ms() -> u64 {
    2000
}

fn default_max_concurrent() -> usize {
    64
}

fn default_cache_ttl_s() -> u64 {
    60
}

/// The `http = { ... }` table (docs/configuration.md, `### HTTP`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `http://host[:port]/path` or `https://...` (https needs `ca_file`). Checked as it is
    /// read, so that `tern check-config` points at its line.
    #[serde(deserialize_with = "checked_url")]
    pub url: String,
    /// The whole exchange (connection, TLS, request, answer), in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight at most; more CONNECTs wait.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// How long an allow answer is remembered, in seconds; 0: never.
    #[serde(default = "default_cache_ttl_s")]
    pub cache_ttl_s: u64,
    /// PEM certificates of the authorities an https service's certificate must chain to.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Where requests go, from the URL.
#[derive(Debug, Clone)]
struct Target {
    https: bool,
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let uri: Uri = url
        .parse()
        .map_err(|error| format!("http: url {url:?} is not a URL: {error}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(format!(
                "http: url {url:?} must start with http:// or https://"
            ));
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(format!("http: url {url:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Err("http: the url must not carry credentials (user@host)".into());
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(format!("http: url {url:?} has no host"));
    }
    // `[::1]` in a URL, `::1` to connect to.
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    Ok(Target {
        https,
        host,
        port,
        authority: authority.as_str().to_owned(),
        path,
    })
}

fn checked_url<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let url = String::deserialize(deserializer)?;
    parse_url(&url).map_err(serde::de::Error::custom)?;
    Ok(url)
}

impl HttpConfig {
    pub(crate) fn paths_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        self.ca_file.iter_mut()
    }

    /// What makes the table unusable, said plainly.
    pub(crate) fn check(&self) -> Result<(), String> {
        let target = parse_url(&self.url)?;
        if target.https && self.ca_file.is_none() {
            return Err(
                "http: an https url needs ca_file (the authorities the service's certificate \
                 chains to; the system's roots are not read)"
                    .into(),
            );
        }
        if !target.https && self.ca_file.is_some() {
            return Err("http: ca_file is only for an https url".into());
        }
        if !(1..=60_000).contains(&self.timeout_ms) {
            return Err("http: timeout_ms must be between 1 and 60000".into());
        }
        if !(1..=4096).contains(&self.max_concurrent) {
            return Err("http: max_concurrent must be between 1 and 4096".into());
        }
        if self.cache_ttl_s > 86_400 {
            return Err("http: cache_ttl_s must be at most 86400 (a day)".into());
        }
        Ok(())
    }
}

/// What an allow answer grants.
#[derive(Debug, Clone)]
pub(crate) struct Allowed {
    /// The answer's permissions (`publish`/`subscribe`), if it had any; `%u`/`%c` are
    /// substituted per client (`Acl::for_client`).
    pub permissions: Option<Arc<Acl>>,
    /// Unix seconds after which the client is disconnected, if the answer said.
    pub expires_at: Option<u64>,
}

/// The service's answer to one CONNECT.
#[derive(Debug)]
pub(crate) enum Outcome {
    Allow(Allowed),
    Deny,
    /// The service failed (the reason was logged): refuse, retryably.
    Unavailable,
    /// Not asked: refused with this code before the request was sent (see [`HttpAuth::ask`]).
    Refused(ReasonCode),
}

/// Why an exchange failed (logged; never a secret).
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("timed out")]
    Timeout,
    #[error("max_concurrent requests in flight for longer than the connect timeout")]
    Saturated,
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("cannot build the request: {0}")]
    Request(String),
    #[error("answered status {0}")]
    Status(u16),
    #[error("the answer is longer than {MAX_ANSWER} bytes or was cut: {0}")]
    Body(String),
    #[error("malformed answer: {0}")]
    Malformed(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Allow,
    Deny,
}

#[derive(Deserialize)]
struct Answer {
    result: Verdict,
    #[serde(default)]
    publish: Option<Vec<String>>,
    #[serde(default)]
    subscribe: Option<Vec<String>>,
    #[serde(default)]
    expires_at: Option<u64>,
}

type Key = [u8; 32];

struct Entry {
    stored: Instant,
    allowed: Allowed,
}

/// Allow answers by their keyed digest, in two generations (as the password cache).
#[derive(Default)]
struct AnswerCache {
    current: HashMap<Key, Entry>,
    previous: HashMap<Key, Entry>,
}

impl AnswerCache {
    fn get(&mut self, key: &Key, ttl: Duration, now: Instant, unix: u64) -> Option<Allowed> {
        let fresh = |entry: &Entry| {
            now.duration_since(entry.stored) < ttl
                && entry.allowed.expires_at.is_none_or(|at| at > unix)
        };
        if let Some(entry) = self.current.get(key) {
            if fresh(entry) {
                return Some(entry.allowed.clone());
            }
            self.current.remove(key);
            return None;
        }
        let entry = self.previous.remove(key)?;
        if !fresh(&entry) {
            return None;
        }
        let allowed = entry.allowed.clone();
        self.insert(*key, entry);
        Some(allowed)
    }

    fn insert(&mut self, key: Key, entry: Entry) {
        if self.current.len() >= CACHE_CAPACITY {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, entry);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// Rate-limits the warnings about the service.
struct Warnings {
    last: Option<Instant>,
    suppressed: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One `http = { ... }` table's client: shared by the listeners that use the same table.
pub(crate) struct HttpAuth {
    /// The url without its query (which might carry a key): for the logs.
    url: String,
    target: Target,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    timeout: Duration,
    /// How long a request may wait for a permit: the connect timeout (its client is gone
    /// after that; asking for it would only load the service more).
    queue_limit: Duration,
    ttl: Duration,
    permits: Semaphore,
    max_idle: usize,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    cache: Mutex<AnswerCache>,
    key: hmac::Key,
    warnings: Mutex<Warnings>,
}

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAuth")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl HttpAuth {
    /// The client of one table: checks it, reads `ca_file`, makes the cache's key. Opens no
    /// connection (none is needed to check a configuration).
    pub(crate) fn new(config: &HttpConfig, queue_limit: Duration) -> Result<HttpAuth, AuthError> {
        let invalid = |message: String| AuthError::Parse {
            path: PathBuf::from("[auth] http"),
            line: 0,
            message,
        };
        config.check().map_err(invalid)?;
        let target = parse_url(&config.url).map_err(invalid)?;
        let tls = match &config.ca_file {
            Some(path) if target.https => {
                let bad = |message: String| AuthError::Parse {
                    path: path.clone(),
                    line: 0,
                    message,
                };
                let pem = std::fs::read(path).map_err(|source| AuthError::Read {
                    path: path.clone(),
                    source,
                })?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|error| bad(format!("not PEM: {error}")))?;
                    roots
                        .add(cert)
                        .map_err(|error| bad(format!("a certificate is refused: {error}")))?;
                }
                if roots.is_empty() {
                    return Err(bad("no certificate".into()));
                }
                let provider = Arc::new(crate::tls::ring_provider());
                let client = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|error| bad(error.to_string()))?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let name = ServerName::try_from(target.host.clone())
                    .map_err(|_| invalid(format!("http: {:?} is not a host name", target.host)))?;
                Some((tokio_rustls::TlsConnector::from(Arc::new(client)), name))
            }
            _ => None,
        };
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| AuthError::Random("no randomness for the HTTP cache's key".into()))?;
        let url = format!(
            "{}://{}{}",
            if target.https { "https" } else { "http" },
            target.authority,
            target.path.split('?').next().unwrap_or("")
        );
        Ok(HttpAuth {
            url,
            target,
            tls,
            timeout: Duration::from_millis(config.timeout_ms),
            queue_limit,
            ttl: Duration::from_secs(config.cache_ttl_s),
            permits: Semaphore::new(config.max_concurrent),
            max_idle: config.max_concurrent,
            idle: Mutex::new(Vec::new()),
            cache: Mutex::new(AnswerCache::default()),
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            warnings: Mutex::new(Warnings {
                last: None,
                suppressed: 0,
            }),
        })
    }

    /// The cache's key for these credentials: a keyed digest of everything [`body`] sends but
    /// the peer's port. Fields are length-prefixed so that no two inputs run together.
    fn key(&self, credentials: &Credentials<'_>, transport: &str) -> Key {
        let mut context = hmac::Context::with_key(&self.key);
        let mut field = |bytes: Option<&[u8]>| match bytes {
            Some(bytes) => {
                context.update(&[1]);
                context.update(&(bytes.len() as u64).to_be_bytes());
                context.update(bytes);
            }
            None => context.update(&[0]),
        };
        let ip = credentials.peer.map(|peer| peer.ip().to_string());
        let certificate = credentials.transport.and_then(|t| t.certificate.as_ref());
        field(Some(credentials.client_id.as_bytes()));
        field(credentials.username.map(str::as_bytes));
        field(credentials.password);
        field(ip.as_deref().map(str::as_bytes));
        field(
            credentials
                .transport
                .and_then(|t| t.listener.as_deref())
                .map(str::as_bytes),
        );
        field(Some(transport.as_bytes()));
        field(Some(&[credentials.protocol as u8]));
        field(
            certificate
                .and_then(|c| c.common_name.as_deref())
                .map(str::as_bytes),
        );
        for name in certificate.map_or(&[][..], |c| &c.alt_names[..]) {
            field(Some(name.as_bytes()));
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(context.sign().as_ref());
        out
    }

    /// A remembered allow answer for these credentials, if one is still fresh.
    pub(crate) fn cached(&self, credentials: &Credentials<'_>, transport: &str) -> Option<Allowed> {
        if self.ttl.is_zero() {
            return None;
        }
        let key = self.key(credentials, transport);
        lock(&self.cache).get(&key, self.ttl, Instant::now(), unix_now())
    }

    /// Forgets every remembered answer (SIGHUP).
    pub(crate) fn clear_cache(&self) {
        let mut cache = lock(&self.cache);
        cache.current.clear();
        cache.previous.clear();
    }

    /// Allow answers remembered now.
    #[cfg(test)]
    fn cached_answers(&self) -> usize {
        lock(&self.cache).len()
    }

    /// Asks the service (waiting for a permit if `max_concurrent` are in flight).
    /// Asks the service. `go_on` is asked once a request permit is held, before anything is
    /// sent: an `Err` (the client gave up meanwhile, or a ban was earned by others from its
    /// address while it waited) ends it with that code, the service not asked.
    pub(crate) async fn ask(
        &self,
        credentials: &Credentials<'_>,
        transport: &str,
        go_on: impl FnOnce() -> Result<(), ReasonCode>,
    ) -> Outcome {
        let body = Bytes::from(body(credentials, transport).to_string());
        let key = (!self.ttl.is_zero()).then(|| self.key(credentials, transport));
        let answer = {
            match tokio::time::timeout(self.queue_limit, self.permits.acquire()).await {
                Ok(Ok(_permit)) => {
                    if let Err(code) = go_on() {
                        return Outcome::Refused(code);
                    }
                    match tokio::time::timeout(self.timeout, self.exchange(body)).await {
                        Ok(answer) => answer,
                        Err(_) => Err(Failure::Timeout),
                    }
                }
                Ok(Err(_)) | Err(_) => Err(Failure::Saturated),
            }
        };
        match answer.and_then(|bytes| decide(&bytes)) {
            Ok(Outcome::Allow(allowed)) => {
                if let Some(key) = key {
                    let entry = Entry {
                        stored: Instant::now(),
                        allowed: allowed.clone(),
                    };
                    lock(&self.cache).insert(key, entry);
                }
                Outcome::Allow(allowed)
            }
            Ok(outcome) => outcome,
            // A service that answers a denial with 401 or 403 (a common habit) has judged the
            // credentials: a denial, counted by the failure limiter, not an outage.
            Err(Failure::Status(401 | 403)) => Outcome::Deny,
            Err(failure) => {
                self.warn(credentials, &failure);
                Outcome::Unavailable
            }
        }
    }

    fn warn(&self, credentials: &Credentials<'_>, failure: &Failure) {
        let now = Instant::now();
        let suppressed = {
            let mut warnings = lock(&self.warnings);
            if warnings
                .last
                .is_some_and(|last| now.duration_since(last) < WARN_INTERVAL)
            {
                warnings.suppressed += 1;
                return;
            }
            warnings.last = Some(now);
            std::mem::take(&mut warnings.suppressed)
        };
        tracing::warn!(
            url = %self.url,
            client_id = credentials.client_id,
            error = %failure,
            also_failed = suppressed,
            "HTTP authentication failed: client refused (server unavailable)"
        );
    }

    /// One POST and its answer's body (2xx only), on a pooled connection if one is idle. A
    /// reused connection the service closed meanwhile is retried once on a new one.
    async fn exchange(&self, body: Bytes) -> Result<Bytes, Failure> {
        loop {
            let (mut sender, reused) = match self.idle_sender() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            if let Err(error) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(Failure::Http(error));
            }
            let request = Request::builder()
                .method(Method::POST)
                .uri(self.target.path.as_str())
                .header(HOST, self.target.authority.as_str())
                .header(CONTENT_TYPE, "application/json")
                .header(CONTENT_LENGTH, body.len())
                .body(Full::new(body.clone()))
                .map_err(|error| Failure::Request(error.to_string()))?;
            let response = match sender.send_request(request).await {
                Ok(response) => response,
                // Closed by the service between two requests: once more, on a new connection.
                Err(_) if reused => continue,
                Err(error) => return Err(Failure::Http(error)),
            };
            let status = response.status();
            // HTTP/1.0 closes after each answer unless it says otherwise; we do not ask it to.
            let close = response.version() < hyper::Version::HTTP_11
                || response
                    .headers()
                    .get(CONNECTION)
                    .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
            let bytes = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|error| Failure::Body(error.to_string()))?
                .to_bytes();
            if !close && !sender.is_closed() {
                let mut idle = lock(&self.idle);
                if idle.len() < self.max_idle {
                    idle.push(sender);
                }
            }
            if !status.is_success() {
                return Err(Failure::Status(status.as_u16()));
            }
            return Ok(bytes);
        }
    }

    fn idle_sender(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = lock(&self.idle);
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        let tcp = tokio::net::TcpStream::connect((self.target.host.as_str(), self.target.port))
            .await
            .map_err(Failure::Connect)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => {
                let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok(sender)
            }
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(Failure::Tls)?;
                let (sender, connection) = http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok(sender)
            }
        }
    }
}

/// The JSON a CONNECT is described by (docs/configuration.md, `### HTTP`).
fn body(credentials: &Credentials<'_>, transport: &str) -> Value {
    let (password, base64) = match credentials.password {
        None => (Value::Null, false),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => (Value::from(text), false),
            Err(_) => (Value::from(Base64::encode_string(bytes)), true),
        },
    };
    let certificate = credentials
        .transport
        .and_then(|t| t.certificate.as_ref())
        .map(|c| json!({"common_name": c.common_name, "alt_names": c.alt_names}));
    json!({
        "client_id": credentials.client_id,
        "username": credentials.username,
        "password": password,
        "password_base64": base64,
        "peer_address": credentials.peer.map(|peer| peer.ip().to_string()),
        "peer_port": credentials.peer.map(|peer| peer.port()),
        "listener": credentials.transport.and_then(|t| t.listener.as_deref()),
        "transport": transport,
        "protocol_version": credentials.protocol as u8,
        "certificate": certificate,
    })
}

/// The service's 2xx answer, read.
fn decide(bytes: &[u8]) -> Result<Outcome, Failure> {
    let answer: Answer =
        serde_json::from_slice(bytes).map_err(|error| Failure::Malformed(error.to_string()))?;
    match answer.result {
        Verdict::Deny => Ok(Outcome::Deny),
        Verdict::Allow => {
            if answer.expires_at.is_some_and(|at| at <= unix_now()) {
                return Ok(Outcome::Deny);
            }
            let permissions = if answer.publish.is_some() || answer.subscribe.is_some() {
                let permissions = Permissions {
                    publish: answer.publish.unwrap_or_default(),
                    subscribe: answer.subscribe.unwrap_or_default(),
                    deny: Vec::new(),
                };
                let acl = Acl::from_permissions(&permissions)
                    .map_err(|error| Failure::Malformed(error.to_string()))?;
                Some(Arc::new(acl))
            } else {
                None
            };
            Ok(Outcome::Allow(Allowed {
                permissions,
                expires_at: answer.expires_at,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> HttpConfig {
        toml::from_str(&format!("url = {url:?}")).unwrap()
    }

    /// Issue 12, HTTP: the table is validated at load, errors said plainly.
    #[test]
    fn validation() {
        let ok = config("http://127.0.0.1:8080/mqtt/auth");
        assert!(ok.check().is_ok());
        assert_eq!(
            (ok.timeout_ms, ok.max_concurrent, ok.cache_ttl_s),
            (2000, 64, 60)
        );
        let target = parse_url(&ok.url).unwrap();
        assert_eq!(
            (target.host.as_str(), target.port, target.path.as_str()),
            ("127.0.0.1", 8080, "/mqtt/auth")
        );
        let v6 = parse_url("http://[::1]/").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 80));
        for (url, needle) in [
            ("ftp://x/", "http:// or https://"),
            ("/relative", "http:// or https://"),
            ("http://user:pw@x/", "credentials"),
            ("not a url", "not a URL"),
        ] {
            let error = toml::from_str::<HttpConfig>(&format!("url = {url:?}")).unwrap_err();
            assert!(error.to_string().contains(needle), "{url}: {error}");
            assert!(error.to_string().contains("line 1"), "{error}");
        }
        let error = config("https://x/").check().unwrap_err();
        assert!(error.contains("ca_file"), "{error}");
        let zero: HttpConfig = toml::from_str("url = \"http://x/\"\ntimeout_ms = 0").unwrap();
        assert!(zero.check().unwrap_err().contains("timeout_ms"));
        let none: HttpConfig = toml::from_str("url = \"http://x/\"\nmax_concurrent = 0").unwrap();
        assert!(none.check().unwrap_err().contains("max_concurrent"));
        assert!(toml::from_str::<HttpConfig>("url = \"http://x/\"\nurll = 1").is_err());
    }

    /// Issue 12, HTTP: `http` counts as an authenticator for the secure-by-default rule (a
    /// network listener starts; anonymous clients refused unless said), and its errors name
    /// the listener.
    #[test]
    fn http_is_an_authenticator() {
        let lan: std::net::IpAddr = "0.0.0.0".parse().unwrap();
        let table: crate::AuthConfig =
            toml::from_str("http = { url = \"http://127.0.0.1:8080/auth\" }").unwrap();
        assert!(table.has_authenticator());
        assert!(table.validate_for("x", lan, false).is_ok());
        assert!(!table.anonymous_allowed("127.0.0.1".parse().unwrap(), false));
        let https: crate::AuthConfig =
            toml::from_str("http = { url = \"https://auth.example/\" }").unwrap();
        let error = https
            .validate_for("listener \"edge\"", lan, false)
            .unwrap_err();
        assert!(error.starts_with("listener \"edge\": http:") && error.contains("ca_file"));
    }

    /// Issue 12, HTTP: allow/deny, permissions, and every malformed answer refused.
    #[test]
    fn answers() {
        assert!(matches!(
            decide(br#"{"result":"allow"}"#),
            Ok(Outcome::Allow(Allowed {
                permissions: None,
                expires_at: None
            }))
        ));
        assert!(matches!(decide(br#"{"result":"deny"}"#), Ok(Outcome::Deny)));
        match decide(br#"{"result":"allow","publish":["a/%u"],"extra":1}"#) {
            Ok(Outcome::Allow(allowed)) => {
                let rules = allowed.permissions.unwrap().for_client(Some("u1"), "c1");
                assert!(rules.may_write("a/u1") && !rules.may_write("a/u2"));
                assert!(!rules.may_read("a/u1"));
            }
            other => panic!("{other:?}"),
        }
        let past = format!(r#"{{"result":"allow","expires_at":{}}}"#, unix_now() - 1);
        assert!(matches!(decide(past.as_bytes()), Ok(Outcome::Deny)));
        for bad in [
            &b"{"[..],
            br#"{"result":"maybe"}"#,
            br#"{"publish":[]}"#,
            br#"{"result":"allow","publish":["a/#/b"]}"#,
            br#"{"result":"allow","publish":"a"}"#,
            b"",
        ] {
            assert!(
                matches!(decide(bad), Err(Failure::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Issue 12, HTTP: the body carries the facts; a password that is not UTF-8 goes as
    /// base64 with a flag; the cache key ignores the peer's port, depends on the rest.
    #[test]
    fn body_and_key() {
        let auth =
            HttpAuth::new(&config("http://127.0.0.1:1/?key=k"), Duration::from_secs(1)).unwrap();
        assert_eq!(auth.url, "http://127.0.0.1:1/");
        let mut credentials = Credentials {
            client_id: "c",
            username: Some("u"),
            password: Some(&[0xff, 0x00]),
            peer: Some("192.0.2.1:4000".parse().unwrap()),
            protocol: tern_codec::ProtocolVersion::V5,
            transport: None,
            authentication_method: None,
        };
        let value = body(&credentials, "mqtt");
        assert_eq!(value["password"], "/wA=");
        assert_eq!(value["password_base64"], true);
        assert_eq!(value["peer_port"], 4000);
        assert_eq!(value["protocol_version"], 5);
        let key = auth.key(&credentials, "mqtt");
        credentials.peer = Some("192.0.2.1:4001".parse().unwrap());
        assert_eq!(key, auth.key(&credentials, "mqtt"));
        assert_ne!(key, auth.key(&credentials, "ws"));
        credentials.password = Some(b"other");
        assert_ne!(key, auth.key(&credentials, "mqtt"));
        assert_eq!(auth.cached_answers(), 0);
    }

    /// Issue 12, HTTP: the cache is bounded, and an entry past its TTL or its expiry is gone.
    #[test]
    fn cache_bounds_and_ttl() {
        let mut cache = AnswerCache::default();
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        let allowed = |expires_at| Allowed {
            permissions: None,
            expires_at,
        };
        for n in 0..(CACHE_CAPACITY * 3) as u32 {
            let mut key = [0; 32];
            key[..4].copy_from_slice(&n.to_be_bytes());
            cache.insert(
                key,
                Entry {
                    stored: now,
                    allowed: allowed(None),
                },
            );
        }
        assert!(cache.len() <= 2 * CACHE_CAPACITY);
        let key = [9; 32];
        cache.insert(
            key,
            Entry {
                stored: now,
                allowed: allowed(Some(1000)),
            },
        );
        assert!(cache.get(&key, ttl, now, 999).is_some());
        assert!(cache.get(&key, ttl, now, 1000).is_none());
        cache.insert(
            key,
            Entry {
                stored: now,
                allowed: allowed(None),
            },
        );
        assert!(cache.get(&key, ttl, now + ttl, 0).is_none());
    }
}
