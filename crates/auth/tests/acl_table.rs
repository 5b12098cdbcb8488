//! The access rules as a table (issue 12, "Access rules" and "How it is proven": users,
//! patterns, deny before grant, overlapping filters, wills, reload), on Mosquitto's ACL syntax.

use tern_auth::{Acl, AclErrorKind, ClientRules, FilterAccess, FilterError, Permissions};

use FilterAccess::{Denied, Granted, Partial};

const ACL: &str = "\
# Anonymous clients: the lines before any `user`.
topic read public/#
topic read $SYS/broker/uptime

user alice
topic readwrite alice/#
topic deny alice/secret/#
topic read shared/+/status
topic write shared/cmd

user bob
topic read #
topic deny private/#
topic deny devices/+/private

user dave
topic read a/#

# Every client.
pattern readwrite devices/%c/#
pattern read users/%u/inbox
pattern deny devices/%c/locked
pattern write broadcast
";

fn acl() -> Acl {
    Acl::parse(ACL).unwrap()
}

/// One client's expected answers.
enum Check {
    Read(&'static str, bool),
    Write(&'static str, bool),
    Subscribe(&'static str, FilterAccess),
}
use Check::{Read, Subscribe, Write};

fn run(rules: &ClientRules, who: &str, checks: &[Check]) {
    for check in checks {
        match *check {
            Read(topic, expected) => {
                assert_eq!(rules.may_read(topic), expected, "{who} read {topic}")
            }
            Write(topic, expected) => {
                assert_eq!(rules.may_write(topic), expected, "{who} write {topic}")
            }
            Subscribe(filter, expected) => {
                assert_eq!(rules.classify(filter), expected, "{who} subscribe {filter}")
            }
        }
    }
}

/// Lines before any `user` are the anonymous clients' (Mosquitto); `$SYS` only where a rule
/// names it [MQTT-4.7.2-1]; patterns with `%u` do not apply without a username.
#[test]
fn anonymous_clients_get_the_rules_before_any_user_line() {
    let rules = acl().for_client(None, "anon-1");
    run(
        &rules,
        "anonymous",
        &[
            Read("public/news", true),
            Write("public/news", false),
            Read("$SYS/broker/uptime", true),
            Read("$SYS/broker/load", false),
            Read("devices/anon-1/temp", true),
            Write("devices/anon-1/temp", true),
            Write("devices/anon-1/locked", false),
            Read("users/anon-1/inbox", false),
            Write("broadcast", true),
            Subscribe("public/#", Granted),
            Subscribe("public/+/x", Granted),
            Subscribe("#", Partial),
            Subscribe("private/x", Denied),
            Subscribe("$SYS/#", Partial),
            Subscribe("$SYS/broker/uptime", Granted),
        ],
    );
}

/// A `deny` refuses even where a grant listed before it matches (Mosquitto puts denials
/// first); a user's block replaces the anonymous one.
#[test]
fn deny_comes_before_grant_in_a_users_block() {
    let rules = acl().for_client(Some("alice"), "alice-phone");
    run(
        &rules,
        "alice",
        &[
            Write("alice/x", true),
            Read("alice/x/y", true),
            Read("alice/secret/k", false),
            Write("alice/secret", false),
            Read("shared/kitchen/status", true),
            Write("shared/kitchen/status", false),
            Write("shared/cmd", true),
            Read("shared/cmd", false),
            Read("public/news", false),
            Subscribe("alice/#", Partial),
            Subscribe("alice/secret/#", Denied),
            Subscribe("alice/public/+", Granted),
            Subscribe("shared/+/status", Granted),
            Subscribe("shared/x/status", Granted),
            Subscribe("shared/#", Partial),
            Subscribe("public/#", Denied),
        ],
    );
}

/// `pattern` lines apply to every client with `%u`/`%c` substituted (whole levels only);
/// their `deny` comes first among patterns; a pattern without `%u`/`%c` applies as written.
#[test]
fn patterns_substitute_username_and_client_id() {
    let rules = acl().for_client(Some("alice"), "alice-phone");
    run(
        &rules,
        "alice",
        &[
            Read("devices/alice-phone/x", true),
            Write("devices/alice-phone/x", true),
            Write("devices/alice-phone/locked", false),
            Read("devices/other/x", false),
            Read("users/alice/inbox", true),
            Read("users/bob/inbox", false),
            Write("users/alice/inbox", false),
            Write("broadcast", true),
            Subscribe("devices/alice-phone/#", Partial),
            Subscribe("devices/alice-phone/+/x", Granted),
            Subscribe("devices/+/x", Partial),
            Subscribe("users/alice/inbox", Granted),
        ],
    );
    // A user without a block has the patterns only.
    let rules = acl().for_client(Some("carol"), "c1");
    run(
        &rules,
        "carol",
        &[
            Read("users/carol/inbox", true),
            Read("devices/c1/t", true),
            Read("public/news", false),
            Subscribe("#", Partial),
            Subscribe("public/#", Denied),
        ],
    );
}

/// The user's own rules are checked before the patterns (Mosquitto): bob's `deny` wins over a
/// pattern's grant, and bob's `#` does not reach `$SYS`.
#[test]
fn a_users_deny_wins_over_a_patterns_grant() {
    let rules = acl().for_client(Some("bob"), "b1");
    run(
        &rules,
        "bob",
        &[
            Read("anything/at/all", true),
            Read("private/x", false),
            Read("devices/b1/private", false),
            Write("devices/b1/private", false),
            Write("devices/b1/other", true),
            Read("$SYS/broker/uptime", false),
            Subscribe("#", Partial),
            Subscribe("private/#", Denied),
            Subscribe("a/b", Granted),
            Subscribe("$SYS/#", Denied),
        ],
    );
}

/// Issue 12: "one that overlaps (a `#` subscriber who may read only `a/#`) is granted and
/// filtered per message"; shared subscriptions are classified by their filter.
#[test]
fn overlapping_filters_are_partial_and_filtered_per_message() {
    let rules = acl().for_client(Some("dave"), "d1");
    run(
        &rules,
        "dave",
        &[
            Subscribe("#", Partial),
            Subscribe("a/#", Granted),
            Subscribe("a", Granted),
            Subscribe("a/+/b", Granted),
            Subscribe("+/b", Partial),
            Subscribe("b/#", Denied),
            Subscribe("$share/g/a/#", Granted),
            Subscribe("$share/g/#", Partial),
            Subscribe("$share/g", Denied),
            // What the per-message check of the `#` subscription lets through.
            Read("a", true),
            Read("a/x", true),
            Read("b", false),
            Read("$SYS/x", false),
        ],
    );
}

/// A client id or username with `+` or `#` could widen a pattern: every pattern refuses it
/// (Mosquitto), while the client's own block still applies.
#[test]
fn wildcard_identities_get_no_pattern_access() {
    let rules = acl().for_client(None, "#");
    run(
        &rules,
        "client id #",
        &[
            Read("public/x", true),
            Write("broadcast", false),
            Read("devices/#/x", false),
        ],
    );
    let rules = acl().for_client(Some("mal+"), "m");
    run(
        &rules,
        "mal+",
        &[Write("broadcast", false), Subscribe("#", Denied)],
    );
}

/// Wills: the core checks `may_write` on the will topic at CONNECT and when it is published;
/// the same rules answer both times.
#[test]
fn wills_are_checked_as_writes() {
    let rules = acl().for_client(Some("alice"), "alice-phone");
    assert!(rules.may_write("devices/alice-phone/status"));
    assert!(!rules.may_write("devices/alice-phone/locked"));
    assert!(!rules.may_write("alice/secret/last-words"));
}

/// Reload: a new file builds a new `Acl`; clients get new rules from it (the server recomputes
/// them and the core re-checks subscriptions); rules already handed out do not change under a
/// reader's feet.
#[test]
fn a_reload_changes_new_rules_only() {
    let before = acl().for_client(Some("dave"), "d1");
    let after = Acl::parse(&ACL.replace("topic read a/#", "topic read b/#"))
        .unwrap()
        .for_client(Some("dave"), "d1");
    assert_eq!(before.classify("a/#"), Granted);
    assert_eq!(after.classify("a/#"), Denied);
    assert_eq!(after.classify("b/#"), Granted);
    assert!(before.may_read("a/x") && !after.may_read("a/x"));
}

/// Issue 12: "Rules from JWT claims and HTTP answers use the same engine": lists with `%u` and
/// `%c`, publish = write, subscribe = read, deny wins.
#[test]
fn permissions_lists_use_the_same_engine() {
    let permissions = Permissions {
        publish: vec!["devices/%c/state".into(), "%u/out/#".into()],
        subscribe: vec!["%u/in/#".into(), "broadcast/#".into()],
        deny: vec!["broadcast/admin/#".into()],
    };
    let acl = Acl::from_permissions(&permissions).unwrap();
    run(
        &acl.for_client(Some("ann"), "dev-7"),
        "ann",
        &[
            Write("devices/dev-7/state", true),
            Write("devices/dev-8/state", false),
            Write("ann/out/x", true),
            Read("ann/out/x", false),
            Read("ann/in/x", true),
            Read("broadcast/admin/x", false),
            Subscribe("ann/in/#", Granted),
            Subscribe("broadcast/#", Partial),
            Subscribe("broadcast/admin/#", Denied),
            Subscribe("#", Partial),
        ],
    );
    // Without a username, the `%u` filters do not apply.
    run(
        &acl.for_client(None, "dev-7"),
        "anonymous dev-7",
        &[
            Write("devices/dev-7/state", true),
            Read("/in/x", false),
            Subscribe("ann/in/#", Denied),
        ],
    );
    let error = Acl::from_permissions(&Permissions {
        subscribe: vec!["ok/#".into(), "bad/#/x".into()],
        ..Permissions::default()
    })
    .unwrap_err();
    assert_eq!(
        (error.list, error.index, error.error),
        ("subscribe", 1, FilterError::Hash)
    );
}

/// Parse errors name the line; the warnings Mosquitto gives (a pattern with nothing to
/// substitute) and one it does not (`%u` in a `topic` line, which is literal there).
#[test]
fn errors_name_their_line_and_warnings_are_returned() {
    for (text, line, kind) in [
        (
            "topic read a\ntopic\n",
            2,
            AclErrorKind::MissingTopic("topic"),
        ),
        (
            "# c\n\ntopic readx a\n",
            3,
            AclErrorKind::UnknownAccess("readx".into()),
        ),
        (
            "users alice\n",
            1,
            AclErrorKind::UnknownKeyword("users".into()),
        ),
        ("user\n", 1, AclErrorKind::MissingUsername),
        (
            "pattern read a/#/b\n",
            1,
            AclErrorKind::Filter {
                filter: "a/#/b".into(),
                error: FilterError::Hash,
            },
        ),
    ] {
        let error = Acl::parse(text).unwrap_err();
        assert_eq!((error.line, error.kind), (line, kind), "{text:?}");
    }
    let acl = acl();
    assert_eq!(acl.rule_count(), 14);
    assert_eq!(acl.warnings().len(), 1);
    assert_eq!(acl.warnings()[0].line, 23);
    let acl = Acl::parse("user x\ntopic read %u/#\n").unwrap();
    assert_eq!(acl.warnings()[0].line, 2);
}

/// Mosquitto's reading of a line: one word after `topic` is the filter (read and write); more
/// words are the access then the filter, which may contain blanks; a later block of the same
/// user adds to the first; CRLF and indented comments are accepted.
#[test]
fn lines_are_read_as_mosquitto_reads_them() {
    let acl = Acl::parse(
        "user u\r\ntopic a/b\r\n  # note\r\ntopic read with space/x\r\nuser v\r\ntopic c\r\nuser u\r\ntopic write d\r\n",
    )
    .unwrap();
    let rules = acl.for_client(Some("u"), "c");
    assert!(rules.may_read("a/b") && rules.may_write("a/b"));
    assert!(rules.may_read("with space/x") && !rules.may_write("with space/x"));
    assert!(rules.may_write("d") && !rules.may_read("d"));
    assert!(!rules.may_read("c"));
    // An empty file allows nothing.
    let rules = Acl::parse("").unwrap().for_client(Some("u"), "c");
    assert!(!rules.may_read("a") && !rules.may_write("a"));
    assert_eq!(rules.classify("#"), Denied);
}

/// The server shares these across its threads and connections.
#[test]
fn the_types_can_be_shared_between_threads() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<Acl>();
    shared::<ClientRules>();
    shared::<tern_auth::PasswordFile>();
    shared::<tern_auth::StoredHash>();
    shared::<tern_auth::CredentialDigester>();
}
