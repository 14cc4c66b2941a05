//! Administration pages: the user search with the 2FA column, a user's page
//! (Enforce 2FA, "Login as", reset 2FA), the 2FA report and the audit
//! trail. Who may do what is the API's answer, never this module's.

use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use twofold_domain::{Role, TwoFactorStatus};
use twofold_projections::event_types;
use uuid::Uuid;

use super::account::{remembered_devices, DeviceRow};
use super::chrome::Chrome;
use super::client::{query, Answer};
use super::cookies;
use super::history::{self, ForecastView};
use super::pages::{notice_text, signed_in, when};
use super::reply::{capitalized, PageError, Reply};
use super::signin::NoticeQuery;
use super::visitor::Visitor;
use super::Web;
use crate::export::AuditView;
use crate::routes::audit::AuditPage as AuditList;
use crate::routes::reports::TwoFactorReport;
use crate::routes::users::{ImpersonationStarted, UserPage as UserList, UserView};

/// A user as `GET /api/v1/users` and `/users/{id}` give it, ready for a
/// page.
pub struct UserRow {
    pub id: String,
    pub username: String,
    pub email: String,
    pub role: Role,
    pub two_factor_status: TwoFactorStatus,
    pub enforced: bool,
    pub enabled_at: String,
    pub last_login_at: String,
}

impl From<UserView> for UserRow {
    fn from(user: UserView) -> Self {
        UserRow {
            id: user.id.to_string(),
            username: user.username,
            email: user.email.unwrap_or_else(|| "-".into()),
            role: user.role,
            two_factor_status: user.two_factor_status,
            enforced: user.enforced,
            enabled_at: when(user.enabled_at),
            last_login_at: when(user.last_login_at),
        }
    }
}

impl UserRow {
    pub fn two_factor_enabled(&self) -> bool {
        self.two_factor_status == TwoFactorStatus::Enabled
    }
}

fn read<T>(form: Result<Form<T>, FormRejection>) -> Result<T, PageError> {
    form.map(|Form(form)| form)
        .map_err(|rejection| PageError::BadForm(rejection.body_text()))
}

fn user_id(id: &str) -> Result<Uuid, PageError> {
    Uuid::parse_str(id).map_err(|_| PageError::NotFound)
}

/// An API error worth showing on the page the visitor is on; signing in
/// again or the enrollment step still take over.
fn shown_on_page(error: PageError) -> Result<(StatusCode, String), PageError> {
    match error {
        PageError::Api { status, message } => Ok((status, capitalized(&message))),
        other => Err(other),
    }
}

#[derive(Default, Deserialize)]
pub struct UserSearch {
    #[serde(default)]
    q: String,
    #[serde(default)]
    two_factor: String,
    #[serde(default)]
    enforced: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    cursor: String,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    chrome: Chrome,
    search: UserSearch,
    users: Vec<UserRow>,
    next_page: Option<String>,
}

/// `GET /admin/users`: search, with the 2FA status filter and column.
pub async fn users(
    State(web): State<Web>,
    visitor: Visitor,
    Query(search): Query<UserSearch>,
) -> Result<Reply, PageError> {
    let chrome = signed_in(&web, &visitor).await?;
    let filters = [
        ("q", search.q.as_str()),
        ("two_factor", search.two_factor.as_str()),
        ("enforced", search.enforced.as_str()),
        ("role", search.role.as_str()),
    ];
    let mut api_query = filters.to_vec();
    api_query.push(("cursor", search.cursor.as_str()));
    let answer = web
        .api
        .get(&visitor, &format!("/users?{}", query(&api_query)))
        .await?;
    let (status, chrome, users, next_page) = match answer.into_result::<UserList>() {
        Ok(list) => {
            let next_page = list.next_cursor.map(|cursor| {
                let mut link = filters.to_vec();
                link.push(("cursor", cursor.as_str()));
                format!("/admin/users?{}", query(&link))
            });
            let users = list.users.into_iter().map(UserRow::from).collect();
            (StatusCode::OK, chrome, users, next_page)
        }
        Err(error) => {
            let (status, message) = shown_on_page(error)?;
            (status, chrome.error(Some(message)), Vec::new(), None)
        }
    };
    let page = UsersPage {
        chrome,
        search,
        users,
        next_page,
    };
    Reply::render(status, &page)
}

