//! TLS for the `mqtts` and `wss` listeners: the listener's certificates, keys, client CAs and
//! CRLs loaded into a rustls `ServerConfig` (ring provider), the handshake of a connection with
//! the verified client certificate's identity, and the reload of that material (SIGHUP, changed
//! files) without touching established connections.
//!
//! Each listener holds its current `ServerConfig` behind a lock taken only to clone an `Arc`
//! at the start of a handshake; a reload builds a whole new one and swaps it in, or, if any file
//! is unusable, keeps the old one and says why.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tern_broker::{CertificateIdentity, TransportIdentity};
use tern_codec::MqttStr;
use tokio::net::TcpStream;

use crate::listener::Listener;
use crate::listener_config::{ClientAuth, IdentityField, ListenerKind, TlsConfig, TlsVersion};
use crate::tls_transport::TlsTransport;

/// Why a listener's TLS material cannot be used: the listener, the file and the problem.
#[derive(Debug, thiserror::Error)]
#[error("listener {listener:?}: {}{problem}", file_prefix(.path.as_deref()))]
pub struct TlsError {
    pub listener: String,
    /// The file at fault, when one is.
    pub path: Option<PathBuf>,
    #[source]
    pub problem: TlsProblem,
}

/// `"{path}: "` for an error about a file, empty otherwise.
pub(crate) fn file_prefix(path: Option<&Path>) -> String {
    path.map(|path| format!("{}: ", path.display()))
        .unwrap_or_default()
}

