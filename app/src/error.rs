//! Why a use case refused, in the application's terms; the HTTP layer maps
//! each to one status and code (api/src/error.rs), the only place that does.

use chrono::{DateTime, Utc};
use twofold_domain::UserError;
use twofold_projections::ProjectionError;
use twofold_store::{is_unavailable, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("sign in first")]
    Unauthenticated,
    #[error("wrong username or password")]
    InvalidCredentials,
    #[error("the code is not valid")]
    InvalidCode { attempts_remaining: u32 },
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("activate two-factor authentication first")]
    EnrollmentRequired,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("email is not available for this user")]
    EmailUnavailable,
    #[error("two-factor authentication is enforced by an administrator")]
    TwoFactorEnforced,
    #[error("the sign-in challenge has expired; sign in again")]
    ChallengeExpired,
    #[error("too many wrong codes; sign in again")]
    ChallengeLocked,
    /// `retry_after` in seconds, from the service's clock.
    #[error("the account is temporarily locked")]
    AccountLocked { retry_after: Option<i64> },
    #[error("too many requests")]
    RateLimited { retry_after: i64 },
    #[error("the service is temporarily unavailable")]
    Unavailable { retry_after: i64 },
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    /// A lock that ends at `until` (if it ends), seen at `now`.
    pub fn locked_until(until: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Self {
        AppError::AccountLocked {
            retry_after: until.map(|until| (until - now).num_seconds().max(1)),
        }
    }

    /// The domain's refusal, with any wait counted from `now`.
    pub fn refused(error: UserError, now: DateTime<Utc>) -> Self {
        use UserError::*;
        match error {
            AlreadyRegistered => AppError::Conflict(error.to_string()),
            NotRegistered => AppError::NotFound("no such user"),
            InvalidUsername
            | InvalidEmail
            | InvalidRole
            | ReasonRequired
            | MethodUnavailable
            | ReauthenticationRequired => AppError::InvalidRequest(error.to_string()),
            // Another process changed the password while this one was
            // checking it: the password given is no longer the password.
            StalePasswordCheck => AppError::InvalidCredentials,
            EmailUnavailable => AppError::EmailUnavailable,
            AccountLocked { until } => AppError::locked_until(until, now),
            ChallengeNotFound => AppError::NotFound("no such sign-in challenge"),
            ChallengeExpired => AppError::ChallengeExpired,
            ChallengeLocked => AppError::ChallengeLocked,
            TwoFactorAlreadyEnabled | TwoFactorNotEnabled | NoPendingEnrollment => {
                AppError::Conflict(error.to_string())
            }
            TwoFactorEnforced => AppError::TwoFactorEnforced,
            ImpersonationForbidden => AppError::Forbidden("you may not log in as this user"),
            SessionNotFound => AppError::NotFound("no such session"),
            PasskeyRegistrationNotFound => AppError::NotFound("no such passkey registration"),
            PasskeyRegistrationExpired => AppError::ChallengeExpired,
            PasskeyAlreadyRegistered | TooManyPasskeys => AppError::Conflict(error.to_string()),
            PasskeyNotFound => AppError::NotFound("no such passkey"),
            InvalidPasskeyName => AppError::InvalidRequest(error.to_string()),
            TooManyEmailCodes { retry_at } => AppError::RateLimited {
                retry_after: (retry_at - now).num_seconds().max(1),
            },
        }
    }

    /// A store's failure, or the domain's refusal it carries.
    pub fn from_store(error: StoreError, now: DateTime<Utc>) -> Self {
        match error {
            StoreError::Rejected(error) => AppError::refused(error, now),
            StoreError::UsernameTaken => AppError::Conflict("the username is taken".into()),
            StoreError::Contended => {
                AppError::Conflict("the user changed meanwhile; try again".into())
            }
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "event store unavailable");
                AppError::Unavailable { retry_after: 1 }
            }
            StoreError::Failed(cause) => AppError::Internal(cause),
        }
    }
}

impl From<StoreError> for AppError {
    /// Outside a command (reads, the vault): no refusal that waits.
    fn from(error: StoreError) -> Self {
        AppError::from_store(error, crate::clock::system_now())
    }
}

impl From<ProjectionError> for AppError {
    fn from(error: ProjectionError) -> Self {
        let unavailable = match &error {
            ProjectionError::Database(cause) => is_unavailable(cause),
            ProjectionError::Lagging => true,
            ProjectionError::Corrupt { .. } => false,
        };
        if unavailable {
            tracing::warn!(%error, "read models unavailable");
            AppError::Unavailable { retry_after: 1 }
        } else {
            AppError::Internal(error.to_string())
        }
    }
}
