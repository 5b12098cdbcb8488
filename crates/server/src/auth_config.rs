//! The `[auth]` table of the configuration file, and a listener's own `auth = { ... }`: who may
//! connect (a password file, anonymous clients or not) and what they may touch (an ACL file).
//! The shape is a contract (docs/configuration.md, `## [auth]`): keys are only added.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth_failures::FailureLimit;
use crate::http_auth::HttpConfig;
use crate::jwt::JwtConfig;
use crate::scram_auth::ScramConfig;

/// Authentication and access rules, for every listener without its own `auth`, or one
/// listener's (which replaces the top-level table whole for that listener).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether clients without a username are let in. Unset: yes on a loopback address when
    /// there is no password file, no otherwise; a non-loopback listener with neither a
    /// password file nor this key does not start.
    pub allow_anonymous: Option<bool>,
    /// Users and their hashes (`user:hash` a line; Mosquitto's formats read as they are).
    pub password_file: Option<PathBuf>,
    /// Access rules in Mosquitto's ACL syntax; unset: every subscription, every publish but to
    /// `$` topics.
    pub acl_file: Option<PathBuf>,
    /// What a denied PUBLISH does to an MQTT 3.1.1 client: `drop` (acknowledged and dropped,
    /// Mosquitto's behaviour) or `disconnect`. Broker-wide: top-level `[auth]` only.
    pub deny_publish: Option<DenyPublish>,
    /// JSON Web Tokens in the password field (see [`JwtConfig`]).
    pub jwt: Option<JwtConfig>,
    /// How failed authentications are slowed down and banned (see [`FailureLimit`]).
    /// Broker-wide: top-level `[auth]` only.
    pub failure_limit: Option<FailureLimit>,
    /// An HTTP service that decides (see [`HttpConfig`]).
    pub http: Option<HttpConfig>,
    /// SCRAM over MQTT 5 enhanced authentication, with the `$scram$` users of `password_file`
    /// (see [`ScramConfig`]).
    pub scram: Option<ScramConfig>,
}

/// See [`AuthConfig::deny_publish`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenyPublish {
    #[default]
    Drop,
    Disconnect,
}

impl AuthConfig {
    /// Whether clients without a username are let in on a listener bound to `addr` (whose
    /// clients all proved a certificate if `certificates_required`).
    pub fn anonymous_allowed(&self, addr: IpAddr, certificates_required: bool) -> bool {
        self.allow_anonymous
            .unwrap_or(!self.has_authenticator() && (is_loopback(addr) || certificates_required))
    }

    /// Checks that a listener on `addr`, called `what` in the message, may start with these
    /// settings: secure by default, a listener reachable from the network needs a password
    /// file, client certificates (`client_auth = "required"`) or an explicit
    /// `allow_anonymous`.
    pub fn validate_for(
        &self,
        what: &str,
        addr: IpAddr,
        certificates_required: bool,
    ) -> Result<(), String> {
        if let Some(jwt) = &self.jwt {
            jwt.check().map_err(|error| format!("{what}: {error}"))?;
        }
        if let Some(http) = &self.http {
            http.check().map_err(|error| format!("{what}: {error}"))?;
        }
        if let Some(scram) = &self.scram {
            scram
                .check(self.password_file.is_some())
                .map_err(|error| format!("{what}: {error}"))?;
        }
        if !self.has_authenticator()
            && self.allow_anonymous.is_none()
            && !certificates_required
            && !is_loopback(addr)
        {
            return Err(format!(
                "{what} listens on {addr}, reachable from the network, with no authentication: \
                 add password_file = \"...\" (users made with `tern passwd`), jwt = {{ ... }} or \
                 http = {{ ... }} to [auth] or to its auth = {{ ... }}, or allow_anonymous = true \
                 to let anyone in"
            ));
        }
        if self.allow_anonymous == Some(false) && !self.has_authenticator() {
            return Err(format!(
                "{what}: allow_anonymous = false with no password_file lets nobody in: add password_file"
            ));
        }
        Ok(())
    }

    /// Whether clients can prove who they are here (a password file or tokens).
    pub fn has_authenticator(&self) -> bool {
        self.password_file.is_some() || self.jwt.is_some() || self.http.is_some()
    }

    /// Resolves the file paths against `base` (the configuration file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        let jwt = self
            .jwt
            .as_mut()
            .into_iter()
            .flat_map(|jwt| jwt.paths_mut())
            .chain(self.http.iter_mut().flat_map(|http| http.paths_mut()));
        for path in [&mut self.password_file, &mut self.acl_file]
            .into_iter()
            .flatten()
            .chain(jwt)
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }
}

/// Whether `addr` is only reachable from this host (127.0.0.0/8, ::1, an IPv4-mapped
/// loopback). A wildcard address (`0.0.0.0`, `::`) is not.
pub fn is_loopback(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: a non-loopback listener with no authenticator and no explicit
    /// allow_anonymous does not start, and the error says what to add.
    #[test]
    fn secure_by_default() {
        let none = AuthConfig::default();
        let lan: IpAddr = "0.0.0.0".parse().unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let error = none
            .validate_for("listener \"lan\"", lan, false)
            .unwrap_err();
        assert!(error.contains("password_file") && error.contains("allow_anonymous = true"));
        assert!(none.validate_for("x", local, false).is_ok());
        assert!(none.validate_for("x", lan, true).is_ok());
        assert!(none.anonymous_allowed(local, false));
        assert!(!none.anonymous_allowed(lan, false));
        assert!(none.anonymous_allowed(lan, true));
        let open = AuthConfig {
            allow_anonymous: Some(true),
            ..AuthConfig::default()
        };
        assert!(open.validate_for("x", lan, false).is_ok() && open.anonymous_allowed(lan, false));
        let users = AuthConfig {
            password_file: Some("p".into()),
            ..AuthConfig::default()
        };
        assert!(users.validate_for("x", lan, false).is_ok());
        assert!(!users.anonymous_allowed(local, false));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::".parse().unwrap()));
    }

    /// Issue 12, JWT: `jwt` counts as an authenticator (a network listener starts, anonymous
    /// clients are refused by default), and a table that cannot verify anything is refused.
    #[test]
    fn jwt_is_an_authenticator() {
        let lan: IpAddr = "0.0.0.0".parse().unwrap();
        let table: AuthConfig =
            toml::from_str("jwt = { algorithms = [\"HS256\"], secret_file = \"s\" }").unwrap();
        assert!(table.validate_for("x", lan, false).is_ok());
        assert!(!table.anonymous_allowed("127.0.0.1".parse().unwrap(), false));
        let no_key: AuthConfig = toml::from_str("jwt = { algorithms = [\"ES256\"] }").unwrap();
        let error = no_key.validate_for("x", lan, false).unwrap_err();
        assert!(error.contains("key_file or jwks_file"), "{error}");
        let no_secret: AuthConfig = toml::from_str("jwt = { algorithms = [\"HS256\"] }").unwrap();
        assert!(no_secret.validate_for("x", lan, false).is_err());
        assert!(toml::from_str::<AuthConfig>("jwt = { algorithms = [\"none\"] }").is_err());
    }
}
