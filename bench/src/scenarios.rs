//! `twofold-load run`: load scenarios against running `twofold serve`
//! processes. Each prints a summary line and returns one JSON record.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::Utc;
use clap::{Args, ValueEnum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use twofold_domain::totp::{TotpAlgorithm, TotpParameters, TotpSecret};
use twofold_projections::Db;
use twofold_store::{Dialect, Row};

use crate::http::{Answer, Target};
use crate::model::{self, SeedUser, ADMIN_USERNAME, PASSWORD};
use crate::stats::{memory_mib, CpuWatch, Samples};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// POST /login for plain users (one argon2 verification and one append each).
    Password,
    /// Enroll the TOTP pool through the API (login, start, confirm).
    Enroll,
    /// Password, then a TOTP code on another server of the rotation.
    FullSignin,
    /// Only the verify step: challenges are made first, untimed.
    TotpVerify,
    /// PATCH /users/{id} (email) as super admin, over many users.
    Commands,
    /// The same command on a 10-event and a 10,000-event history, one at a time.
    History,
    /// Password sign-ins offered at a fixed rate (open loop), e.g. 2x capacity.
    Overload,
    /// Sign-ins of unknown usernames alternating with known users' wrong
    /// passwords: both medians and their difference (account enumeration
    /// by timing).
    PasswordTiming,
    /// Report, user search and one user's audit page.
    Reads,
}

#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Base URL of a server (repeat for round robin).
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// PIDs of the server processes: CPU and memory are read from /proc.
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// The store the servers use: counts events and commits when given.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Regular users the database was seeded with.
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds of load (closed-loop scenarios and overload).
    #[arg(long, default_value_t = 15.0)]
    pub duration: f64,
    /// The enrolled TOTP users (written by `enroll`, read and updated by
    /// `full-signin` and `totp-verify`).
    #[arg(long, default_value = "totp-pool.json")]
    pub pool: PathBuf,
    /// Users to enroll into the pool.
    #[arg(long, default_value_t = 1_000)]
    pub pool_size: usize,
    /// Overload: requests a second offered; default twice the last
    /// `password` throughput found in --out.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Overload: times the measured capacity.
    #[arg(long, default_value_t = 2.0)]
    pub overload_factor: f64,
    /// Overload: the most requests the driver keeps open at once.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// TOTP verify: how many pool users to verify (default: half the pool,
    /// so that a full sign-in run right after finds fresh codes).
    #[arg(long)]
    pub verify_users: Option<usize>,
    /// History: measured commands per user.
    #[arg(long, default_value_t = 200)]
    pub history_commands: usize,
    /// Wait for PostgreSQL's statistics and count the commits a scenario made.
    #[arg(long)]
    pub commit_stats: bool,
    /// A free-form tag kept with the result (e.g. "pg-1m").
    #[arg(long, default_value = "")]
    pub label: String,
    /// Append the JSON result here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

struct Ctx {
    args: RunArgs,
    target: Arc<Target>,
    db: Option<Db>,
}

impl Ctx {
    fn store(&self) -> &'static str {
        self.db.as_ref().map_or("unknown", |db| db.dialect().name())
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs_f64(self.args.duration)
    }

    /// The common fields of a result record.
    fn record(&self, name: &str, samples: &Samples, seconds: f64, cpu: Value) -> Value {
        let mut outcomes = serde_json::Map::new();
        for (outcome, count) in &samples.outcomes {
            outcomes.insert(outcome.clone(), json!(count));
        }
        json!({
            "kind": "scenario",
            "name": name,
            "label": self.args.label,
            "store": self.store(),
            "servers": self.target.servers(),
            "concurrency": self.args.concurrency,
            "seconds": seconds,
            "requests": samples.count(),
            "ok": samples.ok(),
            "errors": samples.errors(),
            "outcomes": outcomes,
            "throughput": samples.ok() as f64 / seconds.max(1e-9),
            "latency": samples.summary(),
            "cpu": cpu,
            "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
            "at": Utc::now(),
        })
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<Vec<Value>> {
    let target = Arc::new(Target::new(&args.urls)?);
    let db = match &args.database_url {
        Some(url) => Some(crate::seed::connect(url).await?),
        None => None,
    };
    let ctx = Ctx { args, target, db };
    match ctx.args.scenario {
        Scenario::Password => Ok(vec![password(&ctx).await?]),
        Scenario::Enroll => Ok(vec![enroll(&ctx).await?]),
        Scenario::FullSignin => Ok(vec![full_signin(&ctx).await?]),
        Scenario::TotpVerify => Ok(vec![totp_verify(&ctx).await?]),
        Scenario::Commands => Ok(vec![commands(&ctx).await?]),
        Scenario::History => Ok(vec![history(&ctx).await?]),
        Scenario::Overload => Ok(vec![overload(&ctx).await?]),
        Scenario::PasswordTiming => Ok(vec![password_timing(&ctx).await?]),
        Scenario::Reads => reads(&ctx).await,
    }
}

fn login_body(username: &str) -> Value {
    json!({ "username": username, "password": PASSWORD })
}

async fn admin_token(target: &Target) -> anyhow::Result<String> {
    let answer = target
        .post(0, "/api/v1/login", None, &login_body(ADMIN_USERNAME))
        .await;
    match (answer.ok(), answer.text("session_token")) {
        (true, Some(token)) => Ok(token.to_string()),
        _ => bail!(
            "cannot sign in as {ADMIN_USERNAME} ({}): was the database seeded?",
            answer.outcome()
        ),
    }
}

/// Plain users that the TOTP pool does not use.
fn password_users(args: &RunArgs) -> Vec<u64> {
    model::plain_indexes(args.users)
        .skip(args.pool_size)
        .collect()
}

/// Runs `work` on `concurrency` workers until the deadline; each call is
/// one timed operation.
async fn closed_loop<F, Fut>(ctx: &Ctx, work: F) -> (Samples, f64)
where
    F: Fn(Arc<Target>, u64, StdRng) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = (String, Duration, StdRng)> + Send,
{
    let deadline = ctx.deadline();
    let started = Instant::now();
    let counter = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..ctx.args.concurrency {
        let work = work.clone();
        let target = Arc::clone(&ctx.target);
        let counter = Arc::clone(&counter);
        workers.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut rng = StdRng::from_entropy();
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let (outcome, latency, next) = work(Arc::clone(&target), n, rng).await;
                rng = next;
                samples.record(&outcome, latency);
            }
            samples
        }));
    }
    let mut samples = Samples::default();
    for worker in workers {
        if let Ok(part) = worker.await {
            samples.merge(part);
        }
    }
    (samples, started.elapsed().as_secs_f64())
}

