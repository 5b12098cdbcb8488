//! Users from a password file and access rules from an ACL file, per listener (`[auth]` and a
//! listener's own `auth`), plugged into the core's hooks and the server's deferred
//! authentication:
//!
//! - the core's synchronous [`Authenticator`] answers at once what costs a map lookup: an
//!   anonymous client (let in or not), a username proven by a client certificate, and a
//!   username/password remembered from an earlier success (a keyed digest, never the password);
//!   everything else is [`AuthDecision::Defer`]red;
//! - the [`AsyncAuthenticator`] verifies the hash on tokio's blocking pool, behind a semaphore
//!   that caps concurrent verifications (argon2 costs milliseconds and megabytes each), and
//!   remembers successes;
//! - each client's access rules (`Acl::for_client`) go in its principal, wrapped in [`Rules`],
//!   which rebuilds them when the ACL file is reloaded;
//! - failed authentications are counted per source address and per client id: after a few,
//!   each next verification waits (exponential backoff), then the address or client id is
//!   refused for a while (CONNACK 0x9F Connection rate exceeded) without any verification
//!   (`auth_failures.rs`).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tern_auth::{
    Acl, ClientRules, CredentialDigest, CredentialDigester, PasswordFile, ScramDecoys,
    ScramMechanism, ScramServerKeys,
};
use tern_broker::{
    AuthDecision, AuthRequest, Authenticator, ClientAccess, Credentials, EnhancedAuthenticator,
    FilterAccess, Principal, TransportIdentity,
};
use tern_codec::ReasonCode;
use tokio::sync::Semaphore;

use crate::auth::{AsyncAuthenticator, AuthFuture};
use crate::auth_config::AuthConfig;
use crate::auth_failures::{FailureLimiter, Penalty};
use crate::config::ServerConfig;
use crate::http_auth::{Allowed, HttpAuth, HttpConfig, Outcome};
use crate::jwt::{JwtVerifier, looks_like_jwt};
use crate::scram_auth::ScramAuthenticator;

/// Successful verifications remembered, per generation (two generations: at most twice this).
const CACHE_CAPACITY: usize = 10_000;
/// Password verifications that may wait their turn, per core; more are refused at once
/// (CONNACK 0x89 Server busy), so a flood cannot pile up work and memory behind the pool.
const WAITING_PER_CORE: usize = 64;
/// The longest a token's or an HTTP answer's expiry is taken to be (ten years): a value past
/// what the clock can hold must not read as "never expires".
const MAX_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// When credentials valid for `seconds` more expire, capped at [`MAX_CREDENTIAL_LIFETIME`].
fn expiry_after(seconds: u64) -> Option<Instant> {
    let lifetime = Duration::from_secs(seconds).min(MAX_CREDENTIAL_LIFETIME);
    Instant::now().checked_add(lifetime)
}

/// A password or ACL file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line of the file at fault (the message never quotes a hash or a password).
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot make the key of the verification cache: {0}")]
    Random(String),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A file's modification time and length: a change of either is a change of the file.
type Stamp = (Option<SystemTime>, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok(), metadata.len()))
}

/// What a watched file parses into.
trait Loadable: Sized + Send + Sync + 'static {
    const WHAT: &'static str;
    fn load(path: &Path) -> Result<Self, AuthError>;
}

fn read(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })
}

impl Loadable for PasswordFile {
    const WHAT: &'static str = "password file";
    fn load(path: &Path) -> Result<Self, AuthError> {
        let file = PasswordFile::parse(&read(path)?).map_err(|error| AuthError::Parse {
            path: path.to_owned(),
            line: error.line,
            message: error.kind.to_string(),
        })?;
        for warning in file.warnings() {
            tracing::warn!(file = %path.display(), "password file: {warning}");
        }
        Ok(file)
    }
}

impl Loadable for Acl {
    const WHAT: &'static str = "ACL file";
    fn load(path: &Path) -> Result<Self, AuthError> {
        let acl = Acl::parse(&read(path)?).map_err(|error| AuthError::Parse {
            path: path.to_owned(),
            line: error.line,
            message: error.kind.to_string(),
        })?;
        for warning in acl.warnings() {
            tracing::warn!(file = %path.display(), "ACL file: {warning}");
        }
        Ok(acl)
    }
}

/// A file's parsed content, replaced when the file is reloaded. `generation` counts the
/// replacements, so that what was derived from an older content can tell.
struct Watched<T> {
    path: PathBuf,
    current: RwLock<(u64, Arc<T>)>,
    generation: AtomicU64,
    stamp: Mutex<Option<Stamp>>,
}

impl<T: Loadable> Watched<T> {
    fn open(path: &Path) -> Result<Watched<T>, AuthError> {
        let before = stamp(path);
        let value = T::load(path)?;
        Ok(Watched {
            path: path.to_owned(),
            current: RwLock::new((0, Arc::new(value))),
            generation: AtomicU64::new(0),
            stamp: Mutex::new(before),
        })
    }