/// What is wrong with a TLS file or setting.
#[derive(Debug, thiserror::Error)]
pub enum TlsProblem {
    #[error("cannot read it: {0}")]
    Read(#[source] io::Error),
    #[error("not valid PEM: {0}")]
    Pem(#[source] rustls_pki_types::pem::Error),
    #[error("no certificate in it (PEM \"BEGIN CERTIFICATE\" expected)")]
    NoCertificate,
    #[error("no private key in it (PEM PKCS#8, RSA or EC private key expected)")]
    NoKey,
    #[error("the private key cannot be used: {0}")]
    Key(#[source] rustls::Error),
    #[error("the certificate cannot be used: {0} (rustls accepts X.509 v3 certificates only)")]
    Certificate(#[source] rustls::Error),
    #[error("the private key {} does not belong to this certificate", .0.display())]
    KeyMismatch(PathBuf),
    #[error("a CA certificate cannot be used: {0}")]
    CaCertificate(#[source] rustls::Error),
    #[error("no CA certificate in it")]
    NoCaCertificate,
    #[error("no certificate revocation list in it")]
    NoCrl,
    #[error("client certificate verification cannot be set up: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("{0}")]
    Config(#[source] rustls::Error),
}

/// What a change of a file is recognised by: its modification time and size, and on Unix its
/// inode and status-change time, so that a replacement of the same size within the
/// modification time's resolution (a rename over it, a copy that keeps the time) is seen too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileStamp(Option<(Option<SystemTime>, u64, [i64; 3])>);

impl FileStamp {
    fn of(path: &Path) -> FileStamp {
        FileStamp(
            std::fs::metadata(path)
                .ok()
                .map(|meta| (meta.modified().ok(), meta.len(), unix_identity(&meta))),
        )
    }
}

/// The inode and the status-change time (seconds, nanoseconds) of a file.
#[cfg(unix)]
fn unix_identity(meta: &std::fs::Metadata) -> [i64; 3] {
    use std::os::unix::fs::MetadataExt;
    [meta.ino() as i64, meta.ctime(), meta.ctime_nsec()]
}

#[cfg(not(unix))]
fn unix_identity(_: &std::fs::Metadata) -> [i64; 3] {
    [0; 3]
}

/// The TLS side of one listener: its settings and the material in use.
#[derive(Debug)]
pub(crate) struct TlsListener {
    name: Arc<str>,
    settings: TlsConfig,
    /// ALPN protocol offered: `mqtt` for `mqtts`, `http/1.1` for `wss`.
    alpn: &'static [u8],
    /// The configuration new handshakes use; `None` until loaded.
    current: RwLock<Option<Arc<ServerConfig>>>,
    /// The stamps of the files as they were last read (loaded or not), so a change is acted on
    /// once, and a file being replaced in several steps is read again after the last step.
    seen: Mutex<Vec<FileStamp>>,
    /// notAfter (Unix seconds) of the certificate in use (`cert`'s first), `i64::MIN` while
    /// unknown: the expiry gauge shows what is served, not what the file holds now.
    not_after: AtomicI64,
}

impl TlsListener {
    pub(crate) fn new(name: &str, settings: TlsConfig, kind: ListenerKind) -> TlsListener {
        TlsListener {
            name: Arc::from(name),
            settings,
            alpn: if kind.uses_websockets() {
                b"http/1.1"
            } else {
                b"mqtt"
            },
            current: RwLock::new(None),
            seen: Mutex::new(Vec::new()),
            not_after: AtomicI64::new(i64::MIN),
        }
    }

    /// Loads the material (at start: an error stops the server).
    pub(crate) fn load(&self) -> Result<(), TlsError> {
        let stamps = self.stamps();
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamps;
        let (config, not_after) = self.build()?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(config);
        self.not_after.store(not_after, Ordering::Relaxed);
        Ok(())
    }

    /// Reads every file again; new handshakes use the new material. On an error the old
    /// material stays and the error is logged (and returned).
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let stamps = self.stamps();
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamps;
        match self.build() {
            Ok((config, not_after)) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(config);
                self.not_after.store(not_after, Ordering::Relaxed);
                tracing::info!(listener = %self.name, "TLS certificates reloaded");
                Ok(())
            }
            Err(error) => {
                tracing::warn!(listener = %self.name, %error, "TLS reload failed: the previous certificates stay in use");
                Err(error)
            }
        }
    }

    /// Reloads if any file changed (time or size) since it was last read.
    pub(crate) fn reload_if_changed(&self) {
        let stamps = self.stamps();
        let changed = *self.seen.lock().unwrap_or_else(|p| p.into_inner()) != stamps;
        if changed {
            let _ = self.reload();
        }
    }

    /// The listener's name and notAfter (Unix seconds) of the certificate in use, if known.
    pub(crate) fn expiry(&self) -> (&str, Option<i64>) {
        let not_after = self.not_after.load(Ordering::Relaxed);
        (&self.name, (not_after != i64::MIN).then_some(not_after))
    }

    /// The configuration for a new handshake.
    fn config(&self) -> Option<Arc<ServerConfig>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn files(&self) -> Vec<&Path> {
        let tls = &self.settings;
        let mut files = vec![tls.cert.as_path(), tls.key.as_path()];
        files.extend(tls.client_ca.as_deref());
        files.extend(tls.crl.iter().map(PathBuf::as_path));
        for sni in &tls.sni {
            files.push(&sni.cert);
            files.push(&sni.key);
        }
        files
    }

    /// The stamps of the listener's files, as they are now.
    pub(crate) fn stamps(&self) -> Vec<FileStamp> {
        self.files().into_iter().map(FileStamp::of).collect()
    }

    fn fail(&self, path: Option<&Path>, problem: TlsProblem) -> TlsError {
        TlsError {
            listener: self.name.to_string(),
            path: path.map(Path::to_path_buf),
            problem,
        }
    }

    /// Reads every file and builds the configuration; with the notAfter of `cert`
    /// (`i64::MIN` if it cannot be read).
    fn build(&self) -> Result<(Arc<ServerConfig>, i64), TlsError> {
        let tls = &self.settings;
        let provider = Arc::new(ring_provider());
        let default = self.certified_key(&tls.cert, &tls.key, &provider)?;
        let not_after = not_after(&default);
        let mut by_name = HashMap::new();
        for sni in &tls.sni {
            let key = self.certified_key(&sni.cert, &sni.key, &provider)?;
            let covered = key.end_entity_cert().ok().map(dns_names);
            for name in &sni.names {
                let name = normalise_name(name);
                if let Some(covered) = &covered
                    && !covers(covered, &name)
                {
                    tracing::warn!(listener = %self.name, name = %name, cert = %sni.cert.display(), "the sni certificate does not name this host: clients that check it will refuse it");
                }
                by_name.insert(name, key.clone());
            }
        }
        let resolver = Arc::new(SniResolver { default, by_name });
        let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| self.fail(None, TlsProblem::Config(e)))?;
        let builder = match (tls.client_auth, &tls.client_ca) {
            (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
            (auth, Some(ca)) => {
                let roots = self.client_roots(ca)?;
                let mut crls = Vec::new();
                for path in &tls.crl {
                    crls.extend(self.crls(path)?);
                }
                // Only the client's own certificate is checked against the CRLs. With `crl`
                // set, a certificate whose issuer has no CRL here is refused (unknown
                // revocation status fails closed, as OpenSSL's CRL check); without it, no
                // revocation check is made.
                let mut verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .with_crls(crls)
                        .only_check_end_entity_revocation();
                if auth == ClientAuth::Optional {
                    verifier = verifier.allow_unauthenticated();
                }
                let verifier = verifier
                    .build()
                    .map_err(|e| self.fail(Some(ca), TlsProblem::Verifier(e)))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(resolver);
        config.alpn_protocols = vec![self.alpn.to_vec()];
        Ok((Arc::new(config), not_after))
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>, TlsError> {
        std::fs::read(path).map_err(|e| self.fail(Some(path), TlsProblem::Read(e)))
    }

    fn certificates(&self, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let bytes = self.read(path)?;
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.fail(Some(path), TlsProblem::Pem(e)))?;
        Ok(certs)
    }

    pub(crate) fn certified_key(
        &self,
        cert: &Path,
        key: &Path,
        provider: &CryptoProvider,
    ) -> Result<Arc<CertifiedKey>, TlsError> {
        let chain = self.certificates(cert)?;
        if chain.is_empty() {
            return Err(self.fail(Some(cert), TlsProblem::NoCertificate));
        }
        let bytes = self.read(key)?;
        let der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => self.fail(Some(key), TlsProblem::NoKey),
            e => self.fail(Some(key), TlsProblem::Pem(e)),
        })?;
        let signing = provider
            .key_provider
            .load_private_key(der)
            .map_err(|e| self.fail(Some(key), TlsProblem::Key(e)))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                self.fail(Some(cert), TlsProblem::KeyMismatch(key.to_path_buf()))
            }
            e => self.fail(Some(cert), TlsProblem::Certificate(e)),
        })?;
        Ok(Arc::new(certified))
    }

    pub(crate) fn client_roots(&self, path: &Path) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in self.certificates(path)? {
            roots
                .add(cert)
                .map_err(|e| self.fail(Some(path), TlsProblem::CaCertificate(e)))?;
        }
        if roots.is_empty() {
            return Err(self.fail(Some(path), TlsProblem::NoCaCertificate));
        }
        Ok(roots)
    }

