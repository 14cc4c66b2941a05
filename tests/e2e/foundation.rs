//! Accounts, sessions, errors and the event store's guarantees.

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{spawn_app, Backend, ADMIN};
use crate::on_both_backends;

on_both_backends!(
    new_user_signs_in_with_password_and_sees_themself,
    unknown_user_and_wrong_password_get_the_same_answer,
    fifth_wrong_password_locks_the_account_for_a_while,
    only_administrators_create_users_and_only_super_admins_create_staff,
    usernames_are_unique_whatever_their_case,
    logout_ends_the_session_at_once,
    idle_session_expires_after_an_hour,
    bad_input_gets_a_clear_json_error_and_changes_nothing,
    write_answers_carry_their_position_and_reads_see_them,
    twenty_concurrent_changes_to_one_user_are_each_stored_once,
    operators_see_health_readiness_and_metrics,
    user_changes_their_password_and_forgets_remembered_devices,
);

async fn new_user_signs_in_with_password_and_sees_themself(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app
        .create_user("alice", "alice-password", Some("alice@example.com"), "user")
        .await;
    let login = app.login("Alice", "alice-password").await;
    assert_eq!(login.status, StatusCode::OK);
    assert_eq!(login.body["status"], "authenticated");
    assert!(login.body["expires_at"].is_string());
    let token = login.body["session_token"].as_str().unwrap();
    assert!(token.len() >= 22, "at least 128 bits");
    let me = app.get("/api/v1/me", token).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["id"], id.as_str());
    assert_eq!(me.body["username"], "alice");
    assert_eq!(me.body["email"], "alice@example.com");
    assert_eq!(me.body["role"], "user");
    assert_eq!(me.body["two_factor"]["status"], "disabled");
    assert_eq!(me.body["two_factor"]["enforced"], false);
    assert_eq!(me.body["two_factor"]["required"], false);
    assert!(me.body.get("impersonator").is_none());
    app.stop().await;
}

async fn unknown_user_and_wrong_password_get_the_same_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("bob", "bob-password", None, "user").await;
    let unknown = app.login("nobody", "whatever-password").await;
    let wrong = app.login("bob", "not-his-password").await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.body, wrong.body);
    assert_eq!(unknown.error(), "invalid_credentials");
    app.stop().await;
}

async fn fifth_wrong_password_locks_the_account_for_a_while(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("carol", "carol-password", None, "user")
        .await;
    for _ in 0..5 {
        assert_eq!(
            app.login("carol", "wrong-password").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let right = app.login("carol", "carol-password").await;
    let wrong = app.login("carol", "wrong-password").await;
    assert_eq!(right.status, StatusCode::LOCKED);
    assert_eq!(right.error(), "account_locked");
    assert_eq!(
        right.body, wrong.body,
        "a locked account answers the same to a right password"
    );
    let retry_after: i64 = right.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    // The lock is soft: it expires, and a success resets the count.
    app.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(
        app.login("carol", "carol-password").await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.login("carol", "wrong-password").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("carol", "carol-password").await.status,
        StatusCode::OK
    );
    app.stop().await;
}

async fn only_administrators_create_users_and_only_super_admins_create_staff(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("ada", "ada-password", None, "admin").await;
    app.create_user("uma", "uma-password", None, "user").await;
    let admin = app.token("ada", "ada-password").await;
    let user = app.token("uma", "uma-password").await;
    let by_user = app
        .post(
            "/api/v1/users",
            Some(&user),
            json!({ "username": "x1", "password": "x1-password" }),
        )
        .await;
    assert_eq!(by_user.status, StatusCode::FORBIDDEN);
    assert_eq!(by_user.error(), "forbidden");
    let by_admin = app
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({ "username": "x2", "password": "x2-password" }),
        )
        .await;
    assert_eq!(by_admin.status, StatusCode::CREATED);
    assert_eq!(by_admin.body["role"], "user");
    let staff_by_admin = app
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({ "username": "x3", "password": "x3-password", "role": "auditor" }),
        )
        .await;
    assert_eq!(staff_by_admin.status, StatusCode::FORBIDDEN);
    let anonymous = app
        .post(
            "/api/v1/users",
            None,
            json!({ "username": "x4", "password": "x4-password" }),
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.error(), "unauthenticated");
    app.stop().await;
}

