//! The signed-in user: profile, 2FA enrollment, remembered devices.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use twofold_domain::policy::{RECOVERY_CODE_COUNT, SECOND_FACTOR_FAILURES_BEFORE_BACKOFF};
use twofold_domain::user::normalize_recovery_code;
use twofold_domain::{
    PasswordCheck, Role, TokenHash, TwoFactorOffProof, TwoFactorStatus, User, UserCommand,
    UserEvent,
};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{FullSession, Session};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, OptionalJson, RequestOrigin};
use crate::openapi::{
    BadRequest, BodyErrors, MethodSchema, RoleSchema, SessionErrors, TwoFactorStatusSchema,
};
use crate::qr;
use crate::respond::Written;
use crate::routes::login::{email_eligible, locked_from};
use crate::routes::users::check_password;
use crate::routes::users::{two_factor_off_notice, TWO_FACTOR_OFF_SUBJECT};
use crate::security;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct TwoFactorView {
    #[schema(value_type = TwoFactorStatusSchema)]
    status: TwoFactorStatus,
    /// The factors the user could use to sign in now.
    #[schema(value_type = Vec<MethodSchema>)]
    methods: Vec<&'static str>,
    /// An administrator enforces 2FA for this user.
    enforced: bool,
    /// Enforced, or mandatory platform-wide by now.
    required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled_at: Option<DateTime<Utc>>,
}

pub fn two_factor_view(user: &User, state: &AppState, email_eligible: bool) -> TwoFactorView {
    let mut methods = Vec::new();
    if user.active_totp().is_some() {
        methods.push("totp");
        if email_eligible {
            methods.push("email");
        }
        if user.recovery_codes_remaining() > 0 {
            methods.push("recovery_code");
        }
    }
    TwoFactorView {
        status: user.two_factor_status(),
        methods,
        enforced: user.is_enforced(),
        required: user.must_have_two_factor(&state.settings.policy, state.now()),
        enabled_at: user.active_totp().map(|totp| totp.enabled_at),
    }
}

/// The administrator acting as the user during "Login as".
#[derive(Serialize, ToSchema)]
pub struct Impersonator {
    id: Uuid,
    username: String,
}