    /// A CRL file: PEM (one or more lists) or a single DER list.
    fn crls(&self, path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
        let bytes = self.read(path)?;
        if !bytes.starts_with(b"-----") && !bytes.is_empty() && bytes[0] == 0x30 {
            return Ok(vec![CertificateRevocationListDer::from(bytes)]);
        }
        let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.fail(Some(path), TlsProblem::Pem(e)))?;
        if crls.is_empty() {
            return Err(self.fail(Some(path), TlsProblem::NoCrl));
        }
        Ok(crls)
    }
}

/// The notAfter (Unix seconds) of a certified key's own certificate; `i64::MIN` if it cannot
/// be read.
pub(crate) fn not_after(certified: &CertifiedKey) -> i64 {
    certified
        .end_entity_cert()
        .ok()
        .and_then(|der| x509_parser::parse_x509_certificate(der.as_ref()).ok())
        .map_or(i64::MIN, |(_, cert)| cert.validity().not_after.timestamp())
}

/// The ring provider: rustls 0.23.48 deprecates it for lacking post-quantum key exchange, but
/// the other provider (aws-lc-rs) needs a C toolchain and cmake, which the project avoids.
#[allow(deprecated)]
pub(crate) fn ring_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn normalise_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The DNS names a certificate is for (its DNS subject alternative names), normalised; none
/// if it cannot be parsed.
fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(text) => Some(normalise_name(text)),
            _ => None,
        })
        .collect()
}

/// Whether a certificate for `names` is valid for `host` (RFC 6125: a wildcard stands for
/// exactly one whole left-most label).
fn covers(names: &[String], host: &str) -> bool {
    names.iter().any(|name| match name.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => name == host,
    })
}

/// Picks the certificate by the name the client asked for (SNI); the listener's `cert` for any
/// other name and for clients that ask for none.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello
            .server_name()
            .and_then(|name| self.by_name.get(&normalise_name(name)));
        Some(chosen.unwrap_or(&self.default).clone())
    }
}

