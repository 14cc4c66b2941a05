//! Streamed exports (the 2FA report as CSV, the audit trail as CSV or JSON
//! lines), shared by the HTTP API and the command line: read in keyset
//! pages, encoded page by page, never the whole set in memory.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use twofold_projections::{
    AuditEntry, AuditFilter, DescribedEntry, DirectoryEntry, DirectoryFilter, ProjectionError,
    ReadModels,
};

/// Rows read from the store per page of an export.
const PAGE: u32 = 500;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error("cannot write CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditFormat {
    Csv,
    JsonLines,
    /// JSON lines that also carry each row's `chain_hash` and `head_hash`
    /// (`twofold audit export --with-chain`): what an auditor needs to
    /// check the export against the signed checkpoints offline.
    JsonLinesWithChain,
}

/// A spreadsheet opens a cell starting with `=`, `+`, `-` or `@` (or a tab
/// or carriage return before one) as a formula; a leading apostrophe makes
/// it text (OWASP "CSV injection").
pub fn neutralise(cell: &str) -> Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

/// CSV text for `rows` (with `header` first when given), every cell
/// neutralised and quoted as RFC 4180 needs.
fn csv_chunk(header: Option<&[&str]>, rows: &[Vec<String>]) -> Result<Vec<u8>, ExportError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    if let Some(header) = header {
        writer.write_record(header)?;
    }
    for row in rows {
        writer.write_record(row.iter().map(|cell| neutralise(cell).into_owned()))?;
    }
    writer
        .into_inner()
        .map_err(|error| ExportError::Csv(error.into_error().into()))
}