async fn usernames_are_unique_whatever_their_case(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("dave", "dave-password", None, "user").await;
    let admin = app.admin_token().await;
    let again = app
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({ "username": "DAVE", "password": "other-password" }),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.error(), "conflict");
    assert_eq!(
        app.scalar("SELECT count(*) FROM events WHERE event_type = 'UserRegistered'")
            .await,
        2
    );
    app.stop().await;
}

async fn logout_ends_the_session_at_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.admin_token().await;
    assert_eq!(app.get("/api/v1/me", &token).await.status, StatusCode::OK);
    let logout = app
        .request(Method::POST, "/api/v1/logout", Some(&token), None)
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    let after = app.get("/api/v1/me", &token).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert_eq!(after.error(), "unauthenticated");
    assert_eq!(
        app.get("/api/v1/me", "made-up-token").await.status,
        StatusCode::UNAUTHORIZED
    );
    app.stop().await;
}

async fn idle_session_expires_after_an_hour(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = app.admin_token().await;
    app.clock.advance(chrono::Duration::minutes(50));
    assert_eq!(
        app.get("/api/v1/me", &token).await.status,
        StatusCode::OK,
        "use keeps it alive"
    );
    app.clock.advance(chrono::Duration::minutes(50));
    assert_eq!(app.get("/api/v1/me", &token).await.status, StatusCode::OK);
    app.clock.advance(chrono::Duration::minutes(61));
    assert_eq!(
        app.get("/api/v1/me", &token).await.status,
        StatusCode::UNAUTHORIZED
    );
    app.stop().await;
}

async fn bad_input_gets_a_clear_json_error_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let before = app.event_count().await;
    let raw = |body: &'static str| {
        app.client
            .post(format!("{}/api/v1/users", app.base))
            .bearer_auth(&admin)
            .header("content-type", "application/json")
            .body(body)
    };
    for (body, status) in [
        ("{not json", StatusCode::BAD_REQUEST),
        ("[]", StatusCode::UNPROCESSABLE_ENTITY),
        (
            r#"{"username": 5, "password": "p"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"username": "eve", "password": "eve-password", "admin": true}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            r#"{"username": "e v e", "password": "eve-password"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"username": "eve", "password": "short"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"username": "eve", "password": "eve-password", "role": "god"}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"username": "eve", "password": "eve-password", "email": "nope"}"#,
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let response = raw(body).send().await.unwrap();
        assert_eq!(response.status(), status, "{body}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"], "invalid_request", "{body}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let huge = format!(
        r#"{{"username": "eve", "password": "{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let response = app
        .client
        .post(format!("{}/api/v1/users", app.base))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let bad_id = app.get("/api/v1/users/not-a-uuid", &admin).await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_id.error(), "invalid_request");
    let missing = app
        .get(&format!("/api/v1/users/{}", uuid::Uuid::new_v4()), &admin)
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error(), "not_found");
    let bad_cursor = app.get("/api/v1/users?cursor=%%%", &admin).await;
    assert_eq!(bad_cursor.status, StatusCode::BAD_REQUEST);
    let bad_limit = app.get("/api/v1/users?limit=0", &admin).await;
    assert_eq!(bad_limit.status, StatusCode::BAD_REQUEST);
    let unknown_route = app.get("/api/v1/nothing-here", &admin).await;
    assert_eq!(unknown_route.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown_route.error(), "not_found");
    assert_eq!(app.event_count().await, before, "bad input stored nothing");
    app.stop().await;
}

