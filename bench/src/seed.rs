//! `twofold-load seed`: bulk-loads a population straight into the events
//! table (COPY on PostgreSQL, multi-row INSERTs in one transaction per batch
//! on SQLite), then fills the read models, either through the service's own
//! `Projector::rebuild` or, for millions of events, by writing the rows the
//! projector would write (the audit chains included) in the same bulk pass.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, QueryBuilder, Sqlite};
use twofold_domain::{PasswordHash, UserEvent};
use twofold_projections::{Db, Projector};

use crate::audit::{self, AuditRow, Hash};
use crate::model::{SeedUser, Timeline, PASSWORD};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReadModels {
    /// Write the read-model rows in the bulk pass (fast; same rows).
    Direct,
    /// Apply every event with the service's `Projector::rebuild` (exact, slow).
    Projector,
    /// Events only; the server's projector catches up when it starts.
    None,
}

#[derive(Clone, Debug, Args)]
pub struct SeedArgs {
    /// `postgres://...` or `sqlite://path`.
    #[arg(long, env = "TWOFOLD_DATABASE_URL")]
    pub database_url: String,
    /// Regular users (`load-0000000` ...), besides `load-admin` and the two
    /// history users.
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// Events of the regular users in all (at least one per user).
    #[arg(long)]
    pub events: Option<u64>,
    #[arg(long, value_enum, default_value_t = ReadModels::Direct)]
    pub read_models: ReadModels,
    /// Events per transaction.
    #[arg(long, default_value_t = 100_000)]
    pub batch: usize,
    /// Leave out `hist-10` and `hist-10000`.
    #[arg(long)]
    pub no_history_users: bool,
    /// PostgreSQL, empty tables only: drop the indexes of `events` and
    /// `audit_log` during the load and build them afterwards.
    #[arg(long)]
    pub defer_indexes: bool,
    /// Recompute the audit chains afterwards (`twofold audit verify` logic).
    #[arg(long)]
    pub verify: bool,
    /// Append a JSON result line here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// The instant the histories end at (RFC 3339); default: now.
    #[arg(long)]
    pub now: Option<DateTime<Utc>>,
}

/// The service's argon2id parameters (api/src/security.rs).
pub fn argon2() -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(19 * 1024, 2, 1, None)
        .map_err(|error| anyhow::anyhow!("argon2 parameters: {error}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

pub fn password_hash() -> anyhow::Result<PasswordHash> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let hash = argon2()?
        .hash_password(PASSWORD.as_bytes(), &salt)
        .map_err(|error| anyhow::anyhow!("hashing the seed password: {error}"))?;
    Ok(PasswordHash::new(hash.to_string()))
}

pub async fn connect(url: &str) -> anyhow::Result<Db> {
    if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("bad SQLite URL {url}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open {url}"))?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(Db::Sqlite(pool))
    } else {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(url)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        Ok(Db::Postgres(pool))
    }
}

/// One events row, before it has a position.
struct EventRow {
    aggregate_id: String,
    sequence: i64,
    event_type: &'static str,
    payload: String,
    metadata: String,
}

struct Batch {
    first_position: i64,
    events: Vec<EventRow>,
    audit: Vec<AuditRow>,
}

/// Where the store stands before the load.
struct Start {
    next_position: i64,
    next_audit_id: i64,
    head: Hash,
}

/// The population in load order.
#[derive(Clone, Copy, Debug)]
struct Plan {
    users: u64,
    per_user: u64,
    extra: u64,
    history: bool,
}

impl Plan {
    fn events_of(&self, index: u64) -> u32 {
        let events = self.per_user + u64::from(index < self.extra);
        u32::try_from(events).unwrap_or(u32::MAX)
    }

    fn specials(&self) -> anyhow::Result<Vec<SeedUser>> {
        let mut users = vec![];
        if self.history {
            users.push(SeedUser::short_history()?);
            users.push(SeedUser::long_history()?);
        }
        Ok(users)
    }

    fn total_events(&self) -> u64 {
        let specials: u64 = if self.history {
            u64::from(crate::model::SHORT_HISTORY + crate::model::LONG_HISTORY)
        } else {
            0
        };
        1 + self.users * self.per_user + self.extra + specials
    }

