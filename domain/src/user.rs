//! The user aggregate: one account's sign-in and 2FA history.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

use crate::command::{NewDevice, NewSession, PasswordCheck, TwoFactorOffProof, UserCommand};
use crate::error::UserError;
use crate::event::{ImpersonationRevocation, UserEvent};
use crate::passkey::{
    passkey_name, Passkey, PasskeyCeremony, PasskeyRefusal, PendingPasskeyRegistration,
    VerifiedAssertion, VerifiedRegistration,
};
use crate::policy::{self, TwoFactorPolicy};
use crate::sealed::CodeKey;
use crate::totp::{normalize_code, TotpParameters, TotpSecret, UnsealedTotp};
use crate::values::{
    AuthenticatedBy, Email, EmailRefusal, PasswordHash, Role, SecondFactorMethod, TokenHash,
    TwoFactorStatus, Username,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub id: Uuid,
    pub username: Username,
    pub email: Option<Email>,
    pub role: Role,
    pub password_hash: PasswordHash,
    pub registered_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActiveTotp {
    pub enrollment_id: Uuid,
    pub parameters: TotpParameters,
    pub enabled_at: DateTime<Utc>,
    /// Highest time step ever accepted for this enrollment: replay guard.
    pub last_accepted_step: u64,
}

impl ActiveTotp {
    /// `unsealed`'s secret when it is this enrollment's; a secret unsealed
    /// before a re-enrollment is refused rather than checked.
    fn secret<'a>(
        &self,
        unsealed: Option<&'a UnsealedTotp>,
    ) -> Result<Option<&'a TotpSecret>, UserError> {
        match unsealed {
            Some(unsealed) if unsealed.enrollment_id != self.enrollment_id => {
                Err(UserError::MethodUnavailable)
            }
            unsealed => Ok(unsealed.map(|unsealed| &unsealed.secret)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingTotp {
    pub enrollment_id: Uuid,
    pub parameters: TotpParameters,
    pub attempts_remaining: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Challenge {
    id: Uuid,
    methods: Vec<SecondFactorMethod>,
    expires_at: DateTime<Utc>,
    attempts_remaining: u32,
    email_code: Option<EmailCode>,
    /// An email code was refused for this challenge (no usable address):
    /// recorded once, not once per request.
    #[serde(default)]
    email_refused: bool,
    /// The passkey options handed out for this challenge (the library's
    /// state, with its single-use challenge); spent by any answer.
    #[serde(default)]
    passkey_ceremony: Option<crate::passkey::CeremonyState>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct EmailCode {
    hash: TokenHash,
    expires_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct FactorBudget {
    consecutive_failures: u32,
    locked_until: Option<DateTime<Utc>>,
    suspended: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RememberedDevice {
    pub id: Uuid,
    token_hash: TokenHash,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub user_agent: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Impersonation {
    id: Uuid,
    session_id: Uuid,
    expires_at: DateTime<Utc>,
}

/// State is only what the rules need; everything else lives in read models.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    profile: Option<Profile>,
    password_failures: u32,
    password_locked_until: Option<DateTime<Utc>>,
    /// When the password last changed (known for changes recorded since
    /// the time was kept in the event).
    password_changed_at: Option<DateTime<Utc>>,
    enforced: bool,
    totp: Option<ActiveTotp>,
    pending_totp: Option<PendingTotp>,
    /// Index-stable: a spent code leaves `None` behind.
    recovery_codes: Vec<Option<TokenHash>>,
    budgets: BTreeMap<SecondFactorMethod, FactorBudget>,
    challenges: Vec<Challenge>,
    devices: Vec<RememberedDevice>,
    impersonations: Vec<Impersonation>,
    /// When recent email codes were sent (the rate limit's window).
    email_codes_sent: Vec<DateTime<Utc>>,
    #[serde(default)]
    passkeys: Vec<Passkey>,
    #[serde(default)]
    pending_passkeys: Vec<PendingPasskeyRegistration>,
}

impl User {
    pub fn profile(&self) -> Option<&Profile> {
        self.profile.as_ref()
    }

    pub fn is_enforced(&self) -> bool {
        self.enforced
    }

    pub fn active_totp(&self) -> Option<&ActiveTotp> {
        self.totp.as_ref()
    }

    pub fn pending_totp(&self) -> Option<&PendingTotp> {
        self.pending_totp.as_ref()
    }

    pub fn two_factor_status(&self) -> TwoFactorStatus {
        if self.has_second_factor() {
            return TwoFactorStatus::Enabled;
        }
        match &self.pending_totp {
            Some(_) => TwoFactorStatus::Pending,
            None => TwoFactorStatus::Disabled,
        }
    }

    /// An authenticator app or a passkey: 2FA is on.
    pub fn has_second_factor(&self) -> bool {
        self.totp.is_some() || !self.passkeys.is_empty()
    }

    /// Since when 2FA has been on: the authenticator app's confirmation,
    /// else the oldest passkey's registration.
    pub fn two_factor_enabled_at(&self) -> Option<DateTime<Utc>> {
        self.totp
            .as_ref()
            .map(|totp| totp.enabled_at)
            .or_else(|| self.passkeys.iter().map(|p| p.created_at).min())
    }

    pub fn passkeys(&self) -> &[Passkey] {
        &self.passkeys
    }

    pub fn passkey_by_credential(&self, credential_id: &str) -> Option<&Passkey> {
        self.passkeys
            .iter()
            .find(|p| p.credential_id == credential_id)
    }

    /// An unfinished passkey registration (expired or not).
    pub fn pending_passkey_registration(
        &self,
        registration_id: Uuid,
    ) -> Option<&PendingPasskeyRegistration> {
        self.pending_passkeys
            .iter()
            .find(|p| p.id == registration_id)
    }

    /// The passkey options handed out for an open challenge, if any.
    pub fn passkey_assertion_state(
        &self,
        challenge_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<&crate::passkey::CeremonyState>, UserError> {
        Ok(self
            .open_challenge(challenge_id, at)?
            .passkey_ceremony
            .as_ref())
    }

    pub fn must_have_two_factor(&self, policy: &TwoFactorPolicy, at: DateTime<Utc>) -> bool {
        self.enforced || policy.mandatory_at(at)
    }

    pub fn recovery_codes_remaining(&self) -> usize {
        self.recovery_codes.iter().flatten().count()
    }

    /// While locked, a right password gets the same answer as a wrong one.
    pub fn password_locked_until(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.password_locked_until.filter(|until| *until > at)
    }

    pub fn remembered_devices(&self, at: DateTime<Utc>) -> impl Iterator<Item = &RememberedDevice> {
        self.devices
            .iter()
            .filter(move |device| device.expires_at > at)
    }

    /// The methods a new challenge offers now: the enrolled factors that are
    /// neither suspended nor backing off.
    fn challenge_methods(&self, email_offered: bool, at: DateTime<Utc>) -> Vec<SecondFactorMethod> {
        let mut methods = Vec::new();
        if self.totp.is_some() {
            methods.push(SecondFactorMethod::Totp);
            let has_address = self.profile.as_ref().is_some_and(|p| p.email.is_some());
            if email_offered && has_address {
                methods.push(SecondFactorMethod::Email);
            }
            if self.recovery_codes_remaining() > 0 {
                methods.push(SecondFactorMethod::RecoveryCode);
            }
        }
        if !self.passkeys.is_empty() {
            methods.push(SecondFactorMethod::Passkey);
        }
        methods.retain(|method| self.factor_lock(*method, at).is_none());
        methods
    }

    /// `Some(None)`: suspended until an administrator acts; `Some(Some(t))`: backing off until t.
    fn factor_lock(
        &self,
        method: SecondFactorMethod,
        at: DateTime<Utc>,
    ) -> Option<Option<DateTime<Utc>>> {
        let budget = self.budgets.get(&method)?;
        if budget.suspended {
            return Some(None);
        }
        budget.locked_until.filter(|until| *until > at).map(Some)
    }

    fn open_challenge(
        &self,
        challenge_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<&Challenge, UserError> {
        let challenge = self
            .challenges
            .iter()
            .find(|c| c.id == challenge_id)
            .ok_or(UserError::ChallengeNotFound)?;
        if at >= challenge.expires_at {
            return Err(UserError::ChallengeExpired);
        }
        if challenge.attempts_remaining == 0 {
            return Err(UserError::ChallengeLocked);
        }
        Ok(challenge)
    }

    /// Whether an email code may be sent for this challenge now, ahead of
    /// delivering it: the same checks `SendEmailCode` makes, minus the address.
    pub fn email_code_allowed(
        &self,
        challenge_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<(), UserError> {
        self.open_challenge(challenge_id, at)?;
        if let Some(until) = self.factor_lock(SecondFactorMethod::Email, at) {
            return Err(UserError::AccountLocked { until });
        }
        let window_start = at - policy::email_code_window();
        let mut recent = self
            .email_codes_sent
            .iter()
            .filter(|sent| **sent > window_start);
        if let Some(oldest) = recent.clone().min() {
            if recent.by_ref().count() >= policy::EMAIL_CODES_PER_WINDOW {
                return Err(UserError::TooManyEmailCodes {
                    retry_at: *oldest + policy::email_code_window(),
                });
            }
        }
        Ok(())
    }

    /// Whether an administrator (this user) may go on acting as a user of
    /// `target_role` in a "Login as" session started at `started_at`: as
    /// long as "Login as" would still be allowed now, the administrator's
    /// account is not locked and its password has not changed since.
    pub fn may_go_on_impersonating(
        &self,
        target_role: Role,
        started_at: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<(), ImpersonationRevocation> {
        let role = self.profile.as_ref().map(|p| p.role);
        if !role.is_some_and(|role| role.may_impersonate(target_role)) {
            return Err(ImpersonationRevocation::RoleChanged);
        }
        if self.password_locked_until(at).is_some() {
            return Err(ImpersonationRevocation::ImpersonatorLocked);
        }
        if self
            .password_changed_at
            .is_some_and(|changed| changed > started_at)
        {
            return Err(ImpersonationRevocation::ImpersonatorPasswordChanged);
        }
        Ok(())
    }

    /// The password check is honoured only against the hash it was made
    /// with; while the password is locked nothing is checked at all.
    fn checked_password(
        &self,
        check: &PasswordCheck,
        at: DateTime<Utc>,
    ) -> Result<bool, UserError> {
        if let Some(until) = self.password_locked_until(at) {
            return Err(UserError::AccountLocked { until: Some(until) });
        }
        if self.registered()?.password_hash != check.against {
            return Err(UserError::StalePasswordCheck);
        }
        Ok(check.matches)
    }

    fn password_rejected(&self, at: DateTime<Utc>) -> UserEvent {
        let consecutive_failures = self.password_failures.saturating_add(1);
        UserEvent::PasswordRejected {
            consecutive_failures,
            locked_until: policy::password_lock(consecutive_failures, at),
        }
    }

    fn registered(&self) -> Result<&Profile, UserError> {
        self.profile.as_ref().ok_or(UserError::NotRegistered)
    }

    fn session_started(
        session: NewSession,
        authenticated_by: AuthenticatedBy,
        at: DateTime<Utc>,
    ) -> UserEvent {
        UserEvent::SessionStarted {
            session_id: session.session_id,
            token_hash: session.token_hash,
            authenticated_by,
            started_at: at,
            expires_at: session.expires_at,
            enrollment_required: false,
            impersonator_id: None,
            device_id: None,
        }
    }

    /// The rules: given this state, what happens when `command` is asked.
    pub fn decide(&self, command: UserCommand) -> Result<Vec<UserEvent>, UserError> {
        use UserCommand::*;
        if self.profile.is_none() && !matches!(command, RegisterUser { .. }) {
            return Err(UserError::NotRegistered);
        }
        match command {
            RegisterUser {
                user_id,
                username,
                email,
                role,
                password_hash,
                at,
            } => {
                if self.profile.is_some() {
                    return Err(UserError::AlreadyRegistered);
                }
                Ok(vec![UserEvent::UserRegistered {
                    user_id,
                    username,
                    email,
                    role,
                    password_hash,
                    registered_at: at,
                }])
            }
            ChangeEmail { email } => {
                let unchanged = self.registered()?.email == email;
                Ok(if unchanged {
                    vec![]
                } else {
                    vec![UserEvent::EmailChanged { email }]
                })
            }
            UpdateProfile {
                email,
                role,
                enforce_two_factor,
                reason,
            } => {
                let parts = [
                    email.map(|email| ChangeEmail { email }),
                    role.map(|role| ChangeRole { role }),
                    enforce_two_factor.map(|enforce| {
                        if enforce {
                            EnforceTwoFactor {
                                reason: reason.clone(),
                            }
                        } else {
                            LiftTwoFactorEnforcement {
                                reason: reason.clone(),
                            }
                        }
                    }),
                ];
                // Each part decided on the state the parts before it leave.
                let mut state = self.clone();
                let mut events = Vec::new();
                for part in parts.into_iter().flatten() {
                    for event in state.decide(part)? {
                        state.apply_event(event.clone());
                        events.push(event);
                    }
                }
                Ok(events)
            }
            ChangeRole { role } => {
                let unchanged = self.registered()?.role == role;
                Ok(if unchanged {
                    vec![]
                } else {
                    vec![UserEvent::RoleChanged { role }]
                })
            }
            ChangePassword {
                current,
                password_hash,
                kept_session_id,
                at,
            } => Ok(vec![if self.checked_password(&current, at)? {
                UserEvent::PasswordChanged {
                    password_hash,
                    kept_session_id: Some(kept_session_id),
                    changed_at: Some(at),
                }
            } else {
                self.password_rejected(at)
            }]),
            SignIn {
                password,
                device_token,
                email_offered,
                session,
                challenge_id,
                policy,
                at,
            } => self.sign_in(
                password,
                device_token,
                email_offered,
                session,
                challenge_id,
                policy,
                at,
            ),
            VerifySecondFactor {
                challenge_id,
                method,
                code,
                totp_secret,
                code_key,
                session,
                remember_device,
                at,
            } => self.verify_second_factor(
                challenge_id,
                method,
                &code,
                (totp_secret.as_ref(), &code_key),
                session,
                remember_device,
                at,
            ),
            SendEmailCode {
                challenge_id,
                code_hash,
                address_shared,
                at,
            } => {
                self.email_code_allowed(challenge_id, at)?;
                let refusal = match &self.registered()?.email {
                    None => Some(EmailRefusal::Missing),
                    Some(_) if address_shared => Some(EmailRefusal::Shared),
                    Some(_) => None,
                };
                let refused_before = self
                    .challenges
                    .iter()
                    .any(|c| c.id == challenge_id && c.email_refused);
                if refusal.is_some() && refused_before {
                    return Err(UserError::EmailUnavailable);
                }
                Ok(vec![match (refusal, &self.registered()?.email) {
                    (None, Some(email)) => UserEvent::EmailCodeSent {
                        challenge_id,
                        code_hash,
                        sent_to: email.masked(),
                        sent_at: at,
                        expires_at: at + policy::email_code_lifetime(),
                    },
                    (reason, _) => UserEvent::EmailCodeRefused {
                        challenge_id,
                        reason: reason.unwrap_or(EmailRefusal::Missing),
                    },
                }])
            }
            RecordEmailCodeUndelivered { challenge_id } => {
                let pending = self
                    .challenges
                    .iter()
                    .any(|c| c.id == challenge_id && c.email_code.is_some());
                Ok(if pending {
                    vec![UserEvent::EmailCodeUndelivered { challenge_id }]
                } else {
                    vec![]
                })
            }
            SignOut { session_id } => Ok(vec![UserEvent::SessionEnded { session_id }]),
            StartTotpEnrollment {
                enrollment_id,
                parameters,
            } => {
                if self.totp.is_some() {
                    return Err(UserError::TwoFactorAlreadyEnabled);
                }
                Ok(vec![UserEvent::TotpEnrollmentStarted {
                    enrollment_id,
                    parameters,
                }])
            }
            ConfirmTotpEnrollment {
                code,
                secret,
                recovery_code_hashes,
                at,
            } => self.confirm_totp_enrollment(&code, &secret, recovery_code_hashes, at),
            DisableTwoFactor { proof, at } => self.disable_two_factor(proof, at),
            ResetTwoFactor { reason } => {
                let reason = required_reason(reason)?;
                Ok(vec![UserEvent::TwoFactorReset { reason }])
            }
            RevokeRememberedDevices => Ok(if self.devices.is_empty() {
                vec![]
            } else {
                vec![UserEvent::RememberedDevicesRevoked]
            }),
            EnforceTwoFactor { reason } => Ok(if self.enforced {
                vec![]
            } else {
                vec![UserEvent::TwoFactorEnforced { reason }]
            }),
            LiftTwoFactorEnforcement { reason } => Ok(if self.enforced {
                vec![UserEvent::TwoFactorEnforcementLifted { reason }]
            } else {
                vec![]
            }),
            StartImpersonation {
                impersonation_id,
                impersonator_id,
                impersonator_role,
                reason,
                ticket,
                session,
                at,
            } => {
                let target = self.registered()?;
                if impersonator_id == target.id || !impersonator_role.may_impersonate(target.role) {
                    return Err(UserError::ImpersonationForbidden);
                }
                let reason = required_reason(reason)?;
                let expires_at = session
                    .expires_at
                    .min(at + policy::impersonation_lifetime());
                Ok(vec![
                    UserEvent::ImpersonationStarted {
                        impersonation_id,
                        impersonator_id,
                        session_id: session.session_id,
                        reason,
                        ticket: ticket.filter(|t| !t.trim().is_empty()),
                        expires_at,
                    },
                    UserEvent::SessionStarted {
                        session_id: session.session_id,
                        token_hash: session.token_hash,
                        authenticated_by: AuthenticatedBy::Impersonation,
                        started_at: at,
                        expires_at,
                        enrollment_required: false,
                        impersonator_id: Some(impersonator_id),
                        device_id: None,
                    },
                ])
            }
            EndImpersonation {
                session_id,
                revoked,
            } => {
                let impersonation = self
                    .impersonations
                    .iter()
                    .find(|i| i.session_id == session_id)
                    .ok_or(UserError::SessionNotFound)?;
                Ok(vec![UserEvent::ImpersonationEnded {
                    impersonation_id: impersonation.id,
                    session_id,
                    revoked,
                }])
            }
            StartPasskeyRegistration {
                registration_id,
                ceremony_secret,
                at,
            } => {
                if self.passkeys.len() >= policy::PASSKEYS_PER_USER {
                    return Err(UserError::TooManyPasskeys);
                }
                Ok(vec![UserEvent::PasskeyRegistrationStarted {
                    registration_id,
                    ceremony_secret,
                    expires_at: at + policy::passkey_registration_lifetime(),
                }])
            }
            FinishPasskeyRegistration {
                registration_id,
                passkey_id,
                name,
                verdict,
                at,
            } => self.finish_passkey_registration(registration_id, passkey_id, &name, verdict, at),
            RenamePasskey { passkey_id, name } => {
                let passkey = self.passkey(passkey_id)?;
                let name = passkey_name(&name)?;
                Ok(if passkey.name == name {
                    vec![]
                } else {
                    vec![UserEvent::PasskeyRenamed { passkey_id, name }]
                })
            }
            RemovePasskey {
                passkey_id,
                policy,
                at,
            } => {
                let passkey = self.passkey(passkey_id)?;
                let last_factor = self.totp.is_none() && self.passkeys.len() == 1;
                if last_factor && self.must_have_two_factor(&policy, at) {
                    return Err(UserError::TwoFactorEnforced);
                }
                Ok(vec![UserEvent::PasskeyRemoved {
                    passkey_id,
                    credential_id: passkey.credential_id.clone(),
                }])
            }
            StartPasskeyAssertion {
                challenge_id,
                ceremony_secret,
                at,
            } => {
                let challenge = self.open_challenge(challenge_id, at)?;
                if !challenge.methods.contains(&SecondFactorMethod::Passkey) {
                    return Err(UserError::MethodUnavailable);
                }
                if let Some(until) = self.factor_lock(SecondFactorMethod::Passkey, at) {
                    return Err(UserError::AccountLocked { until });
                }
                Ok(vec![UserEvent::PasskeyAssertionStarted {
                    challenge_id,
                    ceremony_secret,
                }])
            }
            VerifyPasskey {
                challenge_id,
                verdict,
                session,
                remember_device,
                at,
            } => self.verify_passkey(challenge_id, verdict, session, remember_device, at),
            SignInWithPasskey {
                verdict,
                session,
                at,
            } => self.sign_in_with_passkey(verdict, session, at),
        }
    }

    fn passkey(&self, passkey_id: Uuid) -> Result<&Passkey, UserError> {
        self.passkeys
            .iter()
            .find(|p| p.id == passkey_id)
            .ok_or(UserError::PasskeyNotFound)
    }

    fn finish_passkey_registration(
        &self,
        registration_id: Uuid,
        passkey_id: Uuid,
        name: &str,
        verdict: Result<VerifiedRegistration, PasskeyRefusal>,
        at: DateTime<Utc>,
    ) -> Result<Vec<UserEvent>, UserError> {
        let pending = self
            .pending_passkey_registration(registration_id)
            .ok_or(UserError::PasskeyRegistrationNotFound)?;
        if at >= pending.expires_at {
            return Err(UserError::PasskeyRegistrationExpired);
        }
        let name = passkey_name(name)?;
        let verified = match verdict {
            Ok(verified) => verified,
            Err(reason) => {
                return Ok(vec![UserEvent::PasskeyRejected {
                    ceremony: PasskeyCeremony::Registration,
                    reason,
                    registration_id: Some(registration_id),
                    passkey_id: None,
                    consecutive_failures: None,
                    locked_until: None,
                }])
            }
        };
        if self
            .passkey_by_credential(&verified.credential_id)
            .is_some()
        {
            return Err(UserError::PasskeyAlreadyRegistered);
        }
        if self.passkeys.len() >= policy::PASSKEYS_PER_USER {
            return Err(UserError::TooManyPasskeys);
        }
        Ok(vec![UserEvent::PasskeyRegistered {
            passkey_id,
            registration_id,
            name,
            credential_id: verified.credential_id,
            credential: verified.credential,
            counter: verified.counter,
            user_verified: verified.user_verified,
            attestation_format: verified.attestation_format,
            registered_at: at,
        }])
    }

    /// Which passkey signed, or why the assertion is refused: an unknown
    /// credential, a counter that went backwards (recorded as such), or
    /// what the library found.
    fn judge_assertion(
        &self,
        verdict: Result<VerifiedAssertion, PasskeyRefusal>,
        ceremony: PasskeyCeremony,
    ) -> (
        Result<(&Passkey, VerifiedAssertion), PasskeyRefusal>,
        Vec<UserEvent>,
    ) {
        let assertion = match verdict {
            Ok(assertion) => assertion,
            Err(reason) => return (Err(reason), vec![]),
        };
        let Some(passkey) = self.passkey_by_credential(&assertion.credential_id) else {
            return (Err(PasskeyRefusal::UnknownCredential), vec![]);
        };
        if passkey.counter_goes_backwards(assertion.counter) {
            let regressed = UserEvent::PasskeyCounterRegressed {
                passkey_id: passkey.id,
                ceremony,
                stored_counter: passkey.counter,
                asserted_counter: assertion.counter,
            };
            return (Err(PasskeyRefusal::PossibleClone), vec![regressed]);
        }
        (Ok((passkey, assertion)), vec![])
    }

    fn verify_passkey(
        &self,
        challenge_id: Uuid,
        verdict: Result<VerifiedAssertion, PasskeyRefusal>,
        session: NewSession,
        remember_device: Option<NewDevice>,
        at: DateTime<Utc>,
    ) -> Result<Vec<UserEvent>, UserError> {
        let method = SecondFactorMethod::Passkey;
        let challenge = self.open_challenge(challenge_id, at)?;
        if !challenge.methods.contains(&method) || challenge.passkey_ceremony.is_none() {
            return Err(UserError::MethodUnavailable);
        }
        if let Some(until) = self.factor_lock(method, at) {
            return Err(UserError::AccountLocked { until });
        }
        let (judged, mut events) = self.judge_assertion(verdict, PasskeyCeremony::SecondFactor);
        match judged {
            Ok((passkey, assertion)) => {
                events.extend([
                    UserEvent::SecondFactorAccepted {
                        challenge_id,
                        method,
                        totp_step: None,
                        recovery_code_index: None,
                    },
                    UserEvent::PasskeyUsed {
                        passkey_id: passkey.id,
                        ceremony: PasskeyCeremony::SecondFactor,
                        counter: assertion.counter,
                        user_verified: assertion.user_verified,
                        used_at: at,
                    },
                    Self::session_started(session, AuthenticatedBy::Passkey, at),
                ]);
                if let Some(device) = remember_device {
                    events.push(UserEvent::DeviceRemembered {
                        device_id: device.device_id,
                        token_hash: device.token_hash,
                        remembered_at: at,
                        expires_at: device.expires_at,
                        user_agent: device.user_agent,
                    });
                }
            }
            Err(reason) => {
                let consecutive_failures = self
                    .budgets
                    .get(&method)
                    .map_or(0, |b| b.consecutive_failures)
                    .saturating_add(1);
                events.extend([
                    UserEvent::PasskeyRejected {
                        ceremony: PasskeyCeremony::SecondFactor,
                        reason,
                        registration_id: None,
                        passkey_id: None,
                        consecutive_failures: None,
                        locked_until: None,
                    },
                    UserEvent::SecondFactorRejected {
                        challenge_id,
                        method,
                        attempts_remaining: challenge.attempts_remaining.saturating_sub(1),
                        consecutive_failures,
                        locked_until: policy::second_factor_lock(consecutive_failures, at),
                    },
                ]);
                if consecutive_failures == policy::SECOND_FACTOR_FAILURES_BEFORE_SUSPENSION {
                    events.push(UserEvent::SecondFactorSuspended {
                        method,
                        consecutive_failures,
                    });
                }
            }
        }
        Ok(events)
    }

    fn sign_in_with_passkey(
        &self,
        verdict: Result<VerifiedAssertion, PasskeyRefusal>,
        session: NewSession,
        at: DateTime<Utc>,
    ) -> Result<Vec<UserEvent>, UserError> {
        if let Some(until) = self.password_locked_until(at) {
            return Err(UserError::AccountLocked { until: Some(until) });
        }
        let verdict = verdict.and_then(|assertion| {
            if assertion.user_verified {
                Ok(assertion)
            } else {
                Err(PasskeyRefusal::UserNotVerified)
            }
        });
        let (judged, mut events) = self.judge_assertion(verdict, PasskeyCeremony::SignIn);
        match judged {
            Ok((passkey, assertion)) => events.extend([
                UserEvent::PasskeyUsed {
                    passkey_id: passkey.id,
                    ceremony: PasskeyCeremony::SignIn,
                    counter: assertion.counter,
                    user_verified: assertion.user_verified,
                    used_at: at,
                },
                Self::session_started(session, AuthenticatedBy::Passkey, at),
            ]),
            Err(reason) => {
                let consecutive_failures = self.password_failures.saturating_add(1);
                events.push(UserEvent::PasskeyRejected {
                    ceremony: PasskeyCeremony::SignIn,
                    reason,
                    registration_id: None,
                    passkey_id: None,
                    consecutive_failures: Some(consecutive_failures),
                    locked_until: policy::password_lock(consecutive_failures, at),
                });
            }
        }
        Ok(events)
    }

    #[allow(clippy::too_many_arguments)]
    fn sign_in(
        &self,
        password: PasswordCheck,
        device_token: Option<TokenHash>,
        email_offered: bool,
        session: NewSession,
        challenge_id: Uuid,
        policy: TwoFactorPolicy,
        at: DateTime<Utc>,
    ) -> Result<Vec<UserEvent>, UserError> {
        if let Some(until) = self.password_locked_until(at) {
            return Err(UserError::AccountLocked { until: Some(until) });
        }
        let remembered = device_token.and_then(|token| {
            self.remembered_devices(at)
                .find(|device| device.token_hash == token)
        });
        // Every factor backing off or suspended: refused before the password
        // is looked at, so the answer does not tell whether it was right.
        if self.has_second_factor() && remembered.is_none() {
            let methods = self.challenge_methods(email_offered, at);
            if methods.is_empty() {
                let until = SecondFactorMethod::ALL
                    .into_iter()
                    .filter_map(|method| self.factor_lock(method, at).flatten())
                    .min();
                return Err(UserError::AccountLocked { until });
            }
        }
        if !self.checked_password(&password, at)? {
            return Ok(vec![self.password_rejected(at)]);
        }
        if !self.has_second_factor() {
            let mut started = Self::session_started(session, AuthenticatedBy::Password, at);
            if let UserEvent::SessionStarted {
                enrollment_required,
                ..
            } = &mut started
            {
                *enrollment_required = self.must_have_two_factor(&policy, at);
            }
            return Ok(vec![started]);
        }
        if let Some(device) = remembered {
            let mut started = Self::session_started(session, AuthenticatedBy::RememberedDevice, at);
            if let UserEvent::SessionStarted { device_id, .. } = &mut started {
                *device_id = Some(device.id);
            }
            return Ok(vec![started]);
        }
        let methods = self.challenge_methods(email_offered, at);
        Ok(vec![UserEvent::ChallengeIssued {
            challenge_id,
            methods,
            expires_at: at + policy::challenge_lifetime(),
        }])
    }

    #[allow(clippy::too_many_arguments)]
    fn verify_second_factor(
        &self,
        challenge_id: Uuid,
        method: SecondFactorMethod,
        code: &str,
        (totp_secret, code_key): (Option<&UnsealedTotp>, &CodeKey),
        session: NewSession,
        remember_device: Option<NewDevice>,
        at: DateTime<Utc>,
    ) -> Result<Vec<UserEvent>, UserError> {
        let challenge = self.open_challenge(challenge_id, at)?;
        // Email is usable once a code was sent, even if the address only
        // became unique after the challenge was issued.
        let available = match method {
            SecondFactorMethod::Email => challenge.email_code.is_some(),
            _ => challenge.methods.contains(&method),
        };
        if !available {
            return Err(UserError::MethodUnavailable);
        }
        if let Some(until) = self.factor_lock(method, at) {
            return Err(UserError::AccountLocked { until });
        }
        let mut events = Vec::new();
        let accepted = match method {
            SecondFactorMethod::Totp => {
                let totp = self.totp.as_ref().ok_or(UserError::MethodUnavailable)?;
                let secret = totp
                    .secret(totp_secret)?
                    .ok_or(UserError::MethodUnavailable)?;
                let step = normalize_code(code, totp.parameters.digits)
                    .ok()
                    .and_then(|code| {
                        totp.parameters
                            .matching_step(secret, &code, unix_seconds(at))
                    });
                match step {
                    Some(step) if step > totp.last_accepted_step => Some((Some(step), None)),
                    Some(step) => {
                        events.push(UserEvent::TotpCodeReplayed { challenge_id, step });
                        None
                    }
                    None => None,
                }
            }
            SecondFactorMethod::RecoveryCode => {
                let hash = TokenHash::of(&normalize_recovery_code(code));
                self.recovery_codes
                    .iter()
                    .position(|stored| stored.as_ref() == Some(&hash))
                    .map(|index| (None, Some(index)))
            }
            SecondFactorMethod::Email => challenge
                .email_code
                .as_ref()
                .filter(|sent| at < sent.expires_at)
                .filter(|sent| {
                    normalize_code(code, 6).is_ok_and(|code| {
                        email_code_hash(code_key, challenge_id, &code) == sent.hash
                    })
                })
                .map(|_| (None, None)),
            // A passkey answers with a signature, not a code: `VerifyPasskey`.
            SecondFactorMethod::Passkey => return Err(UserError::MethodUnavailable),
        };
        match accepted {
            Some((totp_step, recovery_code_index)) => {
                events.push(UserEvent::SecondFactorAccepted {
                    challenge_id,
                    method,
                    totp_step,
                    recovery_code_index,
                });
                events.push(Self::session_started(session, method.into(), at));
                if let Some(device) = remember_device {
                    events.push(UserEvent::DeviceRemembered {
                        device_id: device.device_id,
                        token_hash: device.token_hash,
                        remembered_at: at,
                        expires_at: device.expires_at,
                        user_agent: device.user_agent,
                    });
                }
            }
            None => {
                let consecutive_failures = self
                    .budgets
                    .get(&method)
                    .map_or(0, |b| b.consecutive_failures)
                    .saturating_add(1);
                events.push(UserEvent::SecondFactorRejected {
                    challenge_id,
                    method,
                    attempts_remaining: challenge.attempts_remaining - 1,
                    consecutive_failures,
                    locked_until: policy::second_factor_lock(consecutive_failures, at),
                });
                if consecutive_failures == policy::SECOND_FACTOR_FAILURES_BEFORE_SUSPENSION {
                    events.push(UserEvent::SecondFactorSuspended {
                        method,
                        consecutive_failures,
                    });
                }
            }
        }
        Ok(events)
    }

    fn disable_two_factor(
        &self,
        proof: TwoFactorOffProof,
        at: DateTime<Utc>,
    ) -> Result<Vec<UserEvent>, UserError> {
        if self.enforced {
            return Err(UserError::TwoFactorEnforced);
        }
        match proof {
            TwoFactorOffProof::Impersonation { session_id } => {
                let acting = self
                    .impersonations
                    .iter()
                    .any(|i| i.session_id == session_id && i.expires_at > at);
                if !acting {
                    return Err(UserError::ReauthenticationRequired);
                }
            }
            TwoFactorOffProof::Reauthenticated {
                password,
                code,
                totp_secret,
                passkey_signed_in_at,
            } => {
                if !self.checked_password(&password, at)? {
                    return Ok(vec![self.password_rejected(at)]);
                }
                if let Some(totp) = &self.totp {
                    let code = code.ok_or(UserError::ReauthenticationRequired)?;
                    let rejected = self.fresh_code(totp, &code, totp_secret.as_ref(), at)?;
                    if !rejected.is_empty() {
                        return Ok(rejected);
                    }
                } else if !self.passkeys.is_empty() {
                    let fresh = passkey_signed_in_at.is_some_and(|signed_in| {
                        signed_in <= at
                            && at - signed_in <= policy::passkey_reauthentication_window()
                    });
                    if !fresh {
                        return Ok(self.reauthentication_rejected(SecondFactorMethod::Passkey, at));
                    }
                }
            }
        }
        let nothing_to_disable = self.totp.is_none()
            && self.pending_totp.is_none()
            && self.devices.is_empty()
            && self.passkeys.is_empty()
            && self.pending_passkeys.is_empty();
        Ok(if nothing_to_disable {
            vec![]
        } else {
            vec![UserEvent::TwoFactorDisabled]
        })
    }

    /// A fresh second factor refused outside a sign-in, counted toward the
    /// factor's back-off as a sign-in's wrong codes are.
    fn reauthentication_rejected(
        &self,
        method: SecondFactorMethod,
        at: DateTime<Utc>,
    ) -> Vec<UserEvent> {
        let consecutive_failures = self
            .budgets
            .get(&method)
            .map_or(0, |b| b.consecutive_failures)
            .saturating_add(1);
        let mut events = vec![UserEvent::ReauthenticationCodeRejected {
            method,
            consecutive_failures,
            locked_until: policy::second_factor_lock(consecutive_failures, at),
        }];
        if consecutive_failures == policy::SECOND_FACTOR_FAILURES_BEFORE_SUSPENSION {
            events.push(UserEvent::SecondFactorSuspended {
                method,
                consecutive_failures,
            });
        }
        events
    }

    /// Checks a fresh second factor asked for outside a sign-in: a TOTP code
    /// (a step above every accepted one) or an unspent recovery code. Gives
    /// the rejection's events, counted toward the factor's back-off as a
    /// sign-in's wrong codes are; none when the code is right.
    fn fresh_code(
        &self,
        totp: &ActiveTotp,
        code: &str,
        secret: Option<&UnsealedTotp>,
        at: DateTime<Utc>,
    ) -> Result<Vec<UserEvent>, UserError> {
        let secret = totp.secret(secret)?;
        let digits = normalize_code(code, totp.parameters.digits).ok();
        let method = if digits.is_some() {
            SecondFactorMethod::Totp
        } else {
            SecondFactorMethod::RecoveryCode
        };
        if let Some(until) = self.factor_lock(method, at) {
            return Err(UserError::AccountLocked { until });
        }
        let accepted = match (digits, secret) {
            (Some(digits), Some(secret)) => totp
                .parameters
                .matching_step(secret, &digits, unix_seconds(at))
                .is_some_and(|step| step > totp.last_accepted_step),
            (Some(_), None) => false,
            (None, _) => {
                let hash = TokenHash::of(&normalize_recovery_code(code));
                self.recovery_codes
                    .iter()
                    .any(|stored| stored.as_ref() == Some(&hash))
            }
        };
        if accepted {
            return Ok(vec![]);
        }
        let consecutive_failures = self
            .budgets
            .get(&method)
            .map_or(0, |b| b.consecutive_failures)
            .saturating_add(1);
        let mut events = vec![UserEvent::ReauthenticationCodeRejected {
            method,
            consecutive_failures,
            locked_until: policy::second_factor_lock(consecutive_failures, at),
        }];
        if consecutive_failures == policy::SECOND_FACTOR_FAILURES_BEFORE_SUSPENSION {
            events.push(UserEvent::SecondFactorSuspended {
                method,
                consecutive_failures,
            });
        }
        Ok(events)
    }

    fn confirm_totp_enrollment(
        &self,
        code: &str,
        secret: &TotpSecret,
        recovery_code_hashes: Vec<TokenHash>,
        at: DateTime<Utc>,
    ) -> Result<Vec<UserEvent>, UserError> {
        let pending = self
            .pending_totp
            .as_ref()
            .ok_or(UserError::NoPendingEnrollment)?;
        let step = normalize_code(code, pending.parameters.digits)
            .ok()
            .and_then(|code| {
                pending
                    .parameters
                    .matching_step(secret, &code, unix_seconds(at))
            });
        Ok(vec![match step {
            Some(accepted_step) => UserEvent::TotpEnrollmentConfirmed {
                enrollment_id: pending.enrollment_id,
                accepted_step,
                recovery_code_hashes,
                enabled_at: at,
            },
            None => UserEvent::TotpEnrollmentCodeRejected {
                enrollment_id: pending.enrollment_id,
                attempts_remaining: pending.attempts_remaining.saturating_sub(1),
            },
        }])
    }

    /// Assigns what an event says; never decides anything.
    fn apply_event(&mut self, event: UserEvent) {
        use UserEvent::*;
        match event {
            UserRegistered {
                user_id,
                username,
                email,
                role,
                password_hash,
                registered_at,
            } => {
                self.profile = Some(Profile {
                    id: user_id,
                    username,
                    email,
                    role,
                    password_hash,
                    registered_at,
                })
            }
            EmailChanged { email } => {
                if let Some(profile) = &mut self.profile {
                    profile.email = email;
                }
            }
            RoleChanged { role } => {
                if let Some(profile) = &mut self.profile {
                    profile.role = role;
                }
            }
            PasswordChanged {
                password_hash,
                changed_at,
                ..
            } => {
                if let Some(profile) = &mut self.profile {
                    profile.password_hash = password_hash;
                }
                if changed_at.is_some() {
                    self.password_changed_at = changed_at;
                }
                self.password_failures = 0;
                self.password_locked_until = None;
                self.devices.clear();
            }
            PasswordRejected {
                consecutive_failures,
                locked_until,
            } => {
                self.password_failures = consecutive_failures;
                self.password_locked_until = locked_until;
            }
            ChallengeIssued {
                challenge_id,
                methods,
                expires_at,
            } => {
                self.reset_password_failures();
                let issued_at = expires_at - policy::challenge_lifetime();
                self.challenges.retain(|c| c.expires_at > issued_at);
                self.challenges.push(Challenge {
                    id: challenge_id,
                    methods,
                    expires_at,
                    attempts_remaining: policy::CHALLENGE_ATTEMPTS,
                    email_code: None,
                    email_refused: false,
                    passkey_ceremony: None,
                });
            }
            EmailCodeSent {
                challenge_id,
                code_hash,
                sent_at,
                expires_at,
                ..
            } => {
                // The newest code replaces the previous one, and the
                // challenge lives as long as its code.
                if let Some(challenge) = self.challenges.iter_mut().find(|c| c.id == challenge_id) {
                    challenge.email_code = Some(EmailCode {
                        hash: code_hash,
                        expires_at,
                    });
                    challenge.expires_at = challenge.expires_at.max(expires_at);
                }
                let window_start = sent_at - policy::email_code_window();
                self.email_codes_sent.retain(|sent| *sent > window_start);
                self.email_codes_sent.push(sent_at);
            }
            EmailCodeUndelivered { challenge_id } => {
                if let Some(challenge) = self.challenges.iter_mut().find(|c| c.id == challenge_id) {
                    challenge.email_code = None;
                }
            }
            EmailCodeRefused { challenge_id, .. } => {
                if let Some(challenge) = self.challenges.iter_mut().find(|c| c.id == challenge_id) {
                    challenge.email_refused = true;
                }
            }
            SecondFactorAccepted {
                challenge_id,
                method,
                totp_step,
                recovery_code_index,
            } => {
                self.challenges.retain(|c| c.id != challenge_id);
                self.budgets.remove(&method);
                if let (Some(step), Some(totp)) = (totp_step, &mut self.totp) {
                    totp.last_accepted_step = totp.last_accepted_step.max(step);
                }
                if let Some(code) = recovery_code_index.and_then(|i| self.recovery_codes.get_mut(i))
                {
                    *code = None;
                }
            }
            SecondFactorRejected {
                challenge_id,
                method,
                attempts_remaining,
                consecutive_failures,
                locked_until,
            } => {
                if let Some(challenge) = self.challenges.iter_mut().find(|c| c.id == challenge_id) {
                    challenge.attempts_remaining = attempts_remaining;
                    if method == SecondFactorMethod::Passkey {
                        challenge.passkey_ceremony = None;
                    }
                }
                let budget = self.budgets.entry(method).or_default();
                budget.consecutive_failures = consecutive_failures;
                budget.locked_until = locked_until;
            }
            ReauthenticationCodeRejected {
                method,
                consecutive_failures,
                locked_until,
            } => {
                let budget = self.budgets.entry(method).or_default();
                budget.consecutive_failures = consecutive_failures;
                budget.locked_until = locked_until;
            }
            TotpCodeReplayed { .. } => {}
            SecondFactorSuspended { method, .. } => {
                self.budgets.entry(method).or_default().suspended = true;
            }
            SessionStarted {
                started_at,
                device_id,
                authenticated_by,
                ..
            } => {
                // An administrator acting for the user proves nothing about
                // who is guessing the user's password.
                if authenticated_by != AuthenticatedBy::Impersonation {
                    self.reset_password_failures();
                }
                if let Some(device) =
                    device_id.and_then(|id| self.devices.iter_mut().find(|d| d.id == id))
                {
                    device.last_used_at = Some(started_at);
                }
                self.impersonations.retain(|i| i.expires_at > started_at);
            }
            SessionEnded { .. } => {}
            TotpEnrollmentStarted {
                enrollment_id,
                parameters,
            } => {
                self.pending_totp = Some(PendingTotp {
                    enrollment_id,
                    parameters,
                    attempts_remaining: policy::ENROLLMENT_CONFIRM_ATTEMPTS,
                });
            }
            TotpEnrollmentCodeRejected {
                attempts_remaining, ..
            } => {
                if attempts_remaining == 0 {
                    self.pending_totp = None;
                } else if let Some(pending) = &mut self.pending_totp {
                    pending.attempts_remaining = attempts_remaining;
                }
            }
            TotpEnrollmentConfirmed {
                enrollment_id,
                accepted_step,
                recovery_code_hashes,
                enabled_at,
            } => {
                if let Some(pending) = self.pending_totp.take() {
                    self.totp = Some(ActiveTotp {
                        enrollment_id,
                        parameters: pending.parameters,
                        enabled_at,
                        last_accepted_step: accepted_step,
                    });
                }
                self.recovery_codes = recovery_code_hashes.into_iter().map(Some).collect();
                self.budgets.clear();
            }
            TwoFactorDisabled | TwoFactorReset { .. } => {
                self.passkeys.clear();
                self.pending_passkeys.clear();
                self.totp = None;
                self.pending_totp = None;
                self.recovery_codes.clear();
                self.budgets.clear();
                self.challenges.clear();
                self.devices.clear();
            }
            DeviceRemembered {
                device_id,
                token_hash,
                remembered_at,
                expires_at,
                user_agent,
            } => {
                self.devices.retain(|d| d.expires_at > remembered_at);
                self.devices.push(RememberedDevice {
                    id: device_id,
                    token_hash,
                    created_at: remembered_at,
                    expires_at,
                    last_used_at: None,
                    user_agent,
                });
            }
            RememberedDevicesRevoked => self.devices.clear(),
            TwoFactorEnforced { .. } => self.enforced = true,
            TwoFactorEnforcementLifted { .. } => self.enforced = false,
            ImpersonationStarted {
                impersonation_id,
                session_id,
                expires_at,
                ..
            } => self.impersonations.push(Impersonation {
                id: impersonation_id,
                session_id,
                expires_at,
            }),
            ImpersonationEnded {
                impersonation_id, ..
            } => self.impersonations.retain(|i| i.id != impersonation_id),
            PasskeyRegistrationStarted {
                registration_id,
                ceremony_secret,
                expires_at,
            } => {
                let started_at = expires_at - policy::passkey_registration_lifetime();
                self.pending_passkeys.retain(|p| p.expires_at > started_at);
                self.pending_passkeys.push(PendingPasskeyRegistration {
                    id: registration_id,
                    expires_at,
                    ceremony_secret,
                });
                let over = self
                    .pending_passkeys
                    .len()
                    .saturating_sub(policy::PENDING_PASSKEY_REGISTRATIONS);
                self.pending_passkeys.drain(..over);
            }
            PasskeyRegistered {
                passkey_id,
                registration_id,
                name,
                credential_id,
                credential,
                counter,
                user_verified,
                attestation_format,
                registered_at,
            } => {
                self.pending_passkeys.retain(|p| p.id != registration_id);
                self.passkeys.push(Passkey {
                    id: passkey_id,
                    name,
                    credential_id,
                    credential,
                    counter,
                    user_verified,
                    attestation_format,
                    created_at: registered_at,
                    last_used_at: None,
                });
            }
            PasskeyRejected {
                ceremony,
                registration_id,
                consecutive_failures,
                locked_until,
                ..
            } => match ceremony {
                PasskeyCeremony::Registration => {
                    self.pending_passkeys
                        .retain(|p| Some(p.id) != registration_id);
                }
                PasskeyCeremony::SignIn => {
                    if let Some(failures) = consecutive_failures {
                        self.password_failures = failures;
                        self.password_locked_until = locked_until;
                    }
                }
                PasskeyCeremony::SecondFactor => {}
            },
            PasskeyAssertionStarted {
                challenge_id,
                ceremony_secret,
            } => {
                if let Some(challenge) = self.challenges.iter_mut().find(|c| c.id == challenge_id) {
                    challenge.passkey_ceremony = Some(ceremony_secret);
                }
            }
            PasskeyUsed {
                passkey_id,
                counter,
                used_at,
                ..
            } => {
                if let Some(passkey) = self.passkeys.iter_mut().find(|p| p.id == passkey_id) {
                    passkey.counter = passkey.counter.max(counter);
                    passkey.last_used_at = Some(used_at);
                }
            }
            PasskeyCounterRegressed { .. } => {}
            PasskeyRenamed { passkey_id, name } => {
                if let Some(passkey) = self.passkeys.iter_mut().find(|p| p.id == passkey_id) {
                    passkey.name = name;
                }
            }
            PasskeyRemoved { passkey_id, .. } => self.passkeys.retain(|p| p.id != passkey_id),
        }
    }

    fn reset_password_failures(&mut self) {
        self.password_failures = 0;
        self.password_locked_until = None;
    }
}

fn required_reason(reason: String) -> Result<String, UserError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(UserError::ReasonRequired);
    }
    Ok(reason.to_string())
}

fn unix_seconds(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp()).unwrap_or(0)
}

/// What is stored of an emailed code: its keyed hash, bound to its challenge.
pub fn email_code_hash(key: &CodeKey, challenge_id: Uuid, code: &str) -> TokenHash {
    key.hash(&challenge_id.to_string(), code)
}

/// Recovery codes are shown grouped (`abcd-efgh-ijkl`); accept them however typed.
pub fn normalize_recovery_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

impl Aggregate for User {
    const TYPE: &'static str = "user";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.apply_event(event);
    }
}
