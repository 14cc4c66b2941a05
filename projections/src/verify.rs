//! `twofold audit verify`: recomputes the audit trail from the events table
//! (its hash chains and every column `/audit` and the exports show) and
//! compares it, event by event in feed order, with what the projection
//! stored when it applied each event.
//!
//! Reads only (a verifier can run with a read-only role) and streams both
//! tables in keyset pages; memory grows with the number of users (one
//! chain link each), not with the number of events.

use std::collections::VecDeque;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::Row;

use crate::audit::{head_hash, AuditColumns, Chains, Hash, GENESIS};
use crate::cores::off_the_runtime;
use crate::db::{Db, ProjectionError, ReadModels};
use crate::feed::EventPosition;
use crate::on_pool;
use crate::pages::{chain_page, Chained};
use crate::runner::CHECKPOINT;

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
    pub problem: &'static str,
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

struct TrailRow {
    id: i64,
    position: i64,
    user_id: String,
    sequence: i64,
    shown: Shown,
    chain_hash: String,
    head_hash: String,
}

/// What `/audit` and the exports show of a row besides its place (position,
/// user and sequence, compared on their own): as stored, or as the event
/// gives it (recomputed in the store's form).
#[derive(Debug)]
struct Shown {
    event_type: String,
    occurred_at: Time,
    actor_id: Option<String>,
    impersonator_id: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
    data: String,
}

/// `occurred_at` as each store keeps it: SQLite the text sqlx writes for a
/// bound time; PostgreSQL microseconds.
#[derive(Debug, PartialEq, Eq)]
enum Time {
    Text(String),
    Microseconds(i64),
    /// A time recomputed for PostgreSQL, which keeps microseconds: the
    /// projector's bound value is cut toward 2000-01-01 (sqlx), the
    /// rebuild's COPY text down; the two differ only before 2000.
    Cut {
        down: i64,
        toward_2000: i64,
    },
}

impl Time {
    fn of(at: DateTime<Utc>, as_text: bool) -> Self {
        if as_text {
            return Time::Text(at.to_rfc3339_opts(SecondsFormat::AutoSi, false));
        }
        let down = at.timestamp_micros();
        let epoch = DateTime::from_timestamp_micros(POSTGRES_EPOCH_MICROS).unwrap_or_default();
        let toward_2000 = (at - epoch)
            .num_microseconds()
            .map_or(down, |since| since + POSTGRES_EPOCH_MICROS);
        Time::Cut { down, toward_2000 }
    }

    /// Whether the stored time is this recomputed one.
    fn stored_as(&self, stored: &Time) -> bool {
        match (self, stored) {
            (Time::Cut { down, toward_2000 }, Time::Microseconds(stored)) => {
                stored == down || stored == toward_2000
            }
            _ => self == stored,
        }
    }
}

/// 2000-01-01T00:00:00Z, PostgreSQL's epoch for timestamps.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl Shown {
    /// What the event gives: the columns `record` and the rebuild write.
    fn of(event_type: &str, columns: AuditColumns, as_text: bool) -> Self {
        Shown {
            event_type: event_type.to_string(),
            occurred_at: Time::of(columns.occurred_at, as_text),
            actor_id: columns.actor_id,
            impersonator_id: columns.impersonator_id,
            ip: columns.ip,
            user_agent: columns.user_agent,
            data: columns.data,
        }
    }

    /// Whether the stored row shows what this recomputation gives.
    fn stored_as(&self, stored: &Shown) -> bool {
        self.data == stored.data
            && self.event_type == stored.event_type
            && self.occurred_at.stored_as(&stored.occurred_at)
            && self.actor_id == stored.actor_id
            && self.impersonator_id == stored.impersonator_id
            && self.ip == stored.ip
            && self.user_agent == stored.user_agent
    }
}

/// The trail rows read so far and not yet compared, in apply order.
#[derive(Default)]
struct Trail {
    rows: VecDeque<TrailRow>,
    after_id: i64,
    done: bool,
}

impl Trail {
    /// Whether to read a page ahead while the events are being chained.
    fn wants_page(&self) -> bool {
        !self.done && self.rows.len() < PAGE as usize
    }

    fn add(&mut self, page: Vec<TrailRow>) {
        self.done = (page.len() as i64) < PAGE;
        if let Some(last) = page.last() {
            self.after_id = last.id;
        }
        self.rows.extend(page);
    }
}