    fn current(&self) -> Arc<T> {
        self.snapshot().1
    }

    fn snapshot(&self) -> (u64, Arc<T>) {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        (current.0, current.1.clone())
    }

    /// Reads the file again (if it changed, or whatever with `force`); whether the content
    /// was replaced. A file that cannot be used keeps the previous content: the error says
    /// why, naming the file.
    fn reload(&self, force: bool) -> Result<bool, AuthError> {
        let now = stamp(&self.path);
        {
            let mut last = lock(&self.stamp);
            if !force && *last == now {
                return Ok(false);
            }
            // Remembered even if the new content fails: one warning per change, not one per
            // poll.
            *last = now;
        }
        let value = T::load(&self.path)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let generation = current.0 + 1;
        *current = (generation, Arc::new(value));
        self.generation.store(generation, Ordering::Release);
        tracing::info!(file = %self.path.display(), "{} reloaded", T::WHAT);
        Ok(true)
    }
}

/// One client's access rules (tern-auth's [`ClientRules`]) as the core asks them. Compiled at
/// authentication; compiled again, at the next check, after the ACL file was reloaded.
struct Rules {
    source: Arc<Watched<Acl>>,
    username: Option<Box<str>>,
    client_id: Box<str>,
    compiled: RwLock<(u64, ClientRules)>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("acl", &self.source.path)
            .field("username", &self.username)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Rules {
    fn new(source: Arc<Watched<Acl>>, username: Option<&str>, client_id: &str) -> Rules {
        let (generation, acl) = source.snapshot();
        let rules = acl.for_client(username, client_id);
        Rules {
            source,
            username: username.map(Box::from),
            client_id: Box::from(client_id),
            compiled: RwLock::new((generation, rules)),
        }
    }

    fn with<R>(&self, check: impl Fn(&ClientRules) -> R) -> R {
        let generation = self.source.generation.load(Ordering::Acquire);
        {
            let compiled = self.compiled.read().unwrap_or_else(|p| p.into_inner());
            if compiled.0 == generation {
                return check(&compiled.1);
            }
        }
        let (generation, acl) = self.source.snapshot();
        let rules = acl.for_client(self.username.as_deref(), &self.client_id);
        let answer = check(&rules);
        *self.compiled.write().unwrap_or_else(|p| p.into_inner()) = (generation, rules);
        answer
    }
}

impl ClientAccess for Rules {
    fn may_write(&self, topic: &str) -> bool {
        self.with(|rules| rules.may_write(topic))
    }

    fn may_read(&self, topic: &str) -> bool {
        self.with(|rules| rules.may_read(topic))
    }

    fn classify(&self, filter: &str) -> FilterAccess {
        self.with(|rules| match rules.classify(filter) {
            tern_auth::FilterAccess::Granted => FilterAccess::Granted,
            tern_auth::FilterAccess::Denied => FilterAccess::Denied,
            tern_auth::FilterAccess::Partial => FilterAccess::Partial,
        })
    }
}

/// What one listener (or the `listen` addresses) asks of its clients.
#[derive(Clone)]
struct Policy {
    allow_anonymous: bool,
    passwords: Option<Arc<Watched<PasswordFile>>>,
    acl: Option<Arc<Watched<Acl>>>,
    jwt: Option<Arc<JwtVerifier>>,
    /// An HTTP service, asked about users not in the password file, and the listener's kind
    /// (`mqtt`, `ws`, ...) it is told.
    http: Option<(Arc<HttpAuth>, &'static str)>,
    /// The SCRAM mechanisms offered here (none: `scram` unset).
    scram: Vec<ScramMechanism>,
}

/// A token's own permissions (its publish/subscribe claims), compiled once at CONNECT.
#[derive(Debug)]
struct TokenAccess(ClientRules);

impl ClientAccess for TokenAccess {
    fn may_write(&self, topic: &str) -> bool {
        self.0.may_write(topic)
    }

    fn may_read(&self, topic: &str) -> bool {
        self.0.may_read(topic)
    }

    fn classify(&self, filter: &str) -> FilterAccess {
        match self.0.classify(filter) {
            tern_auth::FilterAccess::Granted => FilterAccess::Granted,
            tern_auth::FilterAccess::Denied => FilterAccess::Denied,
            tern_auth::FilterAccess::Partial => FilterAccess::Partial,
        }
    }
}

/// Remembers successful verifications by their keyed digest, in two generations: when the
/// newer is full it becomes the older and the older is forgotten; a hit in the older moves to
/// the newer. Bounded, and what is in use stays.
#[derive(Default)]
struct SuccessCache {
    current: HashSet<CredentialDigest>,
    previous: HashSet<CredentialDigest>,
}

impl SuccessCache {
    fn contains(&mut self, digest: &CredentialDigest) -> bool {
        if self.current.contains(digest) {
            return true;
        }
        if self.previous.remove(digest) {
            self.insert(*digest);
            return true;
        }
        false
    }

