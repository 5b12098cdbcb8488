//! The plug-in points of the core: authentication of a CONNECT and authorisation of each publish
//! and subscribe. The server plugs in password files, ACLs or remote back ends; the core only
//! sees these traits. The defaults let every client in and allow everything but publishing to
//! the broker's own `$` topics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

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

/// The start of the client identifiers reserved for the server's bridges (`$bridge/<name>`):
/// only a connection whose transport is that bridge's (listener
/// [`BRIDGE_LISTENER_PREFIX`]`<name>`) may use one; a network client is refused (CONNACK 0x85,
/// 3.1.1: 2), so it can neither take a bridge's session over nor read its queue.
pub const BRIDGE_CLIENT_ID_PREFIX: &str = "$bridge/";

/// The start of the transport's listener name of a bridge's in-process connection
/// (`bridge:<name>`); no configured listener may be named so.
pub const BRIDGE_LISTENER_PREFIX: &str = "bridge:";

/// The identity of a verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateIdentity {
    /// The subject's common name (CN), if it has one.
    pub common_name: Option<String>,
    /// The subject alternative names: DNS names, e-mail addresses, URIs and IP addresses, as
    /// text.
    pub alt_names: Vec<String>,
}

/// What a client presents in its CONNECT, and what its transport vouches for. (Its `Debug`
/// leaves the password out: no secret reaches a log.)
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    pub client_id: &'a str,
    /// The CONNECT's username, or the one the transport took from the client certificate.
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: Option<SocketAddr>,
    pub protocol: ProtocolVersion,
    /// The listener and the client certificate, if the transport knows them.
    pub transport: Option<&'a TransportIdentity>,
    /// The MQTT 5 Authentication Method of CONNECT, if any: an enhanced authentication
    /// (section 4.12) follows an Allow, so a plain authenticator may let such a CONNECT through
    /// without a password (the exchange proves who the client is) or refuse a method it does
    /// not offer (0x8C Bad authentication method).
    pub authentication_method: Option<&'a str>,
}

/// What an authenticator answers for a CONNECT.
#[derive(Debug, Clone)]
pub enum AuthDecision {
    /// Authenticated as this principal.
    Allow(Principal),
    /// Refused; the code goes in CONNACK (usually `BadUserNameOrPassword` or `NotAuthorized`).
    Deny(ReasonCode),
    /// The answer comes later (a remote service, a hash verified on a pool): the connection
    /// waits, taking no input, until [`crate::Connection::handle_auth_result`] (or
    /// [`AuthCompletion::complete`]) brings it, or the connect timeout refuses it.
    Defer,
}

/// Decides whether a CONNECT may proceed. Called on the connection's thread: an answer that
/// costs more than a map lookup is [`AuthDecision::Defer`]red and given by the server later.
pub trait Authenticator: Send + Sync {
    fn authenticate(&self, credentials: &Credentials<'_>) -> AuthDecision;
}

/// The permissions one authenticated client holds, computed once when it is authenticated (a
/// user's compiled access rules, a token's claims) and kept in its [`Principal`]: the checks of
/// the publish path are a call on this, with no lookup of the client and no I/O.
pub trait ClientAccess: Send + Sync + std::fmt::Debug {
    /// Whether the client may publish to `topic` (and set a will on it).
    fn may_write(&self, topic: &str) -> bool;
    /// Whether the client may receive a message published to `topic`.
    fn may_read(&self, topic: &str) -> bool;
    /// What a subscription to `filter` may read: all of it, none of it, or part of it.
    fn classify(&self, filter: &str) -> FilterAccess;
}

/// How much of what a subscription filter matches the client may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterAccess {
    /// Every topic the filter matches: delivered with no further check.
    Granted,
    /// None: the subscription is refused (SUBACK 0x80 in 3.1.1, 0x87 in MQTT 5).
    Denied,
    /// Some: granted, and each message routed to it is checked with
    /// [`Authorizer::may_read`]. Only such subscriptions pay a check per message.
    Partial,
}

