//! The listeners and the life of the server: bind, accept (within the connection limit), spawn
//! one task per connection, run the broker's timers, and shut down on request: stop accepting,
//! tell every connection, wait for them to end.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tern_broker::persist::Persistence;
use tern_broker::{Broker, Hooks, PrincipalAccess};
use tern_store::{Store, StoreOptions};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::admin_listener::AdminListener;
use crate::auth::{AsyncAuthenticator, DenyDeferred};
use crate::config::{Durability, ServerConfig};
use crate::file_auth::{AuthReload, FileAuth};
use crate::listener::{AcceptContext, Listener, ListenerSlot, accept_loop};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener {listener}: cannot listen on {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] tern_store::StoreError),
    #[error("cannot start a worker thread: {source}")]
    Worker { source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Auth(#[from] crate::file_auth::AuthError),
    #[error(transparent)]
    AdminToken(#[from] tern_admin::TokenError),
    #[error("cluster: {0}")]
    Cluster(#[from] tern_cluster::NodeError),
    #[error(transparent)]
    ClusterTls(#[from] crate::cluster::ClusterTlsError),
}

/// Open connections, and a signal when the last one ends; and what every connection task
/// shares besides (reached through its [`ConnectionGuard`], so that the task's future does not
/// grow for it): the authenticator of deferred CONNECTs.
pub(crate) struct ConnectionCount {
    open: AtomicUsize,
    idle: Notify,
    authenticator: Arc<dyn AsyncAuthenticator>,
}

impl Default for ConnectionCount {
    fn default() -> Self {
        ConnectionCount::new(Arc::new(DenyDeferred))
    }
}

impl ConnectionCount {
    pub(crate) fn new(authenticator: Arc<dyn AsyncAuthenticator>) -> Self {
        ConnectionCount {
            open: AtomicUsize::new(0),
            idle: Notify::new(),
            authenticator,
        }
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until no connection is open, at most until `deadline`; whether none is.
    async fn wait_closed(&self, deadline: Instant) -> bool {
        loop {
            // Registered before the count is read, so the last close cannot slip in between.
            let idle = self.idle.notified();
            if self.open.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return false;
            }
        }
    }
}

/// The number of open connections of a server, read while it runs: every accepted socket
/// that holds a place under `max_connections`, those still in the steps before MQTT (PROXY
/// header, TLS handshake, WebSocket upgrade) included.
#[derive(Clone)]
pub struct OpenConnections(Arc<ConnectionCount>);

impl OpenConnections {
    pub fn get(&self) -> usize {
        self.0.open()
    }
}

/// Counts a connection while its task lives, however it ends: in the server's count and, if
/// its listener has a limit of its own, in the listener's.
pub(crate) struct ConnectionGuard {
    count: Arc<ConnectionCount>,
    _listener: Option<ListenerSlot>,
}

impl ConnectionGuard {
    /// Where the connection's deferred authentication goes.
    pub(crate) fn authenticator(&self) -> &Arc<dyn AsyncAuthenticator> {
        &self.count.authenticator
    }

    pub(crate) fn new(count: Arc<ConnectionCount>, listener: Option<ListenerSlot>) -> Self {
        count.open.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard {
            count,
            _listener: listener,
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.count.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.count.idle.notify_waiters();
        }
    }
}

/// Checks what a configuration needs beyond its syntax and values, without binding or
/// opening anything: each listener's certificates and keys can be read and used.
pub fn check_config(config: &ServerConfig) -> Result<(), ServerError> {
    config.validate()?;
    for listener in &config.listeners {
        Listener::configured(listener.clone()).prepare()?;
    }
    // The password and ACL files parse (an error names the file and the line).
    FileAuth::from_config(config)?;
    AdminListener::check(config)?;
    for bridge in &config.bridges {
        bridge
            .check_files()
            .map_err(crate::config::ConfigError::Invalid)?;
    }
    // The cluster's certificate, key and CA load.
    if let Some(tls) = config
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.tls.as_ref())
    {
        crate::cluster::load_tls(tls)?;
    }
    Ok(())
}

/// A bound, not yet running, server.
pub struct Server {
    config: ServerConfig,
    broker: Arc<Broker>,
    /// For each worker, its own listening socket of every listener (SO_REUSEPORT: the kernel
    /// spreads incoming connections over the workers).
    listeners: Vec<Vec<(std::net::TcpListener, Arc<Listener>)>>,
    store: Option<Arc<Store>>,
    count: Arc<ConnectionCount>,
    /// The password and ACL files of `[auth]` and the listeners' `auth`, if any.
    auth: Option<FileAuth>,
    /// `[admin]`: the admin listener, bound.
    admin: Option<AdminListener>,
    /// The backend it serves, if set from outside ([`Server::set_admin_backend`]); else the
    /// server's own.
    admin_backend: Option<Arc<dyn tern_admin::AdminBackend>>,
    /// The server's own admin backend, made at the first ask (see [`Server::admin_backend`]).
    backend: std::sync::OnceLock<Arc<crate::admin_backend::ServerBackend>>,
    /// `[[bridges]]`: their state from the start, their tasks once the server runs.
    bridges: crate::bridge::Bridges,
    /// `[cluster]`: this node's cluster part, started at bind (claims and routes work from
    /// the first connection), stopped after the connections closed.
    cluster: Option<crate::cluster::Cluster>,
    cluster_stop: watch::Sender<bool>,
}

impl Server {
    /// Binds every listen address of `config`, with the users and access rules of its
    /// `[auth]` and listeners' `auth` tables.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        config.validate()?;
        let Some(auth) = FileAuth::from_config(&config)? else {
            return Server::bind_with_hooks(config, Hooks::default()).await;
        };
        let hooks = Hooks {
            authenticator: Arc::new(auth.clone()),
            authorizer: Arc::new(PrincipalAccess::default()),
            // SCRAM-SHA-256/-512, if a listener offers them (scram_auth.rs).
            enhanced: auth.enhanced_authenticators(),
        };
        let mut server = Server::bind_with_auth(config, hooks, Arc::new(auth.clone())).await?;
        server.auth = Some(auth);
        Ok(server)
    }

    /// Binds with plug-ins for authentication and authorisation.
    pub async fn bind_with_hooks(
        config: ServerConfig,
        hooks: Hooks,
    ) -> Result<Server, ServerError> {
        Server::bind_with_auth(config, hooks, Arc::new(DenyDeferred)).await
    }

    /// The password and ACL files' authenticator, when the configuration has one (for tests).
    #[doc(hidden)]
    pub fn file_auth(&self) -> Option<&FileAuth> {
        self.auth.as_ref()
    }

    /// Binds with plug-ins for authentication and authorisation, and `authenticator` for the
    /// CONNECTs the core's authenticator defers (see [`AsyncAuthenticator`]).
    pub async fn bind_with_auth(
        config: ServerConfig,
        hooks: Hooks,
        authenticator: Arc<dyn AsyncAuthenticator>,
    ) -> Result<Server, ServerError> {
        config.validate()?;
        if let Some(limit) = crate::descriptors::prepare(config.limits.max_connections) {
            let needed = config.limits.max_connections as u64;
            if limit < needed {
                tracing::warn!(
                    limit,
                    max_connections = needed,
                    "the file descriptor limit is below max_connections: raise it (ulimit -n)"
                );
            }
        }
        let planned: Vec<Arc<Listener>> = config
            .listen
            .iter()
            .map(|&addr| Arc::new(Listener::plain(addr)))
            .chain(
                config
                    .listeners
                    .iter()
                    .map(|listener| Arc::new(Listener::configured(listener.clone()))),
            )
            .collect();
        // Certificates and keys are read before anything is bound or opened.
        for listener in &planned {
            listener.prepare()?;
        }
        let (broker, store, cluster_recovered) = open_state(&config, hooks)?;
        let workers = config.worker_count();
        let mut listeners: Vec<Vec<(std::net::TcpListener, Arc<Listener>)>> =
            (0..workers).map(|_| Vec::new()).collect();
        for listener in planned {
            let addr = listener.bind;
            let failed = |source| ServerError::Bind {
                listener: listener.label(),
                addr,
                source,
            };
            // The first socket resolves port 0; the others share its port.
            let mut bound = addr;
            for worker in &mut listeners {
                let socket = bind_reuseport(bound).map_err(failed)?;
                bound = socket.local_addr().map_err(failed)?;
                worker.push((socket, listener.clone()));
            }
        }
        let bridges = crate::bridge::Bridges::new(&config.bridges, &broker);
        let (cluster_stop, cluster_stopped) = watch::channel(false);
        let cluster = match &config.cluster {
            Some(cluster_config) => {
                let mqtt_addrs = listeners
                    .first()
                    .into_iter()
                    .flatten()
                    .filter(|(_, listener)| listener.config.is_none())
                    .filter_map(|(socket, _)| socket.local_addr().ok())
                    .map(|addr| addr.to_string())
                    .collect();
                let persistence = store
                    .clone()
                    .map(|store| store as Arc<dyn tern_broker::persist::Persistence>);
                Some(
                    crate::cluster::Cluster::start(
                        cluster_config,
                        &config.data_dir,
                        mqtt_addrs,
                        broker.clone(),
                        persistence,
                        cluster_recovered,
                        cluster_stopped,
                    )
                    .await?,
                )
            }
            None => None,
        };
        Ok(Server {
            broker,
            listeners,
            store,
            count: Arc::new(ConnectionCount::new(authenticator)),
            auth: None,
            admin: AdminListener::prepare(&config)?,
            admin_backend: None,
            backend: std::sync::OnceLock::new(),
            bridges,
            cluster,
            cluster_stop,
            config,
        })
    }

    /// This node's cluster part, when `[cluster]` is configured.
    pub fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.cluster.as_ref()
    }

    /// The addresses actually bound (port 0 resolved), `listen` first, then `[[listeners]]`
    /// in order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .first()
            .into_iter()
            .flatten()
            .filter_map(|(socket, _)| socket.local_addr().ok())
            .collect()
    }

    /// The address the listener named `name` is bound to (port 0 resolved).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .first()?
            .iter()
            .find(|(_, listener)| listener.config.as_ref().is_some_and(|c| c.name == name))
            .and_then(|(socket, _)| socket.local_addr().ok())
    }

    /// A handle that reloads the certificates, keys, CAs and CRLs of the TLS listeners, and
    /// `[cluster] tls`'s files (the binary calls it on SIGHUP); it stays valid while the
    /// server runs.
    pub fn tls_reloader(&self) -> crate::tls::TlsReloader {
        crate::tls::TlsReloader::new(
            self.listeners
                .first()
                .into_iter()
                .flatten()
                .map(|(_, listener)| listener.clone())
                .collect(),
            self.cluster
                .as_ref()
                .and_then(|cluster| cluster.tls_files().cloned()),
        )
    }

    /// A handle that reloads the password and ACL files (the binary calls it on SIGHUP); it
    /// stays valid while the server runs.
    pub fn auth_reloader(&self) -> AuthReloader {
        AuthReloader {
            auth: self.auth.clone(),
            broker: self.broker.clone(),
        }
    }

    /// The admin listener's address (port 0 resolved), when `[admin] bind` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(AdminListener::local_addr)
    }

    /// Replaces the backend the admin listener serves (by default the server's own,
    /// [`Server::admin_backend`]).
    pub fn set_admin_backend(&mut self, backend: Arc<dyn tern_admin::AdminBackend>) {
        self.admin_backend = Some(backend);
    }

    /// A handle on the number of open connections, valid once the server runs.
    pub fn open_connections(&self) -> OpenConnections {
        OpenConnections(self.count.clone())
    }

    /// Reloads the TLS listeners' material, and `[cluster] tls`'s, now (see [`Server::tls_reloader`]).
    pub fn reload_tls(&self) -> Result<(), crate::tls::TlsError> {
        self.tls_reloader().reload()
    }

    /// The admin API's backend over this server (hand it to the admin listener): queries,
    /// kick, retained messages, publish, metrics, configuration and reload. One per server:
    /// every call returns the same, which the `$SYS` task and SIGHUP's reload share.
    pub fn admin_backend(&self) -> Arc<dyn tern_admin::AdminBackend> {
        self.backend()
    }

    /// Reads the configuration file and the files it names again (as `POST /api/v1/reload`),
    /// logs and returns the report; SIGHUP calls it.
    pub fn config_reloader(&self) -> ConfigReloader {
        ConfigReloader(self.backend())
    }

    fn backend(&self) -> Arc<crate::admin_backend::ServerBackend> {
        self.backend
            .get_or_init(|| {
                let file_values = self
                    .config
                    .config_file
                    .as_deref()
                    .map_or(serde_json::Value::Null, crate::admin_backend::file_values);
                Arc::new(crate::admin_backend::ServerBackend {
                    source: crate::metrics::MetricsSource {
                        broker: self.broker.clone(),
                        store: self.store.clone(),
                        open: self.open_connections(),
                        started: std::time::Instant::now(),
                        tls: self.tls_reloader(),
                        bridges: self.bridges.clone(),
                        cluster: self.cluster.clone(),
                    },
                    tls: self.tls_reloader(),
                    auth: self.auth_reloader(),
                    running: std::sync::Mutex::new(self.config.clone()),
                    file_values: std::sync::Mutex::new(file_values),
                    pending_restart: std::sync::Mutex::new(Vec::new()),
                })
            })
            .clone()
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The bridges' live state (`[[bridges]]`).
    pub fn bridges(&self) -> crate::bridge::Bridges {
        self.bridges.clone()
    }

    /// The store, unless the durability is `memory`.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// Serves until `shutdown` completes, then closes every connection
    /// (MQTT 5 clients get DISCONNECT 0x8B), closes the store, and returns once they have
    /// ended, or after `grace`.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) -> Result<(), ServerError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let count = self.count.clone();
        if let Some(first) = self.listeners.first() {
            for (socket, listener) in first {
                let addr = socket.local_addr().unwrap_or(listener.bind);
                let name = listener.config.as_ref().map(|config| config.name.as_str());
                tracing::info!(%addr, listener = name.unwrap_or(""), workers = self.listeners.len(), "{}", listener.describe());
            }
        }
        // Certificates are read again when their files change (every 2 s).
        let reloader = self.tls_reloader();
        let auth_reloader = self.auth_reloader();
        let sys = (self.config.sys_interval > 0).then(|| {
            let interval = Duration::from_secs(self.config.sys_interval);
            (self.backend().source.clone(), interval)
        });
        let admin_backend = match &self.admin_backend {
            Some(backend) => backend.clone(),
            None => self.backend(),
        };
        let mut threads = Vec::with_capacity(self.listeners.len());
        // QoS 0 messages for another worker's sessions go through its inbox (see
        // `worker_inbox`); with one worker there is no other.
        let inboxes: Vec<Arc<crate::worker_inbox::Inbox>> = (0..self.listeners.len())
            .map(|_| Arc::new(crate::worker_inbox::Inbox::default()))
            .collect();
        if inboxes.len() > 1 {
            self.broker.set_worker_inboxes(
                inboxes
                    .iter()
                    .map(|inbox| inbox.clone() as Arc<dyn tern_broker::WorkerInbox>)
                    .collect(),
            );
        }
        for (index, (listeners, inbox)) in self.listeners.into_iter().zip(inboxes).enumerate() {
            let worker = Worker {
                index: u16::try_from(index).unwrap_or(u16::MAX),
                inbox,
                listeners,
                broker: self.broker.clone(),
                stop: stop_rx.clone(),
                count: count.clone(),
                max_connections: self.config.limits.max_connections,
                grace,
            };
            let thread = std::thread::Builder::new()
                .name(format!("tern-worker-{index}"))
                .spawn(move || worker.run())
                .map_err(|source| ServerError::Worker { source })?;
            threads.push(thread);
        }
        tokio::spawn(run_timers(self.broker.clone(), stop_rx.clone()));
        if let Some((source, interval)) = sys {
            tokio::spawn(crate::sys_topics::run(source, interval, stop_rx.clone()));
        }
        tokio::spawn(crate::tls::watch_files(reloader, stop_rx.clone()));
        tokio::spawn(watch_auth_files(auth_reloader, stop_rx.clone()));
        if let Some(admin) = self.admin {
            admin.spawn(admin_backend, stop_rx.clone());
        }
        // The broker is up: the bridges connect.
        let bridges = self.bridges.clone();
        bridges.start();
        // A store that fails (a full disk, an I/O error) does not stop the server: it refuses
        // new durable work, recovers by itself when it can, and says so in the log; the
        // broker serves whatever needs no disk meanwhile.
        shutdown.await;
        tracing::info!("shutting down");
        // Bridges first: they close their local sessions normally while the broker serves.
        bridges.stop(grace).await;
        let _ = stop_tx.send(true);
        self.broker.begin_shutdown();
        if !count.wait_closed(Instant::now() + grace).await {
            tracing::warn!(
                open = count.open.load(Ordering::Acquire),
                "connections still open at the end of the shutdown grace period"
            );
        }
        // The workers end once their connections have (or the grace period is over).
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
        // The cluster part last: the connections' last changes (routes gone) were proposed.
        let _ = self.cluster_stop.send(true);
        if let Some(cluster) = self.cluster.clone() {
            let _ = tokio::task::spawn_blocking(move || cluster.write_kept()).await;
        }
        if let Some(store) = self.store
            && let Err(error) = store.close()
        {
            tracing::error!(%error, "the store did not close cleanly");
        }
        Ok(())
    }
}

