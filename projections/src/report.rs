//! The 2FA-status report: read from the counters the projection keeps, so
//! it costs the same with ten users or ten million.

use sqlx::Row;
use twofold_domain::{Role, TwoFactorStatus};

use crate::db::{ProjectionError, ReadModels};
use crate::on_pool;
use crate::queries::named;

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
        on_pool!(&self.0, pool => {
            let rows = sqlx::query(SQL).fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    Ok(TwoFactorCount {
                        role: named("role", row.try_get("role")?)?,
                        two_factor_status: named(
                            "two_factor_status",
                            row.try_get("two_factor_status")?,
                        )?,
                        enforced: row.try_get("enforced")?,
                        users: row.try_get("users")?,
                    })
                })
                .collect()
        })
    }
}