    fn insert(&mut self, digest: CredentialDigest) {
        if self.current.len() >= CACHE_CAPACITY {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(digest);
    }

    fn clear(&mut self) {
        self.current.clear();
        self.previous.clear();
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

struct Inner {
    /// The `listen` addresses'.
    default: Policy,
    /// Each `[[listeners]]`'s, by name.
    listeners: HashMap<Box<str>, Policy>,
    password_files: Vec<Arc<Watched<PasswordFile>>>,
    acl_files: Vec<Arc<Watched<Acl>>>,
    jwt: Vec<Arc<JwtVerifier>>,
    http: Vec<Arc<HttpAuth>>,
    digester: CredentialDigester,
    /// Salts for unknown SCRAM users (scram_auth.rs).
    scram_decoys: ScramDecoys,
    cache: Mutex<SuccessCache>,
    verifications: Arc<Semaphore>,
    /// Verifications waiting for one of `verifications`' permits (or their backoff delay).
    waiting: Arc<Semaphore>,
    /// Hashes verified (see [`FileAuth::verifications_done`]).
    verified: AtomicU64,
    limiter: Mutex<FailureLimiter>,
}

/// Authentication from password files and access rules from ACL files, per listener: the core's
/// [`Authenticator`] and the server's [`AsyncAuthenticator`] at once (see the module's notes).
#[derive(Clone)]
pub struct FileAuth {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FileAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileAuth")
            .field("listeners", &self.inner.listeners.len())
            .field("password_files", &self.inner.password_files.len())
            .field("acl_files", &self.inner.acl_files.len())
            .finish_non_exhaustive()
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthReload {
    pub password_files: usize,
    pub acl_files: usize,
    pub jwt_keys: usize,
}

impl FileAuth {
    /// Reads the password and ACL files of every listener; `None` when no listener has one
    /// (clients are then let in as the core's defaults do).
    pub fn from_config(config: &ServerConfig) -> Result<Option<FileAuth>, AuthError> {
        let mut tables = std::iter::once(&config.auth)
            .chain(config.listeners.iter().filter_map(|l| l.auth.as_ref()));
        if !tables.any(|auth| {
            auth.password_file.is_some()
                || auth.acl_file.is_some()
                || auth.jwt.is_some()
                || auth.http.is_some()
                || auth.scram.is_some()
        }) {
            return Ok(None);
        }
        let mut password_files: HashMap<PathBuf, Arc<Watched<PasswordFile>>> = HashMap::new();
        let mut acl_files: HashMap<PathBuf, Arc<Watched<Acl>>> = HashMap::new();
        let mut jwt_verifiers: Vec<Arc<JwtVerifier>> = Vec::new();
        let mut http_clients: Vec<(HttpConfig, Arc<HttpAuth>)> = Vec::new();
        // A CONNECT waiting longer than this for the HTTP service is refused anyway.
        let queue_limit = Duration::from_secs(config.limits.connect_timeout);
        let mut policy =
            |auth: &AuthConfig, addr: IpAddr, certificates: bool| -> Result<Policy, AuthError> {
                let passwords = match &auth.password_file {
                    Some(path) => Some(match password_files.get(path) {
                        Some(file) => file.clone(),
                        None => {
                            let file = Arc::new(Watched::open(path)?);
                            password_files.insert(path.clone(), file.clone());
                            file
                        }
                    }),
                    None => None,
                };
                let acl = match &auth.acl_file {
                    Some(path) => Some(match acl_files.get(path) {
                        Some(file) => file.clone(),
                        None => {
                            let file = Arc::new(Watched::open(path)?);
                            acl_files.insert(path.clone(), file.clone());
                            file
                        }
                    }),
                    None => None,
                };
                let jwt = match &auth.jwt {
                    Some(config) => {
                        let verifier = Arc::new(JwtVerifier::new(config)?);
                        jwt_verifiers.push(verifier.clone());
                        Some(verifier)
                    }
                    None => None,
                };
                // One client (pool, cache, concurrency bound) per distinct table.
                let http = match &auth.http {
                    Some(table) => Some(match http_clients.iter().find(|(c, _)| c == table) {
                        Some((_, client)) => (client.clone(), "mqtt"),
                        None => {
                            let client = Arc::new(HttpAuth::new(table, queue_limit)?);
                            http_clients.push((table.clone(), client.clone()));
                            (client, "mqtt")
                        }
                    }),
                    None => None,
                };
                Ok(Policy {
                    allow_anonymous: auth.anonymous_allowed(addr, certificates),
                    passwords,
                    acl,
                    jwt,
                    http,
                    scram: auth
                        .scram
                        .as_ref()
                        .map(|scram| scram.mechanisms())
                        .unwrap_or_default(),
                })
            };
        // The `listen` addresses share the top-level table; anonymous clients are let in if
        // every one of them allows it (validation refused the others).
        let default_addr = config
            .listen
            .iter()
            .map(|addr| addr.ip())
            .find(|ip| !crate::auth_config::is_loopback(*ip))
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let default = policy(&config.auth, default_addr, false)?;
        let mut listeners = HashMap::new();
        for listener in &config.listeners {
            let auth = listener.auth.as_ref().unwrap_or(&config.auth);
            let mut own = policy(auth, listener.reach(), listener.certificates_required())?;
            if let Some((_, kind)) = &mut own.http {
                // What the HTTP service is told (a `listen` address: plain MQTT).
                *kind = listener.kind.as_str();
            }
            listeners.insert(Box::from(listener.name.as_str()), own);
        }
        let digester =
            CredentialDigester::new().map_err(|error| AuthError::Random(error.to_string()))?;
        let scram_decoys =
            ScramDecoys::new().map_err(|error| AuthError::Random(error.to_string()))?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Some(FileAuth {
            inner: Arc::new(Inner {
                default,
                listeners,
                password_files: password_files.into_values().collect(),
                acl_files: acl_files.into_values().collect(),
                jwt: jwt_verifiers,
                http: http_clients.into_iter().map(|(_, client)| client).collect(),
                digester,
                scram_decoys,
                cache: Mutex::new(SuccessCache::default()),
                verifications: Arc::new(Semaphore::new(cores)),
                waiting: Arc::new(Semaphore::new(cores * WAITING_PER_CORE)),
                verified: AtomicU64::new(0),
                limiter: Mutex::new(FailureLimiter::new(
                    config.auth.failure_limit.unwrap_or_default(),
                )),
            }),
        }))
    }

    /// Reads the files again: those that changed, or all with `force` (SIGHUP). A new password
    /// file clears the cache of verifications; a file that cannot be used keeps the previous
    /// content, with a warning that names it. The caller re-checks subscriptions when an ACL
    /// changed (`Broker::recheck_access`).
    pub fn reload(&self, force: bool) -> AuthReload {
        let mut changed = AuthReload::default();
        for file in &self.inner.password_files {
            match file.reload(force) {
                Ok(true) => changed.password_files += 1,
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "the password file is kept as it was"),
            }
        }
        if changed.password_files > 0 {
            lock(&self.inner.cache).clear();
        }
        for file in &self.inner.acl_files {
            match file.reload(force) {
                Ok(true) => changed.acl_files += 1,
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "the ACL file is kept as it was"),
            }
        }
        for verifier in &self.inner.jwt {
            match verifier.reload(force) {
                Ok(true) => changed.jwt_keys += 1,
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "the JWT keys are kept as they were"),
            }
        }
        if force {
            // SIGHUP: what the HTTP services allowed is asked again (a revocation is seen
            // at once).
            for http in &self.inner.http {
                http.clear_cache();
            }
        }
        changed
    }