#[derive(Template)]
#[template(path = "user.html")]
struct UserPage {
    chrome: Chrome,
    user: UserRow,
    devices: Vec<DeviceRow>,
}

async fn user_page(
    web: &Web,
    visitor: &Visitor,
    id: Uuid,
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
) -> Result<Reply, PageError> {
    let chrome = signed_in(web, visitor).await?;
    let user: UserView = web
        .api
        .get(visitor, &format!("/users/{id}"))
        .await?
        .into_result()?;
    let devices =
        remembered_devices(web, visitor, &format!("/users/{id}/remembered-devices")).await?;
    let page = UserPage {
        chrome: chrome.notice(notice).error(error),
        user: user.into(),
        devices,
    };
    Reply::render(status, &page)
}

/// `GET /admin/users/{id}`.
pub async fn user(
    State(web): State<Web>,
    visitor: Visitor,
    Path(id): Path<String>,
    Query(query): Query<NoticeQuery>,
) -> Result<Reply, PageError> {
    let id = user_id(&id)?;
    let notice = notice_text(query.notice.as_deref());
    user_page(&web, &visitor, id, StatusCode::OK, notice, None).await
}

/// After an action on a user's page: back to it with a notice, or the page
/// again with the API's error.
async fn after_action(
    web: &Web,
    visitor: &Visitor,
    id: Uuid,
    answer: Answer,
    notice: &str,
) -> Result<Reply, PageError> {
    match answer.into_done() {
        Ok(()) => Ok(Reply::redirect(&format!(
            "/admin/users/{id}?notice={notice}"
        ))),
        Err(error) => {
            let (status, message) = shown_on_page(error)?;
            user_page(web, visitor, id, status, None, Some(message)).await
        }
    }
}

#[derive(Deserialize)]
pub struct EnforcementForm {
    #[serde(default)]
    enforce: String,
    #[serde(default)]
    reason: String,
}

/// `POST /admin/users/{id}/enforcement` ("Enforce 2FA" Yes/No):
/// `PATCH /api/v1/users/{id}`.
pub async fn enforcement(
    State(web): State<Web>,
    visitor: Visitor,
    Path(id): Path<String>,
    request: Result<Form<EnforcementForm>, FormRejection>,
) -> Result<Reply, PageError> {
    let id = user_id(&id)?;
    let request = read(request)?;
    let mut body = json!({ "enforce_two_factor": request.enforce == "yes" });
    if !request.reason.trim().is_empty() {
        body["reason"] = json!(request.reason.trim());
    }
    let answer = web
        .api
        .as_visitor(
            &visitor,
            Method::PATCH,
            &format!("/users/{id}"),
            Some(&body),
        )
        .await?;
    after_action(&web, &visitor, id, answer, "enforcement-saved").await
}

#[derive(Deserialize)]
pub struct ReasonForm {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    ticket: String,
}

/// `POST /admin/users/{id}/login-as` ("Login as"):
/// `POST /api/v1/users/{id}/impersonation`. The administrator's own
/// session waits in its own cookie until "End".
pub async fn login_as(
    State(web): State<Web>,
    visitor: Visitor,
    Path(id): Path<String>,
    request: Result<Form<ReasonForm>, FormRejection>,
) -> Result<Reply, PageError> {
    let id = user_id(&id)?;
    let request = read(request)?;
    let admin_token = visitor.session().ok_or(PageError::SignIn)?.to_string();
    let mut body = json!({ "reason": request.reason });
    if !request.ticket.trim().is_empty() {
        body["ticket"] = json!(request.ticket.trim());
    }
    let answer = web
        .api
        .as_visitor(
            &visitor,
            Method::POST,
            &format!("/users/{id}/impersonation"),
            Some(&body),
        )
        .await?;
    if !answer.is_success() {
        return after_action(&web, &visitor, id, answer, "").await;
    }
    let started: ImpersonationStarted = answer.parse()?;
    Ok(Reply::redirect("/home")
        .cookie(cookies::set(
            cookies::ADMIN_SESSION,
            &admin_token,
            None,
            visitor.secure,
        ))
        .cookie(cookies::set(
            cookies::SESSION,
            &started.session_token,
            None,
            visitor.secure,
        )))
}

