//! A full rebuild of the read models in one pass: the events are streamed
//! in feed order in pages, each page decoded and its audit chains hashed on
//! every core, the per-user rows folded in memory (directory, live sessions
//! and challenges, the report's counters: they grow with the users, not the
//! events) and written with COPY (PostgreSQL) or multi-row INSERTs (SQLite),
//! all in one transaction with the checkpoint. While a page is being folded
//! the previous page's audit rows are written and the next page is read.
//!
//! The fold gives the rows the `Projector` gives applying `read_models::plan`
//! one event at a time (tests compare every table, on both backends): keep
//! the two in step when an event changes what it writes.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;

use chrono::{DateTime, Datelike, Timelike, Utc};
use sqlx::{PgConnection, Sqlite, SqliteConnection};
use twofold_domain::{AuthenticatedBy, TwoFactorStatus, UserEvent};

use crate::audit::{audit_columns, hash_text, head_hash, Chains, Hash, AUDIT_COLUMNS};
use crate::cores::off_the_runtime;
use crate::db::{Db, ProjectionError, ReadModels};
use crate::feed::{EventPosition, POSTGRES_FEED, SQLITE_FEED};
use crate::pages::{chain_page, FeedRow};
use crate::read_models::{session_method, TABLES};
use crate::runner::{lock_projection, CHECKPOINT};
use crate::statement::{insert_rows, Arg};

/// Events per page: enough to keep every core busy, small enough that two
/// pages in flight stay a few megabytes.
const PAGE: usize = 10_000;

/// What a rebuild applied.
pub(crate) struct Rebuilt {
    pub events: u64,
    /// The new checkpoint (the default when there were no events).
    pub applied: EventPosition,
}

impl ReadModels {
    /// Empties every read model and rebuilds it from the whole history in
    /// one transaction, so readers see the old rows until it commits;
    /// `progress` hears the running count of events. Returns how many
    /// events it applied. Writers wait meanwhile (SQLite's write lock;
    /// PostgreSQL's projection lock and the tables' locks).
    pub async fn rebuild_read_models(
        &self,
        progress: impl Fn(u64),
    ) -> Result<u64, ProjectionError> {
        Ok(rebuild(&self.0, progress).await?.events)
    }
}

pub(crate) async fn rebuild(db: &Db, progress: impl Fn(u64)) -> Result<Rebuilt, ProjectionError> {
    let _turn = db.write_turn().await;
    match db {
        Db::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let rebuilt = load(&mut *tx, &progress).await?;
            tx.commit().await?;
            Ok(rebuilt)
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            // Wait for a batch another process is applying: it read the old
            // checkpoint and would write its rows over the rebuilt ones.
            lock_projection(&mut tx).await?;
            let rebuilt = load(&mut *tx, &progress).await?;
            tx.commit().await?;
            Ok(rebuilt)
        }
    }
}

async fn load<L: Loader>(conn: &mut L, progress: &dyn Fn(u64)) -> Result<Rebuilt, ProjectionError> {
    conn.prepare().await?;
    conn.run_sql(&format!(
        "DELETE FROM projection_checkpoints WHERE name = '{CHECKPOINT}'"
    ))
    .await?;
    // Indexes are built once over the loaded rows rather than updated row
    // by row, which costs several times more on a million rows.
    let mut indexes = Vec::new();
    for table in TABLES {
        for (drop, create) in conn.deferrable_indexes(table).await? {
            conn.run_sql(&drop).await?;
            indexes.push(create);
        }
    }
    let mut fold = Fold::default();
    let mut rows = conn.feed(EventPosition::default()).await?;
    let mut audit_rows = Vec::new();
    loop {
        // A short page is the last: the feed has nothing more (yet).
        let next_after = match rows.last() {
            Some(row) if rows.len() == PAGE => Some(row.event()?.at),
            _ => None,
        };
        let written = std::mem::take(&mut audit_rows);
        let conn = &mut *conn;
        let (folded, next) =
            tokio::join!(off_the_runtime(move || fold.page::<L>(&rows)), async move {
                conn.insert(&AUDIT_LOG, written.into_iter()).await?;
                match next_after {
                    Some(after) => conn.feed(after).await,
                    None => Ok(Vec::new()),
                }
            });
        fold = folded.0;
        audit_rows = folded.1?;
        rows = next?;
        progress(fold.events);
        if next_after.is_none() {
            break;
        }
    }
    conn.insert(&AUDIT_LOG, audit_rows.into_iter()).await?;
    let rebuilt = Rebuilt {
        events: fold.events,
        applied: fold.applied.unwrap_or_default(),
    };
    fold.write(conn).await?;
    for create in indexes {
        conn.run_sql(&create).await?;
    }
    conn.analyze().await?;
    Ok(rebuilt)
}