    /// Successful verifications remembered now.
    pub fn cached_verifications(&self) -> usize {
        lock(&self.inner.cache).len()
    }

    /// Password hashes verified since start (for tests: work skipped is not counted).
    #[doc(hidden)]
    pub fn verifications_done(&self) -> u64 {
        self.inner.verified.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn policy(&self, transport: Option<&TransportIdentity>) -> &Policy {
        match transport.and_then(|t| t.listener.as_deref()) {
            Some(name) => self.listeners.get(name).unwrap_or(&self.default),
            None => &self.default,
        }
    }

    fn allow(&self, policy: &Policy, credentials: &Credentials<'_>) -> Principal {
        let mut principal = Principal::from_credentials(credentials);
        if let Some(acl) = &policy.acl {
            principal.access = Some(Arc::new(Rules::new(
                acl.clone(),
                credentials.username,
                credentials.client_id,
            )));
        }
        principal
    }

    /// A JWT in the password field, verified inline (see the jwt module: microseconds).
    fn token(
        &self,
        policy: &Policy,
        jwt: &JwtVerifier,
        token: &[u8],
        credentials: &Credentials<'_>,
    ) -> AuthDecision {
        if self.banned(credentials) {
            log_failure(credentials, "too many failures");
            return AuthDecision::Deny(ReasonCode::ConnectionRateExceeded);
        }
        let verified = match jwt.verify(token, credentials.client_id, credentials.username) {
            Ok(verified) => verified,
            Err(reason) => {
                self.failed(credentials, reason);
                return AuthDecision::Deny(ReasonCode::BadUserNameOrPassword);
            }
        };
        // The rules are those of the user the token vouches for, not of whatever username
        // the CONNECT carries.
        let vouched = Credentials {
            username: verified.username.as_deref(),
            ..*credentials
        };
        let mut principal = self.allow(policy, &vouched);
        if let Some(permissions) = &verified.permissions {
            match Acl::from_permissions(permissions) {
                Ok(acl) => {
                    let rules = acl.for_client(vouched.username, credentials.client_id);
                    principal.access = Some(Arc::new(TokenAccess(rules)));
                }
                Err(error) => {
                    self.failed(credentials, "token: a permission filter is invalid");
                    tracing::debug!(%error, "token permissions refused");
                    return AuthDecision::Deny(ReasonCode::BadUserNameOrPassword);
                }
            }
        }
        let remaining = verified.exp.saturating_sub(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
        principal.expires_at = expiry_after(remaining);
        lock(&self.limiter).succeeded(credentials.client_id);
        AuthDecision::Allow(principal)
    }

    /// Counts a failure and logs it: one line, never the password.
    fn failed(&self, credentials: &Credentials<'_>, reason: &str) {
        lock(&self.limiter).failed(
            credentials.peer.map(|peer| peer.ip()),
            credentials.client_id,
            Instant::now(),
        );
        log_failure(credentials, reason);
    }
}

/// `auth failed` lines written per second at most; the others are counted and reported in one
/// line when the next second begins (a flood of failing CONNECTs must not fill the disk).
const FAILURE_LINES_PER_SECOND: u32 = 20;
/// Longest username or client id written in an `auth failed` line (longer ones are cut).
const LOGGED_TEXT_MAX: usize = 256;

/// Lines written and suppressed in the current second.
struct FailureLog {
    second: Instant,
    written: u32,
    suppressed: u64,
}

static FAILURE_LOG: Mutex<Option<FailureLog>> = Mutex::new(None);

impl FailureLog {
    /// Whether a line may be written at `now`, and how many were suppressed in the seconds
    /// before (reported once, with the first line of a new second).
    fn allow(&mut self, now: Instant) -> (bool, u64) {
        let mut reported = 0;
        if now.duration_since(self.second) >= Duration::from_secs(1) {
            reported = std::mem::take(&mut self.suppressed);
            self.second = now;
            self.written = 0;
        }
        if self.written < FAILURE_LINES_PER_SECOND {
            self.written += 1;
            (true, reported)
        } else {
            self.suppressed += 1;
            (false, reported)
        }
    }
}

/// [`FailureLog::allow`] for the process's log.
fn failure_line_allowed(now: Instant) -> (bool, u64) {
    lock(&FAILURE_LOG)
        .get_or_insert(FailureLog {
            second: now,
            written: 0,
            suppressed: 0,
        })
        .allow(now)
}

/// `text` cut to at most [`LOGGED_TEXT_MAX`] bytes, at a character boundary.
fn cut(text: &str) -> &str {
    if text.len() <= LOGGED_TEXT_MAX {
        return text;
    }
    let mut end = LOGGED_TEXT_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn log_failure(credentials: &Credentials<'_>, reason: &str) {
    let (allowed, suppressed) = failure_line_allowed(Instant::now());
    if suppressed > 0 {
        tracing::info!(
            count = suppressed,
            "auth failures not logged (over 20 a second)"
        );
    }
    if !allowed {
        return;
    }
    tracing::info!(
        client_id = cut(credentials.client_id),
        username = cut(credentials.username.unwrap_or("")),
        peer = %credentials.peer.map_or_else(String::new, |peer| peer.to_string()),
        listener = credentials
            .transport
            .and_then(|t| t.listener.as_deref())
            .unwrap_or(""),
        reason,
        event = "auth_failure",
        "auth failed"
    );
}

impl Authenticator for FileAuth {
    fn authenticate(&self, credentials: &Credentials<'_>) -> AuthDecision {
        let inner = &*self.inner;
        let policy = inner.policy(credentials.transport);
        // MQTT 5 enhanced authentication: the exchange proves who the client is (scram_auth.rs).
        if let Some(method) = credentials.authentication_method {
            return inner.enhanced_connect(policy, method, credentials);
        }
        // A username the TLS listener took from a verified client certificate is proven by it.
        if credentials.transport.is_some_and(|t| t.username.is_some()) {
            return AuthDecision::Allow(inner.allow(policy, credentials));
        }
        if let (Some(jwt), Some(password)) = (&policy.jwt, credentials.password)
            && looks_like_jwt(password)
            && !credentials.username.is_some_and(|user| {
                policy
                    .passwords
                    .as_ref()
                    .is_some_and(|file| file.current().lookup(user).is_some())
            })
        {
            return inner.token(policy, jwt, password, credentials);
        }
        let Some(username) = credentials.username else {
            if policy.allow_anonymous {
                return AuthDecision::Allow(inner.allow(policy, credentials));
            }
            inner.failed(credentials, "anonymous");
            return AuthDecision::Deny(ReasonCode::NotAuthorized);
        };
        if let Some((http, kind)) = policy.http_for(Some(username)) {
            return inner.http_cached(policy, http, kind, credentials);
        }
        let Some(passwords) = &policy.passwords else {
            if policy.jwt.is_some() {
                // Tokens only here, and this password is none.
                inner.failed(credentials, "not a token");
                return AuthDecision::Deny(ReasonCode::BadUserNameOrPassword);
            }
            // No users here: anonymous clients are let in (validated), with the username
            // they give.
            return AuthDecision::Allow(inner.allow(policy, credentials));
        };
        let Some(password) = credentials.password else {
            inner.failed(credentials, "no password");
            return AuthDecision::Deny(ReasonCode::BadUserNameOrPassword);
        };
        let file = passwords.current();
        if let Some(stored) = file.lookup(username) {
            let digest = inner.digester.digest(username, password, stored);
            if lock(&inner.cache).contains(&digest) {
                return AuthDecision::Allow(inner.allow(policy, credentials));
            }
        }
        if inner.banned(credentials) {
            log_failure(credentials, "too many failures");
            return AuthDecision::Deny(ReasonCode::ConnectionRateExceeded);
        }
        AuthDecision::Defer
    }
}

impl AsyncAuthenticator for FileAuth {
    fn authenticate(&self, request: AuthRequest) -> AuthFuture {
        let inner = self.inner.clone();
        Box::pin(async move { inner.verify(request).await })
    }
}

impl Inner {
    async fn verify(self: Arc<Self>, request: AuthRequest) -> Result<Principal, ReasonCode> {
        let policy = self.policy(request.transport.as_deref()).clone();
        if let Some((http, kind)) = policy.http_for(request.username.as_deref()) {
            return self.verify_http(&policy, http, kind, &request).await;
        }
        let (Some(passwords), Some(username), Some(password)) = (
            policy.passwords.clone(),
            request.username.clone(),
            request.password.clone(),
        ) else {
            // Not something the synchronous authenticator defers.
            return Err(ReasonCode::NotAuthorized);
        };
        // Work nobody waits for is not done: a client that sent CONNECT and went away costs
        // no verification (checked again after each wait below).
        if !request.is_wanted() {
            return Err(ReasonCode::ServerUnavailable);
        }
        // At most `WAITING_PER_CORE` per core wait their turn; beyond that the broker is busy.
        let Ok(_waiting) = self.waiting.clone().try_acquire_owned() else {
            log_failure(&request.credentials(), "too many verifications waiting");
            return Err(ReasonCode::ServerBusy);
        };
        self.bear_penalty(&request.credentials()).await?;
        if !request.is_wanted() {
            return Err(ReasonCode::ServerUnavailable);
        }
        let permit = self
            .verifications
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ReasonCode::ServerUnavailable)?;
        if !request.is_wanted() {
            return Err(ReasonCode::ServerUnavailable);
        }
        // Others from the same address may have failed while this one waited its turn (a
        // burst of guesses arrives before the first is judged): a ban they earned holds now.
        if self.banned(&request.credentials()) {
            log_failure(&request.credentials(), "too many failures");
            return Err(ReasonCode::ConnectionRateExceeded);
        }
        let file = passwords.current();
        let this = self.clone();
        self.verified.fetch_add(1, Ordering::Relaxed);
        let verified = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            match file.lookup(&username) {
                Some(stored) => stored
                    .verify(&password)
                    .then(|| this.digester.digest(&username, &password, stored)),
                None => {
                    // The same cost as a wrong password: timing does not tell who exists.
                    let _ = file.check(&username, &password);
                    None
                }
            }
        })
        .await;
        let credentials = request.credentials();
        match verified {
            Ok(Some(digest)) => {
                lock(&self.cache).insert(digest);
                lock(&self.limiter).succeeded(&request.client_id);
                Ok(self.allow(&policy, &credentials))
            }
            Ok(None) => {
                self.failed(&credentials, "bad username or password");
                Err(ReasonCode::BadUserNameOrPassword)
            }
            Err(_) => Err(ReasonCode::ServerUnavailable),
        }
    }
}

impl Policy {
    /// The HTTP service, if it decides for this user: one is configured and the user is not
    /// in the password file (a token-shaped password went to jwt before).
    fn http_for(&self, username: Option<&str>) -> Option<(&Arc<HttpAuth>, &'static str)> {
        let (http, kind) = self.http.as_ref()?;
        let known = username.is_some_and(|user| {
            self.passwords
                .as_ref()
                .is_some_and(|file| file.current().lookup(user).is_some())
        });
        (!known).then_some((http, *kind))
    }
}

impl Inner {
    /// HTTP, the synchronous part: a ban refuses, a remembered allow answer lets in, anything
    /// else asks the service (deferred).
    fn http_cached(
        &self,
        policy: &Policy,
        http: &HttpAuth,
        kind: &str,
        credentials: &Credentials<'_>,
    ) -> AuthDecision {
        // Before the ban, as for passwords: a client allowed before keeps connecting from an
        // address a guesser shares.
        if let Some(allowed) = http.cached(credentials, kind) {
            return AuthDecision::Allow(self.http_principal(policy, &allowed, credentials));
        }
        if self.banned(credentials) {
            log_failure(credentials, "too many failures");
            return AuthDecision::Deny(ReasonCode::ConnectionRateExceeded);
        }
        AuthDecision::Defer
    }

