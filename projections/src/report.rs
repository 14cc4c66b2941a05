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

impl ReadModels {
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
