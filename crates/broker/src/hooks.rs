//! The plug-in points of the core: authentication of a CONNECT and authorisation of each publish
//! and subscribe. The server plugs in password files, ACLs or remote back ends; the core only
//! sees these traits. The defaults allow everything.

use std::net::SocketAddr;

use tern_codec::{MqttStr, ProtocolVersion, ReasonCode};

/// What a client presents in its CONNECT.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: Option<SocketAddr>,
    pub protocol: ProtocolVersion,
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
}

/// Decides, per topic, what an authenticated client may do.
pub trait Authorizer: Send + Sync {
    fn may_publish(&self, client: &ClientInfo, topic: &str) -> bool;
    fn may_subscribe(&self, client: &ClientInfo, filter: &str) -> bool;
}

/// Lets everyone in and allows everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

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
