//! The `[[listeners]]` of the configuration file: each a kind of transport (MQTT over TCP, over
//! TLS, over WebSockets, over WebSockets in TLS) on its own address with its own settings. The
//! shape is a contract (docs/configuration.md): keys are only added, never renamed.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

/// One listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Names the listener in logs, errors and to authentication (unique).
    pub name: String,
    pub kind: ListenerKind,
    pub bind: SocketAddr,
    /// Open connections on this listener (the global `limits.max_connections` also applies);
    /// unset: only the global limit.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Expect a PROXY protocol header (v1 or v2) before anything else, from the addresses of
    /// `trusted_proxies` only.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Addresses or networks (`10.0.0.0/8`) whose PROXY headers and `X-Forwarded-For` headers
    /// are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// Certificates and client authentication: required by `mqtts` and `wss`, refused by the
    /// others.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// WebSockets (`ws`, `wss`): the HTTP path of the upgrade.
    #[serde(default = "default_path")]
    pub path: String,
    /// WebSockets: the `Origin` headers accepted (exact, e.g. `https://app.example.com`);
    /// empty: any origin, or none.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Authentication and access rules of this listener, replacing the top-level `[auth]`
    /// whole (same keys; `deny_publish` is top-level only).
    #[serde(default)]
    pub auth: Option<crate::auth_config::AuthConfig>,
}

fn default_path() -> String {
    "/mqtt".to_owned()
}

/// The transport of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MQTT over TCP.
    Mqtt,
    /// MQTT over TLS.
    Mqtts,
    /// MQTT over WebSockets.
    Ws,
    /// MQTT over WebSockets over TLS.
    Wss,
}

impl ListenerKind {
    pub fn uses_tls(self) -> bool {
        matches!(self, ListenerKind::Mqtts | ListenerKind::Wss)
    }

    pub fn uses_websockets(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Mqtt => "mqtt",
            ListenerKind::Mqtts => "mqtts",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS settings of a listener. Paths are relative to the configuration file's directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM), the server's certificate first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, RSA or SEC1/ECDSA; Ed25519 in PKCS#8).
    pub key: PathBuf,
    /// The CAs client certificates must chain to (PEM bundle); needed unless `client_auth` is
    /// `none`.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Certificate revocation lists (PEM or DER) checked for client certificates.
    #[serde(default)]
    pub crl: Vec<PathBuf>,
    /// The lowest TLS version accepted: `"1.2"` (default) or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Take the username from the verified client certificate: its subject `cn`, or its first
    /// subject alternative name (`san`).
    #[serde(default)]
    pub use_identity_as_username: Option<IdentityField>,
    /// Further certificates, chosen by the name the client asks for (SNI); `cert` and `key`
    /// serve every other name.
    #[serde(default)]
    pub sni: Vec<SniCertificate>,
}

/// A certificate for some server names (SNI).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertificate {
    /// The host names it serves (exact, case-insensitive).
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// One is asked for and verified if sent; clients without one are let through (to the
    /// authentication layer).
    Optional,
    /// Clients without a valid certificate fail the handshake.
    Required,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// The part of a client certificate that becomes the username.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityField {
    /// The subject's common name.
    Cn,
    /// The first subject alternative name.
    San,
}

/// An address or a network in CIDR notation (`192.0.2.7`, `10.0.0.0/8`, `2001:db8::/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `addr` is in the network (an IPv4-mapped IPv6 address counts as its IPv4).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, addr) {
            (IpAddr::V4(net), IpAddr::V4(addr)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(addr) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(addr)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(addr) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(text: &str) -> Result<IpNet, String> {
        let bad = || format!("{text:?} is not an IP address or network (such as 10.0.0.0/8)");
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<IpNet, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether `peer` is one of `trusted`.
pub fn is_trusted(trusted: &[IpNet], peer: IpAddr) -> bool {
    trusted.iter().any(|net| net.contains(peer))
}

impl ListenerConfig {
    /// Checks what parses but cannot work; the message names the listener.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        let fail = |what: String| Err(format!("listener {name:?} ({}): {what}", self.kind));
        if name.is_empty() {
            return Err("a listener needs a name".to_owned());
        }
        if name.starts_with(tern_broker::BRIDGE_LISTENER_PREFIX) {
            return fail("names starting with \"bridge:\" are the bridges' own".to_owned());
        }
        match (&self.tls, self.kind.uses_tls()) {
            (None, true) => return fail("needs tls = { cert = ..., key = ... }".to_owned()),
            (Some(_), false) => {
                return fail(format!(
                    "has tls settings but is not a TLS listener (kind \"mqtts\" or \"wss\" is, not {:?})",
                    self.kind.as_str()
                ));
            }
            _ => {}
        }
        if let Some(tls) = &self.tls {
            if tls.client_auth != ClientAuth::None && tls.client_ca.is_none() {
                return fail(format!(
                    "client_auth = {:?} needs client_ca, the CAs that client certificates chain to",
                    match tls.client_auth {
                        ClientAuth::Optional => "optional",
                        _ => "required",
                    }
                ));
            }
            if tls.client_auth == ClientAuth::None && !tls.crl.is_empty() {
                return fail(
                    "crl needs client certificates (client_auth \"optional\" or \"required\")"
                        .to_owned(),
                );
            }
            // With "optional", a client without a certificate would keep the CONNECT's
            // username, and could claim a name meant for certificate holders.
            if tls.use_identity_as_username.is_some() && tls.client_auth != ClientAuth::Required {
                return fail(
                    "use_identity_as_username needs client_auth = \"required\" (with \"optional\", a client without a certificate could claim any username)"
                        .to_owned(),
                );
            }
            for sni in &tls.sni {
                if sni.names.is_empty() {
                    return fail("an sni entry needs at least one name".to_owned());
                }
                if let Some(name) = sni.names.iter().find(|name| name.contains('*')) {
                    return fail(format!(
                        "sni name {name:?}: wildcards are not matched, list each host name"
                    ));
                }
            }
        }
        if self.kind.uses_websockets() {
            if !self.path.starts_with('/') {
                return fail(format!("path {:?} must begin with /", self.path));
            }
        } else if self.path != default_path() || !self.allowed_origins.is_empty() {
            return fail("path and allowed_origins are for WebSocket listeners".to_owned());
        }
        if self.max_connections == Some(0) {
            return fail("max_connections must be at least 1".to_owned());
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return fail(
                "proxy_protocol needs trusted_proxies, the addresses of the proxies whose headers are believed".to_owned(),
            );
        }
        Ok(())
    }

    /// The address whose reach decides whether anonymous clients are let in by default: the
    /// bind address, or, behind a proxy that forwards other hosts' clients (a PROXY header or
    /// `X-Forwarded-For` from `trusted_proxies`), the unspecified address: a listener on
    /// 127.0.0.1 behind HAProxy serves the network.
    pub fn reach(&self) -> std::net::IpAddr {
        if self.proxy_protocol || !self.trusted_proxies.is_empty() {
            std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        } else {
            self.bind.ip()
        }
    }

    /// Whether every client of this listener proves a certificate (TLS with
    /// `client_auth = "required"`).
    pub fn certificates_required(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|tls| tls.client_auth == ClientAuth::Required)
    }

    /// Resolves the TLS and auth paths against `base` (the configuration file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(auth) = &mut self.auth {
            auth.resolve_paths(base);
        }
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
            if let Some(ca) = &mut tls.client_ca {
                resolve(ca);
            }
            tls.crl.iter_mut().for_each(resolve);
            for sni in &mut tls.sni {
                resolve(&mut sni.cert);
                resolve(&mut sni.key);
            }
        }
    }
}

