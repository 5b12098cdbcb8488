//! `[admin]`: the admin listener (HTTP API, `/metrics`, dashboard) — where it listens, its
//! bearer token's file, and whether `/metrics` needs the token. Absent `bind`: no listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The token file's name in the data directory when `token_file` is not set.
pub const DEFAULT_TOKEN_FILE: &str = "admin.token";

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin API listens (e.g. 127.0.0.1:9883); `None`: no admin listener.
    pub bind: Option<SocketAddr>,
    /// The bearer token's file (relative: to the configuration file); generated there at first
    /// start when missing. Default: `admin.token` in the data directory.
    pub token_file: Option<PathBuf>,
    /// Whether `/metrics` needs the token too.
    pub metrics_auth: bool,
}

impl AdminConfig {
    /// The token file: `token_file`, or `admin.token` in `data_dir`.
    pub fn token_path(&self, data_dir: &Path) -> PathBuf {
        self.token_file
            .clone()
            .unwrap_or_else(|| data_dir.join(DEFAULT_TOKEN_FILE))
    }

    /// What an operator should hear about this table (logged at start, printed by `tern
    /// check-config`): a listener off loopback speaks plain HTTP, so the token (from `tern
    /// ctl`, typed into the dashboard) can be read by anyone on the path; and there, without
    /// `metrics_auth`, anyone who reaches it can read `/metrics`.
    pub fn warnings(&self) -> Vec<String> {
        let Some(addr) = self.bind else {
            return Vec::new();
        };
        if addr.ip().is_loopback() {
            return Vec::new();
        }
        let mut warnings = vec![format!(
            "the admin listener on {addr} is not on loopback and speaks plain HTTP: its bearer token crosses the network readable by anyone on the path; put it behind a TLS proxy or reach it through an SSH tunnel"
        )];
        if !self.metrics_auth {
            warnings.push(format!(
                "the admin listener on {addr} is not on loopback and /metrics needs no token: set [admin] metrics_auth = true unless the network is trusted"
            ));
        }
        warnings
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(file) = &mut self.token_file
            && file.is_relative()
        {
            *file = base.join(&*file);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review 13 #6: off loopback, the plain-HTTP warning always, the `/metrics` one without
    /// `metrics_auth`; on loopback none.
    #[test]
    fn warnings_off_loopback() {
        let config = |bind: &str, metrics_auth: bool| AdminConfig {
            bind: Some(bind.parse().unwrap()),
            token_file: None,
            metrics_auth,
        };
        assert!(config("127.0.0.1:9883", false).warnings().is_empty());
        assert!(config("[::1]:9883", false).warnings().is_empty());
        assert!(AdminConfig::default().warnings().is_empty());
        let open = config("0.0.0.0:9883", true).warnings();
        assert_eq!(open.len(), 1, "{open:?}");
        assert!(open[0].contains("plain HTTP"), "{open:?}");
        let both = config("0.0.0.0:9883", false).warnings();
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(both[1].contains("metrics_auth"), "{both:?}");
    }
}