/// A table the rebuild writes and the columns it fills, in row order.
struct Table {
    name: &'static str,
    columns: &'static [&'static str],
}

const AUDIT_LOG: Table = Table {
    name: "audit_log",
    columns: AUDIT_COLUMNS,
};

const USER_DIRECTORY: Table = Table {
    name: "user_directory",
    columns: &[
        "user_id",
        "username",
        "email",
        "email_key",
        "role",
        "two_factor_status",
        "enforced",
        "enabled_at",
        "last_login_at",
        "registered_at",
    ],
};

const SESSIONS: Table = Table {
    name: "sessions",
    columns: &[
        "session_id",
        "token_hash",
        "user_id",
        "authenticated_by",
        "impersonator_id",
        "started_at",
        "expires_at",
        "last_seen_at",
    ],
};

const CHALLENGES: Table = Table {
    name: "challenges",
    columns: &["challenge_id", "user_id", "expires_at"],
};

const TWO_FACTOR_COUNTS: Table = Table {
    name: "two_factor_counts",
    columns: &["role", "two_factor_status", "enforced", "users"],
};

const CHECKPOINTS: Table = Table {
    name: "projection_checkpoints",
    columns: &["name", "transaction_id", "position"],
};

/// What differs between the backends, on the rebuild's connection.
trait Loader: Send + 'static {
    type Row: FeedRow;

    /// Empties the read models and readies the connection for the load.
    async fn prepare(&mut self) -> Result<(), sqlx::Error>;
    /// The statements that drop and that create again each index of
    /// `table` this backend can take off for the load.
    async fn deferrable_indexes(
        &mut self,
        table: &str,
    ) -> Result<Vec<(String, String)>, sqlx::Error>;
    /// The next `PAGE` events of the feed after `after`.
    async fn feed(&mut self, after: EventPosition) -> Result<Vec<Self::Row>, sqlx::Error>;
    async fn insert(
        &mut self,
        table: &Table,
        rows: impl Iterator<Item = Vec<Arg>> + Send,
    ) -> Result<(), sqlx::Error>;
    async fn run_sql(&mut self, sql: &str) -> Result<(), sqlx::Error>;
    /// Fresh planner statistics, so that the first queries on the rebuilt
    /// tables seek rather than scan.
    async fn analyze(&mut self) -> Result<(), sqlx::Error>;
}

/// Rows per INSERT: 13 columns stay far below SQLite's 32,766 parameters.
const SQLITE_ROWS_PER_INSERT: usize = 500;

impl Loader for SqliteConnection {
    type Row = sqlx::sqlite::SqliteRow;

    async fn prepare(&mut self) -> Result<(), sqlx::Error> {
        for table in TABLES {
            self.run_sql(&format!("DELETE FROM {table}")).await?;
        }
        Ok(())
    }

    async fn deferrable_indexes(
        &mut self,
        table: &str,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        // Constraints' own indexes have no SQL and cannot be dropped.
        sqlx::query_as(
            "SELECT 'DROP INDEX \"' || name || '\"', sql FROM sqlite_master
              WHERE type = 'index' AND tbl_name = $1 AND sql IS NOT NULL",
        )
        .bind(table)
        .fetch_all(&mut *self)
        .await
    }

    async fn feed(&mut self, after: EventPosition) -> Result<Vec<Self::Row>, sqlx::Error> {
        sqlx::query(SQLITE_FEED)
            .bind(after.transaction_id)
            .bind(after.position)
            .bind(PAGE as i64)
            .fetch_all(&mut *self)
            .await
    }

    async fn insert(
        &mut self,
        table: &Table,
        mut rows: impl Iterator<Item = Vec<Arg>> + Send,
    ) -> Result<(), sqlx::Error> {
        loop {
            let chunk: Vec<Vec<Arg>> = rows.by_ref().take(SQLITE_ROWS_PER_INSERT).collect();
            if chunk.is_empty() {
                return Ok(());
            }
            insert_rows!(Sqlite, table.name, table.columns, chunk, "")
                .build()
                .execute(&mut *self)
                .await?;
        }
    }

    async fn run_sql(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(sql).execute(&mut *self).await?;
        Ok(())
    }

