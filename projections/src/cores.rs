//! CPU-bound work of the bulk paths (decoding events, hashing the audit
//! chains) spread over every core and kept off the async runtime's threads.

use std::num::NonZeroUsize;

/// Below this many items a page is not worth the threads.
const SPLIT_FROM: usize = 256;

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// `work` on every item (with its index), in order, the items cut into one
/// run per core.
pub(crate) fn map_on_every_core<T: Sync, U: Send>(
    items: &[T],
    work: impl Fn(usize, &T) -> U + Sync,
) -> Vec<U> {
    let cores = cores();
    if cores == 1 || items.len() < SPLIT_FROM {
        return items
            .iter()
            .enumerate()
            .map(|(index, item)| work(index, item))
            .collect();
    }
    let run = items.len().div_ceil(cores);
    let work = &work;
    std::thread::scope(|scope| {
        let runs: Vec<_> = items
            .chunks(run)
            .enumerate()
            .map(|(number, chunk)| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(index, item)| work(number * run + index, item))
                        .collect::<Vec<U>>()
                })
            })
            .collect();
        runs.into_iter().flat_map(joined).collect()
    })
}

/// Runs `work` on its own shard of `shards`, on a thread each when the
/// shards hold `items` worth the threads (a live batch of a few events is
/// not: two thread starts would cost more than the work and hold the async
/// runtime's thread meanwhile).
pub(crate) fn on_every_shard<S: Send, U: Send>(
    shards: &mut [S],
    items: usize,
    work: impl Fn(usize, &mut S) -> U + Sync,
) -> Vec<U> {
    if shards.len() == 1 || items < SPLIT_FROM {
        return shards
            .iter_mut()
            .enumerate()
            .map(|(index, shard)| work(index, shard))
            .collect();
    }
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = shards
            .iter_mut()
            .enumerate()
            .map(|(index, shard)| scope.spawn(move || work(index, shard)))
            .collect();
        handles.into_iter().map(joined).collect()
    })
}

/// A worker's result; a worker that panicked takes its panic to the caller,
/// as if the work had run inline.
fn joined<U>(handle: std::thread::ScopedJoinHandle<'_, U>) -> U {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Runs `work` on the blocking pool, so that a verify or rebuild in a
/// serving process does not hold up the requests sharing its threads.
pub(crate) async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}
