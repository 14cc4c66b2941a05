//! The audit trail as auditors read it: every column `/audit` and the
//! exports show is recomputed by verify (an edit of any one, made with SQL
//! behind the service's back, is reported at its row).

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::helpers::{binary, spawn_app, Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(verify_reports_an_edit_of_any_shown_audit_column_at_its_row);

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

/// SQL straight on the database, as someone with access and no business there.
async fn tamper(app: &TestApp, sql: &str) {
    on_database!(app, conn => {
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    });
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
    tamper(&app, "CREATE TABLE audit_kept AS SELECT * FROM audit_log").await;
    for (row, edit) in edits {
        tamper(
            &app,
            &format!(
                "UPDATE audit_log SET {edit} WHERE position = {}",
                row.position
            ),
        )
        .await;
        assert_row_changed(&app, &root, row, edit).await;
        // Back as it was, for the next edit.
        tamper(
            &app,
            &format!(
                "DELETE FROM audit_log WHERE id = (SELECT id FROM audit_kept WHERE position = {0});
                 INSERT INTO audit_log SELECT * FROM audit_kept WHERE position = {0};",
                row.position
            ),
        )
        .await;
    }
    assert_eq!(
        assert_verifies(&app, &root).await,
        clean,
        "the untouched trail verifies with the same head"
    );
    app.stop().await;
}
