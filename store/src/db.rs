use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use sqlx::{PgPool, SqlitePool};
use tokio::sync::OwnedMutexGuard;

/// The store: the event log, the sealed secrets and the read models, the
/// same schema on SQLite and PostgreSQL. Which of the two it is matters
/// only inside this crate.
#[derive(Clone, Debug)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same code against whichever pool `db` holds; the block is
/// type-checked once per backend, so one query text serves both. Only
/// inside this crate: outside, `Db::fetch`, `Db::execute` and `WriteTx`.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::Db::Sqlite($pool) => $body,
            $crate::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

impl Db {
    /// This process's turn to write, taken before opening any write
    /// transaction (and never while holding a connection another writer may
    /// be waiting for). On SQLite: one connection of a file writes at a time
    /// and the others poll its lock, sleeping 1, 2, 5, 10, ... 100 ms between
    /// tries (the busy handler), so under concurrent writes the file sits idle
    /// while writers sleep and p99 grows to hundreds of ms. Writers queue here
    /// instead, per file, first come first served; other processes on the
    /// same file still meet the busy handler. PostgreSQL needs no turn.
    pub fn write_turn(&self) -> impl Future<Output = Option<OwnedMutexGuard<()>>> + Send + 'static {
        static TURNS: LazyLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
            LazyLock::new(Mutex::default);
        let turn = match self {
            Db::Sqlite(pool) => Some(
                TURNS
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(file_of(pool))
                    .or_default()
                    .clone(),
            ),
            Db::Postgres(_) => None,
        };
        async move {
            match turn {
                Some(turn) => Some(turn.lock_owned().await),
                None => None,
            }
        }
    }
}

/// Per SQLite file, the connection that writes its read models: opened
/// with synchronous=NORMAL, so that its commits do not wait for the disk.
/// In WAL mode such a commit is made durable by the next full commit of any
/// writer of the file; a crash before that loses read-model rows and their
/// checkpoint together, and the next start applies those events again. A
/// pool made elsewhere (tests, in memory) has none and writes them itself.
static READ_MODELS_WRITERS: LazyLock<Mutex<HashMap<PathBuf, SqlitePool>>> =
    LazyLock::new(Mutex::default);

pub(crate) fn register_read_models_writer(pool: &SqlitePool, writer: SqlitePool) {
    READ_MODELS_WRITERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(file_of(pool), writer);
}

/// The pool of `pool`'s file that writes its read models.
pub(crate) fn read_models_writer(pool: &SqlitePool) -> SqlitePool {
    READ_MODELS_WRITERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&file_of(pool))
        .cloned()
        .unwrap_or_else(|| pool.clone())
}

fn file_of(pool: &SqlitePool) -> PathBuf {
    pool.connect_options().get_filename().to_path_buf()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use sqlx::sqlite::SqlitePoolOptions;

    use super::*;

    async fn sqlite(dir: &std::path::Path, name: &str) -> Db {
        let url = format!("sqlite://{}?mode=rwc", dir.join(name).display());
        Db::Sqlite(SqlitePoolOptions::new().connect(&url).await.unwrap())
    }

    #[tokio::test]
    async fn writers_of_one_sqlite_file_take_turns_and_other_files_do_not_wait() {
        let dir = tempfile::tempdir().unwrap();
        let (a, same_file, b) = (
            sqlite(dir.path(), "a.db").await,
            sqlite(dir.path(), "a.db").await,
            sqlite(dir.path(), "b.db").await,
        );
        let first = a.write_turn().await;
        assert!(first.is_some());
        let waiting = tokio::spawn(same_file.write_turn());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a second writer of a.db got a turn");
        let other = tokio::time::timeout(Duration::from_secs(1), b.write_turn()).await;
        assert!(other.unwrap().is_some(), "b.db waited for a.db");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), waiting).await;
        assert!(second.unwrap().unwrap().is_some());
    }
}