    /// Every user, for the per-user read models.
    fn each_user(&self, mut visit: impl FnMut(&SeedUser)) -> anyhow::Result<()> {
        visit(&SeedUser::admin()?);
        for index in 0..self.users {
            visit(&SeedUser::regular(index, self.events_of(index))?);
        }
        for user in self.specials()? {
            visit(&user);
        }
        Ok(())
    }
}

pub async fn seed(args: SeedArgs) -> anyhow::Result<serde_json::Value> {
    ensure!(args.users >= 1, "--users must be at least 1");
    let events = args.events.unwrap_or(args.users).max(args.users);
    let plan = Plan {
        users: args.users,
        per_user: events / args.users,
        extra: events % args.users,
        history: !args.no_history_users,
    };
    let db = connect(&args.database_url).await?;
    let hash = password_hash()?;
    let now = args.now.unwrap_or_else(Utc::now);
    seed_into(&db, &plan, &args, hash, now).await
}

async fn seed_into(
    db: &Db,
    plan: &Plan,
    args: &SeedArgs,
    hash: PasswordHash,
    now: DateTime<Utc>,
) -> anyhow::Result<serde_json::Value> {
    let longest = if plan.history {
        crate::model::LONG_HISTORY
    } else {
        plan.events_of(0)
    };
    let timeline = Timeline::new(now, longest, hash);
    let projector = match args.read_models {
        ReadModels::Projector => Some(Projector::new(db.clone()).await?),
        _ => None,
    };
    let direct = args.read_models == ReadModels::Direct;
    let start = prepare(db, direct).await?;
    let deferred = match (db, args.defer_indexes) {
        (Db::Postgres(pool), true) => Some(defer_indexes(pool).await?),
        _ => None,
    };

    let total = plan.total_events();
    let progress = progress_bar(total, "seeding events");
    let started = Instant::now();
    let (sender, mut batches) = tokio::sync::mpsc::channel::<Batch>(2);
    let producer = {
        let plan = *plan;
        let batch = args.batch.max(1);
        std::thread::spawn(move || produce(&plan, &timeline, start, direct, batch, &sender))
    };
    let mut last = None;
    let mut written = 0u64;
    while let Some(batch) = batches.recv().await {
        last = Some(write_batch(db, &batch).await?);
        written += batch.events.len() as u64;
        progress.set_position(written);
    }
    let timeline = match producer.join() {
        Ok(result) => result?,
        Err(_) => bail!("the event generator stopped unexpectedly"),
    };
    let load_seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();

    let mut index_seconds = 0.0;
    if let (Some(deferred), Db::Postgres(pool)) = (deferred, db) {
        let started = Instant::now();
        let bar = spinner("building indexes");
        restore_indexes(pool, &deferred).await?;
        bar.finish_and_clear();
        index_seconds = started.elapsed().as_secs_f64();
    }

    let mut read_model_seconds = 0.0;
    let started_models = Instant::now();
    match (&projector, last) {
        (Some(projector), _) => {
            let bar = progress_bar(written, "applying events (Projector::rebuild)");
            projector.rebuild(|count| bar.set_position(count)).await?;
            bar.finish_and_clear();
            read_model_seconds = started_models.elapsed().as_secs_f64();
        }
        (None, Some(last)) if direct => {
            write_user_models(db, plan, &timeline, last).await?;
            read_model_seconds = started_models.elapsed().as_secs_f64();
        }
        _ => {}
    }
    let started_analyze = Instant::now();
    if let Db::Postgres(pool) = db {
        let bar = spinner("VACUUM ANALYZE");
        // Empty read models are left unanalysed: statistics saying "0 rows"
        // would make the projector's cached plans scan instead of seek
        // once it fills them (measured: a rebuild ten times slower).
        let tables: &[&str] = if args.read_models == ReadModels::None {
            &["events"]
        } else {
            &[
                "events",
                "audit_log",
                "user_directory",
                "sessions",
                "challenges",
                "two_factor_counts",
            ]
        };
        for table in tables {
            sqlx::raw_sql(&format!("VACUUM ANALYZE {table}"))
                .execute(pool)
                .await?;
        }
        bar.finish_and_clear();
    }
    let analyze_seconds = started_analyze.elapsed().as_secs_f64();

    let mut verify = serde_json::Value::Null;
    if args.verify {
        let bar = progress_bar(written, "verifying the audit trail");
        let started = Instant::now();
        let report = db
            .verify_audit_trail(None, |count| bar.set_position(count))
            .await?;
        bar.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        ensure!(
            report.ok,
            "the seeded audit trail does not verify: {report:?}"
        );
        verify = json!({
            "events_checked": report.events_checked,
            "seconds": seconds,
            "events_per_second": report.events_checked as f64 / seconds,
        });
    }

    let store = match db {
        Db::Sqlite(_) => "sqlite",
        Db::Postgres(_) => "postgres",
    };
    let result = json!({
        "kind": "seed",
        "store": store,
        "users": plan.users + 1 + if plan.history { 2 } else { 0 },
        "events": written,
        "read_models": format!("{:?}", args.read_models).to_lowercase(),
        "load_seconds": load_seconds,
        "load_events_per_second": written as f64 / load_seconds.max(1e-9),
        "index_seconds": index_seconds,
        "read_model_seconds": read_model_seconds,
        "read_model_events_per_second": if read_model_seconds > 0.0 { written as f64 / read_model_seconds } else { 0.0 },
        "analyze_seconds": analyze_seconds,
        "verify": verify,
    });
    Ok(result)
}

