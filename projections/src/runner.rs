use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex};

use twofold_store::{Dialect, Write, WriteTx};

use crate::bulk;
use crate::db::{Db, ProjectionError, ReadModels};
use crate::feed::EventPosition;
use crate::fold::{reads_live_challenges, DirectoryRow, Fold};
use crate::read_models::{
    challenge_rows, checkpoint, checkpoint_row, directory_rows, trail_end, Table, AUDIT_LOG,
    CHALLENGES, CHECKPOINTS, SESSIONS, TWO_FACTOR_COUNTS, USER_DIRECTORY, USER_VERSIONS,
};
use crate::warm::Warm;

const BATCH: i64 = 500;

/// What one round did: how far it applied, how many events, and what it
/// leaves for the next round (`Warm`), to keep once it has committed.
struct Round {
    applied: EventPosition,
    events: u64,
    warm: Option<Warm>,
}

/// One round in `tx`: the next batch of the feed folded onto the rows it
/// touches, written back with the checkpoint. `warm` is what this process's
/// last round left.
async fn apply_batch(tx: &mut WriteTx, warm: Option<Warm>) -> Result<Round, ProjectionError> {
    tx.lock_read_models().await?;
    let applied = checkpoint(tx).await?;
    // Kept rows hold only at the checkpoint their round wrote.
    let mut warm = warm
        .filter(|warm| warm.at() == applied)
        .unwrap_or_else(|| Warm::at_checkpoint(applied));
    let rows = tx.feed(applied, BATCH).await?;
    let Some(last) = rows.last() else {
        return Ok(Round {
            applied,
            events: 0,
            warm: Some(warm),
        });
    };
    let applied = last.feed_columns()?.at;
    let mut users = Vec::with_capacity(rows.len());
    let mut with_challenges = Vec::new();
    for row in &rows {
        let user = row.text("aggregate_id")?;
        users.push(user);
        if reads_live_challenges(row.text("event_type")?) {
            with_challenges.push(user);
        }
    }
    users.sort_unstable();
    users.dedup();
    with_challenges.sort_unstable();
    with_challenges.dedup();
    // The trail's chains continue from the rows already applied, read in
    // this transaction so they are current, unless the last round left them.
    let unknown = warm.unknown(&users);
    if !unknown.is_empty() {
        let trail = trail_end(tx, &unknown).await?;
        let mut found: HashMap<String, DirectoryRow> =
            directory_rows(tx, &unknown).await?.into_iter().collect();
        let rows = unknown
            .iter()
            .map(|user| (user.to_string(), found.remove(*user)))
            .collect();
        warm.learn(trail, rows);
    }
    let (trail, directory) = warm.end_of(&users);
    let challenges = if with_challenges.is_empty() {
        Vec::new()
    } else {
        challenge_rows(tx, &with_challenges).await?
    };
    let mut fold = Fold::continuing(trail, directory, challenges);
    let audit_rows = fold.page(&rows)?;
    let (trail, directory) = fold.end_of(&users);
    let warm = warm.after_round(applied, trail, directory);
    let changes = fold.into_changes();
    // Sessions from before the batch that it ended: apart, first, so that
    // they never meet the sessions the batch starts.
    for (user_id, kept) in changes.earlier_sessions_ended {
        tx.execute(
            "DELETE FROM sessions WHERE user_id = $1 AND session_id <> $2",
            vec![user_id.into(), kept.unwrap_or_default().into()],
        )
        .await?;
    }
    // The rest touch disjoint rows: one round trip on PostgreSQL.
    let insert = |table: &Table, rows, tail| Write::Insert {
        table: table.name,
        columns: table.columns,
        rows,
        tail,
    };
    tx.write_all(vec![
        Write::Upsert {
            table: USER_DIRECTORY.name,
            key: "user_id",
            columns: USER_DIRECTORY.columns,
            rows: changes.directory,
        },
        Write::Delete {
            table: SESSIONS.name,
            key: "session_id",
            keys: changes.sessions_ended,
        },
        insert(
            &SESSIONS,
            changes.sessions_started,
            " ON CONFLICT (session_id) DO NOTHING",
        ),
        Write::Delete {
            table: CHALLENGES.name,
            key: "challenge_id",
            keys: changes.challenges_ended,
        },
        insert(
            &CHALLENGES,
            changes.challenges,
            " ON CONFLICT (challenge_id) DO UPDATE SET expires_at = excluded.expires_at",
        ),
        insert(
            &TWO_FACTOR_COUNTS,
            changes.counts,
            " ON CONFLICT (role, two_factor_status, enforced)
              DO UPDATE SET users = two_factor_counts.users + excluded.users",
        ),
        insert(&AUDIT_LOG, audit_rows, " ON CONFLICT (position) DO NOTHING"),
        insert(
            &USER_VERSIONS,
            changes.versions,
            " ON CONFLICT (user_id, position) DO NOTHING",
        ),
        insert(
            &CHECKPOINTS,
            vec![checkpoint_row(applied)],
            " ON CONFLICT (name) DO UPDATE
              SET transaction_id = excluded.transaction_id, position = excluded.position",
        ),
    ])
    .await?;
    Ok(Round {
        applied,
        events: rows.len() as u64,
        warm: Some(warm),
    })
}

/// Keeps the read models caught up with the event store. One per process;
/// several processes may share a database, each applying under a lock so an
/// event is applied once, in order, in the same transaction as the checkpoint.
pub struct Projector {
    db: Db,
    models: ReadModels,
    applied: watch::Sender<EventPosition>,
    /// Held for a round; holds what the last round left.
    round: Mutex<Option<Warm>>,
}

impl Projector {
    pub async fn new(db: Db) -> Result<Arc<Self>, ProjectionError> {
        let projector = Arc::new(Self {
            models: ReadModels::new(db.clone()),
            db,
            applied: watch::Sender::new(EventPosition::default()),
            round: Mutex::new(None),
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
        let mut warm = self.round.lock().await;
        if enough.is_some_and(|target| self.applied() >= target) {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            let (applied, count) = self.apply_batch(&mut warm).await?;
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
    /// it holds.
    /// What the last round left is kept only once this one has committed.
    async fn apply_batch(
        &self,
        warm: &mut Option<Warm>,
    ) -> Result<(EventPosition, u64), ProjectionError> {
        let mut tx = self.db.begin_read_models_write().await?;
        let round = apply_batch(&mut tx, warm.take()).await?;
        tx.commit().await?;
        *warm = round.warm;
        Ok((round.applied, round.events))
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

    /// Where the event stored at `position` stands in the feed order (on
    /// SQLite the transaction id is the position: the column holds it).
    pub async fn locate(&self, position: i64) -> Result<Option<EventPosition>, ProjectionError> {
        let sql = match self.db.dialect() {
            Dialect::Sqlite => "SELECT position AS transaction_id FROM events WHERE position = $1",
            Dialect::Postgres => "SELECT transaction_id FROM events WHERE position = $1",
        };
        Ok(
            match self.db.fetch_optional(sql, vec![position.into()]).await? {
                Some(row) => Some(EventPosition {
                    transaction_id: row.get("transaction_id")?,
                    position,
                }),
                None => None,
            },
        )
    }

    /// Empties every read model and rebuilds it from the whole history in
    /// one transaction (`Db::rebuild_read_models`); `progress` hears the
    /// running count. Returns how many events it applied.
    pub async fn rebuild(&self, progress: impl Fn(u64)) -> Result<u64, ProjectionError> {
        let mut warm = self.round.lock().await;
        *warm = None;
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
