//! `twofold audit verify`: recomputes the audit trail from the events table
//! (its hash chains and every column `/audit` and the exports show) and
//! compares it, event by event in feed order, with what the projection
//! stored when it applied each event.
//!
//! Reads only (a verifier can run with a read-only role) and streams both
//! tables in keyset pages; memory grows with the number of users (one
//! chain link each), not with the number of events.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use twofold_domain::checkpoint::{AuditPublicKey, SignedCheckpoint};
use twofold_store::{Dialect, Row};

use crate::audit::{head_hash, AuditColumns, Chains, Hash, GENESIS};
use crate::cores::off_the_runtime;
use crate::db::{ProjectionError, ReadModels};
use crate::feed::EventPosition;
use crate::pages::{chain_page, Chained};
use crate::read_models::CHECKPOINT;

const PAGE: i64 = 10_000;

/// The feed below the checkpoint. Starts below any real position, so an
/// event slipped in at position 0 (or a PostgreSQL transaction id older than
/// all others) is still seen. `+aggregate_type`, as in the projector's feed:
/// otherwise SQLite reads and sorts every event of the store for each page
/// (7 min 45 s instead of 33 s to verify a million events).
const SQLITE_EVENTS: &str = "
SELECT position AS transaction_id, position, aggregate_id, sequence, event_type, event_version,
       payload, metadata, recorded_at
  FROM events
 WHERE +aggregate_type = 'user' AND position > $2 AND position <= $4
 ORDER BY position
 LIMIT $5";

const POSTGRES_EVENTS: &str = "
SELECT transaction_id, position, aggregate_id, sequence, event_type, event_version,
       payload, metadata, recorded_at
  FROM events
 WHERE aggregate_type = 'user'
   AND (transaction_id, position) > ($1, $2)
   AND (transaction_id, position) <= ($3, $4)
 ORDER BY transaction_id, position
 LIMIT $5";

/// A head digest kept outside the database: the trail must still reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedHead {
    pub position: i64,
    /// Lower-case hex of the 32-byte digest.
    pub hash: String,
}

impl std::str::FromStr for ExpectedHead {
    type Err = String;

    /// `POSITION:HEX`, as `twofold audit verify` prints them.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (position, hash) = text
            .split_once(':')
            .ok_or("expected POSITION:HEX".to_string())?;
        let position = position
            .trim()
            .parse()
            .map_err(|_| format!("bad position {position:?}"))?;
        let hash = hash.trim().to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the head is 64 hex digits".into());
        }
        Ok(ExpectedHead { position, hash })
    }
}

/// Where the stored history and the trail first disagree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Mismatch {
    pub user_id: Option<String>,
    pub sequence: Option<i64>,
    pub position: i64,
    /// `event_missing`: the trail recorded an event the store no longer holds.
    /// `event_not_in_trail`: the store holds an event, below the checkpoint,
    /// that was never applied (inserted behind the projection's back).
    /// `order_changed`: the events are there but in another order.
    /// `event_changed`: the event at this position is not the one recorded
    /// (another user or sequence: renumbered or swapped).
    /// `sequence_gap`: the user's stream skips a sequence number.
    /// `content_changed`: payload, metadata, type or version differ.
    /// `trail_changed`: the events match but the stored head does not.
    /// `row_changed`: the event is the one recorded, but a column of its
    /// trail row that `/audit` and the exports show (position, user_id,
    /// sequence, type, occurred_at, actor_id, impersonator_id, ip,
    /// user_agent, data) is not what the event gives.
    /// `head_differs` / `head_not_reached`: the expected head (kept outside
    /// the database) is not what the history gives at its position.
    /// With `--public-key`, a signed checkpoint at `position`:
    /// `checkpoint_head_differs` (the history before it was rewritten,
    /// reordered or cut and grown again), `checkpoint_not_reached` (the
    /// history no longer reaches its position: cut), `checkpoint_not_signed`
    /// (its signature does not verify: forged or edited) or
    /// `checkpoint_key_unknown` (signed by none of the keys given).
    pub problem: &'static str,
    /// The checkpoint's `signed_at`, for the `checkpoint_*` problems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<String>,
}

