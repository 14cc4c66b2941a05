//! Sign-in attempts per client address per minute, in fixed one-minute
//! windows (sign-in, a password change and turning 2FA off share them).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};

use crate::error::AppError;

/// Per-address limits count an IPv6 client by this prefix: one subscriber
/// usually holds a whole /64, so counting single addresses would give each
/// client 2^64 separate limits.
pub const IPV6_LIMIT_PREFIX: u32 = 64;

/// Addresses remembered before the windows of past minutes are dropped.
const REMEMBERED: usize = 100_000;

/// The key a per-address limit counts `ip` under: an IPv4 address itself
/// (also when written IPv4-mapped), an IPv6 address's /64.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let network = u128::MAX << (128 - IPV6_LIMIT_PREFIX);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & network))
        }
    }
}

pub struct AttemptLimiter {
    per_minute: u32,
    windows: Mutex<HashMap<IpAddr, (i64, u32)>>,
}

impl AttemptLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one attempt from `ip`, or refuses it (429 with `Retry-After`).
    pub fn admit(&self, ip: IpAddr, now: DateTime<Utc>) -> Result<(), AppError> {
        let minute = now.timestamp().div_euclid(60);
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() > REMEMBERED {
            windows.retain(|_, (window, _)| *window == minute);
        }
        let entry = windows.entry(limit_key(ip)).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        if entry.1 >= self.per_minute {
            let retry_after = 60 - now.timestamp().rem_euclid(60);
            return Err(AppError::RateLimited { retry_after });
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_addresses_share_a_limit_per_64_and_ipv4_per_address() {
        assert_eq!(
            limit_key(ip("2001:db8:1:2:aaaa::1")),
            limit_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_ne!(
            limit_key(ip("2001:db8:1:2::1")),
            limit_key(ip("2001:db8:1:3::1"))
        );
        assert_ne!(limit_key(ip("192.0.2.1")), limit_key(ip("192.0.2.2")));
        assert_eq!(limit_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn addresses_in_one_ipv6_64_share_a_sign_in_limit_and_ipv4_ones_do_not() {
        let limiter = AttemptLimiter::new(2);
        let now = DateTime::<Utc>::UNIX_EPOCH;
        let admit = |text: &str| limiter.admit(ip(text), now).is_ok();
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
