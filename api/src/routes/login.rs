//! Sign-in: password, then (when due) a second factor; and sign-out.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use twofold_app::{EmailCodeSent as Sent, SignInAnswer};
use twofold_domain::SecondFactorMethod;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Origin, Path};
use crate::openapi::{BadRequest, BodyErrors, MethodSchema, SessionErrors, Unavailable};
use crate::respond::Written;
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    username: String,
    password: String,
    /// The `device_token` of a remembered device: no second factor is asked
    /// while it is valid for this user.
    device_token: Option<String>,
}

/// What `POST /login` answers; its `status` says which.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
#[schema(discriminator(property_name = "status", mapping(
    ("authenticated" = "#/components/schemas/Authenticated"),
    ("two_factor_required" = "#/components/schemas/TwoFactorRequired"),
    ("enrollment_required" = "#/components/schemas/EnrollmentRequired")
)))]
pub enum LoginAnswer {
    Authenticated(Authenticated),
    TwoFactorRequired(TwoFactorRequired),
    EnrollmentRequired(EnrollmentRequired),
}

/// The `status` of a sign-in that waits for its second factor.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecondFactorDue {
    TwoFactorRequired,
}

/// Verify a second factor on this challenge.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TwoFactorRequired {
    #[schema(value_type = String, pattern = "^two_factor_required$")]
    pub status: SecondFactorDue,
    pub challenge_id: Uuid,
    #[schema(value_type = Vec<MethodSchema>)]
    pub methods: Vec<SecondFactorMethod>,
    pub expires_at: DateTime<Utc>,
}

/// The `status` of a sign-in held on the enrollment step.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentDue {
    EnrollmentRequired,
}

/// 2FA is required and not active: this session may only enroll.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct EnrollmentRequired {
    #[schema(value_type = String, pattern = "^enrollment_required$")]
    pub status: EnrollmentDue,
    pub session_token: String,
    pub expires_at: DateTime<Utc>,
}

impl From<SignInAnswer> for LoginAnswer {
    fn from(answer: SignInAnswer) -> Self {
        match answer {
            SignInAnswer::Authenticated {
                session_token,
                expires_at,
            } => LoginAnswer::Authenticated(Authenticated {
                status: Finished::Authenticated,
                session_token,
                expires_at,
                device_token: None,
                device_expires_at: None,
            }),
            SignInAnswer::TwoFactorRequired {
                challenge_id,
                methods,
                expires_at,
            } => LoginAnswer::TwoFactorRequired(TwoFactorRequired {
                status: SecondFactorDue::TwoFactorRequired,
                challenge_id,
                methods,
                expires_at,
            }),
            SignInAnswer::EnrollmentRequired {
                session_token,
                expires_at,
            } => LoginAnswer::EnrollmentRequired(EnrollmentRequired {
                status: EnrollmentDue::EnrollmentRequired,
                session_token,
                expires_at,
            }),
        }
    }
}

/// Sign in with a password.
#[utoipa::path(
    post,
    path = "/login",
    tag = "sign-in",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in, or a second factor or enrollment is due", body = LoginAnswer),
        BadRequest,
        BodyErrors,
        (status = 401, description = "`invalid_credentials`: unknown user or wrong password", body = ErrorBody),
        (status = 423, description = "`account_locked` (`Retry-After`)", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many attempts from this address", body = ErrorBody),
        Unavailable,
    ),
)]
pub async fn login(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Json(request): Json<LoginRequest>,
) -> Result<Written<Json<LoginAnswer>>, ApiError> {
    let answer = state
        .app
        .sign_in(
            &origin,
            &request.username,
            request.password,
            request.device_token.as_deref(),
        )
        .await?;
    Ok(Written::of(StatusCode::OK, answer, |answer| {
        Json(LoginAnswer::from(answer))
    }))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct EmailCodeSent {
    /// The address, masked: `j***@example.com`.
    pub sent_to: String,
    pub expires_at: DateTime<Utc>,
}

/// Email a one-time code for this challenge.
#[utoipa::path(
    post,
    path = "/login/challenges/{challenge_id}/email",
    tag = "sign-in",
    params(("challenge_id" = Uuid, Path, description = "From `POST /login`")),
    responses(
        (status = 202, description = "A fresh 6-digit code was emailed", body = EmailCodeSent),
        BadRequest,
        (status = 404, description = "`not_found`: no such challenge", body = ErrorBody),
        (status = 409, description = "`email_unavailable`: no address, or one another user shares", body = ErrorBody),
        (status = 410, description = "`challenge_expired`", body = ErrorBody),
        (status = 423, description = "`challenge_locked` or `account_locked`", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many codes (`Retry-After`)", body = ErrorBody),
        Unavailable,
    ),
)]
pub async fn send_email_code(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Path(challenge_id): Path<Uuid>,
) -> Result<Written<Json<EmailCodeSent>>, ApiError> {
    let sent = state.app.send_email_code(&origin, challenge_id).await?;
    Ok(Written::of(StatusCode::ACCEPTED, sent, |sent: Sent| {
        Json(EmailCodeSent {
            sent_to: sent.sent_to,
            expires_at: sent.expires_at,
        })
    }))
}

