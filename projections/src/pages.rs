//! Pages of stored events for the bulk paths (rebuild, verify): each row
//! read with its strings borrowed from the row, parsed without `Value`
//! trees, and chained onto the audit chains, on every core.

use twofold_store::Row;

use crate::audit::{Chains, Content, Hash, Link};
use crate::cores::map_on_every_core;
use crate::db::ProjectionError;
use crate::feed::EventPosition;
use crate::json::Json;

/// A stored event as the row holds it.
pub(crate) use twofold_store::FeedColumns as RawEvent;

/// For a payload or metadata that does not read back.
pub(crate) fn corrupt(event: &RawEvent, source: serde_json::Error) -> ProjectionError {
    ProjectionError::Corrupt {
        position: event.at.position,
        source,
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
    rows: &[Row],
    chains: &mut Chains,
    derive: impl Fn(usize, &RawEvent, &Json, &Json) -> Result<T, ProjectionError> + Sync,
) -> Result<Vec<Chained<T>>, ProjectionError> {
    let (events, derived): (Vec<_>, Vec<_>) =
        map_on_every_core(rows, |index, row| -> Result<_, ProjectionError> {
            let event = row.feed_columns()?;
            let payload = Json::parse(event.payload).map_err(|source| corrupt(&event, source))?;
            let metadata = Json::parse(event.metadata).map_err(|source| corrupt(&event, source))?;
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
