//! Signing in: the password step, then (when due) a second factor: a TOTP
//! code, an emailed code or a recovery code; and signing out.

use std::time::Instant;

use chrono::{DateTime, Utc};
use twofold_domain::totp::UnsealedTotp;
use twofold_domain::user::email_code_hash;
use twofold_domain::{
    Email, NewDevice, NewSession, SecondFactorMethod, TokenHash, User, UserCommand, UserEvent,
    Username,
};
use twofold_store::{Committed, Loaded};
use uuid::Uuid;

use crate::mail::OutgoingMail;
use crate::secrets;
use crate::{App, AppError, RequestOrigin, Session, Written};

/// What the password step gives.
#[derive(Debug)]
pub enum SignInAnswer {
    /// No second factor is due: a full session.
    Authenticated {
        session_token: String,
        expires_at: DateTime<Utc>,
    },
    /// Verify a second factor on this challenge.
    TwoFactorRequired {
        challenge_id: Uuid,
        methods: Vec<SecondFactorMethod>,
        expires_at: DateTime<Utc>,
    },
    /// 2FA is required and not active: this session may only enroll.
    EnrollmentRequired {
        session_token: String,
        expires_at: DateTime<Utc>,
    },
}

/// An emailed code on its way.
#[derive(Debug)]
pub struct EmailCodeSent {
    /// The address, masked: `j***@example.com`.
    pub sent_to: String,
    pub expires_at: DateTime<Utc>,
}

/// A second factor passed: a full session, and a remembered device when
/// asked for.
#[derive(Debug)]
pub struct SecondFactorPassed {
    pub session_token: String,
    pub expires_at: DateTime<Utc>,
    pub device: Option<(String, DateTime<Utc>)>,
}

impl App {
    /// A fresh session token; only its hash goes into the event.
    pub(crate) fn new_session(&self, lifetime: chrono::Duration) -> (String, NewSession) {
        let token = secrets::new_token();
        let session = NewSession {
            session_id: Uuid::new_v4(),
            token_hash: TokenHash::of(&token),
            expires_at: self.now() + lifetime,
        };
        (token, session)
    }

    /// The password step of sign-in.
    pub async fn sign_in(
        &self,
        origin: &RequestOrigin,
        username: &str,
        password: String,
        device_token: Option<&str>,
    ) -> Result<Written<SignInAnswer>, AppError> {
        let answer = self
            .decide_sign_in(origin, username, password, device_token)
            .await;
        crate::metrics::sign_in(&answer);
        answer
    }

    async fn decide_sign_in(
        &self,
        origin: &RequestOrigin,
        username: &str,
        password: String,
        device_token: Option<&str>,
    ) -> Result<Written<SignInAnswer>, AppError> {
        // Refused for want of capacity before the address's quota is
        // counted: such a request made no guess.
        let turn = self.passwords.admit()?;
        self.admit_attempt(origin)?;
        let user_id = match Username::parse(username) {
            Ok(username) => self.store.find_username(&username).await?,
            Err(_) => None,
        };
        let now = self.now();
        let Some(user_id) = user_id else {
            // The same reads of the store as a known user's sign-in (one not
            // in the cache; a cached one skips a read of ~0.1 ms), the same
            // lock, the same hash, and as long as storing a wrong password
            // takes: an unknown username must not answer otherwise, nor
            // sooner (docs/security.md, Timing).
            self.store.load(Uuid::new_v4()).await?;
            if let Some(until) = self.unknown_names.locked_until(username, now) {
                return Err(AppError::locked_until(Some(until), now));
            }
            turn.verify(None, password).await?;
            drop(turn);
            self.unknown_names.failed(username, now);
            tokio::time::sleep(self.rejections.typical()).await;
            return Err(AppError::InvalidCredentials);
        };
        let loaded = self.load(user_id).await?;
        let password = turn
            .check_current(&loaded.user, password, now)
            .await?
            .ok_or(AppError::InvalidCredentials)?;
        // The next request may take this place while this one is stored.
        drop(turn);
        let storing = Instant::now();
        let email_offered = self.email_eligible(&loaded.user).await?;
        let (token, session) = self.new_session(self.settings.session_lifetime);
        let challenge_id = Uuid::new_v4();
        let device_token = device_token.map(TokenHash::of);
        let metadata = self.metadata(origin, Some(user_id));
        // A rejection is stored (it counts towards the lock) and, like every
        // write, visible to this process's next read; an unknown username
        // waits as long as a recent rejection took, so both answer alike.
        let committed = self
            .execute(
                loaded,
                &metadata,
                UserCommand::SignIn {
                    password: password.clone(),
                    device_token: device_token.clone(),
                    email_offered,
                    session: session.clone(),
                    challenge_id,
                    policy: self.settings.policy,
                    at: now,
                },
            )
            .await?;
        if !password.matches {
            self.rejections.record(storing.elapsed());
        }
        let answer = committed.find(|event| match event {
            UserEvent::PasswordRejected { .. } => Some(Err(AppError::InvalidCredentials)),
            UserEvent::SessionStarted {
                enrollment_required,
                expires_at,
                ..
            } => Some(Ok(if *enrollment_required {
                SignInAnswer::EnrollmentRequired {
                    session_token: token.clone(),
                    expires_at: *expires_at,
                }
            } else {
                SignInAnswer::Authenticated {
                    session_token: token.clone(),
                    expires_at: *expires_at,
                }
            })),
            UserEvent::ChallengeIssued {
                challenge_id,
                methods,
                expires_at,
            } => Some(Ok(SignInAnswer::TwoFactorRequired {
                challenge_id: *challenge_id,
                methods: methods.clone(),
                expires_at: *expires_at,
            })),
            _ => None,
        });
        match answer {
            Some(answer) => Ok(Written::new(answer?, &committed)),
            None => Err(AppError::Internal("sign-in decided nothing".into())),
        }
    }

