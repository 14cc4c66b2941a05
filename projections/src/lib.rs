//! Read models of twofold and the runner that keeps them caught up with the
//! event store: every model is a fold over the events table in global order,
//! checkpointed in the same transaction as its rows.

mod audit;
mod bulk;
mod checkpoints;
mod cores;
mod data_migrations;
mod db;
mod describe;
mod feed;
mod fold;
mod json;
mod pages;
mod queries;
mod read_models;
mod report;
mod runner;
mod timeline;
mod verify;
mod warm;

pub use audit::{AuditEntry, AuditFilter};
pub use checkpoints::TrailHead;
pub use db::{Db, ProjectionError, ReadModels};
pub use describe::{event_types, summary, DescribedEntry, People, Person};
pub use feed::EventPosition;
pub use queries::{DirectoryEntry, DirectoryFilter, SessionRecord};
pub use report::{MethodCounts, TwoFactorCount};
pub use runner::Projector;
pub use timeline::{cases, Case, CaseKind};
pub use verify::{CheckpointCheck, ExpectedHead, Mismatch, VerifyReport};

/// An empty SQLite store with the schema, for unit tests: in memory, on
/// one connection (an in-memory database lives and dies with it).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) async fn memory_store() -> sqlx::SqlitePool {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
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