/// The TLS handshake of a new connection on a TLS listener (`mqtts`, and `wss` before its
/// WebSocket upgrade: the transport is also an `AsyncRead + AsyncWrite` stream); the caller
/// bounds it with the connect timeout. Returns the connection and what the transport vouches
/// for: the listener's shared identity, or, with a verified client certificate, one of the
/// connection's own with the certificate's names (and the username taken from it under
/// `use_identity_as_username`).
pub(crate) async fn accept_tls(
    listener: &Listener,
    stream: TcpStream,
) -> io::Result<(TlsTransport, Option<Arc<TransportIdentity>>)> {
    let Some(tls) = listener.tls.as_ref() else {
        return Err(io::Error::other("not a TLS listener"));
    };
    let Some(config) = tls.config() else {
        return Err(io::Error::other("TLS material not loaded"));
    };
    let transport = TlsTransport::accept(config, stream).await?;
    let Some(end_entity) = transport
        .peer_certificates()
        .and_then(|chain| chain.first())
    else {
        return Ok((transport, listener.identity.clone()));
    };
    let certificate = certificate_identity(end_entity)?;
    let username = match tls.settings.use_identity_as_username {
        None => None,
        Some(field) => Some(username_from(&certificate, field)?),
    };
    let identity = TransportIdentity {
        listener: Some(tls.name.clone()),
        certificate: Some(certificate),
        username,
    };
    Ok((transport, Some(Arc::new(identity))))
}

/// The subject CN and the subject alternative names of a (verified) certificate.
fn certificate_identity(der: &CertificateDer<'_>) -> io::Result<CertificateIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let mut alt_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(text)
                | GeneralName::RFC822Name(text)
                | GeneralName::URI(text) => alt_names.push((*text).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    alt_names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    Ok(CertificateIdentity {
        common_name,
        alt_names,
    })
}

/// The username `use_identity_as_username` takes: a certificate without that field (or with
/// one that is no MQTT string) is refused rather than falling back to the CONNECT's username.
fn username_from(identity: &CertificateIdentity, field: IdentityField) -> io::Result<MqttStr> {
    let (value, what) = match field {
        IdentityField::Cn => (identity.common_name.clone(), "a subject CN"),
        IdentityField::San => (
            identity.alt_names.first().cloned(),
            "a subject alternative name",
        ),
    };
    let refused = || {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("the client certificate has no usable {what} (use_identity_as_username)"),
        )
    };
    MqttStr::try_from(value.ok_or_else(refused)?).map_err(|_| refused())
}

/// Reloads every TLS listener of a running server, and `[cluster] tls` (SIGHUP, tests).
#[derive(Clone, Debug)]
pub struct TlsReloader {
    listeners: Vec<Arc<Listener>>,
    cluster: Option<Arc<crate::cluster::tls::ClusterTlsFiles>>,
}

impl TlsReloader {
    pub(crate) fn new(
        listeners: Vec<Arc<Listener>>,
        cluster: Option<Arc<crate::cluster::tls::ClusterTlsFiles>>,
    ) -> TlsReloader {
        TlsReloader {
            listeners: listeners
                .into_iter()
                .filter(|listener| listener.tls.is_some())
                .collect(),
            cluster,
        }
    }

    /// Reads every TLS listener's files again, and `[cluster] tls`'s. Material whose files
    /// cannot be used stays as it was (logged); the first such error is returned (the
    /// cluster's under the listener name `[cluster]`; [`TlsReloader::reload_errors`] says
    /// each in its own words).
    pub fn reload(&self) -> Result<(), TlsError> {
        let (listeners, cluster) = self.reload_each();
        match (listeners.into_iter().next(), cluster) {
            (Some(first), _) => Err(first),
            (None, Some(error)) => Err(TlsError {
                listener: "[cluster]".to_owned(),
                path: error.path,
                problem: error.problem,
            }),
            (None, None) => Ok(()),
        }
    }

    /// [`TlsReloader::reload`], returning every error as a reload's report shows it: a
    /// listener's as `listener "name": <file>: <problem>`, the cluster's as
    /// `cluster.tls: <file>: <problem>` (as at start and in `tern check-config`).
    pub(crate) fn reload_errors(&self) -> Vec<String> {
        let (listeners, cluster) = self.reload_each();
        listeners
            .iter()
            .map(ToString::to_string)
            .chain(cluster.map(|error| error.to_string()))
            .collect()
    }

