//! The 2FA-status report: read from the counters the projection keeps, so
//! it costs the same with ten users or ten million.

use twofold_domain::{Role, TwoFactorStatus};

use crate::db::{ProjectionError, ReadModels};

/// How many users share one role, 2FA status and enforcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwoFactorCount {
    pub role: Role,
    pub two_factor_status: TwoFactorStatus,
    pub enforced: bool,
    pub users: i64,
}

/// Users with each factor enabled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MethodCounts {
    pub totp: i64,
    pub passkey: i64,
}

impl ReadModels {
    /// How many users have an authenticator app, and how many a passkey,
    /// enabled. Unlike the counters above this reads the directory (one
    /// pass over it).
    pub async fn two_factor_methods(&self) -> Result<MethodCounts, ProjectionError> {
        const SQL: &str = "SELECT
                CAST(coalesce(sum(CASE WHEN totp_status = 'enabled' THEN 1 ELSE 0 END), 0) AS BIGINT) AS totp,
                CAST(coalesce(sum(CASE WHEN passkeys > 0 THEN 1 ELSE 0 END), 0) AS BIGINT) AS passkey
              FROM user_directory";
        let rows = self.0.fetch(SQL, vec![]).await?;
        match rows.first() {
            Some(row) => Ok(MethodCounts {
                totp: row.get("totp")?,
                passkey: row.get("passkey")?,
            }),
            None => Ok(MethodCounts::default()),
        }
    }

    pub async fn two_factor_counts(&self) -> Result<Vec<TwoFactorCount>, ProjectionError> {
        const SQL: &str = "SELECT role, two_factor_status, enforced, users FROM two_factor_counts
                            WHERE users <> 0 ORDER BY role, two_factor_status, enforced";
        let rows = self.0.fetch(SQL, vec![]).await?;
        rows.iter()
            .map(|row| {
                Ok(TwoFactorCount {
                    role: row.parsed("role")?,
                    two_factor_status: row.parsed("two_factor_status")?,
                    enforced: row.get("enforced")?,
                    users: row.get("users")?,
                })
            })
            .collect()
    }
}
