//! The user aggregate's events: past tense, facts only. A type name never
//! changes once stored; a new shape gets a new name or an upcaster.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::passkey::{CeremonyState, PasskeyCeremony, PasskeyCredential, PasskeyRefusal};
use crate::totp::TotpParameters;
use crate::values::{
    AuthenticatedBy, Email, EmailRefusal, PasswordHash, Role, SecondFactorMethod, TokenHash,
    Username,
};

/// The version of every event's stored form (`event_version`).
pub const EVENT_VERSION: &str = "1";

/// `strum` gives each variant's name (`name`) and the list of all of them
/// (`<UserEvent as strum::VariantNames>::VARIANTS`), from the one enum.
#[derive(
    Clone, Debug, PartialEq, Serialize, Deserialize, strum::IntoStaticStr, strum::VariantNames,
)]
pub enum UserEvent {
    UserRegistered {
        user_id: Uuid,
        username: Username,
        email: Option<Email>,
        role: Role,
        password_hash: PasswordHash,
        registered_at: DateTime<Utc>,
    },
    EmailChanged {
        email: Option<Email>,
    },
    RoleChanged {
        role: Role,
    },
    /// The user's other sessions end (`kept_session_id` is the one that
    /// changed it).
    PasswordChanged {
        password_hash: PasswordHash,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept_session_id: Option<Uuid>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        changed_at: Option<DateTime<Utc>>,
    },
    PasswordRejected {
        consecutive_failures: u32,
        locked_until: Option<DateTime<Utc>>,
    },
    ChallengeIssued {
        challenge_id: Uuid,
        methods: Vec<SecondFactorMethod>,
        expires_at: DateTime<Utc>,
    },
    SecondFactorAccepted {
        challenge_id: Uuid,
        method: SecondFactorMethod,
        /// The TOTP time step used; no code at or below it is accepted again.
        totp_step: Option<u64>,
        /// Which recovery code was spent (its position, never the code).
        recovery_code_index: Option<usize>,
    },
    SecondFactorRejected {
        challenge_id: Uuid,
        method: SecondFactorMethod,
        attempts_remaining: u32,
        consecutive_failures: u32,
        locked_until: Option<DateTime<Utc>>,
    },
    /// A wrong (or replayed) code where a fresh second factor was asked for
    /// outside a sign-in (turning 2FA off); counted like a sign-in's.
    ReauthenticationCodeRejected {
        method: SecondFactorMethod,
        consecutive_failures: u32,
        locked_until: Option<DateTime<Utc>>,
    },
    /// A TOTP code that had already been accepted was offered again.
    TotpCodeReplayed {
        challenge_id: Uuid,
        step: u64,
    },
    SecondFactorSuspended {
        method: SecondFactorMethod,
        consecutive_failures: u32,
    },
    /// A one-time code was emailed; only its hash is kept.
    EmailCodeSent {
        challenge_id: Uuid,
        code_hash: TokenHash,
        sent_to: String,
        sent_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    },
    /// The mail carrying the code of `EmailCodeSent` was not delivered; the
    /// code is withdrawn (it still counts toward the sending limit).
    EmailCodeUndelivered {
        challenge_id: Uuid,
    },
    /// The email option was asked for but the address is missing or shared.
    EmailCodeRefused {
        challenge_id: Uuid,
        reason: EmailRefusal,
    },
    SessionStarted {
        session_id: Uuid,
        token_hash: TokenHash,
        authenticated_by: AuthenticatedBy,
        started_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        /// The user must enroll before the session may do anything else.
        enrollment_required: bool,
        impersonator_id: Option<Uuid>,
        device_id: Option<Uuid>,
    },
    SessionEnded {
        session_id: Uuid,
    },
    TotpEnrollmentStarted {
        enrollment_id: Uuid,
        parameters: TotpParameters,
    },
    TotpEnrollmentCodeRejected {
        enrollment_id: Uuid,
        attempts_remaining: u32,
    },
    TotpEnrollmentConfirmed {
        enrollment_id: Uuid,
        accepted_step: u64,
        recovery_code_hashes: Vec<TokenHash>,
        enabled_at: DateTime<Utc>,
    },
    TwoFactorDisabled,
    TwoFactorReset {
        reason: String,
    },
    DeviceRemembered {
        device_id: Uuid,
        token_hash: TokenHash,
        remembered_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        user_agent: Option<String>,
    },
    RememberedDevicesRevoked,
    TwoFactorEnforced {
        reason: Option<String>,
    },
    TwoFactorEnforcementLifted {
        reason: Option<String>,
    },
    ImpersonationStarted {
        impersonation_id: Uuid,
        impersonator_id: Uuid,
        session_id: Uuid,
        reason: String,
        ticket: Option<String>,
        expires_at: DateTime<Utc>,
    },
    ImpersonationEnded {
        impersonation_id: Uuid,
        session_id: Uuid,
        /// Why it ended before its administrator ended it, if it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revoked: Option<ImpersonationRevocation>,
    },
    /// Options to create a passkey were handed out; `ceremony_secret` (the
    /// library's state with the single-use challenge) never reaches the
    /// audit trail.
    PasskeyRegistrationStarted {
        registration_id: Uuid,
        ceremony_secret: CeremonyState,
        expires_at: DateTime<Utc>,
    },
    PasskeyRegistered {
        passkey_id: Uuid,
        registration_id: Uuid,
        name: String,
        /// base64url without padding; not a secret.
        credential_id: String,
        /// The public key and what the authenticator said of itself.
        credential: PasskeyCredential,
        counter: u32,
        user_verified: bool,
        attestation_format: String,
        registered_at: DateTime<Utc>,
    },
    /// A WebAuthn response was refused. In a sign-in without a password
    /// it counts like a wrong password (`consecutive_failures`,
    /// `locked_until`); in the second step `SecondFactorRejected` counts it.
    PasskeyRejected {
        ceremony: PasskeyCeremony,
        reason: PasskeyRefusal,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        registration_id: Option<Uuid>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        passkey_id: Option<Uuid>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consecutive_failures: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        locked_until: Option<DateTime<Utc>>,
    },
    /// Options to sign a sign-in challenge with a passkey were handed out.
    PasskeyAssertionStarted {
        challenge_id: Uuid,
        ceremony_secret: CeremonyState,
    },
    PasskeyUsed {
        passkey_id: Uuid,
        ceremony: PasskeyCeremony,
        counter: u32,
        user_verified: bool,
        used_at: DateTime<Utc>,
    },
    /// A signature counter at or below the stored one: the authenticator
    /// may have been cloned. The assertion was refused.
    PasskeyCounterRegressed {
        passkey_id: Uuid,
        ceremony: PasskeyCeremony,
        stored_counter: u32,
        asserted_counter: u32,
    },
    PasskeyRenamed {
        passkey_id: Uuid,
        name: String,
    },
    PasskeyRemoved {
        passkey_id: Uuid,
        credential_id: String,
    },
}

/// Why a "Login as" session ended on its own: "Login as" would now be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImpersonationRevocation {
    /// The administrator's or the user's role changed so that the
    /// administrator may no longer act as the user.
    RoleChanged,
    /// The administrator's account is locked (wrong passwords).
    ImpersonatorLocked,
    /// The administrator's password changed.
    ImpersonatorPasswordChanged,
}

impl UserEvent {
    /// The stored `event_type`: the variant's name.
    pub fn name(&self) -> &'static str {
        self.into()
    }
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        self.name().to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION.to_string()
    }
}
