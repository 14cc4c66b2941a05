//! The signed-in user: their profile, enrolling an authenticator, turning
//! 2FA off, their password and their remembered devices.

use chrono::{DateTime, Utc};
use twofold_domain::policy::{RECOVERY_CODE_COUNT, SECOND_FACTOR_FAILURES_BEFORE_BACKOFF};
use twofold_domain::totp::UnsealedTotp;
use twofold_domain::user::{normalize_recovery_code, RememberedDevice};
use twofold_domain::{
    Role, SecondFactorMethod, TokenHash, TwoFactorOffProof, TwoFactorStatus, User, UserCommand,
    UserEvent,
};
use twofold_store::EventMetadata;
use uuid::Uuid;

use crate::passwords::check_password;
use crate::{secrets, App, AppError, RequestOrigin, Session, Written};

pub const TWO_FACTOR_OFF_SUBJECT: &str = "Two-factor authentication was turned off";

pub fn two_factor_off_notice() -> String {
    "Two-factor authentication is now off for your account. Sign in and enable it again \
     from My Settings. If you did not expect this, tell your administrator.\n"
        .to_string()
}

/// The user's 2FA as `GET /me` shows it.
#[derive(Clone, Debug)]
pub struct TwoFactorView {
    pub status: TwoFactorStatus,
    /// The factors the user could use to sign in now.
    pub methods: Vec<SecondFactorMethod>,
    /// An administrator enforces 2FA for this user.
    pub enforced: bool,
    /// Enforced, or mandatory platform-wide by now.
    pub required: bool,
    pub enabled_at: Option<DateTime<Utc>>,
}

/// The signed-in user.
#[derive(Clone, Debug)]
pub struct Profile {
    pub id: Uuid,
    pub username: String,
    pub email: Option<String>,
    pub role: Role,
    pub two_factor: TwoFactorView,
    /// The administrator acting as the user during "Login as": id, username.
    pub impersonator: Option<(Uuid, String)>,
}

/// A pending TOTP enrollment to show.
#[derive(Debug)]
pub struct EnrollmentStarted {
    pub secret: String,
    pub otpauth_uri: String,
}

/// What the user's own session gives to turn 2FA off.
#[derive(Debug, Default)]
pub struct TwoFactorOff {
    pub password: Option<String>,
    pub code: Option<String>,
}

impl App {
    fn two_factor_view(&self, user: &User, email_eligible: bool) -> TwoFactorView {
        let mut methods = Vec::new();
        if user.active_totp().is_some() {
            methods.push(SecondFactorMethod::Totp);
            if email_eligible {
                methods.push(SecondFactorMethod::Email);
            }
            if user.recovery_codes_remaining() > 0 {
                methods.push(SecondFactorMethod::RecoveryCode);
            }
        }
        if !user.passkeys().is_empty() {
            methods.push(SecondFactorMethod::Passkey);
        }
        TwoFactorView {
            status: user.two_factor_status(),
            methods,
            enforced: user.is_enforced(),
            required: user.must_have_two_factor(&self.settings.policy, self.now()),
            enabled_at: user.two_factor_enabled_at(),
        }
    }

    /// The signed-in user and their 2FA.
    pub async fn profile(&self, session: &Session) -> Result<Profile, AppError> {
        let loaded = self.load(session.user_id()).await?;
        let profile = loaded.user.profile().ok_or(AppError::Unauthenticated)?;
        let eligible = self.email_eligible(&loaded.user).await?;
        let impersonator = match (
            session.record.impersonator_id,
            session.record.impersonator_username.as_ref(),
        ) {
            (Some(id), Some(username)) => Some((id, username.clone())),
            _ => None,
        };
        Ok(Profile {
            id: profile.id,
            username: profile.username.as_str().to_string(),
            email: profile.email.as_ref().map(|e| e.as_str().to_string()),
            role: profile.role,
            two_factor: self.two_factor_view(&loaded.user, eligible),
            impersonator,
        })
    }

    /// An administrator acting as the user must not hold the user's second
    /// factor: only the user enrolls their authenticator.
    pub(crate) fn refuse_impersonation(session: &Session) -> Result<(), AppError> {
        if session.is_impersonation() {
            return Err(AppError::Forbidden(
                "an administrator acting as the user cannot enroll their authenticator",
            ));
        }
        Ok(())
    }

