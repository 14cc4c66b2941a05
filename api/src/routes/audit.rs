//! The audit trail: one row per event in stored order, filtered and paged,
//! exported as CSV or JSON lines, and verified against the events table.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use twofold_domain::Role;
use twofold_projections::{AuditFilter, VerifyReport};
use uuid::Uuid;

use crate::auth::FullSession;
use crate::error::ApiError;
use crate::export::{self, AuditFormat, AuditView};
use crate::extract::Json;
use crate::read_query::ReadQuery;
use crate::state::AppState;

/// Every field is text so that an empty value (`user_id=`) means "no
/// filter", as in the contract's URL template, and a bad one gets a message
/// naming it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    user_id: Option<String>,
    actor_id: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    format: Option<String>,
}

fn given(value: Option<String>) -> Option<String> {
    value.filter(|value| !value.is_empty())
}

fn parse_id(value: Option<String>, name: &str) -> Result<Option<Uuid>, ApiError> {
    given(value)
        .map(|value| {
            Uuid::parse_str(&value)
                .map_err(|_| ApiError::InvalidRequest(format!("{name} is a user id (UUID)")))
        })
        .transpose()
}

fn parse_time(value: Option<String>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    given(value)
        .map(|value| {
            DateTime::parse_from_rfc3339(&value)
                .map(|at| at.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::InvalidRequest(format!(
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
        .ok_or(ApiError::InvalidRequest("bad cursor".into()))
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
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "format is json, csv or jsonl".into(),
            ))
        }
    };
    let event_type = given(query.event_type);
    if let Some(event_type) = &event_type {
        if event_type.len() > 64 || !event_type.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ApiError::InvalidRequest(
                "type is an event name such as TwoFactorDisabled".into(),
            ));
        }
    }
    let limit = match given(query.limit) {
        None => 100,
        Some(limit) => limit
            .parse::<u32>()
            .ok()
            .filter(|limit| (1..=500).contains(limit))
            .ok_or(ApiError::InvalidRequest("limit is 1 to 500".into()))?,
    };
    let filter = AuditFilter {
        user_id: parse_id(query.user_id, "user_id")?,
        actor_id: parse_id(query.actor_id, "actor_id")?,
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

pub async fn audit_trail(
    State(state): State<AppState>,
    FullSession(session): FullSession,
    query: ReadQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    session.require(Role::can_read_reports)?;
    let (filter, output) = parse(query.caught_up(&state).await?)?;
    let db = state.projector.db().clone();
    match output {
        Output::Page => {
            let (entries, more) = db.audit_page(&filter).await?;
            let next_cursor = entries
                .last()
                .filter(|_| more)
                .map(|last| encode_cursor(last.id));
            let events: Vec<AuditView> = entries.into_iter().map(AuditView::from).collect();
            Ok(Json(json!({ "events": events, "next_cursor": next_cursor })).into_response())
        }
        Output::Export(format) => {
            let (content_type, file) = match format {
                AuditFormat::Csv => ("text/csv; charset=utf-8", "audit.csv"),
                AuditFormat::JsonLines => ("application/x-ndjson", "audit.jsonl"),
            };
            Ok((
                [
                    (header::CONTENT_TYPE, content_type.to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{file}\""),
                    ),
                ],
                Body::from_stream(export::audit_rows(db, filter, format)),
            )
                .into_response())
        }
    }
}

/// Recomputes the chains over everything applied so far (catching up
/// first, so the answer covers every event committed before the request).
pub async fn verify(
    State(state): State<AppState>,
    FullSession(session): FullSession,
) -> Result<Json<VerifyReport>, ApiError> {
    session.require(Role::can_read_reports)?;
    state.projector.catch_up().await?;
    let report = state
        .projector
        .db()
        .verify_audit_trail(None, |_| {})
        .await?;
    if !report.ok {
        tracing::error!(?report.first_mismatch, "the audit trail does not match the events");
    }
    Ok(Json(report))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        assert_eq!(decode_cursor(&encode_cursor(42)).unwrap(), 42);
        for junk in ["%%%", "", "YQ", "eDQy", &URL_SAFE_NO_PAD.encode("a-1")] {
            assert!(decode_cursor(junk).is_err(), "{junk}");
        }
    }
}
