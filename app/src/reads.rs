//! What auditors, admins and super admins read: the 2FA report and its
//! mandatory-date forecast, the audit trail, a user's timeline, the trail's
//! verification; and read-your-writes for every read.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use tokio::time::Instant;
use twofold_domain::{Role, TwoFactorStatus};
use twofold_projections::{
    cases, AuditFilter, Case, CheckpointCheck, DescribedEntry, ProjectionError, ReadModels,
    VerifyReport,
};
use uuid::Uuid;

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

/// One user's history: every event in a sentence, and what belongs together.
#[derive(Clone, Debug, PartialEq)]
pub struct UserTimeline {
    pub entries: Vec<DescribedEntry>,
    pub cases: Vec<Case>,
}

/// The days the forecast's pace is measured over.
pub const FORECAST_DAYS: i64 = 30;

/// Who is still without 2FA, the pace of enrollments, and when everyone
/// would be enrolled at that pace.
#[derive(Clone, Debug, PartialEq)]
pub struct Forecast {
    /// The platform-wide date from which every user must have 2FA.
    pub mandatory_from: Option<DateTime<Utc>>,
    pub without_two_factor: i64,
    /// Users without 2FA, every role listed.
    pub by_role: BTreeMap<Role, i64>,
    /// The last `FORECAST_DAYS` days (UTC), oldest first, today last.
    pub enrollments_per_day: Vec<(NaiveDate, i64)>,
    /// Now when nobody is left; `None` when nobody enrolled in those days.
    pub projected_all_enrolled_at: Option<DateTime<Utc>>,
}

impl Forecast {
    /// Everyone left, enrolled at the average pace of the days counted.
    fn project(
        without: i64,
        per_day: &[(NaiveDate, i64)],
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if without == 0 {
            return Some(now);
        }
        let enrolled: i64 = per_day.iter().map(|(_, count)| count).sum();
        if enrolled == 0 {
            return None;
        }
        // Seconds to go = users left / (enrollments per second).
        let seconds = without as f64 * (FORECAST_DAYS * 86_400) as f64 / enrolled as f64;
        chrono::Duration::try_seconds(seconds.ceil() as i64)
            .and_then(|wait| now.checked_add_signed(wait))
    }
}

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

    /// An instant `as_of` may name: not one still to come.
    pub(crate) fn in_the_past(&self, at: DateTime<Utc>) -> Result<(), AppError> {
        if at > self.now() {
            return Err(AppError::InvalidRequest(
                "as_of is in the future; history answers only for instants passed".into(),
            ));
        }
        Ok(())
    }

    /// The 2FA report, from the counters the projection keeps (the same
    /// cost with ten users or ten million); or (`as_of`) counted from each
    /// user's version at a past instant.
    pub async fn two_factor_report(
        &self,
        session: &Session,
        as_of: Option<DateTime<Utc>>,
        min_position: Option<i64>,
    ) -> Result<TwoFactorReport, AppError> {
        self.may_read_reports(session)?;
        if let Some(at) = as_of {
            self.in_the_past(at)?;
        }
        self.reach(min_position).await?;
        let counts = match as_of {
            None => self.read_models().two_factor_counts().await?,
            Some(at) => self.read_models().two_factor_counts_as_of(at).await?,
        };
        let by_method = match as_of {
            None => self.read_models().two_factor_methods().await?,
            Some(at) => self.read_models().two_factor_methods_as_of(at).await?,
        };
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
            as_of: as_of.unwrap_or_else(|| self.now()),
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

    /// One page of the audit trail in stored order, each row with the
    /// people it names and a sentence, and whether more follow.
    pub async fn audit_page(
        &self,
        session: &Session,
        query: &AuditQuery,
        min_position: Option<i64>,
    ) -> Result<(Vec<DescribedEntry>, bool), AppError> {
        self.may_read_reports(session)?;
        self.reach(min_position).await?;
        Ok(self.read_models().described_audit_page(query).await?)
    }

    /// One user's history for auditors, once the read models hold
    /// `min_position`.
    pub async fn user_timeline(
        &self,
        session: &Session,
        user_id: Uuid,
        min_position: Option<i64>,
    ) -> Result<UserTimeline, AppError> {
        self.may_read_reports(session)?;
        self.reach(min_position).await?;
        let read_models = self.read_models();
        if read_models.directory_entry(user_id).await?.is_none() {
            return Err(AppError::NotFound("no such user"));
        }
        let entries = read_models.timeline(user_id).await?;
        let cases = cases(&entries, self.now());
        Ok(UserTimeline { entries, cases })
    }

    /// The mandatory-date forecast: who is left, the pace of the last
    /// `FORECAST_DAYS` days, and the day everyone is enrolled at that pace.
    pub async fn two_factor_forecast(
        &self,
        session: &Session,
        min_position: Option<i64>,
    ) -> Result<Forecast, AppError> {
        let report = self.two_factor_report(session, None, min_position).await?;
        let now = report.as_of;
        let today = now.date_naive();
        let first_day = today - chrono::Days::new(FORECAST_DAYS as u64 - 1);
        let counted: BTreeMap<NaiveDate, i64> = self
            .read_models()
            .enrollments_per_day(first_day.and_time(NaiveTime::MIN).and_utc())
            .await?
            .into_iter()
            .collect();
        let enrollments_per_day: Vec<(NaiveDate, i64)> = first_day
            .iter_days()
            .take(FORECAST_DAYS as usize)
            .map(|day| (day, counted.get(&day).copied().unwrap_or(0)))
            .collect();
        let without_two_factor = report.total - report.enabled;
        Ok(Forecast {
            mandatory_from: self.settings.policy.mandatory_from,
            without_two_factor,
            by_role: report
                .by_role
                .iter()
                .map(|(role, count)| (*role, count.total - count.enabled))
                .collect(),
            projected_all_enrolled_at: Forecast::project(
                without_two_factor,
                &enrollments_per_day,
                now,
            ),
            enrollments_per_day,
        })
    }

    /// Recomputes the chains over everything applied so far (catching up
    /// first, so the answer covers every event committed before the request).
    pub async fn verify_audit_trail(&self, session: &Session) -> Result<VerifyReport, AppError> {
        self.may_read_reports(session)?;
        self.projector.catch_up().await?;
        let report = self
            .read_models()
            .verify_audit_trail(None, &CheckpointCheck::default(), |_| {})
            .await?;
        if !report.ok {
            tracing::error!(?report.first_mismatch, "the audit trail does not match the events");
        }
        Ok(report)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn days(counts: &[i64]) -> Vec<(NaiveDate, i64)> {
        let first = NaiveDate::from_ymd_opt(2026, 11, 4).unwrap();
        first.iter_days().zip(counts.iter().copied()).collect()
    }

    #[test]
    fn the_projection_divides_who_is_left_by_the_pace_of_the_last_thirty_days() {
        let now = DateTime::parse_from_rfc3339("2026-12-03T12:00:00Z")
            .unwrap()
            .to_utc();
        // 60 enrollments in 30 days: 2 a day; 10 left: 5 days.
        let mut counts = vec![0; 30];
        counts[0] = 30;
        counts[29] = 30;
        assert_eq!(
            Forecast::project(10, &days(&counts), now),
            Some(now + chrono::Duration::days(5))
        );
        assert_eq!(
            Forecast::project(10, &days(&[0; 30]), now),
            None,
            "no pace: no date"
        );
        assert_eq!(
            Forecast::project(0, &days(&[0; 30]), now),
            Some(now),
            "nobody left"
        );
    }
}
