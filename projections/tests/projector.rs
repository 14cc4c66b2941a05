//! The projector against a real (in-memory SQLite) store: counters equal a
//! GROUP BY over the directory, applying every event again changes nothing,
//! a rebuild equals the incremental result, and the audit chain verifies.
//! The end-to-end suite runs the same properties on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};
use sqlx::SqlitePool;
use twofold_domain::totp::TotpParameters;
use twofold_domain::values::{AuthenticatedBy, Email, PasswordHash, Role, TokenHash, Username};
use twofold_domain::UserEvent;
use twofold_projections::{CheckpointCheck, Db, Projector, ReadModels};
use uuid::Uuid;

async fn store() -> SqlitePool {
    support::memory_store().await
}

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 9, minute, 0).unwrap()
}

/// Appends events the way the event store does (the trigger numbers them).
struct Writer {
    pool: SqlitePool,
    sequences: std::collections::HashMap<Uuid, i64>,
    minute: u32,
}

impl Writer {
    async fn append(&mut self, user: Uuid, event: UserEvent) {
        let sequence = self.sequences.entry(user).or_default();
        *sequence += 1;
        self.minute += 1;
        let metadata = json!({ "actor_id": user, "occurred_at": at(self.minute) });
        sqlx::query(
            "INSERT INTO events
                 (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ('user', $1, $2, $3, '1', $4, $5)",
        )
        .bind(user.to_string())
        .bind(*sequence)
        .bind(event.name())
        .bind(serde_json::to_string(&event).unwrap())
        .bind(metadata.to_string())
        .execute(&self.pool)
        .await
        .unwrap();
    }

    async fn register(&mut self, name: &str, role: Role) -> Uuid {
        let user_id = Uuid::new_v4();
        let event = UserEvent::UserRegistered {
            user_id,
            username: Username::parse(name).unwrap(),
            email: Some(Email::parse(&format!("{name}@example.com")).unwrap()),
            role,
            password_hash: PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
            registered_at: at(0),
        };
        self.append(user_id, event).await;
        user_id
    }

    async fn enroll(&mut self, user: Uuid, confirm: bool) {
        let enrollment_id = Uuid::new_v4();
        self.append(
            user,
            UserEvent::TotpEnrollmentStarted {
                enrollment_id,
                parameters: TotpParameters::default(),
            },
        )
        .await;
        if confirm {
            self.append(
                user,
                UserEvent::TotpEnrollmentConfirmed {
                    enrollment_id,
                    accepted_step: 1,
                    recovery_code_hashes: vec![TokenHash::of("recovery")],
                    enabled_at: at(30),
                },
            )
            .await;
        }
    }
}

/// A mix of roles, enrollments, enforcement and their changes.
async fn history(pool: &SqlitePool) -> usize {
    let mut w = Writer {
        pool: pool.clone(),
        sequences: Default::default(),
        minute: 0,
    };
    let root = w.register("root", Role::SuperAdmin).await;
    let ann = w.register("ann", Role::User).await;
    let bob = w.register("bob", Role::User).await;
    let cat = w.register("cat", Role::Auditor).await;
    let dan = w.register("dan", Role::Admin).await;
    let eve = w.register("eve", Role::User).await;
    w.enroll(ann, true).await;
    w.enroll(bob, false).await;
    w.enroll(root, true).await;
    w.append(eve, UserEvent::TwoFactorEnforced { reason: None })
        .await;
    w.append(bob, UserEvent::TwoFactorEnforced { reason: None })
        .await;
    w.append(cat, UserEvent::RoleChanged { role: Role::Admin })
        .await;
    w.enroll(dan, true).await;
    w.append(dan, UserEvent::TwoFactorDisabled).await;
    w.append(bob, UserEvent::TwoFactorEnforcementLifted { reason: None })
        .await;
    w.append(
        ann,
        UserEvent::SessionStarted {
            session_id: Uuid::new_v4(),
            token_hash: TokenHash::of("token"),
            authenticated_by: AuthenticatedBy::Totp,
            started_at: at(40),
            expires_at: at(50),
            enrollment_required: false,
            impersonator_id: None,
            device_id: None,
        },
    )
    .await;
    w.append(
        eve,
        UserEvent::TotpEnrollmentCodeRejected {
            enrollment_id: Uuid::new_v4(),
            attempts_remaining: 0,
        },
    )
    .await;
    w.sequences.values().sum::<i64>() as usize
}

/// Every read-model table as sorted text rows.
async fn snapshot(pool: &SqlitePool) -> Vec<String> {
    let mut rows = Vec::new();
    for (table, order) in [
        ("sessions", "session_id"),
        ("user_directory", "user_id"),
        ("challenges", "challenge_id"),
        ("two_factor_counts", "role, two_factor_status, enforced"),
        ("audit_log", "id"),
    ] {
        let sql = format!("SELECT * FROM {table} ORDER BY {order}");
        for row in sqlx::query(&sql).fetch_all(pool).await.unwrap() {
            use sqlx::{Column, Row, ValueRef};
            let cells: Vec<String> = (0..row.columns().len())
                .map(|i| {
                    let raw = row.try_get_raw(i).unwrap();
                    if raw.is_null() {
                        "NULL".into()
                    } else {
                        row.try_get::<String, _>(i)
                            .or_else(|_| row.try_get::<i64, _>(i).map(|v| v.to_string()))
                            .unwrap()
                    }
                })
                .collect();
            rows.push(format!(
                "{table} {}: {}",
                row.columns()[0].name(),
                cells.join("|")
            ));
        }
    }
    rows
}

async fn counts(pool: &SqlitePool, sql: &str) -> Vec<(String, String, bool, i64)> {
    sqlx::query_as(sql).fetch_all(pool).await.unwrap()
}

#[tokio::test]
async fn counters_equal_the_directory_and_reapplying_or_rebuilding_changes_nothing() {
    let pool = store().await;
    let events = history(&pool).await;
    let projector = Projector::new(Db::Sqlite(pool.clone())).await.unwrap();
    let kept = counts(
        &pool,
        "SELECT role, two_factor_status, enforced, users FROM two_factor_counts
          WHERE users <> 0 ORDER BY 1, 2, 3",
    )
    .await;
    let directory = counts(
        &pool,
        "SELECT role, two_factor_status, enforced, count(*) FROM user_directory
          GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .await;
    assert_eq!(kept, directory);
    assert!(kept.contains(&("user".into(), "enabled".into(), false, 1)));
    assert!(kept.contains(&("admin".into(), "disabled".into(), false, 2)));

    let incremental = snapshot(&pool).await;
    assert_eq!(
        incremental
            .iter()
            .filter(|r| r.starts_with("audit_log"))
            .count(),
        events
    );
    // Forget the checkpoint: every event is applied a second time.
    sqlx::query("DELETE FROM projection_checkpoints")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(projector.catch_up().await.unwrap() as usize, events);
    assert_eq!(snapshot(&pool).await, incremental);

    assert_eq!(projector.rebuild(|_| {}).await.unwrap() as usize, events);
    assert_eq!(snapshot(&pool).await, incremental);

    let report = ReadModels::new(Db::Sqlite(pool.clone()))
        .verify_audit_trail(None, &CheckpointCheck::default(), |_| {})
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events_checked as usize, events);
}

#[tokio::test]
async fn audit_rows_hold_no_secret_and_verify_names_an_edited_event() {
    let pool = store().await;
    history(&pool).await;
    Projector::new(Db::Sqlite(pool.clone())).await.unwrap();
    let data: Vec<String> = sqlx::query_scalar("SELECT data FROM audit_log")
        .fetch_all(&pool)
        .await
        .unwrap();
    for data in &data {
        assert!(
            !data.contains("hash") && !data.contains("$argon2"),
            "{data}"
        );
        let _: Value = serde_json::from_str(data).unwrap();
    }
    let db = Db::Sqlite(pool.clone());
    let clean = ReadModels::new(db.clone())
        .verify_audit_trail(None, &CheckpointCheck::default(), |_| {})
        .await
        .unwrap();
    let expect = format!("{}:{}", clean.head_position.unwrap(), clean.head)
        .parse()
        .unwrap();
    assert!(
        ReadModels::new(db.clone())
            .verify_audit_trail(Some(&expect), &CheckpointCheck::default(), |_| {})
            .await
            .unwrap()
            .ok
    );

    sqlx::query(
        "UPDATE events SET payload = replace(payload, '\"admin\"', '\"super_admin\"')
          WHERE event_type = 'RoleChanged'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let report = ReadModels::new(db.clone())
        .verify_audit_trail(Some(&expect), &CheckpointCheck::default(), |_| {})
        .await
        .unwrap();
    assert!(!report.ok);
    let mismatch = report.first_mismatch.unwrap();
    assert_eq!(mismatch.problem, "content_changed");
    let position: i64 =
        sqlx::query_scalar("SELECT position FROM events WHERE event_type = 'RoleChanged'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(mismatch.position, position);
    assert_eq!(report.events_checked as i64, position - 1);
}

/// What a projector keeps between its rounds (each user's last audit link
/// and directory row) serves only while no other process moved the
/// checkpoint: the other's rounds change the same users under it.
#[tokio::test]
async fn two_projectors_taking_turns_leave_what_a_rebuild_leaves() {
    let pool = store().await;
    let mut w = Writer {
        pool: pool.clone(),
        sequences: Default::default(),
        minute: 0,
    };
    let first = Projector::new(Db::Sqlite(pool.clone())).await.unwrap();
    let second = Projector::new(Db::Sqlite(pool.clone())).await.unwrap();
    let ann = w.register("ann", Role::User).await;
    let bob = w.register("bob", Role::Admin).await;
    first.catch_up().await.unwrap();
    for turn in 0..6 {
        let email = Email::parse(&format!("ann{turn}@example.com")).unwrap();
        w.append(ann, UserEvent::EmailChanged { email: Some(email) })
            .await;
        let role = if turn % 2 == 0 {
            Role::User
        } else {
            Role::Admin
        };
        w.append(bob, UserEvent::RoleChanged { role }).await;
        w.enroll(ann, turn % 3 == 0).await;
        // The first projector runs twice in a row (it goes on from what it
        // kept), then the second moves the checkpoint under it.
        let projector = if turn % 3 == 2 { &second } else { &first };
        assert_eq!(
            projector.catch_up().await.unwrap(),
            3 + u64::from(turn % 3 == 0)
        );
    }
    let live = snapshot(&pool).await;
    assert!(live.iter().any(|row| row.contains("ann5@example.com")));
    first.rebuild(|_| {}).await.unwrap();
    assert_eq!(snapshot(&pool).await, live);
    let report = ReadModels::new(Db::Sqlite(pool.clone()))
        .verify_audit_trail(None, &CheckpointCheck::default(), |_| {})
        .await
        .unwrap();
    assert!(report.ok, "{report:?}");
}
