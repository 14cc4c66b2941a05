//! Opening the store named by a URL, and its schema migrations.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions,
    SqliteSynchronous, SqliteTransactionManager,
};
use sqlx::{Connection, Executor, TransactionManager};

use crate::db::register_read_models_writer;
use crate::Db;

/// Opens the store named by the URL: SQLite (created when missing, WAL,
/// synchronous=FULL so an acknowledged write survives power loss) or PostgreSQL.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Db> {
    if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("bad SQLite URL {url}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool_of = |connections| {
            SqlitePoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(Duration::from_secs(5))
                .after_connect(|connection, _| Box::pin(refuse_read_only(connection)))
                .before_acquire(|connection, _| Box::pin(end_stray_transaction(connection)))
        };
        let pool = pool_of(max_connections)
            .connect_with(options.clone())
            .await
            .with_context(|| format!("cannot open {url}"))?;
        // The read models' writer (`Db::begin_read_models_write`).
        register_read_models_writer(
            &pool,
            pool_of(1).connect_lazy_with(options.synchronous(SqliteSynchronous::Normal)),
        );
        Ok(Db::Sqlite(pool))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect(url)
            .await
            .context("cannot connect to PostgreSQL")?;
        Ok(Db::Postgres(pool))
    } else {
        anyhow::bail!("--database-url must start with sqlite:// or postgres://")
    }
}

/// Opens a store that exists: a SQLite path with no file there is an error
/// (a mistyped path), not a new empty store.
pub async fn connect_existing(url: &str, max_connections: u32) -> anyhow::Result<Db> {
    if let Some(file) = sqlite_file(url) {
        anyhow::ensure!(
            file.exists(),
            "no SQLite store at {} (from --database-url)",
            file.display()
        );
    }
    connect(url, max_connections).await
}

/// SQLite opens a file it may not write read-only instead of failing, and
/// such a connection goes on refusing writes after the file is writable
/// again. Setting the user version to itself in a transaction that is
/// rolled back touches a page without writing anything to disk, and fails
/// on such a connection; the pool then opens another until its acquire
/// time-out (a 503 meanwhile).
async fn refuse_read_only(connection: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *connection)
        .await?;
    let mut probe = connection.begin().await?;
    sqlx::query(&format!("PRAGMA user_version = {version}"))
        .execute(&mut *probe)
        .await?;
    probe.rollback().await
}

/// SQLite may end a transaction by itself on a full disk or an I/O error;
/// sqlx's ROLLBACK then fails and it goes on counting the transaction as
/// open, so its next `begin` on that connection would be a savepoint that
/// never commits (an acknowledged write could vanish, the write lock stay
/// taken). Before the connection is used again both are brought back to no
/// transaction: a hand-made BEGIN (refused harmlessly while SQLite's own is
/// still open) gives sqlx's ROLLBACK a transaction to end.
async fn end_stray_transaction(connection: &mut SqliteConnection) -> Result<bool, sqlx::Error> {
    while SqliteTransactionManager::get_transaction_depth(connection) > 0 {
        tracing::warn!("ending a transaction that SQLite had already rolled back");
        drop(connection.execute("BEGIN").await);
        SqliteTransactionManager::rollback(connection).await?;
    }
    Ok(true)
}

/// The schema's migrations (`migrations/`), each applied once.
pub async fn migrate(db: &Db) -> anyhow::Result<()> {
    let migrator = match db {
        Db::Sqlite(_) => sqlx::migrate!("../migrations/sqlite"),
        Db::Postgres(_) => sqlx::migrate!("../migrations/postgres"),
    };
    if !up_to_date(db, &migrator).await {
        match db {
            Db::Sqlite(pool) => migrator.run(pool).await?,
            Db::Postgres(pool) => migrator.run(pool).await?,
        }
    }
    Ok(())
}

/// Whether the store answers a trivial query (readiness).
pub async fn ping(db: &Db) -> Result<(), sqlx::Error> {
    crate::on_pool!(db, pool => {
        sqlx::query_scalar::<_, i64>("SELECT CAST(1 AS BIGINT)")
            .fetch_one(pool)
            .await
            .map(drop)
    })
}

/// The position of the last event stored (0 when there is none).
pub async fn last_position(db: &Db) -> Result<i64, sqlx::Error> {
    crate::on_pool!(db, pool => {
        sqlx::query_scalar::<_, Option<i64>>("SELECT max(position) FROM events")
            .fetch_one(pool)
            .await
            .map(Option::unwrap_or_default)
    })
}

/// Every migration already applied, unchanged. Checked with a SELECT first
/// because sqlx's runner starts with CREATE TABLE IF NOT EXISTS, which a
/// PostgreSQL service role without CREATE on the schema may not run even
/// when the table exists (operations.md: the service may not change or
/// delete events, so it does not own the schema). Anything else (first
/// start, a new or changed migration) goes to the runner, which applies or
/// reports it.
async fn up_to_date(db: &Db, migrator: &sqlx::migrate::Migrator) -> bool {
    const SQL: &str = "SELECT version, checksum FROM _sqlx_migrations WHERE success";
    let applied: Result<Vec<(i64, Vec<u8>)>, sqlx::Error> = match db {
        Db::Sqlite(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
        Db::Postgres(pool) => sqlx::query_as(SQL).fetch_all(pool).await,
    };
    applied.is_ok_and(|applied| {
        migrator.iter().all(|migration| {
            applied.iter().any(|(version, checksum)| {
                *version == migration.version && checksum[..] == migration.checksum[..]
            })
        })
    })
}

/// Writes a consistent copy of the SQLite store `db` to `to` while the
/// service keeps writing: `VACUUM INTO` reads the store in one transaction,
/// so the copy is the store as of one instant (compacted). It is written
/// beside `to` under a temporary name, synced, then renamed: `to` is either
/// absent or whole. Returns its size in bytes.
pub async fn backup_sqlite(db: &Db, to: &Path) -> anyhow::Result<u64> {
    let Db::Sqlite(pool) = db else {
        anyhow::bail!(
            "twofold backup copies a SQLite store; back PostgreSQL up with pg_dump \
             or continuous archiving (docs/operations.md)"
        )
    };
    anyhow::ensure!(!to.exists(), "{} exists already", to.display());
    let name = to
        .file_name()
        .with_context(|| format!("{} names no file", to.display()))?;
    let partial = to.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    // Left by an interrupted backup: never a copy to keep.
    drop(std::fs::remove_file(&partial));
    sqlx::query("VACUUM INTO $1")
        .bind(partial.to_string_lossy().into_owned())
        .execute(pool)
        .await
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::File::open(&partial)?.sync_all()?;
    std::fs::rename(&partial, to)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), to.display()))?;
    Ok(std::fs::metadata(to)?.len())
}

/// The SQLite file behind a URL (none for another kind of store).
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    if !url.starts_with("sqlite:") {
        return None;
    }
    SqliteConnectOptions::from_str(url)
        .ok()
        .map(|options| options.get_filename().to_path_buf())
}
