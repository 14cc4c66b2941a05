//! Signed audit checkpoints: the list, for readers of the trail, and the
//! public key that checks them, for anyone.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use twofold_domain::checkpoint::SignedCheckpoint;
use utoipa::ToSchema;

use crate::auth::FullCaller;
use crate::error::{ApiError, ErrorBody};
use crate::extract::Json;
use crate::openapi::{SessionErrors, Unavailable};
use crate::state::AppState;

/// Where the audit trail stood, signed by the service.
#[derive(Serialize, Deserialize, ToSchema)]
#[schema(as = AuditCheckpoint)]
pub struct CheckpointView {
    /// The position of the trail's newest row when signed.
    pub position: i64,
    /// The head digest at `position`, 64 lower-case hex digits.
    pub head: String,
    /// RFC 3339 in UTC with six fractional digits, as signed.
    pub signed_at: String,
    /// Hex of the first 8 bytes of SHA-256 of the signing public key.
    pub key_id: String,
    /// Base64url (no padding) of the 64-byte Ed25519 signature over the
    /// UTF-8 text `twofold-audit-checkpoint:v1:<position>:<head>:<signed_at>`.
    pub signature: String,
}

impl From<SignedCheckpoint> for CheckpointView {
    fn from(checkpoint: SignedCheckpoint) -> Self {
        CheckpointView {
            position: checkpoint.position,
            head: checkpoint.head,
            signed_at: checkpoint.signed_at,
            key_id: checkpoint.key_id,
            signature: checkpoint.signature,
        }
    }
}

impl From<CheckpointView> for SignedCheckpoint {
    fn from(view: CheckpointView) -> Self {
        SignedCheckpoint {
            position: view.position,
            head: view.head,
            signed_at: view.signed_at,
            key_id: view.key_id,
            signature: view.signature,
        }
    }
}

/// Every checkpoint, in the order they were signed.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CheckpointList {
    pub checkpoints: Vec<CheckpointView>,
}

/// The key that signs the checkpoints.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct PublicKeyView {
    pub key_id: String,
    /// Base64url (no padding) of the raw 32-byte Ed25519 public key: the
    /// text `twofold audit verify --public-key FILE` reads from FILE.
    pub public_key: String,
}

/// The signed audit checkpoints, oldest first.
#[utoipa::path(
    get,
    path = "/audit/checkpoints",
    operation_id = "audit_checkpoints",
    tag = "reports",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every checkpoint kept", body = CheckpointList),
        SessionErrors,
        Unavailable,
    ),
)]
pub async fn checkpoints(
    State(state): State<AppState>,
    FullCaller(session): FullCaller,
) -> Result<Json<CheckpointList>, ApiError> {
    let checkpoints = state.app.audit_checkpoints(&session).await?;
    Ok(Json(CheckpointList {
        checkpoints: checkpoints.into_iter().map(CheckpointView::from).collect(),
    }))
}

/// The public key that checks the audit checkpoints (no token needed).
#[utoipa::path(
    get,
    path = "/audit/public-key",
    operation_id = "audit_public_key",
    tag = "reports",
    responses(
        (status = 200, description = "The signing key's public half", body = PublicKeyView),
        (status = 404, description = "`not_found`: this service has no audit signing key", body = ErrorBody),
    ),
)]
pub async fn public_key(State(state): State<AppState>) -> Result<Json<PublicKeyView>, ApiError> {
    let key = state.app.audit_public_key()?;
    Ok(Json(PublicKeyView {
        key_id: key.key_id(),
        public_key: key.encoded(),
    }))
}
