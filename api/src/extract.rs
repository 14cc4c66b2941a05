//! axum's extractors, answering bad input with the contract's JSON errors.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

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
pub struct RequestOrigin {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestOrigin {
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
        Ok(RequestOrigin {
            ip,
            user_agent: text(header::USER_AGENT.as_str()),
            request_id: text("x-request-id"),
        })
    }
}
