//! `tern check-config FILE` checks a configuration without starting anything: 0 and "ok" for a
//! usable file; otherwise 1 and every error with the file and, where it can tell, the line.

use std::path::PathBuf;
use std::process::Command;

fn file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Exit success and everything printed.
fn check(path: &PathBuf) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

#[test]
fn a_usable_file_is_ok() {
    let path = file(
        "good.toml",
        "listen = [\"127.0.0.1:1883\"]\n\n[[listeners]]\nname = \"lan\"\nkind = \"mqtt\"\nbind = \"0.0.0.0:1884\"\nmax_connections = 10\nauth = { allow_anonymous = true }\n",
    );
    let (ok, text) = check(&path);
    assert!(ok, "{text}");
    assert!(text.contains("ok (2 listeners)"), "{text}");
}

#[test]
fn a_syntax_error_names_its_line() {
    let path = file("syntax.toml", "workers = 2\nlog_level = \"info\n");
    let (ok, text) = check(&path);
    assert!(!ok);
    assert!(text.contains("syntax.toml"), "{text}");
    assert!(text.contains("line 2"), "{text}");
}

#[test]
fn an_unknown_key_names_its_line() {
    let path = file(
        "unknown.toml",
        "workers = 2\n\n[limits]\nmax_conections = 5\n",
    );
    let (ok, text) = check(&path);
    assert!(!ok);
    assert!(
        text.contains("line 4") && text.contains("max_conections"),
        "{text}"
    );
}

#[test]
fn an_unusable_value_names_its_line() {
    let path = file("value.toml", "workers = 2\nunstored_grace_ms = 5000\n");
    let (ok, text) = check(&path);
    assert!(!ok);
    assert!(text.contains("value.toml:2: unstored_grace_ms"), "{text}");
}

#[test]
fn two_listeners_on_one_address_are_refused_naming_both() {
    let path = file(
        "clash.toml",
        "listen = [\"127.0.0.1:1883\"]\n\n[[listeners]]\nname = \"everywhere\"\nkind = \"mqtt\"\nbind = \"0.0.0.0:1883\"\n",
    );
    let (ok, text) = check(&path);
    assert!(!ok);
    assert!(
        text.contains("clash.toml:3:")
            && text.contains("listener \"everywhere\"")
            && text.contains("listen address 127.0.0.1:1883"),
        "{text}"
    );
}

#[test]
fn a_tls_listener_without_certificates_is_refused_naming_it() {
    let path = file(
        "notls.toml",
        "[[listeners]]\nname = \"devices\"\nkind = \"mqtts\"\nbind = \"0.0.0.0:8883\"\n",
    );
    let (ok, text) = check(&path);
    assert!(!ok);
    assert!(
        text.contains("listener \"devices\" (mqtts): needs tls"),
        "{text}"
    );
}