    /// HTTP, deferred: the failure limiter's delay, then the service's answer. A denial counts
    /// as a failure (0x86); a failing service refuses retryably (0x88) without counting
    /// against the client.
    async fn verify_http(
        &self,
        policy: &Policy,
        http: &HttpAuth,
        kind: &str,
        request: &AuthRequest,
    ) -> Result<Principal, ReasonCode> {
        let credentials = request.credentials();
        self.bear_penalty(&request.credentials()).await?;
        if !request.is_wanted() {
            return Err(ReasonCode::ServerUnavailable);
        }
        let go_on = || {
            if !request.is_wanted() {
                return Err(ReasonCode::ServerUnavailable);
            }
            if self.banned(&credentials) {
                log_failure(&credentials, "too many failures");
                return Err(ReasonCode::ConnectionRateExceeded);
            }
            Ok(())
        };
        match http.ask(&credentials, kind, go_on).await {
            Outcome::Refused(code) => Err(code),
            Outcome::Allow(allowed) => {
                lock(&self.limiter).succeeded(&request.client_id);
                Ok(self.http_principal(policy, &allowed, &credentials))
            }
            Outcome::Deny => {
                self.failed(&credentials, "http: denied");
                Err(ReasonCode::BadUserNameOrPassword)
            }
            Outcome::Unavailable => {
                log_failure(&credentials, "http: service unavailable");
                Err(ReasonCode::ServerUnavailable)
            }
        }
    }

