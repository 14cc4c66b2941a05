//! History for auditors: one user's timeline with its cases, and the
//! mandatory-date forecast.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use twofold_domain::Role;
use twofold_projections::{Case, DescribedEntry};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::FullCaller;
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::export;
use crate::extract::Path;
use crate::openapi::{BadRequest, SessionErrors, Unavailable};
use crate::read_query::{MinPosition, ReadQuery};
use crate::state::AppState;

/// The timeline takes no filter: every event of the user.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TimelineQuery {}

/// One event of the user's history.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TimelineEntry {
    pub position: i64,
    pub occurred_at: DateTime<Utc>,
    #[serde(rename = "type")]
    pub event_type: String,
    pub actor_id: Option<String>,
    pub impersonator_id: Option<String>,
    /// What happened, in one sentence naming people by username.
    pub summary: String,
    /// The request that caused it; the events one command stored share it.
    pub correlation_id: Option<String>,
}

impl From<DescribedEntry> for TimelineEntry {
    fn from(described: DescribedEntry) -> Self {
        let entry = described.entry;
        TimelineEntry {
            position: entry.position,
            occurred_at: entry.occurred_at,
            event_type: entry.event_type,
            actor_id: entry.actor_id,
            impersonator_id: entry.impersonator_id,
            summary: described.summary,
            correlation_id: described.correlation_id,
        }
    }
}

/// What belongs together: a "Login as" session with every event caused
/// under it, an administrator's 2FA reset, an enforcement change.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TimelineCase {
    /// `impersonation`, `reset` or `enforcement`.
    #[schema(pattern = "^(impersonation|reset|enforcement)$")]
    pub kind: String,
    pub started_at: DateTime<Utc>,
    /// `null` while a "Login as" session runs.
    pub ended_at: Option<DateTime<Utc>>,
    /// The administrator who acted.
    pub actor_id: Option<String>,
    pub reason: Option<String>,
    pub ticket: Option<String>,
    /// The positions of the case's events, in order.
    pub positions: Vec<i64>,
}

impl From<Case> for TimelineCase {
    fn from(case: Case) -> Self {
        TimelineCase {
            kind: case.kind.as_str().to_string(),
            started_at: case.started_at,
            ended_at: case.ended_at,
            actor_id: case.actor_id,
            reason: case.reason,
            ticket: case.ticket,
            positions: case.positions,
        }
    }
}

/// A user's history.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Timeline {
    pub entries: Vec<TimelineEntry>,
    pub cases: Vec<TimelineCase>,
}

/// Every event of one user, each in a sentence, and the cases that group them.
#[utoipa::path(
    get,
    path = "/users/{id}/timeline",
    operation_id = "user_timeline",
    tag = "reports",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user's id"), TimelineQuery, MinPosition),
    responses(
        (status = 200, description = "The user's history", body = Timeline),
        BadRequest,
        SessionErrors,
        (status = 404, description = "`not_found`", body = ErrorBody),
        Unavailable,
    ),
)]
pub async fn timeline(
    State(state): State<AppState>,
    FullCaller(session): FullCaller,
    Path(id): Path<Uuid>,
    query: ReadQuery<TimelineQuery>,
) -> Result<axum::Json<Timeline>, ApiError> {
    let (_, min_position) = query.into_parts();
    let timeline = state.app.user_timeline(&session, id, min_position).await?;
    Ok(axum::Json(Timeline {
        entries: timeline.entries.into_iter().map(Into::into).collect(),
        cases: timeline.cases.into_iter().map(Into::into).collect(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ForecastQuery {
    /// `json` (the forecast, the default) or `csv` (the users who would be
    /// held on the mandatory date: 2FA not enabled).
    #[param(pattern = "^(json|csv)$")]
    format: Option<String>,
}

/// Enrollments on one day (UTC).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct DayCount {
    pub date: NaiveDate,
    pub count: i64,
}

/// Who is still without 2FA and when everyone is enrolled at today's pace.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TwoFactorForecast {
    /// The platform-wide date from which 2FA is mandatory (`null`: none).
    pub mandatory_from: Option<DateTime<Utc>>,
    /// Users whose 2FA is not enabled.
    pub without_two_factor: i64,
    /// The same, by role; every role listed.
    #[schema(value_type = BTreeMap<String, i64>)]
    pub by_role: BTreeMap<Role, i64>,
    /// Enrollments a day over the last 30 days, oldest first.
    pub enrollments_per_day: Vec<DayCount>,
    /// When everyone would be enrolled at the last 30 days' pace: now when
    /// nobody is left, `null` when nobody enrolled in those days.
    pub projected_all_enrolled_at: Option<DateTime<Utc>>,
}

/// The mandatory-date forecast, or the users who would be held on the date.
#[utoipa::path(
    get,
    path = "/reports/two-factor/forecast",
    operation_id = "two_factor_forecast",
    tag = "reports",
    security(("bearer" = [])),
    params(ForecastQuery, MinPosition),
    responses(
        (status = 200, description = "The forecast (JSON), or the users without 2FA (`format=csv`)", content(
            (TwoFactorForecast = "application/json"),
            (String = "text/csv"),
        )),
        BadRequest,
        SessionErrors,
        Unavailable,
    ),
)]
pub async fn forecast(
    State(state): State<AppState>,
    FullCaller(session): FullCaller,
    query: ReadQuery<ForecastQuery>,
) -> Result<Response, ApiError> {
    let (query, min_position) = query.into_parts();
    match query.format.as_deref() {
        None | Some("json") => {}
        Some("csv") => {
            let models = state.app.reports_for(&session, min_position).await?;
            return Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"without-two-factor.csv\"",
                    ),
                ],
                Body::from_stream(export::without_two_factor_csv(models)),
            )
                .into_response());
        }
        Some(_) => return Err(ApiError::invalid_request("format is json or csv")),
    }
    let forecast = state
        .app
        .two_factor_forecast(&session, min_position)
        .await?;
    Ok(axum::Json(TwoFactorForecast {
        mandatory_from: forecast.mandatory_from,
        without_two_factor: forecast.without_two_factor,
        by_role: forecast.by_role,
        enrollments_per_day: forecast
            .enrollments_per_day
            .into_iter()
            .map(|(date, count)| DayCount { date, count })
            .collect(),
        projected_all_enrolled_at: forecast.projected_all_enrolled_at,
    })
    .into_response())
}