fn mismatch<T>(event: &Chained<T>, problem: &'static str) -> Mismatch {
    Mismatch {
        user_id: Some(event.aggregate_id.clone()),
        sequence: Some(event.sequence),
        position: event.at.position,
        problem,
    }
}

fn missing(row: TrailRow) -> Mismatch {
    Mismatch {
        user_id: Some(row.user_id),
        sequence: Some(row.sequence),
        position: row.position,
        problem: "event_missing",
    }
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
    head: Hash,
    head_position: Option<i64>,
    checked: u64,
}

impl Walk<'_> {
    /// Checks one event, its chain and columns recomputed, against the row
    /// the projection stored for it.
    fn check(&mut self, event: &Chained<Shown>, row: &TrailRow) -> Result<(), Mismatch> {
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
        if !event.derived.stored_as(&row.shown) {
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
        Ok(())
    }

    /// Whether the row of another position is this event's row with only
    /// its `position` column edited: the head links the event's own
    /// position, so it still matches when the event is where it was.
    fn only_position_edited(&self, event: &Chained<Shown>, row: &TrailRow) -> bool {
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
                })
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
    /// Recomputes both chains over every event the projection has applied
    /// and compares them with the trail; stops at the first disagreement.
    /// `progress` hears the running count of events checked.
    ///
    /// The streams' chains are independent, so each page of events is
    /// decoded and chained on every core (off the async runtime) while the
    /// next pages of events and trail rows are read; only the global head,
    /// one short hash per event, is computed in feed order.
    pub async fn verify_audit_trail(
        &self,
        expect: Option<&ExpectedHead>,
        progress: impl Fn(u64),
    ) -> Result<VerifyReport, ProjectionError> {
        let (bound, last_id) = self.verify_bounds().await?;
        let (events_sql, times_as_text) = match &self.0 {
            Db::Sqlite(_) => (SQLITE_EVENTS, true),
            Db::Postgres(_) => (POSTGRES_EVENTS, false),
        };
        let mut walk = Walk {
            expect,
            expect_seen: false,
            head: GENESIS,
            head_position: None,
            checked: 0,
        };
        on_pool!(&self.0, pool => {
            let events_page = |after: EventPosition| {
                sqlx::query(events_sql)
                    .bind(after.transaction_id)
                    .bind(after.position)
                    .bind(bound.transaction_id)
                    .bind(bound.position)
                    .bind(PAGE)
                    .fetch_all(pool)
            };
            let mut trail = Trail::default();
            let mut chains = Chains::default();
            let mut rows = events_page(EventPosition {
                transaction_id: i64::MIN,
                position: i64::MIN,
            })
            .await?;
            loop {
                let last_page = (rows.len() as i64) < PAGE;
                let after = match rows.last() {
                    Some(row) => EventPosition {
                        transaction_id: row.try_get("transaction_id")?,
                        position: row.try_get("position")?,
                    },
                    None => bound,
                };
                let read_ahead = trail.wants_page().then_some(trail.after_id);
                let (chained, next_rows, trail_page) = tokio::join!(
                    off_the_runtime(move || {
                        // The columns are recomputed here, on every core;
                        // comparing them is the walk's (a few string compares).
                        let chained = chain_page(&rows, &mut chains, |event, payload, metadata| {
                            let columns = AuditColumns::of(payload, metadata, event.recorded_at);
                            Ok(Shown::of(event.event_type, columns, times_as_text))
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
                            Some(after_id) => self.trail_page(after_id, last_id).await.map(Some),
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
                if let Some(page) = trail_page? {
                    trail.add(page);
                }
                for event in chained {
                    let found = match self.next_trail_row(&mut trail, last_id).await? {
                        None => mismatch(&event, "event_not_in_trail"),
                        Some(row) if event.at.position != row.position => {
                            if walk.only_position_edited(&event, &row) {
                                mismatch(&event, "row_changed")
                            } else {
                                self.misplaced(&event, row).await?
                            }
                        }
                        Some(row) => match walk.check(&event, &row) {
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
            let left_over = self.next_trail_row(&mut trail, last_id).await?;
            Ok(walk.report(left_over.map(missing)))
        })
    }

    /// The next event in the store is not the next one in the trail: was
    /// the trail's event deleted, the store's inserted, or were they moved?
    async fn misplaced(
        &self,
        event: &Chained<Shown>,
        row: TrailRow,
    ) -> Result<Mismatch, ProjectionError> {
        let count = |table: &'static str, position: i64| async move {
            let sql = format!("SELECT count(*) FROM {table} WHERE position = $1");
            on_pool!(&self.0, pool => {
                sqlx::query_scalar::<_, i64>(&sql).bind(position).fetch_one(pool).await
            })
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
        on_pool!(&self.0, pool => {
            let row = sqlx::query(SQL).bind(CHECKPOINT).fetch_one(pool).await?;
            let transaction_id: Option<i64> = row.try_get("transaction_id")?;
            let position: Option<i64> = row.try_get("position")?;
            let last_id: i64 = row.try_get("last_id")?;
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
        })
    }

    async fn next_trail_row(
        &self,
        trail: &mut Trail,
        last_id: i64,
    ) -> Result<Option<TrailRow>, ProjectionError> {
        if trail.rows.is_empty() && !trail.done {
            trail.add(self.trail_page(trail.after_id, last_id).await?);
        }
        Ok(trail.rows.pop_front())
    }

    /// Trail rows in apply order.
    async fn trail_page(
        &self,
        after_id: i64,
        last_id: i64,
    ) -> Result<Vec<TrailRow>, ProjectionError> {
        on_pool!(&self.0, pool => {
            let rows = sqlx::query(match &self.0 {
                Db::Sqlite(_) => SQLITE_TRAIL,
                Db::Postgres(_) => POSTGRES_TRAIL,
            })
            .bind(after_id)
            .bind(last_id)
            .bind(PAGE)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    let text: Option<String> = row.try_get("occurred_text")?;
                    let at: Option<DateTime<Utc>> = row.try_get("occurred_at")?;
                    let occurred_at = match (text, at) {
                        (Some(text), _) => Time::Text(text),
                        (None, Some(at)) => Time::Microseconds(at.timestamp_micros()),
                        // NOT NULL in the schema; should it be missing, it
                        // differs from any time an event gives.
                        (None, None) => Time::Text(String::new()),
                    };
                    Ok(TrailRow {
                        id: row.try_get("id")?,
                        position: row.try_get("position")?,
                        user_id: row.try_get("user_id")?,
                        sequence: row.try_get("sequence")?,
                        shown: Shown {
                            event_type: row.try_get("type")?,
                            occurred_at,
                            actor_id: row.try_get("actor_id")?,
                            impersonator_id: row.try_get("impersonator_id")?,
                            ip: row.try_get("ip")?,
                            user_agent: row.try_get("user_agent")?,
                            data: row.try_get("data")?,
                        },
                        chain_hash: row.try_get("chain_hash")?,
                        head_hash: row.try_get("head_hash")?,
                    })
                })
                .collect()
        })
    }
}

/// Trail rows in apply order. `occurred_at` is compared as stored: SQLite's
/// text as it is (`occurred_text`), PostgreSQL's timestamp (`occurred_at`).
const SQLITE_TRAIL: &str = "
SELECT id, position, user_id, sequence, type, occurred_at AS occurred_text,
       NULL AS occurred_at, actor_id, impersonator_id, ip, user_agent, data,
       chain_hash, head_hash
  FROM audit_log
 WHERE id > $1 AND id <= $2
 ORDER BY id
 LIMIT $3";

const POSTGRES_TRAIL: &str = "
SELECT id, position, user_id, sequence, type, NULL::text AS occurred_text,
       occurred_at, actor_id, impersonator_id, ip, user_agent, data,
       chain_hash, head_hash
  FROM audit_log
 WHERE id > $1 AND id <= $2
 ORDER BY id
 LIMIT $3";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::{ExpectedHead, Time, PAGE, SQLITE_EVENTS};
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
        assert_eq!(
            Time::of(at, true),
            Time::Text("2024-05-06T07:08:09.123456789+00:00".into())
        );
        let micros = 1_714_979_289_123_456;
        let postgres = Time::of(at, false);
        assert!(postgres.stored_as(&Time::Microseconds(micros)));
        assert!(!postgres.stored_as(&Time::Microseconds(micros + 1)));
        assert!(!postgres.stored_as(&Time::Microseconds(micros - 1)));

        let before_2000: DateTime<Utc> = "1999-12-31T23:59:59.000000500Z".parse().unwrap();
        let down = before_2000.timestamp_micros();
        let postgres = Time::of(before_2000, false);
        assert!(postgres.stored_as(&Time::Microseconds(down)));
        assert!(postgres.stored_as(&Time::Microseconds(down + 1)));
        assert!(!postgres.stored_as(&Time::Microseconds(down + 2)));
        assert!(!postgres.stored_as(&Time::Text(String::new())));
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