fn print(name: &str, record: &Value) {
    let latency = &record["latency"];
    println!(
        "{name:<14} {:>9.1}/s  p50 {:>8.2} ms  p95 {:>8.2} ms  p99 {:>8.2} ms  ok {} errors {} {}",
        record["throughput"].as_f64().unwrap_or(0.0),
        latency["p50_ms"].as_f64().unwrap_or(0.0),
        latency["p95_ms"].as_f64().unwrap_or(0.0),
        latency["p99_ms"].as_f64().unwrap_or(0.0),
        record["ok"],
        record["errors"],
        record["outcomes"],
    );
}

async fn password(ctx: &Ctx) -> anyhow::Result<Value> {
    let users = Arc::new(password_users(&ctx.args));
    anyhow::ensure!(!users.is_empty(), "no plain users outside the TOTP pool");
    let cpu = CpuWatch::start(&ctx.args.server_pids);
    let (samples, seconds) = closed_loop(ctx, move |target, _, mut rng| {
        let users = Arc::clone(&users);
        async move {
            let index = users[rng.gen_range(0..users.len())];
            let server = target.pick();
            let started = Instant::now();
            let answer = target
                .post(
                    server,
                    "/api/v1/login",
                    None,
                    &login_body(&model::username(index)),
                )
                .await;
            let outcome = match (answer.ok(), answer.text("status")) {
                (true, Some("authenticated")) => answer.outcome(),
                (true, _) => "unexpected".to_string(),
                _ => answer.outcome(),
            };
            (outcome, started.elapsed(), rng)
        }
    })
    .await;
    let record = ctx.record("password", &samples, seconds, cpu.stop());
    print("password", &record);
    Ok(record)
}

/// A password no seeded user has.
const WRONG_PASSWORD: &str = "not-the-load-password";

