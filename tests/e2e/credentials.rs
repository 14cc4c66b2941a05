//! What a session may still do after the credentials behind it change,
//! re-authentication for sensitive changes, and what an attacker learns
//! from the answers (the outside security review, docs/security.md).

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{default_settings, spawn_app, spawn_app_with, Answer, Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    login_as_ends_when_the_user_is_made_a_super_admin,
    login_as_ends_when_the_impersonator_is_demoted,
    login_as_ends_when_the_impersonators_password_changes,
    login_as_ends_when_the_impersonator_is_locked_out,
    a_wrong_current_password_counts_toward_the_sign_in_lock,
    changing_the_password_counts_toward_the_per_address_limit,
    a_password_change_ends_every_other_session,
    a_two_factor_reset_ends_every_session_of_the_user,
    a_role_change_ends_every_session_of_the_user,
    turning_two_factor_off_needs_the_password_and_a_fresh_code,
    turning_two_factor_off_erases_the_sealed_secret,
    an_unknown_username_is_locked_like_a_known_one,
    with_every_factor_locked_the_answer_does_not_tell_whether_the_password_was_right,
    a_control_character_in_any_text_field_is_refused,
);

fn password(name: &str) -> String {
    format!("{name}-password")
}

async fn user(app: &TestApp, name: &str, role: &str) -> String {
    app.create_user(name, &password(name), None, role).await
}

async fn token(app: &TestApp, name: &str) -> String {
    app.token(name, &password(name)).await
}

/// `admin` logs in as `target`; returns the "Login as" token.
async fn login_as(app: &TestApp, admin: &str, target: &str) -> String {
    let started = app
        .post(
            &format!("/api/v1/users/{target}/impersonation"),
            Some(admin),
            json!({ "reason": "locked out", "ticket": "T-12" }),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{started:?}");
    started.body["session_token"].as_str().unwrap().to_string()
}

fn assert_error(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.error(), code, "{answer:?}");
}

/// How the user's history says the "Login as" ended.
async fn revocation(app: &TestApp, target: &str) -> Value {
    let ended: Vec<Value> = sqlx_payloads(app, target, "ImpersonationEnded").await;
    assert_eq!(ended.len(), 1, "{ended:?}");
    ended[0]["ImpersonationEnded"]["revoked"].clone()
}

async fn sqlx_payloads(app: &TestApp, user_id: &str, event_type: &str) -> Vec<Value> {
    let sql = format!(
        "SELECT CAST(payload AS TEXT) FROM events
          WHERE aggregate_id = '{user_id}' AND event_type = '{event_type}' ORDER BY sequence"
    );
    app.texts(&sql)
        .await
        .into_iter()
        .map(|text| serde_json::from_str(&text).unwrap())
        .collect()
}