/// Issue 11: a TLS listener whose certificate file is missing, or whose key file holds no key,
/// is reported naming the listener and the file (the same check `tern serve` makes before it
/// binds anything).
#[test]
fn unusable_tls_files_are_reported_naming_the_listener_and_the_file() {
    let missing = file(
        "missing-cert.toml",
        "[[listeners]]\nname = \"secure\"\nkind = \"mqtts\"\nbind = \"127.0.0.1:8883\"\ntls = { cert = \"no-such-cert.pem\", key = \"no-such-key.pem\" }\n",
    );
    let (ok, text) = check(&missing);
    assert!(!ok);
    assert!(
        text.contains("listener \"secure\"")
            && text.contains("no-such-cert.pem")
            && text.contains("cannot read it"),
        "{text}"
    );
    let dir = missing.parent().unwrap();
    std::fs::write(
        dir.join("cert-only.pem"),
        "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(dir.join("empty.key"), "no key here\n").unwrap();
    let keyless = file(
        "keyless.toml",
        "[[listeners]]\nname = \"secure\"\nkind = \"mqtts\"\nbind = \"127.0.0.1:8883\"\ntls = { cert = \"cert-only.pem\", key = \"empty.key\" }\n",
    );
    let (ok, text) = check(&keyless);
    assert!(!ok);
    assert!(
        text.contains("listener \"secure\"")
            && text.contains("empty.key")
            && text.contains("no private key"),
        "{text}"
    );
}

/// Issue 11 (review finding 5): `use_identity_as_username` with `client_auth = "optional"` is
/// refused, naming the listener and its line: a client without a certificate could claim any
/// username (Mosquitto allows the option only with require_certificate).
#[test]
fn use_identity_as_username_without_required_client_auth_is_refused_naming_the_listener() {
    let path = file(
        "identity-optional.toml",
        "workers = 2\n\n[[listeners]]\nname = \"devices\"\nkind = \"mqtts\"\nbind = \"127.0.0.1:8883\"\ntls = { cert = \"s.pem\", key = \"s.key\", client_ca = \"ca.pem\", client_auth = \"optional\", use_identity_as_username = \"cn\" }\n",
    );
    let (ok, text) = check(&path);
    assert!(!ok);
    assert!(
        text.contains("identity-optional.toml:3:")
            && text.contains("listener \"devices\"")
            && text.contains("use_identity_as_username needs client_auth = \"required\""),
        "{text}"
    );
}

/// Issue 12 (secure by default): a listener on a non-loopback address with no password file and
/// no explicit allow_anonymous is refused, naming it and its line, saying what to add.
#[test]
fn a_network_listener_without_authentication_is_refused() {
    let path = file(
        "open.toml",
        "listen = [\"127.0.0.1:1883\"]\n\n[[listeners]]\nname = \"lan\"\nkind = \"mqtt\"\nbind = \"0.0.0.0:1884\"\n",
    );
    let (ok, text) = check(&path);
    assert!(!ok);
    assert!(
        text.contains("open.toml:3:")
            && text.contains("listener \"lan\"")
            && text.contains("password_file")
            && text.contains("allow_anonymous = true"),
        "{text}"
    );
    let address = file(
        "open-listen.toml",
        "workers = 1\nlisten = [\"0.0.0.0:1883\"]\n",
    );
    let (ok, text) = check(&address);
    assert!(!ok);
    assert!(
        text.contains("open-listen.toml:2:") && text.contains("listen address 0.0.0.0:1883"),
        "{text}"
    );
    let users = file(
        "users.passwd",
        "alice:$7$101$yXEnakcxPrZ0zOg1$XLw2qSoOKPgo3P5QCgH/Iawvvgs/+ci5Gm6G2N2fyLfpQOui0Csk0Sc6D8u62Mfn5w+KxYlMlx/BKIFg31VhCw==\n",
    );
    assert!(users.exists());
    let with_users = file(
        "with-users.toml",
        "listen = [\"0.0.0.0:1883\"]\n[auth]\npassword_file = \"users.passwd\"\n",
    );
    let (ok, text) = check(&with_users);
    assert!(ok, "{text}");
}

/// Issue 12: password and ACL files that cannot be parsed are reported with the file and the
/// line (never a hash).
#[test]
fn unusable_password_and_acl_files_name_the_file_and_line() {
    file("bad.passwd", "# users\nalice:$7$101$yXEn\nbob\n");
    let path = file("bad-users.toml", "[auth]\npassword_file = \"bad.passwd\"\n");
    let (ok, text) = check(&path);
    assert!(!ok);
    assert!(text.contains("bad.passwd:2:"), "{text}");
    assert!(!text.contains("yXEn"), "{text}");
    file("bad.acl", "user alice\ntopic read a/#\ntopic sometimes b\n");
    let path = file("bad-acl.toml", "[auth]\nacl_file = \"bad.acl\"\n");
    let (ok, text) = check(&path);
    assert!(!ok);
    assert!(text.contains("bad.acl:3:"), "{text}");
    let path = file("no-acl.toml", "[auth]\nacl_file = \"no-such.acl\"\n");
    let (ok, text) = check(&path);
    assert!(!ok);
    assert!(text.contains("no-such.acl"), "{text}");
}

/// Issue 13, packaging: the sample configuration shipped in dist/ (what the systemd unit
/// reads) is accepted as it is, admin listener included.
#[test]
fn the_dist_sample_is_ok() {
    let sample = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dist/tern.toml");
    let (ok, text) = check(&sample);
    assert!(ok, "{text}");
    assert!(text.contains("ok (1 listener)"), "{text}");
    let config = tern_server::ServerConfig::from_file(&sample).unwrap();
    assert_eq!(config.admin.bind, Some("127.0.0.1:9883".parse().unwrap()));
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/tern"));
}

/// The systemd unit runs the broker as its own user with the hardening the issue names.
#[test]
fn the_dist_unit_is_hardened() {
    let unit = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dist/tern.service"),
    )
    .unwrap();
    for line in [
        "User=tern",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/tern",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "CapabilityBoundingSet=\n",
        "LimitNOFILE=",
        "ExecStart=/usr/local/bin/tern serve --config /etc/tern/tern.toml",
    ] {
        assert!(
            unit.contains(line),
            "{line:?} missing from dist/tern.service"
        );
    }
}

/// Review 13 #22: systemd itself accepts the unit (`systemd-analyze verify`, with the binary
/// path pointed at the one built here); skipped, with a message, without systemd-analyze.
#[test]
fn the_dist_unit_verifies_with_systemd() {
    let Some(analyze) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("systemd-analyze"))
            .find(|candidate| candidate.is_file())
    }) else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    let unit = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../dist/tern.service"),
    )
    .unwrap()
    .replace("/usr/local/bin/tern", env!("CARGO_BIN_EXE_tern"));
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tern.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(output.status.success(), "systemd-analyze verify: {text}");
    assert!(
        !text.contains("tern.service:"),
        "systemd-analyze verify: {text}"
    );
}

/// Review 13 #6: an admin listener off loopback is accepted, with a warning on stderr that it
/// speaks plain HTTP (and, without `metrics_auth`, that /metrics is open).
#[test]
fn an_admin_listener_off_loopback_is_warned_about() {
    let path = file(
        "admin-open.toml",
        "listen = [\"127.0.0.1:1883\"]\n[admin]\nbind = \"0.0.0.0:9883\"\n",
    );
    let (ok, text) = check(&path);
    assert!(ok, "{text}");
    assert!(
        text.contains(
            "warning: the admin listener on 0.0.0.0:9883 is not on loopback and speaks plain HTTP"
        ),
        "{text}"
    );
    assert!(text.contains("metrics_auth = true"), "{text}");
}
