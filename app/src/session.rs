//! Who is calling: a bearer token's session, what it may do, and how long
//! it holds.

use chrono::{DateTime, Utc};
use twofold_domain::{Role, TokenHash, TwoFactorStatus, UserCommand};
use twofold_projections::SessionRecord;
use twofold_store::EventMetadata;
use uuid::Uuid;

use crate::{App, AppError, RequestOrigin};

/// A live session. It may be held on enrollment (`enrollment_only`): then
/// only `GET /me`, the enrollment steps and sign-out are open to it.
#[derive(Clone, Debug)]
pub struct Session {
    pub record: SessionRecord,
    /// The user must have 2FA, has none yet, and nobody is acting for them.
    pub enrollment_only: bool,
}

/// Touch a session's last-seen time at most this often.
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(60);

impl Session {
    /// What events caused under this session record: the user, or the
    /// administrator acting as the user.
    pub fn metadata(&self, origin: &RequestOrigin, at: DateTime<Utc>) -> EventMetadata {
        EventMetadata {
            actor_id: Some(self.record.impersonator_id.unwrap_or(self.record.user_id)),
            impersonator_id: self.record.impersonator_id,
            ip: origin.ip.map(|ip| ip.to_string()),
            user_agent: origin.user_agent.clone(),
            request_id: origin.request_id.clone(),
            occurred_at: Some(at),
        }
    }

    pub fn user_id(&self) -> Uuid {
        self.record.user_id
    }

    /// The user's role now (read with the session, so a change applies to
    /// the user's next request).
    pub fn role(&self) -> Role {
        self.record.role
    }

    pub fn is_impersonation(&self) -> bool {
        self.record.impersonator_id.is_some()
    }

    /// Refused unless the session's role passes `allowed`.
    pub fn require(&self, allowed: impl Fn(Role) -> bool) -> Result<(), AppError> {
        if allowed(self.role()) {
            Ok(())
        } else {
            Err(AppError::Forbidden("your role may not do this"))
        }
    }

    /// Refused while the session is held on enrollment.
    pub fn full(&self) -> Result<(), AppError> {
        if self.enrollment_only {
            return Err(AppError::EnrollmentRequired);
        }
        Ok(())
    }
}

impl App {
    /// The session a bearer token opens, if it is live. A token the read
    /// models do not know may have been issued a moment ago by another
    /// process: they catch up once before it is refused.
    pub async fn authenticate(
        &self,
        token: &str,
        origin: &RequestOrigin,
    ) -> Result<Session, AppError> {
        let hash = TokenHash::of(token);
        let models = self.read_models();
        let record = match models.session_by_token_hash(hash.as_str()).await? {
            Some(record) => record,
            None => {
                self.projector.catch_up().await?;
                models
                    .session_by_token_hash(hash.as_str())
                    .await?
                    .ok_or(AppError::Unauthenticated)?
            }
        };
        let now = self.now();
        if now >= record.expires_at || now - record.last_seen_at > self.settings.session_idle {
            return Err(AppError::Unauthenticated);
        }
        if now - record.last_seen_at > TOUCH_EVERY {
            models.touch_session(record.session_id, now).await?;
        }
        if let Some(impersonator_id) = record.impersonator_id {
            self.still_allowed(origin, &record, impersonator_id, now)
                .await?;
        }
        let must_have_two_factor = record.enforced || self.settings.policy.mandatory_at(now);
        let enrollment_only = record.impersonator_id.is_none()
            && record.two_factor_status != TwoFactorStatus::Enabled
            && must_have_two_factor;
        Ok(Session {
            record,
            enrollment_only,
        })
    }

    /// A "Login as" session holds only while "Login as" would still be
    /// allowed: checked on every request against the administrator's state
    /// now (its role against the user's, its lock, its password). When that
    /// fails the impersonation is ended (an event on the user's stream says
    /// why) and the request is refused as unauthenticated.
    async fn still_allowed(
        &self,
        origin: &RequestOrigin,
        record: &SessionRecord,
        impersonator_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let impersonator = self.load(impersonator_id).await?;
        let Err(revocation) =
            impersonator
                .user
                .may_go_on_impersonating(record.role, record.started_at, now)
        else {
            return Ok(());
        };
        let metadata = EventMetadata {
            actor_id: None,
            impersonator_id: Some(impersonator_id),
            ..self.metadata(origin, None)
        };
        let target = self.load(record.user_id).await?;
        let session_id = record.session_id;
        let ended = self
            .execute(
                target,
                &metadata,
                UserCommand::EndImpersonation {
                    session_id,
                    revoked: Some(revocation),
                },
            )
            .await;
        match ended {
            // Ended meanwhile by another request: refused all the same.
            Ok(_) | Err(AppError::NotFound(_)) => Err(AppError::Unauthenticated),
            Err(error) => Err(error),
        }
    }
}
