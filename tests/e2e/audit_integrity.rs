//! The audit trail as auditors read it: every column `/audit` and the
//! exports show is recomputed by verify (an edit of any one, made with SQL
//! behind the service's back, is reported at its row), no row's `data`
//! holds a challenge id, and the upgrade of a trail written before that
//! rule leaves it verifying.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::helpers::{binary, default_settings, spawn_app, Answer, Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    verify_reports_an_edit_of_any_shown_audit_column_at_its_row,
    a_sign_in_with_a_challenge_leaves_its_id_nowhere_in_the_audit_trail,
    migrate_takes_challenge_ids_out_of_a_trail_written_the_old_way,
    the_upgrade_runs_at_start_and_keeps_an_earlier_edit_evident,
);

/// Runs one statement (or a query) on the test database, with `$conn` a
/// connection of the test's backend.
macro_rules! on_database {
    ($app:expr, $conn:ident => $body:expr) => {
        match $app.backend {
            Backend::Sqlite => {
                let mut $conn = sqlx::SqliteConnection::connect(&$app.database_url)
                    .await
                    .unwrap();
                $body
            }
            Backend::Postgres => {
                let mut $conn = sqlx::PgConnection::connect(&$app.database_url)
                    .await
                    .unwrap();
                $body
            }
        }
    };
}

fn password(username: &str) -> String {
    format!("{username}-password")
}

async fn verify(app: &TestApp, token: &str) -> Value {
    let answer = app.get("/api/v1/audit/verify", token).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.body
}

/// `twofold audit verify`, the real binary: (exit success, report).
fn verify_cli(app: &TestApp) -> (bool, Value) {
    let output = std::process::Command::new(binary())
        .args(["audit", "verify", "--database-url", &app.database_url])
        .output()
        .unwrap();
    let report = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("a JSON report: {output:?}"));
    (output.status.success(), report)
}

/// The API and the command line agree that the trail verifies; the report.
async fn assert_verifies(app: &TestApp, token: &str) -> Value {
    let report = verify(app, token).await;
    assert_eq!(report["ok"], true, "{report}");
    let (success, cli) = verify_cli(app);
    assert!(success, "{cli}");
    assert_eq!(cli, report, "the command and the API agree");
    report
}

/// The API and the command line both report `row_changed` at this row.
async fn assert_row_changed(app: &TestApp, token: &str, row: &Row, what: &str) {
    let report = verify(app, token).await;
    assert_eq!(report["ok"], false, "{what}: {report}");
    assert_eq!(
        report["first_mismatch"],
        json!({
            "user_id": row.user_id,
            "sequence": row.sequence,
            "position": row.position,
            "problem": "row_changed",
        }),
        "{what}: {report}"
    );
    let (success, cli) = verify_cli(app);
    assert!(!success, "{what}: the command exits non-zero: {cli}");
    assert_eq!(cli["first_mismatch"], report["first_mismatch"], "{what}");
}

/// An audit row's place: what verify names.
#[derive(Debug)]
struct Row {
    position: i64,
    user_id: String,
    sequence: i64,
}

/// The last row of `event_type`.
async fn row_of(app: &TestApp, event_type: &str) -> Row {
    let sql = "SELECT position, user_id, sequence FROM audit_log WHERE type = $1 ORDER BY id DESC";
    let (position, user_id, sequence): (i64, String, i64) = on_database!(app, conn => {
        sqlx::query_as(sql).bind(event_type).fetch_one(&mut conn).await.unwrap()
    });
    Row {
        position,
        user_id,
        sequence,
    }
}

/// Every row of the trail through the API, page after page.
async fn audit_pages(app: &TestApp, token: &str) -> (Vec<Value>, String) {
    let (mut rows, mut bodies, mut cursor) = (Vec::new(), String::new(), String::new());
    loop {
        let answer = app
            .get(&format!("/api/v1/audit?limit=7&cursor={cursor}"), token)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        bodies.push_str(&answer.body.to_string());
        rows.extend(answer.body["events"].as_array().unwrap().iter().cloned());
        match answer.body["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => return (rows, bodies),
        }
    }
}

