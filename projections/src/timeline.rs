//! One user's history as an auditor reads it: every event of the user in a
//! sentence, and the cases that group what belongs together: a "Login as"
//! session with every event caused under it, an administrator's 2FA reset,
//! an enforcement change (each with the events its request stored).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::audit::AuditFilter;
use crate::db::{ProjectionError, ReadModels};
use crate::describe::DescribedEntry;

/// Rows read per query while gathering a timeline.
const PAGE: u32 = 500;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaseKind {
    Impersonation,
    Reset,
    Enforcement,
}

impl CaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CaseKind::Impersonation => "impersonation",
            CaseKind::Reset => "reset",
            CaseKind::Enforcement => "enforcement",
        }
    }
}

/// What belongs together in a user's history.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    pub kind: CaseKind,
    pub started_at: DateTime<Utc>,
    /// When a "Login as" session ended (or ran out); a reset or an
    /// enforcement change ends when it starts. `None` while a session runs.
    pub ended_at: Option<DateTime<Utc>>,
    /// The administrator who acted.
    pub actor_id: Option<String>,
    pub reason: Option<String>,
    pub ticket: Option<String>,
    /// The positions of the events of the case, in order.
    pub positions: Vec<i64>,
}

impl ReadModels {
    /// Every event of `user_id`, described, in stored order.
    pub async fn timeline(&self, user_id: Uuid) -> Result<Vec<DescribedEntry>, ProjectionError> {
        let mut filter = AuditFilter {
            user_id: Some(user_id),
            limit: PAGE,
            ..AuditFilter::default()
        };
        let mut entries = Vec::new();
        loop {
            let (page, more) = self.described_audit_page(&filter).await?;
            if let Some(last) = page.last() {
                filter.after_id = last.entry.id;
            }
            entries.extend(page);
            if !more {
                return Ok(entries);
            }
        }
    }
}

fn text(data: &Value, key: &str) -> Option<String> {
    data.get(key)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
        .map(str::to_string)
}

fn time(data: &Value, key: &str) -> Option<DateTime<Utc>> {
    let at = DateTime::parse_from_rfc3339(data.get(key)?.as_str()?).ok()?;
    Some(at.with_timezone(&Utc))
}

/// A "Login as" session still open while its events are read.
struct Open {
    case: usize,
    impersonation_id: Option<String>,
    session_id: Option<String>,
    impersonator_id: Option<String>,
    expires_at: Option<DateTime<Utc>>,
}

