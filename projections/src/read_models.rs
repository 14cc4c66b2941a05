//! How each event changes the read models. Every statement is idempotent
//! (upserts and plain assignments), so applying an event twice changes nothing.

use twofold_domain::{AuthenticatedBy, TwoFactorStatus, UserEvent};

use crate::db::ProjectionError;
use crate::feed::StoredEvent;
use crate::statement::{Arg, Statement};

/// Every table the runner owns; emptied by a rebuild.
pub(crate) const TABLES: [&str; 5] = [
    "sessions",
    "user_directory",
    "challenges",
    "two_factor_counts",
    "audit_log",
];

fn statement(sql: &'static str, args: Vec<Arg>) -> Statement {
    Statement { sql, args }
}

fn set_status(user_id: &str, status: TwoFactorStatus) -> Statement {
    statement(
        "UPDATE user_directory SET two_factor_status = $2 WHERE user_id = $1",
        vec![user_id.into(), status.as_str().into()],
    )
}

fn two_factor_off(user_id: &str) -> Vec<Statement> {
    vec![
        statement(
            "UPDATE user_directory SET two_factor_status = 'disabled', enabled_at = NULL WHERE user_id = $1",
            vec![user_id.into()],
        ),
        statement("DELETE FROM challenges WHERE user_id = $1", vec![user_id.into()]),
    ]
}

fn end_sessions(user_id: &str) -> Statement {
    statement(
        "DELETE FROM sessions WHERE user_id = $1",
        vec![user_id.into()],
    )
}

/// Keeps `two_factor_counts` equal to a GROUP BY over `user_directory`:
/// every plan that writes the user's directory row is wrapped in [take the
/// row's current bucket out, the change, put the row's new bucket in]. Applied
/// twice, the second run takes out and puts back the same bucket, so the
/// counts stay idempotent like every other statement. Detected from the SQL
/// so that a new event writing the directory is counted without anyone
/// having to remember it; a write that cannot move the row between buckets
/// (last sign-in, email) skips the two extra round trips.
fn counted(user_id: &str, statements: Vec<Statement>) -> Vec<Statement> {
    if !statements.iter().any(|s| moves_bucket(s.sql)) {
        return statements;
    }
    let mut wrapped = Vec::with_capacity(statements.len() + 2);
    wrapped.push(statement(
        "UPDATE two_factor_counts SET users = users - 1
          WHERE EXISTS (SELECT 1 FROM user_directory d
                         WHERE d.user_id = $1
                           AND d.role = two_factor_counts.role
                           AND d.two_factor_status = two_factor_counts.two_factor_status
                           AND d.enforced = two_factor_counts.enforced)",
        vec![user_id.into()],
    ));
    wrapped.extend(statements);
    // SQLite needs the WHERE to tell the upsert's ON from a join's.
    wrapped.push(statement(
        "INSERT INTO two_factor_counts (role, two_factor_status, enforced, users)
         SELECT role, two_factor_status, enforced, 1 FROM user_directory WHERE user_id = $1
         ON CONFLICT (role, two_factor_status, enforced)
         DO UPDATE SET users = two_factor_counts.users + 1",
        vec![user_id.into()],
    ));
    wrapped
}

/// Whether `sql` may change which `two_factor_counts` bucket a directory
/// row is in: it inserts or deletes a row, or assigns a bucket column.
fn moves_bucket(sql: &str) -> bool {
    const BUCKET_COLUMNS: [&str; 3] = ["role", "two_factor_status", "enforced"];
    let Some(at) = sql.find("user_directory") else {
        return false;
    };
    let head = sql[..at].trim_start();
    if head.starts_with("INSERT") || head.starts_with("DELETE") {
        return true;
    }
    let Some(assignments) = sql[at..].split_once(" SET ").map(|(_, rest)| rest) else {
        return true;
    };
    let assignments = assignments.split(" WHERE ").next().unwrap_or(assignments);
    assignments.split(',').any(|assignment| {
        let column = assignment.split('=').next().unwrap_or("").trim();
        BUCKET_COLUMNS.contains(&column)
    })
}

/// How a session was started, as the `sessions` table stores it.
pub(crate) fn session_method(authenticated_by: AuthenticatedBy) -> Option<String> {
    serde_json::to_value(authenticated_by)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
}

