//! The seeded population: deterministic users and their histories, built
//! from the domain's own `UserEvent` so that every stored payload has
//! exactly the shape the service writes, and every history folds.
//!
//! User `i` is a pure function of `i`: the driver finds the same names, ids
//! and kinds without reading anything back from the store.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use twofold_domain::totp::TotpParameters;
use twofold_domain::{
    AuthenticatedBy, Email, PasswordHash, Role, SecondFactorMethod, TokenHash, UserEvent, Username,
};
use uuid::Uuid;

/// Every seeded account's password.
pub const PASSWORD: &str = "load-password";
/// The seeded super admin that "created" every seeded user.
pub const ADMIN_USERNAME: &str = "load-admin";
/// The history-length pair for the 10 vs 10,000 events comparison.
pub const SHORT_HISTORY: u32 = 10;
pub const LONG_HISTORY: u32 = 10_000;

/// What a seeded user looks like to the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No 2FA, not enforced: a password sign-in is a full sign-in.
    Plain,
    Pending,
    PendingEnforced,
    Enabled,
    EnabledEnforced,
}

impl Kind {
    pub fn of(index: u64) -> Kind {
        match index % 20 {
            0..=11 => Kind::Plain,
            12 => Kind::Pending,
            13 => Kind::PendingEnforced,
            14 => Kind::EnabledEnforced,
            _ => Kind::Enabled,
        }
    }

    fn enforced(self) -> bool {
        matches!(self, Kind::PendingEnforced | Kind::EnabledEnforced)
    }

    fn enabled(self) -> bool {
        matches!(self, Kind::Enabled | Kind::EnabledEnforced)
    }

