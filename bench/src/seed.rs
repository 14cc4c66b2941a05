//! `twofold-load seed`: bulk-loads a population straight into the events
//! table (COPY on PostgreSQL, multi-row INSERTs in one transaction per batch
//! on SQLite), then fills the read models with the service's own code:
//! its bulk rebuild (`twofold projections rebuild`), or its `Projector`
//! applying one event at a time.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use twofold_domain::PasswordHash;
use twofold_projections::{CheckpointCheck, Db, Projector};
use twofold_store::sql::Arg;
use twofold_store::{event_row, Dialect, EVENT_COLUMNS};

use crate::model::{SeedUser, Timeline, PASSWORD};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReadModels {
    /// Rebuild them in bulk after the load, as `twofold projections
    /// rebuild` does (fast).
    Direct,
    /// Apply the events one at a time with the service's `Projector`, as a
    /// running server does (slow).
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
    /// PostgreSQL, empty table only: drop the indexes of `events` during
    /// the load and build them afterwards.
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

/// The store at `url` (`twofold_store::connect`, four connections), its
/// schema migrated.
pub async fn connect(url: &str) -> anyhow::Result<Db> {
    let db = twofold_store::connect(url, 4).await?;
    twofold_store::migrate(&db).await?;
    Ok(db)
}

/// Events in load order, each an `events` row of `EVENT_COLUMNS` before
/// it has a position.
struct Batch {
    first_position: i64,
    events: Vec<Vec<Arg>>,
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
    let next_position = prepare(db).await?;
    // Never on SQLite: the trigger that numbers its events reads
    // `events_position` for every row inserted.
    let deferred = if args.defer_indexes && db.dialect() == Dialect::Postgres {
        Some(defer_indexes(db).await?)
    } else {
        None
    };

    let total = plan.total_events();
    let progress = progress_bar(total, "seeding events");
    let started = Instant::now();
    let (sender, mut batches) = tokio::sync::mpsc::channel::<Batch>(2);
    let producer = {
        let plan = *plan;
        let batch = args.batch.max(1);
        std::thread::spawn(move || produce(&plan, &timeline, next_position, batch, &sender))
    };
    let mut written = 0u64;
    while let Some(batch) = batches.recv().await {
        written += batch.events.len() as u64;
        write_batch(db, batch).await?;
        progress.set_position(written);
    }
    match producer.join() {
        Ok(result) => result?,
        Err(_) => bail!("the event generator stopped unexpectedly"),
    }
    let load_seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();

    let mut index_seconds = 0.0;
    if let Some(deferred) = deferred {
        let started = Instant::now();
        let bar = spinner("building indexes");
        restore_indexes(db, &deferred).await?;
        bar.finish_and_clear();
        index_seconds = started.elapsed().as_secs_f64();
    }

    let started_models = Instant::now();
    match args.read_models {
        ReadModels::Direct => {
            let bar = progress_bar(written, "rebuilding the read models");
            twofold_projections::ReadModels::new(db.clone())
                .rebuild_read_models(|count| bar.set_position(count))
                .await?;
            bar.finish_and_clear();
        }
        ReadModels::Projector => {
            let bar = spinner("applying events one at a time (Projector)");
            // The constructor catches up on every event not yet applied.
            Projector::new(db.clone()).await?;
            bar.finish_and_clear();
        }
        ReadModels::None => {}
    }
    let read_model_seconds = if args.read_models == ReadModels::None {
        0.0
    } else {
        started_models.elapsed().as_secs_f64()
    };
    let started_analyze = Instant::now();
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
    db.vacuum_analyze(tables).await?;
    bar.finish_and_clear();
    let analyze_seconds = started_analyze.elapsed().as_secs_f64();

    let mut verify = serde_json::Value::Null;
    if args.verify {
        let bar = progress_bar(written, "verifying the audit trail");
        let started = Instant::now();
        let report = twofold_projections::ReadModels::new(db.clone())
            .verify_audit_trail(None, &CheckpointCheck::default(), |count| {
                bar.set_position(count)
            })
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

    let result = json!({
        "kind": "seed",
        "store": db.dialect().name(),
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

/// The position the first event of the load will get; refuses a database
/// seeded before.
async fn prepare(db: &Db) -> anyhow::Result<i64> {
    let mut tx = db.begin_write().await?;
    let next_position = tx.next_event_position().await?;
    let taken = tx
        .fetch(
            "SELECT aggregate_id FROM events WHERE event_type = 'UserRegistered' AND aggregate_id = $1",
            vec![SeedUser::admin()?.id.to_string().into()],
        )
        .await?;
    tx.commit().await?;
    ensure!(
        taken.is_empty(),
        "this database is already seeded (load-admin exists): seed a fresh database"
    );
    Ok(next_position)
}

/// Generates every event in load order on a thread of its own. Regular
/// users' histories are interleaved (round r holds every user's r-th
/// event), so one user's events lie far apart in the tables, as years of
/// real traffic leave them.
fn produce(
    plan: &Plan,
    timeline: &Timeline,
    next_position: i64,
    batch_size: usize,
    sender: &tokio::sync::mpsc::Sender<Batch>,
) -> anyhow::Result<()> {
    let mut state = Producer {
        position: next_position,
        batch_size,
        batch: Batch::new(next_position),
        sender,
    };
    state.emit(&timeline.event(&SeedUser::admin()?, 1))?;
    for sequence in 1..=plan.events_of(0) {
        for index in 0..plan.users {
            let events = plan.events_of(index);
            if sequence <= events {
                let user = SeedUser::regular(index, events)?;
                state.emit(&timeline.event(&user, sequence))?;
            }
        }
    }
    for user in plan.specials()? {
        for sequence in 1..=user.events {
            state.emit(&timeline.event(&user, sequence))?;
        }
    }
    state.flush()
}

impl Batch {
    fn new(first_position: i64) -> Self {
        Batch {
            first_position,
            events: Vec::new(),
        }
    }
}

struct Producer<'a> {
    position: i64,
    batch_size: usize,
    batch: Batch,
    sender: &'a tokio::sync::mpsc::Sender<Batch>,
}

impl Producer<'_> {
    fn emit(&mut self, event: &crate::model::SeedEvent) -> anyhow::Result<()> {
        self.batch.events.push(event_row(
            &event.user_id.to_string(),
            i64::from(event.sequence),
            event.event.name(),
            serde_json::to_value(&event.event)?.to_string(),
            event.metadata.to_string(),
        ));
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

/// Writes one batch in a transaction of its own (`WriteTx::load`: COPY on
/// PostgreSQL, multi-row INSERTs on SQLite) and checks that its events got
/// the positions counted on.
async fn write_batch(db: &Db, batch: Batch) -> anyhow::Result<()> {
    let count = batch.events.len() as i64;
    let expected_last = batch.first_position + count - 1;
    let mut tx = db.begin_write().await?;
    tx.load("events", &EVENT_COLUMNS, batch.events, false)
        .await?;
    let last = tx.next_event_position().await? - 1;
    ensure!(
        last == expected_last,
        "positions were not handed out as expected (last {last}, expected {expected_last}): \
         is something else writing to this database?"
    );
    tx.commit().await?;
    Ok(())
}

/// The read models' own indexes are the bulk rebuild's business.
const DEFERRABLE: [&str; 1] = ["events"];

/// Takes the constraints and indexes off the (empty) `DEFERRABLE` tables
/// for the load; gives the statements that build them again.
async fn defer_indexes(db: &Db) -> anyhow::Result<Vec<String>> {
    let mut tx = db.begin_write().await?;
    let mut deferred = vec![];
    for table in DEFERRABLE {
        let any = tx
            .fetch(&format!("SELECT 1 AS one FROM {table} LIMIT 1"), vec![])
            .await?;
        ensure!(
            any.is_empty(),
            "--defer-indexes needs an empty {table} table"
        );
        for (drop, create) in tx.deferrable_indexes(table).await? {
            tx.run_sql(&drop).await?;
            deferred.push(create);
        }
    }
    tx.commit().await?;
    Ok(deferred)
}

async fn restore_indexes(db: &Db, deferred: &[String]) -> anyhow::Result<()> {
    let mut tx = db.begin_write().await?;
    tx.index_build_memory(1024).await?;
    for create in deferred {
        tx.run_sql(create).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    async fn seeded(url: String, mode: ReadModels, per_user: u64) -> Db {
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

    /// Each column as text: the stores' own types (PostgreSQL's timestamps
    /// among them) in a form of ours, the same for both seeds compared.
    async fn dump(db: &Db, sql: &str) -> Vec<Vec<String>> {
        let rows = db.fetch(sql, vec![]).await.unwrap();
        rows.iter()
            .map(|row| {
                (0..row.column_count())
                    .map(|i| {
                        row.get_at::<Option<String>>(i)
                            .map(|v| v.unwrap_or_else(|| "NULL".into()))
                            .or_else(|_| row.get_at::<i64>(i).map(|v| v.to_string()))
                            .or_else(|_| {
                                row.get_at::<DateTime<Utc>>(i)
                                    .map(|v| v.format("%+ %f").to_string())
                            })
                            .unwrap()
                    })
                    .collect()
            })
            .collect()
    }

    /// The bulk rebuild (`--read-models direct`) writes exactly the rows the
    /// service's projector writes applying one event at a time, audit chains
    /// and the report's emptied buckets included.
    #[tokio::test]
    async fn direct_read_models_equal_the_projectors() {
        // 2: histories cut short while enrolling; 8 (and 9): every kind of
        // row, open challenges and sessions included.
        for per_user in [2, 8] {
            let dir = tempfile::tempdir().unwrap();
            let url = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
            let direct = seeded(url("direct.db"), ReadModels::Direct, per_user).await;
            let projected = seeded(url("projected.db"), ReadModels::Projector, per_user).await;
            compare(&direct, &projected, per_user == 8).await;
        }
    }

    /// The same on PostgreSQL (COPY and `WITH (FREEZE)`), each seed in a
    /// database of its own, dropped afterwards.
    #[tokio::test]
    async fn direct_read_models_equal_the_projectors_on_postgres() {
        use sqlx::{Connection, PgConnection};
        let server = std::env::var("TWOFOLD_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string());
        let mut admin = PgConnection::connect(&format!("{server}/postgres"))
            .await
            .expect("PostgreSQL must listen on 127.0.0.1:5432 (see README: .ci/run starts it)");
        let names: Vec<String> = (0..2)
            .map(|_| format!("twofold_seed_{}", uuid::Uuid::new_v4().simple()))
            .collect();
        for name in &names {
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        let url = |name: &String| format!("{server}/{name}");
        let direct = seeded(url(&names[0]), ReadModels::Direct, 8).await;
        let projected = seeded(url(&names[1]), ReadModels::Projector, 8).await;
        compare(&direct, &projected, true).await;
        for (db, name) in [direct, projected].iter().zip(&names) {
            db.close().await;
            sqlx::query(&format!("DROP DATABASE {name}"))
                .execute(&mut admin)
                .await
                .unwrap();
        }
    }

    async fn compare(direct: &Db, projected: &Db, every_table_has_rows: bool) {
        for sql in [
            "SELECT aggregate_id, sequence, event_type, CAST(payload AS TEXT), CAST(metadata AS TEXT), position \
             FROM events ORDER BY position",
            "SELECT user_id, username, email, email_key, role, two_factor_status, CAST(enforced AS TEXT), \
             enabled_at, last_login_at, registered_at FROM user_directory ORDER BY user_id",
            "SELECT session_id, token_hash, user_id, authenticated_by, impersonator_id, started_at, \
             expires_at, last_seen_at FROM sessions ORDER BY session_id",
            "SELECT challenge_id, user_id, expires_at FROM challenges ORDER BY challenge_id",
            "SELECT role, two_factor_status, CAST(enforced AS TEXT), users FROM two_factor_counts \
             ORDER BY 1, 2, 3",
            "SELECT id, position, user_id, sequence, type, occurred_at, actor_id, impersonator_id, ip, \
             user_agent, data, chain_hash, head_hash FROM audit_log ORDER BY id",
            // PostgreSQL's transaction ids are the cluster's: two seeds
            // never share them.
            match direct.dialect() {
                Dialect::Sqlite => {
                    "SELECT name, transaction_id, position FROM projection_checkpoints ORDER BY name"
                }
                Dialect::Postgres => "SELECT name, position FROM projection_checkpoints ORDER BY name",
            },
        ] {
            let (a, b) = (dump(direct, sql).await, dump(projected, sql).await);
            assert!(!every_table_has_rows || !a.is_empty(), "{sql}");
            assert_eq!(a, b, "{sql}");
        }
    }
}