    /// Nothing: SQLite plans without statistics unless `ANALYZE` was ever
    /// run, and the service's queries are written for those plans.
    async fn analyze(&mut self) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

/// Rows per COPY message.
const POSTGRES_ROWS_PER_SEND: usize = 10_000;
/// Enough for a message of audit rows (about 450 bytes each), so that the
/// buffer is allocated once.
const COPY_BUFFER: usize = POSTGRES_ROWS_PER_SEND * 512;

impl Loader for PgConnection {
    type Row = sqlx::postgres::PgRow;

    /// Also analyses `events`: planned without statistics (a store whose
    /// events were imported), each page of the feed became a scan and a
    /// sort of the whole table, 208 s instead of 36 s for a million events.
    async fn prepare(&mut self) -> Result<(), sqlx::Error> {
        self.run_sql(&format!(
            "TRUNCATE {}; SET LOCAL maintenance_work_mem = '256MB'; ANALYZE events",
            TABLES.join(", ")
        ))
        .await
    }

    /// Primary keys and unique constraints first (the other indexes may
    /// be built on them), then the other indexes.
    async fn deferrable_indexes(
        &mut self,
        table: &str,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT format('ALTER TABLE %s DROP CONSTRAINT %I', $1, conname),
                    format('ALTER TABLE %s ADD CONSTRAINT %I %s', $1, conname,
                           pg_get_constraintdef(oid))
               FROM pg_constraint
              WHERE conrelid = $1::regclass AND contype IN ('p', 'u')
             UNION ALL
             SELECT format('DROP INDEX %s', i.indexrelid::regclass), pg_get_indexdef(i.indexrelid)
               FROM pg_index i
              WHERE i.indrelid = $1::regclass
                AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        )
        .bind(table)
        .fetch_all(&mut *self)
        .await
    }

    async fn feed(&mut self, after: EventPosition) -> Result<Vec<Self::Row>, sqlx::Error> {
        sqlx::query(POSTGRES_FEED)
            .bind(after.transaction_id)
            .bind(after.position)
            .bind(PAGE as i64)
            .fetch_all(&mut *self)
            .await
    }

    /// `FREEZE` into the tables emptied in this transaction: their rows
    /// are written frozen, so no later vacuum rewrites every page.
    async fn insert(
        &mut self,
        table: &Table,
        rows: impl Iterator<Item = Vec<Arg>> + Send,
    ) -> Result<(), sqlx::Error> {
        let mut rows = rows.peekable();
        if rows.peek().is_none() {
            return Ok(());
        }
        let freeze = if TABLES.contains(&table.name) {
            " WITH (FREEZE)"
        } else {
            ""
        };
        let mut copy = self
            .copy_in_raw(&format!(
                "COPY {} ({}) FROM STDIN{freeze}",
                table.name,
                table.columns.join(", ")
            ))
            .await?;
        let mut data = Vec::with_capacity(COPY_BUFFER);
        let mut in_data = 0;
        for row in rows {
            copy_row(&mut data, &row);
            in_data += 1;
            if in_data == POSTGRES_ROWS_PER_SEND {
                copy.send(data.as_slice()).await?;
                data.clear();
                in_data = 0;
            }
        }
        copy.send(data).await?;
        copy.finish().await?;
        Ok(())
    }

    async fn run_sql(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(sql).execute(&mut *self).await?;
        Ok(())
    }

    async fn analyze(&mut self) -> Result<(), sqlx::Error> {
        self.run_sql(&format!("ANALYZE {}", TABLES.join(", ")))
            .await
    }
}

/// One row of COPY's text format: tab-separated, `\N` for NULL, and
/// backslash, tab and line breaks escaped.
fn copy_row(out: &mut Vec<u8>, row: &[Arg]) {
    for (index, cell) in row.iter().enumerate() {
        if index > 0 {
            out.push(b'\t');
        }
        match cell {
            Arg::Text(None) | Arg::Time(None) => out.extend_from_slice(b"\\N"),
            Arg::Text(Some(text)) => copy_text(out, text.as_bytes()),
            Arg::Bool(value) => out.push(if *value { b't' } else { b'f' }),
            Arg::Int(value) => {
                let _ = write!(out, "{value}");
            }
            // Microseconds, cut as sqlx cuts a bound timestamp (PostgreSQL
            // would round more digits), so both paths store the same value.
            Arg::Time(Some(at)) => {
                let _ = write!(
                    out,
                    "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
                    at.year(),
                    at.month(),
                    at.day(),
                    at.hour(),
                    at.minute(),
                    at.second(),
                    at.nanosecond() % 1_000_000_000 / 1_000
                );
            }
        }
    }
    out.push(b'\n');
}