async fn login_as_ends_when_the_user_is_made_a_super_admin(backend: Backend) {
    let app = spawn_app(backend).await;
    let ann = user(&app, "ann", "admin").await;
    let carol = user(&app, "carol", "user").await;
    let root = app.admin_token().await;
    let acting = login_as(&app, &token(&app, "ann").await, &carol).await;
    assert_eq!(app.get("/api/v1/me", &acting).await.status, StatusCode::OK);

    let promoted = app
        .patch(
            &format!("/api/v1/users/{carol}"),
            &root,
            json!({ "role": "super_admin" }),
        )
        .await;
    assert_eq!(promoted.status, StatusCode::OK, "{promoted:?}");
    // The session acting as carol can not grant anything with carol's new role.
    let grant = app
        .patch(
            &format!("/api/v1/users/{ann}"),
            &acting,
            json!({ "role": "super_admin" }),
        )
        .await;
    assert_error(&grant, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert_error(
        &app.get("/api/v1/me", &acting).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    let ann_now = app.get(&format!("/api/v1/users/{ann}"), &root).await;
    assert_eq!(ann_now.body["role"], "admin");
    app.stop().await;
}

async fn login_as_ends_when_the_impersonator_is_demoted(backend: Backend) {
    let app = spawn_app(backend).await;
    let ann = user(&app, "ann", "admin").await;
    let carol = user(&app, "carol", "user").await;
    let root = app.admin_token().await;
    let acting = login_as(&app, &token(&app, "ann").await, &carol).await;
    let demoted = app
        .patch(
            &format!("/api/v1/users/{ann}"),
            &root,
            json!({ "role": "user" }),
        )
        .await;
    assert_eq!(demoted.status, StatusCode::OK, "{demoted:?}");
    assert_error(
        &app.get("/api/v1/me", &acting).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_eq!(revocation(&app, &carol).await, json!("role_changed"));
    // Ended for good: still refused on the next request.
    assert_eq!(
        app.get("/api/v1/me", &acting).await.status,
        StatusCode::UNAUTHORIZED
    );
    app.stop().await;
}

async fn login_as_ends_when_the_impersonators_password_changes(backend: Backend) {
    let app = spawn_app(backend).await;
    user(&app, "ann", "admin").await;
    let carol = user(&app, "carol", "user").await;
    let ann = token(&app, "ann").await;
    let acting = login_as(&app, &ann, &carol).await;
    app.clock.advance(chrono::Duration::seconds(1));
    let changed = app
        .post(
            "/api/v1/me/password",
            Some(&ann),
            json!({ "current_password": password("ann"), "new_password": "a-new-password" }),
        )
        .await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT, "{changed:?}");
    assert_error(
        &app.get("/api/v1/me", &acting).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_eq!(
        revocation(&app, &carol).await,
        json!("impersonator_password_changed")
    );
    app.stop().await;
}

async fn login_as_ends_when_the_impersonator_is_locked_out(backend: Backend) {
    let app = spawn_app(backend).await;
    user(&app, "ann", "admin").await;
    let carol = user(&app, "carol", "user").await;
    let acting = login_as(&app, &token(&app, "ann").await, &carol).await;
    // Someone guesses ann's password until her account locks.
    for _ in 0..5 {
        assert_eq!(
            app.login("ann", "not-her-password").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_error(
        &app.get("/api/v1/me", &acting).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_eq!(revocation(&app, &carol).await, json!("impersonator_locked"));
    app.stop().await;
}

async fn change_password(app: &TestApp, token: &str, current: &str, new: &str) -> Answer {
    app.post(
        "/api/v1/me/password",
        Some(token),
        json!({ "current_password": current, "new_password": new }),
    )
    .await
}

async fn a_wrong_current_password_counts_toward_the_sign_in_lock(backend: Backend) {
    let app = spawn_app(backend).await;
    let dan = user(&app, "dan", "user").await;
    let session = token(&app, "dan").await;
    // One wrong password at sign-in, four at the password change: five in a row.
    assert_eq!(
        app.login("dan", "wrong-password").await.status,
        StatusCode::UNAUTHORIZED
    );
    for _ in 0..4 {
        let refused = change_password(&app, &session, "wrong-password", "new-password-1").await;
        assert_error(&refused, StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
    let rejected = sqlx_payloads(&app, &dan, "PasswordRejected").await;
    assert_eq!(rejected.len(), 5, "each wrong password is stored");
    assert!(rejected[4]["PasswordRejected"]["locked_until"].is_string());
    // Locked: even the right current password is refused, with Retry-After.
    let locked = change_password(&app, &session, &password("dan"), "new-password-1").await;
    assert_error(&locked, StatusCode::LOCKED, "account_locked");
    assert!(locked.headers.get("retry-after").is_some(), "{locked:?}");
    assert_error(
        &app.login("dan", &password("dan")).await,
        StatusCode::LOCKED,
        "account_locked",
    );
    // Once the lock ends, the right password changes it.
    app.clock.advance(chrono::Duration::minutes(2));
    let changed = change_password(&app, &session, &password("dan"), "new-password-1").await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT, "{changed:?}");
    app.stop().await;
}

async fn changing_the_password_counts_toward_the_per_address_limit(backend: Backend) {
    let mut settings = default_settings();
    settings.login_rate_per_ip = 6;
    let app = spawn_app_with(backend, settings).await;
    user(&app, "eve", "user").await;
    let session = token(&app, "eve").await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let answer = change_password(&app, &session, "guess-password", "new-password-1").await;
        statuses.push(answer.status.as_u16());
    }
    // Two sign-ins (the administrator's and eve's) took two of the six.
    assert_eq!(statuses, [401, 401, 401, 401, 429, 429]);
    // One budget per address: sign-in is refused too.
    assert_error(
        &app.login("eve", &password("eve")).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
    app.stop().await;
}

async fn a_password_change_ends_every_other_session(backend: Backend) {
    let app = spawn_app(backend).await;
    user(&app, "fay", "user").await;
    let laptop = token(&app, "fay").await;
    let phone = token(&app, "fay").await;
    let changed = change_password(&app, &laptop, &password("fay"), "fays-new-password").await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT, "{changed:?}");
    assert_error(
        &app.get("/api/v1/me", &phone).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_eq!(app.get("/api/v1/me", &laptop).await.status, StatusCode::OK);
    app.stop().await;
}

async fn a_two_factor_reset_ends_every_session_of_the_user(backend: Backend) {
    let app = spawn_app(backend).await;
    let gus = user(&app, "gus", "user").await;
    let session = token(&app, "gus").await;
    app.enroll_totp(&session).await;
    user(&app, "ann", "admin").await;
    let acting = login_as(&app, &token(&app, "ann").await, &gus).await;
    let root = app.admin_token().await;
    let reset = app
        .delete(
            &format!("/api/v1/users/{gus}/two-factor"),
            &root,
            Some(json!({ "reason": "lost phone" })),
        )
        .await;
    assert_eq!(reset.status, StatusCode::NO_CONTENT, "{reset:?}");
    for ended in [&session, &acting] {
        assert_error(
            &app.get("/api/v1/me", ended).await,
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        );
    }
    assert_eq!(app.get("/api/v1/me", &root).await.status, StatusCode::OK);
    app.stop().await;
}

async fn a_role_change_ends_every_session_of_the_user(backend: Backend) {
    let app = spawn_app(backend).await;
    let hal = user(&app, "hal", "user").await;
    let session = token(&app, "hal").await;
    let root = app.admin_token().await;
    let promoted = app
        .patch(
            &format!("/api/v1/users/{hal}"),
            &root,
            json!({ "role": "auditor" }),
        )
        .await;
    assert_eq!(promoted.status, StatusCode::OK, "{promoted:?}");
    assert_error(
        &app.get("/api/v1/me", &session).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    // A new session has the new role.
    let fresh = token(&app, "hal").await;
    assert_eq!(app.get("/api/v1/me", &fresh).await.body["role"], "auditor");
    app.stop().await;
}

async fn turn_off(app: &TestApp, session: &str, body: Option<Value>) -> Answer {
    app.delete("/api/v1/me/two-factor", session, body).await
}

async fn turning_two_factor_off_needs_the_password_and_a_fresh_code(backend: Backend) {
    let app = spawn_app(backend).await;
    let ivy = user(&app, "ivy", "user").await;
    let enrolling = token(&app, "ivy").await;
    let (secret, recovery) = app.enroll_totp(&enrolling).await;
    // A session opened with the password and a remembered device.
    app.next_step();
    let verified = app
        .login_with_code("ivy", &password("ivy"), &secret, true)
        .await;
    let device = verified.body["device_token"].as_str().unwrap().to_string();
    let remembered = app
        .post(
            "/api/v1/login",
            None,
            json!({ "username": "ivy", "password": password("ivy"), "device_token": device }),
        )
        .await;
    assert_eq!(remembered.body["status"], "authenticated", "{remembered:?}");
    let session = remembered.body["session_token"]
        .as_str()
        .unwrap()
        .to_string();

    for missing in [
        None,
        Some(json!({})),
        Some(json!({ "password": password("ivy") })),
    ] {
        let refused = turn_off(&app, &session, missing).await;
        assert_error(&refused, StatusCode::BAD_REQUEST, "invalid_request");
    }
    app.next_step();
    let wrong_password = turn_off(
        &app,
        &session,
        Some(json!({ "password": "not-the-password", "code": app.code(&secret) })),
    )
    .await;
    assert_error(
        &wrong_password,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    );
    let wrong_code = turn_off(
        &app,
        &session,
        Some(json!({ "password": password("ivy"), "code": "000000" })),
    )
    .await;
    assert_error(&wrong_code, StatusCode::UNAUTHORIZED, "invalid_code");
    assert!(
        wrong_code.body["attempts_remaining"].is_u64(),
        "{wrong_code:?}"
    );
    let history: Vec<String> = app
        .history(&ivy)
        .await
        .into_iter()
        .map(|(kind, _)| kind)
        .collect();
    assert!(history.contains(&"PasswordRejected".to_string()));
    assert!(history.contains(&"ReauthenticationCodeRejected".to_string()));
    assert_eq!(
        app.get("/api/v1/me", &session).await.body["two_factor"]["status"],
        "enabled"
    );
    // A recovery code stands for the app.
    let off = turn_off(
        &app,
        &session,
        Some(json!({ "password": password("ivy"), "code": recovery[0] })),
    )
    .await;
    assert_eq!(off.status, StatusCode::NO_CONTENT, "{off:?}");
    assert_eq!(
        app.get("/api/v1/me", &session).await.body["two_factor"]["status"],
        "disabled"
    );
    app.stop().await;
}

async fn turning_two_factor_off_erases_the_sealed_secret(backend: Backend) {
    let app = spawn_app(backend).await;
    let jo = user(&app, "jo", "user").await;
    let session = token(&app, "jo").await;
    let (secret, _) = app.enroll_totp(&session).await;
    let sealed = format!("SELECT count(*) FROM totp_secrets WHERE user_id = '{jo}'");
    assert_eq!(app.scalar(&sealed).await, 1);
    let off = app
        .turn_two_factor_off(&session, &password("jo"), Some(&secret))
        .await;
    assert_eq!(off.status, StatusCode::NO_CONTENT, "{off:?}");
    assert_eq!(app.scalar(&sealed).await, 0);
    // An enrollment started twice keeps only the newest secret.
    for _ in 0..2 {
        let started = app
            .post("/api/v1/me/two-factor/totp", Some(&session), json!({}))
            .await;
        assert_eq!(started.status, StatusCode::CREATED);
    }
    assert_eq!(app.scalar(&sealed).await, 1);
    app.stop().await;
}

/// Status, error code, message and whether Retry-After came, of each answer.
fn shape(answer: &Answer) -> (u16, String, String, bool) {
    (
        answer.status.as_u16(),
        answer.error().to_string(),
        answer.body["message"].as_str().unwrap_or("").to_string(),
        answer.headers.get("retry-after").is_some(),
    )
}

async fn an_unknown_username_is_locked_like_a_known_one(backend: Backend) {
    let app = spawn_app(backend).await;
    user(&app, "kay", "user").await;
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..8 {
        known.push(shape(&app.login("kay", "wrong-password").await));
        unknown.push(shape(&app.login("Nobody-Here", "wrong-password").await));
    }
    assert_eq!(known, unknown);
    let statuses: Vec<u16> = known.iter().map(|answer| answer.0).collect();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 423, 423, 423]);
    // After the lock, the next failure locks again (longer), alike.
    app.clock.advance(chrono::Duration::minutes(2));
    assert_eq!(
        shape(&app.login("kay", "wrong-password").await),
        shape(&app.login("nobody-here", "wrong-password").await)
    );
    app.stop().await;
}

async fn with_every_factor_locked_the_answer_does_not_tell_whether_the_password_was_right(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    user(&app, "lou", "user").await;
    let session = token(&app, "lou").await;
    let (secret, recovery) = app.enroll_totp(&session).await;
    // Spend the recovery codes, then make TOTP back off: every factor locked.
    for code in &recovery {
        let login = app.login("lou", &password("lou")).await;
        let id = login.body["challenge_id"].as_str().unwrap().to_string();
        let used = app
            .post(
                &format!("/api/v1/login/challenges/{id}/verify"),
                None,
                json!({ "method": "recovery_code", "code": code, "remember_device": false }),
            )
            .await;
        assert_eq!(used.status, StatusCode::OK, "{used:?}");
    }
    for _ in 0..2 {
        let login = app.login("lou", &password("lou")).await;
        let id = login.body["challenge_id"].as_str().unwrap().to_string();
        for _ in 0..5 {
            app.post(
                &format!("/api/v1/login/challenges/{id}/verify"),
                None,
                json!({ "method": "totp", "code": "000000" }),
            )
            .await;
        }
    }
    let right = app.login("lou", &password("lou")).await;
    let wrong = app.login("lou", "wrong-password").await;
    assert_error(&right, StatusCode::LOCKED, "account_locked");
    assert_eq!(shape(&right), shape(&wrong));
    // Nothing was recorded for the refused wrong password.
    app.clock.advance(chrono::Duration::minutes(2));
    app.next_step();
    let back = app
        .login_with_code("lou", &password("lou"), &secret, false)
        .await;
    assert_eq!(back.status, StatusCode::OK, "{back:?}");
    app.stop().await;
}

/// Texts no field may hold (tab and newline are allowed in a `reason` only).
const CONTROL: [&str; 7] = [
    "a\u{0}b",
    "\u{1}",
    "esc\u{1b}[31m",
    "del\u{7f}",
    "c1\u{85}",
    "cr\r",
    "bell\u{7}",
];

async fn a_control_character_in_any_text_field_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let target = user(&app, "mia", "user").await;
    let root = app.admin_token().await;
    let doc = serde_json::to_value(twofold_api::openapi()).unwrap();
    let schemas = &doc["components"]["schemas"];
    let before = app.event_count().await;
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let path = path
            .replace("{id}", &target)
            .replace("{challenge_id}", &uuid::Uuid::new_v4().to_string());
        for (method, operation) in item.as_object().unwrap() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
                .as_object()
                .and_then(|schema| {
                    let reference = schema
                        .get("$ref")
                        .or_else(|| schema.get("oneOf").and_then(|one| one[0].get("$ref")))?;
                    let name = reference.as_str()?.rsplit('/').next()?;
                    schemas[name]["properties"].as_object().cloned()
                });
            let text_fields: Vec<String> = body_schema
                .iter()
                .flatten()
                .filter(|(_, schema)| {
                    schema.to_string().contains("\"string\"") || schema.get("$ref").is_some()
                })
                .map(|(name, _)| name.clone())
                .collect();
            for field in &text_fields {
                for text in CONTROL {
                    let answer = app
                        .request(
                            method.clone(),
                            &path,
                            Some(&root),
                            Some(json!({ field.as_str(): text })),
                        )
                        .await;
                    checked += 1;
                    if answer.status != StatusCode::BAD_REQUEST
                        || answer.error() != "invalid_request"
                    {
                        wrong.push(format!("{method} {path} {field}={text:?}: {answer:?}"));
                    }
                }
            }
            let query: Vec<String> = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query" && p["schema"].to_string().contains("string"))
                .map(|p| p["name"].as_str().unwrap().to_string())
                .collect();
            for name in query {
                let answer = app
                    .request(
                        method.clone(),
                        &format!("{path}?{name}=a%00b"),
                        Some(&root),
                        None,
                    )
                    .await;
                checked += 1;
                if answer.status != StatusCode::BAD_REQUEST {
                    wrong.push(format!("{method} {path}?{name}=a%00b: {answer:?}"));
                }
            }
        }
    }
    // A reason may break lines.
    let acting = app
        .post(
            &format!("/api/v1/users/{target}/impersonation"),
            Some(&root),
            json!({ "reason": "locked out\n\tsee ticket" }),
        )
        .await;
    assert_eq!(acting.status, StatusCode::CREATED, "{acting:?}");
    assert!(checked > 60, "only {checked} requests were tried");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        app.event_count().await,
        before + 2,
        "only the Login as was stored"
    );
    app.stop().await;
}