    /// The help article's rule: email is offered only to a user who has an
    /// address that no other user shares.
    pub(crate) async fn email_eligible(&self, user: &User) -> Result<bool, AppError> {
        match user.profile().and_then(|p| p.email.as_ref()) {
            Some(email) => Ok(!self.address_shared(email).await?),
            None => Ok(false),
        }
    }

    /// "Shared with other users": another account has the same address.
    async fn address_shared(&self, email: &Email) -> Result<bool, AppError> {
        Ok(self.read_models().users_with_email(&email.key()).await? > 1)
    }

    /// The user a sign-in challenge belongs to, loaded.
    pub(crate) async fn challenge_owner(&self, challenge_id: Uuid) -> Result<Loaded, AppError> {
        let user_id = self
            .read_models()
            .challenge_owner(challenge_id)
            .await?
            .ok_or(AppError::NotFound("no such sign-in challenge"))?;
        self.load(user_id).await
    }

    /// Email a one-time code for this challenge.
    pub async fn send_email_code(
        &self,
        origin: &RequestOrigin,
        challenge_id: Uuid,
    ) -> Result<Written<EmailCodeSent>, AppError> {
        let loaded = self.challenge_owner(challenge_id).await?;
        let user_id = loaded.id;
        let now = self.now();
        let email = loaded.user.profile().and_then(|p| p.email.clone());
        let address_shared = match &email {
            Some(email) => self.address_shared(email).await?,
            None => false,
        };
        let code = secrets::new_email_code();
        let code_hash = email_code_hash(&self.code_key, challenge_id, &code);
        let metadata = self.metadata(origin, Some(user_id));
        // Decided and stored first, under the user's turn, so that requests
        // arriving together are counted one after the other against the
        // limit; only a stored send is delivered.
        let committed = self
            .execute(
                loaded,
                &metadata,
                UserCommand::SendEmailCode {
                    challenge_id,
                    code_hash: code_hash.clone(),
                    address_shared,
                    at: now,
                },
            )
            .await?;
        let sent = committed.find(|event| match event {
            UserEvent::EmailCodeSent {
                sent_to,
                expires_at,
                ..
            } => Some(EmailCodeSent {
                sent_to: sent_to.clone(),
                expires_at: *expires_at,
            }),
            _ => None,
        });
        let (Some(sent), Some(email)) = (sent, email) else {
            return Err(AppError::EmailUnavailable);
        };
        let mail = OutgoingMail {
            to: email.as_str().to_string(),
            subject: "Your sign-in code".into(),
            body: format!(
                "Your sign-in code is {code}.\n\nIt works once, for the next 10 minutes. \
                 If you did not try to sign in, change your password.\n"
            ),
        };
        if let Err(error) = self.mailer.send(&mail).await {
            // Nobody saw the stored code: it is withdrawn, and still counts
            // toward the limit.
            tracing::warn!(%error, "sign-in code email not sent");
            let loaded = self.load(user_id).await?;
            self.execute(
                loaded,
                &metadata,
                UserCommand::RecordEmailCodeUndelivered { challenge_id },
            )
            .await?;
            return Err(AppError::Unavailable { retry_after: 5 });
        }
        Ok(Written::new(sent, &committed))
    }

