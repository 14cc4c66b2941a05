//! What may be asked of a user. Time and randomness come in with the command
//! (the domain does no I/O); secrets arrive decrypted and leave as hashes.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::policy::TwoFactorPolicy;
use crate::totp::{TotpParameters, TotpSecret};
use crate::values::{Email, PasswordHash, Role, SecondFactorMethod, TokenHash, Username};

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

#[derive(Debug)]
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
    ChangeRole {
        role: Role,
    },
    ChangePassword {
        password_hash: PasswordHash,
    },
    /// The password step of sign-in. The caller checked the password against
    /// the stored hash (argon2 is too slow to run inside the aggregate's lock).
    SignIn {
        password_matches: bool,
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
        totp_secret: Option<TotpSecret>,
        session: NewSession,
        remember_device: Option<NewDevice>,
        at: DateTime<Utc>,
    },
    /// "Send the code by email". The caller made the code, checked whether
    /// another user shares the address, and delivered the mail first, so a
    /// failed delivery leaves no usable code behind.
    SendEmailCode {
        challenge_id: Uuid,
        code_hash: TokenHash,
        address_shared: bool,
        at: DateTime<Utc>,
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
    DisableTwoFactor,
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
    },
}

impl UserCommand {
    /// The command's name, for metrics and logs (never its contents).
    pub fn name(&self) -> &'static str {
        match self {
            UserCommand::RegisterUser { .. } => "RegisterUser",
            UserCommand::ChangeEmail { .. } => "ChangeEmail",
            UserCommand::ChangeRole { .. } => "ChangeRole",
            UserCommand::ChangePassword { .. } => "ChangePassword",
            UserCommand::SignIn { .. } => "SignIn",
            UserCommand::VerifySecondFactor { .. } => "VerifySecondFactor",
            UserCommand::SendEmailCode { .. } => "SendEmailCode",
            UserCommand::SignOut { .. } => "SignOut",
            UserCommand::StartTotpEnrollment { .. } => "StartTotpEnrollment",
            UserCommand::ConfirmTotpEnrollment { .. } => "ConfirmTotpEnrollment",
            UserCommand::DisableTwoFactor => "DisableTwoFactor",
            UserCommand::ResetTwoFactor { .. } => "ResetTwoFactor",
            UserCommand::RevokeRememberedDevices => "RevokeRememberedDevices",
            UserCommand::EnforceTwoFactor { .. } => "EnforceTwoFactor",
            UserCommand::LiftTwoFactorEnforcement { .. } => "LiftTwoFactorEnforcement",
            UserCommand::StartImpersonation { .. } => "StartImpersonation",
            UserCommand::EndImpersonation { .. } => "EndImpersonation",
        }
    }
}
