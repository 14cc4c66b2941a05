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

use crate::auth::FullSession;
use crate::error::ApiError;
use crate::export;
use crate::openapi::{BadRequest, SessionErrors, Unavailable};
use crate::read_query::{MinPosition, ReadQuery};
use crate::state::AppState;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReportQuery {
    /// `json` (counts, the default) or `csv` (one row per user).
    #[param(pattern = "^(json|csv)$")]
    format: Option<String>,
}

/// Users and those with 2FA enabled, for one role.
#[derive(Serialize, ToSchema)]
pub struct RoleCount {
    total: i64,
    enabled: i64,
}

/// Counts of users by 2FA status.
#[derive(Serialize, ToSchema)]
pub struct TwoFactorReport {
    total: i64,
    enabled: i64,
    pending: i64,
    disabled: i64,
    enforced: i64,
    enforced_not_enabled: i64,
    /// Every role, always listed.
    by_role: BTreeMap<String, RoleCount>,
    /// When the counts were read.
    as_of: chrono::DateTime<chrono::Utc>,
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
    FullSession(session): FullSession,
    query: ReadQuery<ReportQuery>,
) -> Result<Response, ApiError> {
    session.require(Role::can_read_reports)?;
    let query = query.caught_up(&state).await?;
    match query.format.as_deref() {
        None | Some("json") => {}
        Some("csv") => {
            let rows = export::two_factor_csv(state.projector.read_models().clone());
            return Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"two-factor-report.csv\"",
                    ),
                ],
                Body::from_stream(rows),
            )
                .into_response());
        }
        Some(_) => return Err(ApiError::InvalidRequest("format is json or csv".into())),
    }
    let counts = state.projector.read_models().two_factor_counts().await?;
    let (mut total, mut enabled, mut pending, mut disabled) = (0, 0, 0, 0);
    let (mut enforced, mut enforced_not_enabled) = (0, 0);
    let mut by_role: BTreeMap<&str, (i64, i64)> = Role::ALL
        .iter()
        .map(|role| (role.as_str(), (0, 0)))
        .collect();
    for count in &counts {
        let is_enabled = count.two_factor_status == "enabled";
        total += count.users;
        match count.two_factor_status.as_str() {
            "enabled" => enabled += count.users,
            "pending" => pending += count.users,
            _ => disabled += count.users,
        }
        if count.enforced {
            enforced += count.users;
            if !is_enabled {
                enforced_not_enabled += count.users;
            }
        }
        let role = by_role.entry(count.role.as_str()).or_default();
        role.0 += count.users;
        if is_enabled {
            role.1 += count.users;
        }
    }
    let by_role = by_role
        .into_iter()
        .map(|(role, (total, enabled))| (role.to_string(), RoleCount { total, enabled }))
        .collect();
    Ok(axum::Json(TwoFactorReport {
        total,
        enabled,
        pending,
        disabled,
        enforced,
        enforced_not_enabled,
        by_role,
        as_of: state.now(),
    })
    .into_response())
}
