//! `tern serve` refuses a data directory it cannot use, at start, with a message that names the
//! directory and says what to do, and exits with a failure status; the rest of the data is left
//! untouched.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!("tern-{name}-{}-{nanos}", std::process::id()))
}

/// Runs `tern serve` on `dir` and returns its exit success and its log.
fn serve(dir: &PathBuf) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_foreign_directory_is_refused_with_a_clear_error() {
    let dir = temp_dir("foreign");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("photos.db"), b"not ours").unwrap();
    let (ok, log) = serve(&dir);
    assert!(!ok, "must not start on a foreign directory");
    assert!(
        log.contains(&dir.display().to_string()),
        "names the directory: {log}"
    );
    assert!(log.contains("not a Tern data directory"), "{log}");
    assert_eq!(
        std::fs::read(dir.join("photos.db")).unwrap(),
        b"not ours",
        "left untouched"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_store_is_refused_with_a_clear_error() {
    let dir = temp_dir("damaged");
    // Create a real store, then damage every table file of its engine.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("engine").exists() {
        assert!(Instant::now() < deadline, "the store was not created");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    let mut damaged = 0;
    let mut stack = vec![dir.join("engine")];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap().path();
            if entry.is_dir() {
                stack.push(entry);
            } else if entry
                .file_name()
                .is_some_and(|name| name.to_string_lossy() != "lock")
            {
                std::fs::write(&entry, b"garbage, not a table or a journal").unwrap();
                damaged += 1;
            }
        }
    }
    assert!(damaged > 0);
    let (ok, log) = serve(&dir);
    assert!(!ok, "must not start on a damaged store");
    assert!(
        log.contains(&dir.display().to_string()),
        "names the directory: {log}"
    );
    assert!(
        log.contains("restore it from a backup") || log.contains("move it away"),
        "says what to do: {log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
