//! The ACL engine's costs with a 10 000-rule file (issue 12's figure): the per-topic checks of
//! the publish and delivery paths (`may_write`, `may_read`), the per-SUBSCRIBE `classify`, and
//! the per-CONNECT `for_client`; for a file of many users (one block each) and for one user
//! with all the rules. Run with `cargo bench -p tern-auth --bench acl`.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tern_auth::Acl;

/// 9 990 users with two rules each (their own tree, read and write, and a denial in it), ten
/// patterns with `%u`/`%c`.
fn many_users() -> String {
    let mut text = String::new();
    for user in 0..4_995 {
        text.push_str(&format!(
            "user u{user}\ntopic readwrite site/{user}/#\ntopic deny site/{user}/secret/#\n"
        ));
    }
    for pattern in 0..10 {
        text.push_str(&format!("pattern readwrite clients/%c/{pattern}/#\n"));
    }
    text
}

/// One user with 10 000 rules, a third of them with a wildcard.
fn one_big_user() -> String {
    let mut text = String::from("user big\n");
    for rule in 0..10_000 {
        match rule % 3 {
            0 => text.push_str(&format!("topic read fleet/{rule}/+/status\n")),
            1 => text.push_str(&format!("topic write fleet/{rule}/cmd/#\n")),
            _ => text.push_str(&format!("topic readwrite fleet/{rule}/data\n")),
        }
    }
    text.push_str("topic deny fleet/+/cmd/reboot\n");
    text
}

fn bench(c: &mut Criterion) {
    let acl = Acl::parse(&many_users()).unwrap();
    let rules = acl.for_client(Some("u1234"), "client-1234");
    assert!(rules.may_write("site/1234/temp"));
    c.bench_function("many users: may_write allowed", |b| {
        b.iter(|| black_box(rules.may_write(black_box("site/1234/room/7/temp"))))
    });
    c.bench_function("many users: may_write refused", |b| {
        b.iter(|| black_box(rules.may_write(black_box("site/999/room/7/temp"))))
    });
    c.bench_function("many users: may_read via pattern", |b| {
        b.iter(|| black_box(rules.may_read(black_box("clients/client-1234/9/x"))))
    });
    c.bench_function("many users: classify", |b| {
        b.iter(|| black_box(rules.classify(black_box("site/1234/#"))))
    });
    c.bench_function("many users: for_client", |b| {
        b.iter(|| black_box(acl.for_client(black_box(Some("u4321")), black_box("c-4321"))))
    });

    let acl = Acl::parse(&one_big_user()).unwrap();
    let rules = acl.for_client(Some("big"), "b");
    assert!(rules.may_read("fleet/9999/x/status"));
    c.bench_function("one user, 10k rules: may_read allowed", |b| {
        b.iter(|| black_box(rules.may_read(black_box("fleet/9999/x/status"))))
    });
    c.bench_function("one user, 10k rules: may_write refused", |b| {
        b.iter(|| black_box(rules.may_write(black_box("fleet/9997/cmd/reboot"))))
    });
    c.bench_function("one user, 10k rules: classify", |b| {
        b.iter(|| black_box(rules.classify(black_box("fleet/9999/+/status"))))
    });
    c.bench_function("parse 10k-rule file", |b| {
        let text = many_users();
        b.iter(|| black_box(Acl::parse(black_box(&text)).unwrap()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