/// Who a client is once authenticated: what the core knows of its connection and what the
/// authenticator adds (its permissions, when its credentials expire). It stays with the
/// connection and is what the [`Authorizer`] is asked about.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The client identifier in use (an assigned one included).
    pub client_id: MqttStr,
    /// The user the client is authenticated as (the CONNECT's, or the certificate's, or what
    /// the authenticator decided, e.g. a token's subject).
    pub username: Option<MqttStr>,
    pub peer: Option<SocketAddr>,
    /// What the transport vouched for (the listener's name, the client certificate's
    /// identity), shared with the connection: see [`Principal::listener`] and
    /// [`Principal::certificate`].
    pub transport: Option<Arc<TransportIdentity>>,
    /// The client's own permissions, if its authenticator computed them (see
    /// [`ClientAccess`] and [`PrincipalAccess`]).
    pub access: Option<Arc<dyn ClientAccess>>,
    /// When the credentials stop being valid (a token's `exp`, converted by the server to the
    /// clock the core is driven with): the connection is then closed (MQTT 5 DISCONNECT 0x87).
    pub expires_at: Option<Instant>,
}

/// The former name of [`Principal`].
pub type ClientInfo = Principal;

impl Principal {
    /// The principal the credentials describe, with no permissions of its own and no expiry.
    pub fn from_credentials(credentials: &Credentials<'_>) -> Principal {
        Principal {
            client_id: MqttStr::try_from(credentials.client_id).unwrap_or_default(),
            username: credentials
                .username
                .and_then(|name| MqttStr::try_from(name).ok()),
            peer: credentials.peer,
            transport: credentials.transport.cloned().map(Arc::new),
            access: None,
            expires_at: None,
        }
    }

    /// The name of the listener the client connected through, if it has one.
    pub fn listener(&self) -> Option<&str> {
        self.transport.as_deref()?.listener.as_deref()
    }

    /// The certificate the client's TLS handshake verified, if any.
    pub fn certificate(&self) -> Option<&CertificateIdentity> {
        self.transport.as_deref()?.certificate.as_ref()
    }
}

/// A unique name for one deferred authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthRequestId(pub u64);

/// A deferred authentication, owned, for the server to decide off the connection's thread.
/// (Its `Debug` leaves the password out.)
pub struct AuthRequest {
    pub id: AuthRequestId,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub peer: Option<SocketAddr>,
    pub protocol: ProtocolVersion,
    pub transport: Option<Arc<TransportIdentity>>,
    /// The MQTT 5 Authentication Method of CONNECT, if any: its exchange follows an Allow.
    pub authentication_method: Option<String>,
    pub(crate) completion: AuthCompletion,
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.map(|_| "<redacted>"))
            .field("peer", &self.peer)
            .field("protocol", &self.protocol)
            .field("transport", &self.transport)
            .field("authentication_method", &self.authentication_method)
            .finish()
    }
}

impl std::fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthRequest")
            .field("id", &self.id)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("peer", &self.peer)
            .field("protocol", &self.protocol)
            .field("transport", &self.transport)
            .field("authentication_method", &self.authentication_method)
            .finish_non_exhaustive()
    }
}

impl AuthRequest {
    /// The request as the synchronous [`Authenticator`] sees credentials.
    pub fn credentials(&self) -> Credentials<'_> {
        Credentials {
            client_id: &self.client_id,
            username: self.username.as_deref(),
            password: self.password.as_deref(),
            peer: self.peer,
            protocol: self.protocol,
            transport: self.transport.as_deref(),
            authentication_method: self.authentication_method.as_deref(),
        }
    }

    /// A handle that hands the answer back from anywhere (another task, a thread pool).
    pub fn completion(&self) -> AuthCompletion {
        self.completion.clone()
    }

    /// Whether the connection still waits for the answer (see [`AuthCompletion::is_wanted`]).
    pub fn is_wanted(&self) -> bool {
        self.completion.is_wanted()
    }
}

/// Hands the answer to a deferred authentication back to its connection, which is woken and
/// takes it (in `poll_transmit`). An answer for a connection that has gone, or that timed out,
/// is dropped.
#[derive(Debug, Clone)]
pub struct AuthCompletion {
    pub(crate) broker: std::sync::Weak<crate::Broker>,
    pub(crate) id: AuthRequestId,
}

impl AuthCompletion {
    pub fn id(&self) -> AuthRequestId {
        self.id
    }

    /// Whether the connection still waits for this answer (see [`crate::Broker::is_auth_wanted`]).
    pub fn is_wanted(&self) -> bool {
        self.broker
            .upgrade()
            .is_some_and(|broker| broker.is_auth_wanted(self.id))
    }

    pub fn complete(self, result: Result<Principal, ReasonCode>) {
        if let Some(broker) = self.broker.upgrade() {
            broker.complete_auth(self.id, result);
        }
    }
}

