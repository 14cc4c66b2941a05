//! Passkeys: the user's own (register, list, rename, remove), the second
//! step of a sign-in with one, and signing in with one alone. The JSON of
//! the ceremonies is WebAuthn Level 3's (`PublicKeyCredential*JSON`).

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use twofold_app::PasskeyView;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Origin, Path};
use crate::openapi::{BadRequest, BodyErrors, SessionErrors, Unavailable};
use crate::respond::Written;
use crate::routes::login::{Authenticated, Finished};
use crate::state::AppState;

#[derive(Serialize, Deserialize, ToSchema)]
pub struct PasskeyRegistration {
    /// Name it in `POST /me/passkeys/{id}`; valid once, for 5 minutes.
    pub registration_id: Uuid,
    /// `PublicKeyCredentialCreationOptionsJSON`, for `navigator.credentials.create()`.
    #[schema(value_type = Object)]
    pub public_key: serde_json::Value,
}

/// Begin registering a passkey (also from a session held on enrollment;
/// not from "Login as").
#[utoipa::path(
    post,
    path = "/me/passkeys",
    tag = "passkeys",
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Creation options", body = PasskeyRegistration),
        SessionErrors,
        (status = 409, description = "`conflict`: the user holds as many passkeys as allowed", body = ErrorBody),
    ),
)]
pub async fn start_registration(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Caller(session): Caller,
) -> Result<Written<Json<PasskeyRegistration>>, ApiError> {
    let started = state
        .app
        .start_passkey_registration(&session, &origin)
        .await?;
    Ok(Written::of(StatusCode::CREATED, started, |options| {
        Json(PasskeyRegistration {
            registration_id: options.registration_id,
            public_key: options.public_key,
        })
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinishRegistration {
    /// 1 to 64 characters.
    name: String,
    /// The browser's `RegistrationResponseJSON`.
    #[schema(value_type = Object)]
    credential: serde_json::Value,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct PasskeyItem {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<PasskeyView> for PasskeyItem {
    fn from(view: PasskeyView) -> Self {
        PasskeyItem {
            id: view.id,
            name: view.name,
            created_at: view.created_at,
            last_used_at: view.last_used_at,
        }
    }
}

/// Finish a registration with the browser's answer: the passkey is the
/// user's (2FA is enabled; a session held on enrollment becomes full).
#[utoipa::path(
    post,
    path = "/me/passkeys/{id}",
    tag = "passkeys",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The `registration_id` of `POST /me/passkeys`")),
    request_body = FinishRegistration,
    responses(
        (status = 201, description = "Registered", body = PasskeyItem),
        BadRequest,
        BodyErrors,
        SessionErrors,
        (status = 404, description = "`not_found`: no such registration (or it was used)", body = ErrorBody),
        (status = 409, description = "`conflict`: the credential is registered already", body = ErrorBody),
        (status = 410, description = "`challenge_expired`: the registration is older than 5 minutes", body = ErrorBody),
    ),
)]
pub async fn finish_registration(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Caller(session): Caller,
    Path(registration_id): Path<Uuid>,
    Json(request): Json<FinishRegistration>,
) -> Result<Written<Json<PasskeyItem>>, ApiError> {
    let registered = state
        .app
        .finish_passkey_registration(
            &session,
            &origin,
            registration_id,
            request.name,
            request.credential,
        )
        .await?;
    Ok(Written::of(StatusCode::CREATED, registered, |view| {
        Json(view.into())
    }))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct PasskeyList {
    pub passkeys: Vec<PasskeyItem>,
}

/// The user's passkeys.
#[utoipa::path(
    get,
    path = "/me/passkeys",
    tag = "passkeys",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The passkeys", body = PasskeyList),
        SessionErrors,
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    Caller(session): Caller,
) -> Result<Json<PasskeyList>, ApiError> {
    let passkeys = state.app.passkeys(&session).await?;
    Ok(Json(PasskeyList {
        passkeys: passkeys.into_iter().map(PasskeyItem::from).collect(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    /// 1 to 64 characters.
    name: String,
}

/// Rename a passkey.
#[utoipa::path(
    patch,
    path = "/me/passkeys/{id}",
    tag = "passkeys",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The passkey's id")),
    request_body = Rename,
    responses(
        (status = 200, description = "Renamed", body = PasskeyItem),
        BadRequest,
        BodyErrors,
        SessionErrors,
        (status = 404, description = "`not_found`: no such passkey", body = ErrorBody),
    ),
)]
pub async fn rename(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Caller(session): Caller,
    Path(passkey_id): Path<Uuid>,
    Json(request): Json<Rename>,
) -> Result<Written<Json<PasskeyItem>>, ApiError> {
    let renamed = state
        .app
        .rename_passkey(&session, &origin, passkey_id, request.name)
        .await?;
    Ok(Written::of(StatusCode::OK, renamed, |view| {
        Json(view.into())
    }))
}

/// Remove a passkey.
#[utoipa::path(
    delete,
    path = "/me/passkeys/{id}",
    tag = "passkeys",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The passkey's id")),
    responses(
        (status = 204, description = "Removed"),
        BadRequest,
        SessionErrors,
        (status = 404, description = "`not_found`: no such passkey", body = ErrorBody),
        (status = 409, description = "`two_factor_enforced`: the user's last second factor, and 2FA is required of them", body = ErrorBody),
    ),
)]
pub async fn remove(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Caller(session): Caller,
    Path(passkey_id): Path<Uuid>,
) -> Result<Written<()>, ApiError> {
    let removed = state
        .app
        .remove_passkey(&session, &origin, passkey_id)
        .await?;
    Ok(Written::of(StatusCode::NO_CONTENT, removed, |()| ()))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct AssertionOptions {
    /// `PublicKeyCredentialRequestOptionsJSON`, for `navigator.credentials.get()`.
    #[schema(value_type = Object)]
    pub public_key: serde_json::Value,
}

/// Options to pass a sign-in's second step with a passkey; answer with
/// `POST /login/challenges/{challenge_id}/verify`, `method` `passkey`.
#[utoipa::path(
    post,
    path = "/login/challenges/{challenge_id}/passkey",
    tag = "sign-in",
    params(("challenge_id" = Uuid, Path, description = "From `POST /login`")),
    responses(
        (status = 200, description = "Request options (`allowCredentials`: the user's passkeys)", body = AssertionOptions),
        BadRequest,
        (status = 404, description = "`not_found`: no such challenge", body = ErrorBody),
        (status = 410, description = "`challenge_expired`", body = ErrorBody),
        (status = 423, description = "`challenge_locked`, or `account_locked` while the factor backs off", body = ErrorBody),
        Unavailable,
    ),
)]
pub async fn challenge_options(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Path(challenge_id): Path<Uuid>,
) -> Result<Written<Json<AssertionOptions>>, ApiError> {
    let options = state
        .app
        .passkey_challenge_options(&origin, challenge_id)
        .await?;
    Ok(Written::of(StatusCode::OK, options, |public_key| {
        Json(AssertionOptions { public_key })
    }))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SignInOptions {
    /// Answer with `POST /login/passkey/{challenge_id}`; valid once, for 5 minutes.
    pub challenge_id: Uuid,
    /// `PublicKeyCredentialRequestOptionsJSON` (empty `allowCredentials`,
    /// `userVerification` `required`).
    #[schema(value_type = Object)]
    pub public_key: serde_json::Value,
}

/// Begin a sign-in without a password.
#[utoipa::path(
    post,
    path = "/login/passkey",
    tag = "sign-in",
    responses(
        (status = 200, description = "Request options", body = SignInOptions),
        (status = 429, description = "`rate_limited`: too many attempts from this address", body = ErrorBody),
        Unavailable,
    ),
)]
pub async fn start_sign_in(
    State(state): State<AppState>,
    Origin(origin): Origin,
) -> Result<Json<SignInOptions>, ApiError> {
    let options = state.app.start_passkey_sign_in(&origin).await?;
    Ok(Json(SignInOptions {
        challenge_id: options.challenge_id,
        public_key: options.public_key,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeySignIn {
    /// The browser's `AuthenticationResponseJSON`.
    #[schema(value_type = Object)]
    credential: serde_json::Value,
    /// Accepted for symmetry with the second step; a passkey sign-in
    /// remembers no device (it needs none).
    #[serde(default)]
    #[allow(dead_code)]
    remember_device: Option<bool>,
}

/// Sign in with a passkey alone (user verification required): it stands
/// for the password and the second factor.
#[utoipa::path(
    post,
    path = "/login/passkey/{challenge_id}",
    tag = "sign-in",
    params(("challenge_id" = Uuid, Path, description = "From `POST /login/passkey`")),
    request_body = PasskeySignIn,
    responses(
        (status = 200, description = "Signed in", body = Authenticated),
        BadRequest,
        BodyErrors,
        (status = 401, description = "`invalid_credentials`: unknown credential, bad signature, wrong origin or challenge, a replay, no user verification", body = ErrorBody),
        (status = 423, description = "`account_locked` (`Retry-After`)", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many attempts from this address", body = ErrorBody),
        Unavailable,
    ),
)]
pub async fn finish_sign_in(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Path(challenge_id): Path<Uuid>,
    Json(request): Json<PasskeySignIn>,
) -> Result<Written<Json<Authenticated>>, ApiError> {
    let answer = state
        .app
        .finish_passkey_sign_in(&origin, challenge_id, request.credential)
        .await?;
    Ok(Written::of(StatusCode::OK, answer, |passed| {
        Json(Authenticated {
            status: Finished::Authenticated,
            session_token: passed.session_token,
            expires_at: passed.expires_at,
            device_token: None,
            device_expires_at: None,
        })
    }))
}
