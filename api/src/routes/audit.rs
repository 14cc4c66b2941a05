//! The audit trail: one row per event in stored order, filtered and paged,
//! exported as CSV or JSON lines, and verified against the events table.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use twofold_domain::Username;
use twofold_projections::{AuditFilter, VerifyReport};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::FullCaller;
use crate::error::ApiError;
use crate::export::{self, AuditFormat, AuditView};
use crate::extract::Json;
use crate::openapi::{BadRequest, SessionErrors, Unavailable};
use crate::read_query::{MinPosition, ReadQuery};
use crate::state::AppState;

/// Every field is text so that an empty value (`user_id=`) means "no
/// filter", as in the contract's URL template, and a bad one gets a message
/// naming it.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Whose events (empty: everyone's).
    #[param(value_type = Option<String>, format = Uuid)]
    user_id: Option<String>,
    /// Who acted (empty: anyone).
    #[param(value_type = Option<String>, format = Uuid)]
    actor_id: Option<String>,
    /// Whose events, by username (any case; empty: everyone's).
    username: Option<String>,
    /// Who acted, by username.
    actor_username: Option<String>,
    /// An event name such as `TwoFactorDisabled`.
    #[serde(rename = "type")]
    #[param(pattern = "^[A-Za-z0-9]{0,64}$")]
    event_type: Option<String>,
    /// `occurred_at` from this time on (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<String>,
    /// `occurred_at` before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<String>,
    /// 1-500, default 100 (pages only).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// `json` (a page, the default), `csv` or `jsonl` (every row, streamed).
    #[param(pattern = "^(json|csv|jsonl)?$")]
    format: Option<String>,
}

/// A page of the audit trail.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditView>,
    /// `null` on the last page.
    pub next_cursor: Option<String>,
}

fn given(value: Option<String>) -> Option<String> {
    value.filter(|value| !value.is_empty())
}

fn parse_id(value: Option<String>, name: &str) -> Result<Option<Uuid>, ApiError> {
    given(value)
        .map(|value| {
            Uuid::parse_str(&value)
                .map_err(|_| ApiError::invalid_request(format!("{name} is a user id (UUID)")))
        })
        .transpose()
}

fn parse_username(value: Option<String>, name: &str) -> Result<Option<String>, ApiError> {
    given(value)
        .map(|value| {
            Username::parse(&value)
                .map(|username| username.as_str().to_string())
                .map_err(|_| ApiError::invalid_request(format!("{name} is a username such as ann")))
        })
        .transpose()
}

fn parse_time(value: Option<String>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    given(value)
        .map(|value| {
            DateTime::parse_from_rfc3339(&value)
                .map(|at| at.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::invalid_request(format!(
                        "{name} is an RFC 3339 time such as 2024-05-01T00:00:00Z"
                    ))
                })
        })
        .transpose()
}

/// The cursor is the last row's place in apply order; opaque to clients.
fn encode_cursor(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("a{id}"))
}

fn decode_cursor(cursor: &str) -> Result<i64, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix('a').and_then(|id| id.parse().ok()))
        .filter(|id: &i64| *id >= 0)
        .ok_or(ApiError::invalid_request("bad cursor"))
}

enum Output {
    Page,
    Export(AuditFormat),
}

fn parse(query: AuditQuery) -> Result<(AuditFilter, Output), ApiError> {
    let output = match given(query.format).as_deref() {
        None | Some("json") => Output::Page,
        Some("csv") => Output::Export(AuditFormat::Csv),
        Some("jsonl") => Output::Export(AuditFormat::JsonLines),
        Some(_) => return Err(ApiError::invalid_request("format is json, csv or jsonl")),
    };
    let event_type = given(query.event_type);
    if let Some(event_type) = &event_type {
        if event_type.len() > 64 || !event_type.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ApiError::invalid_request(
                "type is an event name such as TwoFactorDisabled",
            ));
        }
    }
    let limit = match given(query.limit) {
        None => 100,
        Some(limit) => limit
            .parse::<u32>()
            .ok()
            .filter(|limit| (1..=500).contains(limit))
            .ok_or(ApiError::invalid_request("limit is 1 to 500"))?,
    };
    let filter = AuditFilter {
        user_id: parse_id(query.user_id, "user_id")?,
        actor_id: parse_id(query.actor_id, "actor_id")?,
        username: parse_username(query.username, "username")?,
        actor_username: parse_username(query.actor_username, "actor_username")?,
        event_type,
        from: parse_time(query.from, "from")?,
        to: parse_time(query.to, "to")?,
        after_id: given(query.cursor)
            .as_deref()
            .map(decode_cursor)
            .transpose()?
            .unwrap_or(0),
        limit,
    };
    Ok((filter, output))
}

