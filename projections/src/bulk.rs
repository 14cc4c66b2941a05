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

use twofold_store::sql::Arg;
use twofold_store::WriteTx;

use crate::cores::off_the_runtime;
use crate::db::{Db, ProjectionError, ReadModels};
use crate::feed::EventPosition;
use crate::fold::Fold;
use crate::read_models::{
    checkpoint_row, Table, AUDIT_LOG, CHALLENGES, CHECKPOINT, CHECKPOINTS, SESSIONS, TABLES,
    TWO_FACTOR_COUNTS, USER_DIRECTORY, USER_VERSIONS,
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

/// Writes `user_versions` again from the whole history (the versions
/// folded from nothing), leaving every other table as it is: the trail
/// keeps whatever it holds, edits included, for verify to judge. Returns
/// the events folded.
pub(crate) async fn versions_from_history(tx: &mut WriteTx) -> Result<u64, ProjectionError> {
    tx.empty(&[USER_VERSIONS.name]).await?;
    let mut fold = Fold::empty();
    let mut after = EventPosition::default();
    loop {
        let rows = tx.feed(after, PAGE as i64).await?;
        let Some(last) = rows.last() else {
            break;
        };
        after = last.feed_columns()?.at;
        let full = rows.len() == PAGE;
        fold = off_the_runtime(move || fold.page(&rows).map(|_| fold)).await?;
        if !full {
            break;
        }
    }
    let events = fold.events;
    load_table(tx, &USER_VERSIONS, fold.into_rows().versions).await?;
    Ok(events)
}

pub(crate) async fn rebuild(db: &Db, progress: impl Fn(u64)) -> Result<Rebuilt, ProjectionError> {
    let mut tx = db.begin_write().await?;
    // Wait for a batch another process is applying: it read the old
    // checkpoint and would write its rows over the rebuilt ones.
    tx.lock_read_models().await?;
    let rebuilt = load(&mut tx, &progress).await?;
    tx.commit().await?;
    Ok(rebuilt)
}

/// Loads `rows` into `table`, emptied by this rebuild.
async fn load_table(
    tx: &mut WriteTx,
    table: &Table,
    rows: Vec<Vec<Arg>>,
) -> Result<(), sqlx::Error> {
    tx.load(
        table.name,
        table.columns,
        rows,
        TABLES.contains(&table.name),
    )
    .await
}

async fn load(tx: &mut WriteTx, progress: &dyn Fn(u64)) -> Result<Rebuilt, ProjectionError> {
    tx.empty(&TABLES).await?;
    tx.execute(
        "DELETE FROM projection_checkpoints WHERE name = $1",
        vec![CHECKPOINT.into()],
    )
    .await?;
    // Indexes are built once over the loaded rows rather than updated row
    // by row, which costs several times more on a million rows.
    let mut indexes = Vec::new();
    for table in TABLES {
        for (drop, create) in tx.deferrable_indexes(table).await? {
            tx.run_sql(&drop).await?;
            indexes.push(create);
        }
    }
    let mut fold = Fold::empty();
    let mut rows = tx.feed(EventPosition::default(), PAGE as i64).await?;
    let mut audit_rows = Vec::new();
    loop {
        // A short page is the last: the feed has nothing more (yet).
        let next_after = match rows.last() {
            Some(row) if rows.len() == PAGE => Some(row.feed_columns()?.at),
            _ => None,
        };
        let written = std::mem::take(&mut audit_rows);
        let tx = &mut *tx;
        let (folded, next) = tokio::join!(
            off_the_runtime(move || {
                let audit_rows = fold.page(&rows);
                (fold, audit_rows)
            }),
            async move {
                load_table(tx, &AUDIT_LOG, written).await?;
                match next_after {
                    Some(after) => tx.feed(after, PAGE as i64).await,
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
    load_table(tx, &AUDIT_LOG, audit_rows).await?;
    let applied = fold.applied;
    let rebuilt = Rebuilt {
        events: fold.events,
        applied: applied.unwrap_or_default(),
    };
    let all = fold.into_rows();
    load_table(tx, &USER_DIRECTORY, all.directory).await?;
    load_table(tx, &USER_VERSIONS, all.versions).await?;
    load_table(tx, &SESSIONS, all.sessions).await?;
    load_table(tx, &CHALLENGES, all.challenges).await?;
    load_table(tx, &TWO_FACTOR_COUNTS, all.counts).await?;
    if let Some(applied) = applied {
        load_table(tx, &CHECKPOINTS, vec![checkpoint_row(applied)]).await?;
    }
    for create in indexes {
        tx.run_sql(&create).await?;
    }
    tx.analyze(&TABLES).await?;
    Ok(rebuilt)
}
