//! History for auditors: one user's timeline, each event in a sentence and
//! grouped into cases, and the mandatory-date forecast.

use chrono::{DateTime, Duration, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use twofold_api::Clock;
use twofold_domain::TwoFactorPolicy;

use crate::helpers::{default_settings, spawn_app, spawn_app_with, Answer, Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    a_timeline_tells_each_event_and_groups_a_login_as_with_what_was_done_under_it,
    the_forecast_counts_who_is_left_and_projects_the_day_everyone_is_enrolled,
);

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

/// The positions of the entries of these types, in order.
fn positions_of(entries: &[Value], types: &[&str]) -> Vec<i64> {
    entries
        .iter()
        .filter(|entry| types.contains(&entry["type"].as_str().unwrap()))
        .map(|entry| entry["position"].as_i64().unwrap())
        .collect()
}

async fn a_timeline_tells_each_event_and_groups_a_login_as_with_what_was_done_under_it(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let uma = app
        .create_user("uma", "uma-password", Some("uma@example.com"), "user")
        .await;
    let ada = app.create_user("ada", "ada-password", None, "admin").await;
    app.create_user("aud", "aud-password", None, "auditor")
        .await;
    let token = app.token("uma", "uma-password").await;
    app.enroll_totp(&token).await;
    let root = app.admin_token().await;

    // A reset, and an enforcement change whose request names itself.
    let reset = app
        .delete(
            &format!("/api/v1/users/{uma}/two-factor"),
            &root,
            Some(json!({ "reason": "lost phone" })),
        )
        .await;
    assert_eq!(reset.status, StatusCode::NO_CONTENT, "{reset:?}");
    let enforced = app
        .client
        .patch(format!("{}/api/v1/users/{uma}", app.base))
        .bearer_auth(&root)
        .header("X-Request-Id", "change-7")
        .json(&json!({ "enforce_two_factor": true, "reason": "policy" }))
        .send()
        .await
        .unwrap();
    assert_eq!(enforced.status(), StatusCode::OK);
    // uma enrolls again; the enforcement is lifted for the rescue.
    let token = app.token("uma", "uma-password").await;
    app.enroll_totp(&token).await;
    let lifted = app
        .patch(
            &format!("/api/v1/users/{uma}"),
            &root,
            json!({ "enforce_two_factor": false }),
        )
        .await;
    assert_eq!(lifted.status, StatusCode::OK, "{lifted:?}");

    // ada logs in as uma, turns uma's 2FA off, and ends the session.
    let admin = app.token("ada", "ada-password").await;
    let started = app
        .post(
            &format!("/api/v1/users/{uma}/impersonation"),
            Some(&admin),
            json!({ "reason": "locked out", "ticket": "T-12" }),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{started:?}");
    let acting = started.body["session_token"].as_str().unwrap().to_string();
    let off = app.delete("/api/v1/me/two-factor", &acting, None).await;
    assert_eq!(off.status, StatusCode::NO_CONTENT, "{off:?}");
    let ended = app.delete("/api/v1/impersonation", &acting, None).await;
    assert_eq!(ended.status, StatusCode::NO_CONTENT, "{ended:?}");

    let auditor = app.token("aud", "aud-password").await;
    let answer = app
        .get(&format!("/api/v1/users/{uma}/timeline"), &auditor)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    let entries = answer.body["entries"].as_array().unwrap();
    let trail = app
        .get(&format!("/api/v1/audit?user_id={uma}&limit=500"), &root)
        .await;
    let trail = trail.body["events"].as_array().unwrap();
    assert_eq!(entries.len(), trail.len(), "every event of the user");
    for (entry, row) in entries.iter().zip(trail) {
        for field in [
            "position",
            "occurred_at",
            "type",
            "actor_id",
            "impersonator_id",
            "summary",
        ] {
            assert_eq!(entry[field], row[field], "{field}");
        }
        assert!(entry["summary"].as_str().unwrap().ends_with('.'), "{entry}");
        assert!(entry["correlation_id"].is_string(), "{entry}");
    }
    let said: Vec<&str> = entries
        .iter()
        .map(|entry| entry["summary"].as_str().unwrap())
        .collect();
    for sentence in [
        "Super admin root reset uma's 2FA (reason: lost phone).",
        "Super admin root enforced 2FA for uma (reason: policy).",
        "Admin ada logged in as uma (reason: locked out, ticket: T-12).",
        "Admin ada, logged in as uma, turned off uma's 2FA.",
        "Super admin root lifted the 2FA enforcement for uma.",
    ] {
        assert!(said.contains(&sentence), "{sentence:?} in {said:#?}");
    }
    let change = entries
        .iter()
        .find(|entry| entry["type"] == "TwoFactorEnforced")
        .unwrap();
    assert_eq!(change["correlation_id"], "change-7", "the request's own id");

    let cases = answer.body["cases"].as_array().unwrap();
    let kinds: Vec<&str> = cases
        .iter()
        .map(|case| case["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["reset", "enforcement", "enforcement", "impersonation"],
        "{cases:#?}"
    );
    let login_as = &cases[3];
    assert_eq!(login_as["actor_id"], ada.as_str());
    assert_eq!(login_as["reason"], "locked out");
    assert_eq!(login_as["ticket"], "T-12");
    assert!(time(&login_as["ended_at"]) >= time(&login_as["started_at"]));
    // Nothing else happened to uma meanwhile: the case is every event from
    // the Login as to its end.
    let started_at = positions_of(entries, &["ImpersonationStarted"])[0];
    let ended_at = positions_of(entries, &["ImpersonationEnded"])[0];
    let during: Vec<i64> = entries
        .iter()
        .map(|entry| entry["position"].as_i64().unwrap())
        .filter(|position| (started_at..=ended_at).contains(position))
        .collect();
    assert_eq!(during.len(), 4, "{entries:#?}");
    assert_eq!(login_as["positions"], json!(during));
    assert_eq!(cases[0]["reason"], "lost phone");
    assert_eq!(cases[0]["actor_id"], entries[0]["actor_id"]);

    // Readers of the trail only; an unknown user is 404.
    let user = app
        .get(
            &format!("/api/v1/users/{uma}/timeline"),
            &token_of(&app, "uma").await,
        )
        .await;
    assert_eq!(user.status, StatusCode::FORBIDDEN, "{user:?}");
    let nobody = app
        .get(
            "/api/v1/users/00000000-0000-4000-8000-000000000000/timeline",
            &auditor,
        )
        .await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND, "{nobody:?}");
    app.stop().await;
}

async fn token_of(app: &TestApp, username: &str) -> String {
    app.token(username, &format!("{username}-password")).await
}

async fn forecast(app: &TestApp, token: &str) -> Answer {
    let answer = app.get("/api/v1/reports/two-factor/forecast", token).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer
}

async fn the_forecast_counts_who_is_left_and_projects_the_day_everyone_is_enrolled(
    backend: Backend,
) {
    let mut settings = default_settings();
    let mandatory_from = Utc::now() + Duration::days(60);
    settings.policy = TwoFactorPolicy {
        mandatory_from: Some(mandatory_from),
    };
    let app = spawn_app_with(backend, settings).await;
    for name in ["ann", "bob", "cat", "dan"] {
        app.create_user(name, &format!("{name}-password"), None, "user")
            .await;
    }
    for name in ["ann", "bob"] {
        let token = token_of(&app, name).await;
        app.enroll_totp(&token).await;
    }
    let root = app.admin_token().await;
    let answer = forecast(&app, &root).await;
    let body = &answer.body;
    assert_eq!(time(&body["mandatory_from"]), mandatory_from);
    // cat, dan and root itself.
    assert_eq!(body["without_two_factor"], 3, "{body}");
    assert_eq!(
        body["by_role"],
        json!({"user": 2, "auditor": 0, "admin": 0, "super_admin": 1})
    );
    let days = body["enrollments_per_day"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    let today = app.clock.now().date_naive().to_string();
    assert_eq!(days[29], json!({"date": today, "count": 2}));
    assert!(days[..29].iter().all(|day| day["count"] == 0), "{days:?}");
    // 2 enrollments in 30 days: 15 days a user, 3 users left.
    assert_eq!(
        time(&body["projected_all_enrolled_at"]),
        app.clock.now() + Duration::days(45)
    );

    let csv = app
        .client
        .get(format!(
            "{}/api/v1/reports/two-factor/forecast?format=csv",
            app.base
        ))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    assert!(csv.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = csv.text().await.unwrap();
    let held: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|line| line.split(',').nth(1).unwrap())
        .collect();
    assert_eq!(held, ["cat", "dan", "root"], "{text}");

    // A month later nobody has enrolled since: no pace, no date.
    app.clock.advance(Duration::days(31));
    let root = app.admin_token().await;
    let later = forecast(&app, &root).await;
    assert_eq!(
        later.body["projected_all_enrolled_at"],
        Value::Null,
        "{later:?}"
    );
    app.stop().await;
}