impl std::fmt::Display for Mismatch {
    /// One line for the command line's error.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.signed_at {
            Some(signed_at) => write!(
                f,
                "{} for the checkpoint signed at {signed_at} at position {}",
                self.problem, self.position
            ),
            None => write!(f, "{} at position {}", self.problem, self.position),
        }
    }
}

/// What `twofold audit verify` and `GET /audit/verify` report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct VerifyReport {
    pub ok: bool,
    pub events_checked: u64,
    /// Hex of the global digest after the last event checked.
    pub head: String,
    pub head_position: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_mismatch: Option<Mismatch>,
}

/// Where a trail row stands and its links: what the walk compares in feed
/// order.
struct TrailRow {
    position: i64,
    user_id: String,
    sequence: i64,
    chain_hash: String,
    head_hash: String,
}

/// The trail query's columns, by index (reading by name hashes each name).
mod column {
    pub const ID: usize = 0;
    pub const POSITION: usize = 1;
    pub const USER_ID: usize = 2;
    pub const SEQUENCE: usize = 3;
    pub const CHAIN_HASH: usize = 4;
    pub const HEAD_HASH: usize = 5;
    pub const TYPE: usize = 6;
    pub const ACTOR_ID: usize = 7;
    pub const IMPERSONATOR_ID: usize = 8;
    pub const IP: usize = 9;
    pub const USER_AGENT: usize = 10;
    pub const DATA: usize = 11;
    /// SQLite's text, PostgreSQL's timestamp.
    pub const OCCURRED_AT: usize = 12;
}

/// Trail rows in apply order.
const TRAIL: &str = "
SELECT id, position, user_id, sequence, chain_hash, head_hash, type, actor_id,
       impersonator_id, ip, user_agent, data, occurred_at
  FROM audit_log
 WHERE id > $1 AND id <= $2
 ORDER BY id
 LIMIT $3";

/// A row of the trail query.
trait TrailSource {
    fn id(&self) -> Result<i64, sqlx::Error>;
    fn place(&self) -> Result<TrailRow, sqlx::Error>;
    /// Whether the row shows what the event gives: its type and the
    /// columns the fold writes, as this store keeps them.
    fn shows(
        &self,
        event_type: &str,
        columns: &AuditColumns,
        times_as_text: bool,
    ) -> Result<bool, sqlx::Error>;
}

impl TrailSource for Row {
    fn id(&self) -> Result<i64, sqlx::Error> {
        self.get_at(column::ID)
    }

    fn place(&self) -> Result<TrailRow, sqlx::Error> {
        Ok(TrailRow {
            position: self.get_at(column::POSITION)?,
            user_id: self.text_at(column::USER_ID)?.to_string(),
            sequence: self.get_at(column::SEQUENCE)?,
            chain_hash: self.text_at(column::CHAIN_HASH)?.to_string(),
            head_hash: self.text_at(column::HEAD_HASH)?.to_string(),
        })
    }

    fn shows(
        &self,
        event_type: &str,
        columns: &AuditColumns,
        times_as_text: bool,
    ) -> Result<bool, sqlx::Error> {
        // Compared as the stored bytes (a text column holds UTF-8): no
        // check of the text, and a value of another kind simply differs.
        let same = |index, expected: Option<&str>| -> Result<bool, sqlx::Error> {
            Ok(self.stored_bytes(index)? == expected.map(str::as_bytes))
        };
        if !same(column::TYPE, Some(event_type))?
            || !same(column::ACTOR_ID, columns.actor_id)?
            || !same(column::IMPERSONATOR_ID, columns.impersonator_id)?
            || !same(column::IP, columns.ip)?
            || !same(column::USER_AGENT, columns.user_agent)?
            || !same(column::DATA, Some(&columns.data))?
        {
            return Ok(false);
        }
        // As stored: SQLite's text as it is, PostgreSQL's timestamp.
        Ok(if times_as_text {
            same(column::OCCURRED_AT, Some(&sqlite_time(columns.occurred_at)))?
        } else {
            self.get_at::<Option<DateTime<Utc>>>(column::OCCURRED_AT)?
                .is_some_and(|stored| postgres_time(columns.occurred_at).holds(stored))
        })
    }
}

