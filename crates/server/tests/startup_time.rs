//! Start-up time with a large stored state: 100 000 persistent sessions (one subscription each)
//! and 100 000 retained messages. A benchmark, not a test: ignored by default; run with
//! `cargo test --release -p tern-server --test startup_time -- --ignored --nocapture`.
//! The target is under 5 s from `Server::bind` to a broker ready to accept connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_codec::{MqttStr, QoS, SubscriptionOptions};
use tern_server::broker::persist::{Change, Persistence};
use tern_server::broker::{Message, SessionExpiry, SubscriptionRecord};
use tern_server::{Durability, Server, ServerConfig};

const SESSIONS: usize = 100_000;
const RETAINED: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run explicitly in release mode"]
async fn startup_with_100k_sessions_and_100k_retained() {
    let dir = std::env::temp_dir().join(format!("tern-startup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let filling = Instant::now();
    {
        let (store, _) = tern_store::Store::open(&dir, tern_store::Durability::Process).unwrap();
        for n in 0..SESSIONS {
            let client_id = MqttStr::try_from(format!("device-{n}")).unwrap();
            store.submit(Change::Session {
                client_id: client_id.clone(),
                expiry: SessionExpiry::Never,
                online: false,
            });
            store.submit(Change::Subscribed {
                client_id,
                filter: MqttStr::try_from(format!("devices/{n}/commands/#")).unwrap(),
                record: SubscriptionRecord {
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                    identifier: None,
                },
            });
        }
        for n in 0..RETAINED {
            store.submit(Change::Retained(Arc::new(Message {
                cluster_id: None,
                topic: MqttStr::try_from(format!("devices/{n}/status")).unwrap(),
                payload: Bytes::from_static(b"{\"online\":true,\"firmware\":\"1.2.3\"}"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: None,
                expires_at: None,
                publisher: None,
                id: 0,
            })));
        }
        store.close().unwrap();
    }
    eprintln!("filled the store in {:?}", filling.elapsed());

    let config = ServerConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        data_dir: dir.clone(),
        durability: Durability::Process,
        ..ServerConfig::default()
    };
    let started = Instant::now();
    let server = Server::bind(config).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(server.broker().session_count(), SESSIONS);
    assert_eq!(server.broker().retained_count(), RETAINED);
    assert_eq!(server.broker().subscription_count(), SESSIONS);
    eprintln!("start-up with {SESSIONS} sessions and {RETAINED} retained messages: {elapsed:?}");
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        server.run(async {}, Duration::from_secs(1)),
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        elapsed < Duration::from_secs(5),
        "start-up took {elapsed:?}"
    );
}