    /// The principal of an allow answer: its permissions (else the listener's ACL file), its
    /// expiry.
    fn http_principal(
        &self,
        policy: &Policy,
        allowed: &Allowed,
        credentials: &Credentials<'_>,
    ) -> Principal {
        let mut principal = self.allow(policy, credentials);
        if let Some(acl) = &allowed.permissions {
            let rules = acl.for_client(credentials.username, credentials.client_id);
            principal.access = Some(Arc::new(TokenAccess(rules)));
        }
        if let Some(at) = allowed.expires_at {
            let remaining = at.saturating_sub(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            );
            principal.expires_at = expiry_after(remaining);
        }
        principal
    }
}

/// A CONNECT that names an Authentication Method, and what the SCRAM exchanges
/// (scram_auth.rs) need of the listeners' password and ACL files and the failure limiter.
impl Inner {
    /// Let through to its exchange (no password: the exchange proves who the client is) if
    /// this listener offers the method; refused with 0x8C Bad authentication method if not.
    fn enhanced_connect(
        &self,
        policy: &Policy,
        method: &str,
        credentials: &Credentials<'_>,
    ) -> AuthDecision {
        let offered = ScramMechanism::from_name(method)
            .is_some_and(|mechanism| policy.scram.contains(&mechanism));
        if !offered {
            log_failure(credentials, "authentication method not offered");
            return AuthDecision::Deny(ReasonCode::BadAuthenticationMethod);
        }
        if self.banned(credentials) {
            log_failure(credentials, "too many failures");
            return AuthDecision::Deny(ReasonCode::ConnectionRateExceeded);
        }
        // The username and access rules are set when the exchange succeeds
        // (`AuthExchange::authenticated`).
        AuthDecision::Allow(Principal::from_credentials(credentials))
    }

