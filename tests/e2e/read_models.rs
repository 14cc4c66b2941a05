//! Read models that never miss an event: the 2FA report (counters and CSV),
//! the audit trail (pages, exports, secrets kept out), its tamper evidence
//! (verify, and each kind of tampering done with SQL behind the service's
//! back), `min_position`, who may read, and rebuild = incremental.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;
use twofold_api::Clock;

use crate::helpers::{binary, spawn_app, Answer, Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    report_counts_follow_roles_enrollments_and_enforcement,
    report_csv_has_one_row_per_user_with_formulas_neutralised,
    audit_page_shows_each_step_with_actor_and_impersonator,
    audit_exports_stream_the_same_rows_without_secrets,
    audit_pages_never_repeat_or_drop_a_row_while_writes_go_on,
    audit_filters_and_bad_input,
    verify_is_ok_on_a_clean_store_and_keeps_an_external_head,
    verify_detects_an_edited_payload,
    verify_detects_a_deleted_event,
    verify_detects_an_event_inserted_below_the_checkpoint,
    verify_detects_a_renumbered_stream,
    verify_detects_reordered_events,
    min_position_not_reached_answers_503_within_five_seconds,
    auditors_read_reports_and_audit_and_users_may_not,
    rebuild_gives_the_same_rows_as_incremental,
);

fn password(username: &str) -> String {
    format!("{username}-password")
}

async fn create(app: &TestApp, username: &str, email: Option<&str>, role: &str) -> String {
    app.create_user(username, &password(username), email, role)
        .await
}

async fn sign_in(app: &TestApp, username: &str) -> String {
    app.token(username, &password(username)).await
}

async fn set_enforced(app: &TestApp, root: &str, user_id: &str, enforce: bool) {
    let answer = app
        .patch(
            &format!("/api/v1/users/{user_id}"),
            root,
            json!({ "enforce_two_factor": enforce }),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
}

/// A query's rows as text (each row one column of text).
async fn texts(app: &TestApp, sql: &str) -> Vec<String> {
    match app.backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
        }
    }
}

/// GET returning the raw body (CSV, JSON lines).
async fn get_text(app: &TestApp, path: &str, token: &str) -> (StatusCode, String, String) {
    let response = app
        .client
        .get(format!("{}{path}", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

fn csv_rows(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    (header, rows)
}

/// Every audit row, following cursors with the given page size.
async fn audit_all(app: &TestApp, token: &str, query: &str, limit: usize) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/audit?limit={limit}{query}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = app.get(&path, token).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        let events = page.body["events"].as_array().unwrap();
        assert!(events.len() <= limit);
        rows.extend(events.iter().cloned());
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return rows,
        }
    }
}

async fn count(app: &TestApp, condition: &str) -> i64 {
    app.scalar(&format!(
        "SELECT count(*) FROM user_directory WHERE {condition}"
    ))
    .await
}

