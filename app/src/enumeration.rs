//! What keeps a username that does not exist indistinguishable from one
//! that does: the same answers in the same order (a lock after the same
//! wrong passwords) and the same time to give them.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hashlink::LruCache;
use twofold_domain::policy;

/// How long storing a wrong password took lately (the last 64). An unknown
/// username has nothing to store, so it waits one of these, picked at
/// random, before answering: the two failures then take the same time
/// whatever the load, and a stale figure only slows failures down.
#[derive(Default)]
pub struct RecentRejections(Mutex<VecDeque<Duration>>);

impl RecentRejections {
    const KEPT: usize = 64;
    /// A store in trouble answers 503 well before this.
    const LONGEST: Duration = Duration::from_secs(1);

    pub fn record(&self, took: Duration) {
        let mut recent = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == Self::KEPT {
            recent.pop_front();
        }
        recent.push_back(took.min(Self::LONGEST));
    }

    pub fn typical(&self) -> Duration {
        use rand::Rng;
        let recent = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.is_empty() {
            return Duration::ZERO;
        }
        recent[rand::thread_rng().gen_range(0..recent.len())]
    }
}

/// Wrong passwords for usernames that do not exist, counted as the user
/// aggregate counts a real user's (`policy::password_lock`), so that an
/// unknown name is locked after the same failures and answers 423 as long:
/// without it, "401 forever" told an attacker which names are real. Kept
/// in memory per process, for the most recently tried names only (a real
/// user's count is in its events and holds across processes; these are
/// forgotten on restart or when pushed out, which only makes an unknown
/// name look like a user whose lock expired).
pub struct UnknownNames(Mutex<LruCache<String, Failures>>);

#[derive(Clone, Copy, Default)]
struct Failures {
    consecutive: u32,
    locked_until: Option<DateTime<Utc>>,
}

impl UnknownNames {
    /// Names remembered at most (a few dozen bytes each).
    const KEPT: usize = 100_000;
    /// Longest name kept as typed; longer ones are cut (they are refused
    /// as usernames anyway).
    const LONGEST_NAME: usize = 128;

    fn key(name: &str) -> String {
        name.trim()
            .to_lowercase()
            .chars()
            .take(Self::LONGEST_NAME)
            .collect()
    }

    /// Until when this name is locked, as a real user's would be.
    pub fn locked_until(&self, name: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut names = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        names
            .get(&Self::key(name))
            .and_then(|failures| failures.locked_until)
            .filter(|until| *until > now)
    }

    /// Counts a wrong password for this name.
    pub fn failed(&self, name: &str, now: DateTime<Utc>) {
        let mut names = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let key = Self::key(name);
        let consecutive = names
            .get(&key)
            .map_or(0, |failures| failures.consecutive)
            .saturating_add(1);
        names.insert(
            key,
            Failures {
                consecutive,
                locked_until: policy::password_lock(consecutive, now),
            },
        );
    }
}

impl Default for UnknownNames {
    fn default() -> Self {
        Self(Mutex::new(LruCache::new(Self::KEPT)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_name_locks_after_as_many_failures_as_a_user() {
        let names = UnknownNames::default();
        let now = DateTime::<Utc>::UNIX_EPOCH;
        for _ in 1..policy::PASSWORD_FAILURES_BEFORE_LOCK {
            names.failed("Ghost", now);
            assert_eq!(names.locked_until("ghost", now), None);
        }
        names.failed(" ghost ", now);
        assert_eq!(
            names.locked_until("GHOST", now),
            policy::password_lock(policy::PASSWORD_FAILURES_BEFORE_LOCK, now)
        );
        assert_eq!(names.locked_until("other", now), None);
    }
}
