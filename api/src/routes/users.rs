//! Administration: users, enforcement, "Login as", resets.

use axum::extract::State;
use axum::http::StatusCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};
use twofold_domain::{Email, NewSession, Role, TokenHash, UserCommand, Username};
use twofold_projections::{DirectoryEntry, DirectoryFilter};
use uuid::Uuid;

use crate::auth::FullSession;
use crate::error::ApiError;
use crate::extract::{Json, Path, RequestOrigin};
use crate::read_query::ReadQuery;
use crate::respond::Written;
use crate::security;
use crate::state::AppState;
use crate::store::EventMetadata;

#[derive(Serialize)]
pub struct UserView {
    id: Uuid,
    username: String,
    email: Option<String>,
    role: String,
    two_factor_status: String,
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
        .db()
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    username: String,
    password: String,
    email: Option<String>,
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
    let password_hash = security::hash_password(password).await?;
    let user_id = Uuid::new_v4();
    let loaded = state.store.load(user_id).await?;
    let at = state.now();
    let committed = state
        .store
        .execute(loaded, metadata, |_| UserCommand::RegisterUser {
            user_id,
            username: username.clone(),
            email: email.clone(),
            role,
            password_hash: password_hash.clone(),
            at,
        })
        .await?;
    state.settle(committed.last_position).await;
    Ok((user_id, committed.last_position))
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    enforce_two_factor: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    email: Option<Option<String>>,
    role: Option<String>,
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
    for change in changes {
        let committed = state
            .store
            .execute(loaded, &metadata, |_| {
                change.command(request.reason.clone())
            })
            .await?;
        position = committed.last_position.or(position);
        loaded = state.store.load(id).await?;
    }
    state.settle(position).await;
    Ok(Written::new(
        StatusCode::OK,
        position,
        Json(user_view(&state, id).await?),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    q: Option<String>,
    two_factor: Option<String>,
    enforced: Option<bool>,
    role: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub async fn list_users(
    State(state): State<AppState>,
    FullSession(session): FullSession,
    query: ReadQuery<SearchQuery>,
) -> Result<Json<Value>, ApiError> {
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
    let after_username = query
        .cursor
        .as_deref()
        .map(|cursor| {
            URL_SAFE_NO_PAD
                .decode(cursor)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or(ApiError::InvalidRequest("bad cursor".into()))
        })
        .transpose()?;
    let filter = DirectoryFilter {
        query: query.q.filter(|q| !q.is_empty()),
        two_factor_status: query.two_factor,
        enforced: query.enforced,
        role: query.role,
        after_username,
        limit,
    };
    let (entries, more) = state.projector.db().search_directory(&filter).await?;
    let next_cursor = more
        .then(|| {
            entries
                .last()
                .map(|e| URL_SAFE_NO_PAD.encode(e.username.as_bytes()))
        })
        .flatten();
    let users: Vec<UserView> = entries.into_iter().map(UserView::from).collect();
    Ok(Json(json!({ "users": users, "next_cursor": next_cursor })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpersonationRequest {
    reason: Option<String>,
    ticket: Option<String>,
}

pub async fn start_impersonation(
    State(state): State<AppState>,
    origin: RequestOrigin,
    FullSession(session): FullSession,
    Path(id): Path<Uuid>,
    Json(request): Json<ImpersonationRequest>,
) -> Result<Written<Json<Value>>, ApiError> {
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
        .store
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
    state.settle(committed.last_position).await;
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
        Json(json!({ "session_token": token, "expires_at": new_session.expires_at })),
    ))
}

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
        .store
        .execute(loaded, &session.metadata(&origin, &state), |_| {
            UserCommand::EndImpersonation { session_id }
        })
        .await?;
    state.settle(committed.last_position).await;
    Ok(Written::new(
        StatusCode::NO_CONTENT,
        committed.last_position,
        (),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    reason: Option<String>,
}

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
        .store
        .execute(loaded, &session.metadata(&origin, &state), |_| {
            UserCommand::ResetTwoFactor {
                reason: reason.clone(),
            }
        })
        .await?;
    state.settle(committed.last_position).await;
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

pub async fn user_remembered_devices(
    State(state): State<AppState>,
    FullSession(session): FullSession,
    Path(id): Path<Uuid>,
) -> Result<Json<Value>, ApiError> {
    session.require(Role::is_administrator)?;
    user_view(&state, id).await?;
    super::me::device_list(&state, id).await
}

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