/// Both failures of the password step, timed side by side: each worker
/// alternates an unknown username with a known user's wrong password, so
/// the two see the same load. Known users are taken in turn from a random
/// starting point, so that each gets at most one wrong password a run as
/// long as the run makes fewer attempts than there are plain users (the
/// lock starts at the fifth failure in a row; a seeded history ends with at
/// most one). Only 401 answers are timed; anything else is counted.
async fn password_timing(ctx: &Ctx) -> anyhow::Result<Value> {
    let users = Arc::new(password_users(&ctx.args));
    anyhow::ensure!(!users.is_empty(), "no plain users outside the TOTP pool");
    let start = StdRng::from_entropy().gen_range(0..users.len());
    let next_known = Arc::new(AtomicUsize::new(start));
    let deadline = ctx.deadline();
    let cpu = CpuWatch::start(&ctx.args.server_pids);
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..ctx.args.concurrency {
        let (target, users, next_known) = (
            Arc::clone(&ctx.target),
            Arc::clone(&users),
            Arc::clone(&next_known),
        );
        workers.push(tokio::spawn(async move {
            // [unknown user, wrong password]: 401s timed, every answer counted.
            let mut timed = [Samples::default(), Samples::default()];
            let mut answered = [Samples::default(), Samples::default()];
            let mut rng = StdRng::from_entropy();
            // Half the workers begin with each kind.
            let mut kind = worker % 2;
            while Instant::now() < deadline {
                let username = if kind == 0 {
                    format!("ghost-{:016x}", rng.gen::<u64>())
                } else {
                    let n = next_known.fetch_add(1, Ordering::Relaxed);
                    model::username(users[n % users.len()])
                };
                let body = json!({ "username": username, "password": WRONG_PASSWORD });
                let server = target.pick();
                let one = Instant::now();
                let answer = target.post(server, "/api/v1/login", None, &body).await;
                let latency = one.elapsed();
                let outcome = answer.outcome();
                if outcome == "401" {
                    timed[kind].record(&outcome, latency);
                }
                answered[kind].record(&outcome, latency);
                kind = 1 - kind;
            }
            (timed, answered)
        }));
    }
    let mut timed = [Samples::default(), Samples::default()];
    let mut answered = [Samples::default(), Samples::default()];
    for worker in workers {
        let (part_timed, part_answered) = worker.await?;
        for (total, part) in timed.iter_mut().zip(part_timed) {
            total.merge(part);
        }
        for (total, part) in answered.iter_mut().zip(part_answered) {
            total.merge(part);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let [unknown, wrong_password] = timed;
    let mut all = answered[0].clone();
    all.merge(answered[1].clone());
    let (u, w) = (unknown.summary(), wrong_password.summary());
    let ms = |summary: &Value, key: &str| summary[key].as_f64().unwrap_or(0.0);
    let known_attempts = answered[1].count();
    let mut record = ctx.record("password-timing", &all, seconds, cpu.stop());
    record["unknown_user"] = json!({ "latency": u, "outcomes": answered[0].outcomes });
    record["wrong_password"] = json!({ "latency": w, "outcomes": answered[1].outcomes });
    record["p50_difference_ms"] = json!(ms(&w, "p50_ms") - ms(&u, "p50_ms"));
    record["p95_difference_ms"] = json!(ms(&w, "p95_ms") - ms(&u, "p95_ms"));
    record["known_users"] = json!(users.len());
    record["most_failures_per_user"] = json!(known_attempts.div_ceil(users.len() as u64));
    println!(
        "password-timing unknown user p50 {:.2} ms p95 {:.2} ms ({} timed) | wrong password p50 {:.2} ms p95 {:.2} ms ({} timed) | p50 difference {:+.2} ms, p95 {:+.2} ms | answers {} / {}",
        ms(&u, "p50_ms"),
        ms(&u, "p95_ms"),
        unknown.count(),
        ms(&w, "p50_ms"),
        ms(&w, "p95_ms"),
        wrong_password.count(),
        record["p50_difference_ms"].as_f64().unwrap_or(0.0),
        record["p95_difference_ms"].as_f64().unwrap_or(0.0),
        record["unknown_user"]["outcomes"],
        record["wrong_password"]["outcomes"],
    );
    if known_attempts > users.len() as u64 {
        println!(
            "password-timing: {known_attempts} wrong passwords over {} users: some were hit more than once (a lock after five answers 423, which is not timed)",
            users.len()
        );
    }
    Ok(record)
}

/// One enrolled user of the TOTP pool.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PoolEntry {
    pub username: String,
    pub secret: String,
    pub parameters: TotpParameters,
    /// The last TOTP step used: codes at or below it are replays.
    pub last_step: u64,
}

struct PoolUser {
    entry: PoolEntry,
    secret: TotpSecret,
    last_step: AtomicU64,
}

struct Pool {
    users: Vec<PoolUser>,
    cursor: AtomicUsize,
}

fn unix_now() -> u64 {
    u64::try_from(Utc::now().timestamp()).unwrap_or(0)
}

impl Pool {
    fn load(path: &std::path::Path) -> anyhow::Result<Pool> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "no TOTP pool at {}: run --scenario enroll first",
                path.display()
            )
        })?;
        let entries: Vec<PoolEntry> = serde_json::from_str(&text)?;
        let users = entries
            .into_iter()
            .map(|entry| {
                entry
                    .parameters
                    .validate()
                    .map_err(|error| anyhow::anyhow!("pool parameters: {error}"))?;
                let secret = TotpSecret::from_base32(&entry.secret)
                    .map_err(|error| anyhow::anyhow!("pool secret: {error}"))?;
                Ok(PoolUser {
                    last_step: AtomicU64::new(entry.last_step),
                    entry,
                    secret,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!users.is_empty(), "the TOTP pool is empty");
        Ok(Pool {
            users,
            cursor: AtomicUsize::new(0),
        })
    }

    fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let entries: Vec<PoolEntry> = self
            .users
            .iter()
            .map(|user| PoolEntry {
                last_step: user.last_step.load(Ordering::SeqCst),
                ..user.entry.clone()
            })
            .collect();
        std::fs::write(path, serde_json::to_vec(&entries)?)?;
        Ok(())
    }

    /// A user whose code for the current step has not been used yet, marked
    /// used; with the code to send.
    fn claim(&self) -> Option<(usize, String)> {
        for _ in 0..self.users.len() {
            let index = self.cursor.fetch_add(1, Ordering::Relaxed) % self.users.len();
            let user = &self.users[index];
            let now = unix_now();
            let step = user.entry.parameters.step_at(now);
            let last = user.last_step.load(Ordering::SeqCst);
            if last < step
                && user
                    .last_step
                    .compare_exchange(last, step, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                let code = user.entry.parameters.code_at(&user.secret, now);
                return Some((index, code));
            }
        }
        None
    }

    /// Time until the next TOTP step begins.
    fn until_next_step(&self) -> Duration {
        let period = self.users.first().map_or(30, |u| u.entry.parameters.period);
        let now = Utc::now();
        let seconds = u64::try_from(now.timestamp()).unwrap_or(0);
        let next = (seconds / period + 1) * period;
        Duration::from_millis((next - seconds) * 1000 + 50).saturating_sub(Duration::from_millis(
            u64::from(now.timestamp_subsec_millis()),
        ))
    }

    /// How many users have a fresh code in the current step.
    fn claimable(&self) -> usize {
        let now = unix_now();
        self.users
            .iter()
            .filter(|u| u.last_step.load(Ordering::SeqCst) < u.entry.parameters.step_at(now))
            .count()
    }

    /// Waits (untimed) until `wanted` users have a fresh code.
    async fn wait_for_claimable(&self, wanted: usize) {
        let wanted = wanted.min(self.users.len());
        for _ in 0..3 {
            if self.claimable() >= wanted {
                return;
            }
            tokio::time::sleep(self.until_next_step()).await;
        }
    }
}

fn parameters_from_uri(uri: &str) -> TotpParameters {
    let mut parameters = TotpParameters::default();
    let query = uri.split_once('?').map_or("", |(_, query)| query);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("digits", value)) => parameters.digits = value.parse().unwrap_or(6),
            Some(("period", value)) => parameters.period = value.parse().unwrap_or(30),
            Some(("algorithm", "SHA256")) => parameters.algorithm = TotpAlgorithm::Sha256,
            Some(("algorithm", "SHA512")) => parameters.algorithm = TotpAlgorithm::Sha512,
            _ => {}
        }
    }
    parameters
}

