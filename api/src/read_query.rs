//! `min_position=n` on the read endpoints (`/users`, `/reports/...`,
//! `/audit`): one extractor, so each reads it the same way.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::Uri;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::extract::check_text;
use crate::state::AppState;

/// `min_position`, as the OpenAPI document lists it for every read endpoint.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct MinPosition {
    /// Answer once the read models have applied the event at this position
    /// (a `Twofold-Position`); 503 `unavailable` after 5 s.
    #[param(minimum = 1)]
    min_position: Option<i64>,
}

/// The endpoint's query `T` (without `min_position`), and `min_position`.
/// Bad input answers 400 at extraction; the application waits for the read
/// models to reach `min_position` once it has checked the caller's rights.
pub struct ReadQuery<T> {
    query: T,
    min_position: Option<i64>,
}

impl<T> ReadQuery<T> {
    pub fn into_parts(self) -> (T, Option<i64>) {
        (self.query, self.min_position)
    }
}

/// Splits `min_position` off the raw query, so `T` may keep refusing
/// unknown fields.
fn split_min_position(query: &str) -> Result<(Option<i64>, String), ApiError> {
    let mut min_position = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("min_position", value)) => {
                let position = value
                    .parse::<i64>()
                    .ok()
                    .filter(|position| *position >= 1)
                    .ok_or(ApiError::invalid_request(
                        "min_position is a position from Twofold-Position",
                    ))?;
                min_position = Some(position);
            }
            _ => rest.push(pair),
        }
    }
    Ok((min_position, rest.join("&")))
}

/// `as_of=<RFC 3339>` (empty: now): the past instant a read answers for.
/// Whether it has passed is the application's to say.
pub fn parse_as_of(value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    match value.filter(|value| !value.is_empty()) {
        None => Ok(None),
        Some(value) => DateTime::parse_from_rfc3339(value)
            .map(|at| Some(at.with_timezone(&Utc)))
            .map_err(|_| {
                ApiError::invalid_request("as_of is an RFC 3339 time such as 2026-05-01T00:00:00Z")
            }),
    }
}

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ReadQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, ApiError> {
        let (min_position, rest) = split_min_position(parts.uri.query().unwrap_or(""))?;
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&rest)
            .map_err(|_| ApiError::invalid_request("bad query string"))?;
        for (name, value) in &pairs {
            check_text("a query parameter", name, false)?;
            check_text(name, value, false)?;
        }
        let uri: Uri = format!("/?{rest}")
            .parse()
            .map_err(|_| ApiError::invalid_request("bad query string"))?;
        let Query(query) = Query::<T>::try_from_uri(&uri)?;
        Ok(ReadQuery {
            query,
            min_position,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::split_min_position;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Any query string: split or 400, never a panic; what is left has
        /// no `min_position` and keeps every other pair in order.
        #[test]
        fn min_position_splitting_never_panics(
            pairs in proptest::collection::vec(
                prop_oneof![
                    any::<String>(),
                    "min_position=[0-9-]{0,20}",
                    "[a-z_]{1,12}=[a-zA-Z0-9%+]{0,12}",
                ],
                0..6,
            ),
        ) {
            let query = pairs.join("&");
            if let Ok((position, rest)) = split_min_position(&query) {
                prop_assert!(position.is_none_or(|p| p >= 1));
                prop_assert!(rest.split('&').all(|pair| !pair.starts_with("min_position=")));
                let (again, same) = split_min_position(&rest).unwrap();
                prop_assert_eq!(again, None);
                prop_assert_eq!(same, rest);
            }
        }
    }

    #[test]
    fn min_position_is_split_off_and_checked() {
        let (position, rest) = split_min_position("q=a&min_position=42&limit=3").unwrap();
        assert_eq!(position, Some(42));
        assert_eq!(rest, "q=a&limit=3");
        assert_eq!(split_min_position("").unwrap(), (None, String::new()));
        for bad in [
            "min_position=",
            "min_position=x",
            "min_position=0",
            "min_position=-3",
        ] {
            assert!(split_min_position(bad).is_err(), "{bad}");
        }
    }
}