    /// Start (or restart) a pending TOTP enrollment (also from a session
    /// held on enrollment).
    pub async fn start_totp_enrollment(
        &self,
        session: &Session,
        origin: &RequestOrigin,
    ) -> Result<Written<EnrollmentStarted>, AppError> {
        Self::refuse_impersonation(session)?;
        let user_id = session.user_id();
        let loaded = self.load(user_id).await?;
        if loaded.user.active_totp().is_some() {
            return Err(AppError::Conflict(
                "two-factor authentication is already enabled".into(),
            ));
        }
        let enrollment_id = Uuid::new_v4();
        let secret = secrets::new_totp_secret()?;
        // A restarted enrollment's earlier secret will never be confirmed.
        self.vault.erase(user_id).await?;
        self.vault.store(user_id, enrollment_id, &secret).await?;
        let parameters = self.settings.totp;
        let committed = self
            .execute(
                loaded,
                &session.metadata(origin, self.now()),
                UserCommand::StartTotpEnrollment {
                    enrollment_id,
                    parameters,
                },
            )
            .await?;
        let otpauth_uri = parameters.otpauth_uri(
            &secret,
            &self.settings.totp_issuer,
            &session.record.username,
        );
        Ok(Written::new(
            EnrollmentStarted {
                secret: secret.to_base32(),
                otpauth_uri,
            },
            &committed,
        ))
    }

    /// Confirm the pending enrollment with a code: 2FA is on. Gives the
    /// recovery codes, shown this once.
    pub async fn confirm_totp_enrollment(
        &self,
        session: &Session,
        origin: &RequestOrigin,
        code: String,
    ) -> Result<Written<Vec<String>>, AppError> {
        Self::refuse_impersonation(session)?;
        let user_id = session.user_id();
        let loaded = self.load(user_id).await?;
        let pending = loaded
            .user
            .pending_totp()
            .ok_or(AppError::Conflict("start an enrollment first".into()))?;
        let secret = self.vault.fetch(user_id, pending.enrollment_id).await?;
        let recovery_codes = secrets::new_recovery_codes(RECOVERY_CODE_COUNT);
        let hashes: Vec<TokenHash> = recovery_codes
            .iter()
            .map(|code| TokenHash::of(&normalize_recovery_code(code)))
            .collect();
        let now = self.now();
        let committed = self
            .execute(
                loaded,
                &session.metadata(origin, now),
                UserCommand::ConfirmTotpEnrollment {
                    code: code.clone(),
                    secret: secret.clone(),
                    recovery_code_hashes: hashes.clone(),
                    at: now,
                },
            )
            .await?;
        let rejected = committed.find(|event| match event {
            UserEvent::TotpEnrollmentCodeRejected {
                attempts_remaining, ..
            } => Some(*attempts_remaining),
            _ => None,
        });
        if let Some(attempts_remaining) = rejected {
            return Err(AppError::InvalidCode { attempts_remaining });
        }
        Ok(Written::new(recovery_codes, &committed))
    }

