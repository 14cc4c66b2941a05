//! Administration: users, enforcement, "Login as", resets.

use axum::extract::State;
use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use twofold_domain::{Email, NewSession, Role, TokenHash, UserCommand, Username};
use twofold_projections::{DirectoryEntry, DirectoryFilter};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::FullSession;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Path, RequestOrigin};
use crate::openapi::{
    BadRequest, BodyErrors, RoleSchema, SessionErrors, TwoFactorStatusSchema, Unavailable,
};
use crate::read_query::{MinPosition, ReadQuery};
use crate::respond::Written;
use crate::security;
use crate::state::AppState;
use twofold_store::EventMetadata;

#[derive(Serialize, ToSchema)]
#[schema(as = User)]
pub struct UserView {
    id: Uuid,
    username: String,
    email: Option<String>,
    #[schema(value_type = RoleSchema)]
    role: String,
    #[schema(value_type = TwoFactorStatusSchema)]
    two_factor_status: String,
    /// An administrator enforces 2FA for this user.
    enforced: bool,
    enabled_at: Option<DateTime<Utc>>,
    last_login_at: Option<DateTime<Utc>>,
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
        }
    }
}

pub const TWO_FACTOR_OFF_SUBJECT: &str = "Two-factor authentication was turned off";

pub fn two_factor_off_notice() -> String {
    "Two-factor authentication is now off for your account. Sign in and enable it again \
     from My Settings. If you did not expect this, tell your administrator.\n"
        .to_string()
}

pub fn user_email(user: &twofold_domain::User) -> Option<String> {
    user.profile()
        .and_then(|p| p.email.as_ref())
        .map(|e| e.as_str().to_string())
}

async fn user_view(state: &AppState, id: Uuid) -> Result<UserView, ApiError> {
    state
        .projector
        .read_models()
        .directory_entry(id)
        .await?
        .map(UserView::from)
        .ok_or(ApiError::NotFound("no such user"))
}

fn parse_email(email: Option<&str>) -> Result<Option<Email>, ApiError> {
    email
        .filter(|e| !e.trim().is_empty())
        .map(Email::parse)
        .transpose()
        .map_err(ApiError::from)
}

