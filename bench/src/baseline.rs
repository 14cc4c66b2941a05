//! The machine's own limits, measured in the same run as the service:
//! H = argon2id hashes a second on one core with the service's parameters,
//! C = durable single-row commits a second of each store.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use argon2::password_hash::{PasswordHasher, SaltString};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};

use crate::stats::Samples;

/// H: one thread hashing for `seconds` (one hash ~ 25 ms).
pub fn argon2_per_core(seconds: f64) -> anyhow::Result<Value> {
    let argon2 = crate::seed::argon2()?;
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    // Warm the allocator and caches.
    argon2
        .hash_password(b"warm-up-password", &salt)
        .map_err(|error| anyhow::anyhow!("argon2: {error}"))?;
    let mut samples = Samples::default();
    let started = Instant::now();
    let cpu_start = thread_cpu_seconds().unwrap_or(0.0);
    while started.elapsed().as_secs_f64() < seconds {
        let one = Instant::now();
        argon2
            .hash_password(crate::model::PASSWORD.as_bytes(), &salt)
            .map_err(|error| anyhow::anyhow!("argon2: {error}"))?;
        samples.record("200", one.elapsed());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = thread_cpu_seconds().map(|end| end - cpu_start);
    // Per second of CPU this thread got: on a machine shared with other
    // work the wall-clock rate understates one core's capacity.
    let per_cpu_second = cpu
        .filter(|cpu| *cpu > 0.0)
        .map(|cpu| samples.count() as f64 / cpu);
    Ok(json!({
        "kind": "baseline",
        "name": "H",
        "what": "argon2id m=19456 KiB t=2 p=1 hashes per second of one core's CPU",
        "per_second": per_cpu_second.unwrap_or(samples.count() as f64 / elapsed),
        "per_wall_second": samples.count() as f64 / elapsed,
        "thread_cpu_seconds": cpu,
        "count": samples.count(),
        "seconds": elapsed,
        "latency": samples.summary(),
    }))
}

/// CPU seconds (user + system) the calling thread has used.
fn thread_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// C for SQLite: one connection, WAL, synchronous=FULL, one row a commit.
pub async fn sqlite_commits(dir: &std::path::Path, seconds: f64) -> anyhow::Result<Value> {
    let path = dir.join("baseline-commits.db");
    drop(std::fs::remove_file(&path));
    let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let mut conn = SqliteConnection::connect_with(&options).await?;
    sqlx::query("CREATE TABLE commits (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
        .execute(&mut conn)
        .await?;
    let payload = "x".repeat(300);
    let mut samples = Samples::default();
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < seconds {
        let one = Instant::now();
        sqlx::query("INSERT INTO commits (payload) VALUES ($1)")
            .bind(&payload)
            .execute(&mut conn)
            .await?;
        samples.record("200", one.elapsed());
    }
    let elapsed = started.elapsed().as_secs_f64();
    conn.close().await?;
    for suffix in ["", "-wal", "-shm"] {
        drop(std::fs::remove_file(format!("{}{suffix}", path.display())));
    }
    Ok(json!({
        "kind": "baseline",
        "name": "C_sqlite",
        "what": "SQLite single-row commits/s (WAL, synchronous=FULL, 1 connection)",
        "per_second": samples.count() as f64 / elapsed,
        "count": samples.count(),
        "seconds": elapsed,
        "latency": samples.summary(),
    }))
}

/// C for PostgreSQL: `clients` connections, each committing one row at a time.
pub async fn postgres_commits(url: &str, clients: usize, seconds: f64) -> anyhow::Result<Value> {
    let pool = postgres_pool(url, clients).await?;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_commits;
         CREATE TABLE bench_commits (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload text NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let (samples, elapsed) = postgres_statements(
        &pool,
        clients,
        seconds,
        "INSERT INTO bench_commits (payload) VALUES ($1)",
    )
    .await?;
    sqlx::query("DROP TABLE bench_commits")
        .execute(&pool)
        .await?;
    Ok(rate(
        "C_postgres",
        format!("PostgreSQL single-row commits/s ({clients} clients)"),
        &samples,
        elapsed,
    ))
}

/// R for PostgreSQL: statement round trips a second that do no work
/// (`SELECT length($1)` with the same 300-byte argument), `clients` at a
/// time: what a request pays per statement before any work is done.
pub async fn postgres_round_trips(
    url: &str,
    clients: usize,
    seconds: f64,
) -> anyhow::Result<Value> {
    let pool = postgres_pool(url, clients).await?;
    let (samples, elapsed) =
        postgres_statements(&pool, clients, seconds, "SELECT length($1)").await?;
    Ok(rate(
        "R_postgres",
        format!("PostgreSQL statement round trips/s, no work ({clients} clients)"),
        &samples,
        elapsed,
    ))
}

async fn postgres_pool(url: &str, clients: usize) -> anyhow::Result<sqlx::PgPool> {
    PgPoolOptions::new()
        .max_connections(u32::try_from(clients).unwrap_or(16))
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// `sql` with one 300-byte text argument, run by `clients` tasks in a loop.
async fn postgres_statements(
    pool: &sqlx::PgPool,
    clients: usize,
    seconds: f64,
    sql: &'static str,
) -> anyhow::Result<(Samples, f64)> {
    let payload = Arc::new("x".repeat(300));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let pool = pool.clone();
        let payload = Arc::clone(&payload);
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            while Instant::now() < deadline {
                let one = Instant::now();
                sqlx::query(sql)
                    .bind(payload.as_str())
                    .execute(&pool)
                    .await?;
                samples.record("200", one.elapsed());
            }
            Ok::<_, sqlx::Error>(samples)
        }));
    }
    let mut samples = Samples::default();
    for task in tasks {
        samples.merge(task.await??);
    }
    Ok((samples, started.elapsed().as_secs_f64()))
}

fn rate(name: &str, what: String, samples: &Samples, seconds: f64) -> Value {
    json!({
        "kind": "baseline",
        "name": name,
        "what": what,
        "per_second": samples.count() as f64 / seconds,
        "count": samples.count(),
        "seconds": seconds,
        "latency": samples.summary(),
    })
}
