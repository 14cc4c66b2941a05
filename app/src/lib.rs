//! twofold's application layer: one function per use case (sign in, verify
//! a second factor, send an email code, enroll, turn 2FA off, reset,
//! enforce, "Login as", change the password ...), taking typed input and
//! returning typed results. Who may do what, the timing equaliser, the
//! per-address limit and the password workers live here; the HTTP handlers
//! only extract, call one of these and answer.

pub mod checkpoints;
pub mod clock;
mod enumeration;
pub mod error;
mod limits;
pub mod mail;
pub mod master_key;
pub mod metrics;
pub mod passwords;
pub mod secrets;

mod admin;
mod me;
mod passkeys;
mod reads;
mod session;
mod sign_in;

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use twofold_domain::checkpoint::AuditSigningKey;
use twofold_domain::sealed::CodeKey;
use twofold_domain::totp::TotpParameters;
use twofold_domain::{TwoFactorPolicy, UserCommand};
use twofold_projections::{EventPosition, Projector, ReadModels};
use twofold_store::{Committed, EventMetadata, EventStore, Loaded, PasskeyIndex, SecretVault};
use uuid::Uuid;

pub use admin::{Impersonation, NewUser, UserChanges};
pub use clock::Clock;
pub use error::AppError;
pub use me::{EnrollmentStarted, Profile, TwoFactorOff, TwoFactorView};
pub use passkeys::{PasskeyRegistrationOptions, PasskeySignInOptions, PasskeyView, RelyingParty};
pub use reads::{AuditQuery, Forecast, RoleCount, TwoFactorReport, UserTimeline, FORECAST_DAYS};
pub use session::Session;
pub use sign_in::{EmailCodeSent, SecondFactorPassed, SignInAnswer};

use enumeration::{RecentRejections, UnknownNames};
use limits::AttemptLimiter;
use mail::{Mailer, OutgoingMail};
use passwords::{PasswordHasher, LONGEST_HASHING_WAIT};

/// Deployment choices that shape the rules.
#[derive(Clone, Debug)]
pub struct Settings {
    pub policy: TwoFactorPolicy,
    pub session_lifetime: chrono::Duration,
    pub session_idle: chrono::Duration,
    pub remember_device: chrono::Duration,
    pub totp: TotpParameters,
    pub totp_issuer: String,
    /// Who passkeys are registered for (`--public-url`).
    pub relying_party: RelyingParty,
    pub login_rate_per_ip: u32,
    /// Threads that hash passwords, each keeping a 19 MiB buffer.
    pub password_hash_workers: NonZeroUsize,
    /// Password checks admitted beyond what the workers run at once; more
    /// are answered 503 at once.
    pub password_hash_queue: usize,
}

/// Where a request came from, recorded in each event's metadata.
#[derive(Clone, Debug, Default)]
pub struct RequestOrigin {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

/// What a use case that stored events gives: its result, and where its
/// last event stands (`Twofold-Position`), if it stored any.
#[derive(Debug)]
pub struct Written<T> {
    pub value: T,
    pub position: Option<EventPosition>,
}

impl<T> Written<T> {
    fn new(value: T, committed: &Committed) -> Self {
        Written {
            value,
            position: committed.last_position,
        }
    }
}

/// How long a write's answer waits for the read models (read-your-writes).
pub const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);

/// The service: the stores, the deployment's settings and the machinery the
/// use cases share.
pub struct App {
    store: EventStore,
    projector: Arc<Projector>,
    vault: SecretVault,
    clock: Arc<dyn Clock>,
    settings: Settings,
    mailer: Mailer,
    passwords: PasswordHasher,
    /// How long wrong passwords took to store (unknown usernames wait as long).
    rejections: RecentRejections,
    /// Wrong passwords for usernames that do not exist (locked alike).
    unknown_names: UnknownNames,
    /// Keys what is stored of emailed codes; derived from the master key.
    code_key: CodeKey,
    attempts: AttemptLimiter,
    /// Signs audit checkpoints; `None`: this service signs none.
    audit_signing_key: Option<AuditSigningKey>,
    /// Credential ids by holder, and sign-ins without a password under way.
    passkeys: PasskeyIndex,
}

