//! `tern passwd` through the binary (issue 12: "`tern passwd FILE USER` adds or changes a user
//! (prompt, or `-b` batch), `-D` deletes"): argon2id lines that tern-auth verifies, files
//! written with mode 0600, a `mosquitto_passwd` file edited without touching its other lines.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use tern_auth::{HashScheme, PasswordFile};

/// A line written by the real `mosquitto_passwd` 2.0.11 (password `alice-secret`).
const ALICE: &str = "alice:$7$101$yXEnakcxPrZ0zOg1$XLw2qSoOKPgo3P5QCgH/Iawvvgs/+ci5Gm6G2N2fyLfpQOui0Csk0Sc6D8u62Mfn5w+KxYlMlx/BKIFg31VhCw==";

fn path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-passwd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

fn tern(args: &[&str], file: &PathBuf, stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("passwd")
        .args(&args[..args.iter().position(|a| *a == "FILE").unwrap()])
        .arg(file)
        .args(&args[args.iter().position(|a| *a == "FILE").unwrap() + 1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may refuse before reading: a closed pipe is not the test's failure.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn parse(file: &PathBuf) -> PasswordFile {
    PasswordFile::parse(&std::fs::read_to_string(file).unwrap()).unwrap()
}

/// `-c -b` creates the file with an argon2id line, mode 0600; the hash verifies.
#[test]
fn batch_create_writes_an_argon2id_line_with_mode_0600() {
    let file = path("create");
    let output = tern(&["-c", "-b", "FILE", "erin", "s3cret pass"], &file, "");
    assert!(output.status.success(), "{}", stderr(&output));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("erin:$argon2id$v=19$m=19456,t=2,p=1$"),
        "{text}"
    );
    assert!(text.ends_with('\n') && text.lines().count() == 1, "{text}");
    let passwords = parse(&file);
    assert!(passwords.check("erin", b"s3cret pass"));
    assert!(!passwords.check("erin", b"s3cret"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

/// A file made by `mosquitto_passwd`, with a comment: adding and changing users keeps every
/// other line byte for byte and in order; `-D` deletes.
#[test]
fn editing_a_mosquitto_file_keeps_its_other_lines() {
    let file = path("mosquitto");
    std::fs::write(&file, format!("# our users\n{ALICE}\nbob:$6$old$old\n")).unwrap();

    let output = tern(&["-b", "FILE", "bob", "bob-new"], &file, "");
    assert!(output.status.success(), "{}", stderr(&output));
    let output = tern(&["-b", "FILE", "carol", "carol-pw"], &file, "");
    assert!(output.status.success(), "{}", stderr(&output));

    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0], "# our users");
    assert_eq!(lines[1], ALICE);
    assert!(lines[2].starts_with("bob:$argon2id$"), "{text}");
    assert!(lines[3].starts_with("carol:$argon2id$"), "{text}");
    let passwords = parse(&file);
    assert!(passwords.check("alice", b"alice-secret"));
    assert!(passwords.check("bob", b"bob-new"));
    assert!(passwords.check("carol", b"carol-pw"));
    assert_eq!(
        passwords.lookup("alice").unwrap().scheme(),
        HashScheme::MosquittoPbkdf2Sha512
    );

    let output = tern(&["-D", "FILE", "bob"], &file, "");
    assert!(output.status.success(), "{}", stderr(&output));
    let passwords = parse(&file);
    assert!(passwords.lookup("bob").is_none());
    assert_eq!(passwords.len(), 2);
    // Deleting someone who is not there is an error, and changes nothing.
    let before = std::fs::read_to_string(&file).unwrap();
    let output = tern(&["-D", "FILE", "bob"], &file, "");
    assert!(!output.status.success());
    assert!(stderr(&output).contains("not in"), "{}", stderr(&output));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
}

/// Without `-b` the password is asked twice (read from standard input when it is not a
/// terminal); two different answers are refused and the file is left as it was.
#[test]
fn the_prompt_asks_twice_and_refuses_a_mismatch() {
    let file = path("prompt");
    let output = tern(&["-c", "FILE", "dan"], &file, "typed pw\ntyped pw\n");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(parse(&file).check("dan", b"typed pw"));

    let before = std::fs::read_to_string(&file).unwrap();
    let output = tern(&["FILE", "dan"], &file, "one\ntwo\n");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("do not match"),
        "{}",
        stderr(&output)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
}

/// Mistakes are refused with a message, and nothing is written.
#[test]
fn mistakes_are_refused_without_writing() {
    let file = path("mistakes");
    for (args, stdin, message) in [
        (&["-b", "FILE", "x", "pw"][..], "", "no such file"),
        (&["-c", "-b", "FILE", "x"][..], "", "-b needs the password"),
        (&["-c", "FILE", "x", "pw"][..], "", "needs -b"),
        (&["-c", "-b", "FILE", "a:b", "pw"][..], "", "`:`"),
        (&["-c", "-b", "FILE", "x", ""][..], "", "empty"),
        (&["-c", "FILE", "x"][..], "", "end of input"),
    ] {
        let output = tern(args, &file, stdin);
        assert!(!output.status.success(), "{args:?}");
        assert!(
            stderr(&output).contains(message),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(!file.exists(), "{args:?}");
    }
}

/// Issue 12 (SCRAM: "credentials for it stored by `tern passwd --scram`"): `--scram` writes a
/// `$scram$` line with the default 4096 iterations (or `--iterations`) into a
/// `mosquitto_passwd` file whose other lines stay valid; the line verifies the plain password
/// too; a non-ASCII password is refused (no SASLprep) without writing.
#[test]
fn scram_lines_beside_mosquitto_lines() {
    let file = path("scram");
    std::fs::write(&file, format!("{ALICE}\n")).unwrap();
    let output = tern(&["--scram", "-b", "FILE", "sam", "pencil"], &file, "");
    assert!(output.status.success(), "{}", stderr(&output));
    let output = tern(
        &[
            "--scram",
            "--iterations",
            "8192",
            "-b",
            "FILE",
            "tim",
            "pencil",
        ],
        &file,
        "",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], ALICE);
    assert!(lines[1].starts_with("sam:$scram$4096$"), "{text}");
    assert!(lines[2].starts_with("tim:$scram$8192$"), "{text}");
    let passwords = parse(&file);
    assert!(passwords.check("alice", b"alice-secret"));
    assert!(passwords.check("sam", b"pencil"));
    assert!(!passwords.check("sam", b"pencil2"));
    assert_eq!(passwords.lookup("sam").unwrap().scheme(), HashScheme::Scram);
    assert!(passwords.lookup("sam").unwrap().scram().is_some());
    let output = tern(&["--scram", "-b", "FILE", "uma", "caf\u{e9}"], &file, "");
    assert!(!output.status.success());
    assert!(stderr(&output).contains("ASCII"), "{}", stderr(&output));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
}
