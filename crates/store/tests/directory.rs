//! The data directory: one broker at a time, nothing foreign, a format version, and a clear
//! error (never a panic, never a silently emptied store) when something in it is damaged.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use fjall::{Database, KeyspaceCreateOptions, PersistMode};
use tern_broker::SessionExpiry;
use tern_broker::persist::Change;
use tern_store::{Durability, Store, StoreError};

fn session(client: &str) -> Change {
    Change::Session {
        client_id: s(client),
        expiry: SessionExpiry::Never,
        online: false,
    }
}

/// A closed store holding a few sessions.
fn store_with_sessions(dir: &Path, count: usize) {
    let (store, _) = open(dir);
    commit(&store, (0..count).map(|n| session(&format!("client-{n}"))));
    store.close().unwrap();
}

/// Opens the engine directly, as another program could.
fn engine(dir: &Path) -> Database {
    Database::builder(dir.join("engine")).open().unwrap()
}

fn open_err(dir: &Path) -> StoreError {
    Store::open(dir, Durability::Process).unwrap_err()
}

#[test]
fn a_second_open_fails_while_the_first_is_open() {
    let scratch = Scratch::new("lock");
    let (first, _) = open(scratch.path());
    let error = open_err(scratch.path());
    assert!(matches!(error, StoreError::Locked { .. }), "{error}");
    let text = error.to_string();
    assert!(
        text.contains(&scratch.path().display().to_string()),
        "{text}"
    );
    assert!(
        text.contains(&format!("process {}", std::process::id())),
        "{text}"
    );

    first.close().unwrap();
    let (second, _) = open(scratch.path());
    // Dropped without close: the lock goes with it.
    drop(second);
    let (_third, _) = open(scratch.path());
}

#[test]
fn a_directory_with_foreign_files_is_refused_and_left_alone() {
    let scratch = Scratch::new("foreign");
    fs::create_dir_all(scratch.path()).unwrap();
    fs::write(scratch.path().join("notes.txt"), "mine").unwrap();
    let error = open_err(scratch.path());
    assert!(
        matches!(&error, StoreError::Foreign { entry, .. } if entry == "notes.txt"),
        "{error}"
    );
    assert!(error.to_string().contains("not a Tern data directory"));
    let entries: Vec<_> = fs::read_dir(scratch.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "nothing was written");
}

#[test]
fn another_programs_engine_database_is_refused() {
    let scratch = Scratch::new("other-db");
    {
        let db = engine(scratch.path());
        let items = db
            .keyspace("items", KeyspaceCreateOptions::default)
            .unwrap();
        items.insert("a", "b").unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }
    let error = open_err(scratch.path());
    assert!(matches!(error, StoreError::Foreign { .. }), "{error}");
    assert!(error.to_string().contains("items"), "{error}");
}

#[test]
fn data_without_a_format_version_is_refused() {
    let scratch = Scratch::new("no-version");
    store_with_sessions(scratch.path(), 3);
    {
        let db = engine(scratch.path());
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).unwrap();
        meta.remove("format_version").unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }
    let error = open_err(scratch.path());
    assert!(
        matches!(error, StoreError::MissingVersion { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("move it away"), "{error}");
}

#[test]
fn an_unknown_format_version_is_refused() {
    let scratch = Scratch::new("version");
    store_with_sessions(scratch.path(), 1);
    {
        let db = engine(scratch.path());
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).unwrap();
        meta.insert("format_version", 99u32.to_be_bytes()).unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }
    let error = open_err(scratch.path());
    match &error {
        StoreError::UnsupportedVersion {
            found, expected, ..
        } => {
            assert_eq!(found, "99");
            assert_eq!(*expected, tern_store::STORE_FORMAT_VERSION);
        }
        other => panic!("unexpected {other}"),
    }
    assert!(error.to_string().contains("version 99"), "{error}");
}

#[test]
fn a_corrupt_value_names_its_keyspace_and_key() {
    let scratch = Scratch::new("corrupt-value");
    store_with_sessions(scratch.path(), 3);
    {
        let db = engine(scratch.path());
        let sessions = db
            .keyspace("sessions", KeyspaceCreateOptions::default)
            .unwrap();
        sessions.insert("client-1", [1u8, 9, 9]).unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }
    let error = open_err(scratch.path());
    match &error {
        StoreError::Corrupt { keyspace, key, .. } => {
            assert_eq!(*keyspace, "sessions");
            assert_eq!(key, "client-1");
        }
        other => panic!("unexpected {other}"),
    }
    let text = error.to_string();
    assert!(text.contains("restore it from a backup"), "{text}");
}

