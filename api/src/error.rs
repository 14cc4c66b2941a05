//! The one place where errors become HTTP answers: `{"error", "message"}`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use twofold_app::AppError;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("the request body is larger than 64 KiB")]
    PayloadTooLarge,
    /// The body did not arrive within the read timeout (a slow client).
    #[error("the request body did not arrive in time")]
    RequestTimeout,
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
    #[error("the account is temporarily locked")]
    AccountLocked { retry_after: Option<i64> },
    #[error("too many requests")]
    RateLimited { retry_after: i64 },
    #[error("the service is temporarily unavailable")]
    Unavailable { retry_after: i64 },
    #[error("internal error")]
    Internal(String),
}

/// The machine-readable `error` of every error answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    Unauthenticated,
    InvalidCredentials,
    InvalidCode,
    Forbidden,
    TwoFactorEnrollmentRequired,
    NotFound,
    Conflict,
    EmailUnavailable,
    TwoFactorEnforced,
    ChallengeExpired,
    ChallengeLocked,
    AccountLocked,
    RateLimited,
    Unavailable,
    Internal,
}

/// Every error answer: `{"error", "message"}`; `invalid_code` adds
/// `attempts_remaining`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorCode,
    /// For people; not to be parsed.
    pub message: String,
    /// Only with `invalid_code`: wrong codes this challenge (or enrollment)
    /// still accepts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts_remaining: Option<u32>,
}

impl ErrorBody {
    pub fn new(error: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error,
            message: message.into(),
            attempts_remaining: None,
        }
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, ErrorCode) {
        use ApiError::*;
        use ErrorCode as C;
        match self {
            InvalidRequest(_) => (StatusCode::BAD_REQUEST, C::InvalidRequest),
            Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, C::InvalidRequest),
            PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, C::InvalidRequest),
            RequestTimeout => (StatusCode::REQUEST_TIMEOUT, C::InvalidRequest),
            Unauthenticated => (StatusCode::UNAUTHORIZED, C::Unauthenticated),
            InvalidCredentials => (StatusCode::UNAUTHORIZED, C::InvalidCredentials),
            InvalidCode { .. } => (StatusCode::UNAUTHORIZED, C::InvalidCode),
            Forbidden(_) => (StatusCode::FORBIDDEN, C::Forbidden),
            EnrollmentRequired => (StatusCode::FORBIDDEN, C::TwoFactorEnrollmentRequired),
            NotFound(_) => (StatusCode::NOT_FOUND, C::NotFound),
            Conflict(_) => (StatusCode::CONFLICT, C::Conflict),
            EmailUnavailable => (StatusCode::CONFLICT, C::EmailUnavailable),
            TwoFactorEnforced => (StatusCode::CONFLICT, C::TwoFactorEnforced),
            ChallengeExpired => (StatusCode::GONE, C::ChallengeExpired),
            ChallengeLocked => (StatusCode::LOCKED, C::ChallengeLocked),
            AccountLocked { .. } => (StatusCode::LOCKED, C::AccountLocked),
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, C::RateLimited),
            Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, C::Unavailable),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, C::Internal),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let message = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        let mut body = ErrorBody::new(code, message);
        if let ApiError::InvalidCode { attempts_remaining } = &self {
            body.attempts_remaining = Some(*attempts_remaining);
        }
        let retry_after = match &self {
            ApiError::AccountLocked { retry_after } => *retry_after,
            ApiError::RateLimited { retry_after } | ApiError::Unavailable { retry_after } => {
                Some(*retry_after)
            }
            _ => None,
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = retry_after {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<AppError> for ApiError {
    fn from(error: AppError) -> Self {
        match error {
            AppError::InvalidRequest(message) => ApiError::InvalidRequest(message),
            AppError::Unauthenticated => ApiError::Unauthenticated,
            AppError::InvalidCredentials => ApiError::InvalidCredentials,
            AppError::InvalidCode { attempts_remaining } => {
                ApiError::InvalidCode { attempts_remaining }
            }
            AppError::Forbidden(message) => ApiError::Forbidden(message),
            AppError::EnrollmentRequired => ApiError::EnrollmentRequired,
            AppError::NotFound(message) => ApiError::NotFound(message),
            AppError::Conflict(message) => ApiError::Conflict(message),
            AppError::EmailUnavailable => ApiError::EmailUnavailable,
            AppError::TwoFactorEnforced => ApiError::TwoFactorEnforced,
            AppError::ChallengeExpired => ApiError::ChallengeExpired,
            AppError::ChallengeLocked => ApiError::ChallengeLocked,
            AppError::AccountLocked { retry_after } => ApiError::AccountLocked { retry_after },
            AppError::RateLimited { retry_after } => ApiError::RateLimited { retry_after },
            AppError::Unavailable { retry_after } => ApiError::Unavailable { retry_after },
            AppError::Internal(cause) => ApiError::Internal(cause),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(error) => ApiError::Unprocessable(error.body_text()),
            JsonRejection::BytesRejection(error)
                if error.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                ApiError::PayloadTooLarge
            }
            other => ApiError::InvalidRequest(other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::InvalidRequest(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::InvalidRequest(rejection.body_text())
    }
}