/// The report compared with COUNT(*) over the directory it summarises.
async fn assert_report_matches_directory(app: &TestApp, token: &str) -> Value {
    let report = app.get("/api/v1/reports/two-factor", token).await;
    assert_eq!(report.status, StatusCode::OK, "{report:?}");
    let body = report.body;
    for (field, condition) in [
        ("total", "1 = 1"),
        ("enabled", "two_factor_status = 'enabled'"),
        ("pending", "two_factor_status = 'pending'"),
        ("disabled", "two_factor_status = 'disabled'"),
        ("enforced", "enforced"),
        (
            "enforced_not_enabled",
            "enforced AND two_factor_status <> 'enabled'",
        ),
    ] {
        assert_eq!(body[field], count(app, condition).await, "{field}: {body}");
    }
    let roles = body["by_role"].as_object().unwrap();
    assert_eq!(roles.len(), 4, "{body}");
    for role in ["user", "auditor", "admin", "super_admin"] {
        assert_eq!(
            roles[role]["total"],
            count(app, &format!("role = '{role}'")).await,
            "{role}: {body}"
        );
        assert_eq!(
            roles[role]["enabled"],
            count(
                app,
                &format!("role = '{role}' AND two_factor_status = 'enabled'")
            )
            .await,
            "{role}: {body}"
        );
    }
    let as_of = body["as_of"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(as_of).unwrap();
    body
}

async fn report_counts_follow_roles_enrollments_and_enforcement(backend: Backend) {
    let app = spawn_app(backend).await;
    let root = app.admin_token().await;
    let ann = create(&app, "ann", None, "user").await;
    let bob = create(&app, "bob", None, "user").await;
    let cat = create(&app, "cat", None, "user").await;
    create(&app, "dee", None, "auditor").await;
    create(&app, "eli", None, "admin").await;
    let body = assert_report_matches_directory(&app, &root).await;
    assert_eq!(body["total"], 6);
    assert_eq!(
        body["by_role"]["auditor"],
        json!({ "total": 1, "enabled": 0 })
    );

    // ann enables 2FA; bob leaves an enrollment pending; eli enables then disables.
    let token = sign_in(&app, "ann").await;
    app.enroll_totp(&token).await;
    let token = sign_in(&app, "bob").await;
    let started = app
        .post("/api/v1/me/two-factor/totp", Some(&token), json!({}))
        .await;
    assert_eq!(started.status, StatusCode::CREATED);
    let token = sign_in(&app, "eli").await;
    let (secret, _) = app.enroll_totp(&token).await;
    let disabled = app
        .turn_two_factor_off(&token, &password("eli"), Some(&secret))
        .await;
    assert_eq!(disabled.status, StatusCode::NO_CONTENT, "{disabled:?}");
    // Enforcement on ann (enabled) and cat (not), then lifted for ann; cat
    // becomes an auditor.
    set_enforced(&app, &root, &ann, true).await;
    set_enforced(&app, &root, &cat, true).await;
    set_enforced(&app, &root, &bob, true).await;
    set_enforced(&app, &root, &bob, false).await;
    let promoted = app
        .patch(
            &format!("/api/v1/users/{cat}"),
            &root,
            json!({ "role": "auditor" }),
        )
        .await;
    assert_eq!(promoted.status, StatusCode::OK, "{promoted:?}");

    let body = assert_report_matches_directory(&app, &root).await;
    assert_eq!(body["total"], 6);
    assert_eq!(body["enabled"], 1);
    assert_eq!(body["pending"], 1);
    assert_eq!(body["disabled"], 4);
    assert_eq!(body["enforced"], 2);
    assert_eq!(body["enforced_not_enabled"], 1);
    assert_eq!(body["by_role"]["user"], json!({ "total": 2, "enabled": 1 }));
    assert_eq!(
        body["by_role"]["auditor"],
        json!({ "total": 2, "enabled": 0 })
    );
    assert_eq!(
        body["by_role"]["admin"],
        json!({ "total": 1, "enabled": 0 })
    );
    app.stop().await;
}

async fn report_csv_has_one_row_per_user_with_formulas_neutralised(backend: Backend) {
    let app = spawn_app(backend).await;
    let root = app.admin_token().await;
    create(&app, "@sum", Some("=1+2@x.com"), "user").await;
    create(&app, "-minus", Some("+a&'b'@x.com"), "user").await;
    let ann = create(&app, "ann", Some("ann@example.com"), "user").await;
    let token = sign_in(&app, "ann").await;
    app.enroll_totp(&token).await;

    let (status, content_type, text) =
        get_text(&app, "/api/v1/reports/two-factor?format=csv", &root).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let (header, rows) = csv_rows(&text);
    assert_eq!(
        header,
        [
            "id",
            "username",
            "email",
            "role",
            "two_factor_status",
            "enforced",
            "enabled_at",
            "last_login_at"
        ]
    );
    assert_eq!(rows.len() as i64, count(&app, "1 = 1").await, "{text}");
    let by_name: BTreeMap<&str, &Vec<String>> =
        rows.iter().map(|row| (row[1].as_str(), row)).collect();
    assert_eq!(by_name["'@sum"][2], "'=1+2@x.com");
    assert_eq!(by_name["'-minus"][2], "'+a&'b'@x.com");
    let ann_row = by_name["ann"];
    assert_eq!(ann_row[0], ann);
    assert_eq!(&ann_row[3..6], ["user", "enabled", "false"]);
    chrono::DateTime::parse_from_rfc3339(&ann_row[6]).unwrap();
    chrono::DateTime::parse_from_rfc3339(&ann_row[7]).unwrap();
    assert_eq!(by_name["root"][3], "super_admin");
    // Quoting is the CSV writer's (export::tests::csv_cells_are_neutralised_and_quoted):
    // no field of this report can hold a comma or a quote any more.
    app.stop().await;
}

async fn audit_page_shows_each_step_with_actor_and_impersonator(backend: Backend) {
    let app = spawn_app(backend).await;
    let ada = create(&app, "ada", None, "admin").await;
    let admin = sign_in(&app, "ada").await;
    let created = app
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({ "username": "uma", "password": password("uma") }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let uma = created.body["id"].as_str().unwrap().to_string();
    let token = sign_in(&app, "uma").await;
    app.enroll_totp(&token).await;
    let acting = app
        .post(
            &format!("/api/v1/users/{uma}/impersonation"),
            Some(&admin),
            json!({ "reason": "ticket 42 lost phone" }),
        )
        .await;
    assert_eq!(acting.status, StatusCode::CREATED, "{acting:?}");
    let acting = acting.body["session_token"].as_str().unwrap().to_string();
    let disabled = app.delete("/api/v1/me/two-factor", &acting, None).await;
    assert_eq!(disabled.status, StatusCode::NO_CONTENT, "{disabled:?}");

    create(&app, "aud", None, "auditor").await;
    let auditor = sign_in(&app, "aud").await;
    let rows = audit_all(&app, &auditor, &format!("&user_id={uma}"), 100).await;
    let steps: Vec<&str> = rows.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(
        steps,
        [
            "UserRegistered",
            "SessionStarted",
            "TotpEnrollmentStarted",
            "TotpEnrollmentConfirmed",
            "ImpersonationStarted",
            "SessionStarted",
            "TwoFactorDisabled"
        ],
        "{rows:#?}"
    );
    for (index, row) in rows.iter().enumerate() {
        assert_eq!(row["user_id"], uma.as_str());
        assert_eq!(row["sequence"], index as i64 + 1, "{row}");
        assert!(row["position"].as_i64().unwrap() > 0);
        chrono::DateTime::parse_from_rfc3339(row["occurred_at"].as_str().unwrap()).unwrap();
        assert!(row["data"].is_object(), "{row}");
        let keys = [
            "position",
            "user_id",
            "sequence",
            "type",
            "occurred_at",
            "actor_id",
            "impersonator_id",
            "ip",
            "user_agent",
            "data",
            "username",
            "actor_username",
            "impersonator_username",
            "summary",
            "correlation_id",
        ];
        assert_eq!(row.as_object().unwrap().len(), keys.len(), "{row}");
        for key in keys {
            assert!(row.get(key).is_some(), "{key} in {row}");
        }
    }
    let positions: Vec<i64> = rows
        .iter()
        .map(|r| r["position"].as_i64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    // Who did each step.
    assert_eq!(rows[0]["actor_id"], ada.as_str(), "created by ada");
    assert_eq!(rows[0]["data"]["username"], "uma");
    assert_eq!(rows[0]["ip"], "127.0.0.1");
    for row in &rows[1..4] {
        assert_eq!(row["actor_id"], uma.as_str(), "{row}");
        assert_eq!(row["impersonator_id"], Value::Null, "{row}");
    }
    assert_eq!(rows[4]["actor_id"], ada.as_str());
    assert_eq!(rows[4]["data"]["reason"], "ticket 42 lost phone");
    let last = &rows[6];
    assert_eq!(last["actor_id"], ada.as_str(), "{last}");
    assert_eq!(last["impersonator_id"], ada.as_str(), "{last}");
    assert_eq!(last["data"], json!({}));
    // ada's own actions, found by actor.
    let by_ada = audit_all(&app, &auditor, &format!("&actor_id={ada}"), 2).await;
    assert!(by_ada.iter().any(|r| r["type"] == "TwoFactorDisabled"));
    assert!(by_ada.iter().all(|r| r["actor_id"] == ada.as_str()));
    app.stop().await;
}

async fn audit_exports_stream_the_same_rows_without_secrets(backend: Backend) {
    let app = spawn_app(backend).await;
    let root = app.admin_token().await;
    // A user agent that a spreadsheet would run as a formula.
    let created = app
        .client
        .post(format!("{}/api/v1/users", app.base))
        .bearer_auth(&root)
        .header("user-agent", "=HYPERLINK(\"http://x\")")
        .json(
            &json!({ "username": "ann", "password": password("ann"), "email": "ann@example.com" }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let token = sign_in(&app, "ann").await;
    let (secret, recovery) = app.enroll_totp(&token).await;
    app.next_step();
    let login = app
        .login_with_code("ann", &password("ann"), &secret, true)
        .await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    let device_token = login.body["device_token"].as_str().unwrap().to_string();
    let changed = app
        .post(
            "/api/v1/users",
            Some(&root),
            json!({ "username": "bob", "password": password("bob") }),
        )
        .await;
    assert_eq!(changed.status, StatusCode::CREATED);

    let page = audit_all(&app, &root, "", 500).await;
    assert_eq!(page.len() as i64, app.event_count().await);

    let (status, content_type, text) = get_text(&app, "/api/v1/audit?format=jsonl", &root).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("application/x-ndjson"),
        "{content_type}"
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines, page, "JSON lines hold the same rows as the pages");

    let (status, content_type, csv_text) = get_text(&app, "/api/v1/audit?format=csv", &root).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/csv"));
    let (header, rows) = csv_rows(&csv_text);
    assert_eq!(
        header,
        [
            "position",
            "user_id",
            "sequence",
            "type",
            "occurred_at",
            "actor_id",
            "impersonator_id",
            "ip",
            "user_agent",
            "data"
        ]
    );
    assert_eq!(rows.len(), page.len());
    for (row, json_row) in rows.iter().zip(&page) {
        assert_eq!(row[0], json_row["position"].to_string());
        assert_eq!(row[3], json_row["type"].as_str().unwrap());
        let data: Value = serde_json::from_str(&row[9]).unwrap();
        assert_eq!(data, json_row["data"]);
    }
    assert!(
        rows.iter().any(|row| row[8] == "'=HYPERLINK(\"http://x\")"),
        "{csv_text}"
    );

    // Neither a secret, a code, a hash nor a password hash leaves.
    let session_hashes = texts(&app, "SELECT token_hash FROM sessions").await;
    for export in [&text, &csv_text] {
        assert!(!export.contains("hash"), "{export}");
        assert!(!export.contains("$argon2"), "{export}");
        assert!(!export.contains(&secret), "TOTP secret");
        assert!(!export.contains(&device_token), "device token");
        assert!(!export.contains(&token), "session token");
        for code in &recovery {
            assert!(!export.contains(code.as_str()), "recovery code");
        }
        for hash in &session_hashes {
            assert!(!export.contains(hash.as_str()), "token hash");
        }
    }

    // The command line exports the same rows.
    let output = std::process::Command::new(binary())
        .args([
            "audit",
            "export",
            "--format",
            "jsonl",
            "--database-url",
            &app.database_url,
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8(output.stdout).unwrap(), text);
    app.stop().await;
}

async fn audit_pages_never_repeat_or_drop_a_row_while_writes_go_on(backend: Backend) {
    let app = spawn_app(backend).await;
    let root = app.admin_token().await;
    let ann = create(&app, "ann", None, "user").await;
    for n in 0..8 {
        let changed = app
            .patch(
                &format!("/api/v1/users/{ann}"),
                &root,
                json!({ "email": format!("ann{n}@example.com") }),
            )
            .await;
        assert_eq!(changed.status, StatusCode::OK);
    }
    assert!(app.event_count().await >= 12);
    let writer = async {
        for n in 0..25 {
            let changed = app
                .patch(
                    &format!("/api/v1/users/{ann}"),
                    &root,
                    json!({ "email": format!("later{n}@example.com") }),
                )
                .await;
            assert_eq!(changed.status, StatusCode::OK);
        }
    };
    let (paged, ()) = futures::join!(audit_all(&app, &root, "", 3), writer);
    let all = audit_all(&app, &root, "", 500).await;
    assert_eq!(all.len() as i64, app.event_count().await);
    let positions = |rows: &[Value]| -> Vec<i64> {
        rows.iter()
            .map(|r| r["position"].as_i64().unwrap())
            .collect()
    };
    let paged = positions(&paged);
    let all = positions(&all);
    assert!(paged.len() >= 12, "{paged:?}");
    assert_eq!(
        paged[..],
        all[..paged.len()],
        "pages = a prefix of the trail"
    );
    let mut unique = paged.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), paged.len(), "no row twice");
    app.stop().await;
}

async fn audit_filters_and_bad_input(backend: Backend) {
    let app = spawn_app(backend).await;
    let root = app.admin_token().await;
    let ann = create(&app, "ann", None, "user").await;
    let before = app.clock.now();
    app.clock.advance(chrono::Duration::minutes(5));
    let changed = app
        .patch(
            &format!("/api/v1/users/{ann}"),
            &root,
            json!({ "email": "ann@example.com" }),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK);
    let rows = audit_all(&app, &root, "&type=EmailChanged", 10).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["data"]["email"], "ann@example.com");
    let from =
        (before + chrono::Duration::minutes(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let later = audit_all(&app, &root, &format!("&from={from}&user_id={ann}"), 10).await;
    assert_eq!(later.len(), 1, "{later:?}");
    let earlier = audit_all(&app, &root, &format!("&to={from}&user_id={ann}"), 10).await;
    assert_eq!(earlier.len(), 1, "{earlier:?}");
    assert_eq!(earlier[0]["type"], "UserRegistered");
    let empty = app
        .get("/api/v1/audit?user_id=&actor_id=&type=&limit=", &root)
        .await;
    assert_eq!(empty.status, StatusCode::OK, "empty values mean no filter");
    for bad in [
        "user_id=nope",
        "actor_id=1",
        "type=Drop%20table",
        "from=yesterday",
        "to=2024-13-01T00:00:00Z",
        "limit=0",
        "limit=501",
        "limit=x",
        "cursor=%%%",
        "cursor=YWJj",
        "format=xml",
        "min_position=-1",
        "unknown=1",
    ] {
        let answer = app.get(&format!("/api/v1/audit?{bad}"), &root).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}: {answer:?}");
        assert_eq!(answer.error(), "invalid_request", "{bad}");
    }
    for bad in ["format=pdf", "min_position=abc"] {
        let answer = app
            .get(&format!("/api/v1/reports/two-factor?{bad}"), &root)
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}: {answer:?}");
    }
    app.stop().await;
}

/// A few users and changes: something to tamper with.
struct Store {
    app: TestApp,
    root: String,
    ann: String,
    bob: String,
}

async fn store(backend: Backend) -> Store {
    let app = spawn_app(backend).await;
    let root = app.admin_token().await;
    let ann = create(&app, "ann", Some("ann@example.com"), "user").await;
    let bob = create(&app, "bob", None, "user").await;
    for (user, email) in [
        (&ann, "ann2@example.com"),
        (&bob, "bob@example.com"),
        (&ann, "ann3@example.com"),
        (&bob, "bob2@example.com"),
    ] {
        let changed = app
            .patch(
                &format!("/api/v1/users/{user}"),
                &root,
                json!({ "email": email }),
            )
            .await;
        assert_eq!(changed.status, StatusCode::OK);
    }
    let report = verify(&app, &root).await;
    assert_eq!(report.body["ok"], true, "{report:?}");
    Store {
        app,
        root,
        ann,
        bob,
    }
}

async fn verify(app: &TestApp, token: &str) -> Answer {
    let answer = app.get("/api/v1/audit/verify", token).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer
}

/// `twofold audit verify` on the test database: (exit success, report).
fn verify_cli(app: &TestApp, expect_head: Option<&str>) -> (bool, Value) {
    let mut command = std::process::Command::new(binary());
    command.args(["audit", "verify", "--database-url", &app.database_url]);
    if let Some(head) = expect_head {
        command.args(["--expect-head", head]);
    }
    let output = command.output().unwrap();
    let report = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("a JSON report: {output:?}"));
    (output.status.success(), report)
}

async fn position_of(app: &TestApp, user_id: &str, sequence: i64) -> i64 {
    app.scalar(&format!(
        "SELECT position FROM events WHERE aggregate_id = '{user_id}' AND sequence = {sequence}"
    ))
    .await
}

/// The store's answer after tampering: not ok, and where.
async fn assert_detected(s: &Store, problems: &[&str]) -> Value {
    let report = verify(&s.app, &s.root).await.body;
    assert_eq!(report["ok"], false, "{report}");
    let mismatch = report["first_mismatch"].clone();
    assert!(
        problems.contains(&mismatch["problem"].as_str().unwrap()),
        "{report}"
    );
    let (success, cli) = verify_cli(&s.app, None);
    assert!(!success, "the command exits non-zero: {cli}");
    assert_eq!(cli["first_mismatch"], mismatch, "{cli}");
    mismatch
}

async fn verify_is_ok_on_a_clean_store_and_keeps_an_external_head(backend: Backend) {
    let s = store(backend).await;
    let report = verify(&s.app, &s.root).await.body;
    assert_eq!(report["ok"], true, "{report}");
    let events = s.app.event_count().await;
    assert_eq!(report["events_checked"], events, "{report}");
    let head = report["head"].as_str().unwrap().to_string();
    assert_eq!(head.len(), 64);
    let head_position = report["head_position"].as_i64().unwrap();
    assert!(report.get("first_mismatch").is_none());

    let (success, cli) = verify_cli(&s.app, None);
    assert!(success, "{cli}");
    assert_eq!(cli, report, "the command and the API agree");
    // An operator kept POSITION:HEX elsewhere; later runs must reach it.
    let kept = format!("{head_position}:{head}");
    let more = s
        .app
        .patch(
            &format!("/api/v1/users/{}", s.ann),
            &s.root,
            json!({ "email": "ann9@example.com" }),
        )
        .await;
    assert_eq!(more.status, StatusCode::OK);
    let (success, later) = verify_cli(&s.app, Some(&kept));
    assert!(success, "{later}");
    assert_ne!(later["head"], head.as_str(), "the head moves on");
    let wrong = format!("{head_position}:{}", "0".repeat(64));
    let (success, refused) = verify_cli(&s.app, Some(&wrong));
    assert!(!success);
    assert_eq!(
        refused["first_mismatch"]["problem"], "head_differs",
        "{refused}"
    );
    let (success, refused) = verify_cli(&s.app, Some(&format!("99999:{head}")));
    assert!(!success);
    assert_eq!(refused["first_mismatch"]["problem"], "head_not_reached");
    s.app.stop().await;
}

async fn verify_detects_an_edited_payload(backend: Backend) {
    let s = store(backend).await;
    let sql = match backend {
        Backend::Sqlite => {
            "UPDATE events SET payload = replace(payload, 'bob@example.com', 'eve@example.com')"
        }
        Backend::Postgres => {
            "UPDATE events SET payload = replace(payload::text, 'bob@example.com', 'eve@example.com')::jsonb"
        }
    };
    s.app.tamper(sql).await;
    let mismatch = assert_detected(&s, &["content_changed"]).await;
    assert_eq!(mismatch["user_id"], s.bob.as_str());
    assert_eq!(mismatch["sequence"], 2);
    assert_eq!(mismatch["position"], position_of(&s.app, &s.bob, 2).await);
    s.app.stop().await;
}

async fn verify_detects_a_deleted_event(backend: Backend) {
    let s = store(backend).await;
    let position = position_of(&s.app, &s.ann, 2).await;
    s.app
        .tamper(&format!("DELETE FROM events WHERE position = {position}"))
        .await;
    let mismatch = assert_detected(&s, &["event_missing"]).await;
    assert_eq!(mismatch["position"], position);
    assert_eq!(mismatch["user_id"], s.ann.as_str());
    assert_eq!(mismatch["sequence"], 2);
    s.app.stop().await;
}

async fn verify_detects_an_event_inserted_below_the_checkpoint(backend: Backend) {
    let s = store(backend).await;
    let insert = format!(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata{})
         VALUES ('user', '{}', 99, 'RoleChanged', '1', '{{\"RoleChanged\":{{\"role\":\"admin\"}}}}',
                 '{{}}'{})",
        if backend == Backend::Postgres {
            ", transaction_id"
        } else {
            ""
        },
        s.ann,
        // PostgreSQL: a transaction id older than every real one puts it
        // behind the checkpoint, where the projection never looks.
        if backend == Backend::Postgres {
            ", 1"
        } else {
            ""
        },
    );
    let sql = match backend {
        // SQLite numbers it last; moving it to position 0 in the same
        // transaction hides it behind the checkpoint before the poller sees it.
        Backend::Sqlite => format!(
            "BEGIN IMMEDIATE; {insert}; UPDATE events SET position = 0 WHERE sequence = 99; COMMIT;"
        ),
        Backend::Postgres => insert,
    };
    s.app.tamper(&sql).await;
    let mismatch = assert_detected(&s, &["event_not_in_trail"]).await;
    assert_eq!(mismatch["user_id"], s.ann.as_str());
    assert_eq!(mismatch["sequence"], 99);
    s.app.stop().await;
}