/// The audit trail in stored order: a page, or every row as CSV or JSON lines.
#[utoipa::path(
    get,
    path = "/audit",
    tag = "reports",
    security(("bearer" = [])),
    params(AuditQuery, MinPosition),
    responses(
        (status = 200, description = "A page (JSON), or the export (`format=csv|jsonl`)", content(
            (AuditPage = "application/json"),
            (String = "text/csv"),
            (String = "application/x-ndjson"),
        )),
        BadRequest,
        SessionErrors,
        Unavailable,
    ),
)]
pub async fn audit_trail(
    State(state): State<AppState>,
    FullCaller(session): FullCaller,
    query: ReadQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    let (query, min_position) = query.into_parts();
    let (filter, output) = parse(query)?;
    match output {
        Output::Page => {
            let (entries, more) = state
                .app
                .audit_page(&session, &filter, min_position)
                .await?;
            let next_cursor = entries
                .last()
                .filter(|_| more)
                .map(|last| encode_cursor(last.entry.id));
            let events = entries.into_iter().map(AuditView::from).collect();
            Ok(Json(AuditPage {
                events,
                next_cursor,
            })
            .into_response())
        }
        Output::Export(format) => {
            let (content_type, file) = match format {
                AuditFormat::Csv => ("text/csv; charset=utf-8", "audit.csv"),
                AuditFormat::JsonLines | AuditFormat::JsonLinesWithChain => {
                    ("application/x-ndjson", "audit.jsonl")
                }
            };
            Ok((
                [
                    (header::CONTENT_TYPE, content_type.to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{file}\""),
                    ),
                ],
                Body::from_stream(export::audit_rows(
                    state.app.reports_for(&session, min_position).await?,
                    filter,
                    format,
                )),
            )
                .into_response())
        }
    }
}

/// Recomputes the chains over everything applied so far (catching up
/// first, so the answer covers every event committed before the request).
/// Recompute the tamper-evidence chains over the stored events.
#[utoipa::path(
    get,
    path = "/audit/verify",
    operation_id = "verify_audit_trail",
    tag = "reports",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Whether the trail matches the events", body = VerifyReport),
        SessionErrors,
    ),
)]
pub async fn verify(
    State(state): State<AppState>,
    FullCaller(session): FullCaller,
) -> Result<Json<VerifyReport>, ApiError> {
    Ok(Json(state.app.verify_audit_trail(&session).await?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn field() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(prop_oneof![
            any::<String>(),
            Just(String::new()),
            Just(Uuid::new_v4().to_string()),
            Just("2024-05-01T00:00:00Z".to_string()),
            "[0-9]{1,4}",
            "(json|csv|jsonl|xml)",
            "[A-Za-z]{1,70}",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn cursors_never_panic_and_accepted_ones_round_trip(junk in any::<String>(), id in 0_i64..=i64::MAX) {
            if let Ok(after) = decode_cursor(&junk) {
                prop_assert!(after >= 0);
                prop_assert_eq!(decode_cursor(&encode_cursor(after)).unwrap(), after);
            }
            prop_assert_eq!(decode_cursor(&encode_cursor(id)).unwrap(), id);
        }

        /// Any query string values: a filter or a 400, never a panic.
        #[test]
        fn audit_queries_never_panic(
            user_id in field(), actor_id in field(), event_type in field(), from in field(),
            to in field(), limit in field(), cursor in field(), format in field(),
        ) {
            let query = AuditQuery {
                user_id, actor_id, username: None, actor_username: None, event_type, from, to,
                limit, cursor, format,
            };
            if let Ok((filter, _)) = parse(query) {
                prop_assert!((1..=500).contains(&filter.limit));
                prop_assert!(filter.after_id >= 0);
                if let Some(kind) = &filter.event_type {
                    prop_assert!(kind.bytes().all(|b| b.is_ascii_alphanumeric()));
                }
            }
        }
    }

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        assert_eq!(decode_cursor(&encode_cursor(42)).unwrap(), 42);
        for junk in ["%%%", "", "YQ", "eDQy", &URL_SAFE_NO_PAD.encode("a-1")] {
            assert!(decode_cursor(junk).is_err(), "{junk}");
        }
    }
}
