//! The signed-in user: profile, 2FA enrollment, remembered devices.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use twofold_domain::user::RememberedDevice;
use twofold_domain::{Role, SecondFactorMethod, TwoFactorStatus};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{Caller, FullCaller};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, OptionalJson, Origin};
use crate::openapi::{
    BadRequest, BodyErrors, MethodSchema, RoleSchema, SessionErrors, TwoFactorStatusSchema,
};
use crate::qr;
use crate::respond::Written;
use crate::state::AppState;

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TwoFactorView {
    #[schema(value_type = TwoFactorStatusSchema)]
    pub status: TwoFactorStatus,
    /// The factors the user could use to sign in now.
    #[schema(value_type = Vec<MethodSchema>)]
    pub methods: Vec<SecondFactorMethod>,
    /// An administrator enforces 2FA for this user.
    pub enforced: bool,
    /// Enforced, or mandatory platform-wide by now.
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled_at: Option<DateTime<Utc>>,
}

impl From<twofold_app::TwoFactorView> for TwoFactorView {
    fn from(view: twofold_app::TwoFactorView) -> Self {
        TwoFactorView {
            status: view.status,
            methods: view.methods,
            enforced: view.enforced,
            required: view.required,
            enabled_at: view.enabled_at,
        }
    }
}

/// The administrator acting as the user during "Login as".
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Impersonator {
    pub id: Uuid,
    pub username: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MeView {
    pub id: Uuid,
    pub username: String,
    pub email: Option<String>,
    #[schema(value_type = RoleSchema)]
    pub role: Role,
    pub two_factor: TwoFactorView,
    /// Only on a "Login as" session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impersonator: Option<Impersonator>,
}

/// The signed-in user and their 2FA.
#[utoipa::path(
    get,
    path = "/me",
    tag = "me",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The signed-in user", body = MeView),
        SessionErrors,
    ),
)]
pub async fn me(
    State(state): State<AppState>,
    Caller(session): Caller,
) -> Result<Json<MeView>, ApiError> {
    let profile = state.app.profile(&session).await?;
    Ok(Json(MeView {
        id: profile.id,
        username: profile.username,
        email: profile.email,
        role: profile.role,
        two_factor: profile.two_factor.into(),
        impersonator: profile
            .impersonator
            .map(|(id, username)| Impersonator { id, username }),
    }))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct EnrollmentStarted {
    /// The TOTP secret, base32 without padding.
    pub secret: String,
    pub otpauth_uri: String,
    /// The `otpauth_uri` as a QR code.
    pub qr_svg: String,
}

/// Start (or restart) a pending TOTP enrollment.
#[utoipa::path(
    post,
    path = "/me/two-factor/totp",
    tag = "me",
    security(("bearer" = [])),
    responses(
        (status = 201, description = "A pending enrollment: show the QR code", body = EnrollmentStarted),
        SessionErrors,
        (status = 409, description = "`conflict`: 2FA is already enabled", body = ErrorBody),
    ),
)]
pub async fn start_totp_enrollment(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Caller(session): Caller,
) -> Result<Written<Json<EnrollmentStarted>>, ApiError> {
    let started = state.app.start_totp_enrollment(&session, &origin).await?;
    let qr_svg = qr::svg(&started.value.otpauth_uri)?;
    Ok(Written::of(StatusCode::CREATED, started, |started| {
        Json(EnrollmentStarted {
            secret: started.secret,
            otpauth_uri: started.otpauth_uri,
            qr_svg,
        })
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    /// The code the authenticator app shows.
    code: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Enabled {
    #[schema(value_type = TwoFactorStatusSchema)]
    pub status: TwoFactorStatus,
    /// Shown once: `xxxx-xxxx-xxxx`, each usable once.
    pub recovery_codes: Vec<String>,
}

/// Confirm the pending enrollment with a code: 2FA is on.
#[utoipa::path(
    post,
    path = "/me/two-factor/totp/confirm",
    tag = "me",
    security(("bearer" = [])),
    request_body = ConfirmRequest,
    responses(
        (status = 200, description = "2FA is enabled; the recovery codes are shown once", body = Enabled),
        BadRequest,
        BodyErrors,
        SessionErrors,
        (status = 401, description = "`invalid_code` with `attempts_remaining`, or `unauthenticated`", body = ErrorBody),
        (status = 409, description = "`conflict`: no pending enrollment", body = ErrorBody),
    ),
)]
pub async fn confirm_totp_enrollment(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Caller(session): Caller,
    Json(request): Json<ConfirmRequest>,
) -> Result<Written<Json<Enabled>>, ApiError> {
    let confirmed = state
        .app
        .confirm_totp_enrollment(&session, &origin, request.code)
        .await?;
    Ok(Written::of(StatusCode::OK, confirmed, |recovery_codes| {
        Json(Enabled {
            status: TwoFactorStatus::Enabled,
            recovery_codes,
        })
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TwoFactorOff {
    /// The current password.
    password: Option<String>,
    /// A fresh code from the authenticator app, or a recovery code (asked
    /// for while a factor is active).
    code: Option<String>,
}

/// Turn 2FA off (all factors, recovery codes and remembered devices).
/// From the user's own session, the current password and a fresh second
/// factor are required; from "Login as" (the rescue flow) nothing is: the
/// reason given when it started stands for it.
#[utoipa::path(
    delete,
    path = "/me/two-factor",
    tag = "me",
    security(("bearer" = [])),
    request_body(content = Option<TwoFactorOff>, description = "Required from the user's own session; none from \"Login as\""),
    responses(
        (status = 204, description = "2FA is off"),
        BadRequest,
        BodyErrors,
        SessionErrors,
        (status = 401, description = "`invalid_credentials` (wrong password), `invalid_code` (with `attempts_remaining` before the factor backs off), or `unauthenticated`", body = ErrorBody),
        (status = 409, description = "`two_factor_enforced`: an administrator enforces 2FA", body = ErrorBody),
        (status = 423, description = "`account_locked` (`Retry-After`)", body = ErrorBody),
    ),
)]
pub async fn disable_two_factor(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Caller(session): Caller,
    OptionalJson(request): OptionalJson<TwoFactorOff>,
) -> Result<Written<()>, ApiError> {
    let request = request.map(|request| twofold_app::TwoFactorOff {
        password: request.password,
        code: request.code,
    });
    let done = state
        .app
        .turn_two_factor_off(&session, &origin, request)
        .await?;
    Ok(Written::of(StatusCode::NO_CONTENT, done, |()| ()))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub user_agent: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct DeviceList {
    pub devices: Vec<DeviceView>,
}

impl From<Vec<RememberedDevice>> for DeviceList {
    fn from(devices: Vec<RememberedDevice>) -> Self {
        DeviceList {
            devices: devices
                .into_iter()
                .map(|device| DeviceView {
                    id: device.id,
                    created_at: device.created_at,
                    expires_at: device.expires_at,
                    last_used_at: device.last_used_at,
                    user_agent: device.user_agent,
                })
                .collect(),
        }
    }
}

/// The user's remembered devices that are still valid.
#[utoipa::path(
    get,
    path = "/me/remembered-devices",
    tag = "me",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Remembered devices", body = DeviceList),
        SessionErrors,
    ),
)]
pub async fn remembered_devices(
    State(state): State<AppState>,
    FullCaller(session): FullCaller,
) -> Result<Json<DeviceList>, ApiError> {
    Ok(Json(state.app.my_devices(&session).await?.into()))
}

/// Forget every remembered device: each must pass the second factor again.
#[utoipa::path(
    delete,
    path = "/me/remembered-devices",
    tag = "me",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Forgotten"),
        SessionErrors,
    ),
)]
pub async fn revoke_remembered_devices(
    State(state): State<AppState>,
    Origin(origin): Origin,
    FullCaller(session): FullCaller,
) -> Result<Written<()>, ApiError> {
    let done = state.app.forget_my_devices(&session, &origin).await?;
    Ok(Written::of(StatusCode::NO_CONTENT, done, |()| ()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    current_password: String,
    /// 8 characters or more, at most 1024 bytes.
    #[schema(min_length = 8, max_length = 256)]
    new_password: String,
}

/// Change the password: remembered devices are forgotten and every other
/// session of the user ends. A wrong current password counts as a failed
/// sign-in (stored, toward the same lock, under the per-address limit). An
/// administrator acting as the user may not do it.
#[utoipa::path(
    post,
    path = "/me/password",
    tag = "me",
    security(("bearer" = [])),
    request_body = PasswordChange,
    responses(
        (status = 204, description = "Changed; the user's other sessions have ended"),
        BadRequest,
        BodyErrors,
        SessionErrors,
        (status = 401, description = "`invalid_credentials`: wrong current password, or `unauthenticated`", body = ErrorBody),
        (status = 423, description = "`account_locked` (`Retry-After`): too many wrong passwords", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many attempts from this address", body = ErrorBody),
    ),
)]
pub async fn change_password(
    State(state): State<AppState>,
    Origin(origin): Origin,
    FullCaller(session): FullCaller,
    Json(request): Json<PasswordChange>,
) -> Result<Written<()>, ApiError> {
    let done = state
        .app
        .change_password(
            &session,
            &origin,
            request.current_password,
            request.new_password,
        )
        .await?;
    Ok(Written::of(StatusCode::NO_CONTENT, done, |()| ()))
}