fn progress_bar(length: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(message);
    bar
}

fn spinner(message: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Reads where positions, audit ids and the head stand; direct read models
/// need everything stored so far to be applied already.
async fn prepare(db: &Db, direct: bool) -> anyhow::Result<Start> {
    let (next_position, last_event, checkpoint, last_audit) = match db {
        Db::Postgres(pool) => {
            let sequence: String =
                sqlx::query_scalar("SELECT pg_get_serial_sequence('events', 'position')")
                    .fetch_one(pool)
                    .await?;
            let (last_value, is_called): (i64, bool) =
                sqlx::query_as(&format!("SELECT last_value, is_called FROM {sequence}"))
                    .fetch_one(pool)
                    .await?;
            let next = if is_called {
                last_value + 1
            } else {
                last_value
            };
            (
                next,
                sqlx::query_scalar::<_, Option<i64>>("SELECT max(position) FROM events")
                    .fetch_one(pool)
                    .await?,
                sqlx::query_scalar::<_, i64>(
                    "SELECT position FROM projection_checkpoints WHERE name = 'read_models'",
                )
                .fetch_optional(pool)
                .await?,
                sqlx::query_as::<_, (i64, String)>(
                    "SELECT id, head_hash FROM audit_log ORDER BY id DESC LIMIT 1",
                )
                .fetch_optional(pool)
                .await?,
            )
        }
        Db::Sqlite(pool) => {
            let last: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events")
                .fetch_one(pool)
                .await?;
            (
                last.unwrap_or(0) + 1,
                last,
                sqlx::query_scalar::<_, i64>(
                    "SELECT position FROM projection_checkpoints WHERE name = 'read_models'",
                )
                .fetch_optional(pool)
                .await?,
                sqlx::query_as::<_, (i64, String)>(
                    "SELECT id, head_hash FROM audit_log ORDER BY id DESC LIMIT 1",
                )
                .fetch_optional(pool)
                .await?,
            )
        }
    };
    let taken: Option<String> = twofold_projections::on_pool!(db, pool => {
        sqlx::query_scalar(
            "SELECT aggregate_id FROM events WHERE event_type = 'UserRegistered' AND aggregate_id = $1",
        )
        .bind(SeedUser::admin()?.id.to_string())
        .fetch_optional(pool)
        .await?
    });
    ensure!(
        taken.is_none(),
        "this database is already seeded (load-admin exists): seed a fresh database"
    );
    if direct && last_event.is_some() && last_event != checkpoint {
        bail!(
            "the read models are behind the events ({checkpoint:?} < {last_event:?}): \
             start the service once (it catches up) or use --read-models projector"
        );
    }
    Ok(Start {
        next_position,
        next_audit_id: last_audit.as_ref().map_or(1, |(id, _)| id + 1),
        head: audit::parse_hash(last_audit.as_ref().map(|(_, head)| head.as_str())),
    })
}

/// Generates every event in load order on a thread of its own. Regular
/// users' histories are interleaved (round r holds every user's r-th
/// event), so one user's events lie far apart in the tables, as years of
/// real traffic leave them.
fn produce(
    plan: &Plan,
    timeline: &Timeline,
    start: Start,
    direct: bool,
    batch_size: usize,
    sender: &tokio::sync::mpsc::Sender<Batch>,
) -> anyhow::Result<Timeline> {
    let mut state = Producer {
        position: start.next_position,
        audit_id: start.next_audit_id,
        head: start.head,
        direct,
        batch_size,
        batch: Batch::new(start.next_position),
        sender,
    };
    let admin = SeedUser::admin()?;
    let mut chain = audit::GENESIS;
    state.emit(&timeline.event(&admin, 1), &mut chain)?;

    let longest = plan.events_of(0);
    let mut chains = vec![audit::GENESIS; if direct { plan.users as usize } else { 0 }];
    let mut scratch = audit::GENESIS;
    for sequence in 1..=longest {
        for index in 0..plan.users {
            let events = plan.events_of(index);
            if sequence > events {
                continue;
            }
            let user = SeedUser::regular(index, events)?;
            let chain = chains.get_mut(index as usize).unwrap_or(&mut scratch);
            state.emit(&timeline.event(&user, sequence), chain)?;
        }
    }
    for user in plan.specials()? {
        let mut chain = audit::GENESIS;
        for sequence in 1..=user.events {
            state.emit(&timeline.event(&user, sequence), &mut chain)?;
        }
    }
    state.flush()?;
    Ok(timeline.clone())
}

impl Batch {
    fn new(first_position: i64) -> Self {
        Batch {
            first_position,
            events: Vec::new(),
            audit: Vec::new(),
        }
    }
}

struct Producer<'a> {
    position: i64,
    audit_id: i64,
    head: Hash,
    direct: bool,
    batch_size: usize,
    batch: Batch,
    sender: &'a tokio::sync::mpsc::Sender<Batch>,
}

