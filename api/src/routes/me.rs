//! The signed-in user: profile, 2FA enrollment, remembered devices.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use twofold_domain::policy::RECOVERY_CODE_COUNT;
use twofold_domain::user::normalize_recovery_code;
use twofold_domain::{TokenHash, TwoFactorStatus, User, UserCommand, UserEvent};
use uuid::Uuid;

use crate::auth::{FullSession, Session};
use crate::error::ApiError;
use crate::extract::{Json, RequestOrigin};
use crate::qr;
use crate::respond::Written;
use crate::routes::login::email_eligible;
use crate::routes::users::check_password;
use crate::routes::users::{two_factor_off_notice, user_email, TWO_FACTOR_OFF_SUBJECT};
use crate::security;
use crate::state::AppState;

#[derive(Serialize)]
pub struct TwoFactorView {
    status: TwoFactorStatus,
    methods: Vec<&'static str>,
    enforced: bool,
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

pub async fn me(State(state): State<AppState>, session: Session) -> Result<Json<Value>, ApiError> {
    let loaded = state.store.load(session.record.user_id).await?;
    let profile = loaded.user.profile().ok_or(ApiError::Unauthenticated)?;
    let mut body = json!({
        "id": profile.id,
        "username": profile.username,
        "email": profile.email,
        "role": profile.role,
        "two_factor": two_factor_view(&loaded.user, &state, email_eligible(&state, &loaded.user).await?),
    });
    if let (Some(id), Some(username)) = (
        session.record.impersonator_id,
        session.record.impersonator_username.as_ref(),
    ) {
        body["impersonator"] = json!({ "id": id, "username": username });
    }
    Ok(Json(body))
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

#[derive(Serialize)]
pub struct EnrollmentStarted {
    secret: String,
    otpauth_uri: String,
    qr_svg: String,
}

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
    state.vault.store(user_id, enrollment_id, &secret).await?;
    let parameters = state.settings.totp;
    let committed = state
        .store
        .execute(loaded, &session.metadata(&origin, &state), |_| {
            UserCommand::StartTotpEnrollment {
                enrollment_id,
                parameters,
            }
        })
        .await?;
    state.settle(committed.last_position).await;
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    code: String,
}

#[derive(Serialize)]
pub struct Enabled {
    status: TwoFactorStatus,
    recovery_codes: Vec<String>,
}

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
        .store
        .execute(loaded, &session.metadata(&origin, &state), |_| {
            UserCommand::ConfirmTotpEnrollment {
                code: request.code.clone(),
                secret: secret.clone(),
                recovery_code_hashes: hashes.clone(),
                at: now,
            }
        })
        .await?;
    state.settle(committed.last_position).await;
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

pub async fn disable_two_factor(
    State(state): State<AppState>,
    origin: RequestOrigin,
    FullSession(session): FullSession,
) -> Result<Written<()>, ApiError> {
    let loaded = state.store.load(session.record.user_id).await?;
    let email = user_email(&loaded.user);
    let committed = state
        .store
        .execute(loaded, &session.metadata(&origin, &state), |_| {
            UserCommand::DisableTwoFactor
        })
        .await?;
    state.settle(committed.last_position).await;
    if !committed.events.is_empty() {
        state
            .notify(
                email.as_deref(),
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

#[derive(Serialize)]
pub struct DeviceView {
    id: Uuid,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    user_agent: Option<String>,
}

pub async fn device_list(state: &AppState, user_id: Uuid) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({ "devices": devices })))
}

pub async fn remembered_devices(
    State(state): State<AppState>,
    FullSession(session): FullSession,
) -> Result<Json<Value>, ApiError> {
    device_list(&state, session.record.user_id).await
}

pub async fn forget_devices(
    state: &AppState,
    user_id: Uuid,
    metadata: &crate::store::EventMetadata,
) -> Result<Written<()>, ApiError> {
    let loaded = state.store.load(user_id).await?;
    let committed = state
        .store
        .execute(loaded, metadata, |_| UserCommand::RevokeRememberedDevices)
        .await?;
    state.settle(committed.last_position).await;
    Ok(Written::new(
        StatusCode::NO_CONTENT,
        committed.last_position,
        (),
    ))
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// Changing the password forgets the user's remembered devices. An
/// administrator acting as the user may not do it.
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
    let loaded = state.store.load(session.record.user_id).await?;
    let stored = loaded.user.profile().map(|p| p.password_hash.clone());
    if !security::verify_password(stored, request.current_password).await {
        return Err(ApiError::InvalidCredentials);
    }
    let password_hash = security::hash_password(request.new_password).await?;
    let committed = state
        .store
        .execute(loaded, &session.metadata(&origin, &state), |_| {
            UserCommand::ChangePassword {
                password_hash: password_hash.clone(),
            }
        })
        .await?;
    state.settle(committed.last_position).await;
    Ok(Written::new(
        StatusCode::NO_CONTENT,
        committed.last_position,
        (),
    ))
}
