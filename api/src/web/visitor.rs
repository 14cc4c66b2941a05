//! Who is asking for a page: their cookies, address, user agent, and
//! whether the page came over HTTPS.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};

use super::cookies::{self, Cookies};
use crate::client_address::ClientAddress;

/// Who is asking for a page, and from where.
#[derive(Clone, Debug, Default)]
pub struct Visitor {
    pub cookies: Cookies,
    pub connect: Option<ConnectInfo<SocketAddr>>,
    /// The client behind trusted proxies, passed on to the API as it is.
    pub client: Option<ClientAddress>,
    pub user_agent: Option<HeaderValue>,
    /// The page came over HTTPS (directly, or through a proxy that says so):
    /// cookies are then marked `Secure`.
    pub secure: bool,
}

impl Visitor {
    /// The API session token kept in the session cookie.
    pub fn session(&self) -> Option<&str> {
        self.cookies.get(cookies::SESSION)
    }
}

pub fn came_over_https(parts: &Parts) -> bool {
    let header_says = |name: &str, wanted: &dyn Fn(&str) -> bool| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .is_some_and(wanted)
    };
    parts.uri.scheme_str() == Some("https")
        || header_says("x-forwarded-proto", &|value| {
            value
                .split(',')
                .next()
                .is_some_and(|first| first.trim().eq_ignore_ascii_case("https"))
        })
        || header_says("forwarded", &|value| {
            value
                .to_ascii_lowercase()
                .split([';', ','])
                .any(|pair| pair.trim() == "proto=https")
        })
}

impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let secure = came_over_https(parts);
        Ok(Visitor {
            cookies: Cookies::from_headers(&parts.headers, secure),
            connect: parts.extensions.get::<ConnectInfo<SocketAddr>>().cloned(),
            client: parts.extensions.get::<ClientAddress>().copied(),
            user_agent: parts.headers.get(header::USER_AGENT).cloned(),
            secure,
        })
    }
}
