//! Administration: creating users, editing them (email, role, 2FA
//! enforcement), "Login as", resetting 2FA, remembered devices. Who may do
//! which is decided here, from the domain's `Role` rules.

use chrono::{DateTime, Utc};
use twofold_domain::user::RememberedDevice;
use twofold_domain::{Email, NewSession, Role, TokenHash, UserCommand, Username};
use twofold_projections::{DirectoryEntry, DirectoryFilter, EventPosition};
use twofold_store::{EventMetadata, Loaded};
use uuid::Uuid;

use crate::me::{two_factor_off_notice, TWO_FACTOR_OFF_SUBJECT};
use crate::passwords::check_password;
use crate::{secrets, App, AppError, RequestOrigin, Session, Written};

/// A user to create.
#[derive(Debug)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub email: Option<String>,
    /// `user` when not given.
    pub role: Option<Role>,
}

/// An administrator's edit of a user; each field given is changed.
#[derive(Debug, Default)]
pub struct UserChanges {
    /// `Some(None)` clears the address.
    pub email: Option<Option<String>>,
    pub role: Option<Role>,
    pub enforce_two_factor: Option<bool>,
    /// Recorded with an enforcement change.
    pub reason: Option<String>,
}

/// A "Login as" session.
#[derive(Debug)]
pub struct Impersonation {
    pub session_token: String,
    pub expires_at: DateTime<Utc>,
}

/// An address as given: blank is none, anything else must parse.
fn parse_email(email: Option<&str>) -> Result<Option<Email>, AppError> {
    email
        .filter(|email| !email.trim().is_empty())
        .map(Email::parse)
        .transpose()
        .map_err(|error| AppError::InvalidRequest(error.to_string()))
}

impl App {
    /// Registers a user; shared by the API and the bootstrap admin.
    async fn register(
        &self,
        metadata: &EventMetadata,
        username: Username,
        password: String,
        email: Option<Email>,
        role: Role,
    ) -> Result<(Uuid, Option<EventPosition>), AppError> {
        check_password(&password)?;
        if self.store.find_username(&username).await?.is_some() {
            return Err(AppError::Conflict("the username is taken".into()));
        }
        let password_hash = self.passwords.hash_for_new_user(password).await?;
        let user_id = Uuid::new_v4();
        let loaded = self.load(user_id).await?;
        let at = self.now();
        let committed = self
            .execute(
                loaded,
                metadata,
                UserCommand::RegisterUser {
                    user_id,
                    username: username.clone(),
                    email: email.clone(),
                    role,
                    password_hash: password_hash.clone(),
                    at,
                },
            )
            .await?;
        Ok((user_id, committed.last_position))
    }

