//! Password files as other tools write them (issue 12, "Password file"): a file made by the
//! real `mosquitto_passwd` 2.0.11 (Debian 12's), hashes from the argon2 reference
//! implementation's CLI and from Python's hashlib, and the round trip of our own argon2id.
//! The passwords are throwaway test values.

use std::time::Instant;

use tern_auth::{
    Argon2Params, HashScheme, PasswordFile, StoredHash, hash_argon2id, hash_argon2id_with,
};

/// `mosquitto_passwd -c -b f alice alice-secret; mosquitto_passwd -b f bob 'p@ss:w0rd é';
/// mosquitto_passwd -H sha512 -b f carol carol-secret; mosquitto_passwd -H sha512 -b f dave ''`
const MOSQUITTO_2_0_FILE: &str = "\
alice:$7$101$yXEnakcxPrZ0zOg1$XLw2qSoOKPgo3P5QCgH/Iawvvgs/+ci5Gm6G2N2fyLfpQOui0Csk0Sc6D8u62Mfn5w+KxYlMlx/BKIFg31VhCw==
bob:$7$101$uKRxGmyf5YLF5Nt3$822IUadgy6uQ1DNdnCDIgZYBjhDZ00tHWrG8V8uRPzclYu7wkVXnLHgSR5w8eIR7rYj5Rv9NYO7aQSLggPF6MA==
carol:$6$25dgeanU9Qg15m38$4c+6JqK5B2dUibh8Twc/MXqid8klfC8xyr1cgJarXbs0ASjPWZgs6ald25wNvh+ggPzjhwrsFdw5kgY2oezJaA==
dave:$6$hRyeamkaA2Vf1i89$SAQprGOCPyi+408oWWibwFwIOYflQ8vundY3TdOyC5DP06a3LI5PzE/3flnA/XAe8xrJ0kV5btR22o6yRHvOvA==
";

/// Issue 12: "reads Mosquitto's formats as they are ... so a mosquitto_passwd file works
/// unchanged" — $7$ (its default) and $6$ (`-H sha512`), every user, right and wrong.
#[test]
fn a_mosquitto_passwd_2_0_file_works_unchanged() {
    let file = PasswordFile::parse(MOSQUITTO_2_0_FILE).unwrap();
    assert_eq!(file.len(), 4);
    for (user, password, scheme) in [
        ("alice", "alice-secret", HashScheme::MosquittoPbkdf2Sha512),
        ("bob", "p@ss:w0rd é", HashScheme::MosquittoPbkdf2Sha512),
        ("carol", "carol-secret", HashScheme::MosquittoSha512),
        ("dave", "", HashScheme::MosquittoSha512),
    ] {
        let hash = file.lookup(user).unwrap();
        assert_eq!(hash.scheme(), scheme, "{user}");
        assert!(hash.verify(password.as_bytes()), "{user}");
        assert!(!hash.verify(b"wrong"), "{user}");
        assert!(file.check(user, password.as_bytes()), "{user}");
        // The stored text reads back as it was written.
        let line = MOSQUITTO_2_0_FILE
            .lines()
            .find(|l| l.starts_with(user))
            .unwrap();
        assert_eq!(format!("{user}:{hash}"), line);
    }
    // Two $6$ users: two warnings that the hash is weak.
    assert_eq!(file.warnings().len(), 2);
    assert!(!file.check("mallory", b"alice-secret"));
}

/// "$7$ (PBKDF2-SHA512, any iteration count and salt length)": 1000 iterations and a 64-byte
/// salt (what Mosquitto 2.1 writes), computed with Python's `hashlib.pbkdf2_hmac`; and a $6$
/// with a 3-byte salt (`hashlib.sha512(password + salt)`).
#[test]
fn any_iteration_count_and_salt_length_known_answers() {
    let pbkdf2 = StoredHash::parse("$7$1000$AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==$/IRZYVIUUQLIFn9G4wPCesioM+Bp8MIxTKUS0bKr+6FtQ8C03tFbLbb3s/ufwjyXYWgFBt9bYZgoorqK4SXapQ==").unwrap();
    assert!(pbkdf2.verify(b"long-salt"));
    assert!(!pbkdf2.verify(b"long-salt "));
    let sha512 = StoredHash::parse("$6$AAEC$NwU5fy0FZu6Yryyupw/e3H9NuEGsWj1oXvofvha9nlAt4ntAOBZVclLJd41fTC1C4HwMPR/KBI3MNG/g5MXQGQ==").unwrap();
    assert!(sha512.verify(b"short-salt"));
    assert!(!sha512.verify(b"short-sal"));
}

