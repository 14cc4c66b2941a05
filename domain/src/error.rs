use chrono::{DateTime, Utc};

/// Why the user aggregate refused a command. Refusals that matter to security
/// (wrong password, wrong code) are not errors: they are recorded as events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("the user already exists")]
    AlreadyRegistered,
    #[error("no such user")]
    NotRegistered,
    #[error("usernames are 1 to 64 characters: letters, digits, '.', '_', '-', '@'")]
    InvalidUsername,
    #[error("the email address is not valid")]
    InvalidEmail,
    #[error("unknown role")]
    InvalidRole,
    #[error("the account is temporarily locked")]
    AccountLocked { until: Option<DateTime<Utc>> },
    #[error("no such sign-in challenge")]
    ChallengeNotFound,
    #[error("the sign-in challenge has expired")]
    ChallengeExpired,
    #[error("too many wrong codes for this sign-in challenge")]
    ChallengeLocked,
    #[error("this method is not available for this sign-in")]
    MethodUnavailable,
    #[error("two-factor authentication is already enabled")]
    TwoFactorAlreadyEnabled,
    #[error("two-factor authentication is not enabled")]
    TwoFactorNotEnabled,
    #[error("there is no pending authenticator enrollment")]
    NoPendingEnrollment,
    #[error("two-factor authentication is enforced by an administrator")]
    TwoFactorEnforced,
    #[error("this administrator may not log in as this user")]
    ImpersonationForbidden,
    #[error("no such session")]
    SessionNotFound,
    #[error("a reason is required")]
    ReasonRequired,
    #[error("the password changed while it was being checked")]
    StalePasswordCheck,
    #[error("email is not available for this user")]
    EmailUnavailable,
    #[error("this session can not turn two-factor authentication off")]
    ReauthenticationRequired,
    #[error("no such passkey registration (it may have been used already)")]
    PasskeyRegistrationNotFound,
    #[error("the passkey registration has expired")]
    PasskeyRegistrationExpired,
    #[error("this passkey is already registered")]
    PasskeyAlreadyRegistered,
    #[error("no such passkey")]
    PasskeyNotFound,
    #[error("a passkey name is 1 to 64 characters, without control characters")]
    InvalidPasskeyName,
    #[error("too many passkeys; remove one first")]
    TooManyPasskeys,
    #[error("too many email codes; wait before asking for another")]
    TooManyEmailCodes { retry_at: DateTime<Utc> },
}