/// The text sqlx writes for a bound time on SQLite.
fn sqlite_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// A time as PostgreSQL keeps it, in microseconds: the projector's bound
/// value is cut toward 2000-01-01 (sqlx), the rebuild's COPY text down; the
/// two differ only before 2000.
#[derive(Debug)]
struct PostgresTime {
    down: i64,
    toward_2000: i64,
}

fn postgres_time(at: DateTime<Utc>) -> PostgresTime {
    let down = at.timestamp_micros();
    let epoch = DateTime::from_timestamp_micros(POSTGRES_EPOCH_MICROS).unwrap_or_default();
    let toward_2000 = (at - epoch)
        .num_microseconds()
        .map_or(down, |since| since + POSTGRES_EPOCH_MICROS);
    PostgresTime { down, toward_2000 }
}

impl PostgresTime {
    fn holds(&self, stored: DateTime<Utc>) -> bool {
        let stored = stored.timestamp_micros();
        stored == self.down || stored == self.toward_2000
    }
}

/// 2000-01-01T00:00:00Z, PostgreSQL's epoch for timestamps.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// An event of the page beside the trail row taken for it (in apply order,
/// the row at the event's place in the page), and whether that row shows
/// what the event gives. `None`: the trail had no row left.
type Paired = Option<(TrailRow, bool)>;

/// The trail rows read so far and not yet compared, in apply order.
struct Trail<R> {
    rows: VecDeque<R>,
    after_id: i64,
    done: bool,
}

impl<R: TrailSource> Trail<R> {
    fn add(&mut self, page: Vec<R>) -> Result<(), sqlx::Error> {
        self.done = (page.len() as i64) < PAGE;
        if let Some(last) = page.last() {
            self.after_id = last.id()?;
        }
        self.rows.extend(page);
        Ok(())
    }

    /// The next `count` rows (fewer when the trail ends first).
    fn take(&mut self, count: usize) -> Vec<R> {
        let count = count.min(self.rows.len());
        self.rows.drain(..count).collect()
    }
}

fn mismatch<T>(event: &Chained<T>, problem: &'static str) -> Mismatch {
    Mismatch {
        user_id: Some(event.aggregate_id.clone()),
        sequence: Some(event.sequence),
        position: event.at.position,
        problem,
        signed_at: None,
    }
}

fn missing(row: TrailRow) -> Mismatch {
    Mismatch {
        user_id: Some(row.user_id),
        sequence: Some(row.sequence),
        position: row.position,
        problem: "event_missing",
        signed_at: None,
    }
}

fn checkpoint_mismatch(checkpoint: &SignedCheckpoint, problem: &'static str) -> Mismatch {
    Mismatch {
        user_id: None,
        sequence: None,
        position: checkpoint.position,
        problem,
        signed_at: Some(checkpoint.signed_at.clone()),
    }
}

/// What `verify_audit_trail` checks the signed checkpoints with.
#[derive(Debug, Default)]
pub struct CheckpointCheck {
    /// The keys that may have signed them; none: checkpoints are not checked.
    pub keys: Vec<AuditPublicKey>,
    /// Copies kept outside the database (an auditor's list), checked
    /// beside the stored ones: deleting checkpoints from the database does
    /// not hide a cut from them.
    pub kept_elsewhere: Vec<SignedCheckpoint>,
}