/// Enrolls plain users through the API: login, start, confirm.
async fn enroll_one(target: &Target, username: &str) -> Result<PoolEntry, String> {
    let server = target.pick();
    let login = target
        .post(server, "/api/v1/login", None, &login_body(username))
        .await;
    let token = match (
        login.ok(),
        login.text("status"),
        login.text("session_token"),
    ) {
        (true, Some("authenticated"), Some(token)) => token.to_string(),
        _ => return Err(format!("login-{}", login.outcome())),
    };
    let started = target
        .post(
            server,
            "/api/v1/me/two-factor/totp",
            Some(&token),
            &json!({}),
        )
        .await;
    let (Some(secret), Some(uri)) = (started.text("secret"), started.text("otpauth_uri")) else {
        return Err(format!("start-{}", started.outcome()));
    };
    let parameters = parameters_from_uri(uri);
    parameters
        .validate()
        .map_err(|error| format!("parameters-{error}"))?;
    let totp = TotpSecret::from_base32(secret).map_err(|error| format!("secret-{error}"))?;
    let now = unix_now();
    let code = parameters.code_at(&totp, now);
    let confirmed = target
        .post(
            server,
            "/api/v1/me/two-factor/totp/confirm",
            Some(&token),
            &json!({ "code": code }),
        )
        .await;
    if !confirmed.ok() {
        return Err(format!("confirm-{}", confirmed.outcome()));
    }
    Ok(PoolEntry {
        username: username.to_string(),
        secret: secret.to_string(),
        parameters,
        last_step: parameters.step_at(now),
    })
}

async fn enroll(ctx: &Ctx) -> anyhow::Result<Value> {
    let names: Vec<String> = model::plain_indexes(ctx.args.users)
        .take(ctx.args.pool_size)
        .map(model::username)
        .collect();
    let queue = Arc::new(std::sync::Mutex::new(names));
    let cpu = CpuWatch::start(&ctx.args.server_pids);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..ctx.args.concurrency {
        let queue = Arc::clone(&queue);
        let target = Arc::clone(&ctx.target);
        workers.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut entries = Vec::new();
            loop {
                let next = queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop();
                let Some(username) = next else { break };
                let one = Instant::now();
                match enroll_one(&target, &username).await {
                    Ok(entry) => {
                        samples.record("200", one.elapsed());
                        entries.push(entry);
                    }
                    Err(outcome) => samples.record(&outcome, one.elapsed()),
                }
            }
            (samples, entries)
        }));
    }
    let mut samples = Samples::default();
    let mut entries = Vec::new();
    for worker in workers {
        let (part, mut enrolled) = worker.await?;
        samples.merge(part);
        entries.append(&mut enrolled);
    }
    let seconds = started.elapsed().as_secs_f64();
    std::fs::write(&ctx.args.pool, serde_json::to_vec(&entries)?)?;
    let record = ctx.record("enroll", &samples, seconds, cpu.stop());
    print("enroll", &record);
    Ok(record)
}

/// Counters read before and after a scenario, to count what it stored.
struct StoreCounters {
    position: i64,
    commits: Option<PgCommits>,
}

#[derive(Clone, Copy, Debug, Default)]
struct PgCommits {
    xact_commit: i64,
    checkpoint_writes: i64,
    snapshot_writes: i64,
    session_updates: i64,
    secret_writes: i64,
}

const PG_COMMITS: &str = "
SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
       coalesce(sum(n_tup_ins + n_tup_upd) FILTER (WHERE relname = 'projection_checkpoints'), 0)::bigint,
       coalesce(sum(n_tup_ins + n_tup_upd) FILTER (WHERE relname = 'aggregate_snapshots'), 0)::bigint,
       coalesce(sum(n_tup_upd) FILTER (WHERE relname = 'sessions'), 0)::bigint,
       coalesce(sum(n_tup_ins) FILTER (WHERE relname = 'totp_secrets'), 0)::bigint
  FROM pg_stat_user_tables";

/// PostgreSQL publishes a backend's counters up to 10 s after it goes idle.
const PG_STATS_DELAY: Duration = Duration::from_secs(11);

async fn store_counters(ctx: &Ctx) -> anyhow::Result<Option<StoreCounters>> {
    let Some(db) = &ctx.db else { return Ok(None) };
    let position: Option<i64> = one_row(
        db.fetch("SELECT max(position) AS position FROM events", vec![])
            .await?,
    )?
    .get("position")?;
    // PostgreSQL's statistics views; SQLite keeps no such counters.
    let commits = if ctx.args.commit_stats && db.dialect() == Dialect::Postgres {
        tokio::time::sleep(PG_STATS_DELAY).await;
        let row = one_row(db.fetch(PG_COMMITS, vec![]).await?)?;
        Some(PgCommits {
            xact_commit: row.get_at(0)?,
            checkpoint_writes: row.get_at(1)?,
            snapshot_writes: row.get_at(2)?,
            session_updates: row.get_at(3)?,
            secret_writes: row.get_at(4)?,
        })
    } else {
        None
    };
    Ok(Some(StoreCounters {
        position: position.unwrap_or(0),
        commits,
    }))
}