    /// Turn 2FA off (all factors, recovery codes and remembered devices).
    /// From the user's own session, the current password and a fresh second
    /// factor are required; from "Login as" (the rescue flow) nothing is:
    /// the reason given when it started stands for it.
    pub async fn turn_two_factor_off(
        &self,
        session: &Session,
        origin: &RequestOrigin,
        request: Option<TwoFactorOff>,
    ) -> Result<Written<()>, AppError> {
        session.full()?;
        let now = self.now();
        let user_id = session.user_id();
        let metadata = session.metadata(origin, now);
        let loaded = self.load(user_id).await?;
        let proof = if session.is_impersonation() {
            TwoFactorOffProof::Impersonation {
                session_id: session.record.session_id,
            }
        } else {
            // Said before anything is asked: no password helps against it.
            if loaded.user.is_enforced() {
                return Err(AppError::TwoFactorEnforced);
            }
            let request = request.ok_or(AppError::InvalidRequest(
                "send your password and a code from your authenticator app (or a recovery code)"
                    .into(),
            ))?;
            let password = request
                .password
                .ok_or(AppError::InvalidRequest("the password is required".into()))?;
            if loaded.user.active_totp().is_some() && request.code.is_none() {
                return Err(AppError::InvalidRequest(
                    "a code from your authenticator app (or a recovery code) is required".into(),
                ));
            }
            self.admit_attempt(origin)?;
            let turn = self.passwords.admit()?;
            let password = turn
                .check_current(&loaded.user, password, now)
                .await?
                .ok_or(AppError::Unauthenticated)?;
            drop(turn);
            let totp_secret = match loaded.user.active_totp() {
                Some(totp) => Some(UnsealedTotp {
                    enrollment_id: totp.enrollment_id,
                    secret: self.vault.fetch(user_id, totp.enrollment_id).await?,
                }),
                None => None,
            };
            TwoFactorOffProof::Reauthenticated {
                password,
                code: request.code,
                totp_secret,
                passkey_signed_in_at: (session.record.authenticated_by
                    == twofold_domain::AuthenticatedBy::Passkey)
                    .then_some(session.record.started_at),
            }
        };
        let committed = self
            .execute(
                loaded,
                &metadata,
                UserCommand::DisableTwoFactor {
                    proof: proof.clone(),
                    at: now,
                },
            )
            .await?;
        for event in &committed.events {
            match event {
                UserEvent::PasswordRejected { .. } => return Err(AppError::InvalidCredentials),
                UserEvent::ReauthenticationCodeRejected {
                    consecutive_failures,
                    ..
                } => {
                    return Err(AppError::InvalidCode {
                        attempts_remaining: SECOND_FACTOR_FAILURES_BEFORE_BACKOFF
                            .saturating_sub(*consecutive_failures),
                    })
                }
                _ => {}
            }
        }
        if !committed.events.is_empty() {
            self.vault.erase(user_id).await?;
            self.release_passkeys(user_id).await?;
            self.notify(
                session.record.email.as_deref(),
                TWO_FACTOR_OFF_SUBJECT,
                two_factor_off_notice(),
            )
            .await;
        }
        Ok(Written::new((), &committed))
    }

    /// Change the password: remembered devices are forgotten and every other
    /// session of the user ends. A wrong current password counts as a failed
    /// sign-in (stored, toward the same lock, under the per-address limit).
    /// An administrator acting as the user may not do it.
    pub async fn change_password(
        &self,
        session: &Session,
        origin: &RequestOrigin,
        current_password: String,
        new_password: String,
    ) -> Result<Written<()>, AppError> {
        session.full()?;
        if session.is_impersonation() {
            return Err(AppError::Forbidden(
                "an administrator acting as the user cannot change their password",
            ));
        }
        check_password(&new_password)?;
        let turn = self.passwords.admit()?;
        self.admit_attempt(origin)?;
        let now = self.now();
        let loaded = self.load(session.user_id()).await?;
        let current = turn
            .check_current(&loaded.user, current_password, now)
            .await?
            .ok_or(AppError::Unauthenticated)?;
        // Hashed whether or not the current one matched: both take as long.
        let password_hash = turn.hash(new_password).await?;
        drop(turn);
        let kept_session_id = session.record.session_id;
        let committed = self
            .execute(
                loaded,
                &session.metadata(origin, now),
                UserCommand::ChangePassword {
                    current: current.clone(),
                    password_hash: password_hash.clone(),
                    kept_session_id,
                    at: now,
                },
            )
            .await?;
        if committed
            .events
            .iter()
            .any(|event| matches!(event, UserEvent::PasswordRejected { .. }))
        {
            return Err(AppError::InvalidCredentials);
        }
        Ok(Written::new((), &committed))
    }

    /// A user's remembered devices that are still valid.
    pub(crate) async fn devices_of(
        &self,
        user_id: Uuid,
    ) -> Result<Vec<RememberedDevice>, AppError> {
        let loaded = self.load(user_id).await?;
        Ok(loaded
            .user
            .remembered_devices(self.now())
            .cloned()
            .collect())
    }

    /// The signed-in user's remembered devices.
    pub async fn my_devices(&self, session: &Session) -> Result<Vec<RememberedDevice>, AppError> {
        session.full()?;
        self.devices_of(session.user_id()).await
    }

    pub(crate) async fn forget_devices_of(
        &self,
        user_id: Uuid,
        metadata: &EventMetadata,
    ) -> Result<Written<()>, AppError> {
        let loaded = self.load(user_id).await?;
        let committed = self
            .execute(loaded, metadata, UserCommand::RevokeRememberedDevices)
            .await?;
        Ok(Written::new((), &committed))
    }

    /// Forget every remembered device of the signed-in user.
    pub async fn forget_my_devices(
        &self,
        session: &Session,
        origin: &RequestOrigin,
    ) -> Result<Written<()>, AppError> {
        session.full()?;
        self.forget_devices_of(session.user_id(), &session.metadata(origin, self.now()))
            .await
    }
}
