//! The bench's transports are tern-client's: MQTT over TCP, TLS, WebSockets and WebSockets over
//! TLS. The client loops (`client.rs`) are generic over a [`Connector`], so each transport gets
//! its own compiled copy of the publisher and subscriber loops, and plain TCP runs code with no
//! trace of the others (its stream split is TCP's own, its writes need no flush).

pub use tern_client::transport::{
    Connector, SplitStream as BenchStream, Tcp, Tls, TlsOptions, Transport, Ws,
};
