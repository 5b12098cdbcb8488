//! SCRAM-SHA-256 and SCRAM-SHA-512 over MQTT 5 enhanced authentication (section 4.12), at
//! CONNECT and at re-authentication, with the `$scram$` users of a listener's password file
//! (tern-auth's `scram` module does the RFC 5802 work).
//!
//! - `scram = true` (both mechanisms) or `scram = ["SCRAM-SHA-256"]` in `[auth]` or a
//!   listener's `auth` offers them there. A CONNECT naming an offered method needs no password
//!   (`FileAuth` lets it through to the exchange); one naming another method is refused with
//!   0x8C Bad authentication method.
//! - The exchange: CONNECT carries client-first, AUTH 0x18 server-first, AUTH 0x18
//!   client-final, CONNACK (or AUTH 0x00 at re-authentication) server-final (`v=`).
//! - The SCRAM username is the client's: a CONNECT username, if any, must be the same, and a
//!   re-authentication must name the connection's user (the core refuses another, 0x87). The
//!   principal gets that user's ACL rules when the exchange succeeds.
//! - An unknown user (or one without a `$scram$` line) gets a decoy salt, stable per name, and
//!   the default iteration count; the exchange fails at the proof like a wrong password: both
//!   are refused with 0x86 (DISCONNECT 0x87 at re-authentication), counted by the failure
//!   limiter and logged (`auth failed`).
//! - The exchange runs on the connection's task: the server's side is a few HMACs and hashes
//!   (microseconds); PBKDF2 is the client's cost, as the server stores the derived keys.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use tern_auth::{ScramError, ScramMechanism, ScramSession};
use tern_broker::{
    AuthExchange, AuthStep, Credentials, EnhancedAuthenticator, Principal, TransportIdentity,
};
use tern_codec::{MqttStr, ProtocolVersion, ReasonCode};

use crate::file_auth::FileAuth;

/// `scram = true`, `false`, or a list of mechanisms (`["SCRAM-SHA-256", "SCRAM-SHA-512"]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ScramConfig {
    /// `true`: every mechanism; `false`: none.
    Enabled(bool),
    /// These mechanisms, by their SASL names.
    Mechanisms(Vec<String>),
}

impl ScramConfig {
    /// The mechanisms offered (unknown names are left out: [`ScramConfig::check`] refuses
    /// them).
    pub fn mechanisms(&self) -> Vec<ScramMechanism> {
        match self {
            ScramConfig::Enabled(true) => ScramMechanism::ALL.to_vec(),
            ScramConfig::Enabled(false) => Vec::new(),
            ScramConfig::Mechanisms(names) => names
                .iter()
                .filter_map(|name| ScramMechanism::from_name(name))
                .collect(),
        }
    }

    /// Refuses unknown mechanisms, an empty list, and SCRAM without a password file.
    pub fn check(&self, has_password_file: bool) -> Result<(), String> {
        if let ScramConfig::Mechanisms(names) = self {
            if names.is_empty() {
                return Err(
                    "scram = []: name SCRAM-SHA-256 and/or SCRAM-SHA-512, or say scram = true"
                        .into(),
                );
            }
            if let Some(name) = names
                .iter()
                .find(|name| ScramMechanism::from_name(name).is_none())
            {
                return Err(format!(
                    "scram: unknown mechanism {name:?} (expected \"SCRAM-SHA-256\" or \"SCRAM-SHA-512\")"
                ));
            }
        }
        if !self.mechanisms().is_empty() && !has_password_file {
            return Err(
                "scram needs password_file (users added with `tern passwd --scram`)".into(),
            );
        }
        Ok(())
    }
}

/// One SCRAM mechanism, for every listener that offers it.
pub(crate) struct ScramAuthenticator {
    mechanism: ScramMechanism,
    auth: FileAuth,
}

impl ScramAuthenticator {
    pub(crate) fn new(mechanism: ScramMechanism, auth: FileAuth) -> ScramAuthenticator {
        ScramAuthenticator { mechanism, auth }
    }
}

impl EnhancedAuthenticator for ScramAuthenticator {
    fn method(&self) -> &str {
        self.mechanism.name()
    }

    /// Not called by the core (it calls `begin_for`): without the listener, fail closed.
    fn begin(&self, _client_id: &str, _username: Option<&str>) -> Box<dyn AuthExchange> {
        Box::new(Refused)
    }

    fn begin_for(&self, principal: &Principal) -> Box<dyn AuthExchange> {
        Box::new(ScramExchange {
            mechanism: self.mechanism,
            auth: self.auth.clone(),
            client_id: principal.client_id.to_string(),
            known_user: principal.username.as_ref().map(ToString::to_string),
            peer: principal.peer,
            transport: principal.transport.clone(),
            state: State::First,
        })
    }
}

/// An exchange that cannot run.
struct Refused;

impl AuthExchange for Refused {
    fn step(&mut self, _: Option<&[u8]>) -> AuthStep {
        AuthStep::Failure(ReasonCode::NotAuthorized)
    }
}

enum State {
    First,
    Final {
        session: Box<ScramSession>,
        username: String,
    },
    Succeeded {
        username: String,
    },
    Done,
}

struct ScramExchange {
    mechanism: ScramMechanism,
    auth: FileAuth,
    client_id: String,
    /// The connection's user (at re-authentication) or the CONNECT's username, if any: the
    /// SCRAM user must be this one.
    known_user: Option<String>,
    peer: Option<SocketAddr>,
    transport: Option<Arc<TransportIdentity>>,
    state: State,
}

