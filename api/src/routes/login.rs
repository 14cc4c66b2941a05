//! Sign-in: password, then (when due) a second factor; and sign-out.

use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use twofold_domain::user::email_code_hash;
use twofold_domain::{
    Email, NewDevice, NewSession, PasswordCheck, SecondFactorMethod, TokenHash, User, UserCommand,
    UserError, UserEvent, Username,
};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::Session;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Path, RequestOrigin};
use crate::mail::OutgoingMail;
use crate::openapi::{BadRequest, BodyErrors, MethodSchema, SessionErrors, Unavailable};
use crate::respond::Written;
use crate::security;
use crate::state::AppState;
use twofold_store::{EventMetadata, Loaded, StoreError};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    username: String,
    password: String,
    /// The `device_token` of a remembered device: no second factor is asked
    /// while it is valid for this user.
    device_token: Option<String>,
}

/// What `POST /login` answers, by `status`.
#[derive(Serialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LoginAnswer {
    /// No second factor is due: a full session.
    Authenticated {
        session_token: String,
        expires_at: DateTime<Utc>,
    },
    /// Verify a second factor on this challenge.
    TwoFactorRequired {
        challenge_id: Uuid,
        #[schema(value_type = Vec<MethodSchema>)]
        methods: Vec<SecondFactorMethod>,
        expires_at: DateTime<Utc>,
    },
    /// 2FA is required and not active: this session may only enroll.
    EnrollmentRequired {
        session_token: String,
        expires_at: DateTime<Utc>,
    },
}

fn origin_metadata(origin: &RequestOrigin, actor: Uuid, state: &AppState) -> EventMetadata {
    EventMetadata {
        actor_id: Some(actor),
        impersonator_id: None,
        ip: origin.ip.map(|ip| ip.to_string()),
        user_agent: origin.user_agent.clone(),
        request_id: origin.request_id.clone(),
        occurred_at: Some(state.now()),
    }
}

/// A lock the rules report: Retry-After counts from the service's clock, as
/// the lock's end does (not from the wall clock).
pub fn locked_from(now: DateTime<Utc>) -> impl Fn(StoreError) -> ApiError {
    move |error| match error {
        StoreError::Rejected(UserError::AccountLocked { until }) => {
            ApiError::locked_until(until, now)
        }
        other => other.into(),
    }
}

/// A fresh session token; only its hash goes into the event.
fn new_session(state: &AppState, lifetime: chrono::Duration) -> (String, NewSession) {
    let token = security::new_token();
    let session = NewSession {
        session_id: Uuid::new_v4(),
        token_hash: TokenHash::of(&token),
        expires_at: state.now() + lifetime,
    };
    (token, session)
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
    origin: RequestOrigin,
    Json(request): Json<LoginRequest>,
) -> Result<Written<Json<LoginAnswer>>, ApiError> {
    // Refused for want of capacity before the address's quota is counted:
    // such a request made no guess.
    let turn = state.passwords.admit()?;
    state.admit_login(origin.ip)?;
    let user_id = match Username::parse(&request.username) {
        Ok(username) => state.store.find_username(&username).await?,
        Err(_) => None,
    };
    let now = state.now();
    let Some(user_id) = user_id else {
        // The same reads of the store as a known user's sign-in (one not
        // in the cache; a cached one skips a read of ~0.1 ms), the same
        // lock, the same hash, and as long as storing a wrong password
        // takes: an unknown username must not answer otherwise, nor sooner
        // (docs/security.md, Timing).
        state.store.load(Uuid::new_v4()).await?;
        if let Some(until) = state.unknown_names.locked_until(&request.username, now) {
            return Err(ApiError::locked_until(Some(until), now));
        }
        turn.verify(None, request.password).await?;
        drop(turn);
        state.unknown_names.failed(&request.username, now);
        tokio::time::sleep(state.rejections.typical()).await;
        return Err(ApiError::InvalidCredentials);
    };
    let loaded = state.store.load(user_id).await?;
    if let Some(until) = loaded.user.password_locked_until(now) {
        return Err(ApiError::locked_until(Some(until), now));
    }
    let Some(stored_hash) = loaded.user.profile().map(|p| p.password_hash.clone()) else {
        return Err(ApiError::InvalidCredentials);
    };
    let password = PasswordCheck {
        matches: turn
            .verify(Some(stored_hash.clone()), request.password)
            .await?,
        against: stored_hash,
    };
    // The next request may take this place while this one is stored.
    drop(turn);
    let storing = Instant::now();
    let password_matches = password.matches;
    let email_offered = email_eligible(&state, &loaded.user).await?;
    let (token, session) = new_session(&state, state.settings.session_lifetime);
    let challenge_id = Uuid::new_v4();
    let device_token = request.device_token.as_deref().map(TokenHash::of);
    let metadata = origin_metadata(&origin, user_id, &state);
    let committed = state
        .store
        .execute(loaded, &metadata, |_| UserCommand::SignIn {
            password: password.clone(),
            device_token: device_token.clone(),
            email_offered,
            session: session.clone(),
            challenge_id,
            policy: state.settings.policy,
            at: now,
        })
        .await
        .map_err(locked_from(now))?;
    // A rejection is stored (it counts towards the lock) and, like every
    // write, visible to this process's next read; an unknown username waits
    // as long as a recent rejection took, so both answer alike.
    state.settle(committed.last_position).await;
    if !password_matches {
        state.rejections.record(storing.elapsed());
    }
    let body = committed.find(|event| match event {
        UserEvent::PasswordRejected { .. } => Some(Err(ApiError::InvalidCredentials)),
        UserEvent::SessionStarted {
            enrollment_required,
            expires_at,
            ..
        } => Some(Ok(if *enrollment_required {
            LoginAnswer::EnrollmentRequired {
                session_token: token.clone(),
                expires_at: *expires_at,
            }
        } else {
            LoginAnswer::Authenticated {
                session_token: token.clone(),
                expires_at: *expires_at,
            }
        })),
        UserEvent::ChallengeIssued {
            challenge_id,
            methods,
            expires_at,
        } => Some(Ok(LoginAnswer::TwoFactorRequired {
            challenge_id: *challenge_id,
            methods: methods.clone(),
            expires_at: *expires_at,
        })),
        _ => None,
    });
    match body {
        Some(Ok(body)) => Ok(Written::new(
            StatusCode::OK,
            committed.last_position,
            Json(body),
        )),
        Some(Err(error)) => Err(error),
        None => Err(ApiError::Internal("sign-in decided nothing".into())),
    }
}

