//! `[cluster] tls`: the node's certificate, its key and the cluster's CA, loaded (with the
//! listeners' loaders, see `crate::tls`) into the mutual-TLS [`Transport`] of the links between
//! nodes. Read once at start: a changed file takes effect at the next start.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use tern_cluster::{ClusterTls, Transport};

use super::config::{ClusterConfig, ClusterTlsConfig};
use crate::listener_config::{ClientAuth, ListenerKind, TlsConfig, TlsVersion};
use crate::tls::{TlsError, TlsListener, TlsProblem, file_prefix};

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

/// The links' transport for `config`: mutual TLS with `tls`, else plain TCP (with a warning:
/// anyone who reaches the cluster port can speak as a node).
pub(crate) fn transport(config: &ClusterConfig) -> Result<Transport, ClusterTlsError> {
    match &config.tls {
        Some(tls) => {
            let transport = Transport::tls(load(tls)?);
            tracing::info!(bind = %config.bind, "cluster links use mutual TLS");
            Ok(transport)
        }
        None => {
            tracing::warn!(
                bind = %config.bind,
                "the cluster port is unauthenticated and unencrypted (no [cluster] tls): whoever reaches it can act as a node; keep it on a private network"
            );
            Ok(Transport::plain())
        }
    }
}

/// Reads the files of `[cluster] tls` (`tern check-config` and the start).
pub(crate) fn load(tls: &ClusterTlsConfig) -> Result<ClusterTls, ClusterTlsError> {
    // The listeners' loaders, under a listener of its own (its name is not shown: the error
    // is turned into a `ClusterTlsError`).
    let loader = TlsListener::new(
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
    );
    let provider = Arc::new(crate::tls::ring_provider());
    let certified = loader.certified_key(&tls.cert, &tls.key, &provider)?;
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
    Ok(ClusterTls::new(Arc::new(server), Arc::new(client)))
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
