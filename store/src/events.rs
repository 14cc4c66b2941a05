//! The event store: cqrs-es repositories for reading and appending, with our
//! own executor around them (load, decide, append with optimistic
//! concurrency, retry on conflict, return the committed events and their
//! global positions) and our own snapshots.

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistedEventRepository, PersistenceError};
use cqrs_es::{Aggregate, DomainEvent, EventEnvelope};
use hashlink::LruCache;
use postgres_es::PostgresEventRepository;
use serde::Serialize;
use sqlite_es::SqliteEventRepository;
use twofold_domain::{User, UserCommand, UserError, UserEvent, Username, EVENT_VERSION};

use crate::feed::EventPosition;
use crate::sql::Arg;
use crate::{on_pool, Db};
use uuid::Uuid;

/// The columns of `events` a writer gives, in this order; the store fills
/// in the rest (position, transaction id, time recorded).
pub const EVENT_COLUMNS: [&str; 7] = [
    "aggregate_type",
    "aggregate_id",
    "sequence",
    "event_type",
    "event_version",
    "payload",
    "metadata",
];

/// A user's event as a row of `EVENT_COLUMNS`, as an append stores it, for
/// writers that load events in bulk (the seed, tests).
pub fn event_row(
    user_id: &str,
    sequence: i64,
    event_type: &str,
    payload: String,
    metadata: String,
) -> Vec<Arg> {
    vec![
        User::TYPE.into(),
        user_id.into(),
        sequence.into(),
        event_type.into(),
        EVENT_VERSION.into(),
        payload.into(),
        metadata.into(),
    ]
}

/// A command's aggregate is reloaded and retried this many times when
/// another writer appended first.
const MAX_ATTEMPTS: u32 = 16;
/// Commands on one user in one process queue on one of these locks, so they
/// rarely collide; the events' primary key still decides across processes.
const LOCK_STRIPES: usize = 256;
/// Snapshot once this many events have been added since the last one.
const SNAPSHOT_EVERY: usize = 32;
/// Bumped whenever `User`'s stored shape changes; older snapshots are ignored.
const SNAPSHOT_SCHEMA: i64 = 2;
/// Users kept in memory as last loaded or changed here (a few KiB each).
const CACHED_USERS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Rejected(#[from] UserError),
    #[error("the username is taken")]
    UsernameTaken,
    #[error("too many concurrent changes to this user")]
    Contended,
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
    #[error("the event store failed: {0}")]
    Failed(String),
}

impl From<PersistenceError> for StoreError {
    fn from(error: PersistenceError) -> Self {
        match error {
            PersistenceError::OptimisticLockError => StoreError::Contended,
            PersistenceError::ConnectionError(error) => StoreError::Unavailable(error.to_string()),
            PersistenceError::UnknownError(error) => match error.downcast::<sqlx::Error>() {
                Ok(error) => StoreError::from(*error),
                Err(error) => StoreError::Failed(error.to_string()),
            },
            other => StoreError::Failed(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            StoreError::Unavailable(error.to_string())
        } else {
            StoreError::Failed(error.to_string())
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        StoreError::Failed(error.to_string())
    }
}

/// The store cannot serve now but its data is intact: connection trouble,
/// lock time-outs, a full or read-only disk. Worth a 503 and a retry later;
/// anything else is a fault of ours (500).
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // Extended result codes keep the primary code in the low
                // byte: BUSY, LOCKED, READONLY, IOERR, FULL, CANTOPEN.
                code.parse::<i32>()
                    .is_ok_and(|code| matches!(code & 0xff, 5 | 6 | 8 | 10 | 13 | 14))
            } else {
                // PostgreSQL SQLSTATE: connection exception, insufficient
                // resources (disk full, out of memory, too many connections),
                // shutting down or starting up, read-only transaction.
                code.starts_with("08")
                    || code.starts_with("53")
                    || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "25006")
            }
        }
        _ => false,
    }
}

/// Who caused an event and from where; stored as each event's metadata.
/// Absent values are left out: cqrs-es reads metadata as a string map.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EventMetadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impersonator_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// An aggregate as loaded, with the sequence number of its last event.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub id: Uuid,
    pub user: User,
    pub sequence: usize,
    snapshot_sequence: usize,
}