/// Reloads the configuration file and what it names (see [`Server::config_reloader`]).
#[derive(Clone)]
pub struct ConfigReloader(Arc<crate::admin_backend::ServerBackend>);

impl ConfigReloader {
    pub async fn reload(&self) -> tern_admin::ReloadReport {
        use tern_admin::AdminBackend;
        self.0.reload().await
    }
}

/// Reloads the password and ACL files: new connections use the new users (the cache of
/// verifications is cleared); connected clients' rules are compiled again from the new ACL and
/// their subscriptions re-checked (`Broker::recheck_access`).
#[derive(Clone)]
pub struct AuthReloader {
    auth: Option<FileAuth>,
    broker: Arc<Broker>,
}

impl AuthReloader {
    /// Reads the files that changed (all of them with `force`); a file that cannot be used is
    /// kept as it was, with a warning naming it. Blocking (reads files): call it off the
    /// event loops.
    pub fn reload(&self, force: bool) -> AuthReload {
        let Some(auth) = &self.auth else {
            return AuthReload::default();
        };
        let changed = auth.reload(force);
        if changed.acl_files > 0 {
            let summary = self.broker.recheck_access();
            tracing::info!(
                sessions = summary.sessions,
                removed = summary.removed,
                partial = summary.partial,
                "subscriptions re-checked against the new access rules"
            );
        }
        changed
    }