#[derive(Deserialize)]
pub struct EndForm {
    #[serde(default)]
    user_id: String,
}

/// `POST /impersonation/end` ("End"): `DELETE /api/v1/impersonation`, then
/// the administrator's own session again.
pub async fn end_impersonation(
    State(web): State<Web>,
    visitor: Visitor,
    request: Result<Form<EndForm>, FormRejection>,
) -> Result<Reply, PageError> {
    let request = read(request)?;
    let answer = web
        .api
        .as_visitor(&visitor, Method::DELETE, "/impersonation", None)
        .await?;
    // An impersonation that already ended (expired) is over all the same.
    if !answer.is_success() && answer.status != StatusCode::UNAUTHORIZED {
        return Err(answer.page_error());
    }
    let Some(admin_token) = visitor.cookies.get(cookies::ADMIN_SESSION) else {
        return Ok(Reply::redirect("/").cookie(cookies::clear(cookies::SESSION, visitor.secure)));
    };
    let back = match Uuid::parse_str(&request.user_id) {
        Ok(id) => format!("/admin/users/{id}?notice=impersonation-ended"),
        Err(_) => "/home?notice=impersonation-ended".to_string(),
    };
    Ok(Reply::redirect(&back)
        .cookie(cookies::set(
            cookies::SESSION,
            admin_token,
            None,
            visitor.secure,
        ))
        .cookie(cookies::clear(cookies::ADMIN_SESSION, visitor.secure)))
}

/// `POST /admin/users/{id}/reset-two-factor`:
/// `DELETE /api/v1/users/{id}/two-factor` (super admin).
pub async fn reset_two_factor(
    State(web): State<Web>,
    visitor: Visitor,
    Path(id): Path<String>,
    request: Result<Form<ReasonForm>, FormRejection>,
) -> Result<Reply, PageError> {
    let id = user_id(&id)?;
    let request = read(request)?;
    let answer = web
        .api
        .as_visitor(
            &visitor,
            Method::DELETE,
            &format!("/users/{id}/two-factor"),
            Some(&json!({ "reason": request.reason })),
        )
        .await?;
    after_action(&web, &visitor, id, answer, "two-factor-reset").await
}

/// `POST /admin/users/{id}/devices/forget`:
/// `DELETE /api/v1/users/{id}/remembered-devices`.
pub async fn forget_devices(
    State(web): State<Web>,
    visitor: Visitor,
    Path(id): Path<String>,
) -> Result<Reply, PageError> {
    let id = user_id(&id)?;
    let answer = web
        .api
        .as_visitor(
            &visitor,
            Method::DELETE,
            &format!("/users/{id}/remembered-devices"),
            None,
        )
        .await?;
    after_action(&web, &visitor, id, answer, "devices-forgotten").await
}

pub struct RoleRow {
    pub role: Role,
    pub total: i64,
    pub enabled: i64,
}

#[derive(Template)]
#[template(path = "reports.html")]
struct ReportsPage {
    chrome: Chrome,
    total: i64,
    enabled: i64,
    pending: i64,
    disabled: i64,
    enforced: i64,
    enforced_not_enabled: i64,
    roles: Vec<RoleRow>,
    as_of: String,
    forecast: ForecastView,
}