    pub fn two_factor_status(self) -> &'static str {
        match self {
            Kind::Plain => "disabled",
            Kind::Pending | Kind::PendingEnforced => "pending",
            Kind::Enabled | Kind::EnabledEnforced => "enabled",
        }
    }

    /// Events every user of this kind has before the repeated sign-ins.
    fn opening(self) -> &'static [Opening] {
        use Opening::*;
        match self {
            Kind::Plain => &[Registered],
            Kind::Pending => &[Registered, EnrollStarted],
            Kind::PendingEnforced => &[Registered, Enforced, EnrollStarted],
            Kind::Enabled => &[Registered, EnrollStarted, EnrollConfirmed],
            Kind::EnabledEnforced => &[Registered, Enforced, EnrollStarted, EnrollConfirmed],
        }
    }

    /// The repeated part: a wrong password, a sign-in and a sign-out, or
    /// for 2FA users a challenge, an accepted code, a session and a sign-out.
    fn cycle_len(self) -> u32 {
        if self.enabled() {
            4
        } else {
            3
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opening {
    Registered,
    Enforced,
    EnrollStarted,
    EnrollConfirmed,
}

/// A deterministic, random-looking version-4 UUID (random keys spread over
/// the indexes as real ones do).
pub fn det_uuid(a: u64, b: u64) -> Uuid {
    let high = splitmix(a ^ splitmix(b ^ 0x7477_6f66_6f6c_6421));
    let low = splitmix(high ^ b.rotate_left(17) ^ 0x5eed);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&high.to_be_bytes());
    bytes[8..].copy_from_slice(&low.to_be_bytes());
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Indexes above every regular user's, for the special accounts.
const ADMIN_INDEX: u64 = u64::MAX;
const SHORT_INDEX: u64 = u64::MAX - 1;
const LONG_INDEX: u64 = u64::MAX - 2;

#[derive(Clone, Debug)]
pub struct SeedUser {
    pub index: u64,
    pub id: Uuid,
    pub username: String,
    name: Username,
    email: Option<Email>,
    pub role: Role,
    pub kind: Kind,
    /// Length of the user's history.
    pub events: u32,
}

pub fn username(index: u64) -> String {
    format!("load-{index:07}")
}

pub fn user_id(index: u64) -> Uuid {
    det_uuid(index, 1)
}

impl SeedUser {
    fn new(
        index: u64,
        username: String,
        role: Role,
        kind: Kind,
        events: u32,
    ) -> anyhow::Result<Self> {
        let name = Username::parse(&username)
            .map_err(|error| anyhow::anyhow!("bad seed username {username}: {error}"))?;
        let email = Email::parse(&format!("{username}@example.com"))
            .map_err(|error| anyhow::anyhow!("bad seed email for {username}: {error}"))?;
        Ok(SeedUser {
            index,
            id: user_id(index),
            username,
            name,
            email: Some(email),
            role,
            kind,
            events,
        })
    }

    pub fn regular(index: u64, events: u32) -> anyhow::Result<Self> {
        Self::new(index, username(index), Role::User, Kind::of(index), events)
    }

    pub fn admin() -> anyhow::Result<Self> {
        Self::new(
            ADMIN_INDEX,
            ADMIN_USERNAME.into(),
            Role::SuperAdmin,
            Kind::Plain,
            1,
        )
    }

    pub fn short_history() -> anyhow::Result<Self> {
        Self::history(SHORT_INDEX, SHORT_HISTORY)
    }

    pub fn long_history() -> anyhow::Result<Self> {
        Self::history(LONG_INDEX, LONG_HISTORY)
    }

    fn history(index: u64, events: u32) -> anyhow::Result<Self> {
        Self::new(
            index,
            format!("hist-{events}"),
            Role::User,
            Kind::Plain,
            events,
        )
    }

    pub fn email(&self) -> String {
        self.email
            .as_ref()
            .map(|e| e.as_str().to_string())
            .unwrap_or_default()
    }

    pub fn enforced(&self) -> bool {
        self.kind.enforced()
    }
}

/// The regular users that are plain (no 2FA, not enforced), in order:
/// password sign-ins use them, and the TOTP pool is enrolled from them.
pub fn plain_indexes(users: u64) -> impl Iterator<Item = u64> {
    (0..users).filter(|i| Kind::of(*i) == Kind::Plain)
}

/// One event as the store keeps it, before it has a position.
#[derive(Clone, Debug)]
pub struct SeedEvent {
    pub user_id: Uuid,
    pub sequence: u32,
    pub event: UserEvent,
    pub metadata: Value,
    pub at: DateTime<Utc>,
}

/// Fixed facts shared by every generated event.
#[derive(Clone)]
pub struct Timeline {
    /// When the oldest event happened.
    pub start: DateTime<Utc>,
    /// The time between two sign-in cycles of a user.
    pub spacing: Duration,
    pub password_hash: PasswordHash,
    pub admin_id: Uuid,
}

impl Timeline {
    /// Histories spread over the year before `now`, so that the last events
    /// of the longest one end before `now`.
    pub fn new(now: DateTime<Utc>, longest_history: u32, password_hash: PasswordHash) -> Self {
        let cycles = i64::from(longest_history.max(4) / 3 + 2);
        let year = Duration::days(365);
        Timeline {
            start: now - year - Duration::hours(2),
            spacing: Duration::seconds((year.num_seconds() / cycles).max(60)),
            password_hash,
            admin_id: user_id(ADMIN_INDEX),
        }
    }

    fn time(&self, user: &SeedUser, cycle: u32, step: u32) -> DateTime<Utc> {
        // Spread users over an hour so that they don't all act at once.
        let jitter = Duration::seconds(i64::try_from(user.index % 3600).unwrap_or(0));
        self.start
            + jitter
            + self.spacing * i32::try_from(cycle).unwrap_or(i32::MAX)
            + Duration::seconds(5 * i64::from(step))
    }

    /// Event number `sequence` (1-based) of `user`'s history.
    pub fn event(&self, user: &SeedUser, sequence: u32) -> SeedEvent {
        let opening = user.kind.opening();
        let offset = sequence.saturating_sub(1);
        let (event, at, actor) = match opening.get(offset as usize) {
            Some(step) => {
                let at = self.time(user, 0, offset);
                let (event, actor) = self.opening_event(user, *step, at);
                (event, at, actor)
            }
            None => {
                let filler = offset - opening.len() as u32;
                let cycle = filler / user.kind.cycle_len();
                let step = filler % user.kind.cycle_len();
                let at = self.time(user, cycle + 1, step);
                (self.cycle_event(user, cycle, step, at), at, user.id)
            }
        };
        let request_id = det_uuid(user.index, u64::from(sequence) << 8 | 3);
        SeedEvent {
            user_id: user.id,
            sequence,
            event,
            metadata: metadata(actor, request_id, at),
            at,
        }
    }

    fn opening_event(
        &self,
        user: &SeedUser,
        step: Opening,
        at: DateTime<Utc>,
    ) -> (UserEvent, Uuid) {
        let enrollment_id = det_uuid(user.index, 7);
        let admin = if user.index == ADMIN_INDEX {
            user.id
        } else {
            self.admin_id
        };
        match step {
            Opening::Registered => (
                UserEvent::UserRegistered {
                    user_id: user.id,
                    username: user.name.clone(),
                    email: user.email.clone(),
                    role: user.role,
                    password_hash: self.password_hash.clone(),
                    registered_at: at,
                },
                admin,
            ),
            Opening::Enforced => (
                UserEvent::TwoFactorEnforced {
                    reason: Some("load test population".into()),
                },
                admin,
            ),
            Opening::EnrollStarted => (
                UserEvent::TotpEnrollmentStarted {
                    enrollment_id,
                    parameters: TotpParameters::default(),
                },
                user.id,
            ),
            Opening::EnrollConfirmed => (
                UserEvent::TotpEnrollmentConfirmed {
                    enrollment_id,
                    accepted_step: step_at(at),
                    recovery_code_hashes: (0..10)
                        .map(|k| TokenHash::of(&format!("seed-recovery-{}-{k}", user.index)))
                        .collect(),
                    enabled_at: at,
                },
                user.id,
            ),
        }
    }

    fn cycle_event(&self, user: &SeedUser, cycle: u32, step: u32, at: DateTime<Utc>) -> UserEvent {
        let session_id = det_uuid(user.index, u64::from(cycle) << 8 | 1);
        let session_started = |authenticated_by, enrollment_required| UserEvent::SessionStarted {
            session_id,
            token_hash: TokenHash::of(&format!("seed-session-{}-{cycle}", user.index)),
            authenticated_by,
            started_at: at,
            expires_at: at + Duration::hours(12),
            enrollment_required,
            impersonator_id: None,
            device_id: None,
        };
        if user.kind.enabled() {
            let challenge_id = det_uuid(user.index, u64::from(cycle) << 8 | 2);
            match step {
                0 => UserEvent::ChallengeIssued {
                    challenge_id,
                    methods: vec![SecondFactorMethod::Totp, SecondFactorMethod::RecoveryCode],
                    expires_at: at + Duration::minutes(5),
                },
                1 => UserEvent::SecondFactorAccepted {
                    challenge_id,
                    method: SecondFactorMethod::Totp,
                    totp_step: Some(step_at(at)),
                    recovery_code_index: None,
                },
                2 => session_started(AuthenticatedBy::Totp, false),
                _ => UserEvent::SessionEnded { session_id },
            }
        } else {
            match step {
                0 => UserEvent::PasswordRejected {
                    consecutive_failures: 1,
                    locked_until: None,
                },
                1 => session_started(AuthenticatedBy::Password, user.enforced()),
                _ => UserEvent::SessionEnded { session_id },
            }
        }
    }
}

fn step_at(at: DateTime<Utc>) -> u64 {
    TotpParameters::default().step_at(u64::try_from(at.timestamp()).unwrap_or(0))
}

/// The metadata `EventMetadata` in api/src/store.rs writes: absent values
/// left out, every value a string.
pub fn metadata(actor: Uuid, request_id: Uuid, at: DateTime<Utc>) -> Value {
    json!({
        "actor_id": actor,
        "ip": "127.0.0.1",
        "user_agent": "twofold-load seed",
        "request_id": request_id.to_string(),
        "occurred_at": at,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use cqrs_es::Aggregate;
    use twofold_domain::{TwoFactorStatus, User};

    fn timeline() -> Timeline {
        Timeline::new(
            Utc::now(),
            LONG_HISTORY,
            PasswordHash::new("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into()),
        )
    }

    fn fold(timeline: &Timeline, user: &SeedUser) -> User {
        let mut state = User::default();
        for sequence in 1..=user.events {
            // Round trip through JSON: what is stored must read back.
            let event = timeline.event(user, sequence).event;
            let stored = serde_json::to_value(&event).unwrap();
            state.apply(serde_json::from_value(stored).unwrap());
        }
        state
    }

    #[test]
    fn payloads_are_externally_tagged_like_the_service_writes_them() {
        let timeline = timeline();
        let event = timeline.event(&SeedUser::regular(3, 10).unwrap(), 1);
        let payload = serde_json::to_value(&event.event).unwrap();
        let registered = &payload["UserRegistered"];
        assert_eq!(registered["username"], "load-0000003");
        assert_eq!(registered["role"], "user");
        assert!(registered["password_hash"]
            .as_str()
            .unwrap()
            .starts_with("$argon2id$"));
        assert_eq!(event.metadata["user_agent"], "twofold-load seed");
        assert!(event.metadata["occurred_at"]
            .as_str()
            .unwrap()
            .ends_with('Z'));
    }

    #[test]
    fn every_kind_of_history_folds_to_the_state_its_kind_claims() {
        let timeline = timeline();
        for index in 0..40 {
            for events in [1, 2, 3, 4, 5, 6, 7, 9, 10, 23] {
                let user = SeedUser::regular(index, events).unwrap();
                let state = fold(&timeline, &user);
                assert_eq!(state.profile().unwrap().username.as_str(), user.username);
                if events < user.kind.opening().len() as u32 {
                    continue;
                }
                let status = match state.two_factor_status() {
                    TwoFactorStatus::Enabled => "enabled",
                    TwoFactorStatus::Pending => "pending",
                    TwoFactorStatus::Disabled => "disabled",
                };
                assert_eq!(
                    status,
                    user.kind.two_factor_status(),
                    "user {index} with {events} events"
                );
                assert_eq!(
                    state.is_enforced(),
                    user.enforced(),
                    "user {index} with {events} events"
                );
            }
        }
    }

    #[test]
    fn the_long_history_folds_and_can_sign_in() {
        let timeline = timeline();
        let user = SeedUser::long_history().unwrap();
        let state = fold(&timeline, &user);
        assert_eq!(state.password_locked_until(Utc::now()), None);
        assert!(state.profile().is_some());
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(user_id(5), user_id(5));
        let ids: std::collections::HashSet<Uuid> = (0..10_000).map(user_id).collect();
        assert_eq!(ids.len(), 10_000);
        assert_eq!(user_id(9).get_version_num(), 4);
        assert_eq!(plain_indexes(20).count(), 12);
    }
}
