use chrono::{DateTime, Utc};

/// Time, injected so that tests can move it (challenge and code expiry).
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        system_now()
    }
}

/// The one reading of the wall clock.
#[allow(clippy::disallowed_methods)]
pub fn system_now() -> DateTime<Utc> {
    Utc::now()
}
