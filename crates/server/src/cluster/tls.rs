//! `[cluster] tls`: the node's certificate, its key and the cluster's CA, loaded (with the
//! listeners' loaders, see `crate::tls`) into the mutual-TLS [`Transport`] of the links between
//! nodes. Read at start, and again as the listeners' files are: on SIGHUP (and the admin API's
//! reload) and when one of the three files changes ([`ClusterTlsFiles`]). Links set up after a
//! reload use the new material; links already up keep theirs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::ResolvesClientCert;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use tern_cluster::{ClusterTls, Transport};

use super::config::{ClusterConfig, ClusterTlsConfig};
use crate::listener_config::{ClientAuth, ListenerKind, TlsConfig, TlsVersion};
use crate::tls::{FileStamp, TlsError, TlsListener, TlsProblem, file_prefix};

use tern_cluster::transport::ALPN;

/// Why `[cluster] tls` cannot be used: the file and the problem.
#[derive(Debug, thiserror::Error)]
#[error("cluster.tls: {}{problem}", file_prefix(.path.as_deref()))]
pub struct ClusterTlsError {
    pub path: Option<PathBuf>,
    #[source]
    pub problem: TlsProblem,
}

impl From<TlsError> for ClusterTlsError {
    fn from(error: TlsError) -> ClusterTlsError {
        ClusterTlsError {
            path: error.path,
            problem: error.problem,
        }
    }
}

/// The links' transport for `config`: mutual TLS with `tls` (and the files behind it, for
/// reloads), else plain TCP (with a warning: anyone who reaches the cluster port can speak as
/// a node).
pub(crate) fn transport(
    config: &ClusterConfig,
) -> Result<(Transport, Option<Arc<ClusterTlsFiles>>), ClusterTlsError> {
    match &config.tls {
        Some(tls) => {
            let files = ClusterTlsFiles::load(tls)?;
            let transport = Transport::tls(files.tls.clone());
            tracing::info!(bind = %config.bind, "cluster links use mutual TLS");
            Ok((transport, Some(Arc::new(files))))
        }
        None => {
            tracing::warn!(
                bind = %config.bind,
                "the cluster port is unauthenticated and unencrypted (no [cluster] tls): whoever reaches it can act as a node; keep it on a private network"
            );
            Ok((Transport::plain(), None))
        }
    }
}

/// Reads the files of `[cluster] tls` (`tern check-config`).
pub(crate) fn load(tls: &ClusterTlsConfig) -> Result<ClusterTls, ClusterTlsError> {
    let (server, client, _) = build(&loader(tls), tls)?;
    Ok(ClusterTls::new(server, client))
}

/// The `[cluster] tls` files and the material read from them, which the links use.
pub(crate) struct ClusterTlsFiles {
    config: ClusterTlsConfig,
    loader: TlsListener,
    tls: ClusterTls,
    /// The stamps of the three files as they were last read (loaded or not), so a change is
    /// acted on once, and a file replaced in several steps is read again after the last.
    seen: Mutex<Vec<FileStamp>>,
    /// notAfter (Unix seconds) of the certificate in use, `i64::MIN` if unknown.
    not_after: AtomicI64,
}

impl ClusterTlsFiles {
    /// Reads the files (at start: an error stops the server).
    fn load(config: &ClusterTlsConfig) -> Result<ClusterTlsFiles, ClusterTlsError> {
        let loader = loader(config);
        let seen = loader.stamps();
        let (server, client, not_after) = build(&loader, config)?;
        Ok(ClusterTlsFiles {
            config: config.clone(),
            loader,
            tls: ClusterTls::new(server, client),
            seen: Mutex::new(seen),
            not_after: AtomicI64::new(not_after),
        })
    }

    /// Reads the files again; links set up from now on use the new material. On an error
    /// the previous material stays, and the error is logged (and returned).
    pub(crate) fn reload(&self) -> Result<(), ClusterTlsError> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = self.loader.stamps();
        match build(&self.loader, &self.config) {
            Ok((server, client, not_after)) => {
                self.tls.replace(server, client);
                self.not_after.store(not_after, Ordering::Relaxed);
                tracing::info!("cluster TLS certificates reloaded");
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, "cluster TLS reload failed: the previous certificates stay in use");
                Err(error)
            }
        }
    }

    /// Reloads if one of the files changed since it was last read.
    pub(crate) fn reload_if_changed(&self) {
        let changed = *self.seen.lock().unwrap_or_else(|p| p.into_inner()) != self.loader.stamps();
        if changed {
            let _ = self.reload();
        }
    }

    /// notAfter (Unix seconds) of the certificate in use, if known.
    pub(crate) fn not_after(&self) -> Option<i64> {
        let not_after = self.not_after.load(Ordering::Relaxed);
        (not_after != i64::MIN).then_some(not_after)
    }
}

impl std::fmt::Debug for ClusterTlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTlsFiles")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The listeners' loaders, under a listener of its own (its name is not shown: errors are
/// turned into a `ClusterTlsError`); its files are the three of `tls`.
fn loader(tls: &ClusterTlsConfig) -> TlsListener {
    TlsListener::new(
        "cluster",
        TlsConfig {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            client_ca: Some(tls.ca.clone()),
            client_auth: ClientAuth::Required,
            crl: Vec::new(),
            min_version: TlsVersion::Tls12,
            use_identity_as_username: None,
            sni: Vec::new(),
        },
        ListenerKind::Mqtts,
    )
}