    /// [`AuthReloader::reload`] on tokio's blocking pool.
    pub async fn reload_in_background(&self, force: bool) -> AuthReload {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reload(force))
            .await
            .unwrap_or_default()
    }
}

/// Reloads the password and ACL files when they change, until the server stops (the interval:
/// `TERN_AUTH_WATCH_INTERVAL_MS`, tuning, not configuration).
async fn watch_auth_files(reloader: AuthReloader, stop: watch::Receiver<bool>) {
    if reloader.auth.is_none() {
        return;
    }
    let Some(interval) = crate::file_watch::watch_interval("TERN_AUTH_WATCH_INTERVAL_MS") else {
        return;
    };
    crate::file_watch::every(interval, stop, || async {
        reloader.reload_in_background(false).await;
    })
    .await;
}

/// A cluster's outbox and receipts read back from the store (see `crate::cluster`).
type ClusterRecovered = (
    Vec<tern_broker::persist::RecoveredForward>,
    Vec<(u64, u64, u64)>,
);

/// The broker, its store (none in memory) and the cluster's part of what the store held.
type OpenedState = (Arc<Broker>, Option<Arc<Store>>, ClusterRecovered);

/// The broker, with its state read back from the store unless the durability is `memory`.
fn open_state(config: &ServerConfig, hooks: Hooks) -> Result<OpenedState, ServerError> {
    let level = match config.durability {
        Durability::Memory => {
            tracing::info!("durability memory: nothing is stored");
            return Ok((
                Broker::with_hooks(config.broker_config(), hooks),
                None,
                ClusterRecovered::default(),
            ));
        }
        Durability::Process => tern_store::Durability::Process,
        Durability::Fsync => tern_store::Durability::Fsync,
    };
    let started = std::time::Instant::now();
    let options = StoreOptions {
        durability: level,
        min_free_disk: config.min_free_disk,
        max_pending_bytes: config.store_tuning.max_pending_bytes,
        commit_delay: config.store_tuning.commit_delay,
    };
    let (store, mut recovered) = Store::open_with(&config.data_dir, options)?;
    let cluster_recovered = (
        std::mem::take(&mut recovered.forwards),
        std::mem::take(&mut recovered.received),
    );
    let sessions = recovered.sessions.len();
    let retained = recovered.retained.len();
    let report = store.load_report();
    if report.journal_bytes_dropped > 0 {
        tracing::warn!(
            data_dir = %config.data_dir.display(),
            bytes = report.journal_bytes_dropped,
            "the end of the store's journal did not read back intact and was dropped \
             (a write cut short by a crash, or damage)"
        );
    }
    let persistence: Arc<dyn Persistence> = store.clone();
    let broker = Broker::with_persistence(config.broker_config(), hooks, Some(persistence));
    broker.restore(recovered, std::time::Instant::now());
    tracing::info!(
        data_dir = %config.data_dir.display(),
        durability = %config.durability,
        sessions,
        retained,
        expired_sessions = report.expired_sessions,
        expired_messages = report.expired_messages,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "state restored"
    );
    Ok((broker, Some(store), cluster_recovered))
}