async fn verify_detects_a_renumbered_stream(backend: Backend) {
    let s = store(backend).await;
    // Make room at sequence 2 of ann's stream and slip an event in there,
    // the way one would forge "it was always like this".
    let moved = position_of(&s.app, &s.ann, 2).await;
    s.app.tamper(&format!(
            "BEGIN;
             UPDATE events SET sequence = sequence + 1000 WHERE aggregate_id = '{ann}' AND sequence >= 2;
             UPDATE events SET sequence = sequence - 999 WHERE aggregate_id = '{ann}' AND sequence >= 1002;
             INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ('user', '{ann}', 2, 'RoleChanged', '1', '{{\"RoleChanged\":{{\"role\":\"auditor\"}}}}', '{{}}');
             COMMIT;",
            ann = s.ann
        ),
    )
    .await;
    let mismatch = assert_detected(&s, &["event_changed"]).await;
    assert_eq!(mismatch["position"], moved);
    assert_eq!(mismatch["user_id"], s.ann.as_str());
    assert_eq!(
        mismatch["sequence"], 3,
        "the event recorded as 2 now claims 3"
    );
    s.app.stop().await;
}

async fn verify_detects_reordered_events(backend: Backend) {
    let s = store(backend).await;
    // Two single-event commands of different users: swap their places.
    let first = position_of(&s.app, &s.ann, 2).await;
    let second = position_of(&s.app, &s.bob, 2).await;
    let sql = match backend {
        Backend::Sqlite => format!(
            "BEGIN IMMEDIATE;
             UPDATE events SET position = -1 WHERE position = {first};
             UPDATE events SET position = {first} WHERE position = {second};
             UPDATE events SET position = {second} WHERE position = -1;
             COMMIT;"
        ),
        // Positions are identity columns there; the feed order is
        // (transaction_id, position), so swap the transaction ids.
        Backend::Postgres => format!(
            "UPDATE events e SET transaction_id = o.transaction_id
               FROM events o
              WHERE (e.position, o.position) IN (({first}, {second}), ({second}, {first}))"
        ),
    };
    s.app.tamper(&sql).await;
    let mismatch = assert_detected(&s, &["event_changed", "order_changed"]).await;
    let at = mismatch["position"].as_i64().unwrap();
    assert!(at == first || at == second, "{mismatch}");
    s.app.stop().await;
}

