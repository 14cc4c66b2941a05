//! Pages of stored events for the bulk paths (rebuild, verify): each row
//! read with its strings borrowed from the row, parsed without `Value`
//! trees, and chained onto the audit chains, on every core.

use chrono::{DateTime, Utc};
use sqlx::types::JsonRawValue;
use sqlx::Row;

use crate::audit::{Chains, Content, Hash, Link};
use crate::cores::map_on_every_core;
use crate::db::ProjectionError;
use crate::feed::EventPosition;
use crate::json::Json;

/// A stored event as the row holds it.
pub(crate) struct RawEvent<'r> {
    pub at: EventPosition,
    pub aggregate_id: &'r str,
    pub sequence: i64,
    pub event_type: &'r str,
    pub event_version: &'r str,
    /// JSON text (jsonb's text form on PostgreSQL).
    pub payload: &'r str,
    pub metadata: &'r str,
    pub recorded_at: DateTime<Utc>,
}

impl RawEvent<'_> {
    /// For a payload or metadata that does not read back.
    pub fn corrupt(&self, source: serde_json::Error) -> ProjectionError {
        ProjectionError::Corrupt {
            position: self.at.position,
            source,
        }
    }
}

/// A row of the feed's columns, on either backend.
pub(crate) trait FeedRow: Send + Sync + 'static {
    fn event(&self) -> Result<RawEvent<'_>, sqlx::Error>;
}

impl<R: Row> FeedRow for R
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r JsonRawValue: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> DateTime<Utc>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
{
    fn event(&self) -> Result<RawEvent<'_>, sqlx::Error> {
        Ok(RawEvent {
            at: EventPosition {
                transaction_id: self.try_get("transaction_id")?,
                position: self.try_get("position")?,
            },
            aggregate_id: self.try_get("aggregate_id")?,
            sequence: self.try_get("sequence")?,
            event_type: self.try_get("event_type")?,
            event_version: self.try_get("event_version")?,
            payload: self.try_get::<&JsonRawValue, _>("payload")?.get(),
            metadata: self.try_get::<&JsonRawValue, _>("metadata")?.get(),
            recorded_at: self.try_get("recorded_at")?,
        })
    }
}

/// An event of a page with its chain recomputed: the stream's link before
/// it, its own chain hash, and what the caller derived from it.
pub(crate) struct Chained<T> {
    pub at: EventPosition,
    pub aggregate_id: String,
    pub sequence: i64,
    pub previous: Link,
    pub chain: Hash,
    pub derived: T,
}

/// Reads the rows of a page (in feed order) and chains each event onto
/// `chains`; `derive` gets every event, with its index in the page and its
/// payload and metadata parsed. Both steps run on every core.
pub(crate) fn chain_page<T: Send>(
    rows: &[impl FeedRow],
    chains: &mut Chains,
    derive: impl Fn(usize, &RawEvent, &Json, &Json) -> Result<T, ProjectionError> + Sync,
) -> Result<Vec<Chained<T>>, ProjectionError> {
    let (events, derived): (Vec<_>, Vec<_>) =
        map_on_every_core(rows, |index, row| -> Result<_, ProjectionError> {
            let event = row.event()?;
            let payload = Json::parse(event.payload).map_err(|source| event.corrupt(source))?;
            let metadata = Json::parse(event.metadata).map_err(|source| event.corrupt(source))?;
            let content = Content {
                aggregate_id: event.aggregate_id,
                sequence: event.sequence,
                event_type: event.event_type,
                event_version: event.event_version,
                payload: &payload,
                metadata: &metadata,
            }
            .canonical();
            let derived = derive(index, &event, &payload, &metadata)?;
            let event = (
                event.at,
                event.aggregate_id.to_string(),
                event.sequence,
                content,
            );
            Ok((event, derived))
        })
        .into_iter()
        .collect::<Result<_, _>>()?;
    let links = chains.extend(&events, |(_, stream, sequence, content)| {
        (stream.as_str(), *sequence, content.as_str())
    });
    Ok(events
        .into_iter()
        .zip(links)
        .zip(derived)
        .map(
            |(((at, aggregate_id, sequence, _), (previous, chain)), derived)| Chained {
                at,
                aggregate_id,
                sequence,
                previous,
                chain,
                derived,
            },
        )
        .collect())
}
