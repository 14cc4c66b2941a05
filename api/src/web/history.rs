//! History pages for auditors: one user's timeline with its cases folded,
//! and the mandatory-date forecast beside the 2FA report. Both read the
//! API's answers; the cases are the API's, the pages only fold them.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use twofold_domain::Role;

use super::admin::download;
use super::chrome::Chrome;
use super::pages::{signed_in, when};
use super::reply::{PageError, Reply};
use super::visitor::Visitor;
use super::Web;
use crate::routes::history::{Timeline, TimelineCase, TimelineEntry, TwoFactorForecast};
use crate::routes::users::UserView;

/// One event as the timeline page lists it.
pub struct EventLine {
    pub at: String,
    pub summary: String,
    pub event_type: String,
    pub position: i64,
}

impl From<&TimelineEntry> for EventLine {
    fn from(entry: &TimelineEntry) -> Self {
        EventLine {
            at: when(Some(entry.occurred_at)),
            summary: entry.summary.clone(),
            event_type: entry.event_type.clone(),
            position: entry.position,
        }
    }
}

/// A stretch of the timeline: one event, or a case folded under its first
/// event's sentence.
pub enum Block {
    Event(EventLine),
    Case {
        kind: &'static str,
        title: String,
        span: String,
        events: Vec<EventLine>,
    },
}

fn kind_label(case: &TimelineCase) -> &'static str {
    match case.kind.as_str() {
        "impersonation" => "Login as",
        "reset" => "2FA reset",
        _ => "Enforcement change",
    }
}

/// The entries in order, each case's events folded where its first event
/// is (an event belongs to one case at most).
fn fold(timeline: &Timeline) -> Vec<Block> {
    let by_position: HashMap<i64, &TimelineEntry> = timeline
        .entries
        .iter()
        .map(|entry| (entry.position, entry))
        .collect();
    let mut case_at: HashMap<i64, &TimelineCase> = HashMap::new();
    let mut in_case: HashMap<i64, ()> = HashMap::new();
    for case in &timeline.cases {
        if let Some(first) = case.positions.first() {
            case_at.insert(*first, case);
        }
        in_case.extend(case.positions.iter().map(|position| (*position, ())));
    }
    let mut blocks = Vec::new();
    for entry in &timeline.entries {
        if let Some(case) = case_at.get(&entry.position) {
            let events: Vec<EventLine> = case
                .positions
                .iter()
                .filter_map(|position| by_position.get(position))
                .map(|entry| EventLine::from(*entry))
                .collect();
            let span = match case.ended_at {
                Some(ended) if ended == case.started_at => when(Some(ended)),
                Some(ended) => format!("{} to {}", when(Some(case.started_at)), when(Some(ended))),
                None => format!("{}, still running", when(Some(case.started_at))),
            };
            blocks.push(Block::Case {
                kind: kind_label(case),
                title: entry.summary.clone(),
                span,
                events,
            });
        } else if !in_case.contains_key(&entry.position) {
            blocks.push(Block::Event(EventLine::from(entry)));
        }
    }
    blocks
}

#[derive(Template)]
#[template(path = "timeline.html")]
struct TimelinePage {
    chrome: Chrome,
    user_id: String,
    username: String,
    blocks: Vec<Block>,
}

/// `GET /admin/users/{id}/timeline`: `GET /api/v1/users/{id}/timeline`.
pub async fn timeline(
    State(web): State<Web>,
    visitor: Visitor,
    Path(id): Path<String>,
) -> Result<Reply, PageError> {
    let id = uuid::Uuid::parse_str(&id).map_err(|_| PageError::NotFound)?;
    let chrome = signed_in(&web, &visitor).await?;
    let user: UserView = web
        .api
        .get(&visitor, &format!("/users/{id}"))
        .await?
        .into_result()?;
    let timeline: Timeline = web
        .api
        .get(&visitor, &format!("/users/{id}/timeline"))
        .await?
        .into_result()?;
    let page = TimelinePage {
        chrome,
        user_id: id.to_string(),
        username: user.username,
        blocks: fold(&timeline),
    };
    Reply::render(StatusCode::OK, &page)
}

/// Users without 2FA in one role.
pub struct RoleLeft {
    pub role: Role,
    pub users: i64,
}

/// The forecast as the reports page shows it.
pub struct ForecastView {
    pub mandatory_from: Option<String>,
    pub without_two_factor: i64,
    pub by_role: Vec<RoleLeft>,
    pub enrolled_in_window: i64,
    /// The days with enrollments, newest first.
    pub busy_days: Vec<(String, i64)>,
    pub projected: Option<String>,
}

impl From<TwoFactorForecast> for ForecastView {
    fn from(forecast: TwoFactorForecast) -> Self {
        ForecastView {
            mandatory_from: forecast.mandatory_from.map(|at| when(Some(at))),
            without_two_factor: forecast.without_two_factor,
            by_role: forecast
                .by_role
                .into_iter()
                .map(|(role, users)| RoleLeft { role, users })
                .collect(),
            enrolled_in_window: forecast
                .enrollments_per_day
                .iter()
                .map(|day| day.count)
                .sum(),
            busy_days: forecast
                .enrollments_per_day
                .iter()
                .rev()
                .filter(|day| day.count > 0)
                .map(|day| (day.date.to_string(), day.count))
                .collect(),
            projected: forecast.projected_all_enrolled_at.map(|at| when(Some(at))),
        }
    }
}

/// The forecast for the reports page.
pub async fn forecast(web: &Web, visitor: &Visitor) -> Result<ForecastView, PageError> {
    let forecast: TwoFactorForecast = web
        .api
        .get(visitor, "/reports/two-factor/forecast")
        .await?
        .into_result()?;
    Ok(forecast.into())
}

/// `GET /admin/reports/without-two-factor.csv`: the users who would be held
/// on the mandatory date.
pub async fn without_two_factor_csv(State(web): State<Web>, visitor: Visitor) -> Response {
    download(&web, &visitor, "/reports/two-factor/forecast?format=csv")
        .await
        .into_response()
}