impl Producer<'_> {
    fn emit(&mut self, event: &crate::model::SeedEvent, chain: &mut Hash) -> anyhow::Result<()> {
        let payload = serde_json::to_value(&event.event)?;
        let aggregate_id = event.user_id.to_string();
        let event_type = event.event.name();
        if self.direct {
            let stored = audit::Stored {
                aggregate_id: &aggregate_id,
                sequence: i64::from(event.sequence),
                event_type,
                event_version: "1",
                payload: &payload,
                metadata: &event.metadata,
            };
            let (row, next_chain, next_head) = audit::record(
                self.audit_id,
                self.position,
                &stored,
                event.at,
                chain,
                &self.head,
            );
            *chain = next_chain;
            self.head = next_head;
            self.audit_id += 1;
            self.batch.audit.push(row);
        }
        self.batch.events.push(EventRow {
            aggregate_id,
            sequence: i64::from(event.sequence),
            event_type,
            payload: payload.to_string(),
            metadata: event.metadata.to_string(),
        });
        self.position += 1;
        if self.batch.events.len() >= self.batch_size {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.batch.events.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Batch::new(self.position));
        self.sender
            .blocking_send(batch)
            .map_err(|_| anyhow::anyhow!("the writer stopped"))
    }
}

/// The last event written: the read models' checkpoint.
#[derive(Clone, Copy, Debug)]
struct Last {
    transaction_id: i64,
    position: i64,
}

fn copy_field(out: &mut Vec<u8>, value: &str) {
    for byte in value.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(byte),
        }
    }
}

fn copy_opt(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => copy_field(out, value),
        None => out.extend_from_slice(b"\\N"),
    }
}

/// Writes one row of COPY text: fields separated by tabs.
fn copy_row(out: &mut Vec<u8>, fields: &[Option<&str>]) {
    for (index, field) in fields.iter().enumerate() {
        if index > 0 {
            out.push(b'\t');
        }
        copy_opt(out, *field);
    }
    out.push(b'\n');
}

