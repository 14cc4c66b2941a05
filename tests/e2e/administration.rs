//! Administration: enforcing 2FA, the platform-wide date, "Login as", resets,
//! remembered devices and the user search.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use twofold_api::Clock;
use twofold_domain::TwoFactorPolicy;

use crate::helpers::{
    default_settings, spawn_app, spawn_app_with, Answer, Backend, TestApp, ADMIN,
};
use crate::on_both_backends;

on_both_backends!(
    enforced_user_is_held_on_enrollment,
    only_super_admins_enforce,
    enforced_user_cannot_disable_two_factor,
    platform_date_holds_every_user_without_two_factor,
    a_user_whose_two_factor_was_disabled_after_the_date_is_held_again,
    rescue_flow_restores_a_locked_out_user,
    impersonation_needs_a_reason,
    who_may_log_in_as_whom,
    impersonation_session_ends_after_thirty_minutes,
    impersonation_cannot_change_roles_or_enforce,
    super_admin_resets_a_users_two_factor,
    admin_lists_and_revokes_a_users_remembered_devices,
    user_search_filters_by_two_factor_status_and_role_and_pages_without_repeats,
    the_audit_trail_names_people_and_says_what_happened_in_a_sentence,
);

// ---------------------------------------------------------------- helpers

fn session_token(answer: &Answer) -> String {
    answer.body["session_token"]
        .as_str()
        .unwrap_or_else(|| panic!("a session token in {answer:?}"))
        .to_string()
}

fn time(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .unwrap_or_else(|| panic!("a time, not {value}"))
        .parse()
        .unwrap_or_else(|_| panic!("an RFC 3339 time, not {value}"))
}

fn password(username: &str) -> String {
    format!("{username}-password")
}

/// Creates a user (password `<username>-password`) with the given
/// administrator's token; returns its id.
async fn create_as(
    app: &TestApp,
    token: &str,
    username: &str,
    email: Option<&str>,
    role: &str,
) -> String {
    let answer = app
        .post(
            "/api/v1/users",
            Some(token),
            json!({ "username": username, "password": password(username), "email": email, "role": role }),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    answer.body["id"].as_str().unwrap().to_string()
}

/// Creates a user as the bootstrap super admin (password `<username>-password`).
async fn create(app: &TestApp, username: &str, role: &str) -> String {
    app.create_user(username, &password(username), None, role)
        .await
}

/// A password-only sign-in that must end in a full session.
async fn sign_in(app: &TestApp, username: &str) -> String {
    let login = app.login(username, &password(username)).await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    assert_eq!(login.body["status"], "authenticated", "{login:?}");
    session_token(&login)
}

/// A password-only sign-in that must be held on enrollment.
async fn sign_in_held(app: &TestApp, username: &str, password: &str) -> String {
    let login = app.login(username, password).await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    assert_eq!(login.body["status"], "enrollment_required", "{login:?}");
    assert!(login.body["expires_at"].is_string(), "{login:?}");
    assert!(login.body.get("challenge_id").is_none(), "{login:?}");
    session_token(&login)
}

async fn set_enforced(app: &TestApp, token: &str, user_id: &str, enforce: bool) -> Answer {
    app.patch(
        &format!("/api/v1/users/{user_id}"),
        token,
        json!({ "enforce_two_factor": enforce, "reason": "security policy" }),
    )
    .await
}

async fn impersonate(app: &TestApp, token: &str, user_id: &str) -> Answer {
    app.post(
        &format!("/api/v1/users/{user_id}/impersonation"),
        Some(token),
        json!({ "reason": "support ticket", "ticket": "T-1" }),
    )
    .await
}

fn assert_error(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.error(), code, "{answer:?}");
    assert!(answer.body["message"].is_string(), "{answer:?}");
}

/// With the platform date passed, "root" is held too: it enrolls TOTP on its
/// restricted session, which then becomes a full session.
async fn root_after_the_date(app: &TestApp) -> (String, String) {
    let token = sign_in_held(app, ADMIN.0, ADMIN.1).await;
    let held = app.get("/api/v1/users", &token).await;
    assert_error(
        &held,
        StatusCode::FORBIDDEN,
        "two_factor_enrollment_required",
    );
    let (secret, _) = app.enroll_totp(&token).await;
    assert_eq!(
        app.get("/api/v1/users", &token).await.status,
        StatusCode::OK
    );
    (token, secret)
}

async fn usernames(app: &TestApp, token: &str, query: &str) -> BTreeSet<String> {
    let answer = app.get(&format!("/api/v1/users?{query}"), token).await;
    assert_eq!(answer.status, StatusCode::OK, "{query}: {answer:?}");
    assert!(answer.body["next_cursor"].is_null(), "{query}: {answer:?}");
    answer.body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap().to_string())
        .collect()
}

fn set_of(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// Walks every page of a search; fails on a repeated user.
async fn all_pages(app: &TestApp, token: &str, query: &str, limit: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut path = format!("/api/v1/users?{query}&limit={limit}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = app.get(&path, token).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {page:?}");
        let users = page.body["users"].as_array().unwrap();
        assert!(users.len() <= limit, "{path}: {page:?}");
        for user in users {
            let name = user["username"].as_str().unwrap().to_string();
            assert!(!seen.contains(&name), "{name} shown twice ({path})");
            seen.push(name);
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => {
                assert!(!users.is_empty(), "a cursor after an empty page: {page:?}");
                cursor = Some(next.to_string());
            }
            None => {
                assert!(page.body["next_cursor"].is_null(), "{page:?}");
                return seen;
            }
        }
    }
    panic!("paging never ended for {query}");
}

