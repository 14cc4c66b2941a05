//! Administration: users, enforcement, "Login as", resets.

use axum::extract::State;
use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use twofold_app::{NewUser, UserChanges};
use twofold_domain::{Role, SecondFactorMethod, TwoFactorStatus};
use twofold_projections::{DirectoryEntry, DirectoryFilter};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::FullCaller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Origin, Path};
use crate::openapi::{
    BadRequest, BodyErrors, MethodSchema, RoleSchema, SessionErrors, TwoFactorStatusSchema,
    Unavailable,
};
use crate::read_query::{parse_as_of, MinPosition, ReadQuery};
use crate::respond::Written;
use crate::routes::me::DeviceList;
use crate::state::AppState;

#[derive(Serialize, Deserialize, ToSchema)]
#[schema(as = User)]
pub struct UserView {
    pub id: Uuid,
    pub username: String,
    pub email: Option<String>,
    #[schema(value_type = RoleSchema)]
    pub role: Role,
    #[schema(value_type = TwoFactorStatusSchema)]
    pub two_factor_status: TwoFactorStatus,
    /// An administrator enforces 2FA for this user.
    pub enforced: bool,
    pub enabled_at: Option<DateTime<Utc>>,
    pub last_login_at: Option<DateTime<Utc>>,
    /// The factors the user has enabled: `totp`, `passkey`.
    #[schema(value_type = Vec<MethodSchema>)]
    pub two_factor_methods: Vec<SecondFactorMethod>,
}

impl From<DirectoryEntry> for UserView {
    fn from(entry: DirectoryEntry) -> Self {
        UserView {
            id: entry.user_id,
            username: entry.username,
            email: entry.email,
            role: entry.role,
            two_factor_status: entry.two_factor_status,
            enforced: entry.enforced,
            enabled_at: entry.enabled_at,
            last_login_at: entry.last_login_at,
            two_factor_methods: entry.two_factor_methods,
        }
    }
}

fn parse_role(role: &str) -> Result<Role, ApiError> {
    role.parse::<Role>()
        .map_err(|error| ApiError::invalid_request(error.to_string()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1-64 of `a-z 0-9 . _ - @`, any case (stored lower case).
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    username: String,
    /// 8 characters or more, at most 1024 bytes.
    #[schema(min_length = 8, max_length = 256)]
    password: String,
    #[schema(format = Email)]
    email: Option<String>,
    /// `user` by default; only a super admin gives another role.
    #[schema(value_type = Option<RoleSchema>)]
    role: Option<String>,
}

/// Create a user.
#[utoipa::path(
    post,
    path = "/users",
    tag = "users",
    security(("bearer" = [])),
    request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserView),
        BadRequest,
        BodyErrors,
        SessionErrors,
        (status = 409, description = "`conflict`: the username is taken", body = ErrorBody),
    ),
)]
pub async fn create_user(
    State(state): State<AppState>,
    Origin(origin): Origin,
    FullCaller(session): FullCaller,
    Json(request): Json<CreateUser>,
) -> Result<Written<Json<UserView>>, ApiError> {
    let user = NewUser {
        username: request.username,
        password: request.password,
        email: request.email,
        role: request.role.as_deref().map(parse_role).transpose()?,
    };
    let created = state.app.create_user(&session, &origin, user).await?;
    Ok(Written::of(StatusCode::CREATED, created, |entry| {
        Json(UserView::from(entry))
    }))
}

/// One user, as the search shows it.
#[utoipa::path(
    get,
    path = "/users/{id}",
    tag = "users",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user's id"), UserQuery),
    responses(
        (status = 200, description = "The user", body = UserView),
        BadRequest,
        SessionErrors,
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
pub async fn get_user(
    State(state): State<AppState>,
    FullCaller(session): FullCaller,
    Path(id): Path<Uuid>,
    query: ReadQuery<UserQuery>,
) -> Result<Json<UserView>, ApiError> {
    let (query, _) = query.into_parts();
    let as_of = parse_as_of(query.as_of.as_deref())?;
    Ok(Json(state.app.user(&session, id, as_of).await?.into()))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    /// The user as they stood at this past instant (RFC 3339); 404 when
    /// they did not exist yet; `last_login_at` is then null.
    #[param(value_type = Option<String>, format = DateTime)]
    as_of: Option<String>,
}

/// `"email": null` clears the address; a missing field leaves it alone.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// Needs a super admin.
    enforce_two_factor: Option<bool>,
    /// `null` clears the address; leave the field out to keep it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = Email)]
    email: Option<Option<String>>,
    /// Needs a super admin.
    #[schema(value_type = Option<RoleSchema>)]
    role: Option<String>,
    /// Recorded with an enforcement change.
    reason: Option<String>,
}

