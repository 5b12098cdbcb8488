//! Bridges (issue 15): Tern connects to another broker as a client and carries chosen topics
//! in either direction. The local side is an in-process MQTT 5 client of the broker core
//! ([`local`]): its persistent session is the bridge's bounded, stored queue, and every rule
//! of the core (durability, QoS flows, limits, access rules) holds for bridged traffic. The
//! remote side is tern-client.

mod config;
mod local;
mod mapping;

pub use config::{
    BridgeConfig, BridgeDirection, BridgeProtocol, BridgeTls, TopicRule, local_client_id,
    validate_all,
};