// ------------------------------------------------------------ enforcement

async fn enforced_user_is_held_on_enrollment(backend: Backend) {
    let app = spawn_app(backend).await;
    let uma = create(&app, "uma", "user").await;
    let root = app.admin_token().await;

    let enforced = set_enforced(&app, &root, &uma, true).await;
    assert_eq!(enforced.status, StatusCode::OK, "{enforced:?}");
    assert_eq!(enforced.body["id"], uma.as_str());
    assert_eq!(enforced.body["enforced"], true);
    assert_eq!(enforced.body["two_factor_status"], "disabled");

    let token = sign_in_held(&app, "uma", "uma-password").await;
    let me = app.get("/api/v1/me", &token).await;
    assert_eq!(me.status, StatusCode::OK, "{me:?}");
    assert_eq!(me.body["id"], uma.as_str());
    assert_eq!(me.body["two_factor"]["status"], "disabled");
    assert_eq!(me.body["two_factor"]["required"], true);
    assert_eq!(me.body["two_factor"]["enforced"], true);
    assert!(me.body.get("impersonator").is_none());

    for held in [
        app.get("/api/v1/me/remembered-devices", &token).await,
        app.get("/api/v1/users", &token).await,
        app.get(&format!("/api/v1/users/{uma}"), &token).await,
        app.post(
            "/api/v1/users",
            Some(&token),
            json!({ "username": "sneaky", "password": "sneaky-password" }),
        )
        .await,
        app.delete("/api/v1/me/remembered-devices", &token, None)
            .await,
        app.delete("/api/v1/me/two-factor", &token, None).await,
    ] {
        assert_error(
            &held,
            StatusCode::FORBIDDEN,
            "two_factor_enrollment_required",
        );
    }

    // Signing out works on a restricted session.
    let other = sign_in_held(&app, "uma", "uma-password").await;
    let logout = app.post("/api/v1/logout", Some(&other), json!({})).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT, "{logout:?}");
    assert_error(
        &app.get("/api/v1/me", &other).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );

    // Enrolling is allowed, and turns the same session into a full one.
    let (secret, recovery) = app.enroll_totp(&token).await;
    assert!(!recovery.is_empty());
    let devices = app.get("/api/v1/me/remembered-devices", &token).await;
    assert_eq!(devices.status, StatusCode::OK, "{devices:?}");
    assert!(devices.body["devices"].is_array());
    let me = app.get("/api/v1/me", &token).await;
    assert_eq!(me.body["two_factor"]["status"], "enabled");
    assert_eq!(me.body["two_factor"]["required"], true);

    // From now on uma signs in with a code like everybody else.
    app.next_step();
    let verified = app
        .login_with_code("uma", "uma-password", &secret, false)
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{verified:?}");
    assert_eq!(verified.body["status"], "authenticated");

    let logout = app.post("/api/v1/logout", Some(&token), json!({})).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    app.stop().await;
}

async fn only_super_admins_enforce(backend: Backend) {
    let app = spawn_app(backend).await;
    create(&app, "ada", "admin").await;
    let uma = create(&app, "uma", "user").await;
    let ada = sign_in(&app, "ada").await;
    let path = format!("/api/v1/users/{uma}");

    for body in [
        json!({ "enforce_two_factor": true }),
        json!({ "enforce_two_factor": false }),
        json!({ "role": "admin" }),
        json!({ "role": "user" }),
        json!({ "email": "uma@example.com", "enforce_two_factor": true }),
    ] {
        let answer = app.patch(&path, &ada, body.clone()).await;
        assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    }
    let shown = app.get(&path, &ada).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.body["enforced"], false);
    assert_eq!(shown.body["role"], "user");
    assert_eq!(
        shown.body["email"],
        Value::Null,
        "a refused PATCH changes nothing"
    );

    // An admin edits a plain user's email.
    let email = app
        .patch(&path, &ada, json!({ "email": "uma@example.com" }))
        .await;
    assert_eq!(email.status, StatusCode::OK, "{email:?}");
    assert_eq!(email.body["email"], "uma@example.com");
    assert_eq!(email.body["enforced"], false);

    // A super admin enforces, and lifts.
    let root = app.admin_token().await;
    let on = set_enforced(&app, &root, &uma, true).await;
    assert_eq!(on.status, StatusCode::OK, "{on:?}");
    assert_eq!(on.body["enforced"], true);
    assert_eq!(app.get(&path, &ada).await.body["enforced"], true);
    let off = set_enforced(&app, &root, &uma, false).await;
    assert_eq!(off.status, StatusCode::OK, "{off:?}");
    assert_eq!(off.body["enforced"], false);
    app.stop().await;
}

async fn enforced_user_cannot_disable_two_factor(backend: Backend) {
    let app = spawn_app(backend).await;
    let uma = create(&app, "uma", "user").await;
    let token = sign_in(&app, "uma").await;
    let (secret, _) = app.enroll_totp(&token).await;
    let root = app.admin_token().await;
    assert_eq!(
        set_enforced(&app, &root, &uma, true).await.status,
        StatusCode::OK
    );

    let disable = app.delete("/api/v1/me/two-factor", &token, None).await;
    assert_error(&disable, StatusCode::CONFLICT, "two_factor_enforced");
    let me = app.get("/api/v1/me", &token).await;
    assert_eq!(me.body["two_factor"]["status"], "enabled");
    assert_eq!(me.body["two_factor"]["enforced"], true);
    assert_eq!(me.body["two_factor"]["required"], true);
    assert!(!app
        .history(&uma)
        .await
        .iter()
        .any(|(kind, _)| kind == "TwoFactorDisabled"));

    // Still asks for the second factor.
    app.next_step();
    let login = app.login("uma", "uma-password").await;
    assert_eq!(login.body["status"], "two_factor_required", "{login:?}");
    let verified = app
        .login_with_code("uma", "uma-password", &secret, false)
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{verified:?}");
    app.stop().await;
}

