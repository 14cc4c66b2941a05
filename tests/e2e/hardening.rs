//! The security review's HTTP items: CSRF tokens bound to the session and
//! `__Host-` cookies, `Cache-Control: no-store` on the API, the client
//! address behind trusted proxies and the per-address (per-/64) sign-in
//! limit, and metrics on a listener of their own.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{default_settings, spawn_app, spawn_app_configured, Backend, TestApp, ADMIN};
use crate::on_both_backends;

on_both_backends!(
    a_planted_anchor_cookie_cannot_carry_a_form_once_a_session_cookie_is_present,
    over_https_the_pages_use_and_read_only_host_prefixed_cookies,
    every_api_answer_says_no_store_errors_and_unknown_paths_included,
    x_forwarded_for_names_the_client_only_behind_a_trusted_proxy,
    a_client_cannot_escape_the_sign_in_limit_by_writing_x_forwarded_for,
    behind_a_trusted_proxy_ipv6_clients_share_a_sign_in_limit_per_64,
    metrics_listen_serves_metrics_apart_and_the_main_listener_answers_404,
);

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The hidden `csrf` field of the first form on a page.
fn form_token(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a form with a CSRF token")
        .to_string()
}

fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().unwrap().to_string())
        .collect()
}

/// `name=value` of the cookie `name` that `response` sets.
fn cookie_pair(response: &reqwest::Response, name: &str) -> String {
    set_cookies(response)
        .into_iter()
        .find(|cookie| cookie.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("a {name} cookie in {:?}", set_cookies(response)))
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// What an attacker gets by visiting the sign-in page: an anchor cookie
/// and the form token that goes with it.
async fn anchor_and_token(app: &TestApp, https: bool) -> (String, String) {
    let mut request = no_redirects().get(format!("{}/", app.base));
    if https {
        request = request.header("x-forwarded-proto", "https");
    }
    let page = request.send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let name = if https {
        "__Host-twofold_csrf"
    } else {
        "twofold_csrf"
    };
    let anchor = cookie_pair(&page, name);
    (anchor, form_token(&page.text().await.unwrap()))
}

/// The form token a signed-in visitor's settings page carries.
async fn session_token_of_page(app: &TestApp, cookie: &str, https: bool) -> String {
    let mut request = no_redirects()
        .get(format!("{}/settings", app.base))
        .header("cookie", cookie);
    if https {
        request = request.header("x-forwarded-proto", "https");
    }
    let page = request.send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    form_token(&page.text().await.unwrap())
}

/// `POST /settings/devices/forget` (a harmless form) with these cookies
/// and this token.
async fn forget_devices(app: &TestApp, cookie: &str, token: &str, https: bool) -> StatusCode {
    let mut request = no_redirects()
        .post(format!("{}/settings/devices/forget", app.base))
        .header("cookie", cookie)
        .form(&[("csrf", token)]);
    if https {
        request = request.header("x-forwarded-proto", "https");
    }
    let answer = request.send().await.unwrap();
    let status = answer.status();
    if status == StatusCode::FORBIDDEN {
        let body = answer.text().await.unwrap();
        assert!(body.contains("This form has expired"), "{body}");
    } else {
        assert_eq!(
            answer.headers()["location"],
            "/settings?notice=devices-forgotten",
            "the form was carried out"
        );
    }
    status
}

async fn a_planted_anchor_cookie_cannot_carry_a_form_once_a_session_cookie_is_present(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let (planted_anchor, planted_token) = anchor_and_token(&app, false).await;
    let session = app.admin_token().await;
    let victim = format!("twofold_session={session}; {planted_anchor}");
    let own_token = session_token_of_page(&app, &victim, false).await;
    assert_ne!(own_token, planted_token);

    let events = app.event_count().await;
    assert_eq!(
        forget_devices(&app, &victim, &planted_token, false).await,
        StatusCode::FORBIDDEN,
        "the anchor's token is refused beside a session cookie"
    );
    assert_eq!(app.event_count().await, events, "nothing was done");
    assert_eq!(
        forget_devices(&app, &victim, &own_token, false).await,
        StatusCode::SEE_OTHER,
        "the session's own token is accepted"
    );
    // Without a session, the anchor still protects the sign-in form.
    let (anchor, token) = anchor_and_token(&app, false).await;
    let signed_in = no_redirects()
        .post(format!("{}/login", app.base))
        .header("cookie", anchor)
        .form(&[
            ("csrf", token.as_str()),
            ("username", ADMIN.0),
            ("password", ADMIN.1),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    app.stop().await;
}

async fn over_https_the_pages_use_and_read_only_host_prefixed_cookies(backend: Backend) {
    let app = spawn_app(backend).await;
    let page = no_redirects()
        .get(format!("{}/", app.base))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let anchor = set_cookies(&page)
        .into_iter()
        .find(|cookie| cookie.contains("twofold_csrf="))
        .unwrap();
    assert!(anchor.starts_with("__Host-twofold_csrf="), "{anchor}");
    for flag in ["Secure", "Path=/", "HttpOnly", "SameSite=Lax"] {
        assert!(anchor.contains(flag), "{anchor} lacks {flag}");
    }
    assert!(!anchor.to_ascii_lowercase().contains("domain="), "{anchor}");

    // Signing in over HTTPS sets the prefixed session cookie.
    let anchor = anchor.split(';').next().unwrap().to_string();
    let token = form_token(&page.text().await.unwrap());
    let signed_in = no_redirects()
        .post(format!("{}/login", app.base))
        .header("cookie", &anchor)
        .header("x-forwarded-proto", "https")
        .form(&[
            ("csrf", token.as_str()),
            ("username", ADMIN.0),
            ("password", ADMIN.1),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let session_cookie = cookie_pair(&signed_in, "__Host-twofold_session");

    // Unprefixed cookies (which anyone able to plant cookies could set)
    // count for nothing over HTTPS: neither as session nor as anchor.
    let session = session_cookie.split_once('=').unwrap().1.to_string();
    let (planted_anchor, planted_token) = anchor_and_token(&app, false).await;
    let unprefixed = format!("twofold_session={session}; {planted_anchor}");
    assert_eq!(
        forget_devices(&app, &unprefixed, &planted_token, true).await,
        StatusCode::FORBIDDEN
    );
    let with_planted = format!("{session_cookie}; {planted_anchor}");
    assert_eq!(
        forget_devices(&app, &with_planted, &planted_token, true).await,
        StatusCode::FORBIDDEN
    );
    let own_token = session_token_of_page(&app, &session_cookie, true).await;
    assert_eq!(
        forget_devices(&app, &with_planted, &own_token, true).await,
        StatusCode::SEE_OTHER
    );
    app.stop().await;
}

fn assert_no_store(what: &str, headers: &reqwest::header::HeaderMap) {
    let values: Vec<_> = headers.get_all("cache-control").iter().collect();
    assert_eq!(values.len(), 1, "{what}: {values:?}");
    assert_eq!(values[0], "no-store", "{what}");
}

async fn every_api_answer_says_no_store_errors_and_unknown_paths_included(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin_token().await;
    let raw = |method: Method, path: &str| {
        app.client
            .request(method, format!("{}{path}", app.base))
            .header("accept", "text/html")
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode)> = vec![
        (
            "sign-in",
            raw(Method::POST, "/api/v1/login")
                .json(&json!({ "username": ADMIN.0, "password": ADMIN.1 })),
            StatusCode::OK,
        ),
        (
            "wrong password",
            raw(Method::POST, "/api/v1/login")
                .json(&json!({ "username": ADMIN.0, "password": "wrong-password" })),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "me",
            raw(Method::GET, "/api/v1/me").bearer_auth(&admin),
            StatusCode::OK,
        ),
        (
            "no token",
            raw(Method::GET, "/api/v1/me"),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "csv report",
            raw(Method::GET, "/api/v1/reports/two-factor?format=csv").bearer_auth(&admin),
            StatusCode::OK,
        ),
        (
            "openapi",
            raw(Method::GET, "/api/v1/openapi.json"),
            StatusCode::OK,
        ),
        (
            "unknown path",
            raw(Method::GET, "/api/v1/no-such-endpoint"),
            StatusCode::NOT_FOUND,
        ),
        (
            "the prefix itself",
            raw(Method::GET, "/api/v1"),
            StatusCode::NOT_FOUND,
        ),
        (
            "wrong method",
            raw(Method::PUT, "/api/v1/login"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "malformed JSON",
            raw(Method::POST, "/api/v1/login")
                .header("content-type", "application/json")
                .body("{"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "too large",
            raw(Method::POST, "/api/v1/login")
                .header("content-type", "application/json")
                .body(format!("\"{}\"", "x".repeat(70 * 1024))),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "write without a token",
            raw(Method::POST, "/api/v1/users")
                .json(&json!({ "username": "x", "password": "long-enough" })),
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (what, request, status) in cases {
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), status, "{what}");
        assert_no_store(what, answer.headers());
    }
    // A user's own session on a 403: `/users` is for administrators.
    app.create_user("uma", "uma-password", None, "user").await;
    let user = app.token("uma", "uma-password").await;
    let forbidden = app.get("/api/v1/users", &user).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_no_store("forbidden", &forbidden.headers);
    app.stop().await;
}

/// The `ip` the last stored event of `username` records.
async fn last_recorded_ip(app: &TestApp, username: &str) -> Value {
    let admin = app.admin_token().await;
    let found = app
        .get(&format!("/api/v1/users?q={username}"), &admin)
        .await;
    let id = found.body["users"][0]["id"].as_str().unwrap().to_string();
    let history = app.history(&id).await;
    let (_, metadata) = history.last().unwrap();
    metadata["ip"].clone()
}

async fn sign_in_forwarded_for(app: &TestApp, username: &str, forwarded_for: &str) -> StatusCode {
    app.client
        .post(format!("{}/api/v1/login", app.base))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({ "username": username, "password": format!("{username}-password") }))
        .send()
        .await
        .unwrap()
        .status()
}

async fn x_forwarded_for_names_the_client_only_behind_a_trusted_proxy(backend: Backend) {
    let direct = spawn_app(backend).await;
    direct
        .create_user("vic", "vic-password", None, "user")
        .await;
    assert_eq!(
        sign_in_forwarded_for(&direct, "vic", "203.0.113.9").await,
        StatusCode::OK
    );
    assert_eq!(
        last_recorded_ip(&direct, "vic").await,
        "127.0.0.1",
        "without trusted proxies the header is ignored"
    );
    direct.stop().await;

    let proxied = spawn_app_configured(backend, default_settings(), |config| {
        config.trusted_proxies = "127.0.0.1/32, 10.0.0.0/8".parse().unwrap();
    })
    .await;
    proxied
        .create_user("wes", "wes-password", None, "user")
        .await;
    assert_eq!(
        sign_in_forwarded_for(&proxied, "wes", "198.51.100.66, 203.0.113.9").await,
        StatusCode::OK
    );
    assert_eq!(
        last_recorded_ip(&proxied, "wes").await,
        "203.0.113.9",
        "the right-most entry, written by the trusted proxy"
    );
    assert_eq!(
        sign_in_forwarded_for(&proxied, "wes", "198.51.100.66, 2001:db8::7, 10.1.1.1").await,
        StatusCode::OK
    );
    assert_eq!(
        last_recorded_ip(&proxied, "wes").await,
        "2001:db8::7",
        "trusted hops are skipped, the forged entry left of the client is not taken"
    );

    // The web pages pass the same client on to the API.
    let page = no_redirects()
        .get(format!("{}/", proxied.base))
        .send()
        .await
        .unwrap();
    let anchor = cookie_pair(&page, "twofold_csrf");
    let token = form_token(&page.text().await.unwrap());
    let signed_in = no_redirects()
        .post(format!("{}/login", proxied.base))
        .header("cookie", anchor)
        .header("x-forwarded-for", "192.0.2.44")
        .form(&[
            ("csrf", token.as_str()),
            ("username", "wes"),
            ("password", "wes-password"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    assert_eq!(last_recorded_ip(&proxied, "wes").await, "192.0.2.44");
    proxied.stop().await;
}

fn limited_to(per_minute: u32) -> twofold_api::Settings {
    let mut settings = default_settings();
    settings.login_rate_per_ip = per_minute;
    settings
}

/// Sign-ins of an unknown user (401 while admitted, 429 once limited).
async fn attempt(app: &TestApp, forwarded_for: &str) -> StatusCode {
    let answer = app
        .client
        .post(format!("{}/api/v1/login", app.base))
        .header("x-forwarded-for", forwarded_for)
        // A name of its own each time: unknown names lock after five
        // failures as real users do, and only the address limit is tested.
        .json(&json!({ "username": format!("nobody-{}", uuid::Uuid::new_v4().simple()), "password": "whatever-it-is" }))
        .send()
        .await
        .unwrap();
    answer.status()
}

async fn a_client_cannot_escape_the_sign_in_limit_by_writing_x_forwarded_for(backend: Backend) {
    let app = spawn_app_configured(backend, limited_to(3), |_| {}).await;
    for n in 0..3 {
        let status = attempt(&app, &format!("198.51.100.{n}")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        attempt(&app, "198.51.100.200").await,
        StatusCode::TOO_MANY_REQUESTS,
        "a fresh address in the header is no fresh limit"
    );
    app.stop().await;
}

async fn behind_a_trusted_proxy_ipv6_clients_share_a_sign_in_limit_per_64(backend: Backend) {
    let app = spawn_app_configured(backend, limited_to(3), |config| {
        config.trusted_proxies = "127.0.0.1".parse().unwrap();
    })
    .await;
    for client in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"] {
        assert_eq!(attempt(&app, client).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        attempt(&app, "2001:db8:1:2:abcd::4").await,
        StatusCode::TOO_MANY_REQUESTS,
        "a fourth address of the same /64 is limited"
    );
    assert_eq!(
        attempt(&app, "2001:db8:1:3::1").await,
        StatusCode::UNAUTHORIZED,
        "the next /64 has its own limit"
    );
    for _ in 0..3 {
        assert_eq!(attempt(&app, "192.0.2.1").await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        attempt(&app, "::ffff:192.0.2.1").await,
        StatusCode::TOO_MANY_REQUESTS,
        "IPv4-mapped is the same IPv4 address"
    );
    assert_eq!(
        attempt(&app, "192.0.2.2").await,
        StatusCode::UNAUTHORIZED,
        "IPv4 addresses are counted one by one"
    );
    app.stop().await;
}

async fn metrics_listen_serves_metrics_apart_and_the_main_listener_answers_404(backend: Backend) {
    let app = spawn_app_configured(backend, default_settings(), |config| {
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let metrics_base = app.metrics_base.clone().expect("a metrics listener");
    assert_ne!(metrics_base, app.base);
    app.admin_token().await;
    let main = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(main.status(), StatusCode::NOT_FOUND);
    let body: Value = main.json().await.unwrap();
    assert_eq!(body["error"], "not_found");

    let metrics = app
        .client
        .get(format!("{metrics_base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("twofold_http_requests_total"),
        "the main listener's requests are counted: {text}"
    );
    let api_there = app
        .client
        .get(format!("{metrics_base}/api/v1/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        api_there.status(),
        StatusCode::NOT_FOUND,
        "only /metrics is served on the metrics listener"
    );
    assert_eq!(
        app.client
            .get(format!("{}/healthz", app.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    app.stop().await;
}
