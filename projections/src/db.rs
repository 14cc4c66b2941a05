use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use sqlx::{PgPool, SqlitePool};
use tokio::sync::OwnedMutexGuard;

/// The store behind the read models: the same schema on both backends.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("the database did not answer: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored event {position} can't be read: {source}")]
    Corrupt {
        position: i64,
        source: serde_json::Error,
    },
    #[error("the read models did not catch up in time")]
    Lagging,
}

/// Runs the same code against whichever pool `db` holds; the block is
/// type-checked once per backend, so one query text serves both.
#[macro_export]
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::Db::Sqlite($pool) => $body,
            $crate::Db::Postgres($pool) => $body,
        }
    };
}

/// SQLite lets one connection of a file write at a time and makes the others
/// poll its lock, sleeping 1, 2, 5, 10, ... 100 ms between tries (the busy
/// handler): under concurrent writes the file then sits idle while writers
/// sleep, and p99 grows to hundreds of ms. This process's writers take turns
/// here instead, per file, first come first served, before they open a write
/// transaction (and never while holding a connection another writer could be
/// waiting for). Other processes on the same file still meet the busy handler.
pub fn sqlite_write_turn(
    pool: &SqlitePool,
) -> impl Future<Output = OwnedMutexGuard<()>> + Send + 'static {
    static TURNS: LazyLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Mutex::default);
    let file = pool.connect_options().get_filename().to_path_buf();
    let turn = TURNS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(file)
        .or_default()
        .clone();
    turn.lock_owned()
}