/// Backslash, tab and line breaks escaped, as COPY's text format reads them.
fn copy_text(out: &mut Vec<u8>, text: &[u8]) {
    let special = |byte: u8| matches!(byte, b'\\' | b'\t' | b'\n' | b'\r');
    // Most fields hold none: one pass the compiler vectorises, one copy.
    if !text
        .iter()
        .fold(false, |found, &byte| found | special(byte))
    {
        out.extend_from_slice(text);
        return;
    }
    for &byte in text {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(byte),
        }
    }
}

type Bucket = (&'static str, &'static str, bool);

struct DirectoryRow {
    username: String,
    email: Option<String>,
    email_key: Option<String>,
    role: &'static str,
    two_factor_status: &'static str,
    enforced: bool,
    enabled_at: Option<DateTime<Utc>>,
    last_login_at: Option<DateTime<Utc>>,
    registered_at: DateTime<Utc>,
}

impl DirectoryRow {
    fn bucket(&self) -> Bucket {
        (self.role, self.two_factor_status, self.enforced)
    }
}

struct SessionRow {
    token_hash: String,
    user_id: String,
    authenticated_by: Option<String>,
    impersonator_id: Option<String>,
    started_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

struct ChallengeRow {
    user_id: String,
    expires_at: DateTime<Utc>,
}

/// The read models of every event folded so far.
#[derive(Default)]
struct Fold {
    directory: HashMap<String, DirectoryRow>,
    sessions: HashMap<String, SessionRow>,
    /// Per user, the ids of sessions it may still hold (some may be gone).
    sessions_of: HashMap<String, Vec<String>>,
    challenges: HashMap<String, ChallengeRow>,
    /// Per user, the ids of challenges it may still hold (some may be gone).
    challenges_of: HashMap<String, Vec<String>>,
    /// Every bucket a user was ever in has its row, zero or not, as the
    /// projector's upserts leave them.
    counts: BTreeMap<Bucket, i64>,
    chains: Chains,
    /// The feed's head: the genesis value (zeros) to start with.
    head: Hash,
    audit_id: i64,
    events: u64,
    applied: Option<EventPosition>,
}

impl Fold {
    /// Folds a page of feed rows; returns its audit rows.
    fn page<L: Loader>(
        mut self,
        rows: &[L::Row],
    ) -> (Self, Result<Vec<Vec<Arg>>, ProjectionError>) {
        let chained = chain_page(rows, &mut self.chains, |_, event, payload, metadata| {
            let change: UserEvent =
                serde_json::from_str(event.payload).map_err(|source| event.corrupt(source))?;
            let columns = audit_columns(payload, metadata, event.recorded_at);
            Ok((event.event_type.to_string(), change, columns))
        });
        let chained = match chained {
            Ok(chained) => chained,
            Err(error) => return (self, Err(error)),
        };
        let mut audit_rows = Vec::with_capacity(chained.len());
        for event in chained {
            let (event_type, change, columns) = event.derived;
            self.apply(&event.aggregate_id, change);
            self.head = head_hash(&self.head, event.at.position, &event.chain);
            self.audit_id += 1;
            self.events += 1;
            self.applied = Some(event.at);
            let mut row: Vec<Arg> = vec![
                self.audit_id.into(),
                event.at.position.into(),
                event.aggregate_id.into(),
                event.sequence.into(),
                event_type.into(),
            ];
            row.extend(columns);
            row.push(hash_text(&event.chain).into());
            row.push(hash_text(&self.head).into());
            audit_rows.push(row);
        }
        (self, Ok(audit_rows))
    }