async fn min_position_not_reached_answers_503_within_five_seconds(backend: Backend) {
    let app = spawn_app(backend).await;
    let root = app.admin_token().await;
    let created = app
        .post(
            "/api/v1/users",
            Some(&root),
            json!({ "username": "ann", "password": password("ann") }),
        )
        .await;
    let reached = created.position().unwrap();
    for path in [
        "/api/v1/users",
        "/api/v1/reports/two-factor",
        "/api/v1/audit",
    ] {
        let answer = app
            .get(&format!("{path}?min_position={reached}"), &root)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {answer:?}");
    }
    let started = Instant::now();
    let far = reached + 1_000_000;
    let (shared, token) = (&app, &root);
    let answers = futures::future::join_all(
        [
            "/api/v1/users?limit=5&",
            "/api/v1/reports/two-factor?",
            "/api/v1/audit?",
        ]
        .map(|path| async move {
            shared
                .get(&format!("{path}min_position={far}"), token)
                .await
        }),
    )
    .await;
    let elapsed = started.elapsed();
    for answer in answers {
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{answer:?}");
        assert_eq!(answer.error(), "unavailable");
        assert!(answer.headers.contains_key("retry-after"), "{answer:?}");
    }
    assert!(
        elapsed >= Duration::from_secs(4) && elapsed < Duration::from_secs(8),
        "{elapsed:?}"
    );
    app.stop().await;
}

