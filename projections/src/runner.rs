use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex};

use crate::audit;
use crate::bulk;
use crate::db::{Db, ProjectionError};
use crate::feed::{decode, EventPosition, POSTGRES_FEED, SQLITE_FEED};
use crate::read_models::plan;
use crate::statement::execute_all;

pub(crate) const CHECKPOINT: &str = "read_models";
const BATCH: i64 = 500;
/// Serialises catch-up rounds across processes sharing one PostgreSQL.
const POSTGRES_LOCK_KEY: i64 = 0x0074_776f_666f_6c64;

/// Takes the projection's lock for the rest of the transaction, so that
/// processes sharing one PostgreSQL apply each event once, in order.
pub(crate) async fn lock_projection(tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(POSTGRES_LOCK_KEY)
        .execute(tx)
        .await?;
    Ok(())
}

/// Keeps the read models caught up with the event store. One per process;
/// several processes may share a database, each applying under a lock so an
/// event is applied once, in order, in the same transaction as the checkpoint.
pub struct Projector {
    db: Db,
    applied: watch::Sender<EventPosition>,
    round: Mutex<()>,
}

impl Projector {
    pub async fn new(db: Db) -> Result<Arc<Self>, ProjectionError> {
        let projector = Arc::new(Self {
            db,
            applied: watch::Sender::new(EventPosition::default()),
            round: Mutex::new(()),
        });
        projector.catch_up().await?;
        Ok(projector)
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The last event this process knows to be applied.
    pub fn applied(&self) -> EventPosition {
        *self.applied.borrow()
    }

    /// Applies every event committed so far; returns how many it applied.
    pub async fn catch_up(&self) -> Result<u64, ProjectionError> {
        self.catch_up_with(None, |_| {}).await
    }

    /// With `enough`, a caller that queued behind another round which already
    /// applied that far skips its own round: concurrent read-your-writes
    /// waiters share rounds instead of running one each, in turn.
    async fn catch_up_with(
        &self,
        enough: Option<EventPosition>,
        progress: impl Fn(u64),
    ) -> Result<u64, ProjectionError> {
        let _round = self.round.lock().await;
        if enough.is_some_and(|target| self.applied() >= target) {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            let (applied, count) = self.apply_batch().await?;
            self.applied.send_replace(applied);
            total += count;
            progress(total);
            if count < BATCH as u64 {
                return Ok(total);
            }
        }
    }

    async fn apply_batch(&self) -> Result<(EventPosition, u64), ProjectionError> {
        macro_rules! batch {
            ($tx:ident, $feed:expr) => {{
                let checkpoint: Option<(i64, i64)> = sqlx::query_as(
                    "SELECT transaction_id, position FROM projection_checkpoints WHERE name = $1",
                )
                .bind(CHECKPOINT)
                .fetch_optional(&mut *$tx)
                .await?;
                let mut applied = checkpoint
                    .map(|(transaction_id, position)| EventPosition {
                        transaction_id,
                        position,
                    })
                    .unwrap_or_default();
                let rows = sqlx::query($feed)
                    .bind(applied.transaction_id)
                    .bind(applied.position)
                    .bind(BATCH)
                    .fetch_all(&mut *$tx)
                    .await?;
                let count = rows.len() as u64;
                // The audit trail's chains continue from the rows already
                // applied, read in this transaction so they are current.
                let head: Option<String> =
                    sqlx::query_scalar("SELECT head_hash FROM audit_log ORDER BY id DESC LIMIT 1")
                        .fetch_optional(&mut *$tx)
                        .await?;
                let mut head = audit::parse_hash(head.as_deref());
                for row in &rows {
                    let event = decode(row)?;
                    execute_all!($tx, plan(&event)?);
                    let previous: Option<String> = sqlx::query_scalar(
                        "SELECT chain_hash FROM audit_log WHERE user_id = $1 ORDER BY id DESC LIMIT 1",
                    )
                    .bind(&event.aggregate_id)
                    .fetch_optional(&mut *$tx)
                    .await?;
                    let (audit_row, next_head) =
                        audit::record(&event, &audit::parse_hash(previous.as_deref()), &head);
                    execute_all!($tx, [audit_row]);
                    head = next_head;
                    applied = event.at;
                }
                if count > 0 {
                    sqlx::query(
                        "INSERT INTO projection_checkpoints (name, transaction_id, position)
                         VALUES ($1, $2, $3)
                         ON CONFLICT (name) DO UPDATE
                            SET transaction_id = excluded.transaction_id, position = excluded.position",
                    )
                    .bind(CHECKPOINT)
                    .bind(applied.transaction_id)
                    .bind(applied.position)
                    .execute(&mut *$tx)
                    .await?;
                }
                $tx.commit().await?;
                Ok((applied, count))
            }};
        }
        match &self.db {
            Db::Sqlite(pool) => {
                // IMMEDIATE takes the write lock first: a read-then-write
                // upgrade could fail with SQLITE_BUSY despite busy_timeout.
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                batch!(tx, SQLITE_FEED)
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                lock_projection(&mut tx).await?;
                batch!(tx, POSTGRES_FEED)
            }
        }
    }

    /// Read-your-writes: returns once `target` is applied, catching up
    /// itself rather than waiting for the poller.
    pub async fn wait_for(
        &self,
        target: EventPosition,
        timeout: Duration,
    ) -> Result<(), ProjectionError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.applied() >= target {
                return Ok(());
            }
            let applied = self.catch_up_with(Some(target), |_| {}).await?;
            if self.applied() >= target {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProjectionError::Lagging);
            }
            if applied == 0 {
                // An older transaction is still open on PostgreSQL.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    /// Where the event stored at `position` stands in the feed order.
    pub async fn locate(&self, position: i64) -> Result<Option<EventPosition>, ProjectionError> {
        Ok(match &self.db {
            Db::Sqlite(pool) => {
                sqlx::query_scalar::<_, i64>("SELECT position FROM events WHERE position = $1")
                    .bind(position)
                    .fetch_optional(pool)
                    .await?
                    .map(|position| EventPosition {
                        transaction_id: position,
                        position,
                    })
            }
            Db::Postgres(pool) => sqlx::query_scalar::<_, i64>(
                "SELECT transaction_id FROM events WHERE position = $1",
            )
            .bind(position)
            .fetch_optional(pool)
            .await?
            .map(|transaction_id| EventPosition {
                transaction_id,
                position,
            }),
        })
    }

    /// Empties every read model and rebuilds it from the whole history in
    /// one transaction (`Db::rebuild_read_models`); `progress` hears the
    /// running count. Returns how many events it applied.
    pub async fn rebuild(&self, progress: impl Fn(u64)) -> Result<u64, ProjectionError> {
        let _round = self.round.lock().await;
        let rebuilt = bulk::rebuild(&self.db, progress).await?;
        self.applied.send_replace(rebuilt.applied);
        Ok(rebuilt.events)
    }

    /// Picks up what other processes wrote, until `shutdown` flips.
    pub fn spawn_poller(
        self: &Arc<Self>,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let projector = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        if let Err(error) = projector.catch_up().await {
                            tracing::warn!(%error, "read models could not catch up");
                        }
                    }
                    _ = shutdown.changed() => return,
                }
            }
        })
    }
}