fn remember_by_default() -> bool {
    true
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    #[schema(value_type = MethodSchema)]
    method: SecondFactorMethod,
    /// The code, for every method but `passkey`.
    code: Option<String>,
    /// For `passkey`: the browser's `AuthenticationResponseJSON`.
    #[schema(value_type = Option<Object>)]
    credential: Option<serde_json::Value>,
    /// Remember this device for 23 hours (default true).
    #[serde(default = "remember_by_default")]
    remember_device: bool,
}

/// The `status` of a sign-in that the second factor finished.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finished {
    Authenticated,
}

/// Signed in: a full session (and, after a second factor, the remembered
/// device's token when asked for).
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Authenticated {
    #[schema(value_type = String, pattern = "^authenticated$")]
    pub status: Finished,
    pub session_token: String,
    pub expires_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_expires_at: Option<DateTime<Utc>>,
}

/// Verify the second factor of a sign-in.
#[utoipa::path(
    post,
    path = "/login/challenges/{challenge_id}/verify",
    operation_id = "verify_second_factor",
    tag = "sign-in",
    params(("challenge_id" = Uuid, Path, description = "From `POST /login`")),
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "Signed in; with a device token when remembered", body = Authenticated),
        BadRequest,
        BodyErrors,
        (status = 401, description = "`invalid_code`, with `attempts_remaining`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such challenge", body = ErrorBody),
        (status = 409, description = "`conflict`: the challenge is used up", body = ErrorBody),
        (status = 410, description = "`challenge_expired`", body = ErrorBody),
        (status = 423, description = "`challenge_locked`, or `account_locked` while the factor backs off", body = ErrorBody),
        Unavailable,
    ),
)]
pub async fn verify(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Path(challenge_id): Path<Uuid>,
    Json(request): Json<VerifyRequest>,
) -> Result<Written<Json<Authenticated>>, ApiError> {
    let passed = match (request.method, request.code, request.credential) {
        (SecondFactorMethod::Passkey, None, Some(credential)) => {
            state
                .app
                .verify_passkey_second_factor(
                    &origin,
                    challenge_id,
                    credential,
                    request.remember_device,
                )
                .await?
        }
        (SecondFactorMethod::Passkey, _, _) => {
            return Err(ApiError::invalid_request(
                "method passkey takes a `credential` and no `code`",
            ))
        }
        (method, Some(code), None) => {
            state
                .app
                .verify_second_factor(&origin, challenge_id, method, code, request.remember_device)
                .await?
        }
        (_, _, _) => {
            return Err(ApiError::invalid_request(
                "this method takes a `code` and no `credential`",
            ))
        }
    };
    Ok(Written::of(StatusCode::OK, passed, |passed| {
        let (device_token, device_expires_at) = passed.device.unzip();
        Json(Authenticated {
            status: Finished::Authenticated,
            session_token: passed.session_token,
            expires_at: passed.expires_at,
            device_token,
            device_expires_at,
        })
    }))
}

/// Sign out: the token stops working at once (a "Login as" session ends).
#[utoipa::path(
    post,
    path = "/logout",
    tag = "sign-in",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Signed out"),
        SessionErrors,
    ),
)]
pub async fn logout(
    State(state): State<AppState>,
    Origin(origin): Origin,
    Caller(session): Caller,
) -> Result<Written<()>, ApiError> {
    let done = state.app.sign_out(&session, &origin).await?;
    Ok(Written::of(StatusCode::NO_CONTENT, done, |()| ()))
}
