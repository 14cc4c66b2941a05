//! What the projections' integration tests share.

use sqlx::sqlite::SqlitePoolOptions;
use sqlx::SqlitePool;

/// An empty SQLite store with the schema, in memory, on one connection (an
/// in-memory database lives and dies with it).
pub async fn memory_store() -> SqlitePool {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    sqlx::migrate!("../migrations/sqlite")
        .run(&pool)
        .await
        .unwrap();
    pool
}
