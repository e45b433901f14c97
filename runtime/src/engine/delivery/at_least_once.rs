//! At-least-once: every event is handled before its offset may be committed.
//!
//! `enable.auto.commit=true` with `enable.auto.offset.store=false`: the dispatcher stores an
//! offset once its event and every earlier event of its partition are finished and recorded,
//! and librdkafka commits stored offsets in the background. At shutdown the stored offsets are
//! committed once more, within a bound: a broker that does not answer leaves the last events to
//! be redelivered rather than holding the process.

use super::next_work;
use crate::engine::dispatcher::Dispatcher;
use crate::engine::reader::Reader;
use crate::kafka::{self, BindingConsumer, OffsetTracker};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Reads and dispatches until cancelled.
pub async fn read(reader: &Reader<'_>, dispatcher: &Arc<Dispatcher>, permits: &Arc<Semaphore>) {
    while let Some(work) = next_work(reader, permits).await {
        dispatcher.submit(work);
    }
}

/// Commits the offsets a binding stored, on its way out, waiting at most `timeout`.
pub async fn commit_stored(
    name: &str,
    consumer: &Arc<BindingConsumer>,
    tracker: &OffsetTracker,
    timeout: Duration,
) {
    let stored = tracker.stored();
    tracing::info!(binding = %name, offsets = ?stored, "Committing stored offsets.");
    let consumer = consumer.clone();
    // A synchronous commit blocks until the coordinator answers, which a broker that is down
    // never does: it runs on a blocking thread, and is left behind when the bound passes.
    let commit = tokio::task::spawn_blocking(move || kafka::commit(consumer.as_ref(), &stored));
    match tokio::time::timeout(timeout, commit).await {
        Ok(Ok(Ok(()))) => tracing::info!(binding = %name, "Offsets committed."),
        Ok(Ok(Err(error))) => {
            tracing::warn!(binding = %name, %error, "Final commit failed; the last events may be redelivered.")
        }
        Ok(Err(error)) => tracing::warn!(binding = %name, %error, "Final commit did not run."),
        Err(_) => tracing::warn!(binding = %name, timeout_ms = timeout.as_millis() as u64,
            "Final commit did not finish within shutdown.commit_timeout_ms; the last events may be redelivered."),
    }
}