/// The help article's rule: email is offered only to a user who has an
/// address that no other user shares.
pub async fn email_eligible(state: &AppState, user: &User) -> Result<bool, ApiError> {
    match user.profile().and_then(|p| p.email.as_ref()) {
        Some(email) => Ok(!address_shared(state, email).await?),
        None => Ok(false),
    }
}

/// "Shared with other users": another account has the same address.
async fn address_shared(state: &AppState, email: &Email) -> Result<bool, ApiError> {
    Ok(state
        .projector
        .read_models()
        .users_with_email(&email.key())
        .await?
        > 1)
}

#[derive(Serialize, ToSchema)]
pub struct EmailCodeSent {
    /// The address, masked: `j***@example.com`.
    sent_to: String,
    expires_at: DateTime<Utc>,
}

/// Six random digits.
fn new_email_code() -> String {
    use rand::Rng;
    format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000))
}

/// The user a sign-in challenge belongs to, loaded.
async fn challenge_owner(state: &AppState, challenge_id: Uuid) -> Result<Loaded, ApiError> {
    let user_id = state
        .projector
        .read_models()
        .challenge_owner(challenge_id)
        .await?
        .ok_or(ApiError::NotFound("no such sign-in challenge"))?;
    Ok(state.store.load(user_id).await?)
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
    origin: RequestOrigin,
    Path(challenge_id): Path<Uuid>,
) -> Result<Written<Json<EmailCodeSent>>, ApiError> {
    let loaded = challenge_owner(&state, challenge_id).await?;
    let user_id = loaded.id;
    let now = state.now();
    let email = loaded.user.profile().and_then(|p| p.email.clone());
    let address_shared = match &email {
        Some(email) => address_shared(&state, email).await?,
        None => false,
    };
    let code = new_email_code();
    let code_hash = email_code_hash(&state.code_key, challenge_id, &code);
    let metadata = origin_metadata(&origin, user_id, &state);
    // Decided and stored first, under the user's turn, so that requests
    // arriving together are counted one after the other against the limit;
    // only a stored send is delivered.
    let committed = state
        .execute(loaded, &metadata, |_| UserCommand::SendEmailCode {
            challenge_id,
            code_hash: code_hash.clone(),
            address_shared,
            at: now,
        })
        .await?;
    let sent = committed.find(|event| match event {
        UserEvent::EmailCodeSent {
            sent_to,
            expires_at,
            ..
        } => Some(EmailCodeSent {
            sent_to: sent_to.clone(),
            expires_at: *expires_at,
        }),
        _ => None,
    });
    let (Some(sent), Some(email)) = (sent, email) else {
        return Err(ApiError::EmailUnavailable);
    };
    let mail = OutgoingMail {
        to: email.as_str().to_string(),
        subject: "Your sign-in code".into(),
        body: format!(
            "Your sign-in code is {code}.\n\nIt works once, for the next 10 minutes. \
             If you did not try to sign in, change your password.\n"
        ),
    };
    if let Err(error) = state.mailer.send(&mail).await {
        // Nobody saw the stored code: it is withdrawn, and still counts
        // toward the limit.
        tracing::warn!(%error, "sign-in code email not sent");
        let loaded = state.store.load(user_id).await?;
        state
            .execute(loaded, &metadata, |_| {
                UserCommand::RecordEmailCodeUndelivered { challenge_id }
            })
            .await?;
        return Err(ApiError::Unavailable { retry_after: 5 });
    }
    Ok(Written::new(
        StatusCode::ACCEPTED,
        committed.last_position,
        Json(sent),
    ))
}