fn parse_role(role: &str) -> Result<Role, ApiError> {
    role.parse::<Role>().map_err(ApiError::from)
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

pub fn check_password(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < security::PASSWORD_MIN_CHARS
        || password.len() > security::PASSWORD_MAX_BYTES
    {
        return Err(ApiError::InvalidRequest(format!(
            "passwords are {} characters or more, at most {} bytes",
            security::PASSWORD_MIN_CHARS,
            security::PASSWORD_MAX_BYTES
        )));
    }
    Ok(())
}

/// Registers a user; shared by the API and the bootstrap admin.
pub async fn register(
    state: &AppState,
    metadata: &EventMetadata,
    username: Username,
    password: String,
    email: Option<Email>,
    role: Role,
) -> Result<(Uuid, Option<twofold_projections::EventPosition>), ApiError> {
    check_password(&password)?;
    if state.store.find_username(&username).await?.is_some() {
        return Err(ApiError::Conflict("the username is taken".into()));
    }
    let password_hash = state.passwords.hash_for_new_user(password).await?;
    let user_id = Uuid::new_v4();
    let loaded = state.store.load(user_id).await?;
    let at = state.now();
    let committed = state
        .execute(loaded, metadata, |_| UserCommand::RegisterUser {
            user_id,
            username: username.clone(),
            email: email.clone(),
            role,
            password_hash: password_hash.clone(),
            at,
        })
        .await?;
    Ok((user_id, committed.last_position))
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
    origin: RequestOrigin,
    FullSession(session): FullSession,
    Json(request): Json<CreateUser>,
) -> Result<Written<Json<UserView>>, ApiError> {
    session.require(Role::is_administrator)?;
    let role = request
        .role
        .as_deref()
        .map(parse_role)
        .transpose()?
        .unwrap_or(Role::User);
    if role != Role::User {
        session.require(|r| r == Role::SuperAdmin)?;
    }
    let username = Username::parse(&request.username)?;
    let email = parse_email(request.email.as_deref())?;
    let metadata = session.metadata(&origin, &state);
    let (user_id, position) =
        register(&state, &metadata, username, request.password, email, role).await?;
    Ok(Written::new(
        StatusCode::CREATED,
        position,
        Json(user_view(&state, user_id).await?),
    ))
}

/// One user, as the search shows it.
#[utoipa::path(
    get,
    path = "/users/{id}",
    tag = "users",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The user", body = UserView),
        BadRequest,
        SessionErrors,
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
pub async fn get_user(
    State(state): State<AppState>,
    FullSession(session): FullSession,
    Path(id): Path<Uuid>,
) -> Result<Json<UserView>, ApiError> {
    session.require(Role::is_administrator)?;
    Ok(Json(user_view(&state, id).await?))
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

enum Change {
    Email(Option<Email>),
    Role(Role),
    Enforcement(bool),
}

impl Change {
    fn command(&self, reason: Option<String>) -> UserCommand {
        match self {
            Change::Email(email) => UserCommand::ChangeEmail {
                email: email.clone(),
            },
            Change::Role(role) => UserCommand::ChangeRole { role: *role },
            Change::Enforcement(true) => UserCommand::EnforceTwoFactor { reason },
            Change::Enforcement(false) => UserCommand::LiftTwoFactorEnforcement { reason },
        }
    }
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
    origin: RequestOrigin,
    FullSession(session): FullSession,
    Path(id): Path<Uuid>,
    Json(request): Json<UpdateUser>,
) -> Result<Written<Json<UserView>>, ApiError> {
    session.require(Role::is_administrator)?;
    if request.enforce_two_factor.is_some() || request.role.is_some() {
        session.require(|r| r == Role::SuperAdmin)?;
    }
    let role = request.role.as_deref().map(parse_role).transpose()?;
    let email = match &request.email {
        Some(email) => Some(parse_email(email.as_deref())?),
        None => None,
    };
    let mut changes = Vec::new();
    if let Some(email) = email {
        changes.push(Change::Email(email));
    }
    if let Some(role) = role {
        changes.push(Change::Role(role));
    }
    if let Some(enforce) = request.enforce_two_factor {
        changes.push(Change::Enforcement(enforce));
    }
    let metadata = session.metadata(&origin, &state);
    let mut position = None;
    let mut loaded = state.store.load(id).await?;
    if loaded.user.profile().is_none() {
        return Err(ApiError::NotFound("no such user"));
    }
    let target_role = loaded.user.profile().map(|p| p.role);
    if target_role != Some(Role::User) {
        // Administrators manage plain users; only a super admin edits staff.
        session.require(|r| r == Role::SuperAdmin)?;
    }
    let mut changes = changes.into_iter().peekable();
    while let Some(change) = changes.next() {
        let committed = state
            .store
            .execute(loaded, &metadata, |_| {
                change.command(request.reason.clone())
            })
            .await?;
        position = committed.last_position.or(position);
        if changes.peek().is_none() {
            break;
        }
        loaded = state.store.load(id).await?;
    }
    state.settle(position).await;
    Ok(Written::new(
        StatusCode::OK,
        position,
        Json(user_view(&state, id).await?),
    ))
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
        .ok_or(ApiError::InvalidRequest("bad cursor".into()))
}

/// A page of the user search.
#[derive(Serialize, ToSchema)]
pub struct UserPage {
    users: Vec<UserView>,
    /// `null` on the last page.
    next_cursor: Option<String>,
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
    FullSession(session): FullSession,
    query: ReadQuery<SearchQuery>,
) -> Result<Json<UserPage>, ApiError> {
    session.require(Role::can_read_reports)?;
    let query = query.caught_up(&state).await?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::InvalidRequest("limit is 1 to 500".into()));
    }
    if let Some(status) = &query.two_factor {
        if !matches!(status.as_str(), "enabled" | "pending" | "disabled") {
            return Err(ApiError::InvalidRequest(
                "two_factor is enabled, pending or disabled".into(),
            ));
        }
    }
    if let Some(role) = &query.role {
        parse_role(role)?;
    }
    let after_username = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let filter = DirectoryFilter {
        query: query.q.filter(|q| !q.is_empty()),
        two_factor_status: query.two_factor,
        enforced: query.enforced,
        role: query.role,
        after_username,
        limit,
    };
    let (entries, more) = state
        .projector
        .read_models()
        .search_directory(&filter)
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

#[derive(Serialize, ToSchema)]
pub struct ImpersonationStarted {
    session_token: String,
    expires_at: DateTime<Utc>,
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
    origin: RequestOrigin,
    FullSession(session): FullSession,
    Path(id): Path<Uuid>,
    Json(request): Json<ImpersonationRequest>,
) -> Result<Written<Json<ImpersonationStarted>>, ApiError> {
    session.require(Role::is_administrator)?;
    if session.is_impersonation() {
        return Err(ApiError::Forbidden("end the current impersonation first"));
    }
    let reason = request
        .reason
        .filter(|r| !r.trim().is_empty())
        .ok_or(ApiError::InvalidRequest("a reason is required".into()))?;
    let loaded = state.store.load(id).await?;
    if loaded.user.profile().is_none() {
        return Err(ApiError::NotFound("no such user"));
    }
    let target_email = user_email(&loaded.user);
    let token = security::new_token();
    let now = state.now();
    let new_session = NewSession {
        session_id: Uuid::new_v4(),
        token_hash: TokenHash::of(&token),
        expires_at: now + twofold_domain::policy::impersonation_lifetime(),
    };
    let committed = state
        .execute(loaded, &session.metadata(&origin, &state), |_| {
            UserCommand::StartImpersonation {
                impersonation_id: Uuid::new_v4(),
                impersonator_id: session.record.user_id,
                impersonator_role: session.role,
                reason: reason.clone(),
                ticket: request.ticket.clone(),
                session: new_session.clone(),
                at: now,
            }
        })
        .await?;
    state
        .notify(
            target_email.as_deref(),
            "An administrator signed in as you",
            format!(
                "{} signed in to your account to help you, at {}.\nReason: {reason}\n\n\
                 If you did not ask for help, tell your administrator.\n",
                session.record.username,
                now.to_rfc3339(),
            ),
        )
        .await;
    Ok(Written::new(
        StatusCode::CREATED,
        committed.last_position,
        Json(ImpersonationStarted {
            session_token: token,
            expires_at: new_session.expires_at,
        }),
    ))
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
    origin: RequestOrigin,
    FullSession(session): FullSession,
) -> Result<Written<()>, ApiError> {
    if !session.is_impersonation() {
        return Err(ApiError::NotFound("this session is not an impersonation"));
    }
    let loaded = state.store.load(session.record.user_id).await?;
    let session_id = session.record.session_id;
    let committed = state
        .execute(loaded, &session.metadata(&origin, &state), |_| {
            UserCommand::EndImpersonation {
                session_id,
                revoked: None,
            }
        })
        .await?;
    Ok(Written::new(
        StatusCode::NO_CONTENT,
        committed.last_position,
        (),
    ))
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
    origin: RequestOrigin,
    FullSession(session): FullSession,
    Path(id): Path<Uuid>,
    Json(request): Json<ResetRequest>,
) -> Result<Written<()>, ApiError> {
    session.require(|r| r == Role::SuperAdmin)?;
    let loaded = state.store.load(id).await?;
    if loaded.user.profile().is_none() {
        return Err(ApiError::NotFound("no such user"));
    }
    let reason = request.reason.unwrap_or_default();
    let email = user_email(&loaded.user);
    let committed = state
        .execute(loaded, &session.metadata(&origin, &state), |_| {
            UserCommand::ResetTwoFactor {
                reason: reason.clone(),
            }
        })
        .await?;
    state.vault.erase(id).await?;
    state
        .notify(
            email.as_deref(),
            TWO_FACTOR_OFF_SUBJECT,
            two_factor_off_notice(),
        )
        .await;
    Ok(Written::new(
        StatusCode::NO_CONTENT,
        committed.last_position,
        (),
    ))
}

/// A user's remembered devices.
#[utoipa::path(
    get,
    path = "/users/{id}/remembered-devices",
    tag = "users",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    responses(
        (status = 200, description = "Remembered devices", body = super::me::DeviceList),
        BadRequest,
        SessionErrors,
        (status = 404, description = "`not_found`", body = ErrorBody),
    ),
)]
pub async fn user_remembered_devices(
    State(state): State<AppState>,
    FullSession(session): FullSession,
    Path(id): Path<Uuid>,
) -> Result<Json<super::me::DeviceList>, ApiError> {
    session.require(Role::is_administrator)?;
    user_view(&state, id).await?;
    super::me::device_list(&state, id).await
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
    origin: RequestOrigin,
    FullSession(session): FullSession,
    Path(id): Path<Uuid>,
) -> Result<Written<()>, ApiError> {
    session.require(Role::is_administrator)?;
    user_view(&state, id).await?;
    super::me::forget_devices(&state, id, &session.metadata(&origin, &state)).await
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
        fn passwords_are_checked_without_panicking(password in any::<String>()) {
            let accepted = check_password(&password).is_ok();
            let chars = password.chars().count();
            prop_assert_eq!(
                accepted,
                chars >= security::PASSWORD_MIN_CHARS && password.len() <= security::PASSWORD_MAX_BYTES
            );
        }

        #[test]
        fn emails_and_roles_from_requests_never_panic(email in any::<String>(), role in any::<String>()) {
            if let Ok(Some(parsed)) = parse_email(Some(&email)) {
                prop_assert_eq!(parsed.as_str(), email.trim());
            }
            if let Ok(parsed) = parse_role(&role) {
                prop_assert_eq!(parsed.as_str(), role);
            }
        }
    }
}