impl App {
    pub fn new(
        store: EventStore,
        projector: Arc<Projector>,
        vault: SecretVault,
        clock: Arc<dyn Clock>,
        settings: Settings,
        mailer: Mailer,
    ) -> std::io::Result<Self> {
        let passwords = PasswordHasher::start(
            settings.password_hash_workers,
            settings.password_hash_queue,
            LONGEST_HASHING_WAIT,
        )?;
        Ok(App {
            attempts: AttemptLimiter::new(settings.login_rate_per_ip),
            passkeys: PasskeyIndex::new(store.db().clone()),
            code_key: vault.code_key(),
            store,
            projector,
            vault,
            clock,
            settings,
            mailer,
            passwords,
            rejections: RecentRejections::default(),
            unknown_names: UnknownNames::default(),
            audit_signing_key: None,
        })
    }

    /// The service signs audit checkpoints with `key` and publishes its
    /// public half.
    pub fn with_audit_signing_key(mut self, key: AuditSigningKey) -> Self {
        self.audit_signing_key = Some(key);
        self
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(&self.clock)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn read_models(&self) -> &ReadModels {
        self.projector.read_models()
    }

    pub fn projector(&self) -> &Arc<Projector> {
        &self.projector
    }

    /// Whether the event store answers (readiness).
    pub async fn store_answers(&self) -> Result<(), AppError> {
        twofold_store::ping(self.store.db())
            .await
            .map_err(|error| AppError::from(twofold_store::StoreError::from(error)))
    }

    /// What a scrape of the metrics reports beside the counters: how far
    /// this process's read models are behind the store, its connections
    /// to the store, its CPU, memory and open files.
    pub async fn measure(&self) {
        match twofold_store::last_position(self.store.db()).await {
            Ok(last) => metrics::projection_lag(last - self.projector.applied().position),
            Err(error) => tracing::warn!(%error, "the projection lag could not be measured"),
        }
        let (open, idle) = self.store.db().connections();
        metrics::connections(open, idle);
        metrics::process().collect();
    }

    async fn load(&self, user_id: Uuid) -> Result<Loaded, AppError> {
        Ok(self.store.load(user_id).await?)
    }

    /// Runs `command` against the loaded user and answers once the read
    /// models hold its events, so the caller's next read sees them.
    async fn execute(
        &self,
        loaded: Loaded,
        metadata: &EventMetadata,
        command: UserCommand,
    ) -> Result<Committed, AppError> {
        let now = self.now();
        let committed = self
            .store
            .execute(loaded, metadata, command)
            .await
            .map_err(|error| AppError::from_store(error, now))?;
        crate::metrics::committed(&committed.events);
        self.settle(committed.last_position).await;
        Ok(committed)
    }

    /// Returns once the read models hold `position`, so the caller's next
    /// read sees its own write. The write itself is durable by then: if the
    /// read models lag (a long transaction elsewhere holds PostgreSQL's
    /// horizon back) the answer still reports success, and reads can ask
    /// for `min_position`.
    async fn settle(&self, position: Option<EventPosition>) {
        if let Some(position) = position {
            if let Err(error) = self
                .projector
                .wait_for(position, READ_YOUR_WRITES_TIMEOUT)
                .await
            {
                tracing::warn!(%error, position = position.position, "read models lag behind a write");
            }
        }
    }

    /// A notice the user should get but that must not fail the request.
    async fn notify(&self, to: Option<&str>, subject: &str, body: String) {
        let Some(to) = to else { return };
        let mail = OutgoingMail {
            to: to.to_string(),
            subject: subject.to_string(),
            body,
        };
        if let Err(error) = self.mailer.send(&mail).await {
            tracing::warn!(%error, "a notice email was not sent");
        }
    }

    /// Counts an attempt at a password (or a code standing for one) against
    /// the caller's address.
    fn admit_attempt(&self, origin: &RequestOrigin) -> Result<(), AppError> {
        match origin.ip {
            Some(ip) => self.attempts.admit(ip, self.now()),
            None => Ok(()),
        }
    }

    /// The metadata of an event caused by `actor` (no session yet: sign-in).
    fn metadata(&self, origin: &RequestOrigin, actor: Option<Uuid>) -> EventMetadata {
        EventMetadata {
            actor_id: actor,
            impersonator_id: None,
            ip: origin.ip.map(|ip| ip.to_string()),
            user_agent: origin.user_agent.clone(),
            request_id: origin.request_id.clone(),
            occurred_at: Some(self.now()),
        }
    }
}
