//! The numbers behind lockouts and lifetimes, in one place (see docs/security.md).

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// Consecutive wrong passwords allowed before the account locks for a while.
pub const PASSWORD_FAILURES_BEFORE_LOCK: u32 = 5;
/// Wrong codes allowed on one sign-in challenge.
pub const CHALLENGE_ATTEMPTS: u32 = 5;
/// Consecutive wrong codes for one factor, across challenges, before back-off.
pub const SECOND_FACTOR_FAILURES_BEFORE_BACKOFF: u32 = 10;
/// Consecutive wrong codes after which a factor is suspended until an
/// administrator resets it (NIST SP 800-63B 5.2.2 caps failed attempts at 100).
pub const SECOND_FACTOR_FAILURES_BEFORE_SUSPENSION: u32 = 100;
/// Wrong codes allowed while confirming an enrollment before it must restart.
pub const ENROLLMENT_CONFIRM_ATTEMPTS: u32 = 5;
pub const RECOVERY_CODE_COUNT: usize = 10;

/// Email codes one user may be sent per window.
pub const EMAIL_CODES_PER_WINDOW: usize = 5;

pub fn email_code_window() -> Duration {
    Duration::minutes(15)
}

pub fn email_code_lifetime() -> Duration {
    Duration::minutes(10)
}

/// Passkeys one user may hold.
pub const PASSKEYS_PER_USER: usize = 20;
/// Longest passkey name, in characters.
pub const PASSKEY_NAME_MAX_CHARS: usize = 64;
/// Longest credential id accepted, in bytes (WebAuthn Level 3 caps it at 1023).
pub const PASSKEY_CREDENTIAL_ID_MAX_BYTES: usize = 1023;
/// Registration ceremonies begun and unfinished that one user may hold at
/// once; beginning another drops the oldest.
pub const PENDING_PASSKEY_REGISTRATIONS: usize = 5;

/// How recent a passkey sign-in must be to stand for a fresh second
/// factor (turning 2FA off) for a user whose only factor is passkeys.
pub fn passkey_reauthentication_window() -> Duration {
    Duration::minutes(5)
}

/// How long a passkey registration's options stay valid.
pub fn passkey_registration_lifetime() -> Duration {
    Duration::minutes(5)
}

/// How long a sign-in without a password may take from its options to its
/// answer.
pub fn passkey_sign_in_lifetime() -> Duration {
    Duration::minutes(5)
}

pub fn challenge_lifetime() -> Duration {
    Duration::minutes(5)
}

/// Longest "Login as" session; the administrator is accountable for it.
pub fn impersonation_lifetime() -> Duration {
    Duration::minutes(30)
}

/// A soft lock that grows with each failure past the threshold: 1, 2, 4 ... 60
/// minutes. It always expires, so an attacker can't lock a user out for long,
/// and it keeps guessing far below 100 attempts an hour.
fn backoff(consecutive_failures: u32, threshold: u32) -> Option<Duration> {
    let over = consecutive_failures.checked_sub(threshold)?;
    let minutes = 1_i64.checked_shl(over.min(6)).unwrap_or(60).min(60);
    Some(Duration::minutes(minutes))
}

pub fn password_lock(consecutive_failures: u32, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    backoff(consecutive_failures, PASSWORD_FAILURES_BEFORE_LOCK).map(|d| at + d)
}

pub fn second_factor_lock(consecutive_failures: u32, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    backoff(consecutive_failures, SECOND_FACTOR_FAILURES_BEFORE_BACKOFF).map(|d| at + d)
}

/// The deployment's rule for who must have 2FA, besides per-user enforcement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwoFactorPolicy {
    /// From this instant every user must have 2FA (the help article's
    /// platform-wide date); `None`: never.
    pub mandatory_from: Option<DateTime<Utc>>,
}

impl TwoFactorPolicy {
    pub fn mandatory_at(&self, at: DateTime<Utc>) -> bool {
        self.mandatory_from.is_some_and(|from| at >= from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_lock_starts_at_the_fifth_failure_and_grows_to_an_hour() {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        assert_eq!(password_lock(4, at), None);
        assert_eq!(password_lock(5, at), Some(at + Duration::minutes(1)));
        assert_eq!(password_lock(6, at), Some(at + Duration::minutes(2)));
        assert_eq!(password_lock(9, at), Some(at + Duration::minutes(16)));
        assert_eq!(password_lock(12, at), Some(at + Duration::minutes(60)));
        assert_eq!(
            password_lock(u32::MAX, at),
            Some(at + Duration::minutes(60))
        );
    }

    #[test]
    fn platform_date_applies_from_its_instant() {
        let from = DateTime::<Utc>::UNIX_EPOCH + Duration::days(1);
        let policy = TwoFactorPolicy {
            mandatory_from: Some(from),
        };
        assert!(!policy.mandatory_at(from - Duration::seconds(1)));
        assert!(policy.mandatory_at(from));
        assert!(!TwoFactorPolicy::default().mandatory_at(from));
    }
}