/// A listening socket that shares its address with the other workers' (SO_REUSEPORT).
fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// One thread serving connections on its own single-threaded event loop: it accepts on its
/// sockets and runs the tasks of the connections it accepted, so a connection never moves
/// between threads and an idle thread is not woken for another's work (thread per core).
struct Worker {
    /// The worker's number (`u16::MAX` past the 65 535th).
    index: u16,
    inbox: Arc<crate::worker_inbox::Inbox>,
    listeners: Vec<(std::net::TcpListener, Arc<Listener>)>,
    broker: Arc<Broker>,
    stop: watch::Receiver<bool>,
    count: Arc<ConnectionCount>,
    max_connections: usize,
    grace: Duration,
}

impl Worker {
    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "cannot start a worker's event loop");
                return;
            }
        };
        let Worker {
            index,
            inbox,
            listeners,
            broker,
            mut stop,
            count,
            max_connections,
            grace,
        } = self;
        if index != u16::MAX {
            tern_broker::set_current_worker(index);
        }
        runtime.block_on(async move {
            tokio::spawn(crate::worker_inbox::run(inbox, broker.clone(), index));
            let context = AcceptContext {
                broker,
                stop: stop.clone(),
                count: count.clone(),
                max_connections,
            };
            for (socket, listener) in listeners {
                match TcpListener::from_std(socket) {
                    Ok(socket) => {
                        tokio::spawn(accept_loop(socket, listener, context.clone()));
                    }
                    Err(error) => {
                        tracing::error!(%error, listener = %listener.label(), "cannot listen")
                    }
                }
            }
            let _ = stop.changed().await;
            // Serve the connections of this thread until they have closed.
            count.wait_closed(Instant::now() + grace).await;
        });
    }
}

/// Wakes the timer task when the broker's next deadline moved earlier.
struct TimerWakeup(Notify);

impl tern_broker::Wakeup for TimerWakeup {
    fn wake(&self) {
        self.0.notify_one();
    }
}

/// Runs the broker's deadlines: session expiry, delayed wills, and the sweep of deliveries not
/// stored yet.
async fn run_timers(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    const MAX_NAP: Duration = Duration::from_secs(1);
    let wakeup = Arc::new(TimerWakeup(Notify::new()));
    broker.set_timer_wakeup(wakeup.clone());
    loop {
        let now = Instant::now();
        let next = broker
            .poll_timeout()
            .map(Instant::from_std)
            .map_or(now + MAX_NAP, |at| at.min(now + MAX_NAP));
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep_until(next) => broker.handle_timeout(Instant::now().into_std()),
            () = wakeup.0.notified() => {}
        }
    }
}
