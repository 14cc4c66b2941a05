//! axum's extractors, answering bad input with the contract's JSON errors.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use twofold_app::RequestOrigin;

use crate::error::ApiError;

/// A JSON body. Besides axum's checks (content type, syntax, size), every
/// text in it is refused when it holds a control character (the contract:
/// NUL and the like are 400 on every store, where PostgreSQL cannot even
/// store a NUL in `jsonb`); tab and newline are allowed in a `reason`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, bytes) = buffered(request, state).await?;
        // Text is checked in any well-formed JSON; a malformed body is
        // left to axum's own answer below.
        if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
            refuse_control_characters(&value, None)?;
        }
        let request = Request::from_parts(parts, axum::body::Body::from(bytes));
        let axum::Json(value) = axum::Json::<T>::from_request(request, state).await?;
        Ok(Json(value))
    }
}

/// A JSON body that may be left out: an empty body is `None`.
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let (parts, bytes) = buffered(request, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        let request = Request::from_parts(parts, axum::body::Body::from(bytes));
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(OptionalJson(Some(value)))
    }
}

/// The body read whole (within the body limit), beside the request's head.
async fn buffered<S: Send + Sync>(request: Request, state: &S) -> Result<(Parts, Bytes), ApiError> {
    let (parts, body) = request.into_parts();
    let bytes = Bytes::from_request(Request::from_parts(parts.clone(), body), state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::invalid_request(rejection.body_text())
            }
        })?;
    Ok((parts, bytes))
}

/// The one field where a person may break lines.
const MULTILINE_FIELDS: [&str; 1] = ["reason"];

fn refuse_control_characters(value: &Value, field: Option<&str>) -> Result<(), ApiError> {
    match value {
        Value::String(text) => {
            let multiline = field.is_some_and(|field| MULTILINE_FIELDS.contains(&field));
            check_text(field.unwrap_or("a text"), text, multiline)
        }
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| refuse_control_characters(item, field)),
        Value::Object(members) => members.iter().try_for_each(|(key, member)| {
            check_text("a field name", key, false)?;
            refuse_control_characters(member, Some(key))
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// Refuses a control character (NUL, escape, DEL, C1 ...) in a text a
/// client sent; with `multiline`, tab and newline are let through.
pub fn check_text(field: &str, text: &str, multiline: bool) -> Result<(), ApiError> {
    let refused = |c: char| c.is_control() && !(multiline && matches!(c, '\t' | '\n'));
    if text.chars().any(refused) {
        return Err(ApiError::invalid_request(format!(
            "{field} must not hold control characters"
        )));
    }
    Ok(())
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Where a request came from, recorded in each event's metadata.
#[derive(Clone, Debug, Default)]
pub struct Origin(pub RequestOrigin);

impl<S: Send + Sync> FromRequestParts<S> for Origin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // The client behind trusted proxies, else the TCP peer.
        let ip = parts
            .extensions
            .get::<crate::client_address::ClientAddress>()
            .map(|client| client.0)
            .or_else(|| {
                let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>();
                peer.map(|ConnectInfo(addr)| addr.ip())
            });
        let text = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(|value| value.chars().take(512).collect::<String>())
        };
        Ok(Origin(RequestOrigin {
            ip,
            user_agent: text(header::USER_AGENT.as_str()),
            request_id: text("x-request-id"),
        }))
    }
}