fn settings_mandatory_from(from: DateTime<Utc>) -> twofold_api::Settings {
    twofold_api::Settings {
        policy: TwoFactorPolicy {
            mandatory_from: Some(from),
        },
        ..default_settings()
    }
}

async fn platform_date_holds_every_user_without_two_factor(backend: Backend) {
    // The date has passed: everybody without 2FA is held, root included.
    let app = spawn_app_with(
        backend,
        settings_mandatory_from(Utc::now() - Duration::days(1)),
    )
    .await;
    let (root, _) = root_after_the_date(&app).await;
    let uma = create_as(&app, &root, "uma", None, "user").await;
    let token = sign_in_held(&app, "uma", "uma-password").await;
    let me = app.get("/api/v1/me", &token).await;
    assert_eq!(me.status, StatusCode::OK, "{me:?}");
    assert_eq!(me.body["id"], uma.as_str());
    assert_eq!(me.body["two_factor"]["required"], true);
    assert_eq!(me.body["two_factor"]["enforced"], false);
    assert_error(
        &app.get("/api/v1/me/remembered-devices", &token).await,
        StatusCode::FORBIDDEN,
        "two_factor_enrollment_required",
    );
    // The directory does not call that "enforced": it is the platform's rule.
    let shown = app.get(&format!("/api/v1/users/{uma}"), &root).await;
    assert_eq!(shown.body["enforced"], false);
    app.enroll_totp(&token).await;
    assert_eq!(
        app.get("/api/v1/me/remembered-devices", &token)
            .await
            .status,
        StatusCode::OK
    );
    app.stop().await;

    // The date is still ahead: nobody is held yet.
    let app = spawn_app_with(
        backend,
        settings_mandatory_from(Utc::now() + Duration::days(1)),
    )
    .await;
    let root = app.admin_token().await;
    create_as(&app, &root, "uma", None, "user").await;
    let token = sign_in(&app, "uma").await;
    let me = app.get("/api/v1/me", &token).await;
    assert_eq!(me.body["two_factor"]["required"], false);
    assert_eq!(me.body["two_factor"]["enforced"], false);
    assert_eq!(
        app.get("/api/v1/me/remembered-devices", &token)
            .await
            .status,
        StatusCode::OK
    );
    // ...until the day comes: then the next sign-in is held, root's included.
    app.clock.advance(Duration::days(1) + Duration::minutes(1));
    let token = sign_in_held(&app, "uma", "uma-password").await;
    let me = app.get("/api/v1/me", &token).await;
    assert_eq!(me.body["two_factor"]["required"], true);
    assert_eq!(me.body["two_factor"]["enforced"], false);
    let root = sign_in_held(&app, ADMIN.0, ADMIN.1).await;
    assert_error(
        &app.get("/api/v1/users", &root).await,
        StatusCode::FORBIDDEN,
        "two_factor_enrollment_required",
    );
    app.stop().await;
}

