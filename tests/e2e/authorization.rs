//! Who may call what: every endpoint of the contract against every kind of
//! caller, in one table. A new endpoint must get a row here.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{spawn_app, Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(every_endpoint_answers_every_caller_as_the_contract_says);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    Anonymous,
    User,
    EnrollmentOnly,
    Impersonation,
    Auditor,
    Admin,
    SuperAdmin,
}

use Caller::*;

const CALLERS: [Caller; 7] = [
    Anonymous,
    User,
    EnrollmentOnly,
    Impersonation,
    Auditor,
    Admin,
    SuperAdmin,
];

/// One row: the request and the status each caller gets, in `CALLERS` order.
struct Row {
    method: Method,
    path: &'static str,
    body: Option<Value>,
    expected: [u16; 7],
}

fn rows() -> Vec<Row> {
    let row = |method: Method, path: &'static str, body: Option<Value>, expected: [u16; 7]| Row {
        method,
        path,
        body,
        expected,
    };
    //                                                            anon user enrol imper audit admin super
    vec![
        row(
            Method::GET,
            "/api/v1/me",
            None,
            [401, 200, 200, 200, 200, 200, 200],
        ),
        row(
            Method::GET,
            "/api/v1/me/remembered-devices",
            None,
            [401, 200, 403, 200, 200, 200, 200],
        ),
        row(
            Method::DELETE,
            "/api/v1/me/remembered-devices",
            None,
            [401, 204, 403, 204, 204, 204, 204],
        ),
        row(
            Method::POST,
            "/api/v1/me/two-factor/totp",
            Some(json!({})),
            [401, 201, 201, 403, 201, 201, 201],
        ),
        row(
            Method::POST,
            "/api/v1/me/two-factor/totp/confirm",
            Some(json!({ "code": "000000" })),
            [401, 401, 401, 403, 401, 401, 401],
        ),
        row(
            Method::POST,
            "/api/v1/me/password",
            Some(
                json!({ "current_password": "not-the-password", "new_password": "new-password-1" }),
            ),
            [401, 401, 403, 403, 401, 401, 401],
        ),
        row(
            Method::GET,
            "/api/v1/users",
            None,
            [401, 403, 403, 403, 200, 200, 200],
        ),
        row(
            Method::POST,
            "/api/v1/users",
            Some(json!({ "username": "{new}", "password": "new-password" })),
            [401, 403, 403, 403, 403, 201, 201],
        ),
        row(
            Method::GET,
            "/api/v1/users/{target}",
            None,
            [401, 403, 403, 403, 403, 200, 200],
        ),
        row(
            Method::PATCH,
            "/api/v1/users/{target}",
            Some(json!({ "email": "target@example.com" })),
            [401, 403, 403, 403, 403, 200, 200],
        ),
        row(
            Method::PATCH,
            "/api/v1/users/{target}",
            Some(json!({ "enforce_two_factor": false })),
            [401, 403, 403, 403, 403, 403, 200],
        ),
        row(
            Method::PATCH,
            "/api/v1/users/{target}",
            Some(json!({ "role": "user" })),
            [401, 403, 403, 403, 403, 403, 200],
        ),
        row(
            Method::POST,
            "/api/v1/users/{target}/impersonation",
            Some(json!({ "reason": "matrix" })),
            [401, 403, 403, 403, 403, 201, 201],
        ),
        row(
            Method::DELETE,
            "/api/v1/users/{target}/two-factor",
            Some(json!({ "reason": "matrix" })),
            [401, 403, 403, 403, 403, 403, 204],
        ),
        row(
            Method::GET,
            "/api/v1/users/{target}/remembered-devices",
            None,
            [401, 403, 403, 403, 403, 200, 200],
        ),
        row(
            Method::DELETE,
            "/api/v1/users/{target}/remembered-devices",
            None,
            [401, 403, 403, 403, 403, 204, 204],
        ),
        row(
            Method::DELETE,
            "/api/v1/impersonation",
            None,
            [401, 404, 403, 204, 404, 404, 404],
        ),
        row(
            Method::DELETE,
            "/api/v1/me/two-factor",
            None,
            [401, 400, 403, 204, 400, 400, 400],
        ),
        row(
            Method::POST,
            "/api/v1/logout",
            None,
            [401, 204, 204, 204, 204, 204, 204],
        ),
    ]
}

