//! The three delivery modes, each a read loop of its own: how an event is acknowledged is the
//! one thing they differ in.
//!
//! - [`at_least_once`] (the default): an offset is stored once its event and every earlier one
//!   of its partition are finished and recorded; librdkafka commits stored offsets in the
//!   background, and the last ones at shutdown within `shutdown.commit_timeout_ms`.
//! - [`at_most_once`]: a batch's offsets are committed before any of its events is handled.
//! - [`exactly_once`]: a batch's replies, dead letters, receipts and offsets go in one Kafka
//!   transaction.

pub(crate) mod at_least_once;
pub(crate) mod at_most_once;
pub(crate) mod exactly_once;

use super::binding::Binding;
use super::dispatcher::{Dispatcher, Work};
use super::reader::{Reader, Rewinds};
use crate::config::Delivery;
use crate::kafka::{BindingConsumer, OffsetTracker, Poller, TopicPartition};
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
    /// The thread that polls the binding's consumer could not be started.
    #[error("cannot start the consumer's polling thread: {0}")]
    Poller(#[source] std::io::Error),
    /// An exactly-once binding's transaction could not be begun or aborted: its producer is
    /// unusable (fenced, or failed for good).
    #[error("cannot {step} a transaction: {source}")]
    Transaction {
        /// "begin" or "abort".
        step: &'static str,
        /// What the producer answered.
        #[source]
        source: KafkaCallError,
    },
    /// After an abort, the consumer could not go back to the batch's first offsets.
    #[error("cannot rewind {partition} after an abort: {source}")]
    Rewind {
        /// The partition.
        partition: TopicPartition,
        /// What the consumer answered.
        #[source]
        source: KafkaCallError,
    },
}

/// A librdkafka call that blocks until the broker answers, made on a blocking thread.
#[derive(Debug, thiserror::Error)]
pub enum KafkaCallError {
    /// The broker or the client refused.
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The blocking thread panicked or was cancelled at shutdown.
    #[error("the blocking call did not finish: {0}")]
    Thread(#[from] tokio::task::JoinError),
}

impl KafkaCallError {
    /// Runs `call` on a blocking thread.
    pub(crate) async fn blocking<T: Send + 'static>(
        call: impl FnOnce() -> rdkafka::error::KafkaResult<T> + Send + 'static,
    ) -> Result<T, KafkaCallError> {
        Ok(tokio::task::spawn_blocking(call).await??)
    }
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
    let poller = Poller::start(&name, consumer.clone()).map_err(BindingError::Poller)?;
    let rewinds = Rewinds::default();
    let reader = Reader {
        name: &name,
        metrics: &binding.metrics,
        consumer: &consumer,
        poller: &poller,
        rewinds: &rewinds,
        tracker: &tracker,
        cancel: &cancel,
    };
    match delivery {
        Delivery::AtLeastOnce => at_least_once::read(&reader, &dispatcher, &permits).await,
        Delivery::AtMostOnce => at_most_once::read(&reader, &dispatcher, &permits, limit).await,
        Delivery::ExactlyOnce => exactly_once::read(&binding, &reader, &dispatcher, &permits, limits).await?,
    }
    // Every permit back means every event finished (or was abandoned for redelivery).
    let all = u32::try_from(limit).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.drain, permits.acquire_many(all)).await.is_err() {
        tracing::warn!(binding = %name, in_flight = tracker.in_flight(), "Drain timeout passed; unfinished events will be redelivered.");
    }
    // Nothing may send or store after the final commit.
    dispatcher.stop_now();
    let stopped = dispatcher.stopped();
    drop(dispatcher);
    let deadline = tokio::time::Instant::now() + limits.commit;
    if delivery == Delivery::AtLeastOnce {
        at_least_once::commit_stored(&name, &consumer, &tracker, limits.commit).await;
    }
    close(&name, poller, consumer, deadline).await;
    if stopped {
        tracing::error!(binding = %name, "Binding stopped by its failure policy; the other bindings go on.");
        return Err(BindingError::Stopped);
    }
    tracing::info!(binding = %name, "Binding stopped.");
    Ok(())
}

/// Stops the polling thread and closes the consumer by `deadline`. Closing leaves the group and
/// commits what librdkafka holds, which waits for the group's coordinator: on a blocking thread,
/// and left behind when the deadline passes (a broker that is down), so that shutdown stays
/// bounded.
async fn close(name: &str, poller: Poller, consumer: Arc<BindingConsumer>, deadline: tokio::time::Instant) {
    let closing = tokio::task::spawn_blocking(move || {
        poller.stop();
        drop(consumer);
    });
    if tokio::time::timeout_at(deadline, closing).await.is_err() {
        tracing::warn!(binding = %name, "The Kafka consumer did not close within shutdown.commit_timeout_ms; leaving it.");
    }
}

/// How long a batch waits for more records once it has one.
const BATCH_LINGER: Duration = Duration::from_millis(5);

/// Reads a batch: up to `max` records (and free in-flight permits), as many as are ready once
/// the first has come, waiting at most [`BATCH_LINGER`] for each further one; then begins them
/// all (see [`Reader::begin`]), dropping any whose partition a rebalance took meanwhile. Empty
/// once the binding is cancelled.
async fn read_batch(reader: &Reader<'_>, permits: &Arc<Semaphore>, max: usize) -> Vec<Work> {
    let mut read = Vec::new();
    while read.len() < max {
        let permit = if read.is_empty() {
            tokio::select! {
                biased;
                () = reader.cancel.cancelled() => break,
                permit = permits.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            }
        } else {
            let Ok(permit) = permits.clone().try_acquire_owned() else { break };
            permit
        };
        let next = if read.is_empty() {
            reader.read(permit).await
        } else {
            // Take what is already there; do not wait to fill the batch.
            tokio::time::timeout(BATCH_LINGER, reader.read(permit)).await.ok().flatten()
        };
        match next {
            Some(record) => read.push(record),
            None => break,
        }
    }
    read.into_iter().filter_map(|record| reader.begin(record).ok()).collect()
}

/// An offset of each partition of a batch.
type Offsets = Vec<(TopicPartition, i64)>;

/// Per partition of a batch: its first offset (to rewind to) and the next offset to read (to
/// commit).
fn bounds(batch: &[Work]) -> (Offsets, Offsets) {
    partition_bounds(
        batch
            .iter()
            .map(|w| (TopicPartition::new(w.origin.topic.clone(), w.origin.partition), w.origin.offset)),
    )
}

/// [`bounds`] of `(partition, offset)` pairs.
fn partition_bounds(offsets: impl IntoIterator<Item = (TopicPartition, i64)>) -> (Offsets, Offsets) {
    let mut first: Offsets = Vec::new();
    let mut next: Offsets = Vec::new();
    for (partition, offset) in offsets {
        match next.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, n)) => *n = (*n).max(offset + 1),
            None => {
                next.push((partition.clone(), offset + 1));
                first.push((partition, offset));
            }
        }
    }
    (first, next)
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

#[cfg(test)]
mod tests {
    use super::partition_bounds;
    use crate::kafka::TopicPartition;

    #[test]
    fn a_batch_rewinds_to_its_first_offsets_and_commits_past_its_last() {
        let p = |n: i32| TopicPartition::new("t", n);
        let (first, next) = partition_bounds([(p(0), 5), (p(1), 9), (p(0), 7), (p(0), 6)]);
        assert_eq!(first, [(p(0), 5), (p(1), 9)]);
        assert_eq!(next, [(p(0), 8), (p(1), 10)]);
    }
}
