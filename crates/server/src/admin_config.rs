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

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(file) = &mut self.token_file
            && file.is_relative()
        {
            *file = base.join(&*file);
        }
    }
}