/// The checkpoints `keys` signed, by position, for the walk to compare
/// with the recomputed head; the first that is not signed by one of them
/// (in signing order) is refused. A checkpoint found twice counts once.
fn signed_checkpoints(
    checkpoints: impl IntoIterator<Item = SignedCheckpoint>,
    keys: &[AuditPublicKey],
) -> Result<HashMap<i64, Vec<SignedCheckpoint>>, Mismatch> {
    let keys: HashMap<String, &AuditPublicKey> =
        keys.iter().map(|key| (key.key_id(), key)).collect();
    let mut by_position: HashMap<i64, Vec<SignedCheckpoint>> = HashMap::new();
    for checkpoint in checkpoints {
        let Some(key) = keys.get(&checkpoint.key_id) else {
            return Err(checkpoint_mismatch(&checkpoint, "checkpoint_key_unknown"));
        };
        if !checkpoint.is_signed_by(key) {
            return Err(checkpoint_mismatch(&checkpoint, "checkpoint_not_signed"));
        }
        let at = by_position.entry(checkpoint.position).or_default();
        if !at.contains(&checkpoint) {
            at.push(checkpoint);
        }
    }
    Ok(by_position)
}

/// Whether `stored` is the lower-case hex of `hash`.
fn same_hash(hash: &Hash, stored: &str) -> bool {
    let mut text = [0; 64];
    hex::encode_to_slice(hash, &mut text).is_ok() && text == stored.as_bytes()
}

/// The running comparison.
struct Walk<'a> {
    expect: Option<&'a ExpectedHead>,
    expect_seen: bool,
    /// The signed checkpoints not reached yet, by position.
    checkpoints: HashMap<i64, Vec<SignedCheckpoint>>,
    head: Hash,
    head_position: Option<i64>,
    checked: u64,
}

impl Walk<'_> {
    /// Checks one event, its chain recomputed, against the row the
    /// projection stored for it (`shows`: whether the row's other columns
    /// are what the event gives).
    fn check<T>(
        &mut self,
        event: &Chained<T>,
        row: &TrailRow,
        shows: bool,
    ) -> Result<(), Mismatch> {
        if event.aggregate_id != row.user_id || event.sequence != row.sequence {
            // The chain covers the event's user and sequence: when it still
            // matches, the event is the one recorded and the row was edited.
            return Err(if same_hash(&event.chain, &row.chain_hash) {
                mismatch(event, "row_changed")
            } else {
                mismatch(event, "event_changed")
            });
        }
        if event.sequence != event.previous.sequence + 1 {
            return Err(mismatch(event, "sequence_gap"));
        }
        if !same_hash(&event.chain, &row.chain_hash) {
            return Err(mismatch(event, "content_changed"));
        }
        let head = head_hash(&self.head, event.at.position, &event.chain);
        if !same_hash(&head, &row.head_hash) {
            return Err(mismatch(event, "trail_changed"));
        }
        if !shows {
            return Err(mismatch(event, "row_changed"));
        }
        self.head = head;
        self.head_position = Some(event.at.position);
        self.checked += 1;
        if let Some(expect) = self.expect.filter(|e| e.position == event.at.position) {
            self.expect_seen = true;
            if !same_hash(&head, &expect.hash) {
                return Err(mismatch(event, "head_differs"));
            }
        }
        if !self.checkpoints.is_empty() {
            let at_position = self.checkpoints.remove(&event.at.position);
            for checkpoint in at_position.iter().flatten() {
                if !same_hash(&head, &checkpoint.head) {
                    return Err(checkpoint_mismatch(checkpoint, "checkpoint_head_differs"));
                }
            }
        }
        Ok(())
    }

    /// Whether the row of another position is this event's row with only
    /// its `position` column edited: the head links the event's own
    /// position, so it still matches when the event is where it was.
    fn only_position_edited<T>(&self, event: &Chained<T>, row: &TrailRow) -> bool {
        event.aggregate_id == row.user_id
            && event.sequence == row.sequence
            && same_hash(&event.chain, &row.chain_hash)
            && same_hash(
                &head_hash(&self.head, event.at.position, &event.chain),
                &row.head_hash,
            )
    }

    fn report(&self, first_mismatch: Option<Mismatch>) -> VerifyReport {
        let first_mismatch = first_mismatch.or_else(|| {
            self.expect
                .filter(|_| !self.expect_seen)
                .map(|expect| Mismatch {
                    user_id: None,
                    sequence: None,
                    position: expect.position,
                    problem: "head_not_reached",
                    signed_at: None,
                })
        });
        // A checkpoint beyond the recomputed trail: the history was cut.
        let first_mismatch = first_mismatch.or_else(|| {
            self.checkpoints
                .values()
                .flatten()
                .min_by_key(|checkpoint| checkpoint.position)
                .map(|checkpoint| checkpoint_mismatch(checkpoint, "checkpoint_not_reached"))
        });
        VerifyReport {
            ok: first_mismatch.is_none(),
            events_checked: self.checked,
            head: hex::encode(self.head),
            head_position: self.head_position,
            first_mismatch,
        }
    }
}

