use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use twofold_domain::sealed::CodeKey;
use twofold_domain::totp::TotpParameters;
use twofold_domain::{TwoFactorPolicy, User, UserCommand};
use twofold_projections::{EventPosition, Projector};

use crate::clock::Clock;
use crate::enumeration::{RecentRejections, UnknownNames};
use crate::error::ApiError;
use crate::mail::{Mailer, OutgoingMail};
use crate::security::{PasswordHasher, LONGEST_HASHING_WAIT};
use twofold_store::SecretVault;
use twofold_store::{Committed, EventMetadata, EventStore, Loaded};

/// Deployment choices that shape the rules.
#[derive(Clone, Debug)]
pub struct Settings {
    pub policy: TwoFactorPolicy,
    pub session_lifetime: chrono::Duration,
    pub session_idle: chrono::Duration,
    pub remember_device: chrono::Duration,
    pub totp: TotpParameters,
    pub totp_issuer: String,
    pub login_rate_per_ip: u32,
    /// Threads that hash passwords, each keeping a 19 MiB buffer.
    pub password_hash_workers: NonZeroUsize,
    /// Password checks admitted beyond what the workers run at once; more
    /// are answered 503 at once.
    pub password_hash_queue: usize,
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: EventStore,
    pub projector: Arc<Projector>,
    pub vault: SecretVault,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
    pub metrics: PrometheusHandle,
    pub mailer: Mailer,
    pub passwords: PasswordHasher,
    /// How long wrong passwords took to store (unknown usernames wait as long).
    pub rejections: RecentRejections,
    /// Wrong passwords for usernames that do not exist (locked alike).
    pub unknown_names: UnknownNames,
    /// Keys what is stored of emailed codes; derived from the master key.
    pub code_key: CodeKey,
    login_limiter: LoginLimiter,
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// How long a write's answer waits for the read models (read-your-writes).
pub const READ_YOUR_WRITES_TIMEOUT: Duration = Duration::from_secs(5);

impl AppState {
    pub fn new(
        store: EventStore,
        projector: Arc<Projector>,
        vault: SecretVault,
        clock: Arc<dyn Clock>,
        settings: Settings,
        metrics: PrometheusHandle,
        mailer: Mailer,
    ) -> std::io::Result<Self> {
        let login_limiter = LoginLimiter::new(settings.login_rate_per_ip);
        let code_key = vault.code_key();
        let passwords = PasswordHasher::start(
            settings.password_hash_workers,
            settings.password_hash_queue,
            LONGEST_HASHING_WAIT,
        )?;
        Ok(AppState(Arc::new(Inner {
            store,
            projector,
            vault,
            clock,
            settings,
            metrics,
            mailer,
            passwords,
            rejections: RecentRejections::default(),
            unknown_names: UnknownNames::default(),
            code_key,
            login_limiter,
        })))
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Runs `command` against the loaded user and answers once the read
    /// models hold its events, so the caller's next read sees them.
    pub async fn execute(
        &self,
        loaded: Loaded,
        metadata: &EventMetadata,
        command: impl FnMut(&User) -> UserCommand,
    ) -> Result<Committed, ApiError> {
        let committed = self.store.execute(loaded, metadata, command).await?;
        self.settle(committed.last_position).await;
        Ok(committed)
    }

    /// Returns once the read models hold `position`, so the caller's next
    /// read sees its own write. The write itself is durable by then: if the
    /// read models lag (a long transaction elsewhere holds PostgreSQL's
    /// horizon back) the answer still reports success, and reads can ask
    /// for `min_position`.
    pub async fn settle(&self, position: Option<EventPosition>) {
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
    pub async fn notify(&self, to: Option<&str>, subject: &str, body: String) {
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

    pub fn admit_login(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        match ip {
            Some(ip) => self.login_limiter.admit(ip, self.now()),
            None => Ok(()),
        }
    }
}

/// Sign-in attempts per address per minute, in fixed one-minute windows.
struct LoginLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (i64, u32)>>,
}

impl LoginLimiter {
    fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn admit(&self, ip: IpAddr, now: DateTime<Utc>) -> Result<(), ApiError> {
        let minute = now.timestamp().div_euclid(60);
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if windows.len() > 100_000 {
            windows.retain(|_, (window, _)| *window == minute);
        }
        let key = crate::client_address::limit_key(ip);
        let entry = windows.entry(key).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        if entry.1 >= self.per_minute {
            let retry_after = 60 - now.timestamp().rem_euclid(60);
            return Err(ApiError::RateLimited { retry_after });
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn addresses_in_one_ipv6_64_share_a_sign_in_limit_and_ipv4_ones_do_not() {
        let limiter = LoginLimiter::new(2);
        let now = Utc::now();
        let admit = |ip: &str| limiter.admit(ip.parse().unwrap(), now).is_ok();
        assert!(admit("2001:db8:0:1::1"));
        assert!(admit("2001:db8:0:1:ffff::2"));
        assert!(
            !admit("2001:db8:0:1::3"),
            "the third from one /64 is refused"
        );
        assert!(admit("2001:db8:0:2::1"), "another /64 has its own limit");
        assert!(admit("192.0.2.1"));
        assert!(admit("192.0.2.1"));
        assert!(!admit("::ffff:192.0.2.1"), "IPv4-mapped counts as IPv4");
        assert!(admit("192.0.2.2"), "each IPv4 address has its own limit");
    }
}