#[derive(Serialize, ToSchema)]
pub struct MeView {
    id: Uuid,
    username: String,
    email: Option<String>,
    #[schema(value_type = RoleSchema)]
    role: Role,
    two_factor: TwoFactorView,
    /// Only on a "Login as" session.
    #[serde(skip_serializing_if = "Option::is_none")]
    impersonator: Option<Impersonator>,
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
pub async fn me(State(state): State<AppState>, session: Session) -> Result<Json<MeView>, ApiError> {
    let loaded = state.store.load(session.record.user_id).await?;
    let profile = loaded.user.profile().ok_or(ApiError::Unauthenticated)?;
    let eligible = email_eligible(&state, &loaded.user).await?;
    let impersonator = match (
        session.record.impersonator_id,
        session.record.impersonator_username.as_ref(),
    ) {
        (Some(id), Some(username)) => Some(Impersonator {
            id,
            username: username.clone(),
        }),
        _ => None,
    };
    Ok(Json(MeView {
        id: profile.id,
        username: profile.username.as_str().to_string(),
        email: profile
            .email
            .as_ref()
            .map(|email| email.as_str().to_string()),
        role: profile.role,
        two_factor: two_factor_view(&loaded.user, &state, eligible),
        impersonator,
    }))
}

/// An administrator acting as the user must not hold the user's second
/// factor: only the user enrolls their authenticator.
fn refuse_impersonation(session: &Session) -> Result<(), ApiError> {
    if session.is_impersonation() {
        return Err(ApiError::Forbidden(
            "an administrator acting as the user cannot enroll their authenticator",
        ));
    }
    Ok(())
}

#[derive(Serialize, ToSchema)]
pub struct EnrollmentStarted {
    /// The TOTP secret, base32 without padding.
    secret: String,
    otpauth_uri: String,
    /// The `otpauth_uri` as a QR code.
    qr_svg: String,
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
    origin: RequestOrigin,
    session: Session,
) -> Result<Written<Json<EnrollmentStarted>>, ApiError> {
    refuse_impersonation(&session)?;
    let user_id = session.record.user_id;
    let loaded = state.store.load(user_id).await?;
    if loaded.user.active_totp().is_some() {
        return Err(ApiError::Conflict(
            "two-factor authentication is already enabled".into(),
        ));
    }
    let enrollment_id = Uuid::new_v4();
    let secret = security::new_totp_secret()?;
    // A restarted enrollment's earlier secret will never be confirmed.
    state.vault.erase(user_id).await?;
    state.vault.store(user_id, enrollment_id, &secret).await?;
    let parameters = state.settings.totp;
    let committed = state
        .execute(loaded, &session.metadata(&origin, &state), |_| {
            UserCommand::StartTotpEnrollment {
                enrollment_id,
                parameters,
            }
        })
        .await?;
    let otpauth_uri = parameters.otpauth_uri(
        &secret,
        &state.settings.totp_issuer,
        &session.record.username,
    );
    Ok(Written::new(
        StatusCode::CREATED,
        committed.last_position,
        Json(EnrollmentStarted {
            secret: secret.to_base32(),
            qr_svg: qr::svg(&otpauth_uri)?,
            otpauth_uri,
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    /// The code the authenticator app shows.
    code: String,
}

#[derive(Serialize, ToSchema)]
pub struct Enabled {
    #[schema(value_type = TwoFactorStatusSchema)]
    status: TwoFactorStatus,
    /// Shown once: `xxxx-xxxx-xxxx`, each usable once.
    recovery_codes: Vec<String>,
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
    origin: RequestOrigin,
    session: Session,
    Json(request): Json<ConfirmRequest>,
) -> Result<Written<Json<Enabled>>, ApiError> {
    refuse_impersonation(&session)?;
    let user_id = session.record.user_id;
    let loaded = state.store.load(user_id).await?;
    let pending = loaded
        .user
        .pending_totp()
        .ok_or(ApiError::Conflict("start an enrollment first".into()))?;
    let secret = state.vault.fetch(user_id, pending.enrollment_id).await?;
    let recovery_codes = security::new_recovery_codes(RECOVERY_CODE_COUNT);
    let hashes: Vec<TokenHash> = recovery_codes
        .iter()
        .map(|code| TokenHash::of(&normalize_recovery_code(code)))
        .collect();
    let now = state.now();
    let committed = state
        .execute(loaded, &session.metadata(&origin, &state), |_| {
            UserCommand::ConfirmTotpEnrollment {
                code: request.code.clone(),
                secret: secret.clone(),
                recovery_code_hashes: hashes.clone(),
                at: now,
            }
        })
        .await?;
    let rejected = committed.find(|event| match event {
        UserEvent::TotpEnrollmentCodeRejected {
            attempts_remaining, ..
        } => Some(*attempts_remaining),
        _ => None,
    });
    if let Some(attempts_remaining) = rejected {
        return Err(ApiError::InvalidCode { attempts_remaining });
    }
    Ok(Written::new(
        StatusCode::OK,
        committed.last_position,
        Json(Enabled {
            status: TwoFactorStatus::Enabled,
            recovery_codes,
        }),
    ))
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
    origin: RequestOrigin,
    FullSession(session): FullSession,
    OptionalJson(request): OptionalJson<TwoFactorOff>,
) -> Result<Written<()>, ApiError> {
    let now = state.now();
    let user_id = session.record.user_id;
    let metadata = session.metadata(&origin, &state);
    let committed = if session.is_impersonation() {
        let loaded = state.store.load(user_id).await?;
        let session_id = session.record.session_id;
        state
            .execute(loaded, &metadata, |_| UserCommand::DisableTwoFactor {
                proof: TwoFactorOffProof::Impersonation { session_id },
                at: now,
            })
            .await?
    } else {
        let loaded = state.store.load(user_id).await?;
        // Said before anything is asked: no password helps against it.
        if loaded.user.is_enforced() {
            return Err(ApiError::TwoFactorEnforced);
        }
        let request = request.ok_or(ApiError::InvalidRequest(
            "send your password and a code from your authenticator app (or a recovery code)".into(),
        ))?;
        let password = request
            .password
            .ok_or(ApiError::InvalidRequest("the password is required".into()))?;
        state.admit_login(origin.ip)?;
        let turn = state.passwords.admit()?;
        if let Some(until) = loaded.user.password_locked_until(now) {
            return Err(ApiError::locked_until(Some(until), now));
        }
        if loaded.user.active_totp().is_some() && request.code.is_none() {
            return Err(ApiError::InvalidRequest(
                "a code from your authenticator app (or a recovery code) is required".into(),
            ));
        }
        let stored = loaded
            .user
            .profile()
            .map(|p| p.password_hash.clone())
            .ok_or(ApiError::Unauthenticated)?;
        let password = PasswordCheck {
            matches: turn.verify(Some(stored.clone()), password).await?,
            against: stored,
        };
        drop(turn);
        let totp_secret = match loaded.user.active_totp() {
            Some(totp) => Some(state.vault.fetch(user_id, totp.enrollment_id).await?),
            None => None,
        };
        let committed = state
            .store
            .execute(loaded, &metadata, |_| UserCommand::DisableTwoFactor {
                proof: TwoFactorOffProof::Reauthenticated {
                    password: password.clone(),
                    code: request.code.clone(),
                    totp_secret: totp_secret.clone(),
                },
                at: now,
            })
            .await
            .map_err(locked_from(now))?;
        state.settle(committed.last_position).await;
        committed
    };
    for event in &committed.events {
        match event {
            UserEvent::PasswordRejected { .. } => return Err(ApiError::InvalidCredentials),
            UserEvent::ReauthenticationCodeRejected {
                consecutive_failures,
                ..
            } => {
                return Err(ApiError::InvalidCode {
                    attempts_remaining: SECOND_FACTOR_FAILURES_BEFORE_BACKOFF
                        .saturating_sub(*consecutive_failures),
                })
            }
            _ => {}
        }
    }
    if !committed.events.is_empty() {
        state.vault.erase(user_id).await?;
        state
            .notify(
                session.record.email.as_deref(),
                TWO_FACTOR_OFF_SUBJECT,
                two_factor_off_notice(),
            )
            .await;
    }
    Ok(Written::new(
        StatusCode::NO_CONTENT,
        committed.last_position,
        (),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct DeviceView {
    id: Uuid,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    user_agent: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeviceList {
    devices: Vec<DeviceView>,
}

pub async fn device_list(state: &AppState, user_id: Uuid) -> Result<Json<DeviceList>, ApiError> {
    let loaded = state.store.load(user_id).await?;
    let devices: Vec<DeviceView> = loaded
        .user
        .remembered_devices(state.now())
        .map(|device| DeviceView {
            id: device.id,
            created_at: device.created_at,
            expires_at: device.expires_at,
            last_used_at: device.last_used_at,
            user_agent: device.user_agent.clone(),
        })
        .collect();
    Ok(Json(DeviceList { devices }))
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
    FullSession(session): FullSession,
) -> Result<Json<DeviceList>, ApiError> {
    device_list(&state, session.record.user_id).await
}

pub async fn forget_devices(
    state: &AppState,
    user_id: Uuid,
    metadata: &twofold_store::EventMetadata,
) -> Result<Written<()>, ApiError> {
    let loaded = state.store.load(user_id).await?;
    let committed = state
        .execute(loaded, metadata, |_| UserCommand::RevokeRememberedDevices)
        .await?;
    Ok(Written::new(
        StatusCode::NO_CONTENT,
        committed.last_position,
        (),
    ))
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
    origin: RequestOrigin,
    FullSession(session): FullSession,
) -> Result<Written<()>, ApiError> {
    forget_devices(
        &state,
        session.record.user_id,
        &session.metadata(&origin, &state),
    )
    .await
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
    origin: RequestOrigin,
    FullSession(session): FullSession,
    Json(request): Json<PasswordChange>,
) -> Result<Written<()>, ApiError> {
    if session.is_impersonation() {
        return Err(ApiError::Forbidden(
            "an administrator acting as the user cannot change their password",
        ));
    }
    check_password(&request.new_password)?;
    let turn = state.passwords.admit()?;
    state.admit_login(origin.ip)?;
    let now = state.now();
    let loaded = state.store.load(session.record.user_id).await?;
    if let Some(until) = loaded.user.password_locked_until(now) {
        return Err(ApiError::locked_until(Some(until), now));
    }
    let stored = loaded
        .user
        .profile()
        .map(|p| p.password_hash.clone())
        .ok_or(ApiError::Unauthenticated)?;
    let current = PasswordCheck {
        matches: turn
            .verify(Some(stored.clone()), request.current_password)
            .await?,
        against: stored,
    };
    // Hashed whether or not the current one matched: both take as long.
    let password_hash = turn.hash(request.new_password).await?;
    drop(turn);
    let kept_session_id = session.record.session_id;
    let committed = state
        .store
        .execute(loaded, &session.metadata(&origin, &state), |_| {
            UserCommand::ChangePassword {
                current: current.clone(),
                password_hash: password_hash.clone(),
                kept_session_id,
                at: now,
            }
        })
        .await
        .map_err(locked_from(now))?;
    state.settle(committed.last_position).await;
    if committed
        .events
        .iter()
        .any(|event| matches!(event, UserEvent::PasswordRejected { .. }))
    {
        return Err(ApiError::InvalidCredentials);
    }
    Ok(Written::new(
        StatusCode::NO_CONTENT,
        committed.last_position,
        (),
    ))
}