/// What the store holds after a scenario, compared with what the answers
/// acknowledged: lost or duplicated events, replays across processes.
async fn audit_store(
    ctx: &Ctx,
    before: &StoreCounters,
    acknowledged_events: u64,
    operations: u64,
) -> anyhow::Result<Value> {
    let Some(db) = &ctx.db else {
        return Ok(Value::Null);
    };
    let after = store_counters(ctx).await?;
    let dialect = db.dialect();
    let transaction_id = dialect.transaction_id();
    let session_id = dialect.json_field("payload", &["SessionStarted", "session_id"]);
    let challenge_id = dialect.json_field("payload", &["SecondFactorAccepted", "challenge_id"]);
    let totp_step = dialect.json_field("payload", &["SecondFactorAccepted", "totp_step"]);
    let row = one_row(
        db.fetch(
            &format!(
                "WITH new AS (SELECT * FROM events WHERE position > $1)
                 SELECT (SELECT count(*) FROM new),
                        (SELECT count(DISTINCT {transaction_id}) FROM new),
                        (SELECT count(*) - count(DISTINCT {session_id})
                           FROM new WHERE event_type = 'SessionStarted'),
                        (SELECT count(*) - count(DISTINCT {challenge_id})
                           FROM new WHERE event_type = 'SecondFactorAccepted'),
                        (SELECT count(*) FROM (
                            SELECT aggregate_id, {totp_step}
                              FROM events WHERE event_type = 'SecondFactorAccepted'
                               AND aggregate_id IN (SELECT aggregate_id FROM new)
                             GROUP BY 1, 2 HAVING count(*) > 1) steps)"
            ),
            vec![before.position.into()],
        )
        .await?,
    )?;
    let events: i64 = row.get_at(0)?;
    let transactions: i64 = row.get_at(1)?;
    let duplicate_sessions: i64 = row.get_at(2)?;
    let duplicate_acceptances: i64 = row.get_at(3)?;
    let replays: i64 = row.get_at(4)?;
    let per = |value: i64| value as f64 / operations.max(1) as f64;
    let mut report = json!({
        "events_acknowledged": acknowledged_events,
        "events_stored": events,
        "events_missing_or_extra": events - i64::try_from(acknowledged_events).unwrap_or(i64::MAX),
        "duplicate_sessions": duplicate_sessions,
        "duplicate_acceptances": duplicate_acceptances,
        "totp_steps_accepted_twice": replays,
        "append_transactions": transactions,
    });
    if let (Some(b), Some(Some(a))) = (before.commits, after.as_ref().map(|a| a.commits)) {
        let checkpoint = a.checkpoint_writes - b.checkpoint_writes;
        let snapshot = a.snapshot_writes - b.snapshot_writes;
        let touches = a.session_updates - b.session_updates;
        let secrets = a.secret_writes - b.secret_writes;
        // The projection's rounds commit with `synchronous_commit = off`:
        // they wait for no disk flush, so they are counted apart.
        let durable = transactions + snapshot + touches + secrets;
        report["commits"] = json!({
            "operations": operations,
            "event_appends_per_op": per(transactions),
            "projection_batches_per_op": per(checkpoint),
            "snapshot_writes_per_op": per(snapshot),
            "session_touches_per_op": per(touches),
            "secret_writes_per_op": per(secrets),
            "durable_commits_per_op": per(durable),
            "all_transactions_per_op": per(a.xact_commit - b.xact_commit),
        });
    }
    Ok(report)
}

/// The one row a query gives.
fn one_row(rows: Vec<Row>) -> anyhow::Result<Row> {
    rows.into_iter().next().context("the query gave no row")
}

async fn totp_verify_call(
    target: &Target,
    server: usize,
    challenge_id: &str,
    code: &str,
) -> Answer {
    target
        .post(
            server,
            &format!("/api/v1/login/challenges/{challenge_id}/verify"),
            None,
            &json!({ "method": "totp", "code": code, "remember_device": false }),
        )
        .await
}

async fn full_signin(ctx: &Ctx) -> anyhow::Result<Value> {
    let pool = Arc::new(Pool::load(&ctx.args.pool)?);
    pool.wait_for_claimable((pool.users.len() / 2).max(ctx.args.concurrency * 4))
        .await;
    let before = store_counters(ctx).await?;
    let logins = Arc::new(std::sync::Mutex::new(Samples::default()));
    let verifies = Arc::new(std::sync::Mutex::new(Samples::default()));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let cpu = CpuWatch::start(&ctx.args.server_pids);
    let (samples, seconds) = {
        let (pool, logins, verifies, acknowledged) = (
            Arc::clone(&pool),
            Arc::clone(&logins),
            Arc::clone(&verifies),
            Arc::clone(&acknowledged),
        );
        closed_loop(ctx, move |target, _, rng| {
            let (pool, logins, verifies, acknowledged) = (
                Arc::clone(&pool),
                Arc::clone(&logins),
                Arc::clone(&verifies),
                Arc::clone(&acknowledged),
            );
            async move {
                let Some((index, code)) = pool.claim() else {
                    // Every user's code for this step is spent: wait for the next.
                    tokio::time::sleep(pool.until_next_step()).await;
                    return ("waited".to_string(), Duration::ZERO, rng);
                };
                let user = &pool.users[index];
                let started = Instant::now();
                let server = target.pick();
                let login = target
                    .post(
                        server,
                        "/api/v1/login",
                        None,
                        &login_body(&user.entry.username),
                    )
                    .await;
                let login_latency = started.elapsed();
                logins
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .record(&login.outcome(), login_latency);
                let challenge = match (login.ok(), login.text("status"), login.text("challenge_id"))
                {
                    (true, Some("two_factor_required"), Some(challenge)) => {
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                        challenge.to_string()
                    }
                    _ => return (format!("login-{}", login.outcome()), started.elapsed(), rng),
                };
                // The second step goes to the next server of the rotation.
                let verify_started = Instant::now();
                let verify = totp_verify_call(&target, server + 1, &challenge, &code).await;
                verifies
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .record(&verify.outcome(), verify_started.elapsed());
                if verify.ok() {
                    acknowledged.fetch_add(2, Ordering::Relaxed);
                    (verify.outcome(), started.elapsed(), rng)
                } else {
                    (
                        format!("verify-{}", verify.outcome()),
                        started.elapsed(),
                        rng,
                    )
                }
            }
        })
        .await
    };
    let cpu = cpu.stop();
    pool.save(&ctx.args.pool)?;
    let mut samples = samples;
    let waited = samples.outcomes.remove("waited").unwrap_or(0);
    samples.latencies_us.retain(|latency| *latency > 0);
    let mut record = ctx.record("full-signin", &samples, seconds, cpu);
    record["waited_for_step"] = json!(waited);
    record["login_step"] = logins
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .summary();
    record["verify_step"] = verifies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .summary();
    if let Some(before) = before {
        record["store_check"] = audit_store(
            ctx,
            &before,
            acknowledged.load(Ordering::SeqCst),
            samples.ok(),
        )
        .await?;
    }
    print("full-signin", &record);
    if !record["store_check"].is_null() {
        println!("               store check: {}", record["store_check"]);
    }
    Ok(record)
}