    /// Reloads every listener and the cluster's files; their errors.
    fn reload_each(&self) -> (Vec<TlsError>, Option<crate::cluster::ClusterTlsError>) {
        let listeners = self
            .listeners
            .iter()
            .filter_map(|listener| listener.tls.as_ref()?.reload().err())
            .collect();
        let cluster = self
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.reload().err());
        (listeners, cluster)
    }

    /// notAfter (Unix seconds) of `[cluster] tls`'s certificate in use, if there is one.
    pub(crate) fn cluster_expiry(&self) -> Option<i64> {
        self.cluster
            .as_ref()
            .and_then(|cluster| cluster.not_after())
    }

    /// [`TlsReloader::reload`] on tokio's blocking pool (file reads, PEM and CRL parsing and
    /// the verifier's construction stay off the runtime's threads).
    pub async fn reload_in_background(&self) -> Result<(), TlsError> {
        let reloader = self.clone();
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(result) => result,
            // A panic in the reload is a bug: raised here as it would have been inline.
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            // Cancelled: the runtime is shutting down, nothing more to load.
            Err(_) => Ok(()),
        }
    }

    /// Each TLS listener's name and the notAfter (Unix seconds) of the certificate it serves,
    /// once per name.
    pub(crate) fn expiries(&self) -> Vec<(String, i64)> {
        let mut out: Vec<(String, i64)> = Vec::new();
        for listener in &self.listeners {
            if let Some((name, Some(not_after))) = listener.tls.as_ref().map(TlsListener::expiry)
                && !out.iter().any(|(seen, _)| seen == name)
            {
                out.push((name.to_owned(), not_after));
            }
        }
        out
    }

    /// Reloads the listeners (and `[cluster] tls`) whose files changed since they were last
    /// read.
    pub(crate) fn reload_changed(&self) {
        for listener in &self.listeners {
            if let Some(tls) = &listener.tls {
                tls.reload_if_changed();
            }
        }
        if let Some(cluster) = &self.cluster {
            cluster.reload_if_changed();
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.listeners.is_empty() && self.cluster.is_none()
    }
}

/// Tuning (not part of the configuration): the interval of the file poll in milliseconds, 0 to
/// turn it off (reloads then come only from SIGHUP); the tests that prove SIGHUP does the
/// reload set it to 0.
const WATCH_INTERVAL_ENV: &str = "TERN_TLS_WATCH_INTERVAL_MS";

/// Reloads a TLS listener's (or `[cluster] tls`'s) material when its files change, until the
/// server stops. The files are read and parsed on the blocking pool, not on the runtime that
/// runs the timers.
pub(crate) async fn watch_files(reloader: TlsReloader, stop: tokio::sync::watch::Receiver<bool>) {
    if reloader.is_empty() {
        return;
    }
    let Some(interval) = crate::file_watch::watch_interval(WATCH_INTERVAL_ENV) else {
        tracing::info!(
            "{WATCH_INTERVAL_ENV}=0: TLS files are not watched, reloads come from SIGHUP only"
        );
        return;
    };
    crate::file_watch::every(interval, stop, || {
        let reloader = reloader.clone();
        async move {
            let _ = tokio::task::spawn_blocking(move || reloader.reload_changed()).await;
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding 13: the check that an SNI entry's certificate names its host (RFC 6125
    /// wildcards: one whole left-most label).
    #[test]
    fn certificate_names_cover_hosts() {
        let names = vec![
            "mqtt.example.org".to_owned(),
            "*.devices.example.org".to_owned(),
        ];
        assert!(covers(&names, "mqtt.example.org"));
        assert!(covers(&names, "a.devices.example.org"));
        assert!(!covers(&names, "devices.example.org"));
        assert!(!covers(&names, "a.b.devices.example.org"));
        assert!(!covers(&names, "other.example.org"));
    }

    /// Review finding 13: a file replaced by one of the same size and modification time
    /// (renamed over it) is still seen as changed, by its inode and change time.
    #[cfg(unix)]
    #[test]
    fn a_same_size_same_time_replacement_is_seen() {
        let dir = std::env::temp_dir().join(format!("tern-filestamp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cert.pem");
        let other = dir.join("cert.pem.new");
        std::fs::write(&path, "aaaa").unwrap();
        std::fs::write(&other, "bbbb").unwrap();
        let time = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::File::options()
            .write(true)
            .open(&other)
            .unwrap()
            .set_modified(time)
            .unwrap();
        let before = FileStamp::of(&path);
        std::fs::rename(&other, &path).unwrap();
        let after = FileStamp::of(&path);
        let _ = std::fs::remove_dir_all(&dir);
        assert_ne!(before, after);
    }
}
