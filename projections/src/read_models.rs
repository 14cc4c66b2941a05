//! How each event changes the read models. Every statement is idempotent
//! (upserts and plain assignments), so applying an event twice changes nothing.

use twofold_domain::{AuthenticatedBy, TwoFactorStatus, UserEvent};

use crate::db::ProjectionError;
use crate::feed::StoredEvent;
use crate::statement::{Arg, Statement};

/// Every table the runner owns; emptied by a rebuild.
pub(crate) const TABLES: [&str; 3] = ["sessions", "user_directory", "challenges"];

fn statement(sql: &'static str, args: Vec<Arg>) -> Statement {
    Statement { sql, args }
}

fn set_status(user_id: &str, status: TwoFactorStatus) -> Statement {
    statement(
        "UPDATE user_directory SET two_factor_status = $2 WHERE user_id = $1",
        vec![user_id.into(), status.as_str().into()],
    )
}

pub(crate) fn plan(event: &StoredEvent) -> Result<Vec<Statement>, ProjectionError> {
    let payload: UserEvent = serde_json::from_value(event.payload.clone()).map_err(|source| {
        ProjectionError::Corrupt {
            position: event.at.position,
            source,
        }
    })?;
    let user_id = event.aggregate_id.as_str();
    Ok(match payload {
        UserEvent::UserRegistered {
            username,
            email,
            role,
            registered_at,
            ..
        } => vec![statement(
            "INSERT INTO user_directory
                 (user_id, username, email, email_key, role, two_factor_status, enforced, registered_at)
             VALUES ($1, $2, $3, $4, $5, 'disabled', false, $6)
             ON CONFLICT (user_id) DO NOTHING",
            vec![
                user_id.into(),
                username.as_str().into(),
                email.as_ref().map(|e| e.as_str().to_string()).into(),
                email.as_ref().map(|e| e.key()).into(),
                role.as_str().into(),
                registered_at.into(),
            ],
        )],
        UserEvent::EmailChanged { email } => vec![statement(
            "UPDATE user_directory SET email = $2, email_key = $3 WHERE user_id = $1",
            vec![
                user_id.into(),
                email.as_ref().map(|e| e.as_str().to_string()).into(),
                email.as_ref().map(|e| e.key()).into(),
            ],
        )],
        UserEvent::RoleChanged { role } => vec![statement(
            "UPDATE user_directory SET role = $2 WHERE user_id = $1",
            vec![user_id.into(), role.as_str().into()],
        )],
        UserEvent::TotpEnrollmentStarted { .. } => vec![set_status(user_id, TwoFactorStatus::Pending)],
        UserEvent::TotpEnrollmentCodeRejected {
            attempts_remaining: 0,
            ..
        } => vec![set_status(user_id, TwoFactorStatus::Disabled)],
        UserEvent::TotpEnrollmentConfirmed { enabled_at, .. } => vec![statement(
            "UPDATE user_directory SET two_factor_status = 'enabled', enabled_at = $2 WHERE user_id = $1",
            vec![user_id.into(), enabled_at.into()],
        )],
        UserEvent::TwoFactorDisabled | UserEvent::TwoFactorReset { .. } => vec![
            statement(
                "UPDATE user_directory SET two_factor_status = 'disabled', enabled_at = NULL WHERE user_id = $1",
                vec![user_id.into()],
            ),
            statement("DELETE FROM challenges WHERE user_id = $1", vec![user_id.into()]),
        ],
        // A user's older challenges are settled or expired once a new one is issued.
        UserEvent::ChallengeIssued { challenge_id, .. } => vec![
            statement("DELETE FROM challenges WHERE user_id = $1", vec![user_id.into()]),
            statement(
                "INSERT INTO challenges (challenge_id, user_id) VALUES ($1, $2)
                 ON CONFLICT (challenge_id) DO NOTHING",
                vec![challenge_id.to_string().into(), user_id.into()],
            ),
        ],
        UserEvent::TwoFactorEnforced { .. } => vec![statement(
            "UPDATE user_directory SET enforced = true WHERE user_id = $1",
            vec![user_id.into()],
        )],
        UserEvent::TwoFactorEnforcementLifted { .. } => vec![statement(
            "UPDATE user_directory SET enforced = false WHERE user_id = $1",
            vec![user_id.into()],
        )],
        UserEvent::SessionStarted {
            session_id,
            token_hash,
            authenticated_by,
            started_at,
            expires_at,
            impersonator_id,
            ..
        } => {
            let mut statements = vec![statement(
                "INSERT INTO sessions
                     (session_id, token_hash, user_id, authenticated_by, impersonator_id,
                      started_at, expires_at, last_seen_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $6)
                 ON CONFLICT (session_id) DO NOTHING",
                vec![
                    session_id.to_string().into(),
                    token_hash.as_str().into(),
                    user_id.into(),
                    serde_json::to_value(authenticated_by)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .into(),
                    impersonator_id.map(|id| id.to_string()).into(),
                    started_at.into(),
                    expires_at.into(),
                ],
            )];
            if authenticated_by != AuthenticatedBy::Impersonation {
                statements.push(statement(
                    "UPDATE user_directory SET last_login_at = $2 WHERE user_id = $1",
                    vec![user_id.into(), started_at.into()],
                ));
            }
            statements
        }
        UserEvent::SessionEnded { session_id } | UserEvent::ImpersonationEnded { session_id, .. } => {
            vec![statement(
                "DELETE FROM sessions WHERE session_id = $1",
                vec![session_id.to_string().into()],
            )]
        }
        UserEvent::PasswordChanged { .. }
        | UserEvent::PasswordRejected { .. }
        | UserEvent::SecondFactorAccepted { .. }
        | UserEvent::SecondFactorRejected { .. }
        | UserEvent::TotpCodeReplayed { .. }
        | UserEvent::SecondFactorSuspended { .. }
        | UserEvent::TotpEnrollmentCodeRejected { .. }
        | UserEvent::DeviceRemembered { .. }
        | UserEvent::RememberedDevicesRevoked
        | UserEvent::ImpersonationStarted { .. } => vec![],
    })
}
