//! What the transport vouches for reaches authentication and authorisation: the listener a
//! client came through and its verified client certificate; a listener that takes the
//! username from the certificate (`use_identity_as_username`) replaces the CONNECT's.

mod common;

use std::sync::{Arc, Mutex};

use common::{Net, V5, V311, connect_packet, text};
use tern_broker::{
    AuthDecision, Authenticator, Authorizer, BrokerConfig, CertificateIdentity, ClientInfo,
    Credentials, Hooks, Principal, TransportIdentity,
};
use tern_codec::{QoS, ReasonCode};

/// Records what authentication and authorisation were given.
#[derive(Default)]
struct Seen {
    credentials: Mutex<Vec<(Option<String>, Option<TransportIdentity>)>>,
    clients: Mutex<Vec<ClientInfo>>,
}

impl Authenticator for Seen {
    fn authenticate(&self, credentials: &Credentials<'_>) -> AuthDecision {
        self.credentials.lock().unwrap().push((
            credentials.username.map(str::to_owned),
            credentials.transport.cloned(),
        ));
        // Only the certificate's holder may be "sensor-7".
        match (credentials.username, credentials.transport) {
            (Some("sensor-7"), Some(identity)) if identity.certificate.is_some() => {
                AuthDecision::Allow(Principal::from_credentials(credentials))
            }
            (Some("sensor-7"), _) => AuthDecision::Deny(ReasonCode::NotAuthorized),
            _ => AuthDecision::Allow(Principal::from_credentials(credentials)),
        }
    }
}

impl Authorizer for Seen {
    fn may_publish(&self, client: &ClientInfo, _: &str) -> bool {
        self.clients.lock().unwrap().push(client.clone());
        true
    }

    fn may_subscribe(&self, _: &ClientInfo, _: &str) -> bool {
        true
    }
}

fn net(seen: &Arc<Seen>) -> Net {
    Net::with_hooks(
        BrokerConfig::default(),
        Hooks {
            authenticator: seen.clone(),
            authorizer: seen.clone(),
            enhanced: Vec::new(),
        },
    )
}

fn certified(listener: &str, username: Option<&str>) -> TransportIdentity {
    TransportIdentity {
        listener: Some(Arc::from(listener)),
        certificate: Some(CertificateIdentity {
            common_name: Some("sensor-7".to_owned()),
            alt_names: vec!["sensor-7.example".to_owned()],
        }),
        username: username.map(text),
    }
}

#[test]
fn the_certificate_and_listener_reach_authentication_and_authorisation() {
    let seen = Arc::new(Seen::default());
    let net = net(&seen);
    let identity = certified("devices", None);
    let mut client = net.open_with_transport(V5, Some(identity.clone()));
    let mut connect = connect_packet(V5, "c1");
    connect.username = Some(text("alice"));
    client.send(tern_codec::Packet::Connect(Box::new(connect)));
    client.received();
    client.publish("t", QoS::AtMostOnce, b"x");
    assert_eq!(
        seen.credentials.lock().unwrap().as_slice(),
        &[(Some("alice".to_owned()), Some(identity))]
    );
    let clients = seen.clients.lock().unwrap();
    assert_eq!(clients[0].listener(), Some("devices"));
    assert_eq!(clients[0].username.as_deref(), Some("alice"));
}

#[test]
fn use_identity_as_username_replaces_the_connects_username() {
    let seen = Arc::new(Seen::default());
    let net = net(&seen);
    // Claiming the name without the certificate is refused (CONNACK 0x87 Not authorized).
    let mut forged = connect_packet(V311, "c2");
    forged.username = Some(text("sensor-7"));
    let (_, connack) = net.connect(forged);
    assert_eq!(connack.reason_code, ReasonCode::NotAuthorized);

    let mut client = net.open_with_transport(V311, Some(certified("devices", Some("sensor-7"))));
    let mut connect = connect_packet(V311, "c3");
    connect.username = Some(text("somebody-else"));
    client.send(tern_codec::Packet::Connect(Box::new(connect)));
    match client.next() {
        Some(tern_codec::Packet::ConnAck(connack)) => {
            assert_eq!(connack.reason_code, ReasonCode::Success)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    client.publish("t", QoS::AtMostOnce, b"x");
    let clients = seen.clients.lock().unwrap();
    assert_eq!(clients[0].username.as_deref(), Some("sensor-7"));
}
