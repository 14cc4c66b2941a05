//! Health, readiness and metrics for operators.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::response::Response;

use crate::error::{ErrorBody, ErrorCode};
use crate::extract::Json;
use crate::openapi::Status;
use crate::state::AppState;

/// 200 while the process runs.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Status)),
)]
pub async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// 200 when the event store answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "`{\"status\": \"ready\"}`", body = Status),
        (status = 503, description = "`unavailable`: the event store does not answer", body = ErrorBody),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let answered = state.app.store_answers().await;
    match answered {
        Ok(_) => (StatusCode::OK, Json(Status { status: "ready" })).into_response(),
        Err(error) => {
            tracing::warn!(%error, "event store does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(ErrorBody::new(
                    ErrorCode::Unavailable,
                    "the event store does not answer",
                )),
            )
                .into_response()
        }
    }
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")),
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.app.measure().await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
