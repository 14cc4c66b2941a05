//! What may be asked of a user. Time and randomness come in with the command
//! (the domain does no I/O); secrets arrive decrypted and leave as hashes.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::event::ImpersonationRevocation;
use crate::passkey::{CeremonyState, PasskeyRefusal, VerifiedAssertion, VerifiedRegistration};
use crate::policy::TwoFactorPolicy;
use crate::sealed::CodeKey;
use crate::totp::{TotpParameters, TotpSecret, UnsealedTotp};
use crate::values::{Email, PasswordHash, Role, SecondFactorMethod, TokenHash, Username};

/// A password checked by the caller (argon2 is too slow to run inside the
/// aggregate's turn) and the stored hash it was checked against: the
/// decision is made only if that hash is still the user's, so a password
/// changed meanwhile by another process is never honoured.
#[derive(Clone, Debug, PartialEq)]
pub struct PasswordCheck {
    pub matches: bool,
    pub against: PasswordHash,
}

/// What allows turning 2FA off.
#[derive(Clone, Debug)]
pub enum TwoFactorOffProof {
    /// From the user's own session: the current password and a fresh second
    /// factor (a TOTP code or a recovery code; none is asked while no factor
    /// is active).
    Reauthenticated {
        password: PasswordCheck,
        code: Option<String>,
        /// The active TOTP secret, decrypted by the caller.
        totp_secret: Option<UnsealedTotp>,
        /// When the session asking began, if its second factor was a
        /// passkey: a user whose only factor is passkeys shows a fresh one
        /// this way (`policy::passkey_reauthentication_window`).
        passkey_signed_in_at: Option<DateTime<Utc>>,
    },
    /// "Login as" (the help article's rescue flow): the reason given when
    /// the impersonation started stands for it, while it lasts.
    Impersonation { session_id: Uuid },
}

/// A session the command may start; the caller made the token and keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewSession {
    pub session_id: Uuid,
    pub token_hash: TokenHash,
    pub expires_at: DateTime<Utc>,
}

/// "Remember this device": the caller made the device token.
#[derive(Clone, Debug, PartialEq)]
pub struct NewDevice {
    pub device_id: Uuid,
    pub token_hash: TokenHash,
    pub expires_at: DateTime<Utc>,
    pub user_agent: Option<String>,
}