/// The cases of one user's `entries` (in stored order), seen at `now`: a
/// session that was never ended closes when it ran out.
pub fn cases(entries: &[DescribedEntry], now: DateTime<Utc>) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    // Resets and enforcement changes by the request that made them.
    let mut by_request: HashMap<&str, usize> = HashMap::new();
    for described in entries {
        let entry = &described.entry;
        let data = &entry.data;
        let single = |kind| Case {
            kind,
            started_at: entry.occurred_at,
            ended_at: Some(entry.occurred_at),
            actor_id: entry.actor_id.clone(),
            reason: text(data, "reason"),
            ticket: text(data, "ticket"),
            positions: vec![entry.position],
        };
        match entry.event_type.as_str() {
            "ImpersonationStarted" => {
                let impersonator_id = text(data, "impersonator_id").or(entry.actor_id.clone());
                open.push(Open {
                    case: cases.len(),
                    impersonation_id: text(data, "impersonation_id"),
                    session_id: text(data, "session_id"),
                    impersonator_id: impersonator_id.clone(),
                    expires_at: time(data, "expires_at"),
                });
                cases.push(Case {
                    actor_id: impersonator_id,
                    ended_at: None,
                    ..single(CaseKind::Impersonation)
                });
            }
            "ImpersonationEnded" => {
                let id = text(data, "impersonation_id");
                if let Some(index) = open
                    .iter()
                    .position(|session| session.impersonation_id == id)
                {
                    let session = open.remove(index);
                    let case = &mut cases[session.case];
                    case.positions.push(entry.position);
                    case.ended_at = Some(entry.occurred_at);
                }
            }
            kind @ ("TwoFactorReset" | "TwoFactorEnforced" | "TwoFactorEnforcementLifted") => {
                if let Some(request) = &described.correlation_id {
                    by_request.insert(request, cases.len());
                }
                cases.push(single(if kind == "TwoFactorReset" {
                    CaseKind::Reset
                } else {
                    CaseKind::Enforcement
                }));
            }
            _ => {
                // Caused under a "Login as" session: its events record the
                // administrator; the session's own start records it in data.
                let session_id = text(data, "session_id");
                let under = open.iter().find(|session| {
                    (entry.impersonator_id.is_some()
                        && session.impersonator_id == entry.impersonator_id)
                        || (session_id.is_some() && session.session_id == session_id)
                });
                if let Some(session) = under {
                    cases[session.case].positions.push(entry.position);
                }
            }
        }
    }
    // What else the request of a reset or an enforcement change stored.
    for described in entries {
        let Some(request) = &described.correlation_id else {
            continue;
        };
        if let Some(&case) = by_request.get(request.as_str()) {
            let positions = &mut cases[case].positions;
            if !positions.contains(&described.entry.position) {
                positions.push(described.entry.position);
                positions.sort_unstable();
            }
        }
    }
    for session in open {
        if let Some(expired) = session.expires_at.filter(|at| *at <= now) {
            cases[session.case].ended_at = Some(expired);
        }
    }
    cases
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::AuditEntry;
    use serde_json::json;

    const ANN: &str = "0b0c7d0e-0000-4000-8000-00000000a000";
    const CAROL: &str = "0b0c7d0e-0000-4000-8000-00000000c000";

    fn at(minute: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-12-03T10:{minute:02}:00Z"))
            .unwrap()
            .into()
    }

    fn row(
        position: i64,
        event_type: &str,
        actor: Option<&str>,
        impersonator: Option<&str>,
        request: &str,
        data: Value,
    ) -> DescribedEntry {
        DescribedEntry {
            entry: AuditEntry {
                id: position,
                position,
                user_id: CAROL.to_string(),
                sequence: position,
                event_type: event_type.to_string(),
                occurred_at: at(position as u32),
                actor_id: actor.map(str::to_string),
                impersonator_id: impersonator.map(str::to_string),
                ip: None,
                user_agent: None,
                data,
                chain_hash: String::new(),
                head_hash: String::new(),
            },
            correlation_id: Some(request.to_string()),
            username: None,
            actor_username: None,
            impersonator_username: None,
            summary: String::new(),
        }
    }

    fn login_as(position: i64, expires: u32) -> DescribedEntry {
        row(
            position,
            "ImpersonationStarted",
            Some(ANN),
            None,
            "r1",
            json!({"impersonation_id": "i1", "session_id": "s1", "impersonator_id": ANN,
                   "reason": "locked out", "ticket": "T-12",
                   "expires_at": at(expires).to_rfc3339()}),
        )
    }

    #[test]
    fn a_login_as_case_holds_every_event_caused_under_its_session() {
        let entries = [
            row(
                1,
                "SessionStarted",
                Some(CAROL),
                None,
                "r0",
                json!({"session_id": "own"}),
            ),
            login_as(2, 32),
            row(
                3,
                "SessionStarted",
                Some(ANN),
                None,
                "r1",
                json!({"session_id": "s1", "impersonator_id": ANN}),
            ),
            row(
                4,
                "TwoFactorDisabled",
                Some(ANN),
                Some(ANN),
                "r2",
                json!({}),
            ),
            row(5, "PasswordRejected", None, None, "r3", json!({})),
            row(
                6,
                "ImpersonationEnded",
                Some(ANN),
                Some(ANN),
                "r4",
                json!({"impersonation_id": "i1", "session_id": "s1"}),
            ),
            row(7, "TwoFactorDisabled", Some(CAROL), None, "r5", json!({})),
        ];
        let cases = cases(&entries, at(59));
        assert_eq!(
            cases,
            [Case {
                kind: CaseKind::Impersonation,
                started_at: at(2),
                ended_at: Some(at(6)),
                actor_id: Some(ANN.to_string()),
                reason: Some("locked out".to_string()),
                ticket: Some("T-12".to_string()),
                positions: vec![2, 3, 4, 6],
            }]
        );
    }

    #[test]
    fn a_login_as_never_ended_closes_when_it_ran_out_and_is_open_before() {
        let entries = [login_as(1, 31)];
        assert_eq!(cases(&entries, at(20))[0].ended_at, None);
        assert_eq!(cases(&entries, at(40))[0].ended_at, Some(at(31)));
    }

    #[test]
    fn a_reset_and_an_enforcement_change_are_cases_with_what_their_request_stored() {
        let entries = [
            row(
                1,
                "TwoFactorEnforced",
                Some(ANN),
                None,
                "r1",
                json!({"reason": "policy"}),
            ),
            row(
                2,
                "TwoFactorReset",
                Some(ANN),
                None,
                "r2",
                json!({"reason": "lost phone"}),
            ),
            row(
                3,
                "RememberedDevicesRevoked",
                Some(ANN),
                None,
                "r2",
                json!({}),
            ),
            row(4, "SessionEnded", Some(CAROL), None, "r3", json!({})),
        ];
        let cases = cases(&entries, at(59));
        let summary: Vec<(CaseKind, Option<&str>, &[i64])> = cases
            .iter()
            .map(|case| (case.kind, case.reason.as_deref(), case.positions.as_slice()))
            .collect();
        assert_eq!(
            summary,
            [
                (CaseKind::Enforcement, Some("policy"), &[1][..]),
                (CaseKind::Reset, Some("lost phone"), &[2, 3][..]),
            ]
        );
        assert!(cases
            .iter()
            .all(|case| case.ended_at == Some(case.started_at)));
    }
}
