//! The three delivery modes, each a read loop of its own: how an event is acknowledged is the
//! one thing they differ in.
//!
//! - [`at_least_once`] (the default): an offset is stored once its event and every earlier one
//!   of its partition are finished and recorded; librdkafka commits stored offsets in the
//!   background, and the last ones at shutdown within `shutdown.commit_timeout_ms`.
//! - [`at_most_once`]: each offset is committed before its event is handled.
//! - [`exactly_once`]: a batch's replies, dead letters, receipts and offsets go in one Kafka
//!   transaction.

pub mod at_least_once;
pub mod at_most_once;
pub mod exactly_once;

use super::binding::Binding;
use super::dispatcher::Dispatcher;
use super::reader::Reader;
use crate::config::Delivery;
use crate::kafka::{BindingConsumer, OffsetTracker};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Why a binding's read loop ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    /// A failure policy stopped the binding.
    #[error("stopped on a failure (on_failure = \"stop\"); see the log")]
    Stopped,
    /// The binding's consumer or producer failed.
    #[error("{0}")]
    Failed(String),
}

/// The time limits of a binding's shutdown.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long in-flight events may take to finish.
    pub drain: Duration,
    /// How long the final offset commit may take.
    pub commit: Duration,
}

/// Runs one binding's read loop in its delivery mode until `cancel`, then drains.
pub async fn run(
    binding: Arc<Binding>,
    consumer: Arc<BindingConsumer>,
    tracker: Arc<OffsetTracker>,
    cancel: CancellationToken,
    limits: Limits,
) -> Result<(), BindingError> {
    let name = binding.settings.name.clone();
    let delivery = binding.settings.delivery;
    let limit = binding.settings.max_in_flight;
    let permits = Arc::new(Semaphore::new(limit));
    // The binding's own token: a failure policy may stop this binding alone.
    let cancel = cancel.child_token();
    let store_offsets = delivery == Delivery::AtLeastOnce;
    let dispatcher =
        Dispatcher::new(binding.clone(), consumer.clone(), tracker.clone(), cancel.clone(), store_offsets);
    let reader = Reader {
        name: &name,
        labels: binding.labels(),
        consumer: &consumer,
        tracker: &tracker,
        cancel: &cancel,
    };
    match delivery {
        Delivery::AtLeastOnce => at_least_once::read(&reader, &dispatcher, &permits).await,
        Delivery::AtMostOnce => at_most_once::read(&reader, &dispatcher, &permits).await,
        Delivery::ExactlyOnce => exactly_once::read(&binding, &reader, &dispatcher, &permits).await?,
    }
    // Every permit back means every event finished (or was abandoned for redelivery).
    let all = u32::try_from(limit).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.drain, permits.acquire_many(all)).await.is_err() {
        tracing::warn!(binding = %name, in_flight = tracker.in_flight(), "Drain timeout passed; unfinished events will be redelivered.");
    }
    let stopped = dispatcher.stopped();
    drop(dispatcher);
    let deadline = tokio::time::Instant::now() + limits.commit;
    if delivery == Delivery::AtLeastOnce {
        at_least_once::commit_stored(&name, &consumer, &tracker, limits.commit).await;
    }
    close(&name, consumer, deadline).await;
    if stopped {
        tracing::error!(binding = %name, "Binding stopped by its failure policy; the other bindings go on.");
        return Err(BindingError::Stopped);
    }
    tracing::info!(binding = %name, "Binding stopped.");
    Ok(())
}

/// Closes the consumer by `deadline`. Closing leaves the group and commits what librdkafka
/// holds, which waits for the group's coordinator: on a blocking thread, and left behind when
/// the deadline passes (a broker that is down), so that shutdown stays bounded.
async fn close(name: &str, consumer: Arc<BindingConsumer>, deadline: tokio::time::Instant) {
    let closing = tokio::task::spawn_blocking(move || drop(consumer));
    if tokio::time::timeout_at(deadline, closing).await.is_err() {
        tracing::warn!(binding = %name, "The Kafka consumer did not close within shutdown.commit_timeout_ms; leaving it.");
    }
}

/// Reads while under the in-flight limit: a full binding stops fetching. `None` once cancelled.
async fn next_work(reader: &Reader<'_>, permits: &Arc<Semaphore>) -> Option<super::dispatcher::Work> {
    let permit = tokio::select! {
        biased;
        () = reader.cancel.cancelled() => return None,
        permit = permits.clone().acquire_owned() => permit.ok()?,
    };
    reader.next(permit).await
}