/// Decides, per topic, what an authenticated client may do. Topics that begin with `$` (such as
/// `$SYS/...`) are the broker's [MQTT-4.7.2-1]: the core treats them like any other topic, so
/// an authorizer that opens one to clients (an access rule) is obeyed; [`DefaultAccess`]
/// refuses them all.
///
/// Publishing (and wills, when set and when published) asks [`Authorizer::may_publish`];
/// SUBSCRIBE asks [`Authorizer::classify`] once per filter, and only a
/// [`FilterAccess::Partial`] subscription asks [`Authorizer::may_read`] per message.
pub trait Authorizer: Send + Sync {
    fn may_publish(&self, client: &Principal, topic: &str) -> bool;
    /// Whether the client may subscribe to `filter` at all (see [`Authorizer::classify`]).
    fn may_subscribe(&self, client: &Principal, filter: &str) -> bool;
    /// What a subscription to `filter` may read. The default grants all of it when
    /// [`Authorizer::may_subscribe`] allows it, and nothing otherwise.
    fn classify(&self, client: &Principal, filter: &str) -> FilterAccess {
        if self.may_subscribe(client, filter) {
            FilterAccess::Granted
        } else {
            FilterAccess::Denied
        }
    }
    /// Whether a message on `topic` may go to a [`FilterAccess::Partial`] subscription.
    fn may_read(&self, _client: &Principal, _topic: &str) -> bool {
        true
    }
}

/// The authorizer of clients whose permissions are in their principal
/// ([`Principal::access`], computed by the authenticator when the client connected): asks
/// them, and for a client without any, `fallback`. This is how the server plugs in access
/// rules compiled per client (an ACL file's, a token's claims).
#[derive(Debug, Clone)]
pub struct PrincipalAccess<F = DefaultAccess> {
    pub fallback: F,
}

impl Default for PrincipalAccess {
    fn default() -> Self {
        PrincipalAccess {
            fallback: DefaultAccess,
        }
    }
}

impl<F: Authorizer> Authorizer for PrincipalAccess<F> {
    fn may_publish(&self, client: &Principal, topic: &str) -> bool {
        match &client.access {
            Some(access) => access.may_write(topic),
            None => self.fallback.may_publish(client, topic),
        }
    }

    fn may_subscribe(&self, client: &Principal, filter: &str) -> bool {
        self.classify(client, filter) != FilterAccess::Denied
    }

    fn classify(&self, client: &Principal, filter: &str) -> FilterAccess {
        match &client.access {
            Some(access) => access.classify(filter),
            None => self.fallback.classify(client, filter),
        }
    }

    fn may_read(&self, client: &Principal, topic: &str) -> bool {
        match &client.access {
            Some(access) => access.may_read(topic),
            None => self.fallback.may_read(client, topic),
        }
    }
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
    fn authenticate(&self, credentials: &Credentials<'_>) -> AuthDecision {
        AuthDecision::Allow(Principal::from_credentials(credentials))
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

    /// Called once after [`AuthStep::Success`], with the principal the connection will have:
    /// at CONNECT, the one the plain [`Authenticator`] allowed; at re-authentication, the
    /// connection's current one. The exchange sets what it proved (the username it
    /// authenticated, that user's [`Principal::access`], a new [`Principal::expires_at`]), or
    /// refuses with a code. The core keeps the client id, peer and transport as they are, and
    /// at re-authentication refuses (DISCONNECT 0x87 Not authorized) a principal whose
    /// username differs from the connection's: a connection does not change users. The
    /// default changes nothing.
    fn authenticated(&mut self, principal: &mut Principal) -> Result<(), ReasonCode> {
        let _ = principal;
        Ok(())
    }
}

/// An enhanced authentication method (such as SCRAM), named by its Authentication Method.
pub trait EnhancedAuthenticator: Send + Sync {
    /// The Authentication Method this implements, as clients name it.
    fn method(&self) -> &str;
    /// Starts an exchange for a client (at CONNECT, or at re-authentication).
    fn begin(&self, client_id: &str, username: Option<&str>) -> Box<dyn AuthExchange>;

    /// Starts an exchange for a client known by this principal (at CONNECT, the plain
    /// authenticator's; at re-authentication, the connection's): what the core calls. The
    /// default calls [`EnhancedAuthenticator::begin`]; an authenticator that depends on the
    /// listener (or anything else of the principal) overrides this.
    fn begin_for(&self, principal: &Principal) -> Box<dyn AuthExchange> {
        self.begin(&principal.client_id, principal.username.as_deref())
    }
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
