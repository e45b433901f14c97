//! At-most-once: a batch's offsets are committed before any of its events is handled, so a
//! crash never handles an event twice (and may lose the events of the batch in flight). One
//! synchronous commit per batch rather than per event: a batch is what is ready when the
//! binding has room, up to its in-flight limit.

use super::{bounds, read_batch};
use crate::engine::dispatcher::Dispatcher;
use crate::engine::reader::Reader;
use crate::kafka::{self, TopicPartition};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Reads, commits and dispatches batches until cancelled.
pub async fn read(reader: &Reader<'_>, dispatcher: &Arc<Dispatcher>, permits: &Arc<Semaphore>, max: usize) {
    loop {
        let batch = read_batch(reader, permits, max).await;
        if batch.is_empty() {
            return;
        }
        let (_, next) = bounds(&batch);
        if !commit_before_handling(reader, next).await {
            // Cancelled before the commit: none of the batch is handled here, and none holds
            // its partition's offset (they are read again by whoever owns it next).
            for work in batch {
                reader.tracker.abandon(work.ticket);
            }
            return;
        }
        for work in batch {
            dispatcher.submit(work);
        }
    }
}

/// Commits the batch's offsets before it is handled, retrying until the commit succeeds (an
/// event is never handled uncommitted). `false` if the binding is cancelled first.
async fn commit_before_handling(reader: &Reader<'_>, offsets: Vec<(TopicPartition, i64)>) -> bool {
    let mut delay = Duration::from_millis(100);
    loop {
        let (consumer, offsets) = (reader.consumer.clone(), offsets.clone());
        // A synchronous commit waits for the broker: not on an async worker.
        let committed = tokio::task::spawn_blocking(move || kafka::commit(consumer.as_ref(), &offsets)).await;
        match committed {
            Ok(Ok(())) => return true,
            Ok(Err(error)) => {
                tracing::warn!(binding = %reader.name, %error, "Cannot commit before handling; retrying.")
            }
            Err(error) => tracing::warn!(binding = %reader.name, %error, "Commit did not run; retrying."),
        }
        tokio::select! {
            () = reader.cancel.cancelled() => return false,
            () = tokio::time::sleep(delay) => delay = (delay * 2).min(Duration::from_secs(10)),
        }
    }
}
