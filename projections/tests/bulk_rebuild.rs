//! The bulk rebuild against the live projector, on SQLite and PostgreSQL:
//! a history of many users (sign-ins, sessions ended and alive, challenges
//! issued, extended, accepted and pruned, enrollments, enforcement, role and
//! email changes), applied one round at a time as a server would, gives
//! exactly the rows, column for column, that one bulk rebuild gives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use twofold_domain::passkey::{CeremonyState, PasskeyCeremony, PasskeyCredential, PasskeyRefusal};
use twofold_domain::totp::TotpParameters;
use twofold_domain::values::SecondFactorMethod;
use twofold_domain::values::{AuthenticatedBy, Email, PasswordHash, Role, TokenHash, Username};
use twofold_domain::UserEvent;
use twofold_projections::{CheckpointCheck, DirectoryFilter, Projector, ReadModels};
use twofold_store::Db;
use uuid::Uuid;

/// A small deterministic generator, so a failure can be replayed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % sides
    }
}

struct User {
    id: Uuid,
    sequence: i64,
    sessions: Vec<Uuid>,
    challenges: Vec<Uuid>,
    passkeys: Vec<(Uuid, String)>,
}

/// An event as appended: its stream, sequence, type, payload, metadata and
/// the instant it happened.
type Logged = (String, i64, &'static str, String, String, DateTime<Utc>);

/// Appends events the way the event store does, each with its metadata.
struct History {
    db: Db,
    now: DateTime<Utc>,
    users: Vec<User>,
    log: Vec<Logged>,
}

impl History {
    async fn append(&mut self, user: usize, event: UserEvent) {
        // Sub-microsecond times: both paths must cut them the same way.
        self.now += Duration::nanoseconds(61_000_000_123);
        let user = &mut self.users[user];
        user.sequence += 1;
        let metadata = json!({
            "actor_id": user.id,
            "ip": "192.0.2.7",
            "user_agent": "tests\tbulk \"rebuild\"",
            "occurred_at": self.now,
        });
        let payload = serde_json::to_value(&event).unwrap();
        self.log.push((
            user.id.to_string(),
            user.sequence,
            event.name(),
            payload.to_string(),
            metadata.to_string(),
            self.now,
        ));
        // COPY on PostgreSQL reads the JSON texts into `jsonb`.
        let mut tx = self.db.begin_write().await.unwrap();
        tx.load(
            "events",
            &twofold_store::EVENT_COLUMNS,
            vec![twofold_store::event_row(
                &user.id.to_string(),
                user.sequence,
                event.name(),
                payload.to_string(),
                metadata.to_string(),
            )],
            false,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    async fn register(&mut self, index: usize) {
        let id = Uuid::new_v4();
        self.users.push(User {
            id,
            sequence: 0,
            sessions: vec![],
            challenges: vec![],
            passkeys: vec![],
        });
        let role = [Role::User, Role::Auditor, Role::Admin, Role::SuperAdmin][index % 4];
        let email = (!index.is_multiple_of(3))
            .then(|| Email::parse(&format!("User.{index}@Example.com")).unwrap());
        let event = UserEvent::UserRegistered {
            user_id: id,
            username: Username::parse(&format!("user{index}")).unwrap(),
            email,
            role,
            password_hash: PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            registered_at: self.now,
        };
        self.append(index, event).await;
    }

    /// One thing a user might do next.
    async fn step(&mut self, user: usize, dice: &mut Dice) {
        let now = self.now;
        let event = match dice.roll(20) {
            0 => UserEvent::TotpEnrollmentStarted {
                enrollment_id: Uuid::new_v4(),
                parameters: TotpParameters::default(),
            },
            1 => UserEvent::TotpEnrollmentConfirmed {
                enrollment_id: Uuid::new_v4(),
                accepted_step: dice.roll(1000),
                recovery_code_hashes: vec![TokenHash::of("recovery")],
                enabled_at: now,
            },
            2 => UserEvent::TotpEnrollmentCodeRejected {
                enrollment_id: Uuid::new_v4(),
                attempts_remaining: u32::try_from(dice.roll(2)).unwrap(),
            },
            3 if dice.roll(2) == 0 => UserEvent::TwoFactorDisabled,
            3 => UserEvent::TwoFactorReset {
                reason: "lost phone".into(),
            },
            4 => UserEvent::TwoFactorEnforced { reason: None },
            5 => UserEvent::TwoFactorEnforcementLifted {
                reason: Some("pilot over".into()),
            },
            6 => UserEvent::RoleChanged {
                role: [Role::User, Role::Auditor, Role::Admin][dice.roll(3) as usize],
            },
            7 => UserEvent::EmailChanged {
                email: (dice.roll(3) != 0)
                    .then(|| Email::parse(&format!("New.{user}@Example.org")).unwrap()),
            },
            8 | 9 => {
                let challenge_id = Uuid::new_v4();
                self.users[user].challenges.push(challenge_id);
                UserEvent::ChallengeIssued {
                    challenge_id,
                    methods: vec![SecondFactorMethod::Totp, SecondFactorMethod::Email],
                    expires_at: now + Duration::minutes(5),
                }
            }
            10 => match self.users[user].challenges.last() {
                Some(&challenge_id) => UserEvent::EmailCodeSent {
                    challenge_id,
                    code_hash: TokenHash::of("123456"),
                    sent_to: "user@example.com".into(),
                    sent_at: now,
                    expires_at: now + Duration::minutes(10),
                },
                None => UserEvent::PasswordRejected {
                    consecutive_failures: 1,
                    locked_until: None,
                },
            },
            11 => match self.users[user].challenges.pop() {
                Some(challenge_id) => UserEvent::SecondFactorAccepted {
                    challenge_id,
                    method: SecondFactorMethod::Totp,
                    totp_step: Some(dice.roll(1000)),
                    recovery_code_index: None,
                },
                None => UserEvent::RememberedDevicesRevoked,
            },
            12 | 13 => {
                let session_id = Uuid::new_v4();
                self.users[user].sessions.push(session_id);
                let impersonated = dice.roll(4) == 0;
                UserEvent::SessionStarted {
                    session_id,
                    token_hash: TokenHash::of(&session_id.to_string()),
                    authenticated_by: if impersonated {
                        AuthenticatedBy::Impersonation
                    } else {
                        [AuthenticatedBy::Password, AuthenticatedBy::Totp][dice.roll(2) as usize]
                    },
                    started_at: now,
                    expires_at: now + Duration::hours(8),
                    enrollment_required: false,
                    impersonator_id: impersonated.then(Uuid::new_v4),
                    device_id: None,
                }
            }
            14 => match self.users[user].sessions.pop() {
                Some(session_id) if dice.roll(2) == 0 => UserEvent::SessionEnded { session_id },
                Some(session_id) => UserEvent::ImpersonationEnded {
                    impersonation_id: Uuid::new_v4(),
                    session_id,
                    revoked: None,
                },
                None => UserEvent::RememberedDevicesRevoked,
            },
            // The user's other sessions end; sometimes the one kept is none
            // of theirs.
            15 => UserEvent::PasswordChanged {
                password_hash: PasswordHash::new(format!("$argon2id$changed${now}")),
                kept_session_id: self.users[user]
                    .sessions
                    .last()
                    .copied()
                    .filter(|_| dice.roll(3) != 0),
                changed_at: Some(now),
            },
            17 => {
                let passkey_id = Uuid::new_v4();
                let credential_id = format!("cred-{passkey_id}");
                self.users[user]
                    .passkeys
                    .push((passkey_id, credential_id.clone()));
                UserEvent::PasskeyRegistered {
                    passkey_id,
                    registration_id: Uuid::new_v4(),
                    name: "Laptop".into(),
                    credential_id,
                    credential: PasskeyCredential::new(json!({ "public": "key" })),
                    counter: 0,
                    user_verified: true,
                    attestation_format: "none".into(),
                    registered_at: now,
                }
            }
            18 => match self.users[user].passkeys.pop() {
                Some((passkey_id, credential_id)) => UserEvent::PasskeyRemoved {
                    passkey_id,
                    credential_id,
                },
                None => UserEvent::PasskeyRegistrationStarted {
                    registration_id: Uuid::new_v4(),
                    ceremony_secret: CeremonyState::new("challenge state".into()),
                    expires_at: now + Duration::minutes(5),
                },
            },
            19 => match self.users[user].passkeys.last() {
                Some((passkey_id, _)) => UserEvent::PasskeyUsed {
                    passkey_id: *passkey_id,
                    ceremony: PasskeyCeremony::SignIn,
                    counter: 0,
                    user_verified: true,
                    used_at: now,
                },
                None => UserEvent::PasskeyRejected {
                    ceremony: PasskeyCeremony::SignIn,
                    reason: PasskeyRefusal::BadSignature,
                    registration_id: None,
                    passkey_id: None,
                    consecutive_failures: Some(1),
                    locked_until: None,
                },
            },
            _ => UserEvent::SecondFactorRejected {
                challenge_id: Uuid::new_v4(),
                method: SecondFactorMethod::Totp,
                attempts_remaining: 2,
                consecutive_failures: 1,
                locked_until: None,
            },
        };
        self.append(user, event).await;
    }
}

/// Every row of every read-model table (and the checkpoint), each column
/// as text, in a stable order.
async fn tables(db: &Db) -> Vec<String> {
    let mut rows = Vec::new();
    for table in [
        "sessions",
        "user_directory",
        "user_versions",
        "challenges",
        "two_factor_counts",
        "audit_log",
        "projection_checkpoints",
    ] {
        let columns = db.columns(table).await.unwrap();
        let cells: Vec<String> = columns
            .iter()
            .map(|column| format!("coalesce(CAST({column} AS TEXT), 'NULL')"))
            .collect();
        let sql = format!(
            "SELECT '{table}: ' || {} FROM {table} ORDER BY 1",
            cells.join(" || '|' || ")
        );
        let texts = db.fetch(&sql, vec![]).await.unwrap();
        rows.extend(texts.iter().map(|row| row.get_at::<String>(0).unwrap()));
    }
    rows
}

async fn rebuild_equals_the_live_projector(db: Db) {
    let projector = Projector::new(db.clone()).await.unwrap();
    let mut history = History {
        db: db.clone(),
        now: Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap()
            + Duration::nanoseconds(678_901_234),
        users: vec![],
        log: vec![],
    };
    let mut dice = Dice(7);
    // Rounds of traffic, the projector catching up between them as a
    // server does after each write.
    for round in 0..12 {
        for index in 0..60 {
            if round == 0 {
                history.register(index).await;
            } else if dice.roll(3) != 0 {
                history.step(index, &mut dice).await;
            }
        }
        projector.catch_up().await.unwrap();
    }
    let live = tables(&db).await;
    let events: usize = history
        .users
        .iter()
        .map(|user| user.sequence as usize)
        .sum();
    for table in [
        "sessions",
        "user_directory",
        "user_versions",
        "challenges",
        "two_factor_counts",
    ] {
        assert!(
            live.iter()
                .any(|row| row.starts_with(&format!("{table}: "))),
            "the history leaves {table} empty"
        );
    }
    assert!(
        live.iter()
            .any(|row| row.starts_with("two_factor_counts: ") && row.ends_with("|0")),
        "no report bucket was emptied"
    );
    assert_eq!(
        live.iter()
            .filter(|row| row.starts_with("audit_log: "))
            .count(),
        events
    );

    // A store upgraded from before `user_versions`: the data migration
    // writes every version from the history, as the projector did.
    let mut tx = db.begin_write().await.unwrap();
    tx.run_sql("DELETE FROM user_versions").await.unwrap();
    tx.run_sql("DELETE FROM data_migrations").await.unwrap();
    tx.commit().await.unwrap();
    twofold_projections::ReadModels::new(db.clone())
        .run_data_migrations()
        .await
        .unwrap();
    assert_eq!(tables(&db).await, live, "versions written from the history");

    assert_eq!(projector.rebuild(|_| {}).await.unwrap() as usize, events);
    let rebuilt = tables(&db).await;
    assert_eq!(rebuilt.len(), live.len());
    for (rebuilt, live) in rebuilt.iter().zip(&live) {
        assert_eq!(rebuilt, live);
    }
    assert_eq!(
        projector.catch_up().await.unwrap(),
        0,
        "the checkpoint moved"
    );

    // The service goes on from the rebuilt models, and the trail verifies.
    history.step(0, &mut dice).await;
    assert_eq!(projector.catch_up().await.unwrap(), 1);
    let report = twofold_projections::ReadModels::new(db.clone())
        .verify_audit_trail(None, &CheckpointCheck::default(), |_| {})
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked as usize, events + 1);
}

#[tokio::test]
async fn bulk_rebuild_gives_the_live_projectors_rows_on_sqlite() {
    rebuild_equals_the_live_projector(Db::Sqlite(support::memory_store().await)).await;
}

/// A fresh PostgreSQL database, migrated, for `body`; dropped afterwards.
async fn on_a_fresh_postgres_database<F: std::future::Future<Output = ()>>(
    body: impl FnOnce(Db) -> F,
) {
    let server = std::env::var("TWOFOLD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string());
    let mut admin = PgConnection::connect(&format!("{server}/postgres"))
        .await
        .expect("PostgreSQL must listen on 127.0.0.1:5432 (see README: .ci/run starts it)");
    let name = format!("twofold_bulk_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let db = twofold_store::connect(&format!("{server}/{name}"), 4)
        .await
        .unwrap();
    twofold_store::migrate(&db).await.unwrap();
    body(db.clone()).await;
    db.close().await;
    sqlx::query(&format!("DROP DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn bulk_rebuild_gives_the_live_projectors_rows_on_postgres() {
    on_a_fresh_postgres_database(rebuild_equals_the_live_projector).await;
}

/// The directory and the report's counts as `models` answer them, as text,
/// without the last sign-in (not versioned).
async fn directory_and_counts(
    models: &ReadModels,
    as_of: Option<DateTime<Utc>>,
) -> (Vec<String>, Vec<String>) {
    let filter = DirectoryFilter {
        limit: 500,
        as_of,
        ..DirectoryFilter::default()
    };
    let (users, more) = models.search_directory(&filter).await.unwrap();
    assert!(!more);
    let users = users
        .into_iter()
        .map(|user| {
            format!(
                "{} {} {:?} {} {} {} {:?}",
                user.user_id,
                user.username,
                user.email,
                user.role,
                user.two_factor_status,
                user.enforced,
                user.enabled_at.map(|at| at.timestamp_micros())
            )
        })
        .collect();
    let counts = match as_of {
        Some(at) => models.two_factor_counts_as_of(at).await.unwrap(),
        None => models.two_factor_counts().await.unwrap(),
    };
    (
        users,
        counts.iter().map(|count| format!("{count:?}")).collect(),
    )
}

#[tokio::test]
async fn as_of_answers_equal_a_fold_of_the_events_up_to_that_instant_on_sqlite() {
    for seed in 1..=4 {
        as_of_equals_a_fold_up_to_the_instant(Db::Sqlite(support::memory_store().await), seed)
            .await;
    }
}

#[tokio::test]
async fn as_of_answers_equal_a_fold_of_the_events_up_to_that_instant_on_postgres() {
    for seed in 1..=2 {
        on_a_fresh_postgres_database(|db| as_of_equals_a_fold_up_to_the_instant(db, seed)).await;
    }
}

/// For a random history (`seed`) and random instants, what `as_of`
/// answers (from the versions the live projector wrote on `db`) equals a
/// fold, from nothing, of the events up to that instant: a rebuild of a
/// (SQLite) store holding only them.
async fn as_of_equals_a_fold_up_to_the_instant(db: Db, seed: u64) {
    let projector = Projector::new(db.clone()).await.unwrap();
    let start = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
    let mut history = History {
        db: db.clone(),
        now: start,
        users: vec![],
        log: vec![],
    };
    let mut dice = Dice(seed);
    for round in 0..8 {
        for index in 0..16 {
            if round == 0 {
                history.register(index).await;
            } else if dice.roll(2) == 0 {
                history.step(index, &mut dice).await;
            }
        }
        projector.catch_up().await.unwrap();
    }
    let live = ReadModels::new(db.clone());
    let span = (history.now - start).num_seconds();
    for _ in 0..6 {
        let at = start + Duration::seconds(dice.roll(span as u64 + 120) as i64 - 60);
        let copy = Db::Sqlite(support::memory_store().await);
        let upto: Vec<_> = history
            .log
            .iter()
            .filter(|logged| logged.5 <= at)
            .map(|(stream, sequence, kind, payload, metadata, _)| {
                twofold_store::event_row(stream, *sequence, kind, payload.clone(), metadata.clone())
            })
            .collect();
        let mut tx = copy.begin_write().await.unwrap();
        tx.load("events", &twofold_store::EVENT_COLUMNS, upto, false)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        Projector::new(copy.clone())
            .await
            .unwrap()
            .rebuild(|_| {})
            .await
            .unwrap();
        let folded = directory_and_counts(&ReadModels::new(copy), None).await;
        let answered = directory_and_counts(&live, Some(at)).await;
        assert_eq!(answered, folded, "seed {seed}, as of {at}");
        if let Some(user) = history.users.first() {
            let one = live.directory_entry_as_of(user.id, at).await.unwrap();
            let listed = answered
                .0
                .iter()
                .find(|row| row.starts_with(&user.id.to_string()));
            assert_eq!(one.is_some(), listed.is_some(), "seed {seed}, as of {at}");
        }
    }
}