    /// What `read_models::plan` writes for `change`, on the rows in memory.
    fn apply(&mut self, user_id: &str, change: UserEvent) {
        let bucket_before = self.directory.get(user_id).map(DirectoryRow::bucket);
        let row = self.directory.get_mut(user_id);
        match change {
            UserEvent::UserRegistered {
                username,
                email,
                role,
                registered_at,
                ..
            } => {
                if row.is_none() {
                    self.directory.insert(
                        user_id.to_string(),
                        DirectoryRow {
                            username: username.as_str().to_string(),
                            email: email.as_ref().map(|e| e.as_str().to_string()),
                            email_key: email.as_ref().map(|e| e.key()),
                            role: role.as_str(),
                            two_factor_status: TwoFactorStatus::Disabled.as_str(),
                            enforced: false,
                            enabled_at: None,
                            last_login_at: None,
                            registered_at,
                        },
                    );
                }
            }
            UserEvent::EmailChanged { email } => {
                if let Some(row) = row {
                    row.email = email.as_ref().map(|e| e.as_str().to_string());
                    row.email_key = email.as_ref().map(|e| e.key());
                }
            }
            UserEvent::RoleChanged { role } => {
                if let Some(row) = row {
                    row.role = role.as_str();
                }
                self.end_sessions_of(user_id, |_| true);
            }
            UserEvent::TotpEnrollmentStarted { .. } => {
                if let Some(row) = row {
                    row.two_factor_status = TwoFactorStatus::Pending.as_str();
                }
            }
            UserEvent::TotpEnrollmentCodeRejected {
                attempts_remaining: 0,
                ..
            } => {
                if let Some(row) = row {
                    row.two_factor_status = TwoFactorStatus::Disabled.as_str();
                }
            }
            UserEvent::TotpEnrollmentConfirmed { enabled_at, .. } => {
                if let Some(row) = row {
                    row.two_factor_status = TwoFactorStatus::Enabled.as_str();
                    row.enabled_at = Some(enabled_at);
                }
            }
            UserEvent::TwoFactorDisabled => self.two_factor_off(user_id),
            UserEvent::TwoFactorReset { .. } => {
                self.two_factor_off(user_id);
                self.end_sessions_of(user_id, |_| true);
            }
            UserEvent::PasswordChanged {
                kept_session_id, ..
            } => {
                let kept = kept_session_id.map(|id| id.to_string());
                self.end_sessions_of(user_id, |session_id| Some(session_id) != kept.as_deref());
            }
            UserEvent::ChallengeIssued {
                challenge_id,
                expires_at,
                ..
            } => {
                let expired_by = expires_at - twofold_domain::policy::challenge_lifetime();
                self.end_challenges_of(user_id, |challenge| challenge.expires_at <= expired_by);
                let challenge_id = challenge_id.to_string();
                if !self.challenges.contains_key(&challenge_id) {
                    self.challenges.insert(
                        challenge_id.clone(),
                        ChallengeRow {
                            user_id: user_id.to_string(),
                            expires_at,
                        },
                    );
                    self.challenges_of
                        .entry(user_id.to_string())
                        .or_default()
                        .push(challenge_id);
                }
            }
            UserEvent::EmailCodeSent {
                challenge_id,
                expires_at,
                ..
            } => {
                if let Some(challenge) = self.challenges.get_mut(&challenge_id.to_string()) {
                    challenge.expires_at = challenge.expires_at.max(expires_at);
                }
            }
            UserEvent::SecondFactorAccepted { challenge_id, .. } => {
                self.challenges.remove(&challenge_id.to_string());
            }
            UserEvent::TwoFactorEnforced { .. } => {
                if let Some(row) = row {
                    row.enforced = true;
                }
            }
            UserEvent::TwoFactorEnforcementLifted { .. } => {
                if let Some(row) = row {
                    row.enforced = false;
                }
            }
            UserEvent::SessionStarted {
                session_id,
                token_hash,
                authenticated_by,
                started_at,
                expires_at,
                impersonator_id,
                ..
            } => {
                if authenticated_by != AuthenticatedBy::Impersonation {
                    if let Some(row) = row {
                        row.last_login_at = Some(started_at);
                    }
                }
                let session_id = session_id.to_string();
                if !self.sessions.contains_key(&session_id) {
                    self.sessions.insert(
                        session_id.clone(),
                        SessionRow {
                            token_hash: token_hash.as_str().to_string(),
                            user_id: user_id.to_string(),
                            authenticated_by: session_method(authenticated_by),
                            impersonator_id: impersonator_id.map(|id| id.to_string()),
                            started_at,
                            expires_at,
                        },
                    );
                    self.sessions_of
                        .entry(user_id.to_string())
                        .or_default()
                        .push(session_id);
                }
            }
            UserEvent::SessionEnded { session_id }
            | UserEvent::ImpersonationEnded { session_id, .. } => {
                self.sessions.remove(&session_id.to_string());
            }
            UserEvent::PasswordRejected { .. }
            | UserEvent::SecondFactorRejected { .. }
            | UserEvent::ReauthenticationCodeRejected { .. }
            | UserEvent::TotpCodeReplayed { .. }
            | UserEvent::EmailCodeRefused { .. }
            | UserEvent::EmailCodeUndelivered { .. }
            | UserEvent::SecondFactorSuspended { .. }
            | UserEvent::TotpEnrollmentCodeRejected { .. }
            | UserEvent::DeviceRemembered { .. }
            | UserEvent::RememberedDevicesRevoked
            | UserEvent::ImpersonationStarted { .. } => {}
        }
        // The report: out of the bucket the user was in, into the one it
        // is in now (the same one when nothing moved it).
        if let Some(bucket) = self.directory.get(user_id).map(DirectoryRow::bucket) {
            if let Some(before) = bucket_before.and_then(|before| self.counts.get_mut(&before)) {
                *before -= 1;
            }
            *self.counts.entry(bucket).or_default() += 1;
        }
    }