async fn auditors_read_reports_and_audit_and_users_may_not(backend: Backend) {
    let app = spawn_app(backend).await;
    let root = app.admin_token().await;
    create(&app, "aud", None, "auditor").await;
    create(&app, "uma", None, "user").await;
    let held = create(&app, "hal", None, "auditor").await;
    set_enforced(&app, &root, &held, true).await;
    let auditor = sign_in(&app, "aud").await;
    let user = sign_in(&app, "uma").await;
    let login = app.login("hal", &password("hal")).await;
    assert_eq!(login.body["status"], "enrollment_required", "{login:?}");
    let enrolling = login.body["session_token"].as_str().unwrap().to_string();
    let paths = [
        "/api/v1/reports/two-factor",
        "/api/v1/reports/two-factor?format=csv",
        "/api/v1/audit",
        "/api/v1/audit?format=jsonl",
        "/api/v1/audit/verify",
        "/api/v1/users",
    ];
    for path in paths {
        for token in [&auditor, &root] {
            let (status, _, body) = get_text(&app, path, token).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
        }
        let refused = app.get(path, &user).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(refused.error(), "forbidden", "{path}");
        let refused = app.get(path, &enrolling).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(refused.error(), "two_factor_enrollment_required", "{path}");
        let anonymous = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // A user is refused at once, even when asking to wait for the future.
    let started = Instant::now();
    let refused = app.get("/api/v1/audit?min_position=999999", &user).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(started.elapsed() < Duration::from_secs(2));
    app.stop().await;
}

/// Every read-model table as text rows, in a stable order.
async fn read_models(app: &TestApp) -> Vec<String> {
    let tables: [(&str, &[&str]); 5] = [
        (
            "sessions",
            &[
                "session_id",
                "token_hash",
                "user_id",
                "authenticated_by",
                "impersonator_id",
                "started_at",
                "expires_at",
                "last_seen_at",
            ],
        ),
        (
            "user_directory",
            &[
                "user_id",
                "username",
                "email",
                "email_key",
                "role",
                "two_factor_status",
                "enforced",
                "enabled_at",
                "last_login_at",
                "registered_at",
            ],
        ),
        ("challenges", &["challenge_id", "user_id"]),
        (
            "two_factor_counts",
            &["role", "two_factor_status", "enforced", "users"],
        ),
        (
            "audit_log",
            &[
                "id",
                "position",
                "user_id",
                "sequence",
                "type",
                "occurred_at",
                "actor_id",
                "impersonator_id",
                "ip",
                "user_agent",
                "data",
                "chain_hash",
                "head_hash",
            ],
        ),
    ];
    let mut rows = Vec::new();
    for (table, columns) in tables {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| format!("coalesce(CAST({c} AS TEXT), '-')"))
            .collect();
        let sql = format!(
            "SELECT '{table}: ' || {} AS row FROM {table} ORDER BY 1",
            cells.join(" || '|' || ")
        );
        rows.extend(texts(app, &sql).await);
    }
    rows
}