/// An export as the bytes an auditor downloads.
async fn export(app: &TestApp, token: &str, format: &str) -> String {
    let response = app
        .client
        .get(format!("{}/api/v1/audit?format={format}", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

fn export_cli(app: &TestApp, format: &str) -> String {
    let output = std::process::Command::new(binary())
        .args([
            "audit",
            "export",
            "--format",
            format,
            "--database-url",
            &app.database_url,
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// Something of every kind: an administrator's "Login as" of a user (with a
/// reason, from a browser), the user's own change, the end of it.
async fn trail_with_an_impersonation(app: &TestApp) -> String {
    let root = app.admin_token().await;
    app.create_user("ada", &password("ada"), None, "admin")
        .await;
    let uma = app.create_user("uma", &password("uma"), None, "user").await;
    let ada = app.token("ada", &password("ada")).await;
    let started = app
        .client
        .post(format!("{}/api/v1/users/{uma}/impersonation", app.base))
        .bearer_auth(&ada)
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) twofold-e2e")
        .json(&json!({ "reason": "ticket 42 lost phone", "ticket": "T-42" }))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::CREATED);
    let acting: Value = started.json().await.unwrap();
    let acting = acting["session_token"].as_str().unwrap().to_string();
    let ended = app.delete("/api/v1/impersonation", &acting, None).await;
    assert_eq!(ended.status, StatusCode::NO_CONTENT, "{ended:?}");
    root
}

async fn verify_reports_an_edit_of_any_shown_audit_column_at_its_row(backend: Backend) {
    let app = spawn_app(backend).await;
    let root = trail_with_an_impersonation(&app).await;
    let clean = assert_verifies(&app, &root).await;

    let started = row_of(&app, "ImpersonationStarted").await;
    let ended = row_of(&app, "ImpersonationEnded").await;
    let shown = audit_pages(&app, &root).await.0;
    let shown_start = shown
        .iter()
        .find(|row| row["position"] == started.position)
        .unwrap();
    assert_eq!(shown_start["data"]["reason"], "ticket 42 lost phone");
    assert!(shown_start["actor_id"].is_string());
    assert!(shown_start["ip"].is_string());
    assert!(shown_start["user_agent"].is_string());
    assert!(shown
        .iter()
        .any(|row| row["position"] == ended.position && row["impersonator_id"].is_string()));

    let later_time = match backend {
        Backend::Sqlite => "occurred_at = '2030-01-01T00:00:00+00:00'",
        Backend::Postgres => "occurred_at = occurred_at + interval '1 hour'",
    };
    let mut edits = vec![
        (
            &started,
            "data = replace(data, 'ticket 42 lost phone', 'routine check')",
        ),
        (&started, "actor_id = user_id"),
        (&started, "actor_id = NULL"),
        (&ended, "impersonator_id = NULL"),
        (&started, "ip = '203.0.113.7'"),
        (&started, "user_agent = 'curl/8.5.0'"),
        (&started, later_time),
        (&started, "type = 'ImpersonationEnded'"),
        (&started, "user_id = actor_id"),
        (&started, "sequence = sequence + 1"),
        (&started, "position = position + 1000000"),
    ];
    if backend == Backend::Postgres {
        // Stored at microseconds: one microsecond is an edit too.
        edits.push((
            &started,
            "occurred_at = occurred_at + interval '1 microsecond'",
        ));
    }
    app.tamper("CREATE TABLE audit_kept AS SELECT * FROM audit_log")
        .await;
    for (row, edit) in edits {
        app.tamper(&format!(
            "UPDATE audit_log SET {edit} WHERE position = {}",
            row.position
        ))
        .await;
        assert_row_changed(&app, &root, row, edit).await;
        // Back as it was, for the next edit.
        app.tamper(&format!(
            "DELETE FROM audit_log WHERE id = (SELECT id FROM audit_kept WHERE position = {0});
                 INSERT INTO audit_log SELECT * FROM audit_kept WHERE position = {0};",
            row.position
        ))
        .await;
    }
    assert_eq!(
        assert_verifies(&app, &root).await,
        clean,
        "the untouched trail verifies with the same head"
    );
    app.stop().await;
}

/// Signs a user with TOTP (and an email address) in through a challenge:
/// a code sent by email, a wrong code, then the right one; returns the
/// challenge's id.
async fn sign_in_through_a_challenge(app: &TestApp) -> String {
    app.create_user("ann", &password("ann"), Some("ann@example.com"), "user")
        .await;
    let token = app.token("ann", &password("ann")).await;
    let (secret, _) = app.enroll_totp(&token).await;
    app.next_step();
    let login = app.login("ann", &password("ann")).await;
    assert_eq!(login.body["status"], "two_factor_required", "{login:?}");
    let challenge = login.body["challenge_id"].as_str().unwrap().to_string();
    let sent = app
        .post(
            &format!("/api/v1/login/challenges/{challenge}/email"),
            None,
            json!({}),
        )
        .await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{sent:?}");
    let right = app.code(&secret);
    let wrong = (0..10)
        .map(|digit| digit.to_string().repeat(6))
        .find(|code| *code != right)
        .unwrap();
    let verify_path = format!("/api/v1/login/challenges/{challenge}/verify");
    let refused = app
        .post(
            &verify_path,
            None,
            json!({ "method": "totp", "code": wrong, "remember_device": false }),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{refused:?}");
    let accepted: Answer = app
        .post(
            &verify_path,
            None,
            json!({ "method": "totp", "code": right, "remember_device": false }),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::OK, "{accepted:?}");
    challenge
}

async fn a_sign_in_with_a_challenge_leaves_its_id_nowhere_in_the_audit_trail(backend: Backend) {
    let app = spawn_app(backend).await;
    let challenge = sign_in_through_a_challenge(&app).await;
    let root = app.admin_token().await;
    let held = on_database!(app, conn => {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM events WHERE CAST(payload AS TEXT) LIKE '%' || $1 || '%'",
        )
        .bind(&challenge)
        .fetch_one(&mut conn)
        .await
        .unwrap()
    });
    assert_eq!(held, 4, "issued, email sent, rejected, accepted");

    let (rows, pages) = audit_pages(&app, &root).await;
    for event_type in [
        "ChallengeIssued",
        "EmailCodeSent",
        "SecondFactorRejected",
        "SecondFactorAccepted",
    ] {
        let row = rows
            .iter()
            .find(|row| row["type"] == event_type)
            .unwrap_or_else(|| panic!("a {event_type} row"));
        let data = row["data"].as_object().unwrap();
        assert!(!data.contains_key("challenge_id"), "{row}");
        assert!(!data.is_empty(), "the rest stays: {row}");
    }
    let exports = [
        ("the pages", pages),
        ("the CSV export", export(&app, &root, "csv").await),
        ("the JSON lines export", export(&app, &root, "jsonl").await),
        ("twofold audit export", export_cli(&app, "jsonl")),
        ("twofold audit export (CSV)", export_cli(&app, "csv")),
    ];
    for (what, text) in exports {
        assert!(text.contains("SecondFactorAccepted"), "{what}: {text}");
        assert!(!text.contains(&challenge), "{what} holds the challenge id");
        assert!(!text.contains("challenge_id"), "{what}: {text}");
    }
    assert_verifies(&app, &root).await;
    app.stop().await;
}

/// Writes `data` of every row whose event holds a challenge id the way
/// earlier versions did (the id kept, keys sorted, compact) and forgets the
/// upgrade; returns those rows' positions.
async fn write_challenge_ids_the_old_way(app: &TestApp) -> Vec<i64> {
    let sql = "SELECT a.position, a.data, CAST(e.payload AS TEXT)
                 FROM audit_log a JOIN events e ON e.position = a.position
                ORDER BY a.id";
    let rows: Vec<(i64, String, String)> = on_database!(app, conn => {
        sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap()
    });
    let mut positions = Vec::new();
    for (position, data, payload) in rows {
        let payload: BTreeMap<String, Value> = match serde_json::from_str(&payload) {
            Ok(payload) => payload,
            Err(_) => continue, // a unit event: `"Name"`
        };
        let Some(challenge) = payload
            .values()
            .next()
            .and_then(|inner| inner.get("challenge_id"))
        else {
            continue;
        };
        let mut old: BTreeMap<String, Value> = serde_json::from_str(&data).unwrap();
        old.insert("challenge_id".into(), challenge.clone());
        let old = serde_json::to_string(&old).unwrap();
        on_database!(app, conn => {
            sqlx::query("UPDATE audit_log SET data = $1 WHERE position = $2")
                .bind(old)
                .bind(position)
                .execute(&mut conn)
                .await
                .unwrap();
        });
        positions.push(position);
    }
    app.tamper("DELETE FROM data_migrations").await;
    positions
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.scalar(sql).await
}

async fn migrate_takes_challenge_ids_out_of_a_trail_written_the_old_way(backend: Backend) {
    let app = spawn_app(backend).await;
    let challenge = sign_in_through_a_challenge(&app).await;
    let root = app.admin_token().await;
    let clean = assert_verifies(&app, &root).await;
    assert_eq!(
        count(&app, "SELECT count(*) FROM data_migrations").await,
        2,
        "a new store is recorded as upgraded (both data migrations) at its first start"
    );

    let old = write_challenge_ids_the_old_way(&app).await;
    assert_eq!(old.len(), 4, "{old:?}");
    let like = format!("SELECT count(*) FROM audit_log WHERE data LIKE '%{challenge}%'");
    assert_eq!(count(&app, &like).await, 4);
    // Why the upgrade: verify now compares `data` with today's rule.
    let before = verify(&app, &root).await;
    assert_eq!(
        before["first_mismatch"]["problem"], "row_changed",
        "{before}"
    );
    assert_eq!(before["first_mismatch"]["position"], old[0], "{before}");

    let migrated = std::process::Command::new(binary())
        .args(["migrate", "--database-url", &app.database_url])
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{migrated:?}");

    assert_eq!(count(&app, &like).await, 0);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM audit_log WHERE data LIKE '%challenge_id%'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &app,
            "SELECT rows_changed FROM data_migrations WHERE name = 'audit_data_without_challenge_ids'"
        )
        .await,
        4
    );
    assert_eq!(assert_verifies(&app, &root).await, clean, "the same head");
    app.stop().await;
}

async fn the_upgrade_runs_at_start_and_keeps_an_earlier_edit_evident(backend: Backend) {
    let app = spawn_app(backend).await;
    sign_in_through_a_challenge(&app).await;
    let root = app.admin_token().await;
    write_challenge_ids_the_old_way(&app).await;
    // Someone edited one of the old rows before the upgrade.
    let edited = row_of(&app, "SecondFactorRejected").await;
    app.tamper(&format!(
        "UPDATE audit_log SET data = replace(data, '\"totp\"', '\"recovery_code\"')
              WHERE position = {}",
        edited.position
    ))
    .await;

    // A second server on the same database: its start runs the upgrade.
    let second = twofold_api::start(twofold_api::ServeConfig {
        database_url: app.database_url.clone(),
        database_max_connections: 4,
        mail: twofold_api::MailConfig {
            smtp_url: None,
            directory: app.dir.path().join("mail-of-the-second-server"),
            from: "twofold <no-reply@localhost>".into(),
        },
        listen: "127.0.0.1:0".parse().unwrap(),
        master_key_file: app.dir.path().join("master.key"),
        settings: default_settings(),
        bootstrap_admin: None,
        clock: app.clock.clone(),
        connections: Default::default(),
        trusted_proxies: Default::default(),
        metrics_listen: None,
        audit_signing_key_file: None,
        audit_checkpoint_every: None,
    })
    .await
    .expect("a second server on the same database starts");

    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM audit_log WHERE data LIKE '%challenge_id%'"
        )
        .await,
        0
    );
    assert_eq!(count(&app, "SELECT count(*) FROM data_migrations").await, 2);
    // The edit was kept (less the challenge id): verify still names it.
    assert_row_changed(&app, &root, &edited, "edited before the upgrade").await;
    second.stop().await.unwrap();
    app.stop().await;
}