async fn write_batch(db: &Db, batch: &Batch) -> anyhow::Result<Last> {
    let count = batch.events.len() as i64;
    let expected_last = batch.first_position + count - 1;
    match db {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            let mut data = Vec::with_capacity(batch.events.len() * 700);
            for event in &batch.events {
                let sequence = event.sequence.to_string();
                copy_row(
                    &mut data,
                    &[
                        Some("user"),
                        Some(&event.aggregate_id),
                        Some(&sequence),
                        Some(event.event_type),
                        Some("1"),
                        Some(&event.payload),
                        Some(&event.metadata),
                    ],
                );
            }
            let mut copy = tx
                .copy_in_raw(
                    "COPY events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) FROM STDIN",
                )
                .await?;
            copy.send(data).await?;
            copy.finish().await?;
            let sequence: String =
                sqlx::query_scalar("SELECT pg_get_serial_sequence('events', 'position')")
                    .fetch_one(&mut *tx)
                    .await?;
            let (last_value, transaction_id): (i64, i64) = sqlx::query_as(&format!(
                "SELECT last_value, pg_current_xact_id()::text::bigint FROM {sequence}"
            ))
            .fetch_one(&mut *tx)
            .await?;
            ensure!(
                last_value == expected_last,
                "positions were not handed out as expected (last {last_value}, expected {expected_last}): \
                 is something else writing to this database?"
            );
            if !batch.audit.is_empty() {
                let mut data = Vec::with_capacity(batch.audit.len() * 600);
                for row in &batch.audit {
                    let (id, position, sequence) = (
                        row.id.to_string(),
                        row.position.to_string(),
                        row.sequence.to_string(),
                    );
                    let occurred_at = row.occurred_at.to_rfc3339();
                    copy_row(
                        &mut data,
                        &[
                            Some(&id),
                            Some(&position),
                            Some(&row.user_id),
                            Some(&sequence),
                            Some(&row.event_type),
                            Some(&occurred_at),
                            row.actor_id.as_deref(),
                            row.impersonator_id.as_deref(),
                            row.ip.as_deref(),
                            row.user_agent.as_deref(),
                            Some(&row.data),
                            Some(&row.chain_hash),
                            Some(&row.head_hash),
                        ],
                    );
                }
                let mut copy = tx
                    .copy_in_raw(
                        "COPY audit_log (id, position, user_id, sequence, type, occurred_at, actor_id, \
                         impersonator_id, ip, user_agent, data, chain_hash, head_hash) FROM STDIN",
                    )
                    .await?;
                copy.send(data).await?;
                copy.finish().await?;
            }
            tx.commit().await?;
            Ok(Last {
                transaction_id,
                position: expected_last,
            })
        }
        Db::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            for chunk in batch.events.chunks(500) {
                let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                    "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) ",
                );
                insert.push_values(chunk, |mut row, event| {
                    row.push_bind("user")
                        .push_bind(&event.aggregate_id)
                        .push_bind(event.sequence)
                        .push_bind(event.event_type)
                        .push_bind("1")
                        .push_bind(&event.payload)
                        .push_bind(&event.metadata);
                });
                insert.build().execute(&mut *tx).await?;
            }
            let last: i64 = sqlx::query_scalar("SELECT max(position) FROM events")
                .fetch_one(&mut *tx)
                .await?;
            ensure!(
                last == expected_last,
                "positions were not handed out as expected (last {last}, expected {expected_last})"
            );
            for chunk in batch.audit.chunks(500) {
                let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                    "INSERT INTO audit_log (id, position, user_id, sequence, type, occurred_at, actor_id, \
                     impersonator_id, ip, user_agent, data, chain_hash, head_hash) ",
                );
                insert.push_values(chunk, |mut row, audit| {
                    row.push_bind(audit.id)
                        .push_bind(audit.position)
                        .push_bind(&audit.user_id)
                        .push_bind(audit.sequence)
                        .push_bind(&audit.event_type)
                        .push_bind(audit.occurred_at)
                        .push_bind(&audit.actor_id)
                        .push_bind(&audit.impersonator_id)
                        .push_bind(&audit.ip)
                        .push_bind(&audit.user_agent)
                        .push_bind(&audit.data)
                        .push_bind(&audit.chain_hash)
                        .push_bind(&audit.head_hash);
                });
                insert.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(Last {
                transaction_id: expected_last,
                position: expected_last,
            })
        }
    }
}