/// Reads the files of `tls`: the accepting and the dialling side's configurations, and the
/// certificate's notAfter.
fn build(
    loader: &TlsListener,
    tls: &ClusterTlsConfig,
) -> Result<(Arc<ServerConfig>, Arc<ClientConfig>, i64), ClusterTlsError> {
    let provider = Arc::new(crate::tls::ring_provider());
    let certified = loader.certified_key(&tls.cert, &tls.key, &provider)?;
    let not_after = crate::tls::not_after(&certified);
    let roots = Arc::new(loader.client_roots(&tls.ca)?);
    let versions: &[&rustls::SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];
    let config_error = |error| ClusterTlsError {
        path: None,
        problem: TlsProblem::Config(error),
    };

    // Accepting: a client certificate chained to `ca` is required.
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|error| ClusterTlsError {
            path: Some(tls.ca.clone()),
            problem: TlsProblem::Verifier(error),
        })?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Fixed(certified.clone())));
    server.alpn_protocols = vec![ALPN.to_vec()];

    // Dialling: the accepting node's certificate chained to `ca`, for the dialled host; this
    // node's own certificate shown when asked.
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(Fixed(certified)));
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok((Arc::new(server), Arc::new(client), not_after))
}

/// This node's certificate, whatever the peer asks (the cluster has one CA).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesClientCert for Fixed {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a node certificate signed by it, as PEM files in a directory of their own.
    struct Files {
        dir: PathBuf,
        tls: ClusterTlsConfig,
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn make_files(test: &str) -> Files {
        let dir =
            std::env::temp_dir().join(format!("tern-cluster-tls-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let tls = ClusterTlsConfig {
            cert: write("node.pem", &cert.pem()),
            key: write("node.key", &key.serialize_pem()),
            ca: write("ca.pem", &ca_pem),
        };
        Files { dir, tls }
    }

    /// A changed file is read again (the poll's check), and its certificate's expiry is
    /// the one shown from then on; a broken file keeps the previous material.
    #[test]
    fn a_changed_file_is_read_again_and_a_broken_one_keeps_the_material() {
        let files = make_files("reload");
        let loaded = ClusterTlsFiles::load(&files.tls).unwrap();
        let before = loaded.not_after().unwrap();
        loaded.reload_if_changed();
        assert_eq!(loaded.not_after(), Some(before));

        // A new CA and a certificate of it that expires in 2031.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = rcgen::Issuer::from_params(&ca, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 1, 2);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(&files.tls.cert, cert.pem()).unwrap();
        std::fs::write(&files.tls.key, key.serialize_pem()).unwrap();
        std::fs::write(&files.tls.ca, ca_pem).unwrap();
        loaded.reload_if_changed();
        let renewed = loaded.not_after().unwrap();
        assert_ne!(renewed, before);
        assert_eq!(renewed, 1_924_992_000 + 86_400, "2031-01-02");

        std::fs::write(&files.tls.key, "not a key").unwrap();
        assert!(loaded.reload().is_err());
        assert_eq!(loaded.not_after(), Some(renewed));
    }

    #[test]
    fn good_files_load() {
        let files = make_files("good");
        load(&files.tls).unwrap();
    }

    /// A bad file is a start-up error that names it (brief: "a bad file is a clear start-up
    /// error").
    #[test]
    fn a_bad_file_is_an_error_naming_it() {
        let files = make_files("bad");
        let missing = ClusterTlsConfig {
            cert: files.dir.join("missing.pem"),
            ..files.tls.clone()
        };
        let error = load(&missing).unwrap_err().to_string();
        assert!(
            error.starts_with("cluster.tls: ") && error.contains("missing.pem: cannot read it"),
            "{error}"
        );

        // The CA file holds a key, not a certificate.
        let no_ca = ClusterTlsConfig {
            ca: files.tls.key.clone(),
            ..files.tls.clone()
        };
        let error = load(&no_ca).unwrap_err();
        assert!(
            matches!(error.problem, TlsProblem::NoCaCertificate),
            "{error}"
        );

        // Another certificate's key.
        let other = make_files("bad-other");
        let mismatched = ClusterTlsConfig {
            key: other.tls.key.clone(),
            ..files.tls.clone()
        };
        let error = load(&mismatched).unwrap_err();
        assert!(
            matches!(error.problem, TlsProblem::KeyMismatch(_)),
            "{error}"
        );
    }

    /// `[cluster] tls` parses with its three keys only; its paths are relative to the
    /// configuration file; `tern check-config` loads the files.
    #[test]
    fn the_table_parses_resolves_and_is_checked() {
        let files = make_files("config");
        let text = "listen = [\"127.0.0.1:0\"]\n[cluster]\nnode_id = 1\nbind = \"127.0.0.1:0\"\n\
                    tls = { cert = \"node.pem\", key = \"node.key\", ca = \"ca.pem\" }\n";
        let path = files.dir.join("tern.toml");
        std::fs::write(&path, text).unwrap();
        let config = crate::ServerConfig::from_file(&path).unwrap();
        let tls = config.cluster.as_ref().and_then(|c| c.tls.clone()).unwrap();
        assert_eq!(tls, files.tls);
        crate::server::check_config(&config).unwrap();

        std::fs::remove_file(&files.tls.ca).unwrap();
        let error = crate::server::check_config(&config)
            .unwrap_err()
            .to_string();
        assert!(error.contains("ca.pem"), "{error}");

        let unknown = text.replace("ca = ", "crl = \"x\", ca = ");
        assert!(crate::ServerConfig::from_toml(&unknown).is_err());
        let incomplete = text.replace(", ca = \"ca.pem\"", "");
        assert!(crate::ServerConfig::from_toml(&incomplete).is_err());
    }
}