fn time(at: Option<DateTime<Utc>>) -> String {
    at.map(|at| at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

pub const REPORT_HEADER: [&str; 8] = [
    "id",
    "username",
    "email",
    "role",
    "two_factor_status",
    "enforced",
    "enabled_at",
    "last_login_at",
];

fn report_row(entry: DirectoryEntry) -> Vec<String> {
    vec![
        entry.user_id.to_string(),
        entry.username,
        entry.email.unwrap_or_default(),
        entry.role.to_string(),
        entry.two_factor_status.to_string(),
        entry.enforced.to_string(),
        time(entry.enabled_at),
        time(entry.last_login_at),
    ]
}

/// The 2FA report, one row per user in username order, as CSV chunks.
pub fn two_factor_csv(db: ReadModels) -> impl Stream<Item = Result<Vec<u8>, ExportError>> + Send {
    directory_csv(db, DirectoryFilter::default())
}

/// The users who would be held on the mandatory date (2FA not enabled), as
/// the report's CSV rows.
pub fn without_two_factor_csv(
    db: ReadModels,
) -> impl Stream<Item = Result<Vec<u8>, ExportError>> + Send {
    directory_csv(
        db,
        DirectoryFilter {
            without_two_factor: true,
            ..DirectoryFilter::default()
        },
    )
}

/// The users `filter` selects, one row each in username order, as CSV chunks.
fn directory_csv(
    db: ReadModels,
    filter: DirectoryFilter,
) -> impl Stream<Item = Result<Vec<u8>, ExportError>> + Send {
    let first = DirectoryFilter {
        limit: PAGE,
        ..filter
    };
    futures::stream::try_unfold(Some((first, true)), move |next| {
        let db = db.clone();
        async move {
            let Some((mut filter, first)) = next else {
                return Ok(None);
            };
            let (entries, more) = db.search_directory(&filter).await?;
            filter.after_username = entries.last().map(|e| e.username.clone());
            let rows: Vec<Vec<String>> = entries.into_iter().map(report_row).collect();
            let chunk = csv_chunk(first.then_some(&REPORT_HEADER[..]), &rows)?;
            Ok(Some((chunk, more.then_some((filter, false)))))
        }
    })
}

/// One audit row as the API and the exports show it.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = AuditEvent)]
pub struct AuditView {
    pub position: i64,
    pub user_id: String,
    pub sequence: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    /// Who acted (the administrator during "Login as").
    pub actor_id: Option<String>,
    /// Set during "Login as".
    pub impersonator_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The event's fields without secrets, codes or hashes.
    #[schema(value_type = Object)]
    pub data: Value,
    /// The username of `user_id` (null when the directory has no such user).
    pub username: Option<String>,
    pub actor_username: Option<String>,
    pub impersonator_username: Option<String>,
    /// What happened, in one sentence naming people by username.
    pub summary: String,
    /// The request that caused it (its `X-Request-Id`); the events one
    /// command stored share it.
    pub correlation_id: Option<String>,
}

/// An exported audit row with its links.
#[derive(Serialize)]
struct ChainedAuditView {
    #[serde(flatten)]
    view: AuditView,
    chain_hash: String,
    head_hash: String,
}

impl From<DescribedEntry> for AuditView {
    fn from(described: DescribedEntry) -> Self {
        let entry = described.entry;
        AuditView {
            position: entry.position,
            user_id: entry.user_id,
            sequence: entry.sequence,
            event_type: entry.event_type,
            occurred_at: entry.occurred_at,
            actor_id: entry.actor_id,
            impersonator_id: entry.impersonator_id,
            ip: entry.ip,
            user_agent: entry.user_agent,
            data: entry.data,
            username: described.username,
            actor_username: described.actor_username,
            impersonator_username: described.impersonator_username,
            summary: described.summary,
            correlation_id: described.correlation_id,
        }
    }
}

const AUDIT_HEADER: [&str; 10] = [
    "position",
    "user_id",
    "sequence",
    "type",
    "occurred_at",
    "actor_id",
    "impersonator_id",
    "ip",
    "user_agent",
    "data",
];

fn audit_row(entry: AuditEntry) -> Vec<String> {
    vec![
        entry.position.to_string(),
        entry.user_id,
        entry.sequence.to_string(),
        entry.event_type,
        time(Some(entry.occurred_at)),
        entry.actor_id.unwrap_or_default(),
        entry.impersonator_id.unwrap_or_default(),
        entry.ip.unwrap_or_default(),
        entry.user_agent.unwrap_or_default(),
        entry.data.to_string(),
    ]
}

/// One page of the export, and where the next one starts. CSV keeps its
/// columns; JSON lines are the rows as the API's pages show them.
async fn audit_chunk(
    db: &ReadModels,
    format: AuditFormat,
    first: bool,
    filter: &AuditFilter,
) -> Result<(Vec<u8>, Option<i64>, bool), ExportError> {
    match format {
        AuditFormat::Csv => {
            let (entries, more) = db.audit_page(filter).await?;
            let last = entries.last().map(|entry| entry.id);
            let rows: Vec<Vec<String>> = entries.into_iter().map(audit_row).collect();
            Ok((
                csv_chunk(first.then_some(&AUDIT_HEADER[..]), &rows)?,
                last,
                more,
            ))
        }
        AuditFormat::JsonLines => {
            let (entries, more) = db.described_audit_page(filter).await?;
            let last = entries.last().map(|described| described.entry.id);
            let mut chunk = Vec::new();
            for entry in entries {
                serde_json::to_writer(&mut chunk, &AuditView::from(entry))?;
                chunk.push(b'\n');
            }
            Ok((chunk, last, more))
        }
        AuditFormat::JsonLinesWithChain => {
            let (entries, more) = db.described_audit_page(filter).await?;
            let last = entries.last().map(|described| described.entry.id);
            let mut chunk = Vec::new();
            for mut described in entries {
                let chain_hash = std::mem::take(&mut described.entry.chain_hash);
                let head_hash = std::mem::take(&mut described.entry.head_hash);
                let row = ChainedAuditView {
                    view: AuditView::from(described),
                    chain_hash,
                    head_hash,
                };
                serde_json::to_writer(&mut chunk, &row)?;
                chunk.push(b'\n');
            }
            Ok((chunk, last, more))
        }
    }
}

/// Every audit row `filter` selects (from its cursor on; its limit is the
/// page size only), in stored order.
pub fn audit_rows(
    db: ReadModels,
    filter: AuditFilter,
    format: AuditFormat,
) -> impl Stream<Item = Result<Vec<u8>, ExportError>> + Send {
    let first = AuditFilter {
        limit: PAGE,
        ..filter
    };
    futures::stream::try_unfold(Some((first, true)), move |next| {
        let db = db.clone();
        async move {
            let Some((mut filter, first)) = next else {
                return Ok(None);
            };
            let (chunk, last, more) = audit_chunk(&db, format, first, &filter).await?;
            if let Some(last) = last {
                filter.after_id = last;
            }
            Ok(Some((chunk, more.then_some((filter, false)))))
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_get_a_leading_apostrophe() {
        for cell in [
            "=cmd|' /C calc'!A0",
            "+1",
            "-2+3",
            "@SUM(A1)",
            "\t=1",
            "\r=1",
        ] {
            assert_eq!(neutralise(cell), format!("'{cell}"));
        }
        for cell in ["alice", "a=b", "", "1", " =1", "'=1"] {
            assert_eq!(neutralise(cell), cell);
        }
    }

    #[test]
    fn csv_cells_are_neutralised_and_quoted() {
        let rows = vec![vec![
            "=HYPERLINK(\"x\")".to_string(),
            "a,b".to_string(),
            "line\nbreak".to_string(),
            "-".to_string(),
            "plain".to_string(),
        ]];
        let text =
            String::from_utf8(csv_chunk(Some(&["a", "b", "c", "d", "e"]), &rows).unwrap()).unwrap();
        assert_eq!(
            text,
            "a,b,c,d,e\n\"'=HYPERLINK(\"\"x\"\")\",\"a,b\",\"line\nbreak\",'-,plain\n"
        );
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let record = reader.records().next().unwrap().unwrap();
        assert_eq!(&record[0], "'=HYPERLINK(\"x\")");
        assert_eq!(&record[2], "line\nbreak");
    }
}