#[derive(Debug)]
pub struct Committed {
    pub events: Vec<UserEvent>,
    /// Global position of the last event appended; `None` when the command
    /// decided nothing needed recording.
    pub last_position: Option<EventPosition>,
}

impl Committed {
    pub fn find<T>(&self, pick: impl Fn(&UserEvent) -> Option<T>) -> Option<T> {
        self.events.iter().find_map(pick)
    }
}

enum Repository {
    Sqlite(SqliteEventRepository),
    Postgres(PostgresEventRepository),
}

pub struct EventStore {
    repository: Repository,
    db: Db,
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Users as this process last loaded or changed them, so that a load
    /// reads only the events after the cached one instead of the snapshot
    /// and its tail. The tail is always read: what another process appended
    /// is seen, never a stale state.
    cache: std::sync::Mutex<LruCache<Uuid, Loaded>>,
}

impl EventStore {
    pub fn new(db: Db) -> Self {
        let repository = match &db {
            Db::Sqlite(pool) => Repository::Sqlite(SqliteEventRepository::new(pool.clone())),
            Db::Postgres(pool) => Repository::Postgres(PostgresEventRepository::new(pool.clone())),
        };
        let stripes = (0..LOCK_STRIPES)
            .map(|_| tokio::sync::Mutex::new(()))
            .collect();
        Self {
            repository,
            db,
            stripes,
            cache: std::sync::Mutex::new(LruCache::new(CACHED_USERS)),
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub async fn load(&self, id: Uuid) -> Result<Loaded, StoreError> {
        let aggregate_id = id.to_string();
        let cached = self.cached().get(&id).cloned();
        let mut loaded = match cached {
            Some(cached) => cached,
            None => {
                let snapshot: Option<(i64, serde_json::Value)> = on_pool!(&self.db, pool => {
                    sqlx::query_as(
                        "SELECT sequence, payload FROM aggregate_snapshots
                          WHERE aggregate_type = $1 AND aggregate_id = $2 AND schema_version = $3",
                    )
                    .bind(User::TYPE)
                    .bind(&aggregate_id)
                    .bind(SNAPSHOT_SCHEMA)
                    .fetch_optional(pool)
                    .await?
                });
                let (user, snapshot_sequence) = match snapshot {
                    Some((sequence, payload)) => (
                        serde_json::from_value::<User>(payload)?,
                        usize::try_from(sequence).unwrap_or(0),
                    ),
                    None => (User::default(), 0),
                };
                Loaded {
                    id,
                    user,
                    sequence: snapshot_sequence,
                    snapshot_sequence,
                }
            }
        };
        let tail = match &self.repository {
            Repository::Sqlite(repo) => {
                repo.get_last_events::<User>(&aggregate_id, loaded.sequence)
                    .await?
            }
            Repository::Postgres(repo) => {
                repo.get_last_events::<User>(&aggregate_id, loaded.sequence)
                    .await?
            }
        };
        for serialized in tail {
            loaded.sequence = serialized.sequence;
            let envelope = EventEnvelope::<User>::try_from(serialized)?;
            loaded.user.apply(envelope.payload);
        }
        self.remember(&loaded);
        Ok(loaded)
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, LruCache<Uuid, Loaded>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Only users that exist: a load of an unknown id (a mistyped link, or
    /// the sign-in of an unknown username) must not push real users out.
    fn remember(&self, loaded: &Loaded) {
        if loaded.sequence > 0 {
            self.cached().insert(loaded.id, loaded.clone());
        }
    }

    /// Runs a command against the user, retrying on a concurrent append:
    /// each attempt decides on the state it will be appended to.
    pub async fn execute(
        &self,
        loaded: Loaded,
        metadata: &EventMetadata,
        command: UserCommand,
    ) -> Result<Committed, StoreError> {
        let started = std::time::Instant::now();
        let name = command.name();
        let result = self.execute_with_retries(loaded, metadata, command).await;
        metrics::histogram!("twofold_command_seconds", "command" => name)
            .record(started.elapsed().as_secs_f64());
        if let Err(StoreError::Unavailable(_) | StoreError::Failed(_)) = &result {
            metrics::counter!("twofold_store_errors_total", "command" => name).increment(1);
        }
        result
    }

    async fn execute_with_retries(
        &self,
        mut loaded: Loaded,
        metadata: &EventMetadata,
        command: UserCommand,
    ) -> Result<Committed, StoreError> {
        let stripe = (loaded.id.as_u128() % LOCK_STRIPES as u128) as usize;
        let _queued = self.stripes[stripe].lock().await;
        for attempt in 0..MAX_ATTEMPTS {
            let mut user = loaded.user.clone();
            let sink = EventSink::<User>::default();
            // Decided again on the state reloaded after a conflict: the
            // command carries what the caller checked (the password hash, the
            // enrollment of an unsealed secret) for the domain to compare.
            user.handle(command.clone(), &(), &sink).await?;
            let events = sink.collect().await;
            if events.is_empty() {
                return Ok(Committed {
                    events,
                    last_position: None,
                });
            }
            match self.append(&loaded, &events, metadata).await? {
                Ok(last_position) => {
                    let sequence = loaded.sequence + events.len();
                    let snapshot_sequence =
                        if self.snapshot_if_due(&loaded, &user, events.len()).await {
                            sequence
                        } else {
                            loaded.snapshot_sequence
                        };
                    self.remember(&Loaded {
                        id: loaded.id,
                        user,
                        sequence,
                        snapshot_sequence,
                    });
                    return Ok(Committed {
                        events,
                        last_position: Some(last_position),
                    });
                }
                Err(conflict) if is_conflict(&conflict) => {
                    if let Some(UserEvent::UserRegistered { username, .. }) = events.first() {
                        if self.find_username(username).await?.is_some() {
                            return Err(StoreError::UsernameTaken);
                        }
                    }
                    backoff(attempt).await;
                    loaded = self.load(loaded.id).await?;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(StoreError::Contended)
    }

    /// Appends the events in one statement that also answers where they
    /// landed: postgres-es's `persist` takes a transaction of its own and
    /// gives no position, which then cost a second query on every write.
    /// Optimistic concurrency is the events' primary key, as before.
    async fn append(
        &self,
        loaded: &Loaded,
        events: &[UserEvent],
        metadata: &EventMetadata,
    ) -> Result<Result<EventPosition, sqlx::Error>, StoreError> {
        let aggregate_id = loaded.id.to_string();
        let metadata = serde_json::to_value(metadata)?;
        let rows = events
            .iter()
            .enumerate()
            .map(|(offset, event)| {
                let sequence = i64::try_from(loaded.sequence + offset + 1).unwrap_or(i64::MAX);
                Ok((
                    sequence,
                    event.event_type(),
                    event.event_version(),
                    serde_json::to_value(event)?,
                ))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        macro_rules! insert {
            ($db:ty) => {{
                let mut insert = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO events
                         (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) ",
                );
                insert.push_values(&rows, |mut row, (sequence, event_type, event_version, payload)| {
                    row.push_bind(User::TYPE)
                        .push_bind(&aggregate_id)
                        .push_bind(*sequence)
                        .push_bind(event_type)
                        .push_bind(event_version)
                        .push_bind(payload)
                        .push_bind(&metadata);
                });
                insert
            }};
        }
        Ok(match &self.db {
            Db::Sqlite(pool) => {
                let mut insert = insert!(sqlx::Sqlite);
                let _turn = self.db.write_turn().await;
                async {
                    let mut tx = pool.begin().await?;
                    insert.build().execute(&mut *tx).await?;
                    // The trigger numbered the rows; the last is this append's.
                    let position: i64 = sqlx::query_scalar(
                        "SELECT position FROM events WHERE rowid = last_insert_rowid()",
                    )
                    .fetch_one(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(EventPosition {
                        transaction_id: position,
                        position,
                    })
                }
                .await
            }
            Db::Postgres(pool) => {
                let mut insert = insert!(sqlx::Postgres);
                insert.push(" RETURNING transaction_id, position");
                insert
                    .build_query_as::<(i64, i64)>()
                    .fetch_all(pool)
                    .await
                    .map(|rows| {
                        let (transaction_id, position) = rows.into_iter().max().unwrap_or_default();
                        EventPosition {
                            transaction_id,
                            position,
                        }
                    })
            }
        })
    }

    /// Snapshots are an optimisation: a failure to write one is logged, never
    /// surfaced, and a stale one is only ever followed by its tail.
    /// Whether it wrote one.
    async fn snapshot_if_due(&self, loaded: &Loaded, user: &User, appended: usize) -> bool {
        let sequence = loaded.sequence + appended;
        if sequence - loaded.snapshot_sequence < SNAPSHOT_EVERY {
            return false;
        }
        let result: Result<(), StoreError> = async {
            let payload = serde_json::to_value(user)?;
            let sequence = i64::try_from(sequence).unwrap_or(i64::MAX);
            let _turn = self.db.write_turn().await;
            on_pool!(&self.db, pool => {
                sqlx::query(
                    "INSERT INTO aggregate_snapshots (aggregate_type, aggregate_id, sequence, schema_version, payload)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
                        SET sequence = excluded.sequence, schema_version = excluded.schema_version,
                            payload = excluded.payload
                      WHERE aggregate_snapshots.sequence < excluded.sequence",
                )
                .bind(User::TYPE)
                .bind(loaded.id.to_string())
                .bind(sequence)
                .bind(SNAPSHOT_SCHEMA)
                .bind(payload)
                .execute(pool)
                .await?;
            });
            Ok(())
        }
        .await;
        if let Err(error) = &result {
            tracing::warn!(%error, user_id = %loaded.id, "snapshot not written");
        }
        result.is_ok()
    }

    /// The user registered under this name, straight from the events table
    /// (through the index that keeps names unique), so a name is found the
    /// moment it is committed, by every process.
    pub async fn find_username(&self, username: &Username) -> Result<Option<Uuid>, StoreError> {
        let id: Option<String> = match &self.db {
            Db::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT aggregate_id FROM events
                      WHERE event_type = 'UserRegistered'
                        AND json_extract(payload, '$.UserRegistered.username') = $1",
                )
                .bind(username.as_str())
                .fetch_optional(pool)
                .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT aggregate_id FROM events
                      WHERE event_type = 'UserRegistered'
                        AND (payload -> 'UserRegistered' ->> 'username') = $1",
                )
                .bind(username.as_str())
                .fetch_optional(pool)
                .await?
            }
        };
        Ok(id.and_then(|id| Uuid::parse_str(&id).ok()))
    }
}

/// Another process won the race: wait a little, more each time, with jitter
/// so that the losers don't collide again in lockstep.
async fn backoff(attempt: u32) {
    use rand::Rng;
    let ceiling_ms = 2u64.saturating_pow(attempt.min(6));
    let pause = rand::thread_rng().gen_range(0..=ceiling_ms);
    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
}

/// Another append took the sequence number first (the events' primary
/// key), or the username (its unique index).
fn is_conflict(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|db| db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use twofold_domain::{Email, PasswordHash, Role};

    use super::*;

    async fn store_on(url: &str) -> EventStore {
        let db = crate::connect::connect(url, 4).await.unwrap();
        crate::connect::migrate(&db).await.unwrap();
        EventStore::new(db)
    }

    fn email(address: &str) -> Option<Email> {
        Some(Email::parse(address).unwrap())
    }

    /// Two stores on one file stand for two processes: what one appends, the
    /// other's next load sees, though it keeps the user in memory.
    #[tokio::test]
    async fn a_kept_user_still_shows_what_another_process_appended() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("store.db").display());
        let (here, there) = (store_on(&url).await, store_on(&url).await);
        let id = Uuid::new_v4();
        let metadata = EventMetadata::default();
        let new_user = here.load(id).await.unwrap();
        here.execute(
            new_user,
            &metadata,
            UserCommand::RegisterUser {
                user_id: id,
                username: Username::parse("kept").unwrap(),
                email: email("first@example.com"),
                role: Role::User,
                password_hash: PasswordHash::new(
                    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                ),
                at: chrono::Utc::now(),
            },
        )
        .await
        .unwrap();
        assert_eq!(here.load(id).await.unwrap().sequence, 1);

        let elsewhere = there.load(id).await.unwrap();
        there
            .execute(
                elsewhere,
                &metadata,
                UserCommand::ChangeEmail {
                    email: email("second@example.com"),
                },
            )
            .await
            .unwrap();

        let reloaded = here.load(id).await.unwrap();
        assert_eq!(reloaded.sequence, 2);
        assert_eq!(
            reloaded.user.profile().unwrap().email,
            email("second@example.com")
        );
    }
}