/// Checks that listener names are unique and that no two listeners (including the plain TCP
/// addresses of `listen`) share an address.
pub fn validate_all(listen: &[SocketAddr], listeners: &[ListenerConfig]) -> Result<(), String> {
    let mut names = HashSet::new();
    let mut addresses: Vec<(SocketAddr, String)> = listen
        .iter()
        .map(|addr| (*addr, format!("listen address {addr}")))
        .collect();
    for listener in listeners {
        listener.validate()?;
        if !names.insert(listener.name.as_str()) {
            return Err(format!(
                "two listeners are named {:?}: names must be unique",
                listener.name
            ));
        }
        let this = format!("listener {:?}", listener.name);
        if let Some((_, other)) = addresses
            .iter()
            .find(|(addr, _)| overlaps(*addr, listener.bind))
        {
            return Err(format!(
                "{this} binds {} which {other} uses already",
                listener.bind
            ));
        }
        addresses.push((listener.bind, this));
    }
    Ok(())
}

/// Whether two bind addresses would take the same port (a wildcard address covers every
/// address of its family; port 0 is always a new port).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    // An IPv6 wildcard socket takes IPv4 connections too (dual stack).
    let v6_wildcard = |addr: SocketAddr| addr.is_ipv6() && addr.ip().is_unspecified();
    a.ip() == b.ip()
        || v6_wildcard(a)
        || v6_wildcard(b)
        || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses() {
        let net: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: IpNet = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.1".parse().unwrap()));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("example.com".parse::<IpNet>().is_err());
    }

    fn tls_listener(tls: &str) -> ListenerConfig {
        toml::from_str(&format!(
            "name = \"l\"\nkind = \"mqtts\"\nbind = \"127.0.0.1:0\"\ntls = {tls}\n"
        ))
        .unwrap()
    }

    /// Review finding 5: use_identity_as_username only with required client certificates;
    /// finding 13: wildcard SNI names (never matched) are refused, naming the listener.
    #[test]
    fn tls_settings_that_cannot_work_safely_are_refused() {
        let required = tls_listener(
            r#"{ cert = "c", key = "k", client_ca = "ca", client_auth = "required", use_identity_as_username = "cn" }"#,
        );
        assert_eq!(required.validate(), Ok(()));
        let optional = tls_listener(
            r#"{ cert = "c", key = "k", client_ca = "ca", client_auth = "optional", use_identity_as_username = "san" }"#,
        );
        let error = optional.validate().unwrap_err();
        assert!(
            error.starts_with("listener \"l\"")
                && error.contains("use_identity_as_username needs client_auth = \"required\""),
            "{error}"
        );
        let wildcard = tls_listener(
            r#"{ cert = "c", key = "k", sni = [{ names = ["a.example.org", "*.example.org"], cert = "s", key = "t" }] }"#,
        );
        let error = wildcard.validate().unwrap_err();
        assert!(
            error.starts_with("listener \"l\"") && error.contains("\"*.example.org\""),
            "{error}"
        );
    }

    #[test]
    fn overlapping_addresses() {
        let addr = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert!(overlaps(addr("0.0.0.0:1883"), addr("127.0.0.1:1883")));
        assert!(!overlaps(addr("0.0.0.0:1883"), addr("127.0.0.1:1884")));
        assert!(!overlaps(addr("127.0.0.1:0"), addr("127.0.0.1:0")));
        assert!(overlaps(addr("[::]:1883"), addr("127.0.0.1:1883")));
        assert!(!overlaps(addr("[::1]:1883"), addr("127.0.0.1:1883")));
    }
}