async fn write_answers_carry_their_position_and_reads_see_them(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let created = app
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({ "username": "fay", "password": "fay-password" }),
        )
        .await;
    let position = created.position().expect("Twofold-Position header");
    assert!(position > 0);
    let found = app.get("/api/v1/users?q=fa", &admin).await;
    assert_eq!(found.status, StatusCode::OK);
    assert_eq!(found.body["users"][0]["username"], "fay");
    assert_eq!(found.body["users"][0]["two_factor_status"], "disabled");
    let changed = app
        .patch(
            &format!("/api/v1/users/{}", created.body["id"].as_str().unwrap()),
            &admin,
            json!({ "email": "fay@example.com" }),
        )
        .await;
    assert!(changed.position().unwrap() > position, "positions grow");
    assert_eq!(changed.body["email"], "fay@example.com");
    app.stop().await;
}

async fn twenty_concurrent_changes_to_one_user_are_each_stored_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let id = app.create_user("gus", "gus-password", None, "user").await;
    let admin = app.admin_token().await;
    let answers = join_all((0..20).map(|n| {
        let path = format!("/api/v1/users/{id}");
        let admin = admin.clone();
        let app = &app;
        async move {
            app.patch(
                &path,
                &admin,
                json!({ "email": format!("gus{n}@example.com") }),
            )
            .await
        }
    }))
    .await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    }
    let history = app.history(&id).await;
    let changes = history
        .iter()
        .filter(|(kind, _)| kind == "EmailChanged")
        .count();
    assert_eq!(changes, 20, "every change stored exactly once");
    let sequences = app
        .scalar(&format!(
            "SELECT count(DISTINCT sequence) FROM events WHERE aggregate_id = '{id}'"
        ))
        .await;
    assert_eq!(sequences, 21);
    // The read model holds the address of the last event appended.
    let last = app
        .scalar(&format!(
            "SELECT max(sequence) FROM events WHERE aggregate_id = '{id}'"
        ))
        .await;
    assert_eq!(last, 21);
    let shown = app.get(&format!("/api/v1/users/{id}"), &admin).await;
    let positions: Vec<i64> = answers.iter().map(|a| a.position().unwrap()).collect();
    let latest = answers
        .iter()
        .zip(&positions)
        .max_by_key(|(_, p)| **p)
        .map(|(a, _)| a.body["email"].clone())
        .unwrap();
    assert_eq!(shown.body["email"], latest);
    app.stop().await;
}

async fn operators_see_health_readiness_and_metrics(backend: Backend) {
    let app = spawn_app(backend).await;
    let health = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    app.login(ADMIN.0, ADMIN.1).await;
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("twofold_http_requests_total"), "{text}");
    assert!(text.contains("/api/v1/login"));
    app.stop().await;
}

async fn user_changes_their_password_and_forgets_remembered_devices(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_user("hal", "hal-password", None, "user").await;
    let token = app.token("hal", "hal-password").await;
    let (secret, _) = app.enroll_totp(&token).await;
    app.next_step();
    let signed_in = app
        .login_with_code("hal", "hal-password", &secret, true)
        .await;
    let device = signed_in.body["device_token"].as_str().unwrap().to_string();
    let session = signed_in.body["session_token"]
        .as_str()
        .unwrap()
        .to_string();
    let wrong = app
        .post(
            "/api/v1/me/password",
            Some(&session),
            json!({ "current_password": "guess", "new_password": "hal-new-password" }),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.error(), "invalid_credentials");
    let changed = app
        .post(
            "/api/v1/me/password",
            Some(&session),
            json!({ "current_password": "hal-password", "new_password": "hal-new-password" }),
        )
        .await;
    assert_eq!(changed.status, StatusCode::NO_CONTENT, "{changed:?}");
    assert_eq!(
        app.login("hal", "hal-password").await.status,
        StatusCode::UNAUTHORIZED
    );
    let with_device = app
        .post(
            "/api/v1/login",
            None,
            json!({ "username": "hal", "password": "hal-new-password", "device_token": device }),
        )
        .await;
    assert_eq!(
        with_device.body["status"], "two_factor_required",
        "the device is forgotten"
    );
    app.stop().await;
}