    fn two_factor_off(&mut self, user_id: &str) {
        if let Some(row) = self.directory.get_mut(user_id) {
            row.two_factor_status = TwoFactorStatus::Disabled.as_str();
            row.enabled_at = None;
        }
        self.end_challenges_of(user_id, |_| true);
    }

    /// Deletes the user's sessions whose id `ends` picks.
    fn end_sessions_of(&mut self, user_id: &str, ends: impl Fn(&str) -> bool) {
        let Some(ids) = self.sessions_of.get_mut(user_id) else {
            return;
        };
        let sessions = &mut self.sessions;
        ids.retain(|id| match sessions.get(id) {
            Some(session) if session.user_id == user_id => {
                if ends(id) {
                    sessions.remove(id);
                    false
                } else {
                    true
                }
            }
            _ => false,
        });
    }

    /// Deletes the user's challenges that `ends` picks.
    fn end_challenges_of(&mut self, user_id: &str, ends: impl Fn(&ChallengeRow) -> bool) {
        let Some(ids) = self.challenges_of.get_mut(user_id) else {
            return;
        };
        let challenges = &mut self.challenges;
        ids.retain(|id| match challenges.get(id) {
            Some(challenge) if challenge.user_id == user_id => {
                if ends(challenge) {
                    challenges.remove(id);
                    false
                } else {
                    true
                }
            }
            _ => false,
        });
    }

    /// Writes the per-user read models and the checkpoint.
    async fn write<L: Loader>(self, conn: &mut L) -> Result<(), sqlx::Error> {
        conn.insert(
            &USER_DIRECTORY,
            self.directory.into_iter().map(|(user_id, row)| {
                vec![
                    user_id.into(),
                    row.username.into(),
                    row.email.into(),
                    row.email_key.into(),
                    row.role.into(),
                    row.two_factor_status.into(),
                    row.enforced.into(),
                    row.enabled_at.into(),
                    row.last_login_at.into(),
                    row.registered_at.into(),
                ]
            }),
        )
        .await?;
        conn.insert(
            &SESSIONS,
            self.sessions.into_iter().map(|(session_id, row)| {
                vec![
                    session_id.into(),
                    row.token_hash.into(),
                    row.user_id.into(),
                    row.authenticated_by.into(),
                    row.impersonator_id.into(),
                    row.started_at.into(),
                    row.expires_at.into(),
                    row.started_at.into(),
                ]
            }),
        )
        .await?;
        conn.insert(
            &CHALLENGES,
            self.challenges.into_iter().map(|(challenge_id, row)| {
                vec![
                    challenge_id.into(),
                    row.user_id.into(),
                    row.expires_at.into(),
                ]
            }),
        )
        .await?;
        conn.insert(
            &TWO_FACTOR_COUNTS,
            self.counts
                .into_iter()
                .map(|((role, status, enforced), users)| {
                    vec![role.into(), status.into(), enforced.into(), users.into()]
                }),
        )
        .await?;
        conn.insert(
            &CHECKPOINTS,
            self.applied.into_iter().map(|applied| {
                vec![
                    CHECKPOINT.into(),
                    applied.transaction_id.into(),
                    applied.position.into(),
                ]
            }),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn copy_rows_escape_what_copy_reads_specially_and_cut_times_to_microseconds() {
        let at = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap()
            + chrono::Duration::nanoseconds(678_901_999);
        let mut out = Vec::new();
        copy_row(
            &mut out,
            &[
                "plain".into(),
                "a\\b\tc\nd\re".into(),
                Arg::Text(None),
                true.into(),
                (-42_i64).into(),
                at.into(),
                Arg::Time(None),
            ],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "plain\ta\\\\b\\tc\\nd\\re\t\\N\tt\t-42\t2030-01-02 03:04:05.678901+00\t\\N\n"
        );
    }
}