impl ScramExchange {
    fn credentials<'a>(&'a self, username: Option<&'a str>) -> Credentials<'a> {
        Credentials {
            client_id: &self.client_id,
            username: username.or(self.known_user.as_deref()),
            password: None,
            peer: self.peer,
            protocol: ProtocolVersion::V5,
            transport: self.transport.as_deref(),
            authentication_method: Some(self.mechanism.name()),
        }
    }

    /// Ends the exchange: counted and logged as a failed authentication.
    fn fail(&mut self, username: Option<&str>, error: ScramError) -> AuthStep {
        self.state = State::Done;
        if error == ScramError::Random {
            // The server's random source failed: not the client's doing, not counted.
            tracing::error!("SCRAM: the random source failed; exchange refused (retryable)");
            return AuthStep::Failure(ReasonCode::ServerUnavailable);
        }
        let reason = match error {
            ScramError::UnknownUser => "SCRAM: unknown user or no SCRAM credentials".to_owned(),
            error => format!("SCRAM: {error}"),
        };
        self.auth
            .record_failure(&self.credentials(username), &reason);
        AuthStep::Failure(match error {
            // An unknown user is refused exactly as a wrong password.
            ScramError::InvalidProof | ScramError::UnknownUser => ReasonCode::BadUserNameOrPassword,
            _ => ReasonCode::NotAuthorized,
        })
    }

    fn first(&mut self, data: &[u8]) -> AuthStep {
        if !self
            .auth
            .scram_offered(self.transport.as_deref(), self.mechanism)
        {
            self.state = State::Done;
            return AuthStep::Failure(ReasonCode::BadAuthenticationMethod);
        }
        if self.auth.is_banned(&self.credentials(None)) {
            self.state = State::Done;
            return AuthStep::Failure(ReasonCode::ConnectionRateExceeded);
        }
        let mut session = match ScramSession::new(self.mechanism) {
            Ok(session) => Box::new(session),
            Err(error) => return self.fail(None, error),
        };
        let username = match session.client_first(data) {
            Ok(username) => username.to_owned(),
            Err(error) => return self.fail(None, error),
        };
        if self
            .known_user
            .as_ref()
            .is_some_and(|known| *known != username)
        {
            self.state = State::Done;
            self.auth.record_failure(
                &self.credentials(None),
                "SCRAM: the SCRAM username is not the connection's",
            );
            return AuthStep::Failure(ReasonCode::NotAuthorized);
        }
        let keys = self
            .auth
            .scram_keys(self.transport.as_deref(), self.mechanism, &username);
        match session.server_first(keys) {
            Ok(message) => {
                self.state = State::Final { session, username };
                AuthStep::Continue(Some(Bytes::from(message)))
            }
            Err(error) => self.fail(Some(&username), error),
        }
    }
}

impl AuthExchange for ScramExchange {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        let data = data.unwrap_or_default();
        match std::mem::replace(&mut self.state, State::Done) {
            State::First => self.first(data),
            State::Final {
                mut session,
                username,
            } => match session.client_final(data) {
                Ok(message) => {
                    self.state = State::Succeeded { username };
                    AuthStep::Success(Some(Bytes::from(message)))
                }
                Err(error) => self.fail(Some(&username), error),
            },
            State::Succeeded { .. } | State::Done => self.fail(None, ScramError::OutOfOrder),
        }
    }

    fn authenticated(&mut self, principal: &mut Principal) -> Result<(), ReasonCode> {
        let State::Succeeded { username } = std::mem::replace(&mut self.state, State::Done) else {
            return Err(ReasonCode::NotAuthorized);
        };
        let name = MqttStr::try_from(username.as_str()).map_err(|_| ReasonCode::NotAuthorized)?;
        principal.username = Some(name);
        principal.access = self.auth.access_for(&self.credentials(Some(&username)));
        // SCRAM credentials do not expire (a token's expiry from before is replaced).
        principal.expires_at = None;
        self.auth.record_success(&self.client_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::auth_config::AuthConfig;

    use super::*;

    /// Issue 12, SCRAM configuration: `true`, `false` or a list; unknown names, an empty list
    /// and SCRAM without a password file are refused at load.
    #[test]
    fn the_scram_key() {
        let lan: std::net::IpAddr = "0.0.0.0".parse().unwrap();
        let both: AuthConfig = toml::from_str("password_file = \"p\"\nscram = true").unwrap();
        assert_eq!(
            both.scram.as_ref().unwrap().mechanisms(),
            ScramMechanism::ALL
        );
        assert!(both.validate_for("x", lan, false).is_ok());
        let one: AuthConfig =
            toml::from_str("password_file = \"p\"\nscram = [\"SCRAM-SHA-512\"]").unwrap();
        assert_eq!(
            one.scram.as_ref().unwrap().mechanisms(),
            [ScramMechanism::Sha512]
        );
        let off: AuthConfig = toml::from_str("scram = false\nallow_anonymous = true").unwrap();
        assert!(off.scram.as_ref().unwrap().mechanisms().is_empty());
        assert!(off.validate_for("x", lan, false).is_ok());
        for (text, expected) in [
            (
                "password_file = \"p\"\nscram = [\"SCRAM-SHA-1\"]",
                "unknown mechanism",
            ),
            ("password_file = \"p\"\nscram = []", "scram = []"),
            (
                "allow_anonymous = true\nscram = true",
                "needs password_file",
            ),
        ] {
            let table: AuthConfig = toml::from_str(text).unwrap();
            let error = table.validate_for("x", lan, false).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        assert!(toml::from_str::<AuthConfig>("scram = 3").is_err());
    }
}
