use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Executor as _;
use tokio::sync::{watch, Mutex};

use crate::audit::{self, Hash, AUDIT_COLUMNS};
use crate::bulk;
use crate::db::{Db, ProjectionError, ReadModels};
use crate::feed::{decode, EventPosition, StoredEvent, POSTGRES_FEED, SQLITE_FEED};
use crate::read_models::plan;
use crate::statement::{execute_all, insert_rows, postgres_script, Arg, Statement};

pub(crate) const CHECKPOINT: &str = "read_models";
/// The trail's last row (`user_id` NULL: its id and head hash), then the
/// last chain hash of each user in `$1` (a JSON array of user ids).
const SQLITE_AUDIT_HEADS: &str = "
SELECT NULL AS user_id, id, head_hash
  FROM (SELECT id, head_hash FROM audit_log ORDER BY id DESC LIMIT 1)
UNION ALL
SELECT DISTINCT u.value, 0,
       (SELECT chain_hash FROM audit_log a WHERE a.user_id = u.value ORDER BY a.id DESC LIMIT 1)
  FROM json_each($1) AS u";
const POSTGRES_AUDIT_HEADS: &str = "
SELECT NULL AS user_id, id, head_hash
  FROM (SELECT id, head_hash FROM audit_log ORDER BY id DESC LIMIT 1) AS last
UNION ALL
SELECT u.user_id, 0,
       (SELECT chain_hash FROM audit_log a WHERE a.user_id = u.user_id ORDER BY a.id DESC LIMIT 1)
  FROM (SELECT DISTINCT jsonb_array_elements_text($1) AS user_id) AS u";
const BATCH: i64 = 500;
/// Serialises catch-up rounds across processes sharing one PostgreSQL.
const POSTGRES_LOCK_KEY: i64 = 0x0074_776f_666f_6c64;

/// Where the audit trail ends while a round appends to it: the last row's
/// id and head hash, and each user's last chain hash.
struct AuditTail {
    last_id: i64,
    head: Hash,
    chains: HashMap<String, Hash>,
}

impl AuditTail {
    fn from_heads(heads: Vec<(Option<String>, i64, Option<String>)>) -> Self {
        let mut tail = AuditTail {
            last_id: 0,
            head: audit::GENESIS,
            chains: HashMap::with_capacity(heads.len()),
        };
        for (user_id, id, hash) in heads {
            let hash = audit::parse_hash(hash.as_deref());
            match user_id {
                Some(user_id) => {
                    tail.chains.insert(user_id, hash);
                }
                None => {
                    tail.last_id = id;
                    tail.head = hash;
                }
            }
        }
        tail
    }

    /// The audit row of `event`, the next in apply order.
    fn record(&mut self, event: &StoredEvent) -> Vec<Arg> {
        self.last_id += 1;
        let previous = self
            .chains
            .get(&event.aggregate_id)
            .copied()
            .unwrap_or(audit::GENESIS);
        let (row, chain, head) = audit::record(event, self.last_id, &previous, &self.head);
        self.chains.insert(event.aggregate_id.clone(), chain);
        self.head = head;
        row
    }
}

/// In-process SQLite answers a statement in microseconds: one at a time.
async fn apply_on_sqlite(
    tx: &mut sqlx::SqliteConnection,
    statements: Vec<Statement>,
) -> Result<(), sqlx::Error> {
    execute_all!(tx, statements);
    Ok(())
}

/// PostgreSQL answers each statement a network round trip later: the lot in one.
async fn apply_on_postgres(
    tx: &mut sqlx::PgConnection,
    statements: Vec<Statement>,
) -> Result<(), sqlx::Error> {
    if !statements.is_empty() {
        // A text without arguments goes as a simple query, which may hold
        // several statements.
        tx.execute(postgres_script(&statements).as_str()).await?;
    }
    Ok(())
}

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
    models: ReadModels,
    applied: watch::Sender<EventPosition>,
    round: Mutex<()>,
}

impl Projector {
    pub async fn new(db: Db) -> Result<Arc<Self>, ProjectionError> {
        let projector = Arc::new(Self {
            models: ReadModels::new(db.clone()),
            db,
            applied: watch::Sender::new(EventPosition::default()),
            round: Mutex::new(()),
        });
        projector.catch_up().await?;
        Ok(projector)
    }

    /// The read models it keeps, for their queries.
    pub fn read_models(&self) -> &ReadModels {
        &self.models
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

    /// One round: the next batch of the feed applied in one transaction with
    /// the checkpoint, in a fixed number of round trips however many events
    /// it holds (the users' chains in one query, the audit rows in one
    /// insert, on PostgreSQL the read-model statements in one script; SQLite
    /// runs in-process, one statement at a time). On PostgreSQL its commit
    /// does not wait for the disk: read
    /// models are derived, and a crash that loses the commit loses the
    /// checkpoint with it, so the events are applied again on restart.
    async fn apply_batch(&self) -> Result<(EventPosition, u64), ProjectionError> {
        macro_rules! batch {
            ($tx:ident, $db:ty, $feed:expr, $chains:expr, $apply:expr) => {{
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
                let events = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
                if let Some(last) = events.last() {
                    // The audit trail's chains continue from the rows already
                    // applied, read in this transaction so they are current.
                    let users: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
                    let heads: Vec<(Option<String>, i64, Option<String>)> = sqlx::query_as($chains)
                        .bind(serde_json::Value::from(users))
                        .fetch_all(&mut *$tx)
                        .await?;
                    let mut trail = AuditTail::from_heads(heads);
                    let mut audit_rows = Vec::with_capacity(events.len());
                    let mut model = Vec::with_capacity(events.len() * 2);
                    for event in &events {
                        model.extend(plan(event)?);
                        audit_rows.push(trail.record(event));
                    }
                    $apply(&mut $tx, model).await?;
                    insert_rows!($db, "audit_log", AUDIT_COLUMNS, audit_rows, " ON CONFLICT (position) DO NOTHING")
                        .build()
                        .execute(&mut *$tx)
                        .await?;
                    applied = last.at;
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
                Ok((applied, events.len() as u64))
            }};
        }
        let _turn = self.db.write_turn().await;
        match &self.db {
            Db::Sqlite(pool) => {
                // IMMEDIATE takes the write lock first: a read-then-write
                // upgrade could fail with SQLITE_BUSY despite busy_timeout.
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                batch!(
                    tx,
                    sqlx::Sqlite,
                    SQLITE_FEED,
                    SQLITE_AUDIT_HEADS,
                    apply_on_sqlite
                )
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "SELECT pg_advisory_xact_lock($1), set_config('synchronous_commit', 'off', true)",
                )
                .bind(POSTGRES_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
                batch!(
                    tx,
                    sqlx::Postgres,
                    POSTGRES_FEED,
                    POSTGRES_AUDIT_HEADS,
                    apply_on_postgres
                )
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
