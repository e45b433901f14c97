//! At-most-once: each event's offset is committed before it is handled, so a crash never
//! handles an event twice (and may lose the events in flight).

use super::next_work;
use crate::engine::dispatcher::{Dispatcher, Work};
use crate::engine::reader::Reader;
use crate::kafka;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Reads, commits and dispatches until cancelled.
pub async fn read(reader: &Reader<'_>, dispatcher: &Arc<Dispatcher>, permits: &Arc<Semaphore>) {
    while let Some(work) = next_work(reader, permits).await {
        if commit_before_handling(reader, &work).await {
            dispatcher.submit(work);
        }
    }
}

/// Commits the event's offset before it is handled, retrying until the commit succeeds (an
/// event is never handled uncommitted). `false` if the binding is cancelled first: the event
/// is then not handled here.
async fn commit_before_handling(reader: &Reader<'_>, work: &Work) -> bool {
    let partition = (work.origin.topic.clone(), work.origin.partition);
    let offsets = [(partition, work.origin.offset + 1)];
    let mut delay = Duration::from_millis(100);
    loop {
        let consumer = reader.consumer.clone();
        let offsets = offsets.clone();
        // A synchronous commit waits for the broker: not on an async worker.
        let committed = tokio::task::spawn_blocking(move || kafka::commit(consumer.as_ref(), &offsets)).await;
        match committed {
            Ok(Ok(())) => return true,
            Ok(Err(error)) => tracing::warn!(binding = %reader.name, %error, offset = work.origin.offset,
                "Cannot commit before handling; retrying."),
            Err(error) => tracing::warn!(binding = %reader.name, %error, "Commit did not run; retrying."),
        }
        tokio::select! {
            () = reader.cancel.cancelled() => return false,
            () = tokio::time::sleep(delay) => delay = (delay * 2).min(Duration::from_secs(10)),
        }
    }
}
