//! Every form a page receives is checked before its handler runs: its CSRF
//! token (`csrf.rs`) and where it was posted from.

use axum::body::Body;
use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::cookies::Cookies;
use super::csrf;
use super::reply::PageError;
use super::visitor::came_over_https;

/// The form body a page may post, at most.
const FORM_LIMIT: usize = 64 * 1024;

/// Checks every POST to a page before its handler runs.
pub async fn guard(request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let cross_site = request
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    let (parts, body) = request.into_parts();
    let cookies = Cookies::from_headers(&parts.headers, came_over_https(&parts));
    let Ok(bytes) = axum::body::to_bytes(body, FORM_LIMIT).await else {
        return PageError::BadForm("the form is too large".into()).into_response();
    };
    let given = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
        .ok()
        .and_then(|pairs| {
            pairs
                .into_iter()
                .find(|(name, _)| name == "csrf")
                .map(|(_, value)| value)
        });
    match given {
        Some(given) if !cross_site && csrf::matches(&given, &cookies) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        _ => PageError::Csrf.into_response(),
    }
}
