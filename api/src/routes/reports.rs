//! The 2FA-status report: counts from the counters the projection keeps,
//! or one CSV row per user.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use twofold_domain::Role;
use utoipa::{IntoParams, ToSchema};

use crate::auth::FullCaller;
use crate::error::ApiError;
use crate::export;
use crate::openapi::{BadRequest, SessionErrors, Unavailable};
use crate::read_query::{parse_as_of, MinPosition, ReadQuery};
use crate::state::AppState;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// `json` (counts, the default) or `csv` (one row per user).
    #[param(pattern = "^(json|csv)$")]
    format: Option<String>,
    /// The counts as they stood at this past instant (RFC 3339; JSON only),
    /// echoed in `as_of`.
    #[param(value_type = Option<String>, format = DateTime)]
    as_of: Option<String>,
}

/// Users and those with 2FA enabled, for one role.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct RoleCount {
    pub total: i64,
    pub enabled: i64,
}

/// Users with each factor enabled.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct MethodCount {
    pub totp: i64,
    pub passkey: i64,
}

/// Counts of users by 2FA status.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TwoFactorReport {
    pub total: i64,
    pub enabled: i64,
    pub pending: i64,
    pub disabled: i64,
    pub enforced: i64,
    pub enforced_not_enabled: i64,
    /// Every role, always listed.
    #[schema(value_type = BTreeMap<String, RoleCount>)]
    pub by_role: BTreeMap<Role, RoleCount>,
    /// Users with each factor enabled (a user with both counts in both).
    pub by_method: MethodCount,
    /// When the counts were read, or the instant `as_of` asked for.
    pub as_of: chrono::DateTime<chrono::Utc>,
}

/// The 2FA report: counts, or one CSV row per user.
#[utoipa::path(
    get,
    path = "/reports/two-factor",
    tag = "reports",
    security(("bearer" = [])),
    params(ReportQuery, MinPosition),
    responses(
        (status = 200, description = "Counts (JSON), or one row per user (`format=csv`)", content(
            (TwoFactorReport = "application/json"),
            (String = "text/csv"),
        )),
        BadRequest,
        SessionErrors,
        Unavailable,
    ),
)]
pub async fn two_factor_report(
    State(state): State<AppState>,
    FullCaller(session): FullCaller,
    query: ReadQuery<ReportQuery>,
) -> Result<Response, ApiError> {
    let (query, min_position) = query.into_parts();
    let as_of = parse_as_of(query.as_of.as_deref())?;
    match query.format.as_deref() {
        None | Some("json") => {}
        Some("csv") if as_of.is_some() => {
            return Err(ApiError::invalid_request(
                "as_of answers with counts: leave out format=csv",
            ))
        }
        Some("csv") => {
            let models = state.app.reports_for(&session, min_position).await?;
            return Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"two-factor-report.csv\"",
                    ),
                ],
                Body::from_stream(export::two_factor_csv(models)),
            )
                .into_response());
        }
        Some(_) => return Err(ApiError::invalid_request("format is json or csv")),
    }
    let report = state
        .app
        .two_factor_report(&session, as_of, min_position)
        .await?;
    let by_role = report
        .by_role
        .into_iter()
        .map(|(role, count)| {
            (
                role,
                RoleCount {
                    total: count.total,
                    enabled: count.enabled,
                },
            )
        })
        .collect();
    Ok(axum::Json(TwoFactorReport {
        total: report.total,
        enabled: report.enabled,
        pending: report.pending,
        disabled: report.disabled,
        enforced: report.enforced,
        enforced_not_enabled: report.enforced_not_enabled,
        by_role,
        by_method: MethodCount {
            totp: report.by_method.totp,
            passkey: report.by_method.passkey,
        },
        as_of: report.as_of,
    })
    .into_response())
}
