//! Who is calling: the bearer token's session, found by the application.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use twofold_app::{AppError, Session};

use crate::error::ApiError;
use crate::extract::Origin;
use crate::state::AppState;

/// A live session. It may be held on enrollment; use `FullCaller` for
/// everything else.
#[derive(Clone, Debug)]
pub struct Caller(pub Session);

/// A session that may use the whole API (not held on enrollment).
#[derive(Clone, Debug)]
pub struct FullCaller(pub Session);

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)
            .ok_or(ApiError::App(AppError::Unauthenticated))?
            .to_string();
        let Origin(origin) = Origin::from_request_parts(parts, state).await?;
        Ok(Caller(state.app.authenticate(&token, &origin).await?))
    }
}

impl FromRequestParts<AppState> for FullCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Caller(session) = Caller::from_request_parts(parts, state).await?;
        session.full()?;
        Ok(FullCaller(session))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::bearer;
    use axum::http::{HeaderValue, Request};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Any Authorization header: a trimmed, non-empty token or none.
        #[test]
        fn bearer_headers_never_panic(
            value in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..80),
                "(Bearer|bearer|BEARER|Basic|) {0,3}[ -~]{0,40}".prop_map(String::into_bytes),
            ],
        ) {
            let Ok(value) = HeaderValue::from_bytes(&value) else {
                return Ok(());
            };
            let (parts, ()) = Request::builder()
                .header("authorization", value)
                .body(())
                .unwrap()
                .into_parts();
            if let Some(token) = bearer(&parts) {
                prop_assert!(!token.is_empty());
                prop_assert_eq!(token, token.trim());
            }
        }

        #[test]
        fn tokens_are_read_from_bearer_headers(token in "[A-Za-z0-9_-]{1,64}", scheme in "(Bearer|bearer|BEARER)") {
            let (parts, ()) = Request::builder()
                .header("authorization", format!("{scheme} {token}"))
                .body(())
                .unwrap()
                .into_parts();
            prop_assert_eq!(bearer(&parts), Some(token.as_str()));
        }
    }
}