/// A live session left at the end of a history.
struct SessionRow {
    session_id: String,
    token_hash: String,
    user_id: String,
    authenticated_by: String,
    started_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

/// The per-user read models (directory, live sessions, the report's
/// counters) and the checkpoint, in one transaction.
async fn write_user_models(
    db: &Db,
    plan: &Plan,
    timeline: &Timeline,
    last: Last,
) -> anyhow::Result<()> {
    let mut directory = Vec::new();
    let mut sessions = Vec::new();
    let mut challenges = Vec::new();
    let mut counts: HashMap<(&'static str, &'static str, bool), i64> = HashMap::new();
    plan.each_user(|user| {
        let row = timeline.directory_row(user);
        *counts
            .entry((row.role.as_str(), row.two_factor_status, row.enforced))
            .or_default() += 1;
        directory.push(row);
        if let Some(event) = timeline.open_challenge(user) {
            if let UserEvent::ChallengeIssued {
                challenge_id,
                expires_at,
                ..
            } = event.event
            {
                challenges.push((challenge_id.to_string(), user.id.to_string(), expires_at));
            }
        }
        if let Some(event) = timeline.open_session(user) {
            if let UserEvent::SessionStarted {
                session_id,
                token_hash,
                authenticated_by,
                started_at,
                expires_at,
                ..
            } = event.event
            {
                sessions.push(SessionRow {
                    session_id: session_id.to_string(),
                    token_hash: token_hash.as_str().to_string(),
                    user_id: user.id.to_string(),
                    authenticated_by: serde_json::to_value(authenticated_by)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    started_at,
                    expires_at,
                });
            }
        }
    })?;
    const COUNT_UPSERT: &str =
        "INSERT INTO two_factor_counts (role, two_factor_status, enforced, users) ";
    const COUNT_CONFLICT: &str = " ON CONFLICT (role, two_factor_status, enforced) \
                                   DO UPDATE SET users = two_factor_counts.users + excluded.users";
    const CHECKPOINT: &str = "INSERT INTO projection_checkpoints (name, transaction_id, position)
         VALUES ('read_models', $1, $2)
         ON CONFLICT (name) DO UPDATE
            SET transaction_id = excluded.transaction_id, position = excluded.position";
    match db {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            let mut data = Vec::with_capacity(directory.len() * 200);
            for row in &directory {
                let user_id = row.user_id.to_string();
                let email_key = row.email.to_lowercase();
                let enabled_at = row.enabled_at.map(|t| t.to_rfc3339());
                let last_login_at = row.last_login_at.map(|t| t.to_rfc3339());
                let registered_at = row.registered_at.to_rfc3339();
                copy_row(
                    &mut data,
                    &[
                        Some(&user_id),
                        Some(&row.username),
                        Some(&row.email),
                        Some(&email_key),
                        Some(row.role.as_str()),
                        Some(row.two_factor_status),
                        Some(if row.enforced { "t" } else { "f" }),
                        enabled_at.as_deref(),
                        last_login_at.as_deref(),
                        Some(&registered_at),
                    ],
                );
            }
            let mut copy = tx
                .copy_in_raw(
                    "COPY user_directory (user_id, username, email, email_key, role, two_factor_status, \
                     enforced, enabled_at, last_login_at, registered_at) FROM STDIN",
                )
                .await?;
            copy.send(data).await?;
            copy.finish().await?;
            let mut data = Vec::new();
            for row in &sessions {
                let (started, expires) = (row.started_at.to_rfc3339(), row.expires_at.to_rfc3339());
                copy_row(
                    &mut data,
                    &[
                        Some(&row.session_id),
                        Some(&row.token_hash),
                        Some(&row.user_id),
                        Some(&row.authenticated_by),
                        None,
                        Some(&started),
                        Some(&expires),
                        Some(&started),
                    ],
                );
            }
            let mut copy = tx
                .copy_in_raw(
                    "COPY sessions (session_id, token_hash, user_id, authenticated_by, impersonator_id, \
                     started_at, expires_at, last_seen_at) FROM STDIN",
                )
                .await?;
            copy.send(data).await?;
            copy.finish().await?;
            let mut data = Vec::new();
            for (challenge, user, expires_at) in &challenges {
                let expires_at = expires_at.to_rfc3339();
                copy_row(&mut data, &[Some(challenge), Some(user), Some(&expires_at)]);
            }
            let mut copy = tx
                .copy_in_raw("COPY challenges (challenge_id, user_id, expires_at) FROM STDIN")
                .await?;
            copy.send(data).await?;
            copy.finish().await?;
            for ((role, status, enforced), users) in &counts {
                sqlx::query(&format!(
                    "{COUNT_UPSERT} VALUES ($1, $2, $3, $4) {COUNT_CONFLICT}"
                ))
                .bind(role)
                .bind(status)
                .bind(enforced)
                .bind(users)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(CHECKPOINT)
                .bind(last.transaction_id)
                .bind(last.position)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Db::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            for chunk in directory.chunks(500) {
                let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                    "INSERT INTO user_directory (user_id, username, email, email_key, role, two_factor_status, \
                     enforced, enabled_at, last_login_at, registered_at) ",
                );
                insert.push_values(chunk, |mut values, row| {
                    values
                        .push_bind(row.user_id.to_string())
                        .push_bind(&row.username)
                        .push_bind(&row.email)
                        .push_bind(row.email.to_lowercase())
                        .push_bind(row.role.as_str())
                        .push_bind(row.two_factor_status)
                        .push_bind(row.enforced)
                        .push_bind(row.enabled_at)
                        .push_bind(row.last_login_at)
                        .push_bind(row.registered_at);
                });
                insert.build().execute(&mut *tx).await?;
            }
            for chunk in sessions.chunks(500) {
                let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                    "INSERT INTO sessions (session_id, token_hash, user_id, authenticated_by, impersonator_id, \
                     started_at, expires_at, last_seen_at) ",
                );
                insert.push_values(chunk, |mut values, row| {
                    values
                        .push_bind(&row.session_id)
                        .push_bind(&row.token_hash)
                        .push_bind(&row.user_id)
                        .push_bind(&row.authenticated_by)
                        .push_bind(None::<String>)
                        .push_bind(row.started_at)
                        .push_bind(row.expires_at)
                        .push_bind(row.started_at);
                });
                insert.build().execute(&mut *tx).await?;
            }
            for chunk in challenges.chunks(500) {
                let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                    "INSERT INTO challenges (challenge_id, user_id, expires_at) ",
                );
                insert.push_values(chunk, |mut row, (challenge, user, expires_at)| {
                    row.push_bind(challenge)
                        .push_bind(user)
                        .push_bind(*expires_at);
                });
                insert.build().execute(&mut *tx).await?;
            }
            for ((role, status, enforced), users) in &counts {
                sqlx::query(&format!(
                    "{COUNT_UPSERT} VALUES ($1, $2, $3, $4) {COUNT_CONFLICT}"
                ))
                .bind(role)
                .bind(status)
                .bind(enforced)
                .bind(users)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(CHECKPOINT)
                .bind(last.transaction_id)
                .bind(last.position)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// Constraints and indexes taken off `events` and `audit_log` for the load.
struct Deferred {
    constraints: Vec<(String, String, String)>,
    indexes: Vec<String>,
}

const DEFERRABLE: [&str; 2] = ["events", "audit_log"];

async fn defer_indexes(pool: &PgPool) -> anyhow::Result<Deferred> {
    for table in DEFERRABLE {
        let rows: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT 1) t"
        ))
        .fetch_one(pool)
        .await?;
        ensure!(rows == 0, "--defer-indexes needs an empty {table} table");
    }
    let mut deferred = Deferred {
        constraints: vec![],
        indexes: vec![],
    };
    let mut tx = pool.begin().await?;
    for table in DEFERRABLE {
        let constraints: Vec<(String, String)> = sqlx::query_as(
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
              WHERE conrelid = $1::regclass AND contype IN ('p', 'u')",
        )
        .bind(table)
        .fetch_all(&mut *tx)
        .await?;
        let indexes: Vec<(String, String)> = sqlx::query_as(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
               FROM pg_index i
              WHERE i.indrelid = $1::regclass
                AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
        )
        .bind(table)
        .fetch_all(&mut *tx)
        .await?;
        for (name, definition) in indexes {
            sqlx::query(&format!("DROP INDEX {name}"))
                .execute(&mut *tx)
                .await?;
            deferred.indexes.push(definition);
        }
        for (name, definition) in constraints {
            sqlx::query(&format!("ALTER TABLE {table} DROP CONSTRAINT {name}"))
                .execute(&mut *tx)
                .await?;
            deferred
                .constraints
                .push((table.to_string(), name, definition));
        }
    }
    tx.commit().await?;
    Ok(deferred)
}