fn remember_by_default() -> bool {
    true
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    #[schema(value_type = MethodSchema)]
    method: SecondFactorMethod,
    code: String,
    /// Remember this device for 23 hours (default true).
    #[serde(default = "remember_by_default")]
    remember_device: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Authenticated {
    #[schema(value_type = String, pattern = "^authenticated$")]
    status: &'static str,
    session_token: String,
    expires_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_expires_at: Option<DateTime<Utc>>,
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
    origin: RequestOrigin,
    Path(challenge_id): Path<Uuid>,
    Json(request): Json<VerifyRequest>,
) -> Result<Written<Json<Authenticated>>, ApiError> {
    let loaded = challenge_owner(&state, challenge_id).await?;
    let user_id = loaded.id;
    let totp_secret = match (request.method, loaded.user.active_totp()) {
        (SecondFactorMethod::Totp, Some(totp)) => {
            Some(state.vault.fetch(user_id, totp.enrollment_id).await?)
        }
        _ => None,
    };
    let now = state.now();
    let (token, session) = new_session(&state, state.settings.session_lifetime);
    let device_token = request.remember_device.then(security::new_token);
    let device = device_token.as_ref().map(|token| NewDevice {
        device_id: Uuid::new_v4(),
        token_hash: TokenHash::of(token),
        expires_at: now + state.settings.remember_device,
        user_agent: origin.user_agent.clone(),
    });
    let metadata = origin_metadata(&origin, user_id, &state);
    let committed = state
        .store
        .execute(loaded, &metadata, |_| UserCommand::VerifySecondFactor {
            challenge_id,
            method: request.method,
            code: request.code.clone(),
            totp_secret: totp_secret.clone(),
            code_key: state.code_key.clone(),
            session: session.clone(),
            remember_device: device.clone(),
            at: now,
        })
        .await
        .map_err(locked_from(now))?;
    state.settle(committed.last_position).await;
    let rejected = committed.find(|event| match event {
        UserEvent::SecondFactorRejected {
            attempts_remaining, ..
        } => Some(*attempts_remaining),
        _ => None,
    });
    if let Some(attempts_remaining) = rejected {
        return Err(ApiError::InvalidCode { attempts_remaining });
    }
    let remembered = committed.find(|event| match event {
        UserEvent::DeviceRemembered { expires_at, .. } => Some(*expires_at),
        _ => None,
    });
    Ok(Written::new(
        StatusCode::OK,
        committed.last_position,
        Json(Authenticated {
            status: "authenticated",
            session_token: token,
            expires_at: session.expires_at,
            device_token: remembered.and(device_token),
            device_expires_at: remembered,
        }),
    ))
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
    origin: RequestOrigin,
    session: Session,
) -> Result<Written<()>, ApiError> {
    let loaded = state.store.load(session.record.user_id).await?;
    let session_id = session.record.session_id;
    let command = |_: &_| {
        if session.is_impersonation() {
            UserCommand::EndImpersonation {
                session_id,
                revoked: None,
            }
        } else {
            UserCommand::SignOut { session_id }
        }
    };
    let committed = state
        .execute(loaded, &session.metadata(&origin, &state), command)
        .await?;
    Ok(Written::new(
        StatusCode::NO_CONTENT,
        committed.last_position,
        (),
    ))
}