/// `GET /admin/reports`: `GET /api/v1/reports/two-factor`.
pub async fn reports(State(web): State<Web>, visitor: Visitor) -> Result<Reply, PageError> {
    let chrome = signed_in(&web, &visitor).await?;
    let report: TwoFactorReport = web
        .api
        .get(&visitor, "/reports/two-factor")
        .await?
        .into_result()?;
    let page = ReportsPage {
        chrome,
        total: report.total,
        enabled: report.enabled,
        pending: report.pending,
        disabled: report.disabled,
        enforced: report.enforced,
        enforced_not_enabled: report.enforced_not_enabled,
        roles: report
            .by_role
            .into_iter()
            .map(|(role, count)| RoleRow {
                role,
                total: count.total,
                enabled: count.enabled,
            })
            .collect(),
        as_of: when(Some(report.as_of)),
        forecast: history::forecast(&web, &visitor).await?,
    };
    Reply::render(StatusCode::OK, &page)
}

/// A download: the API's streamed answer passed through with its type and
/// file name; an error becomes a page.
pub(super) async fn download(
    web: &Web,
    visitor: &Visitor,
    path: &str,
) -> Result<Response, PageError> {
    let token = visitor.session().ok_or(PageError::SignIn)?;
    let response = web
        .api
        .send(visitor, Method::GET, path, Some(token), None)
        .await?;
    if response.status().is_success() {
        let mut passed = Response::new(axum::body::Body::empty());
        for name in [header::CONTENT_TYPE, header::CONTENT_DISPOSITION] {
            if let Some(value) = response.headers().get(&name) {
                passed.headers_mut().insert(name, value.clone());
            }
        }
        let (_, body) = response.into_parts();
        *passed.body_mut() = body;
        return Ok(passed);
    }
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Err(Answer { status, body }.page_error())
}

/// `GET /admin/reports/two-factor.csv`.
pub async fn report_csv(State(web): State<Web>, visitor: Visitor) -> Response {
    download(&web, &visitor, "/reports/two-factor?format=csv")
        .await
        .into_response()
}

#[derive(Default, Deserialize)]
pub struct AuditSearch {
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    actor_id: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    actor_username: String,
    #[serde(default, rename = "type")]
    event_type: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    cursor: String,
    #[serde(default)]
    format: String,
}

/// A `datetime-local` field's value (`2025-04-10T08:30`) read as UTC, as
/// the page says; anything else goes to the API as typed.
fn rfc3339(value: &str) -> String {
    let value = value.trim();
    if chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M").is_ok() {
        format!("{value}:00Z")
    } else if chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S").is_ok() {
        format!("{value}Z")
    } else {
        value.to_string()
    }
}

impl AuditSearch {
    /// The filters as the API reads them.
    fn filters(&self) -> Vec<(&'static str, String)> {
        vec![
            ("user_id", self.user_id.trim().to_string()),
            ("actor_id", self.actor_id.trim().to_string()),
            ("username", self.username.trim().to_string()),
            ("actor_username", self.actor_username.trim().to_string()),
            ("type", self.event_type.trim().to_string()),
            ("from", rfc3339(&self.from)),
            ("to", rfc3339(&self.to)),
        ]
    }