/// `$argon2id$` PHC strings from the reference implementation (`argon2` CLI, Debian package
/// `argon2`): v=19 with one and two lanes, v=16 (argon2 1.0), a 16-byte output.
#[test]
fn argon2id_phc_strings_from_the_reference_implementation() {
    for (phc, password) in [
        (
            "$argon2id$v=19$m=1024,t=2,p=1$c2FsdHNhbHRzYWx0MTIzNA$+tN36WkumUxjWibApnNAsR+lEdc7lBfyhnPTzBtGBvQ",
            "tern-secret",
        ),
        (
            "$argon2id$v=19$m=4096,t=1,p=2$c2FsdHNhbHRzYWx0MTIzNA$ZXbX/xxrkNgFDFPvcqpFxdPqehKRbqDd9VNvrtrnrxM",
            "tern-secret",
        ),
        (
            "$argon2id$v=16$m=256,t=2,p=1$c2FsdHNhbHRzYWx0MTIzNA$YVXfPQFxXUTzHgyes6EIpNxeftq2kaXX8I4azJpy0Yg",
            "version-ten",
        ),
    ] {
        let hash = StoredHash::parse(phc).unwrap();
        assert_eq!(hash.scheme(), HashScheme::Argon2id);
        assert!(hash.verify(password.as_bytes()), "{phc}");
        assert!(!hash.verify(b"tern-secret!"), "{phc}");
        assert_eq!(hash.to_string(), phc);
    }
}

/// New hashes are argon2id with the stated default cost (m = 19 MiB, t = 2, p = 1), verify,
/// and take a bounded time (printed: `cargo test -p tern-auth --test password_file -- --nocapture`).
#[test]
fn new_hashes_are_argon2id_with_the_default_cost() {
    let start = Instant::now();
    let text = hash_argon2id(b"correct horse").unwrap();
    let hashed = start.elapsed();
    assert!(
        text.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{text}"
    );
    let hash = StoredHash::parse(&text).unwrap();
    let start = Instant::now();
    assert!(hash.verify(b"correct horse"));
    let verified = start.elapsed();
    assert!(!hash.verify(b"correct horse battery"));
    println!("argon2id m=19456 t=2 p=1: hash {hashed:?}, verify {verified:?}");

    let cheap = Argon2Params {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };
    let text = hash_argon2id_with(b"x", cheap).unwrap();
    assert!(text.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{text}");
}

/// A file of our own, mixed with Mosquitto's lines and comments.
#[test]
fn argon2id_lines_sit_beside_mosquitto_lines() {
    let cheap = Argon2Params {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };
    let erin = hash_argon2id_with("ünïcode pass".as_bytes(), cheap).unwrap();
    let text = format!("# made by tern passwd\n{MOSQUITTO_2_0_FILE}erin:{erin}\n");
    let file = PasswordFile::parse(&text).unwrap();
    assert_eq!(file.len(), 5);
    assert!(file.check("erin", "ünïcode pass".as_bytes()));
    assert!(file.check("alice", b"alice-secret"));
    assert!(!file.check("erin", b"alice-secret"));
}

/// Review of issue 12: what an unknown user costs and announces looks like the users around
/// it — the decoy hash is of the file's most common scheme (not merely the first line's), the
/// SCRAM decoys announce the iteration count most `$scram$` lines have, and their key comes
/// from the file (stable across restarts while the file is unchanged, different for another).
#[test]
fn decoys_look_like_the_users_around_them() {
    let iterations = std::num::NonZeroU32::new(8192).unwrap();
    let mut text = String::from(MOSQUITTO_2_0_FILE.lines().next().unwrap());
    text.push('\n');
    for user in ["s1", "s2", "s3"] {
        let hash = tern_auth::hash_scram(user.as_bytes(), iterations).unwrap();
        text.push_str(&format!("{user}:{hash}\n"));
    }
    let file = PasswordFile::parse(&text).unwrap();
    assert_eq!(file.scram_iterations(), Some(iterations));
    let again = PasswordFile::parse(&text).unwrap();
    assert_eq!(
        file.decoy_key(),
        again.decoy_key(),
        "stable for the same file"
    );
    let other = PasswordFile::parse(MOSQUITTO_2_0_FILE).unwrap();
    assert_ne!(file.decoy_key(), other.decoy_key());
    assert_eq!(other.scram_iterations(), None);
    // The decoy is a $scram$ hash (three of four lines): an unknown user costs a PBKDF2-SHA256
    // of 8192 iterations, as the SCRAM users do, not the $7$ of the first line.
    assert_eq!(file.decoy_scheme(), Some(HashScheme::Scram));
    assert_eq!(
        other.decoy_scheme(),
        Some(HashScheme::MosquittoPbkdf2Sha512),
        "a tie goes to the first"
    );
    assert!(!file.check("nobody", b"guess"));
}
