use sqlx::{PgPool, SqlitePool};

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
