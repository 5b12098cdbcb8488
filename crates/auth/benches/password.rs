//! What one password verification costs, per stored format: the numbers that size the
//! server's verification pool and tell what its cache of successes saves. Run with
//! `cargo bench -p tern-auth --bench password`.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tern_auth::{CredentialDigester, StoredHash, hash_argon2id};

fn bench(c: &mut Criterion) {
    let argon2id = StoredHash::parse(&hash_argon2id(b"pw").unwrap()).unwrap();
    // mosquitto_passwd 2.0's default ($7$, 101 iterations) and -H sha512 ($6$).
    let pbkdf2 = StoredHash::parse("$7$101$yXEnakcxPrZ0zOg1$XLw2qSoOKPgo3P5QCgH/Iawvvgs/+ci5Gm6G2N2fyLfpQOui0Csk0Sc6D8u62Mfn5w+KxYlMlx/BKIFg31VhCw==").unwrap();
    let sha512 = StoredHash::parse("$6$25dgeanU9Qg15m38$4c+6JqK5B2dUibh8Twc/MXqid8klfC8xyr1cgJarXbs0ASjPWZgs6ald25wNvh+ggPzjhwrsFdw5kgY2oezJaA==").unwrap();
    let mut group = c.benchmark_group("verify");
    group.sample_size(10);
    group.bench_function("argon2id m=19456 t=2 p=1", |b| {
        b.iter(|| black_box(argon2id.verify(black_box(b"pw"))))
    });
    group.bench_function("$7$ 101 iterations", |b| {
        b.iter(|| black_box(pbkdf2.verify(black_box(b"alice-secret"))))
    });
    group.bench_function("$6$", |b| {
        b.iter(|| black_box(sha512.verify(black_box(b"carol-secret"))))
    });
    group.finish();
    let digester = CredentialDigester::new().unwrap();
    c.bench_function("cache key (CredentialDigester::digest)", |b| {
        b.iter(|| black_box(digester.digest(black_box("alice"), black_box(b"pw"), &argon2id)))
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
