//! Micro-benchmarks of the hot domain paths: TOTP check, sign-in
//! decide + apply against histories of different lengths, snapshot
//! (de)serialization, token hashing. `cargo bench -p twofold-bench`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use chrono::{Duration, Utc};
use cqrs_es::Aggregate;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use twofold_bench::model::{SeedUser, Timeline};
use twofold_domain::totp::{TotpParameters, TotpSecret};
use twofold_domain::{
    NewSession, PasswordCheck, PasswordHash, TokenHash, TwoFactorPolicy, User, UserCommand,
};
use uuid::Uuid;

/// Every seeded user's password hash.
fn password_hash() -> PasswordHash {
    PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into())
}

fn timeline(longest: u32) -> Timeline {
    Timeline::new(Utc::now(), longest, password_hash())
}

/// A user folded from `events` stored events (index 15: TOTP enabled).
fn user_with(index: u64, events: u32) -> User {
    let timeline = timeline(events);
    let seed = SeedUser::regular(index, events).unwrap();
    let mut user = User::default();
    for sequence in 1..=events {
        user.apply(timeline.event(&seed, sequence).event);
    }
    user
}

fn totp(c: &mut Criterion) {
    let parameters = TotpParameters::default();
    let secret = TotpSecret::from_bytes(b"12345678901234567890".to_vec()).unwrap();
    let now = 1_700_000_000;
    let code = parameters.code_at(&secret, now);
    c.bench_function("totp/matching_step +/-1", |b| {
        b.iter(|| parameters.matching_step(black_box(&secret), black_box(&code), black_box(now)))
    });
    c.bench_function("totp/code_at", |b| {
        b.iter(|| parameters.code_at(black_box(&secret), black_box(now)))
    });
}

fn sign_in(c: &mut Criterion) {
    let mut group = c.benchmark_group("sign_in decide+apply");
    for events in [10u32, 1_000, 10_000] {
        // Index 0 is a plain user: a right password starts a session.
        let user = user_with(0, events);
        group.bench_with_input(BenchmarkId::from_parameter(events), &user, |b, user| {
            b.iter(|| {
                let at = Utc::now();
                let decided = user
                    .decide(UserCommand::SignIn {
                        password: PasswordCheck {
                            matches: true,
                            against: password_hash(),
                        },
                        device_token: None,
                        email_offered: false,
                        session: NewSession {
                            session_id: Uuid::nil(),
                            token_hash: TokenHash::of("token"),
                            expires_at: at + Duration::hours(12),
                        },
                        challenge_id: Uuid::nil(),
                        policy: TwoFactorPolicy::default(),
                        at,
                    })
                    .unwrap();
                let mut next = user.clone();
                for event in decided {
                    next.apply(event);
                }
                next
            })
        });
    }
    group.finish();
    let mut group = c.benchmark_group("replay history (load without snapshot)");
    group.sample_size(10);
    for events in [10u32, 1_000, 10_000] {
        let timeline = timeline(events);
        let seed = SeedUser::regular(15, events).unwrap();
        let stored: Vec<_> = (1..=events)
            .map(|sequence| serde_json::to_value(timeline.event(&seed, sequence).event).unwrap())
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(events), &stored, |b, stored| {
            b.iter(|| {
                let mut user = User::default();
                for payload in stored {
                    user.apply(serde_json::from_value(payload.clone()).unwrap());
                }
                user
            })
        });
    }
    group.finish();
}

fn snapshot(c: &mut Criterion) {
    // A 2FA user after 1,000 events: recovery codes, budgets, devices.
    let user = user_with(15, 1_000);
    let payload = serde_json::to_value(&user).unwrap();
    c.bench_function("snapshot/serialize User", |b| {
        b.iter(|| serde_json::to_value(black_box(&user)).unwrap())
    });
    c.bench_function("snapshot/deserialize User", |b| {
        b.iter(|| serde_json::from_value::<User>(black_box(payload.clone())).unwrap())
    });
}

fn token_hash(c: &mut Criterion) {
    let token = "q7Yc0d5nZ0nJ4m3pQ2r8s1t6u9v0w3x5y7z9A1B3C5D";
    c.bench_function("sha256/token hash", |b| {
        b.iter(|| TokenHash::of(black_box(token)))
    });
}

criterion_group!(benches, totp, sign_in, snapshot, token_hash);
criterion_main!(benches);