async fn rebuild_gives_the_same_rows_as_incremental(backend: Backend) {
    let app = spawn_app(backend).await;
    let root = app.admin_token().await;
    let ann = create(&app, "ann", Some("ann@example.com"), "user").await;
    let bob = create(&app, "bob", None, "user").await;
    create(&app, "cat", None, "auditor").await;
    let token = sign_in(&app, "ann").await;
    let (secret, _) = app.enroll_totp(&token).await;
    app.next_step();
    let login = app
        .login_with_code("ann", &password("ann"), &secret, false)
        .await;
    assert_eq!(login.status, StatusCode::OK);
    set_enforced(&app, &root, &bob, true).await;
    let held = app.login("bob", &password("bob")).await;
    assert_eq!(held.body["status"], "enrollment_required");
    let started = app
        .post(
            "/api/v1/me/two-factor/totp",
            held.body["session_token"].as_str(),
            json!({}),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED);
    let logout = app.post("/api/v1/logout", Some(&token), json!({})).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let challenge = app.login("ann", &password("ann")).await;
    assert_eq!(challenge.body["status"], "two_factor_required");
    let promoted = app
        .patch(
            &format!("/api/v1/users/{ann}"),
            &root,
            json!({ "role": "admin" }),
        )
        .await;
    assert_eq!(promoted.status, StatusCode::OK);
    // PostgreSQL's projection writes arguments into its script as literals:
    // an address made of what an escape could trip on is stored as given.
    let awkward = "o'brien''--$1'$$={x}@example.com";
    let changed = app
        .patch(
            &format!("/api/v1/users/{bob}"),
            &root,
            json!({ "email": awkward }),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{changed:?}");
    let shown = app.get(&format!("/api/v1/users/{bob}"), &root).await;
    assert_eq!(shown.body["email"], awkward);

    let incremental = read_models(&app).await;
    assert!(incremental.iter().any(|r| r.starts_with("challenges")));
    assert!(incremental
        .iter()
        .any(|r| r.starts_with("two_factor_counts")));
    assert_eq!(
        incremental
            .iter()
            .filter(|r| r.starts_with("audit_log"))
            .count() as i64,
        app.event_count().await
    );
    let output = std::process::Command::new(binary())
        .args([
            "projections",
            "rebuild",
            "--database-url",
            &app.database_url,
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let rebuilt = read_models(&app).await;
    assert_eq!(rebuilt, incremental);
    // The trail still verifies after the rebuild, and the service goes on.
    assert_eq!(verify(&app, &root).await.body["ok"], true);
    assert_eq!(app.get("/api/v1/me", &root).await.status, StatusCode::OK);
    app.stop().await;
}