async fn a_user_whose_two_factor_was_disabled_after_the_date_is_held_again(backend: Backend) {
    let app = spawn_app_with(
        backend,
        settings_mandatory_from(Utc::now() - Duration::days(1)),
    )
    .await;
    let (root, _) = root_after_the_date(&app).await;

    // The user turns 2FA off themself (only an administrator's enforcement
    // forbids that): the open session and every new one are held again.
    let uma = create_as(&app, &root, "uma", None, "user").await;
    let token = sign_in_held(&app, "uma", "uma-password").await;
    let (secret, _) = app.enroll_totp(&token).await;
    assert_eq!(
        app.get("/api/v1/me/remembered-devices", &token)
            .await
            .status,
        StatusCode::OK
    );
    let disabled = app
        .turn_two_factor_off(&token, "uma-password", Some(&secret))
        .await;
    assert_eq!(disabled.status, StatusCode::NO_CONTENT, "{disabled:?}");
    assert_error(
        &app.get("/api/v1/me/remembered-devices", &token).await,
        StatusCode::FORBIDDEN,
        "two_factor_enrollment_required",
    );
    let me = app.get("/api/v1/me", &token).await;
    assert_eq!(me.body["two_factor"]["status"], "disabled");
    assert_eq!(me.body["two_factor"]["required"], true);
    let again = sign_in_held(&app, "uma", "uma-password").await;
    app.enroll_totp(&again).await;
    assert_eq!(
        app.get("/api/v1/me/remembered-devices", &again)
            .await
            .status,
        StatusCode::OK
    );
    let shown = app.get(&format!("/api/v1/users/{uma}"), &root).await;
    assert_eq!(shown.body["two_factor_status"], "enabled");

    // A super admin's reset lands the user on the enrollment page too.
    let bob = create_as(&app, &root, "bob", None, "user").await;
    let token = sign_in_held(&app, "bob", "bob-password").await;
    app.enroll_totp(&token).await;
    let reset = app
        .delete(
            &format!("/api/v1/users/{bob}/two-factor"),
            &root,
            Some(json!({ "reason": "lost phone" })),
        )
        .await;
    assert_eq!(reset.status, StatusCode::NO_CONTENT, "{reset:?}");
    // The reset ended bob's sessions; his next one is held.
    assert_error(
        &app.get("/api/v1/me/remembered-devices", &token).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    let again = sign_in_held(&app, "bob", "bob-password").await;
    assert_error(
        &app.get("/api/v1/me/remembered-devices", &again).await,
        StatusCode::FORBIDDEN,
        "two_factor_enrollment_required",
    );
    app.stop().await;
}

// ---------------------------------------------------------- "Login as"

async fn rescue_flow_restores_a_locked_out_user(backend: Backend) {
    let app = spawn_app(backend).await;
    let ada = create(&app, "ada", "admin").await;
    let uma = app
        .create_user("uma", "uma-password", Some("uma@example.com"), "user")
        .await;
    let root = app.admin_token().await;
    assert_eq!(
        set_enforced(&app, &root, &uma, true).await.status,
        StatusCode::OK
    );

    // uma activates 2FA, then loses the phone: no code, no way in.
    let token = sign_in_held(&app, "uma", "uma-password").await;
    app.enroll_totp(&token).await;
    let logout = app.post("/api/v1/logout", Some(&token), json!({})).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let stuck = app.login("uma", "uma-password").await;
    assert_eq!(stuck.body["status"], "two_factor_required", "{stuck:?}");
    assert!(stuck.body.get("session_token").is_none());

    // 1. Set "Enforce 2FA" to No.
    let lifted = app
        .patch(
            &format!("/api/v1/users/{uma}"),
            &root,
            json!({ "enforce_two_factor": false, "reason": "ticket 42 lost phone" }),
        )
        .await;
    assert_eq!(lifted.status, StatusCode::OK, "{lifted:?}");
    assert_eq!(lifted.body["enforced"], false);

    // 2. "Login as" the user.
    let admin = sign_in(&app, "ada").await;
    let before = app.clock.now();
    let started = app
        .post(
            &format!("/api/v1/users/{uma}/impersonation"),
            Some(&admin),
            json!({ "reason": "ticket 42 lost phone", "ticket": "T-42" }),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{started:?}");
    let acting = session_token(&started);
    let expires_at = time(&started.body["expires_at"]);
    assert!(expires_at > before, "{started:?}");
    assert!(expires_at <= before + Duration::minutes(30), "{started:?}");

    // 3. Their settings show the user, and who acts for them.
    let me = app.get("/api/v1/me", &acting).await;
    assert_eq!(me.status, StatusCode::OK, "{me:?}");
    assert_eq!(me.body["id"], uma.as_str());
    assert_eq!(me.body["username"], "uma");
    assert_eq!(me.body["two_factor"]["status"], "enabled");
    assert_eq!(me.body["impersonator"]["id"], ada.as_str());
    assert_eq!(me.body["impersonator"]["username"], "ada");

    // 4. Disable two-factor authentication.
    let disabled = app.delete("/api/v1/me/two-factor", &acting, None).await;
    assert_eq!(disabled.status, StatusCode::NO_CONTENT, "{disabled:?}");
    let me = app.get("/api/v1/me", &acting).await;
    assert_eq!(me.body["two_factor"]["status"], "disabled");

    let ended = app.delete("/api/v1/impersonation", &acting, None).await;
    assert_eq!(ended.status, StatusCode::NO_CONTENT, "{ended:?}");
    assert_error(
        &app.get("/api/v1/me", &acting).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    // The administrator's own session is untouched.
    assert_eq!(app.get("/api/v1/me", &admin).await.body["id"], ada.as_str());

    // uma is back in, with the password alone, and may try 2FA again.
    let back = sign_in(&app, "uma").await;
    let me = app.get("/api/v1/me", &back).await;
    assert_eq!(me.body["id"], uma.as_str());
    assert!(me.body.get("impersonator").is_none());
    app.next_step();
    app.enroll_totp(&back).await;

    let history = app.history(&uma).await;
    let steps: Vec<&(String, Value)> = history
        .iter()
        .filter(|(kind, _)| {
            matches!(
                kind.as_str(),
                "TwoFactorEnforced"
                    | "TwoFactorEnforcementLifted"
                    | "ImpersonationStarted"
                    | "TwoFactorDisabled"
                    | "ImpersonationEnded"
            )
        })
        .collect();
    let kinds: Vec<&str> = steps.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "TwoFactorEnforced",
            "TwoFactorEnforcementLifted",
            "ImpersonationStarted",
            "TwoFactorDisabled",
            "ImpersonationEnded",
        ],
        "{history:?}"
    );
    let root_id = app.get("/api/v1/me", &root).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(steps[0].1["actor_id"], root_id.as_str());
    assert_eq!(steps[1].1["actor_id"], root_id.as_str());
    assert_eq!(steps[2].1["actor_id"], ada.as_str());
    let disabled = &steps[3].1;
    assert_eq!(disabled["actor_id"], ada.as_str(), "{disabled}");
    assert_eq!(disabled["impersonator_id"], ada.as_str(), "{disabled}");
    assert_eq!(steps[4].1["impersonator_id"], ada.as_str());
    // uma's own sign-in afterwards is uma's.
    let (last_kind, last) = history
        .iter()
        .rev()
        .find(|(kind, _)| kind == "SessionStarted")
        .unwrap();
    assert_eq!(last_kind, "SessionStarted");
    assert_eq!(last["actor_id"], uma.as_str());
    assert!(last.get("impersonator_id").is_none(), "{last}");
    app.stop().await;
}

async fn impersonation_needs_a_reason(backend: Backend) {
    let app = spawn_app(backend).await;
    let uma = create(&app, "uma", "user").await;
    let root = app.admin_token().await;
    let path = format!("/api/v1/users/{uma}/impersonation");
    let before = app.event_count().await;
    for body in [
        json!({}),
        json!({ "ticket": "T-1" }),
        json!({ "reason": "" }),
        json!({ "reason": "   ", "ticket": "T-1" }),
        json!({ "reason": null }),
    ] {
        let answer = app.post(&path, Some(&root), body.clone()).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let no_body = app.request(Method::POST, &path, Some(&root), None).await;
    assert_eq!(no_body.status, StatusCode::BAD_REQUEST, "{no_body:?}");
    assert_eq!(no_body.error(), "invalid_request");
    assert_eq!(app.event_count().await, before, "nothing was stored");
    assert!(!app
        .history(&uma)
        .await
        .iter()
        .any(|(kind, _)| kind == "ImpersonationStarted"));

    let ok = app
        .post(&path, Some(&root), json!({ "reason": "checking a report" }))
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{ok:?}");
    app.stop().await;
}

async fn who_may_log_in_as_whom(backend: Backend) {
    let app = spawn_app(backend).await;
    let ada = create(&app, "ada", "admin").await;
    let abe = create(&app, "abe", "admin").await;
    let aud = create(&app, "aud", "auditor").await;
    let uma = create(&app, "uma", "user").await;
    let sam = create(&app, "sam", "super_admin").await;
    let root = app.admin_token().await;
    let root_id = app.get("/api/v1/me", &root).await.body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ada_token = sign_in(&app, "ada").await;
    let aud_token = sign_in(&app, "aud").await;
    let uma_token = sign_in(&app, "uma").await;

    let allowed = [
        (&ada_token, &uma, "admin -> user"),
        (&root, &ada, "super_admin -> admin"),
        (&root, &aud, "super_admin -> auditor"),
        (&root, &uma, "super_admin -> user"),
    ];
    for (token, target, case) in allowed {
        let answer = impersonate(&app, token, target).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{case}: {answer:?}");
        let me = app.get("/api/v1/me", &session_token(&answer)).await;
        assert_eq!(me.body["id"], target.as_str(), "{case}");
    }
    let refused = [
        (&ada_token, &abe, "admin -> admin"),
        (&ada_token, &aud, "admin -> auditor"),
        (&ada_token, &root_id, "admin -> super_admin"),
        (&ada_token, &sam, "admin -> super_admin"),
        (&root, &sam, "super_admin -> super_admin"),
        (&root, &root_id, "super_admin -> themself"),
        (&ada_token, &ada, "admin -> themself"),
        (&uma_token, &uma, "user -> themself"),
        (&uma_token, &ada, "user -> admin"),
        (&aud_token, &uma, "auditor -> user"),
        (&aud_token, &aud, "auditor -> themself"),
    ];
    for (token, target, case) in refused {
        let answer = impersonate(&app, token, target).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{case}: {answer:?}");
        assert_eq!(answer.error(), "forbidden", "{case}: {answer:?}");
    }
    let unknown = impersonate(&app, &root, &uuid::Uuid::new_v4().to_string()).await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found");
    app.stop().await;
}

async fn impersonation_session_ends_after_thirty_minutes(backend: Backend) {
    let app = spawn_app(backend).await;
    create(&app, "ada", "admin").await;
    let uma = create(&app, "uma", "user").await;
    let ada = sign_in(&app, "ada").await;
    let started = impersonate(&app, &ada, &uma).await;
    assert_eq!(started.status, StatusCode::CREATED, "{started:?}");
    let acting = session_token(&started);
    let expires_at = time(&started.body["expires_at"]);
    assert!(expires_at <= app.clock.now() + Duration::minutes(30));

    app.clock.advance(Duration::minutes(29));
    assert_eq!(app.get("/api/v1/me", &acting).await.status, StatusCode::OK);
    app.clock.advance(Duration::minutes(2));
    assert_error(
        &app.get("/api/v1/me", &acting).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    assert_error(
        &app.delete("/api/v1/me/two-factor", &acting, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    // The administrator's own session lives on.
    assert_eq!(app.get("/api/v1/me", &ada).await.status, StatusCode::OK);

    // Signing out of an impersonation ends it too.
    let again = session_token(&impersonate(&app, &ada, &uma).await);
    let logout = app.post("/api/v1/logout", Some(&again), json!({})).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT, "{logout:?}");
    assert_error(
        &app.get("/api/v1/me", &again).await,
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
    );
    let kinds: Vec<String> = app
        .history(&uma)
        .await
        .into_iter()
        .map(|(kind, _)| kind)
        .filter(|kind| kind.starts_with("Impersonation"))
        .collect();
    assert_eq!(
        kinds,
        [
            "ImpersonationStarted",
            "ImpersonationStarted",
            "ImpersonationEnded"
        ]
    );
    app.stop().await;
}

async fn impersonation_cannot_change_roles_or_enforce(backend: Backend) {
    let app = spawn_app(backend).await;
    let ada = create(&app, "ada", "admin").await;
    let uma = create(&app, "uma", "user").await;
    let root = app.admin_token().await;
    assert_eq!(
        set_enforced(&app, &root, &uma, true).await.status,
        StatusCode::OK
    );

    // Acting as an enforced user without 2FA is not held on enrollment...
    let admin = sign_in(&app, "ada").await;
    let acting = session_token(&impersonate(&app, &admin, &uma).await);
    let me = app.get("/api/v1/me", &acting).await;
    assert_eq!(me.status, StatusCode::OK, "{me:?}");
    assert_eq!(me.body["two_factor"]["required"], true);
    assert_eq!(me.body["two_factor"]["status"], "disabled");
    assert_eq!(me.body["impersonator"]["id"], ada.as_str());
    let devices = app.get("/api/v1/me/remembered-devices", &acting).await;
    assert_eq!(devices.status, StatusCode::OK, "{devices:?}");

    // ...but it only has the user's powers.
    let path = format!("/api/v1/users/{uma}");
    for answer in [
        app.patch(&path, &acting, json!({ "enforce_two_factor": false }))
            .await,
        app.patch(&path, &acting, json!({ "role": "super_admin" }))
            .await,
        app.get("/api/v1/users", &acting).await,
        app.post(
            "/api/v1/users",
            Some(&acting),
            json!({ "username": "x1", "password": "x1-password" }),
        )
        .await,
        app.delete(
            &format!("{path}/two-factor"),
            &acting,
            Some(json!({ "reason": "x" })),
        )
        .await,
        impersonate(&app, &acting, &uma).await,
    ] {
        assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    }
    // Acting as an enforced user does not lift enforcement either.
    assert_error(
        &app.delete("/api/v1/me/two-factor", &acting, None).await,
        StatusCode::CONFLICT,
        "two_factor_enforced",
    );

    // A super admin acting as an admin has an admin's powers, not its own.
    let as_admin = session_token(&impersonate(&app, &root, &ada).await);
    let me = app.get("/api/v1/me", &as_admin).await;
    assert_eq!(me.body["role"], "admin");
    for answer in [
        app.patch(&path, &as_admin, json!({ "enforce_two_factor": false }))
            .await,
        app.patch(&path, &as_admin, json!({ "role": "admin" }))
            .await,
        app.patch(
            &format!("/api/v1/users/{ada}"),
            &as_admin,
            json!({ "role": "super_admin" }),
        )
        .await,
        app.delete(
            &format!("{path}/two-factor"),
            &as_admin,
            Some(json!({ "reason": "x" })),
        )
        .await,
        impersonate(&app, &as_admin, &uma).await,
    ] {
        assert_error(&answer, StatusCode::FORBIDDEN, "forbidden");
    }

    let shown = app.get(&path, &root).await;
    assert_eq!(shown.body["enforced"], true);
    assert_eq!(shown.body["role"], "user");
    assert_eq!(shown.body["two_factor_status"], "disabled");
    assert_eq!(
        shown.body["last_login_at"],
        Value::Null,
        "acting for uma is not uma signing in"
    );
    let ada_shown = app.get(&format!("/api/v1/users/{ada}"), &root).await;
    assert_eq!(ada_shown.body["role"], "admin");
    app.stop().await;
}

// --------------------------------------------------- resets and devices

async fn super_admin_resets_a_users_two_factor(backend: Backend) {
    let app = spawn_app(backend).await;
    create(&app, "ada", "admin").await;
    let uma = create(&app, "uma", "user").await;
    let token = sign_in(&app, "uma").await;
    let (secret, _) = app.enroll_totp(&token).await;
    app.next_step();
    let verified = app
        .login_with_code("uma", "uma-password", &secret, true)
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{verified:?}");
    assert!(verified.body["device_token"].is_string());

    let path = format!("/api/v1/users/{uma}/two-factor");
    let ada = sign_in(&app, "ada").await;
    let by_admin = app
        .delete(&path, &ada, Some(json!({ "reason": "lost phone" })))
        .await;
    assert_error(&by_admin, StatusCode::FORBIDDEN, "forbidden");
    let by_user = app
        .delete(&path, &token, Some(json!({ "reason": "lost phone" })))
        .await;
    assert_error(&by_user, StatusCode::FORBIDDEN, "forbidden");

    let root = app.admin_token().await;
    let unknown = app
        .delete(
            &format!("/api/v1/users/{}/two-factor", uuid::Uuid::new_v4()),
            &root,
            Some(json!({ "reason": "lost phone" })),
        )
        .await;
    assert_error(&unknown, StatusCode::NOT_FOUND, "not_found");
    let login = app.login("uma", "uma-password").await;
    assert_eq!(login.body["status"], "two_factor_required", "still on");

    let reset = app
        .delete(
            &path,
            &root,
            Some(json!({ "reason": "lost phone, ticket 7" })),
        )
        .await;
    assert_eq!(reset.status, StatusCode::NO_CONTENT, "{reset:?}");

    let back = sign_in(&app, "uma").await;
    let me = app.get("/api/v1/me", &back).await;
    assert_eq!(me.body["two_factor"]["status"], "disabled");
    assert_eq!(me.body["two_factor"]["methods"], json!([]));
    let shown = app.get(&format!("/api/v1/users/{uma}"), &root).await;
    assert_eq!(shown.body["two_factor_status"], "disabled");
    assert_eq!(shown.body["enabled_at"], Value::Null);
    let devices = app
        .get(&format!("/api/v1/users/{uma}/remembered-devices"), &root)
        .await;
    assert_eq!(devices.body["devices"], json!([]), "{devices:?}");
    let (kind, metadata) = app
        .history(&uma)
        .await
        .into_iter()
        .find(|(kind, _)| kind == "TwoFactorReset")
        .unwrap();
    assert_eq!(kind, "TwoFactorReset");
    let root_id = app.get("/api/v1/me", &root).await.body["id"].clone();
    assert_eq!(metadata["actor_id"], root_id);
    app.stop().await;
}

async fn admin_lists_and_revokes_a_users_remembered_devices(backend: Backend) {
    let app = spawn_app(backend).await;
    create(&app, "ada", "admin").await;
    let uma = create(&app, "uma", "user").await;
    let token = sign_in(&app, "uma").await;
    let (secret, _) = app.enroll_totp(&token).await;
    app.next_step();
    let verified = app
        .login_with_code("uma", "uma-password", &secret, true)
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{verified:?}");
    let device_token = verified.body["device_token"].as_str().unwrap().to_string();

    let path = format!("/api/v1/users/{uma}/remembered-devices");
    let ada = sign_in(&app, "ada").await;
    let listed = app.get(&path, &ada).await;
    assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
    let devices = listed.body["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{listed:?}");
    let device = &devices[0];
    for field in [
        "id",
        "created_at",
        "expires_at",
        "last_used_at",
        "user_agent",
    ] {
        assert!(device.get(field).is_some(), "{field} in {device}");
    }
    let created = time(&device["created_at"]);
    let expires = time(&device["expires_at"]);
    assert_eq!(expires - created, Duration::hours(23));
    assert_eq!(
        app.get("/api/v1/me/remembered-devices", &token).await.body,
        listed.body,
        "the user sees the same list"
    );

    // Plain users and auditors may not look at anybody's devices.
    create(&app, "aud", "auditor").await;
    let aud = sign_in(&app, "aud").await;
    assert_error(
        &app.get(&path, &token).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        &app.get(&path, &aud).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        &app.delete(&path, &token, None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        &app.get(
            &format!("/api/v1/users/{}/remembered-devices", uuid::Uuid::new_v4()),
            &ada,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    let revoked = app.delete(&path, &ada, None).await;
    assert_eq!(revoked.status, StatusCode::NO_CONTENT, "{revoked:?}");
    let listed = app.get(&path, &ada).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["devices"], json!([]), "{listed:?}");

    // The device no longer skips the second factor.
    let login = app
        .post(
            "/api/v1/login",
            None,
            json!({ "username": "uma", "password": "uma-password", "device_token": device_token }),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    assert_eq!(login.body["status"], "two_factor_required", "{login:?}");
    app.stop().await;
}

// ------------------------------------------------------------- search

async fn user_search_filters_by_two_factor_status_and_role_and_pages_without_repeats(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let root = app.admin_token().await;
    for (name, role) in [
        ("ann", "user"),
        ("anna", "user"),
        ("bert", "user"),
        ("cleo", "user"),
        ("dina", "user"),
        ("ed", "user"),
        ("fay", "user"),
        ("adm", "admin"),
        ("aud", "auditor"),
    ] {
        create_as(
            &app,
            &root,
            name,
            Some(&format!("{name}@example.com")),
            role,
        )
        .await;
    }
    // ann and bert have 2FA, cleo started, dina is enforced.
    for name in ["ann", "bert"] {
        let token = sign_in(&app, name).await;
        app.enroll_totp(&token).await;
    }
    let cleo = sign_in(&app, "cleo").await;
    let started = app
        .post("/api/v1/me/two-factor/totp", Some(&cleo), json!({}))
        .await;
    assert_eq!(started.status, StatusCode::CREATED);
    let dina = app.get("/api/v1/users?q=dina", &root).await.body["users"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        set_enforced(&app, &root, &dina, true).await.status,
        StatusCode::OK
    );

    let everybody = set_of(&[
        "adm", "ann", "anna", "aud", "bert", "cleo", "dina", "ed", "fay", "root",
    ]);
    assert_eq!(usernames(&app, &root, "").await, everybody);
    assert_eq!(
        usernames(&app, &root, "two_factor=enabled").await,
        set_of(&["ann", "bert"])
    );
    assert_eq!(
        usernames(&app, &root, "two_factor=pending").await,
        set_of(&["cleo"])
    );
    assert_eq!(
        usernames(&app, &root, "two_factor=disabled").await,
        set_of(&["adm", "anna", "aud", "dina", "ed", "fay", "root"])
    );
    assert_eq!(
        usernames(&app, &root, "enforced=true").await,
        set_of(&["dina"])
    );
    assert_eq!(usernames(&app, &root, "enforced=false").await.len(), 9);
    assert_eq!(
        usernames(&app, &root, "enforced=true&two_factor=disabled").await,
        set_of(&["dina"])
    );
    assert_eq!(usernames(&app, &root, "role=admin").await, set_of(&["adm"]));
    assert_eq!(
        usernames(&app, &root, "role=super_admin").await,
        set_of(&["root"])
    );
    assert_eq!(
        usernames(&app, &root, "q=ann").await,
        set_of(&["ann", "anna"])
    );
    assert_eq!(
        usernames(&app, &root, "q=ANN").await,
        set_of(&["ann", "anna"])
    );
    assert_eq!(
        usernames(&app, &root, "q=ann&two_factor=enabled").await,
        set_of(&["ann"])
    );
    assert_eq!(
        usernames(&app, &root, "q=fay%40example").await,
        set_of(&["fay"]),
        "email prefixes match too"
    );
    assert!(usernames(&app, &root, "q=zzz").await.is_empty());
    assert!(usernames(&app, &root, "role=auditor&two_factor=enabled")
        .await
        .is_empty());

    // The row carries the directory's columns.
    let shown = app.get("/api/v1/users?q=bert", &root).await;
    let bert = &shown.body["users"][0];
    assert_eq!(bert["two_factor_status"], "enabled");
    assert_eq!(bert["enforced"], false);
    assert_eq!(bert["role"], "user");
    assert_eq!(bert["email"], "bert@example.com");
    assert!(bert["enabled_at"].is_string(), "{bert}");
    assert!(bert["last_login_at"].is_string(), "{bert}");
    for field in ["id", "username"] {
        assert!(bert[field].is_string(), "{field} in {bert}");
    }

    // Pages of two, then of three, see everybody exactly once.
    for limit in [1, 2, 3] {
        let seen = all_pages(&app, &root, "", limit).await;
        assert_eq!(seen.len(), everybody.len(), "limit {limit}: {seen:?}");
        assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), everybody);
    }
    let seen = all_pages(&app, &root, "two_factor=disabled", 2).await;
    assert_eq!(seen.len(), 7, "{seen:?}");
    let seen = all_pages(&app, &root, "q=a", 2).await;
    assert_eq!(
        seen.into_iter().collect::<BTreeSet<_>>(),
        set_of(&["adm", "ann", "anna", "aud"])
    );

    // Punctuation in names neither breaks paging nor acts as a wildcard.
    for name in ["x.y", "x_y", "x-y", "xy", "x@y"] {
        create_as(&app, &root, name, None, "user").await;
    }
    assert_eq!(usernames(&app, &root, "q=x_").await, set_of(&["x_y"]));
    assert_eq!(usernames(&app, &root, "q=x.").await, set_of(&["x.y"]));
    assert_eq!(usernames(&app, &root, "q=x%40").await, set_of(&["x@y"]));
    assert!(usernames(&app, &root, "q=%25").await.is_empty());
    assert_eq!(usernames(&app, &root, "q=x").await.len(), 5);
    for limit in [2, 4] {
        let seen = all_pages(&app, &root, "", limit).await;
        assert_eq!(seen.len(), everybody.len() + 5, "limit {limit}: {seen:?}");
        let seen = all_pages(&app, &root, "q=x", limit).await;
        assert_eq!(seen.len(), 5, "limit {limit}: {seen:?}");
    }

    // Auditors read the list; plain users may not.
    let aud = sign_in(&app, "aud").await;
    assert_eq!(
        usernames(&app, &aud, "two_factor=enabled").await,
        set_of(&["ann", "bert"])
    );
    let ed = sign_in(&app, "ed").await;
    assert_error(
        &app.get("/api/v1/users", &ed).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        &app.get("/api/v1/users?two_factor=enabled", &ed).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    for bad in [
        "two_factor=maybe",
        "enforced=perhaps",
        "role=wizard",
        "limit=0",
    ] {
        let answer = app.get(&format!("/api/v1/users?{bad}"), &root).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
    }
    app.stop().await;
}

/// An auditor's questions, by name: what did ada do as uma? Each row says
/// it in a sentence, in the pages and in the JSON-lines export alike.
async fn the_audit_trail_names_people_and_says_what_happened_in_a_sentence(backend: Backend) {
    let app = spawn_app(backend).await;
    let uma = create(&app, "uma", "user").await;
    let ada = create(&app, "ada", "admin").await;
    let admin = sign_in(&app, "ada").await;
    let started = impersonate(&app, &admin, &uma).await;
    assert_eq!(started.status, StatusCode::CREATED, "{started:?}");
    let acting = session_token(&started);
    let ended = app.delete("/api/v1/impersonation", &acting, None).await;
    assert_eq!(ended.status, StatusCode::NO_CONTENT, "{ended:?}");

    let root = app.admin_token().await;
    let page = app
        .get("/api/v1/audit?username=UMA&actor_username=ada", &root)
        .await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    let events = page.body["events"].as_array().unwrap();
    let summaries: Vec<&str> = events
        .iter()
        .map(|event| event["summary"].as_str().unwrap())
        .collect();
    assert_eq!(
        summaries,
        [
            "Admin ada logged in as uma (reason: support ticket, ticket: T-1).",
            "Admin ada started a \"Login as\" session as uma.",
            "Admin ada's \"Login as\" session as uma ended.",
        ],
        "{page:?}"
    );
    for event in events {
        assert_eq!(event["user_id"], uma.as_str());
        assert_eq!(event["username"], "uma");
        assert_eq!(event["actor_id"], ada.as_str());
        assert_eq!(event["actor_username"], "ada");
    }
    assert_eq!(events[2]["impersonator_username"], "ada");

    let nobody = app.get("/api/v1/audit?username=nobody", &root).await;
    assert_eq!(nobody.status, StatusCode::OK, "{nobody:?}");
    assert_eq!(nobody.body["events"], json!([]));
    assert_error(
        &app.get("/api/v1/audit?actor_username=a%20b", &root).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let export = app
        .client
        .get(format!(
            "{}/api/v1/audit?format=jsonl&username=uma",
            app.base
        ))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: Vec<Value> = export
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let all = app.get("/api/v1/audit?username=uma", &root).await;
    assert_eq!(exported, all.body["events"].as_array().unwrap().clone());
    assert_eq!(
        exported[0]["summary"],
        "Super admin root created the user uma (User)."
    );
    app.stop().await;
}
