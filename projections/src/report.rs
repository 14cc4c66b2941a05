//! The 2FA-status report: read from the counters the projection keeps, so
//! it costs the same with ten users or ten million.

use chrono::{DateTime, NaiveDate, Utc};
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

/// The events that turn a user's 2FA on: an enrollment, as the trail holds it.
const ENROLLMENTS: &[&str] = &["TotpEnrollmentConfirmed"];

impl ReadModels {
    /// How many enrollments the trail holds on each day (UTC) from `from` on;
    /// days without one are absent.
    pub async fn enrollments_per_day(
        &self,
        from: DateTime<Utc>,
    ) -> Result<Vec<(NaiveDate, i64)>, ProjectionError> {
        let sql = format!(
            "SELECT occurred_at FROM audit_log
              WHERE type IN (SELECT item FROM ({}) AS listed) AND occurred_at >= $2",
            self.0.dialect().listed(1)
        );
        let rows = self
            .0
            .fetch(&sql, vec![twofold_store::listed(ENROLLMENTS), from.into()])
            .await?;
        let mut days = std::collections::BTreeMap::new();
        for row in rows {
            let at: DateTime<Utc> = row.get("occurred_at")?;
            *days.entry(at.date_naive()).or_insert(0) += 1;
        }
        Ok(days.into_iter().collect())
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