    /// `TWOFOLD_BOOTSTRAP_ADMIN=username:password`: the first super admin,
    /// when the store has none. Whether it created one.
    pub async fn bootstrap_admin(&self, spec: &str) -> anyhow::Result<bool> {
        if self.has_super_admin().await? {
            return Ok(false);
        }
        let (username, password) = spec
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("TWOFOLD_BOOTSTRAP_ADMIN must be username:password"))?;
        let username = Username::parse(username)
            .map_err(|error| anyhow::anyhow!("bootstrap admin: {error}"))?;
        let metadata = EventMetadata {
            occurred_at: Some(self.now()),
            ..EventMetadata::default()
        };
        match self
            .register(
                &metadata,
                username,
                password.to_string(),
                None,
                Role::SuperAdmin,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(AppError::Conflict(_)) => Ok(false),
            Err(error) => Err(anyhow::anyhow!("bootstrap admin: {error}")),
        }
    }

    /// Whether the store has a super admin yet (the first one comes from
    /// `TWOFOLD_BOOTSTRAP_ADMIN`).
    pub async fn has_super_admin(&self) -> Result<bool, AppError> {
        Ok(self.read_models().users_with_role(Role::SuperAdmin).await? > 0)
    }

    /// One user, as the search shows it.
    async fn directory_entry(&self, id: Uuid) -> Result<DirectoryEntry, AppError> {
        self.read_models()
            .directory_entry(id)
            .await?
            .ok_or(AppError::NotFound("no such user"))
    }

    /// Create a user: an administrator creates plain users, only a super
    /// admin gives another role.
    pub async fn create_user(
        &self,
        session: &Session,
        origin: &RequestOrigin,
        user: NewUser,
    ) -> Result<Written<DirectoryEntry>, AppError> {
        session.full()?;
        session.require(Role::is_administrator)?;
        let role = user.role.unwrap_or(Role::User);
        session.require(|acting| acting.may_manage(role))?;
        let username = Username::parse(&user.username)
            .map_err(|error| AppError::InvalidRequest(error.to_string()))?;
        let email = parse_email(user.email.as_deref())?;
        let metadata = session.metadata(origin, self.now());
        let (user_id, position) = self
            .register(&metadata, username, user.password, email, role)
            .await?;
        Ok(Written {
            value: self.directory_entry(user_id).await?,
            position,
        })
    }

    /// One user (administrators).
    /// One user, as they are or (`as_of`) as they stood at a past instant.
    pub async fn user(
        &self,
        session: &Session,
        id: Uuid,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<DirectoryEntry, AppError> {
        session.full()?;
        session.require(Role::is_administrator)?;
        match as_of {
            None => self.directory_entry(id).await,
            Some(at) => {
                self.in_the_past(at)?;
                self.read_models()
                    .directory_entry_as_of(id, at)
                    .await?
                    .ok_or(AppError::NotFound("no such user"))
            }
        }
    }

    /// Change a user's email, role or 2FA enforcement, in one append.
    /// Administrators edit plain users' addresses; a role or enforcement
    /// change, or any change to staff, needs a super admin.
    pub async fn update_user(
        &self,
        session: &Session,
        origin: &RequestOrigin,
        id: Uuid,
        changes: UserChanges,
    ) -> Result<Written<DirectoryEntry>, AppError> {
        session.full()?;
        session.require(Role::is_administrator)?;
        if changes.enforce_two_factor.is_some() || changes.role.is_some() {
            session.require(Role::may_change_policy)?;
        }
        let email = match &changes.email {
            Some(email) => Some(parse_email(email.as_deref())?),
            None => None,
        };
        let loaded = self.load(id).await?;
        let target_role = loaded
            .user
            .profile()
            .map(|p| p.role)
            .ok_or(AppError::NotFound("no such user"))?;
        session.require(|acting| acting.may_manage(target_role))?;
        let metadata = session.metadata(origin, self.now());
        let committed = self
            .execute(
                loaded,
                &metadata,
                UserCommand::UpdateProfile {
                    email: email.clone(),
                    role: changes.role,
                    enforce_two_factor: changes.enforce_two_factor,
                    reason: changes.reason.clone(),
                },
            )
            .await?;
        Ok(Written::new(self.directory_entry(id).await?, &committed))
    }

    /// A page of the user search (auditors too), once the read models hold
    /// `min_position`.
    pub async fn search_users(
        &self,
        session: &Session,
        filter: &DirectoryFilter,
        min_position: Option<i64>,
    ) -> Result<(Vec<DirectoryEntry>, bool), AppError> {
        self.may_read_reports(session)?;
        if let Some(at) = filter.as_of {
            self.in_the_past(at)?;
        }
        self.reach(min_position).await?;
        Ok(self.read_models().search_directory(filter).await?)
    }

    /// "Login as": a session acting as the user, for 30 minutes at most,
    /// with a reason; the user is told by email.
    pub async fn impersonate(
        &self,
        session: &Session,
        origin: &RequestOrigin,
        id: Uuid,
        reason: Option<String>,
        ticket: Option<String>,
    ) -> Result<Written<Impersonation>, AppError> {
        session.full()?;
        session.require(Role::is_administrator)?;
        if session.is_impersonation() {
            return Err(AppError::Forbidden("end the current impersonation first"));
        }
        let reason = reason
            .filter(|reason| !reason.trim().is_empty())
            .ok_or(AppError::InvalidRequest("a reason is required".into()))?;
        let loaded = self.load(id).await?;
        let target_email = email_of(&loaded)?;
        let token = secrets::new_token();
        let now = self.now();
        let new_session = NewSession {
            session_id: Uuid::new_v4(),
            token_hash: TokenHash::of(&token),
            expires_at: now + twofold_domain::policy::impersonation_lifetime(),
        };
        let committed = self
            .execute(
                loaded,
                &session.metadata(origin, now),
                UserCommand::StartImpersonation {
                    impersonation_id: Uuid::new_v4(),
                    impersonator_id: session.user_id(),
                    impersonator_role: session.role(),
                    reason: reason.clone(),
                    ticket: ticket.clone(),
                    session: new_session.clone(),
                    at: now,
                },
            )
            .await?;
        self.notify(
            target_email.as_deref(),
            "An administrator signed in as you",
            format!(
                "{} signed in to your account to help you, at {}.\nReason: {reason}\n\n\
                 If you did not ask for help, tell your administrator.\n",
                session.record.username,
                now.to_rfc3339(),
            ),
        )
        .await;
        Ok(Written::new(
            Impersonation {
                session_token: token,
                expires_at: new_session.expires_at,
            },
            &committed,
        ))
    }

    /// End the "Login as" session this is.
    pub async fn end_impersonation(
        &self,
        session: &Session,
        origin: &RequestOrigin,
    ) -> Result<Written<()>, AppError> {
        session.full()?;
        if !session.is_impersonation() {
            return Err(AppError::NotFound("this session is not an impersonation"));
        }
        let loaded = self.load(session.user_id()).await?;
        let session_id = session.record.session_id;
        let committed = self
            .execute(
                loaded,
                &session.metadata(origin, self.now()),
                UserCommand::EndImpersonation {
                    session_id,
                    revoked: None,
                },
            )
            .await?;
        Ok(Written::new((), &committed))
    }

    /// A super admin's reset of the user's second factor (every factor,
    /// recovery code, remembered device and session).
    pub async fn reset_two_factor(
        &self,
        session: &Session,
        origin: &RequestOrigin,
        id: Uuid,
        reason: Option<String>,
    ) -> Result<Written<()>, AppError> {
        session.full()?;
        session.require(Role::may_change_policy)?;
        let loaded = self.load(id).await?;
        let email = email_of(&loaded)?;
        let reason = reason.unwrap_or_default();
        let committed = self
            .execute(
                loaded,
                &session.metadata(origin, self.now()),
                UserCommand::ResetTwoFactor {
                    reason: reason.clone(),
                },
            )
            .await?;
        self.vault.erase(id).await?;
        self.release_passkeys(id).await?;
        self.notify(
            email.as_deref(),
            TWO_FACTOR_OFF_SUBJECT,
            two_factor_off_notice(),
        )
        .await;
        Ok(Written::new((), &committed))
    }

    /// A user's remembered devices (administrators).
    pub async fn user_devices(
        &self,
        session: &Session,
        id: Uuid,
    ) -> Result<Vec<RememberedDevice>, AppError> {
        session.full()?;
        session.require(Role::is_administrator)?;
        self.directory_entry(id).await?;
        self.devices_of(id).await
    }

    /// Forget all of a user's remembered devices (administrators).
    pub async fn forget_user_devices(
        &self,
        session: &Session,
        origin: &RequestOrigin,
        id: Uuid,
    ) -> Result<Written<()>, AppError> {
        session.full()?;
        session.require(Role::is_administrator)?;
        self.directory_entry(id).await?;
        self.forget_devices_of(id, &session.metadata(origin, self.now()))
            .await
    }
}

/// A registered user's address, to tell them what an administrator did.
fn email_of(loaded: &Loaded) -> Result<Option<String>, AppError> {
    Ok(loaded
        .user
        .profile()
        .ok_or(AppError::NotFound("no such user"))?
        .email
        .as_ref()
        .map(|email| email.as_str().to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::parse_email;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Any text: an address in its one canonical form, none, or a 400.
        #[test]
        fn emails_from_requests_never_panic(email in any::<String>()) {
            if let Ok(Some(parsed)) = parse_email(Some(&email)) {
                let (local, domain) = email.trim().split_once('@').unwrap();
                prop_assert_eq!(parsed.as_str(), format!("{local}@{}", domain.to_ascii_lowercase()));
            }
        }
    }
}
