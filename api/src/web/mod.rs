//! Web pages for people: a thin client of the JSON API in the same process.
//!
//! Every page handler calls the API router in-process (`ApiClient`), with
//! the session token from the visitor's cookie as its bearer token and the
//! visitor's address and user agent, reads the JSON answer into the API's
//! own response type (`routes::*`: one declaration of each answer, roles
//! and statuses as the domain's enums) and renders it. Rules, errors and
//! events are therefore the API's; this module only keeps cookies, checks
//! CSRF tokens and draws HTML (askama templates in `api/templates`, one
//! stylesheet compiled into the binary).

mod account;
mod admin;
mod chrome;
mod client;
mod cookies;
mod csrf;
mod forms;
mod history;
mod pages;
mod passkeys;
mod reply;
mod signin;
mod visitor;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::state::AppState;
use twofold_app::Clock;

pub use client::ApiClient;

/// What every page handler gets: the API to call and a few display facts.
#[derive(Clone)]
pub struct Web {
    pub api: ApiClient,
    pub clock: Arc<dyn Clock>,
    /// "Remember this device for 23h": the deployment's device lifetime.
    pub remember_hours: i64,
}

/// The pages in front of `api` (the whole JSON API and ops router): a path
/// no page claims goes on to `api` untouched, without the pages' CSRF check
/// or headers (`fallback`).
pub fn with_pages(api: axum::Router, state: &AppState) -> axum::Router {
    let web = Web {
        api: ApiClient::new(api),
        clock: state.app.clock(),
        remember_hours: state.app.settings().remember_device.num_hours(),
    };
    Router::new()
        .route("/", get(signin::sign_in_page))
        .route("/login", post(signin::sign_in))
        .route(
            "/login/code",
            get(signin::code_page).post(signin::verify_code),
        )
        .route("/login/code/email", post(signin::send_email_code))
        .route(
            "/login/code/passkey/options",
            post(signin::passkey_step_options),
        )
        .route("/login/code/passkey", post(signin::passkey_step))
        .route(
            "/login/passkey/options",
            post(signin::passkey_sign_in_options),
        )
        .route("/login/passkey", post(signin::passkey_sign_in))
        .route("/logout", post(signin::sign_out))
        .route("/home", get(account::home))
        .route("/enroll", get(account::enroll_page))
        .route("/settings", get(account::settings))
        .route("/settings/two-factor/totp", post(account::start_totp))
        .route(
            "/settings/two-factor/totp/confirm",
            post(account::confirm_totp),
        )
        .route(
            "/settings/two-factor/disable",
            post(account::disable_two_factor),
        )
        .route("/settings/devices/forget", post(account::forget_devices))
        .route("/settings/passkeys/options", post(passkeys::options))
        .route("/settings/passkeys/add", post(passkeys::add))
        .route("/settings/passkeys/{id}/rename", post(passkeys::rename))
        .route("/settings/passkeys/{id}/remove", post(passkeys::remove))
        .route("/static/passkeys.js", get(passkeys::script))
        .route("/admin/users", get(admin::users))
        .route("/admin/users/{id}", get(admin::user))
        .route("/admin/users/{id}/enforcement", post(admin::enforcement))
        .route("/admin/users/{id}/login-as", post(admin::login_as))
        .route(
            "/admin/users/{id}/reset-two-factor",
            post(admin::reset_two_factor),
        )
        .route(
            "/admin/users/{id}/devices/forget",
            post(admin::forget_devices),
        )
        .route("/impersonation/end", post(admin::end_impersonation))
        .route("/admin/reports", get(admin::reports))
        .route("/admin/reports/two-factor.csv", get(admin::report_csv))
        .route(
            "/admin/reports/without-two-factor.csv",
            get(history::without_two_factor_csv),
        )
        .route("/admin/users/{id}/timeline", get(history::timeline))
        .route("/admin/audit", get(admin::audit))
        .route("/admin/audit/export", get(admin::audit_export))
        .route("/static/app.css", get(stylesheet))
        .method_not_allowed_fallback(reply::method_not_allowed)
        .route_layer(middleware::from_fn(forms::guard))
        .route_layer(middleware::from_fn(security_headers))
        .route_layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    tracing::info_span!(
                        "page",
                        method = %request.method(),
                        path = %request.uri().path(),
                    )
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .fallback(fallback)
        .with_state(web)
}

/// A path no page claims: the API's answer (JSON, as before), except that
/// a browser asking for a page that exists nowhere gets a page saying so.
async fn fallback(State(web): State<Web>, request: Request) -> Response {
    let wants_page = !request.uri().path().starts_with("/api/")
        && request
            .headers()
            .get(header::ACCEPT)
            .and_then(|accept| accept.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html"));
    let response = web.api.forward(request).await;
    if wants_page && response.status() == axum::http::StatusCode::NOT_FOUND {
        let mut page = reply::PageError::NotFound.into_response();
        page.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        return page;
    }
    response
}

const STYLESHEET: &str = include_str!("../../static/app.css");

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

/// Scripts, styles and images only from this origin (QR codes are `data:`
/// images); no inline script, no framing, forms post only here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let mut set = |name: HeaderName, value: &'static str| {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    };
    set(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::REFERRER_POLICY, "no-referrer");
    // Pages show personal data and, once, recovery codes: never cached.
    set(header::CACHE_CONTROL, "no-store");
    response
}
