//! The read models' handle on the store, and their error.

pub use twofold_store::Db;

/// The read models in the store: their queries, the audit trail's
/// verification, the rebuild.
#[derive(Clone, Debug)]
pub struct ReadModels(pub(crate) Db);

impl ReadModels {
    pub fn new(db: Db) -> Self {
        Self(db)
    }

    pub fn db(&self) -> &Db {
        &self.0
    }
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