async fn restore_indexes(pool: &PgPool, deferred: &Deferred) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET maintenance_work_mem = '1GB'")
        .execute(&mut *conn)
        .await?;
    for (table, name, definition) in &deferred.constraints {
        sqlx::query(&format!(
            "ALTER TABLE {table} ADD CONSTRAINT {name} {definition}"
        ))
        .execute(&mut *conn)
        .await?;
    }
    for definition in &deferred.indexes {
        sqlx::query(definition).execute(&mut *conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use sqlx::Row;

    async fn seeded(dir: &std::path::Path, name: &str, mode: ReadModels, per_user: u64) -> Db {
        let url = format!("sqlite://{}", dir.join(name).display());
        let db = connect(&url).await.unwrap();
        // Short histories stop part-way through enrolling; longer ones
        // cycle through sign-ins, challenges and sign-outs.
        let plan = Plan {
            users: 60,
            per_user,
            extra: 17,
            history: false,
        };
        let args = SeedArgs {
            database_url: url,
            users: 60,
            events: None,
            read_models: mode,
            batch: 97,
            no_history_users: true,
            defer_indexes: false,
            verify: true,
            out: None,
            now: None,
        };
        let now = DateTime::parse_from_rfc3339("2030-01-02T03:04:05.678901Z")
            .unwrap()
            .with_timezone(&Utc);
        let hash = PasswordHash::new(
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$m7tEGSnvbP2Q2c0FVK4Xn8NO5pdsd8eJ2sKmjNeMGx4".into(),
        );
        let result = seed_into(&db, &plan, &args, hash, now).await.unwrap();
        assert_eq!(result["events"], 1 + 60 * per_user + 17);
        db
    }

    async fn dump(db: &Db, sql: &str) -> Vec<Vec<String>> {
        let Db::Sqlite(pool) = db else {
            panic!("sqlite only")
        };
        let rows = sqlx::query(sql).fetch_all(pool).await.unwrap();
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        row.try_get::<Option<String>, _>(i)
                            .map(|v| v.unwrap_or_else(|| "NULL".into()))
                            .or_else(|_| row.try_get::<i64, _>(i).map(|v| v.to_string()))
                            .unwrap()
                    })
                    .collect()
            })
            .collect()
    }

    /// The direct bulk path writes exactly the rows the service's projector
    /// writes for the same events, audit chains included.
    #[tokio::test]
    async fn direct_read_models_equal_the_projectors() {
        // 2: histories cut short while enrolling; 8 (and 9): every kind of
        // row, open challenges and sessions included.
        for per_user in [2, 8] {
            let dir = tempfile::tempdir().unwrap();
            let direct = seeded(dir.path(), "direct.db", ReadModels::Direct, per_user).await;
            let projected =
                seeded(dir.path(), "projected.db", ReadModels::Projector, per_user).await;
            compare(&direct, &projected, per_user == 8).await;
        }
    }

    async fn compare(direct: &Db, projected: &Db, every_table_has_rows: bool) {
        for sql in [
            "SELECT aggregate_id, sequence, event_type, payload, metadata, position FROM events ORDER BY position",
            "SELECT user_id, username, email, email_key, role, two_factor_status, CAST(enforced AS TEXT), \
             enabled_at, last_login_at, registered_at FROM user_directory ORDER BY user_id",
            "SELECT session_id, token_hash, user_id, authenticated_by, impersonator_id, started_at, \
             expires_at, last_seen_at FROM sessions ORDER BY session_id",
            "SELECT challenge_id, user_id, expires_at FROM challenges ORDER BY challenge_id",
            "SELECT role, two_factor_status, CAST(enforced AS TEXT), users FROM two_factor_counts \
             WHERE users <> 0 ORDER BY 1, 2, 3",
            "SELECT id, position, user_id, sequence, type, occurred_at, actor_id, impersonator_id, ip, \
             user_agent, data, chain_hash, head_hash FROM audit_log ORDER BY id",
            "SELECT name, transaction_id, position FROM projection_checkpoints ORDER BY name",
        ] {
            let (a, b) = (dump(direct, sql).await, dump(projected, sql).await);
            assert!(!every_table_has_rows || !a.is_empty(), "{sql}");
            assert_eq!(a, b, "{sql}");
        }
    }

    #[test]
    fn copy_text_escapes_what_copy_reads_specially() {
        let mut out = Vec::new();
        copy_row(&mut out, &[Some("a\\b\tc\nd"), None, Some("é")]);
        assert_eq!(String::from_utf8(out).unwrap(), "a\\\\b\\tc\\nd\t\\N\té\n");
    }
}