async fn totp_verify(ctx: &Ctx) -> anyhow::Result<Value> {
    let pool = Arc::new(Pool::load(&ctx.args.pool)?);
    // Untimed: one open challenge per chosen user, those whose codes were
    // used longest ago first.
    let wanted = ctx
        .args
        .verify_users
        .unwrap_or(pool.users.len() / 2)
        .clamp(1, pool.users.len());
    let mut chosen: Vec<usize> = (0..pool.users.len()).collect();
    chosen.sort_by_key(|index| pool.users[*index].last_step.load(Ordering::SeqCst));
    chosen.truncate(wanted);
    let latest_used = chosen
        .iter()
        .map(|index| pool.users[*index].last_step.load(Ordering::SeqCst))
        .max()
        .unwrap_or(0);
    let queue = Arc::new(std::sync::Mutex::new(chosen));
    let mut workers = Vec::new();
    for _ in 0..ctx.args.concurrency {
        let (queue, pool, target) = (
            Arc::clone(&queue),
            Arc::clone(&pool),
            Arc::clone(&ctx.target),
        );
        workers.push(tokio::spawn(async move {
            let mut challenges = Vec::new();
            loop {
                let next = queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop();
                let Some(index) = next else { break };
                let login = target
                    .post(
                        target.pick(),
                        "/api/v1/login",
                        None,
                        &login_body(&pool.users[index].entry.username),
                    )
                    .await;
                if let Some(challenge) = login.text("challenge_id") {
                    challenges.push((index, challenge.to_string()));
                }
            }
            challenges
        }));
    }
    let mut challenges = Vec::new();
    for worker in workers {
        challenges.append(&mut worker.await?);
    }
    anyhow::ensure!(!challenges.is_empty(), "no challenge could be opened");
    // Every user's next code must be a fresh step.
    let step_now = || {
        pool.users
            .first()
            .map_or(0, |u| u.entry.parameters.step_at(unix_now()))
    };
    while step_now() <= latest_used {
        tokio::time::sleep(pool.until_next_step()).await;
    }
    let before = store_counters(ctx).await?;
    let queue = Arc::new(std::sync::Mutex::new(challenges));
    let cpu = CpuWatch::start(&ctx.args.server_pids);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..ctx.args.concurrency {
        let (queue, pool, target) = (
            Arc::clone(&queue),
            Arc::clone(&pool),
            Arc::clone(&ctx.target),
        );
        workers.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            loop {
                let next = queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .pop();
                let Some((index, challenge)) = next else {
                    break;
                };
                let user = &pool.users[index];
                let now = unix_now();
                user.last_step
                    .fetch_max(user.entry.parameters.step_at(now), Ordering::SeqCst);
                let code = user.entry.parameters.code_at(&user.secret, now);
                let one = Instant::now();
                let answer = totp_verify_call(&target, target.pick(), &challenge, &code).await;
                samples.record(&answer.outcome(), one.elapsed());
            }
            samples
        }));
    }
    let mut samples = Samples::default();
    for worker in workers {
        samples.merge(worker.await?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu.stop();
    pool.save(&ctx.args.pool)?;
    let mut record = ctx.record("totp-verify", &samples, seconds, cpu);
    if let Some(before) = before {
        record["store_check"] = audit_store(ctx, &before, samples.ok() * 2, samples.ok()).await?;
    }
    print("totp-verify", &record);
    Ok(record)
}

async fn commands(ctx: &Ctx) -> anyhow::Result<Value> {
    let token = Arc::new(admin_token(&ctx.target).await?);
    let users = ctx.args.users;
    let before = store_counters(ctx).await?;
    let cpu = CpuWatch::start(&ctx.args.server_pids);
    let (samples, seconds) = closed_loop(ctx, move |target, n, mut rng| {
        let token = Arc::clone(&token);
        async move {
            let index = rng.gen_range(0..users);
            let body = json!({ "email": format!("load-{index:07}+{n}@example.com") });
            let started = Instant::now();
            let answer = target
                .call(
                    target.pick(),
                    reqwest::Method::PATCH,
                    &format!("/api/v1/users/{}", model::user_id(index)),
                    Some(&token),
                    Some(&body),
                )
                .await;
            (answer.outcome(), started.elapsed(), rng)
        }
    })
    .await;
    let cpu = cpu.stop();
    let mut record = ctx.record("commands", &samples, seconds, cpu);
    if let Some(before) = before {
        record["store_check"] = audit_store(ctx, &before, samples.ok(), samples.ok()).await?;
    }
    print("commands", &record);
    Ok(record)
}

async fn history(ctx: &Ctx) -> anyhow::Result<Value> {
    let token = admin_token(&ctx.target).await?;
    let users = [SeedUser::short_history()?, SeedUser::long_history()?];
    let mut samples = [Samples::default(), Samples::default()];
    let mut cold = [0.0f64; 2];
    let change = |user: &SeedUser, n: usize| {
        let path = format!("/api/v1/users/{}", user.id);
        let body = json!({ "email": format!("{}+{n}@example.com", user.username) });
        let target = Arc::clone(&ctx.target);
        let token = token.clone();
        async move {
            let started = Instant::now();
            let answer = target
                .call(
                    target.pick(),
                    reqwest::Method::PATCH,
                    &path,
                    Some(&token),
                    Some(&body),
                )
                .await;
            (answer.outcome(), started.elapsed())
        }
    };
    let cpu = CpuWatch::start(&ctx.args.server_pids);
    let started = Instant::now();
    // The first command on each user: no snapshot yet, so the whole
    // history is read (and a snapshot written).
    for (slot, user) in users.iter().enumerate() {
        let (outcome, latency) = change(user, 0).await;
        if outcome != "200" {
            bail!("PATCH {} answered {outcome}: was it seeded?", user.username);
        }
        cold[slot] = latency.as_secs_f64() * 1000.0;
    }
    for n in 1..=5 {
        for user in &users {
            change(user, n).await;
        }
    }
    for n in 0..ctx.args.history_commands {
        for (slot, user) in users.iter().enumerate() {
            let (outcome, latency) = change(user, n + 10).await;
            samples[slot].record(&outcome, latency);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let [short, long] = samples;
    let (s, l) = (short.summary(), long.summary());
    let ratio =
        |key: &str| l[key].as_f64().unwrap_or(0.0) / s[key].as_f64().unwrap_or(1.0).max(1e-9);
    let mut all = short.clone();
    all.merge(long.clone());
    let mut record = ctx.record("history", &all, seconds, cpu.stop());
    record["short"] =
        json!({ "events": model::SHORT_HISTORY, "latency": s, "first_command_ms": cold[0] });
    record["long"] =
        json!({ "events": model::LONG_HISTORY, "latency": l, "first_command_ms": cold[1] });
    record["ratio_p50"] = json!(ratio("p50_ms"));
    record["ratio_p99"] = json!(ratio("p99_ms"));
    record["ratio_mean"] = json!(ratio("mean_ms"));
    println!(
        "history        10 events p50 {:.2} ms p99 {:.2} ms | 10,000 events p50 {:.2} ms p99 {:.2} ms (first command {:.1} ms) | ratio p50 {:.2} p99 {:.2}",
        s["p50_ms"].as_f64().unwrap_or(0.0),
        s["p99_ms"].as_f64().unwrap_or(0.0),
        l["p50_ms"].as_f64().unwrap_or(0.0),
        l["p99_ms"].as_f64().unwrap_or(0.0),
        cold[1],
        record["ratio_p50"].as_f64().unwrap_or(0.0),
        record["ratio_p99"].as_f64().unwrap_or(0.0),
    );
    Ok(record)
}

async fn overload(ctx: &Ctx) -> anyhow::Result<Value> {
    // Capacity is measured right before (closed loop, same users), since
    // what else runs on the machine changes it from minute to minute.
    let capacity = match ctx.args.rate {
        Some(_) => None,
        None => {
            let probe = password(&Ctx {
                args: RunArgs {
                    duration: (ctx.args.duration / 2.0).clamp(3.0, 8.0),
                    label: format!("{} (capacity probe)", ctx.args.label),
                    ..ctx.args.clone()
                },
                target: Arc::clone(&ctx.target),
                db: None,
            })
            .await?;
            probe["throughput"].as_f64()
        }
    };
    let rate = match (ctx.args.rate, capacity) {
        (Some(rate), _) => rate,
        (None, Some(capacity)) => capacity * ctx.args.overload_factor,
        (None, None) => bail!("could not measure the capacity: give --rate"),
    };
    anyhow::ensure!(rate > 0.0, "the offered rate must be positive");
    let users = Arc::new(password_users(&ctx.args));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(ctx.args.max_in_flight));
    let samples = Arc::new(std::sync::Mutex::new(Samples::default()));
    let fast_rejections = Arc::new(AtomicU64::new(0));
    let memory_before: Vec<(f64, f64)> = ctx
        .args
        .server_pids
        .iter()
        .filter_map(|pid| memory_mib(*pid))
        .collect();
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (pids, peak, sampling) = (
            ctx.args.server_pids.clone(),
            Arc::clone(&peak_rss),
            Arc::clone(&sampling),
        );
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                let rss: f64 = pids
                    .iter()
                    .filter_map(|pid| memory_mib(*pid))
                    .map(|(rss, _)| rss)
                    .sum();
                peak.fetch_max(rss as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let cpu = CpuWatch::start(&ctx.args.server_pids);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(ctx.args.duration);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut offered = 0u64;
    let mut shed_by_driver = 0u64;
    let mut tasks = Vec::new();
    let mut rng = StdRng::from_entropy();
    while Instant::now() < end {
        ticker.tick().await;
        offered += 1;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            shed_by_driver += 1;
            continue;
        };
        let index = users[rng.gen_range(0..users.len())];
        let (target, samples, fast) = (
            Arc::clone(&ctx.target),
            Arc::clone(&samples),
            Arc::clone(&fast_rejections),
        );
        tasks.push(tokio::spawn(async move {
            let one = Instant::now();
            let answer = target
                .post(
                    target.pick(),
                    "/api/v1/login",
                    None,
                    &login_body(&model::username(index)),
                )
                .await;
            let latency = one.elapsed();
            if matches!(answer.status, Some(429 | 503)) && latency <= Duration::from_millis(50) {
                fast.fetch_add(1, Ordering::Relaxed);
            }
            samples
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record(&answer.outcome(), latency);
            drop(permit);
        }));
    }
    let offering = started.elapsed().as_secs_f64();
    for task in tasks {
        drop(task.await);
    }
    let drained = started.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    drop(sampler.await);
    let samples = samples
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let memory_after: Vec<(f64, f64)> = ctx
        .args
        .server_pids
        .iter()
        .filter_map(|pid| memory_mib(*pid))
        .collect();
    let mut record = ctx.record("overload", &samples, drained, cpu.stop());
    let rejections: u64 = ["429", "503"]
        .iter()
        .filter_map(|code| samples.outcomes.get(*code))
        .sum();
    record["offered_rate"] = json!(rate);
    record["capacity"] = json!(capacity);
    record["offered"] = json!(offered);
    record["shed_by_driver"] = json!(shed_by_driver);
    record["max_in_flight"] = json!(ctx.args.max_in_flight);
    record["offering_seconds"] = json!(offering);
    record["drain_seconds"] = json!(drained - offering);
    record["rejected_429_503"] = json!(rejections);
    record["rejected_within_50ms"] = json!(fast_rejections.load(Ordering::Relaxed));
    record["goodput"] = json!(samples.ok() as f64 / drained.max(1e-9));
    record["rss_mib_before"] = json!(memory_before.iter().map(|m| m.0).sum::<f64>());
    record["rss_mib_peak_sampled"] = json!(peak_rss.load(Ordering::Relaxed));
    record["rss_mib_after"] = json!(memory_after.iter().map(|m| m.0).sum::<f64>());
    record["rss_mib_high_water"] = json!(memory_after.iter().map(|m| m.1).sum::<f64>());
    println!(
        "overload       offered {:.0}/s for {:.0} s: goodput {:.1}/s, answered {} (2xx {}, 429/503 {}), driver shed {}, p50 {:.0} ms p99 {:.0} ms, drain {:.1} s, RSS {:.0} -> peak {} MiB",
        rate,
        offering,
        record["goodput"].as_f64().unwrap_or(0.0),
        samples.count(),
        samples.ok(),
        rejections,
        shed_by_driver,
        record["latency"]["p50_ms"].as_f64().unwrap_or(0.0),
        record["latency"]["p99_ms"].as_f64().unwrap_or(0.0),
        drained - offering,
        record["rss_mib_before"].as_f64().unwrap_or(0.0),
        record["rss_mib_peak_sampled"],
    );
    Ok(record)
}

/// Picks the path of the next read.
type PathFor = fn(&mut StdRng, u64) -> String;

async fn reads(ctx: &Ctx) -> anyhow::Result<Vec<Value>> {
    let token = Arc::new(admin_token(&ctx.target).await?);
    let users = ctx.args.users;
    let mut records = Vec::new();
    let kinds: [(&str, PathFor); 4] = [
        ("read-report", |_, _| {
            "/api/v1/reports/two-factor".to_string()
        }),
        ("read-search", |rng, users| {
            // "load-" and four digits: about a thousand users at 1M.
            let name = model::username(rng.gen_range(0..users));
            format!("/api/v1/users?q={}&limit=50", &name[..9.min(name.len())])
        }),
        ("read-users-page", |_, _| {
            "/api/v1/users?limit=50".to_string()
        }),
        ("read-audit-user", |rng, users| {
            format!(
                "/api/v1/audit?user_id={}&limit=100",
                model::user_id(rng.gen_range(0..users))
            )
        }),
    ];
    for (name, path) in kinds {
        let token = Arc::clone(&token);
        let cpu = CpuWatch::start(&ctx.args.server_pids);
        let (samples, seconds) = closed_loop(ctx, move |target, _, mut rng| {
            let token = Arc::clone(&token);
            let path = path(&mut rng, users);
            async move {
                let started = Instant::now();
                let answer = target.get(target.pick(), &path, Some(&token)).await;
                (answer.outcome(), started.elapsed(), rng)
            }
        })
        .await;
        let record = ctx.record(name, &samples, seconds, cpu.stop());
        print(name, &record);
        records.push(record);
    }
    Ok(records)
}

/// `twofold-load mem`: resident memory of the servers now.
pub fn memory_record(pids: &[u32], label: &str) -> Value {
    let memory: Vec<(f64, f64)> = pids.iter().filter_map(|pid| memory_mib(*pid)).collect();
    let rss: f64 = memory.iter().map(|m| m.0).sum();
    let peak: f64 = memory.iter().map(|m| m.1).sum();
    println!(
        "memory         {label}: RSS {rss:.1} MiB (peak {peak:.1} MiB) over {} process(es)",
        memory.len()
    );
    json!({
        "kind": "memory",
        "label": label,
        "processes": memory.len(),
        "rss_mib": rss,
        "hwm_mib": peak,
        "at": Utc::now(),
    })
}

pub fn append(out: Option<&PathBuf>, records: &[Value]) -> anyhow::Result<()> {
    let Some(out) = out else { return Ok(()) };
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    for record in records {
        writeln!(file, "{record}")?;
    }
    Ok(())
}