#[derive(Clone, Debug)]
pub enum UserCommand {
    RegisterUser {
        user_id: Uuid,
        username: Username,
        email: Option<Email>,
        role: Role,
        password_hash: PasswordHash,
        at: DateTime<Utc>,
    },
    ChangeEmail {
        email: Option<Email>,
    },
    /// Several of an administrator's changes at once (one request, one
    /// append): each field given is applied in this order, and only a real
    /// change is recorded.
    UpdateProfile {
        email: Option<Option<Email>>,
        role: Option<Role>,
        enforce_two_factor: Option<bool>,
        reason: Option<String>,
    },
    ChangeRole {
        role: Role,
    },
    /// From the user's own session, which stays; their other sessions end.
    ChangePassword {
        current: PasswordCheck,
        password_hash: PasswordHash,
        kept_session_id: Uuid,
        at: DateTime<Utc>,
    },
    /// The password step of sign-in.
    SignIn {
        password: PasswordCheck,
        device_token: Option<TokenHash>,
        email_offered: bool,
        session: NewSession,
        challenge_id: Uuid,
        policy: TwoFactorPolicy,
        at: DateTime<Utc>,
    },
    VerifySecondFactor {
        challenge_id: Uuid,
        method: SecondFactorMethod,
        code: String,
        /// The active TOTP secret, decrypted by the caller when `method` is TOTP.
        totp_secret: Option<UnsealedTotp>,
        /// Keys the stored hash of an emailed code.
        code_key: CodeKey,
        session: NewSession,
        remember_device: Option<NewDevice>,
        at: DateTime<Utc>,
    },
    /// "Send the code by email". The caller made the code and checked
    /// whether another user shares the address; it delivers the mail only
    /// once the send is stored, so parallel requests cannot exceed the limit.
    SendEmailCode {
        challenge_id: Uuid,
        code_hash: TokenHash,
        address_shared: bool,
        at: DateTime<Utc>,
    },
    /// The mail with the code stored by `SendEmailCode` could not be
    /// delivered: the code must not be usable (nobody saw it).
    RecordEmailCodeUndelivered {
        challenge_id: Uuid,
    },
    SignOut {
        session_id: Uuid,
    },
    StartTotpEnrollment {
        enrollment_id: Uuid,
        parameters: TotpParameters,
    },
    ConfirmTotpEnrollment {
        code: String,
        /// The pending enrollment's secret, decrypted by the caller.
        secret: TotpSecret,
        recovery_code_hashes: Vec<TokenHash>,
        at: DateTime<Utc>,
    },
    DisableTwoFactor {
        proof: TwoFactorOffProof,
        at: DateTime<Utc>,
    },
    ResetTwoFactor {
        reason: String,
    },
    RevokeRememberedDevices,
    EnforceTwoFactor {
        reason: Option<String>,
    },
    LiftTwoFactorEnforcement {
        reason: Option<String>,
    },
    StartImpersonation {
        impersonation_id: Uuid,
        impersonator_id: Uuid,
        impersonator_role: Role,
        reason: String,
        ticket: Option<String>,
        session: NewSession,
        at: DateTime<Utc>,
    },
    EndImpersonation {
        session_id: Uuid,
        /// Set when the impersonation ends because it is no longer allowed.
        revoked: Option<ImpersonationRevocation>,
    },
    /// Options to create a passkey were made (by the WebAuthn library,
    /// whose state comes along to be kept).
    StartPasskeyRegistration {
        registration_id: Uuid,
        ceremony_secret: CeremonyState,
        at: DateTime<Utc>,
    },
    /// The answer to `StartPasskeyRegistration`, as the library judged it.
    FinishPasskeyRegistration {
        registration_id: Uuid,
        passkey_id: Uuid,
        name: String,
        verdict: Result<VerifiedRegistration, PasskeyRefusal>,
        at: DateTime<Utc>,
    },
    RenamePasskey {
        passkey_id: Uuid,
        name: String,
    },
    RemovePasskey {
        passkey_id: Uuid,
        policy: TwoFactorPolicy,
        at: DateTime<Utc>,
    },
    /// Options to sign an open sign-in challenge with a passkey were made.
    StartPasskeyAssertion {
        challenge_id: Uuid,
        ceremony_secret: CeremonyState,
        at: DateTime<Utc>,
    },
    /// The second step with a passkey, as the library judged the assertion.
    VerifyPasskey {
        challenge_id: Uuid,
        verdict: Result<VerifiedAssertion, PasskeyRefusal>,
        session: NewSession,
        remember_device: Option<NewDevice>,
        at: DateTime<Utc>,
    },
    /// A sign-in without a password: the assertion (user verification
    /// required) stands for both factors.
    SignInWithPasskey {
        verdict: Result<VerifiedAssertion, PasskeyRefusal>,
        session: NewSession,
        at: DateTime<Utc>,
    },
}

impl UserCommand {
    /// The command's name, for metrics and logs (never its contents).
    pub fn name(&self) -> &'static str {
        match self {
            UserCommand::RegisterUser { .. } => "RegisterUser",
            UserCommand::ChangeEmail { .. } => "ChangeEmail",
            UserCommand::UpdateProfile { .. } => "UpdateProfile",
            UserCommand::ChangeRole { .. } => "ChangeRole",
            UserCommand::ChangePassword { .. } => "ChangePassword",
            UserCommand::SignIn { .. } => "SignIn",
            UserCommand::VerifySecondFactor { .. } => "VerifySecondFactor",
            UserCommand::SendEmailCode { .. } => "SendEmailCode",
            UserCommand::RecordEmailCodeUndelivered { .. } => "RecordEmailCodeUndelivered",
            UserCommand::SignOut { .. } => "SignOut",
            UserCommand::StartTotpEnrollment { .. } => "StartTotpEnrollment",
            UserCommand::ConfirmTotpEnrollment { .. } => "ConfirmTotpEnrollment",
            UserCommand::DisableTwoFactor { .. } => "DisableTwoFactor",
            UserCommand::ResetTwoFactor { .. } => "ResetTwoFactor",
            UserCommand::RevokeRememberedDevices => "RevokeRememberedDevices",
            UserCommand::EnforceTwoFactor { .. } => "EnforceTwoFactor",
            UserCommand::LiftTwoFactorEnforcement { .. } => "LiftTwoFactorEnforcement",
            UserCommand::StartImpersonation { .. } => "StartImpersonation",
            UserCommand::EndImpersonation { .. } => "EndImpersonation",
            UserCommand::StartPasskeyRegistration { .. } => "StartPasskeyRegistration",
            UserCommand::FinishPasskeyRegistration { .. } => "FinishPasskeyRegistration",
            UserCommand::RenamePasskey { .. } => "RenamePasskey",
            UserCommand::RemovePasskey { .. } => "RemovePasskey",
            UserCommand::StartPasskeyAssertion { .. } => "StartPasskeyAssertion",
            UserCommand::VerifyPasskey { .. } => "VerifyPasskey",
            UserCommand::SignInWithPasskey { .. } => "SignInWithPasskey",
        }
    }
}