impl ReadModels {
    /// Recomputes both chains and every shown column over every event the
    /// projection has applied and compares them with the trail; stops at
    /// the first disagreement. With keys in `checkpoints`, every stored
    /// checkpoint (and every copy kept elsewhere) must be signed by one of
    /// them and name the head recomputed at its position
    /// (compared as the walk passes it: no query per event). `progress`
    /// hears the running count of events checked.
    ///
    /// The streams' chains are independent, so each page of events is
    /// decoded, chained and compared with its trail rows (read a page
    /// ahead) on every core, off the async runtime, while the next pages of
    /// events and trail rows are read; only the global head, one short hash
    /// per event, is computed in feed order.
    pub async fn verify_audit_trail(
        &self,
        expect: Option<&ExpectedHead>,
        checkpoints: &CheckpointCheck,
        progress: impl Fn(u64),
    ) -> Result<VerifyReport, ProjectionError> {
        let (bound, last_id) = self.verify_bounds().await?;
        let mut walk = Walk {
            expect,
            expect_seen: false,
            checkpoints: HashMap::new(),
            head: GENESIS,
            head_position: None,
            checked: 0,
        };
        if !checkpoints.keys.is_empty() {
            let stored = self.checkpoints().await?;
            let kept = checkpoints.kept_elsewhere.iter().cloned();
            match signed_checkpoints(stored.into_iter().chain(kept), &checkpoints.keys) {
                Ok(checkpoints) => walk.checkpoints = checkpoints,
                Err(found) => return Ok(walk.report(Some(found))),
            }
        }
        let (events_sql, times_as_text) = match self.0.dialect() {
            Dialect::Sqlite => (SQLITE_EVENTS, true),
            Dialect::Postgres => (POSTGRES_EVENTS, false),
        };
        {
            let events_page = |after: EventPosition| {
                self.0.fetch(
                    events_sql,
                    vec![
                        after.transaction_id.into(),
                        after.position.into(),
                        bound.transaction_id.into(),
                        bound.position.into(),
                        PAGE.into(),
                    ],
                )
            };
            let trail_page = |after_id: i64| {
                self.0
                    .fetch(TRAIL, vec![after_id.into(), last_id.into(), PAGE.into()])
            };
            let mut chains = Chains::default();
            let (rows, first_trail) = tokio::join!(
                events_page(EventPosition {
                    transaction_id: i64::MIN,
                    position: i64::MIN,
                }),
                trail_page(0),
            );
            let mut rows = rows?;
            let mut trail = Trail {
                rows: VecDeque::new(),
                after_id: 0,
                done: false,
            };
            trail.add(first_trail?)?;
            loop {
                let last_page = (rows.len() as i64) < PAGE;
                let after = match rows.last() {
                    Some(row) => row.feed_columns()?.at,
                    None => bound,
                };
                // The read-ahead keeps a page in hand; this waits only when
                // it fell behind.
                while trail.rows.len() < rows.len() && !trail.done {
                    let page = trail_page(trail.after_id).await?;
                    trail.add(page)?;
                }
                let paired = trail.take(rows.len());
                let read_ahead = (!trail.done).then_some(trail.after_id);
                let (chained, next_rows, next_trail) = tokio::join!(
                    off_the_runtime(move || {
                        let chained =
                            chain_page(&rows, &mut chains, |index, event, payload, metadata| {
                                let Some(row) = paired.get(index) else {
                                    return Ok(None);
                                };
                                let columns =
                                    AuditColumns::of(payload, metadata, event.recorded_at);
                                let shows = row.shows(event.event_type, &columns, times_as_text)?;
                                Ok(Some((row.place()?, shows)))
                            });
                        (chains, chained)
                    }),
                    async {
                        if last_page {
                            Ok(Vec::new())
                        } else {
                            events_page(after).await
                        }
                    },
                    async {
                        match read_ahead {
                            Some(after_id) => trail_page(after_id).await.map(Some),
                            None => Ok(None),
                        }
                    },
                );
                let chained = {
                    let (returned, chained) = chained;
                    chains = returned;
                    chained?
                };
                rows = next_rows?;
                if let Some(page) = next_trail? {
                    trail.add(page)?;
                }
                for mut event in chained {
                    let paired: Paired = event.derived.take();
                    let found = match paired {
                        None => mismatch(&event, "event_not_in_trail"),
                        Some((row, _)) if event.at.position != row.position => {
                            if walk.only_position_edited(&event, &row) {
                                mismatch(&event, "row_changed")
                            } else {
                                self.misplaced(&event, row).await?
                            }
                        }
                        Some((row, shows)) => match walk.check(&event, &row, shows) {
                            Ok(()) => continue,
                            Err(found) => found,
                        },
                    };
                    return Ok(walk.report(Some(found)));
                }
                progress(walk.checked);
                if last_page {
                    break;
                }
            }
            // Every event matched its row; a row left over lost its event.
            if trail.rows.is_empty() && !trail.done {
                let page = trail_page(trail.after_id).await?;
                trail.add(page)?;
            }
            let left_over = trail.rows.front().map(TrailSource::place).transpose()?;
            Ok(walk.report(left_over.map(missing)))
        }
    }

