//! The plug-in points of the core: authentication of a CONNECT and authorisation of each publish
//! and subscribe. The server plugs in password files, ACLs or remote back ends; the core only
//! sees these traits. The defaults let every client in and allow everything but publishing to
//! the broker's own `$` topics.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tern_codec::{MqttStr, ProtocolVersion, ReasonCode};

/// What the transport knows of a client before its CONNECT: the listener it came through and,
/// over TLS with a client certificate, the certificate's verified identity. The server sets it
/// when it creates the connection; a plain TCP connection on the default listener has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportIdentity {
    /// The name of the listener (`[[listeners]] name`).
    pub listener: Option<Arc<str>>,
    /// The client certificate the TLS handshake verified, if the client sent one.
    pub certificate: Option<CertificateIdentity>,
    /// A username the listener takes from the certificate (`use_identity_as_username`): it
    /// replaces the one in CONNECT, and no password is needed to prove it.
    pub username: Option<MqttStr>,
}

/// The identity of a verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateIdentity {
    /// The subject's common name (CN), if it has one.
    pub common_name: Option<String>,
    /// The subject alternative names: DNS names, e-mail addresses, URIs and IP addresses, as
    /// text.
    pub alt_names: Vec<String>,
}

/// What a client presents in its CONNECT, and what its transport vouches for.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub client_id: &'a str,
    /// The CONNECT's username, or the one the transport took from the client certificate.
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: Option<SocketAddr>,
    pub protocol: ProtocolVersion,
    /// The listener and the client certificate, if the transport knows them.
    pub transport: Option<&'a TransportIdentity>,
}

/// Decides whether a CONNECT may proceed.
pub trait Authenticator: Send + Sync {
    /// `Err` carries the CONNACK reason: usually `BadUserNameOrPassword` or `NotAuthorized`.
    fn authenticate(&self, credentials: &Credentials<'_>) -> Result<(), ReasonCode>;
}

/// Who is asking, for authorisation decisions.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub client_id: MqttStr,
    pub username: Option<MqttStr>,
    pub peer: Option<SocketAddr>,
    /// The name of the listener the client connected through, if it has one.
    pub listener: Option<Arc<str>>,
}

/// Decides, per topic, what an authenticated client may do. Topics that begin with `$` (such as
/// `$SYS/...`) are the broker's [MQTT-4.7.2-1]: the core treats them like any other topic, so
/// an authorizer that opens one to clients (an access rule) is obeyed; [`DefaultAccess`]
/// refuses them all.
pub trait Authorizer: Send + Sync {
    fn may_publish(&self, client: &ClientInfo, topic: &str) -> bool;
    fn may_subscribe(&self, client: &ClientInfo, filter: &str) -> bool;
}

/// Lets everyone in and allows everything, `$` topics included.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

/// The default authorizer: every subscription, and every publish except to a topic that begins
/// with `$`, which clients may not write into (a client could otherwise forge `$SYS` values).
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultAccess;

impl DefaultAccess {
    /// Whether `topic` is one of the broker's own (`$SYS/...` and the like).
    pub fn is_reserved(topic: &str) -> bool {
        topic.starts_with('$')
    }
}

impl Authorizer for DefaultAccess {
    fn may_publish(&self, _: &ClientInfo, topic: &str) -> bool {
        !DefaultAccess::is_reserved(topic)
    }

    fn may_subscribe(&self, _: &ClientInfo, _: &str) -> bool {
        true
    }
}

impl Authenticator for AllowAll {
    fn authenticate(&self, _: &Credentials<'_>) -> Result<(), ReasonCode> {
        Ok(())
    }
}

impl Authorizer for AllowAll {
    fn may_publish(&self, _: &ClientInfo, _: &str) -> bool {
        true
    }

    fn may_subscribe(&self, _: &ClientInfo, _: &str) -> bool {
        true
    }
}

/// The result of one step of an enhanced authentication exchange (MQTT 5 section 4.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send this Authentication Data to the client in AUTH 0x18 and wait for its answer.
    Continue(Option<Bytes>),
    /// Authenticated; the data (if any) goes to the client in CONNACK or AUTH 0x00.
    Success(Option<Bytes>),
    /// Refused with this reason code (CONNACK, or DISCONNECT during re-authentication).
    Failure(ReasonCode),
}

/// One running exchange of an enhanced authentication method, for one connection.
pub trait AuthExchange: Send {
    /// Takes the client's Authentication Data (from CONNECT or AUTH) and decides the next step.
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep;
}

/// An enhanced authentication method (such as SCRAM), named by its Authentication Method.
pub trait EnhancedAuthenticator: Send + Sync {
    /// The Authentication Method this implements, as clients name it.
    fn method(&self) -> &str;
    /// Starts an exchange for a client (at CONNECT, or at re-authentication).
    fn begin(&self, client_id: &str, username: Option<&str>) -> Box<dyn AuthExchange>;
}

/// All the plug-ins of the core.
#[derive(Clone)]
pub struct Hooks {
    pub authenticator: Arc<dyn Authenticator>,
    pub authorizer: Arc<dyn Authorizer>,
    pub enhanced: Vec<Arc<dyn EnhancedAuthenticator>>,
}

impl Default for Hooks {
    fn default() -> Hooks {
        Hooks {
            authenticator: Arc::new(AllowAll),
            authorizer: Arc::new(DefaultAccess),
            enhanced: Vec::new(),
        }
    }
}

impl Hooks {
    /// The enhanced authenticator for `method`, if one is configured.
    pub fn enhanced_for(&self, method: &str) -> Option<&Arc<dyn EnhancedAuthenticator>> {
        self.enhanced.iter().find(|auth| auth.method() == method)
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let methods: Vec<&str> = self.enhanced.iter().map(|auth| auth.method()).collect();
        f.debug_struct("Hooks")
            .field("enhanced", &methods)
            .finish_non_exhaustive()
    }
}
