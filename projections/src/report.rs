//! The 2FA-status report: read from the counters the projection keeps, so
//! it costs the same with ten users or ten million.

use chrono::{DateTime, NaiveDate, Utc};
use twofold_domain::{Role, TwoFactorStatus};

use crate::db::{ProjectionError, ReadModels};
use crate::queries::directory_as_of;

/// How many users share one role, 2FA status and enforcement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwoFactorCount {
    pub role: Role,
    pub two_factor_status: TwoFactorStatus,
    pub enforced: bool,
    pub users: i64,
}

impl TwoFactorCount {
    pub(crate) fn from_row(row: &twofold_store::Row) -> Result<Self, ProjectionError> {
        Ok(TwoFactorCount {
            role: row.parsed("role")?,
            two_factor_status: row.parsed("two_factor_status")?,
            enforced: row.get("enforced")?,
            users: row.get("users")?,
        })
    }
}

/// The events that turn a user's 2FA on, as the trail holds them: an
/// authenticator app confirmed, a passkey registered (a second passkey of
/// the same user counts too).
const ENROLLMENTS: &[&str] = &["TotpEnrollmentConfirmed", "PasskeyRegistered"];

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
        self.count_methods("user_directory", vec![]).await
    }

    /// `two_factor_methods` as things stood at `at`.
    pub async fn two_factor_methods_as_of(
        &self,
        at: DateTime<Utc>,
    ) -> Result<MethodCounts, ProjectionError> {
        let source = format!(
            "({}) AS user_directory",
            directory_as_of(self.0.dialect(), 1)
        );
        self.count_methods(&source, vec![at.into()]).await
    }

    async fn count_methods(
        &self,
        source: &str,
        args: Vec<twofold_store::sql::Arg>,
    ) -> Result<MethodCounts, ProjectionError> {
        let sql = format!(
            "SELECT
                CAST(coalesce(sum(CASE WHEN totp_status = 'enabled' THEN 1 ELSE 0 END), 0) AS BIGINT) AS totp,
                CAST(coalesce(sum(CASE WHEN passkeys > 0 THEN 1 ELSE 0 END), 0) AS BIGINT) AS passkey
              FROM {source}"
        );
        let rows = self.0.fetch(&sql, args).await?;
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
        rows.iter().map(TwoFactorCount::from_row).collect()
    }
}