#[test]
fn a_corrupt_key_is_an_error_too() {
    let scratch = Scratch::new("corrupt-key");
    store_with_sessions(scratch.path(), 1);
    {
        let db = engine(scratch.path());
        let queue = db
            .keyspace("queue", KeyspaceCreateOptions::default)
            .unwrap();
        queue.insert(b"client-0\0abc".as_slice(), [1u8]).unwrap();
        db.persist(PersistMode::SyncAll).unwrap();
    }
    let error = open_err(scratch.path());
    assert!(
        matches!(&error, StoreError::Corrupt { keyspace: "queue", key, .. } if key == "client-0\\x00abc"),
        "{error}"
    );
}

/// The active journal file and the length of its written part (it is preallocated with zeros).
fn journal(dir: &Path) -> (PathBuf, u64) {
    let mut journals: Vec<PathBuf> = fs::read_dir(dir.join("engine"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jnl"))
        .collect();
    journals.sort();
    let path = journals.pop().unwrap();
    let bytes = fs::read(&path).unwrap();
    let written = bytes
        .iter()
        .rposition(|&byte| byte != 0)
        .map_or(0, |at| at + 1);
    (path, written as u64)
}

#[test]
fn a_journal_cut_in_half_recovers_an_older_consistent_state() {
    let scratch = Scratch::new("truncated-journal");
    {
        let (store, _) = open(scratch.path());
        for n in 0..100 {
            commit(&store, [session(&format!("client-{n:03}"))]);
        }
        store.close().unwrap();
    }
    let (path, written) = journal(scratch.path());
    assert!(written > 0);
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(written / 2)
        .unwrap();

    // Indistinguishable from a crash that lost the end of the journal: fjall drops the torn
    // batch and everything after it; what remains is a prefix of the commits, in order.
    let (store, recovered) = open(scratch.path());
    println!(
        "journal cut from {written} to {} bytes: {} journal bytes dropped (the torn batch)",
        written / 2,
        store.load_report().journal_bytes_dropped
    );
    let names: Vec<String> = recovered
        .sessions
        .iter()
        .map(|session| session.client_id.to_string())
        .collect();
    println!("{} of 100 sessions recovered", names.len());
    assert!(names.len() < 100);
    let expected: Vec<String> = (0..names.len()).map(|n| format!("client-{n:03}")).collect();
    assert_eq!(names, expected);
}

#[test]
fn garbage_in_the_journal_is_survived_or_reported() {
    let scratch = Scratch::new("garbage-journal");
    {
        let (store, _) = open(scratch.path());
        for n in 0..100 {
            commit(&store, [session(&format!("client-{n:03}"))]);
        }
        store.close().unwrap();
    }
    let (path, written) = journal(scratch.path());
    let mut file = OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(written / 2)).unwrap();
    file.write_all(&[0xA5; 64]).unwrap();
    drop(file);

    match Store::open(scratch.path(), Durability::Process) {
        Ok((store, recovered)) => {
            // fjall stops replaying at the damaged batch: a prefix of the commits remains, and
            // the store reports how much of the journal was dropped.
            let count = recovered.sessions.len();
            let dropped = store.load_report().journal_bytes_dropped;
            println!(
                "garbage in the journal: {count} of 100 sessions recovered, {dropped} of {written} journal bytes dropped"
            );
            assert!(count < 100);
            assert!(dropped > written / 3, "{dropped} of {written}");
            for (n, session) in recovered.sessions.iter().enumerate() {
                assert_eq!(session.client_id.to_string(), format!("client-{n:03}"));
            }
        }
        Err(error) => {
            println!("garbage in the journal: {error}");
            assert!(error.to_string().contains("engine"), "{error}");
        }
    }
}

/// Flushes the store's memtables into tables with the engine directly, and returns the table
/// files of keyspace `name`.
fn flush_to_tables(dir: &Path, name: &str) -> Vec<PathBuf> {
    let db = engine(dir);
    let keyspace = db.keyspace(name, KeyspaceCreateOptions::default).unwrap();
    keyspace.rotate_memtable_and_wait().unwrap();
    let tables = keyspace.path().join("tables");
    drop(keyspace);
    drop(db);
    fs::read_dir(tables)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect()
}

#[test]
fn garbage_in_a_table_file_is_a_clear_error() {
    let scratch = Scratch::new("garbage-table");
    store_with_sessions(scratch.path(), 500);
    let tables = flush_to_tables(scratch.path(), "sessions");
    assert!(!tables.is_empty());
    for table in &tables {
        let len = fs::metadata(table).unwrap().len();
        let mut file = OpenOptions::new().write(true).open(table).unwrap();
        file.seek(SeekFrom::Start(len / 4)).unwrap();
        file.write_all(&vec![0x5A; (len / 2) as usize]).unwrap();
    }
    let error = open_err(scratch.path());
    println!("garbage in a table: {error}");
    let text = error.to_string();
    assert!(text.contains("engine"), "{text}");
    assert!(text.contains("restore it from a backup"), "{text}");
}

#[test]
fn a_truncated_table_file_is_a_clear_error() {
    let scratch = Scratch::new("truncated-table");
    store_with_sessions(scratch.path(), 500);
    let tables = flush_to_tables(scratch.path(), "sessions");
    for table in &tables {
        let len = fs::metadata(table).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(table)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
    }
    let error = open_err(scratch.path());
    println!("truncated table: {error}");
    assert!(
        error.to_string().contains("restore it from a backup"),
        "{error}"
    );
}

#[test]
fn expired_state_is_dropped_at_load_and_deleted() {
    let scratch = Scratch::new("expired");
    let now = std::time::Instant::now();
    {
        let (store, _) = open(scratch.path());
        let short = tern_broker::Message {
            expires_at: Some(now + Duration::from_millis(50)),
            ..(*message(1, "short", b"gone soon")).clone()
        };
        let long = tern_broker::Message {
            expires_at: Some(now + Duration::from_secs(3600)),
            ..(*message(2, "long", b"stays")).clone()
        };
        let short_retained = tern_broker::Message {
            id: 0,
            ..short.clone()
        };
        commit(
            &store,
            [
                Change::Session {
                    client_id: s("brief"),
                    expiry: SessionExpiry::After(Duration::from_millis(10)),
                    online: false,
                },
                Change::Subscribed {
                    client_id: s("brief"),
                    filter: s("a"),
                    record: tern_broker::SubscriptionRecord {
                        options: Default::default(),
                        identifier: None,
                    },
                },
                Change::Session {
                    client_id: s("stays"),
                    expiry: SessionExpiry::After(Duration::from_secs(3600)),
                    online: false,
                },
                Change::Message(short.clone()),
                Change::Message(long),
                Change::Queued {
                    client_id: s("stays"),
                    position: 1,
                    delivery: delivery(1),
                },
                Change::Queued {
                    client_id: s("stays"),
                    position: 2,
                    delivery: delivery(2),
                },
                Change::Queued {
                    client_id: s("brief"),
                    position: 1,
                    delivery: delivery(2),
                },
                // In flight: kept although expired, its delivery has begun.
                Change::Inflight {
                    client_id: s("stays"),
                    packet_id: 9,
                    state: tern_broker::InflightState::AwaitingPubRec,
                    delivery: delivery(1),
                },
                Change::Retained(std::sync::Arc::new(short_retained)),
                Change::Retained(message(0, "kept", b"retained")),
            ],
        );
        store.close().unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));

    let (store, recovered) = open(scratch.path());
    let report = store.load_report();
    assert_eq!(report.expired_sessions, 1);
    assert_eq!(report.expired_deliveries, 1);
    assert_eq!(report.expired_retained, 1);
    assert_eq!(report.orphans, 0);
    assert_eq!(recovered.sessions.len(), 1);
    let stays = &recovered.sessions[0];
    assert_eq!(stays.client_id, s("stays"));
    assert!(stays.offline_for >= Duration::from_millis(100));
    let queued: Vec<u64> = stays.queue.iter().map(|(_, d)| d.message.id).collect();
    assert_eq!(queued, vec![2]);
    assert_eq!(stays.inflight.len(), 1);
    assert!(
        stays.inflight[0]
            .2
            .message
            .is_expired(std::time::Instant::now())
    );
    assert_eq!(recovered.retained.len(), 1);
    assert_eq!(recovered.retained[0].topic, s("kept"));
    store.close().unwrap();
    drop(store);

    // The deletes reached the disk: nothing expired is read again.
    let (store, recovered) = open(scratch.path());
    let report = store.load_report();
    assert_eq!(
        (
            report.expired_sessions,
            report.expired_deliveries,
            report.expired_retained
        ),
        (0, 0, 0)
    );
    assert_eq!(recovered.sessions.len(), 1);
    assert_eq!(recovered.next_message_id, 3);
}
