//! Helpers shared by the store's integration tests: scratch directories, messages and changes,
//! and waiting for durability.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tern_broker::Seq;

use bytes::Bytes;
use tern_broker::persist::{Change, Persistence, StoredDelivery};
use tern_broker::{Message, SubscriptionIds, Wakeup};
use tern_codec::{MqttStr, QoS};
use tern_store::{Durability, Store};

/// A directory under the system's temporary directory, removed when dropped.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "tern-store-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        Scratch { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub fn s(text: &str) -> MqttStr {
    MqttStr::try_from(text.to_owned()).unwrap()
}

pub fn message(id: u64, topic: &str, payload: &[u8]) -> Arc<Message> {
    Arc::new(Message {
        cluster_id: None,
        topic: s(topic),
        payload: Bytes::copy_from_slice(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: None,
        expires_at: None,
        publisher: Some(s("publisher")),
        id,
    })
}

pub fn delivery(message_id: u64) -> StoredDelivery {
    StoredDelivery {
        message_id,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: SubscriptionIds::None,
        shared_filter: None,
    }
}

/// Submits every change and waits until the last is durable.
pub fn commit(store: &Store, changes: impl IntoIterator<Item = Change>) -> Seq {
    let mut last = Seq::NONE;
    for change in changes {
        last = store.submit(change);
    }
    wait_durable(store, last);
    last
}

pub fn wait_durable(store: &Store, seq: Seq) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.durable() < seq {
        assert!(Instant::now() < deadline, "{seq:?} not durable in time");
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn open(dir: &Path) -> (Arc<Store>, tern_broker::persist::Recovered) {
    Store::open(dir, Durability::Process).unwrap()
}

/// A wakeup that counts its calls.
#[derive(Default)]
pub struct Counter(pub AtomicUsize);

impl Wakeup for Counter {
    fn wake(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Counter {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Bytes the files under `path` occupy on disk (allocated blocks, not apparent length: the
/// engine preallocates its journal sparsely), and their apparent length.
pub fn disk_usage(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut allocated = 0;
    let mut apparent = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                allocated += meta.blocks() * 512;
                apparent += meta.len();
            }
        }
    }
    (allocated, apparent)
}

/// Allocated bytes of journal files and of everything else under `path`.
pub fn journal_and_tables(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut journals = 0;
    let mut rest = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else if entry.path().extension().is_some_and(|ext| ext == "jnl") {
                journals += meta.blocks() * 512;
            } else {
                rest += meta.blocks() * 512;
            }
        }
    }
    (journals, rest)
}