    /// What earlier failures impose before a verification: a ban refuses (0x9F), a delay
    /// is waited out.
    async fn bear_penalty(&self, credentials: &Credentials<'_>) -> Result<(), ReasonCode> {
        let penalty = lock(&self.limiter).penalty(
            credentials.peer.map(|peer| peer.ip()),
            credentials.client_id,
            Instant::now(),
        );
        match penalty {
            Penalty::Banned => {
                log_failure(credentials, "too many failures");
                return Err(ReasonCode::ConnectionRateExceeded);
            }
            Penalty::Delay(delay) => tokio::time::sleep(delay).await,
            Penalty::None => {}
        }
        Ok(())
    }

    fn banned(&self, credentials: &Credentials<'_>) -> bool {
        lock(&self.limiter).penalty(
            credentials.peer.map(|peer| peer.ip()),
            credentials.client_id,
            Instant::now(),
        ) == Penalty::Banned
    }
}

impl FileAuth {
    /// One enhanced authenticator per SCRAM mechanism some listener offers, for the core's
    /// hooks.
    pub(crate) fn enhanced_authenticators(&self) -> Vec<Arc<dyn EnhancedAuthenticator>> {
        let inner = &self.inner;
        let policies = std::iter::once(&inner.default).chain(inner.listeners.values());
        let offered: HashSet<ScramMechanism> = policies
            .flat_map(|policy| policy.scram.iter().copied())
            .collect();
        ScramMechanism::ALL
            .into_iter()
            .filter(|mechanism| offered.contains(mechanism))
            .map(|mechanism| {
                Arc::new(ScramAuthenticator::new(mechanism, self.clone()))
                    as Arc<dyn EnhancedAuthenticator>
            })
            .collect()
    }

