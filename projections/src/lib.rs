//! Read models of twofold and the runner that keeps them caught up with the
//! event store: every model is a fold over the events table in global order,
//! checkpointed in the same transaction as its rows.

mod db;
mod feed;
mod queries;
mod read_models;
mod runner;
mod statement;

pub use db::{Db, ProjectionError};
pub use feed::{EventPosition, StoredEvent};
pub use queries::{DirectoryEntry, DirectoryFilter, SessionRecord};
pub use runner::Projector;