/// PostgreSQL's horizon for the read models ignores transactions of other
/// databases of the cluster: they cannot write our events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_in_another_database_does_not_hold_the_read_models_back() {
    use sqlx::{Connection, Executor};
    let app = spawn_app(Backend::Postgres).await;
    let elsewhere = crate::helpers::fresh_postgres_database().await;
    let mut connection = sqlx::PgConnection::connect(&elsewhere).await.unwrap();
    let mut long = connection.begin().await.unwrap();
    long.execute("CREATE TABLE unrelated (x int)")
        .await
        .unwrap();
    long.execute("INSERT INTO unrelated VALUES (1)")
        .await
        .unwrap();
    // While that transaction stays open, our writes are read back at once.
    let admin = app.admin_token().await;
    let created = app
        .post(
            "/api/v1/users",
            Some(&admin),
            json!({ "username": "ivy", "password": "ivy-password" }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let found = app.get("/api/v1/users?q=ivy", &admin).await;
    assert_eq!(found.body["users"][0]["username"], "ivy", "{found:?}");
    long.rollback().await.unwrap();
    app.stop().await;
}

/// More sign-ins at once than one hashing worker and a one-place line can
/// take: the excess is refused at once (503 `unavailable`, `Retry-After`),
/// stores nothing and takes nothing from the address's quota of attempts;
/// the others sign in. The line is in front of the store, so one backend
/// shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_beyond_the_hashing_capacity_are_refused_at_once() {
    const QUOTA: i64 = 40;
    const BURST: usize = 24;
    let settings = twofold_api::Settings {
        login_rate_per_ip: QUOTA as u32,
        password_hash_workers: std::num::NonZeroUsize::MIN,
        password_hash_queue: 1,
        ..crate::helpers::default_settings()
    };
    let app = crate::helpers::spawn_app_with(Backend::Sqlite, settings).await;
    // Creating the user signs the admin in: one attempt from this address.
    let id = app.create_user("kim", "kim-password", None, "user").await;
    let answers = join_all((0..BURST).map(|_| app.login("kim", "kim-password"))).await;

    let refused: Vec<_> = answers
        .iter()
        .filter(|answer| answer.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    let signed_in = answers
        .iter()
        .filter(|answer| answer.status == StatusCode::OK)
        .count();
    println!(
        "{BURST} sign-ins at once: {signed_in} signed in, {} refused",
        refused.len()
    );
    assert_eq!(
        signed_in + refused.len(),
        BURST,
        "only 200 or 503: {answers:?}"
    );
    assert!(signed_in >= 1, "{answers:?}");
    assert!(!refused.is_empty(), "{answers:?}");
    for answer in &refused {
        assert_eq!(answer.error(), "unavailable", "{answer:?}");
        assert!(answer.body["message"].is_string(), "{answer:?}");
        assert_eq!(answer.headers["retry-after"], "1", "{answer:?}");
    }
    for answer in answers
        .iter()
        .filter(|answer| answer.status == StatusCode::OK)
    {
        assert_eq!(answer.body["status"], "authenticated", "{answer:?}");
    }

    let stored = |event_type: &str| {
        format!("SELECT count(*) FROM events WHERE aggregate_id = '{id}' AND event_type = '{event_type}'")
    };
    assert_eq!(
        app.scalar(&stored("SessionStarted")).await,
        signed_in as i64
    );
    assert_eq!(app.scalar(&stored("PasswordRejected")).await, 0);

    // What is left of the quota: every attempt but the refused ones counted.
    let mut more = 0;
    loop {
        let answer = app.login("kim", "kim-password").await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        more += 1;
        assert!(more <= QUOTA, "the quota never ran out");
    }
    assert_eq!(more, QUOTA - 1 - signed_in as i64);
    app.stop().await;
}
