//! What auditors, admins and super admins read: the 2FA report, the audit
//! trail and its verification; and read-your-writes for every read.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use twofold_domain::{Role, TwoFactorStatus};
use twofold_projections::{AuditEntry, AuditFilter, ProjectionError, ReadModels, VerifyReport};

use crate::{App, AppError, Session, READ_YOUR_WRITES_TIMEOUT};

/// How often to look again for an event not yet visible to this process.
const LOOK_AGAIN: Duration = Duration::from_millis(25);

/// Users and those with 2FA enabled, for one role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoleCount {
    pub total: i64,
    pub enabled: i64,
}

/// Counts of users by 2FA status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwoFactorReport {
    pub total: i64,
    pub enabled: i64,
    pub pending: i64,
    pub disabled: i64,
    pub enforced: i64,
    pub enforced_not_enabled: i64,
    /// Every role, always listed.
    pub by_role: BTreeMap<Role, RoleCount>,
    /// Users with each factor enabled.
    pub by_method: twofold_projections::MethodCounts,
    /// When the counts were read.
    pub as_of: DateTime<Utc>,
}

/// A page of the audit trail to read.
pub type AuditQuery = AuditFilter;

impl App {
    /// Refused unless the session may read reports and the audit trail.
    pub fn may_read_reports(&self, session: &Session) -> Result<(), AppError> {
        session.full()?;
        session.require(Role::can_read_reports)
    }

    /// The read models, for a reader allowed to stream every row of them
    /// (the CSV and JSON-lines exports), once they hold `min_position`.
    pub async fn reports_for(
        &self,
        session: &Session,
        min_position: Option<i64>,
    ) -> Result<ReadModels, AppError> {
        self.may_read_reports(session)?;
        self.reach(min_position).await?;
        Ok(self.read_models().clone())
    }

    /// Returns once the read models hold the event stored at `position`
    /// (`min_position`, read-your-writes across processes), or 503 after
    /// 5 s. The caller's rights are checked first: nobody waits before being
    /// told they may not read.
    pub(crate) async fn reach(&self, position: Option<i64>) -> Result<(), AppError> {
        let Some(position) = position else {
            return Ok(());
        };
        let deadline = Instant::now() + READ_YOUR_WRITES_TIMEOUT;
        loop {
            // Not found yet: still being written elsewhere, or never will be.
            if let Some(at) = self.projector.locate(position).await? {
                let left = deadline.saturating_duration_since(Instant::now());
                return match self.projector.wait_for(at, left).await {
                    // The caller asked for a future the models have not
                    // reached: not a fault of the store, no warning logged.
                    Err(ProjectionError::Lagging) => Err(AppError::Unavailable { retry_after: 1 }),
                    other => Ok(other?),
                };
            }
            if Instant::now() >= deadline {
                return Err(AppError::Unavailable { retry_after: 1 });
            }
            tokio::time::sleep(LOOK_AGAIN).await;
        }
    }

    /// The 2FA report, from the counters the projection keeps (the same
    /// cost with ten users or ten million).
    pub async fn two_factor_report(
        &self,
        session: &Session,
        min_position: Option<i64>,
    ) -> Result<TwoFactorReport, AppError> {
        self.may_read_reports(session)?;
        self.reach(min_position).await?;
        let counts = self.read_models().two_factor_counts().await?;
        let by_method = self.read_models().two_factor_methods().await?;
        let mut report = TwoFactorReport {
            by_method,
            total: 0,
            enabled: 0,
            pending: 0,
            disabled: 0,
            enforced: 0,
            enforced_not_enabled: 0,
            by_role: Role::ALL
                .into_iter()
                .map(|role| (role, RoleCount::default()))
                .collect(),
            as_of: self.now(),
        };
        for count in &counts {
            let is_enabled = count.two_factor_status == TwoFactorStatus::Enabled;
            report.total += count.users;
            match count.two_factor_status {
                TwoFactorStatus::Enabled => report.enabled += count.users,
                TwoFactorStatus::Pending => report.pending += count.users,
                TwoFactorStatus::Disabled => report.disabled += count.users,
            }
            if count.enforced {
                report.enforced += count.users;
                if !is_enabled {
                    report.enforced_not_enabled += count.users;
                }
            }
            let by_role = report.by_role.entry(count.role).or_default();
            by_role.total += count.users;
            if is_enabled {
                by_role.enabled += count.users;
            }
        }
        Ok(report)
    }

    /// One page of the audit trail in stored order, and whether more follow.
    pub async fn audit_page(
        &self,
        session: &Session,
        query: &AuditQuery,
        min_position: Option<i64>,
    ) -> Result<(Vec<AuditEntry>, bool), AppError> {
        self.may_read_reports(session)?;
        self.reach(min_position).await?;
        Ok(self.read_models().audit_page(query).await?)
    }

    /// Recomputes the chains over everything applied so far (catching up
    /// first, so the answer covers every event committed before the request).
    pub async fn verify_audit_trail(&self, session: &Session) -> Result<VerifyReport, AppError> {
        self.may_read_reports(session)?;
        self.projector.catch_up().await?;
        let report = self.read_models().verify_audit_trail(None, |_| {}).await?;
        if !report.ok {
            tracing::error!(?report.first_mismatch, "the audit trail does not match the events");
        }
        Ok(report)
    }
}