struct Fixture {
    target: String,
    enforced_password: &'static str,
}

async fn prepare(app: &TestApp) -> Fixture {
    app.create_user("plain", "plain-password", None, "user")
        .await;
    app.create_user("audit", "audit-password", None, "auditor")
        .await;
    app.create_user("staff", "staff-password", None, "admin")
        .await;
    let target = app
        .create_user("target", "target-password", None, "user")
        .await;
    let held = app.create_user("held", "held-password", None, "user").await;
    let admin = app.admin_token().await;
    let enforced = app
        .patch(
            &format!("/api/v1/users/{held}"),
            &admin,
            json!({ "enforce_two_factor": true }),
        )
        .await;
    assert_eq!(enforced.status, StatusCode::OK);
    app.create_user("acted", "acted-password", None, "user")
        .await;
    Fixture {
        target,
        enforced_password: "held-password",
    }
}

/// A fresh session of each kind, so that no row depends on another.
async fn session(app: &TestApp, caller: Caller, fixture: &Fixture) -> Option<String> {
    Some(match caller {
        Anonymous => return None,
        User => app.token("plain", "plain-password").await,
        EnrollmentOnly => {
            let login = app.login("held", fixture.enforced_password).await;
            assert_eq!(login.body["status"], "enrollment_required");
            login.body["session_token"].as_str().unwrap().to_string()
        }
        Impersonation => {
            let staff = app.token("staff", "staff-password").await;
            let acted = app.get("/api/v1/users?q=acted", &staff).await;
            let id = acted.body["users"][0]["id"].as_str().unwrap().to_string();
            let started = app
                .post(
                    &format!("/api/v1/users/{id}/impersonation"),
                    Some(&staff),
                    json!({ "reason": "authorization matrix" }),
                )
                .await;
            assert_eq!(started.status, StatusCode::CREATED, "{started:?}");
            started.body["session_token"].as_str().unwrap().to_string()
        }
        Auditor => app.token("audit", "audit-password").await,
        Admin => app.token("staff", "staff-password").await,
        SuperAdmin => app.admin_token().await,
    })
}

async fn every_endpoint_answers_every_caller_as_the_contract_says(backend: Backend) {
    let app = spawn_app(backend).await;
    let fixture = prepare(&app).await;
    let mut mismatches = Vec::new();
    for (n, row) in rows().into_iter().enumerate() {
        for (caller, expected) in CALLERS.into_iter().zip(row.expected) {
            let token = session(&app, caller, &fixture).await;
            let path = row.path.replace("{target}", &fixture.target);
            let body = row.body.as_ref().map(|body| {
                let text = body
                    .to_string()
                    .replace("{new}", &format!("new{n}{caller:?}").to_lowercase());
                serde_json::from_str::<Value>(&text).unwrap()
            });
            let answer = app
                .request(row.method.clone(), &path, token.as_deref(), body)
                .await;
            if answer.status.as_u16() != expected {
                mismatches.push(format!(
                    "{} {} as {caller:?}: expected {expected}, got {} {}",
                    row.method, row.path, answer.status, answer.body
                ));
            }
            if answer.status.is_client_error() {
                assert!(
                    answer.body["error"].is_string(),
                    "{} {}: {answer:?}",
                    row.method,
                    row.path
                );
            }
            if expected == 403 && caller == EnrollmentOnly {
                assert_eq!(
                    answer.error(),
                    "two_factor_enrollment_required",
                    "{} {}",
                    row.method,
                    row.path
                );
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    app.stop().await;
}
