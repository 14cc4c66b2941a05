//! Read models of twofold and the runner that keeps them caught up with the
//! event store: every model is a fold over the events table in global order,
//! checkpointed in the same transaction as its rows.

mod audit;
mod db;
mod feed;
mod queries;
mod read_models;
mod report;
mod runner;
mod statement;
mod verify;

pub use audit::{AuditEntry, AuditFilter};
pub use db::{Db, ProjectionError};
pub use feed::{EventPosition, StoredEvent};
pub use queries::{DirectoryEntry, DirectoryFilter, SessionRecord};
pub use report::TwoFactorCount;
pub use runner::Projector;
pub use verify::{ExpectedHead, Mismatch, VerifyReport};