    /// Whether the listener of `transport` offers `mechanism`.
    pub(crate) fn scram_offered(
        &self,
        transport: Option<&TransportIdentity>,
        mechanism: ScramMechanism,
    ) -> bool {
        self.inner.policy(transport).scram.contains(&mechanism)
    }

    /// The salt, iterations and keys of `username` in the listener's password file, or a
    /// decoy (stable per name) if it has no `$scram$` line there.
    pub(crate) fn scram_keys(
        &self,
        transport: Option<&TransportIdentity>,
        mechanism: ScramMechanism,
        username: &str,
    ) -> ScramServerKeys {
        let policy = self.inner.policy(transport);
        let Some(file) = policy.passwords.as_ref().map(|file| file.current()) else {
            return self.inner.scram_decoys.keys(mechanism, username);
        };
        if let Some(scram) = file.lookup(username).and_then(|hash| hash.scram()) {
            return scram.server_keys(mechanism);
        }
        // A decoy under the file's own key, with the iterations its users have.
        ScramDecoys::with_key(*file.decoy_key(), file.scram_iterations()).keys(mechanism, username)
    }

    /// The access rules of an authenticated client (the listener's ACL file), if any.
    pub(crate) fn access_for(
        &self,
        credentials: &Credentials<'_>,
    ) -> Option<Arc<dyn ClientAccess>> {
        let policy = self.inner.policy(credentials.transport);
        self.inner.allow(policy, credentials).access
    }

    pub(crate) fn is_banned(&self, credentials: &Credentials<'_>) -> bool {
        self.inner.banned(credentials)
    }

    /// Counts a failure and logs it (`auth failed`), as for a wrong password.
    pub(crate) fn record_failure(&self, credentials: &Credentials<'_>, reason: &str) {
        self.inner.failed(credentials, reason);
    }

    pub(crate) fn record_success(&self, client_id: &str) {
        lock(&self.inner.limiter).succeeded(client_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review of issue 12: `auth failed` lines are limited to 20 a second; the others are
    /// counted and reported once; long usernames are cut at a character boundary.
    #[test]
    fn failure_lines_are_limited() {
        let start = Instant::now();
        let mut log = FailureLog {
            second: start,
            written: 0,
            suppressed: 0,
        };
        let allowed = (0..100).filter(|_| log.allow(start).0).count();
        assert_eq!(allowed, FAILURE_LINES_PER_SECOND as usize);
        assert_eq!(log.allow(start + Duration::from_secs(1)), (true, 80));
        assert_eq!(log.allow(start + Duration::from_secs(1)), (true, 0));
        let long = "é".repeat(200);
        assert!(cut(&long).len() <= LOGGED_TEXT_MAX && cut(&long).len() >= LOGGED_TEXT_MAX - 1);
        assert_eq!(cut("short"), "short");
    }

    /// Issue 12: the cache of successes is bounded and keeps what is in use.
    #[test]
    fn the_cache_is_bounded() {
        let digester = CredentialDigester::with_key(&[7; 32]);
        let stored = tern_auth::StoredHash::parse(
            "$7$101$yXEnakcxPrZ0zOg1$XLw2qSoOKPgo3P5QCgH/Iawvvgs/+ci5Gm6G2N2fyLfpQOui0Csk0Sc6D8u62Mfn5w+KxYlMlx/BKIFg31VhCw==",
        )
        .unwrap();
        let mut cache = SuccessCache::default();
        let first = digester.digest("u0", b"p", &stored);
        cache.insert(first);
        for n in 1..(CACHE_CAPACITY * 3) {
            cache.insert(digester.digest(&format!("u{n}"), b"p", &stored));
            if n % 1000 == 0 {
                assert!(cache.contains(&first));
            }
        }
        assert!(cache.len() <= 2 * CACHE_CAPACITY);
    }
}
