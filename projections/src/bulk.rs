//! A full rebuild of the read models in one pass: the events are streamed
//! in feed order in pages, each page decoded and its audit chains hashed on
//! every core, the per-user rows folded in memory (directory, live sessions
//! and challenges, the report's counters: they grow with the users, not the
//! events) and written with COPY (PostgreSQL) or multi-row INSERTs (SQLite),
//! all in one transaction with the checkpoint. While a page is being folded
//! the previous page's audit rows are written and the next page is read.
//!
//! The fold is the projector's (`fold.rs`); tests compare every table of a
//! rebuild with the projector's, on both backends.

use crate::backend::Backend;
use crate::cores::off_the_runtime;
use crate::db::{Db, ProjectionError, ReadModels};
use crate::feed::EventPosition;
use crate::fold::Fold;
use crate::pages::FeedRow;
use crate::read_models::{
    AUDIT_LOG, CHALLENGES, CHECKPOINT, CHECKPOINTS, SESSIONS, TABLES, TWO_FACTOR_COUNTS,
    USER_DIRECTORY,
};

/// Events per page: enough to keep every core busy, small enough that two
/// pages in flight stay a few megabytes.
const PAGE: usize = 10_000;

/// What a rebuild applied.
pub(crate) struct Rebuilt {
    pub events: u64,
    /// The new checkpoint (the default when there were no events).
    pub applied: EventPosition,
}

impl ReadModels {
    /// Empties every read model and rebuilds it from the whole history in
    /// one transaction, so readers see the old rows until it commits;
    /// `progress` hears the running count of events. Returns how many
    /// events it applied. Writers wait meanwhile (SQLite's write lock;
    /// PostgreSQL's projection lock and the tables' locks).
    pub async fn rebuild_read_models(
        &self,
        progress: impl Fn(u64),
    ) -> Result<u64, ProjectionError> {
        Ok(rebuild(&self.0, progress).await?.events)
    }
}

pub(crate) async fn rebuild(db: &Db, progress: impl Fn(u64)) -> Result<Rebuilt, ProjectionError> {
    let _turn = db.write_turn().await;
    match db {
        Db::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let rebuilt = load(&mut *tx, &progress).await?;
            tx.commit().await?;
            Ok(rebuilt)
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            // Wait for a batch another process is applying: it read the old
            // checkpoint and would write its rows over the rebuilt ones.
            tx.lock_read_models().await?;
            let rebuilt = load(&mut *tx, &progress).await?;
            tx.commit().await?;
            Ok(rebuilt)
        }
    }
}

async fn load<B: Backend>(
    conn: &mut B,
    progress: &dyn Fn(u64),
) -> Result<Rebuilt, ProjectionError> {
    conn.prepare_rebuild().await?;
    conn.execute(
        "DELETE FROM projection_checkpoints WHERE name = $1",
        vec![CHECKPOINT.into()],
    )
    .await?;
    // Indexes are built once over the loaded rows rather than updated row
    // by row, which costs several times more on a million rows.
    let mut indexes = Vec::new();
    for table in TABLES {
        for (drop, create) in conn.deferrable_indexes(table).await? {
            conn.run_sql(&drop).await?;
            indexes.push(create);
        }
    }
    let mut fold = Fold::empty();
    let mut rows = conn.feed(EventPosition::default(), PAGE as i64).await?;
    let mut audit_rows = Vec::new();
    loop {
        // A short page is the last: the feed has nothing more (yet).
        let next_after = match rows.last() {
            Some(row) if rows.len() == PAGE => Some(row.event()?.at),
            _ => None,
        };
        let written = std::mem::take(&mut audit_rows);
        let conn = &mut *conn;
        let (folded, next) = tokio::join!(
            off_the_runtime(move || {
                let audit_rows = fold.page(&rows);
                (fold, audit_rows)
            }),
            async move {
                conn.load(&AUDIT_LOG, written).await?;
                match next_after {
                    Some(after) => conn.feed(after, PAGE as i64).await,
                    None => Ok(Vec::new()),
                }
            }
        );
        fold = folded.0;
        audit_rows = folded.1?;
        rows = next?;
        progress(fold.events);
        if next_after.is_none() {
            break;
        }
    }
    conn.load(&AUDIT_LOG, audit_rows).await?;
    let applied = fold.applied;
    let rebuilt = Rebuilt {
        events: fold.events,
        applied: applied.unwrap_or_default(),
    };
    let all = fold.into_rows();
    conn.load(&USER_DIRECTORY, all.directory).await?;
    conn.load(&SESSIONS, all.sessions).await?;
    conn.load(&CHALLENGES, all.challenges).await?;
    conn.load(&TWO_FACTOR_COUNTS, all.counts).await?;
    if let Some(applied) = applied {
        conn.load(
            &CHECKPOINTS,
            vec![vec![
                CHECKPOINT.into(),
                applied.transaction_id.into(),
                applied.position.into(),
            ]],
        )
        .await?;
    }
    for create in indexes {
        conn.run_sql(&create).await?;
    }
    conn.analyze().await?;
    Ok(rebuilt)
}