pub(crate) fn plan(event: &StoredEvent) -> Result<Vec<Statement>, ProjectionError> {
    let payload: UserEvent = serde_json::from_value(event.payload.clone()).map_err(|source| {
        ProjectionError::Corrupt {
            position: event.at.position,
            source,
        }
    })?;
    let user_id = event.aggregate_id.as_str();
    let statements = match payload {
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
        // A change of role ends every session of the user.
        UserEvent::RoleChanged { role } => vec![
            statement(
                "UPDATE user_directory SET role = $2 WHERE user_id = $1",
                vec![user_id.into(), role.as_str().into()],
            ),
            end_sessions(user_id),
        ],
        UserEvent::TotpEnrollmentStarted { .. } => vec![set_status(user_id, TwoFactorStatus::Pending)],
        UserEvent::TotpEnrollmentCodeRejected {
            attempts_remaining: 0,
            ..
        } => vec![set_status(user_id, TwoFactorStatus::Disabled)],
        UserEvent::TotpEnrollmentConfirmed { enabled_at, .. } => vec![statement(
            "UPDATE user_directory SET two_factor_status = 'enabled', enabled_at = $2 WHERE user_id = $1",
            vec![user_id.into(), enabled_at.into()],
        )],
        UserEvent::TwoFactorDisabled => two_factor_off(user_id),
        // An administrator's reset also ends every session of the user.
        UserEvent::TwoFactorReset { .. } => {
            let mut statements = two_factor_off(user_id);
            statements.push(end_sessions(user_id));
            statements
        }
        // A new password ends the user's other sessions.
        UserEvent::PasswordChanged {
            kept_session_id, ..
        } => vec![statement(
            "DELETE FROM sessions WHERE user_id = $1 AND session_id <> $2",
            vec![
                user_id.into(),
                kept_session_id.map(|id| id.to_string()).unwrap_or_default().into(),
            ],
        )],
        // A new challenge does not end the user's older ones: the aggregate
        // keeps every unexpired challenge open (two tabs, a retried sign-in)
        // and decides whether it is spent, locked or expired. Rows of
        // challenges that had expired by now are pruned.
        UserEvent::ChallengeIssued {
            challenge_id,
            expires_at,
            ..
        } => vec![
            statement(
                "DELETE FROM challenges WHERE user_id = $1 AND expires_at <= $2",
                vec![
                    user_id.into(),
                    (expires_at - twofold_domain::policy::challenge_lifetime()).into(),
                ],
            ),
            statement(
                "INSERT INTO challenges (challenge_id, user_id, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (challenge_id) DO NOTHING",
                vec![challenge_id.to_string().into(), user_id.into(), expires_at.into()],
            ),
        ],
        // The challenge lives as long as its emailed code.
        UserEvent::EmailCodeSent {
            challenge_id,
            expires_at,
            ..
        } => vec![statement(
            "UPDATE challenges SET expires_at = $2 WHERE challenge_id = $1 AND expires_at < $2",
            vec![challenge_id.to_string().into(), expires_at.into()],
        )],
        UserEvent::SecondFactorAccepted { challenge_id, .. } => vec![statement(
            "DELETE FROM challenges WHERE challenge_id = $1",
            vec![challenge_id.to_string().into()],
        )],
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
                    session_method(authenticated_by).into(),
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
        UserEvent::PasswordRejected { .. }
        | UserEvent::SecondFactorRejected { .. }
        | UserEvent::ReauthenticationCodeRejected { .. }
        | UserEvent::TotpCodeReplayed { .. }
        | UserEvent::EmailCodeRefused { .. }
        | UserEvent::EmailCodeUndelivered { .. }
        | UserEvent::SecondFactorSuspended { .. }
        | UserEvent::TotpEnrollmentCodeRejected { .. }
        | UserEvent::DeviceRemembered { .. }
        | UserEvent::RememberedDevicesRevoked
        | UserEvent::ImpersonationStarted { .. } => vec![],
    };
    Ok(counted(user_id, statements))
}

#[cfg(test)]
mod tests {
    use super::moves_bucket;

    #[test]
    fn only_writes_to_bucket_columns_move_a_user_between_report_buckets() {
        assert!(moves_bucket(
            "INSERT INTO user_directory (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING"
        ));
        assert!(moves_bucket(
            "UPDATE user_directory SET role = $2 WHERE user_id = $1"
        ));
        assert!(moves_bucket(
            "UPDATE user_directory SET two_factor_status = 'enabled', enabled_at = $2 WHERE user_id = $1"
        ));
        assert!(moves_bucket(
            "UPDATE user_directory SET enforced = true WHERE user_id = $1"
        ));
        assert!(!moves_bucket(
            "UPDATE user_directory SET last_login_at = $2 WHERE user_id = $1"
        ));
        assert!(!moves_bucket(
            "UPDATE user_directory SET email = $2, email_key = $3 WHERE user_id = $1"
        ));
        assert!(!moves_bucket("DELETE FROM sessions WHERE session_id = $1"));
    }
}
