//! The one place where errors become HTTP answers: `{"error", "message"}`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use twofold_app::AppError;
use utoipa::ToSchema;

/// An error answer: what the application layer refused or failed at, or
/// what HTTP alone can refuse before a use case runs.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    App(#[from] AppError),
    /// JSON of the wrong shape for the operation.
    #[error("{0}")]
    Unprocessable(String),
    #[error("the request body is larger than 64 KiB")]
    PayloadTooLarge,
    /// The body did not arrive within the read timeout (a slow client).
    #[error("the request body did not arrive in time")]
    RequestTimeout,
}

impl ApiError {
    /// A request this service cannot read: 400 `invalid_request`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        ApiError::App(AppError::InvalidRequest(message.into()))
    }
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
        use AppError::*;
        use ErrorCode as C;
        let app = match self {
            ApiError::App(app) => app,
            ApiError::Unprocessable(_) => {
                return (StatusCode::UNPROCESSABLE_ENTITY, C::InvalidRequest)
            }
            ApiError::PayloadTooLarge => return (StatusCode::PAYLOAD_TOO_LARGE, C::InvalidRequest),
            ApiError::RequestTimeout => return (StatusCode::REQUEST_TIMEOUT, C::InvalidRequest),
        };
        match app {
            InvalidRequest(_) => (StatusCode::BAD_REQUEST, C::InvalidRequest),
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
            ApiError::App(AppError::Internal(cause)) => {
                tracing::error!(%cause, "request failed");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        let mut body = ErrorBody::new(code, message);
        let mut retry_after = None;
        if let ApiError::App(app) = &self {
            match app {
                AppError::InvalidCode { attempts_remaining } => {
                    body.attempts_remaining = Some(*attempts_remaining);
                }
                AppError::AccountLocked { retry_after: after } => retry_after = *after,
                AppError::RateLimited { retry_after: after }
                | AppError::Unavailable { retry_after: after } => retry_after = Some(*after),
                _ => {}
            }
        }
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = retry_after {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
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
            other => ApiError::invalid_request(other.body_text()),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::invalid_request(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::invalid_request(rejection.body_text())
    }
}
