//! Who is calling: bearer sessions and what they may do.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use twofold_domain::{Role, TokenHash, UserCommand};
use twofold_projections::SessionRecord;

use crate::error::ApiError;
use crate::extract::RequestOrigin;
use crate::state::AppState;
use twofold_store::EventMetadata;

/// A live session. It may be restricted to enrolling a second factor; use
/// `FullSession` for everything else.
#[derive(Clone, Debug)]
pub struct Session {
    pub record: SessionRecord,
    pub role: Role,
    /// The user must have 2FA, has none yet, and nobody is acting for them.
    pub enrollment_only: bool,
}

impl Session {
    pub fn metadata(&self, origin: &RequestOrigin, state: &AppState) -> EventMetadata {
        EventMetadata {
            actor_id: Some(self.record.impersonator_id.unwrap_or(self.record.user_id)),
            impersonator_id: self.record.impersonator_id,
            ip: origin.ip.map(|ip| ip.to_string()),
            user_agent: origin.user_agent.clone(),
            request_id: origin.request_id.clone(),
            occurred_at: Some(state.now()),
        }
    }

    pub fn require(&self, allowed: impl Fn(Role) -> bool) -> Result<(), ApiError> {
        if allowed(self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden("your role may not do this"))
        }
    }

    pub fn is_impersonation(&self) -> bool {
        self.record.impersonator_id.is_some()
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Touch a session's last-seen time at most this often.
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(60);

impl FromRequestParts<AppState> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or(ApiError::Unauthenticated)?;
        let hash = TokenHash::of(token);
        let db = state.projector.read_models();
        let record = match db.session_by_token_hash(hash.as_str()).await? {
            Some(record) => record,
            None => {
                // Started by another process a moment ago? Catch up once.
                state.projector.catch_up().await?;
                db.session_by_token_hash(hash.as_str())
                    .await?
                    .ok_or(ApiError::Unauthenticated)?
            }
        };
        let now = state.now();
        if now >= record.expires_at || now - record.last_seen_at > state.settings.session_idle {
            return Err(ApiError::Unauthenticated);
        }
        if now - record.last_seen_at > TOUCH_EVERY {
            db.touch_session(record.session_id, now).await?;
        }
        let role: Role = record
            .role
            .parse()
            .map_err(|_| ApiError::Internal(format!("unknown role {}", record.role)))?;
        if let Some(impersonator_id) = record.impersonator_id {
            still_allowed(state, parts, &record, impersonator_id, role, now).await?;
        }
        let must_have_two_factor = record.enforced || state.settings.policy.mandatory_at(now);
        let enrollment_only = record.impersonator_id.is_none()
            && record.two_factor_status != "enabled"
            && must_have_two_factor;
        Ok(Session {
            record,
            role,
            enrollment_only,
        })
    }
}

/// A "Login as" session holds only while "Login as" would still be allowed:
/// checked on every request against the administrator's state now (its
/// role against the user's, its lock, its password). When that fails the
/// impersonation is ended (an event on the user's stream says why) and the
/// request is refused as unauthenticated.
async fn still_allowed(
    state: &AppState,
    parts: &mut Parts,
    record: &SessionRecord,
    impersonator_id: uuid::Uuid,
    target_role: Role,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), ApiError> {
    let impersonator = state.store.load(impersonator_id).await?;
    let Err(revocation) =
        impersonator
            .user
            .may_go_on_impersonating(target_role, record.started_at, now)
    else {
        return Ok(());
    };
    let origin = RequestOrigin::from_request_parts(parts, state).await?;
    let metadata = EventMetadata {
        actor_id: None,
        impersonator_id: Some(impersonator_id),
        ip: origin.ip.map(|ip| ip.to_string()),
        user_agent: origin.user_agent,
        request_id: origin.request_id,
        occurred_at: Some(now),
    };
    let target = state.store.load(record.user_id).await?;
    let session_id = record.session_id;
    let ended = state
        .execute(target, &metadata, |_| UserCommand::EndImpersonation {
            session_id,
            revoked: Some(revocation),
        })
        .await;
    match ended {
        // Ended meanwhile by another request: refused all the same.
        Ok(_) | Err(ApiError::NotFound(_)) => Err(ApiError::Unauthenticated),
        Err(error) => Err(error),
    }
}

/// A session that may use the whole API (not held on enrollment).
#[derive(Clone, Debug)]
pub struct FullSession(pub Session);

impl FromRequestParts<AppState> for FullSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let session = Session::from_request_parts(parts, state).await?;
        if session.enrollment_only {
            return Err(ApiError::EnrollmentRequired);
        }
        Ok(FullSession(session))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::bearer;
    use axum::http::{HeaderValue, Request};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Any Authorization header: a trimmed, non-empty token or none.
        #[test]
        fn bearer_headers_never_panic(
            value in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..80),
                "(Bearer|bearer|BEARER|Basic|) {0,3}[ -~]{0,40}".prop_map(String::into_bytes),
            ],
        ) {
            let Ok(value) = HeaderValue::from_bytes(&value) else {
                return Ok(());
            };
            let (parts, ()) = Request::builder()
                .header("authorization", value)
                .body(())
                .unwrap()
                .into_parts();
            if let Some(token) = bearer(&parts) {
                prop_assert!(!token.is_empty());
                prop_assert_eq!(token, token.trim());
            }
        }

        #[test]
        fn tokens_are_read_from_bearer_headers(token in "[A-Za-z0-9_-]{1,64}", scheme in "(Bearer|bearer|BEARER)") {
            let (parts, ()) = Request::builder()
                .header("authorization", format!("{scheme} {token}"))
                .body(())
                .unwrap()
                .into_parts();
            prop_assert_eq!(bearer(&parts), Some(token.as_str()));
        }
    }
}
