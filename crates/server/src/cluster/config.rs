//! The `[cluster]` table: this node's identity and where it meets the others (the shape is a
//! contract, see docs/configuration.md).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's identifier: unique in the cluster, never reused, not 0.
    pub node_id: u64,
    /// Where node-to-node links are accepted, `ADDR:PORT`.
    pub bind: String,
    /// The address other nodes dial (default: `bind`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Cluster addresses of other nodes: formed with when none is in a cluster yet, joined
    /// through otherwise.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// The MQTT addresses clients should use to reach this node (reported by `tern ctl
    /// cluster status` and the admin API; default: the plain listeners' addresses).
    #[serde(default)]
    pub mqtt_addrs: Vec<String>,
    /// The Raft leader's heartbeat, in milliseconds.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// How long a follower waits for the leader before it stands for election (the lower
    /// bound; the upper is twice it), in milliseconds.
    #[serde(default = "default_election_timeout_ms")]
    pub election_timeout_ms: u64,
    /// How long a cluster-wide decision (a client id's claim, a route) may wait for the
    /// cluster before the client is told the server is unavailable, in milliseconds.
    #[serde(default = "default_proposal_timeout_ms")]
    pub proposal_timeout_ms: u64,
    /// How long a node cut off from its cluster's quorum keeps its client connections before
    /// it closes them (MQTT 5: DISCONNECT 0x9C Use another server), and how long the
    /// majority waits, before it grants a client id whose owner does not answer, for that
    /// owner's lease to run out: so there are never two live connections for one client id.
    /// In milliseconds; more than twice the election timeout.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// How many messages may wait for one other node's acknowledgement (its link down or
    /// slow). From 90 % on, clients' QoS 1/2 messages with a copy for it are refused (MQTT 5
    /// 0x97; 3.x unacknowledged, closed) and QoS 0 copies dropped.
    #[serde(default = "default_outbox_max_messages")]
    pub outbox_max_messages: usize,
    /// The same bound in bytes of the messages' encodings.
    #[serde(default = "default_outbox_max_bytes")]
    pub outbox_max_bytes: usize,
    /// Mutual TLS on every node-to-node link; none: plain TCP (unauthenticated).
    #[serde(default)]
    pub tls: Option<ClusterTlsConfig>,
    /// Tests only (not in the file): maps the address of a node to the one this node dials,
    /// so that a fault-injecting relay can sit on every link.
    #[serde(skip)]
    #[doc(hidden)]
    pub relay: Option<RelayMap>,
    /// Tests only (not in the file): a Raft snapshot every this many log entries instead of
    /// 5 000, so that a test can make a node catch up from a snapshot.
    #[serde(skip)]
    #[doc(hidden)]
    pub snapshot_every: Option<u64>,
}

/// `tls = { cert, key, ca }`: this node's certificate and key, and the CA every node's
/// certificate must chain to (PEM files; relative paths from the configuration file's
/// directory).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsConfig {
    /// This node's certificate chain, its own certificate first: shown when it accepts a link
    /// and when it dials one.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, RSA or SEC1).
    pub key: PathBuf,
    /// The cluster's CA certificates: a peer's certificate must chain to one of them.
    pub ca: PathBuf,
}

/// A function from (node, advertised address) to the address to dial.
#[derive(Clone)]
#[doc(hidden)]
pub struct RelayMap(pub tern_cluster::peer::AddrMap);

impl std::fmt::Debug for RelayMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayMap")
    }
}

/// Relays are not part of the configuration's value: two configurations differing only in
/// their relay are equal.
impl PartialEq for RelayMap {
    fn eq(&self, _: &RelayMap) -> bool {
        true
    }
}

impl Eq for RelayMap {}

fn default_heartbeat_ms() -> u64 {
    200
}

fn default_election_timeout_ms() -> u64 {
    1_000
}

fn default_proposal_timeout_ms() -> u64 {
    5_000
}

fn default_lease_ms() -> u64 {
    5_000
}

fn default_outbox_max_messages() -> usize {
    100_000
}

fn default_outbox_max_bytes() -> usize {
    256 << 20
}

impl ClusterConfig {
    /// The advertised address.
    pub fn advertise(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.bind)
    }

    /// TLS file paths relative to the configuration file's directory.
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(tls) = &mut self.tls {
            for path in [&mut tls.cert, &mut tls.key, &mut tls.ca] {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("cluster.node_id must be at least 1".into());
        }
        if self.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "cluster.bind must be ADDR:PORT (an IP address), not {:?}",
                self.bind
            ));
        }
        if self.advertise().ends_with(":0") && self.advertise.is_some() {
            return Err("cluster.advertise must name a port other nodes can dial".into());
        }
        for seed in &self.seeds {
            if !seed.contains(':') {
                return Err(format!("cluster.seeds: {seed:?} must be HOST:PORT"));
            }
        }
        if self.heartbeat_ms == 0 || self.election_timeout_ms <= self.heartbeat_ms * 2 {
            return Err(
                "cluster.election_timeout_ms must be more than twice cluster.heartbeat_ms".into(),
            );
        }
        if self.lease_ms <= self.election_timeout_ms * 2 {
            return Err(
                "cluster.lease_ms must be more than twice cluster.election_timeout_ms".into(),
            );
        }
        if self.outbox_max_messages < 10 || self.outbox_max_bytes < 1 << 20 {
            return Err(
                "cluster.outbox_max_messages must be at least 10 and cluster.outbox_max_bytes \
                 at least 1048576"
                    .into(),
            );
        }
        if self.proposal_timeout_ms < 100 {
            return Err("cluster.proposal_timeout_ms must be at least 100".into());
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [("cert", &tls.cert), ("key", &tls.key), ("ca", &tls.ca)] {
                if path.as_os_str().is_empty() {
                    return Err(format!("cluster.tls.{key} must name a PEM file"));
                }
            }
        }
        Ok(())
    }
}