    /// The next event in the store is not the next one in the trail: was
    /// the trail's event deleted, the store's inserted, or were they moved?
    async fn misplaced(
        &self,
        event: &Chained<Paired>,
        row: TrailRow,
    ) -> Result<Mismatch, ProjectionError> {
        let count = |table: &'static str, position: i64| async move {
            let sql = format!("SELECT count(*) AS found FROM {table} WHERE position = $1");
            let rows = self.0.fetch(&sql, vec![position.into()]).await?;
            rows.first().map_or(Ok(0), |row| row.get::<i64>("found"))
        };
        Ok(if count("events", row.position).await? == 0 {
            missing(row)
        } else if count("audit_log", event.at.position).await? == 0 {
            mismatch(event, "event_not_in_trail")
        } else {
            mismatch(event, "order_changed")
        })
    }

    /// The checkpoint and the last trail row, read in one statement so both
    /// come from the same committed batch.
    async fn verify_bounds(&self) -> Result<(EventPosition, i64), ProjectionError> {
        const SQL: &str = "
SELECT (SELECT transaction_id FROM projection_checkpoints WHERE name = $1) AS transaction_id,
       (SELECT position FROM projection_checkpoints WHERE name = $1) AS position,
       (SELECT coalesce(max(id), 0) FROM audit_log) AS last_id";
        {
            let rows = self.0.fetch(SQL, vec![CHECKPOINT.into()]).await?;
            let Some(row) = rows.first() else {
                return Err(sqlx::Error::RowNotFound.into());
            };
            let transaction_id: Option<i64> = row.get("transaction_id")?;
            let position: Option<i64> = row.get("position")?;
            let last_id: i64 = row.get("last_id")?;
            let bound = match (transaction_id, position) {
                (Some(transaction_id), Some(position)) => EventPosition {
                    transaction_id,
                    position,
                },
                // Nothing applied yet: nothing to compare (and any trail
                // row then lacks its event, which is worth reporting).
                _ => EventPosition {
                    transaction_id: i64::MIN,
                    position: i64::MIN,
                },
            };
            Ok((bound, last_id))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{postgres_time, sqlite_time, ExpectedHead, PAGE, SQLITE_EVENTS};
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;
    use sqlx::Row;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// `--expect-head`: any text is a head or an error, never a panic;
        /// an accepted head prints back to itself.
        #[test]
        fn expected_heads_never_panic_and_round_trip(
            text in prop_oneof![any::<String>(), " ?-?[0-9]{1,20} ?: ?[0-9a-fA-F]{62,66} ?"],
        ) {
            if let Ok(head) = text.parse::<ExpectedHead>() {
                prop_assert_eq!(head.hash.len(), 64);
                let again: ExpectedHead = format!("{}:{}", head.position, head.hash).parse().unwrap();
                prop_assert_eq!(again, head);
            }
        }
    }

    #[tokio::test]
    async fn each_sqlite_page_of_events_is_a_range_scan_of_positions() {
        let pool = crate::memory_store().await;
        let plan: Vec<String> = sqlx::query(&format!("EXPLAIN QUERY PLAN {SQLITE_EVENTS}"))
            .bind(0_i64)
            .bind(0_i64)
            .bind(0_i64)
            .bind(10_i64)
            .bind(PAGE)
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect();
        let plan = plan.join("; ");
        assert!(plan.contains("USING INDEX events_position"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
    }

    /// "As stored": SQLite's text to the byte; PostgreSQL's microseconds as
    /// either writer cuts them (alike after 2000), one microsecond off is
    /// an edit.
    #[test]
    fn recomputed_times_compare_as_each_store_keeps_them() {
        let at: DateTime<Utc> = "2024-05-06T07:08:09.123456789Z".parse().unwrap();
        assert_eq!(sqlite_time(at), "2024-05-06T07:08:09.123456789+00:00");
        let stored = |micros| DateTime::from_timestamp_micros(micros).unwrap();
        let micros = 1_714_979_289_123_456;
        let postgres = postgres_time(at);
        assert!(postgres.holds(stored(micros)));
        assert!(!postgres.holds(stored(micros + 1)));
        assert!(!postgres.holds(stored(micros - 1)));

        let before_2000: DateTime<Utc> = "1999-12-31T23:59:59.000000500Z".parse().unwrap();
        let down = before_2000.timestamp_micros();
        let postgres = postgres_time(before_2000);
        assert!(postgres.holds(stored(down)));
        assert!(postgres.holds(stored(down + 1)));
        assert!(!postgres.holds(stored(down + 2)));
    }

    #[test]
    fn expected_heads_parse_as_position_colon_hex() {
        let hex = "ab".repeat(32);
        assert_eq!(
            format!("12:{}", hex.to_uppercase()).parse::<ExpectedHead>(),
            Ok(ExpectedHead {
                position: 12,
                hash: hex.clone()
            })
        );
        assert!("12".parse::<ExpectedHead>().is_err());
        assert!("x:00".parse::<ExpectedHead>().is_err());
        assert!(format!("1:{}", "g".repeat(64))
            .parse::<ExpectedHead>()
            .is_err());
    }
}