/// Change a user's email, role or 2FA enforcement.
#[utoipa::path(
    patch,
    path = "/users/{id}",
    tag = "users",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    request_body = UpdateUser,
    responses(
        (status = 200, description = "The user after the change", body = UserView),
        BadRequest,
        BodyErrors,
        SessionErrors,
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: the change does not apply now", body = ErrorBody),
    ),
)]
pub async fn update_user(
    State(state): State<AppState>,
    Origin(origin): Origin,
    FullCaller(session): FullCaller,
    Path(id): Path<Uuid>,
    Json(request): Json<UpdateUser>,
) -> Result<Written<Json<UserView>>, ApiError> {
    let changes = UserChanges {
        email: request.email,
        role: request.role.as_deref().map(parse_role).transpose()?,
        enforce_two_factor: request.enforce_two_factor,
        reason: request.reason,
    };
    let updated = state
        .app
        .update_user(&session, &origin, id, changes)
        .await?;
    Ok(Written::of(StatusCode::OK, updated, |entry| {
        Json(UserView::from(entry))
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Prefix of the username or the email address, any case.
    q: Option<String>,
    #[param(value_type = Option<TwoFactorStatusSchema>)]
    two_factor: Option<String>,
    enforced: Option<bool>,
    #[param(value_type = Option<RoleSchema>)]
    role: Option<String>,
    /// 1-500, default 50.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// The directory as it stood at this past instant (RFC 3339);
    /// `last_login_at` is then null.
    #[param(value_type = Option<String>, format = DateTime)]
    as_of: Option<String>,
}

/// The cursor is the last username of the page; opaque to clients.
fn encode_cursor(username: &str) -> String {
    URL_SAFE_NO_PAD.encode(username.as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or(ApiError::invalid_request("bad cursor"))
}

/// A page of the user search.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct UserPage {
    pub users: Vec<UserView>,
    /// `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The user search in username order, with the 2FA column.
#[utoipa::path(
    get,
    path = "/users",
    tag = "users",
    security(("bearer" = [])),
    params(SearchQuery, MinPosition),
    responses(
        (status = 200, description = "A page of users", body = UserPage),
        BadRequest,
        SessionErrors,
        Unavailable,
    ),
)]

pub async fn list_users(
    State(state): State<AppState>,
    FullCaller(session): FullCaller,
    query: ReadQuery<SearchQuery>,
) -> Result<Json<UserPage>, ApiError> {
    let (query, min_position) = query.into_parts();
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid_request("limit is 1 to 500"));
    }
    let two_factor_status = query
        .two_factor
        .as_deref()
        .map(str::parse::<TwoFactorStatus>)
        .transpose()
        .map_err(|_| ApiError::invalid_request("two_factor is enabled, pending or disabled"))?;
    let role = query.role.as_deref().map(parse_role).transpose()?;
    let after_username = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let as_of = parse_as_of(query.as_of.as_deref())?;
    let filter = DirectoryFilter {
        as_of,
        query: query.q.filter(|q| !q.is_empty()),
        two_factor_status,
        enforced: query.enforced,
        role,
        after_username,
        limit,
        ..DirectoryFilter::default()
    };
    let (entries, more) = state
        .app
        .search_users(&session, &filter, min_position)
        .await?;
    let next_cursor = more
        .then(|| entries.last().map(|e| encode_cursor(&e.username)))
        .flatten();
    let users: Vec<UserView> = entries.into_iter().map(UserView::from).collect();
    Ok(Json(UserPage { users, next_cursor }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImpersonationRequest {
    /// Required, not blank.
    #[schema(required = true, pattern = "\\S")]
    reason: Option<String>,
    ticket: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ImpersonationStarted {
    pub session_token: String,
    pub expires_at: DateTime<Utc>,
}

/// "Login as": a session acting as the user, for 30 minutes at most.
#[utoipa::path(
    post,
    path = "/users/{id}/impersonation",
    tag = "users",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    request_body = ImpersonationRequest,
    responses(
        (status = 201, description = "A session acting as the user", body = ImpersonationStarted),
        BadRequest,
        BodyErrors,
        SessionErrors,
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
pub async fn start_impersonation(
    State(state): State<AppState>,
    Origin(origin): Origin,
    FullCaller(session): FullCaller,
    Path(id): Path<Uuid>,
    Json(request): Json<ImpersonationRequest>,
) -> Result<Written<Json<ImpersonationStarted>>, ApiError> {
    let started = state
        .app
        .impersonate(&session, &origin, id, request.reason, request.ticket)
        .await?;
    Ok(Written::of(StatusCode::CREATED, started, |started| {
        Json(ImpersonationStarted {
            session_token: started.session_token,
            expires_at: started.expires_at,
        })
    }))
}

/// End the "Login as" session this token belongs to.
#[utoipa::path(
    delete,
    path = "/impersonation",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Ended"),
        SessionErrors,
        (status = 404, description = "`not_found`: this session is not an impersonation", body = ErrorBody),
    ),
)]
pub async fn end_impersonation(
    State(state): State<AppState>,
    Origin(origin): Origin,
    FullCaller(session): FullCaller,
) -> Result<Written<()>, ApiError> {
    let done = state.app.end_impersonation(&session, &origin).await?;
    Ok(Written::of(StatusCode::NO_CONTENT, done, |()| ()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    reason: Option<String>,
}

/// A super admin's reset of the user's second factor.
#[utoipa::path(
    delete,
    path = "/users/{id}/two-factor",
    tag = "users",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    request_body = ResetRequest,
    responses(
        (status = 204, description = "Every factor, recovery code and remembered device is gone"),
        BadRequest,
        BodyErrors,
        SessionErrors,
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`conflict`: the user has no 2FA", body = ErrorBody),
    ),
)]
pub async fn reset_two_factor(
    State(state): State<AppState>,
    Origin(origin): Origin,
    FullCaller(session): FullCaller,
    Path(id): Path<Uuid>,
    Json(request): Json<ResetRequest>,
) -> Result<Written<()>, ApiError> {
    let done = state
        .app
        .reset_two_factor(&session, &origin, id, request.reason)
        .await?;
    Ok(Written::of(StatusCode::NO_CONTENT, done, |()| ()))
}

/// A user's remembered devices.
#[utoipa::path(
    get,
    path = "/users/{id}/remembered-devices",
    tag = "users",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    responses(
        (status = 200, description = "Remembered devices", body = DeviceList),
        BadRequest,
        SessionErrors,
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
pub async fn user_remembered_devices(
    State(state): State<AppState>,
    FullCaller(session): FullCaller,
    Path(id): Path<Uuid>,
) -> Result<Json<DeviceList>, ApiError> {
    Ok(Json(state.app.user_devices(&session, id).await?.into()))
}

/// Forget all of a user's remembered devices.
#[utoipa::path(
    delete,
    path = "/users/{id}/remembered-devices",
    tag = "users",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    responses(
        (status = 204, description = "Forgotten"),
        BadRequest,
        SessionErrors,
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
pub async fn revoke_user_remembered_devices(
    State(state): State<AppState>,
    Origin(origin): Origin,
    FullCaller(session): FullCaller,
    Path(id): Path<Uuid>,
) -> Result<Written<()>, ApiError> {
    let done = state.app.forget_user_devices(&session, &origin, id).await?;
    Ok(Written::of(StatusCode::NO_CONTENT, done, |()| ()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn cursors_never_panic_and_round_trip(junk in any::<String>(), name in "[a-z0-9._@-]{1,64}") {
            if let Ok(after) = decode_cursor(&junk) {
                prop_assert_eq!(decode_cursor(&encode_cursor(&after)).unwrap(), after);
            }
            prop_assert_eq!(decode_cursor(&encode_cursor(&name)).unwrap(), name);
        }

        #[test]
        fn roles_from_requests_never_panic(role in any::<String>()) {
            if let Ok(parsed) = parse_role(&role) {
                prop_assert_eq!(parsed.as_str(), role);
            }
        }
    }
}