    /// Verify the second factor of a sign-in.
    pub async fn verify_second_factor(
        &self,
        origin: &RequestOrigin,
        challenge_id: Uuid,
        method: SecondFactorMethod,
        code: String,
        remember_device: bool,
    ) -> Result<Written<SecondFactorPassed>, AppError> {
        let loaded = self.challenge_owner(challenge_id).await?;
        let user_id = loaded.id;
        let totp_secret = match (method, loaded.user.active_totp()) {
            (SecondFactorMethod::Totp, Some(totp)) => Some(UnsealedTotp {
                enrollment_id: totp.enrollment_id,
                secret: self.vault.fetch(user_id, totp.enrollment_id).await?,
            }),
            _ => None,
        };
        let now = self.now();
        let (token, session) = self.new_session(self.settings.session_lifetime);
        let (device_token, device) = self.device_to_remember(remember_device, origin, now);
        let metadata = self.metadata(origin, Some(user_id));
        let committed = self
            .execute(
                loaded,
                &metadata,
                UserCommand::VerifySecondFactor {
                    challenge_id,
                    method,
                    code: code.clone(),
                    totp_secret: totp_secret.clone(),
                    code_key: self.code_key.clone(),
                    session: session.clone(),
                    remember_device: device.clone(),
                    at: now,
                },
            )
            .await?;
        second_factor_answer(&committed, token, session.expires_at, device_token)
    }

    /// "Remember this device" when asked for: its token (for the caller)
    /// and the device the command stores (its hash only).
    pub(crate) fn device_to_remember(
        &self,
        remember: bool,
        origin: &RequestOrigin,
        now: DateTime<Utc>,
    ) -> (Option<String>, Option<NewDevice>) {
        let token = remember.then(secrets::new_token);
        let device = token.as_ref().map(|token| NewDevice {
            device_id: Uuid::new_v4(),
            token_hash: TokenHash::of(token),
            expires_at: now + self.settings.remember_device,
            user_agent: origin.user_agent.clone(),
        });
        (token, device)
    }

    /// Sign out: the token stops working at once (a "Login as" session ends).
    pub async fn sign_out(
        &self,
        session: &Session,
        origin: &RequestOrigin,
    ) -> Result<Written<()>, AppError> {
        let loaded = self.load(session.user_id()).await?;
        let session_id = session.record.session_id;
        let impersonation = session.is_impersonation();
        let committed = self
            .execute(
                loaded,
                &session.metadata(origin, self.now()),
                if impersonation {
                    UserCommand::EndImpersonation {
                        session_id,
                        revoked: None,
                    }
                } else {
                    UserCommand::SignOut { session_id }
                },
            )
            .await?;
        Ok(Written::new((), &committed))
    }
}

/// What the second step answers from the events its command stored: 401
/// `invalid_code` with the attempts left when refused, else the session and
/// the remembered device's token (when one was remembered).
pub(crate) fn second_factor_answer(
    committed: &Committed,
    session_token: String,
    expires_at: DateTime<Utc>,
    device_token: Option<String>,
) -> Result<Written<SecondFactorPassed>, AppError> {
    let rejected = committed.find(|event| match event {
        UserEvent::SecondFactorRejected {
            attempts_remaining, ..
        } => Some(attempts_remaining.to_owned()),
        _ => None,
    });
    if let Some(attempts_remaining) = rejected {
        return Err(AppError::InvalidCode { attempts_remaining });
    }
    let remembered = committed.find(|event| match event {
        UserEvent::DeviceRemembered { expires_at, .. } => Some(expires_at.to_owned()),
        _ => None,
    });
    Ok(Written::new(
        SecondFactorPassed {
            session_token,
            expires_at,
            device: remembered.and_then(|until| device_token.map(|token| (token, until))),
        },
        committed,
    ))
}