    fn link(&self, extra: &[(&'static str, &str)]) -> String {
        let filters = self.filters();
        let mut pairs: Vec<(&str, &str)> = filters
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        pairs.extend_from_slice(extra);
        query(&pairs)
    }
}

pub struct AuditRow {
    pub position: i64,
    pub event_type: String,
    pub occurred_at: String,
    /// The username, else the id.
    pub user: String,
    /// The trail of this user's events.
    pub user_link: String,
    pub actor: Option<String>,
    /// The trail of what the actor did.
    pub actor_link: String,
    pub impersonator: Option<String>,
    pub ip: String,
    pub summary: String,
    /// The row's `data` as stored, for whoever wants the raw detail.
    pub data: String,
}

impl From<AuditView> for AuditRow {
    fn from(event: AuditView) -> Self {
        let name = |username: Option<String>, id: Option<String>| username.or(id);
        // By name where the directory has one, else by id.
        let link =
            |username: &Option<String>, id: Option<&str>, by_name, by_id| match (username, id) {
                (Some(username), _) => format!("/admin/audit?{}", query(&[(by_name, username)])),
                (None, Some(id)) => format!("/admin/audit?{}", query(&[(by_id, id)])),
                (None, None) => String::new(),
            };
        let user_link = link(&event.username, Some(&event.user_id), "username", "user_id");
        let actor_link = link(
            &event.actor_username,
            event.actor_id.as_deref(),
            "actor_username",
            "actor_id",
        );
        AuditRow {
            position: event.position,
            user: event.username.unwrap_or(event.user_id),
            user_link,
            event_type: event.event_type,
            occurred_at: when(Some(event.occurred_at)),
            actor_link,
            actor: name(event.actor_username, event.actor_id),
            impersonator: name(event.impersonator_username, event.impersonator_id),
            ip: event.ip.unwrap_or_else(|| "-".into()),
            summary: event.summary,
            data: match &event.data {
                Value::Object(map) if map.is_empty() => String::new(),
                data => serde_json::to_string_pretty(data).unwrap_or_default(),
            },
        }
    }
}

/// A choice of the event type filter: the stored name and it in words.
pub struct EventTypeChoice {
    pub name: &'static str,
    pub label: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    search: AuditSearch,
    event_types: Vec<EventTypeChoice>,
    events: Vec<AuditRow>,
    next_page: Option<String>,
    /// The timeline of the user the page is filtered to.
    timeline_link: Option<String>,
    csv_link: String,
    jsonl_link: String,
}

/// `GET /admin/audit`: `GET /api/v1/audit`, filtered and paged.
pub async fn audit(
    State(web): State<Web>,
    visitor: Visitor,
    Query(search): Query<AuditSearch>,
) -> Result<Reply, PageError> {
    let chrome = signed_in(&web, &visitor).await?;
    let api_query = search.link(&[("cursor", search.cursor.as_str()), ("limit", "50")]);
    let answer = web
        .api
        .get(&visitor, &format!("/audit?{api_query}"))
        .await?;
    let (status, chrome, events, next_page, timeline_link) = match answer.into_result::<AuditList>()
    {
        Ok(list) => {
            let next_page = list
                .next_cursor
                .map(|cursor| format!("/admin/audit?{}", search.link(&[("cursor", &cursor)])));
            let timeline_link = list
                .events
                .first()
                .filter(|_| !search.username.trim().is_empty())
                .map(|event| format!("/admin/users/{}/timeline", event.user_id));
            let events = list.events.into_iter().map(AuditRow::from).collect();
            (StatusCode::OK, chrome, events, next_page, timeline_link)
        }
        Err(error) => {
            let (status, message) = shown_on_page(error)?;
            (status, chrome.error(Some(message)), Vec::new(), None, None)
        }
    };
    let page = AuditPage {
        chrome,
        csv_link: format!("/admin/audit/export?{}", search.link(&[("format", "csv")])),
        jsonl_link: format!(
            "/admin/audit/export?{}",
            search.link(&[("format", "jsonl")])
        ),
        search,
        event_types: event_types()
            .map(|(name, label)| EventTypeChoice { name, label })
            .collect(),
        events,
        next_page,
        timeline_link,
    };
    Reply::render(status, &page)
}

/// `GET /admin/audit/export?format=csv|jsonl&...`: every row the filters
/// select, streamed from `GET /api/v1/audit?format=...`.
pub async fn audit_export(
    State(web): State<Web>,
    visitor: Visitor,
    Query(search): Query<AuditSearch>,
) -> Response {
    let path = format!(
        "/audit?{}",
        search.link(&[("format", search.format.as_str())])
    );
    download(&web, &visitor, &path).await.into_response()
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn datetime_local_values_are_read_as_utc() {
        assert_eq!(rfc3339("2025-04-10T08:30"), "2025-04-10T08:30:00Z");
        assert_eq!(rfc3339("2025-04-10T08:30:15"), "2025-04-10T08:30:15Z");
        assert_eq!(
            rfc3339("2025-04-10T08:30:00+02:00"),
            "2025-04-10T08:30:00+02:00"
        );
        assert_eq!(rfc3339(""), "");
    }
}
