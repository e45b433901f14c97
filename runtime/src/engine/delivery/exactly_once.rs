//! Exactly-once: reads a batch (up to the in-flight limit, as much as is ready), handles it in
//! one transaction with its replies, dead letters and receipts, and commits the batch's offsets
//! in that transaction. A batch that cannot be finished is aborted and read again, with consent
//! asked again.

use super::{BindingError, KafkaCallError, Limits, bounds, read_batch};
use crate::engine::binding::Binding;
use crate::engine::dispatcher::Dispatcher;
use crate::engine::reader::Reader;
use crate::kafka::{self, TopicPartition};
use rdkafka::consumer::Consumer as _;
use rdkafka::producer::FutureProducer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Reads and handles batches in transactions until cancelled. At shutdown a batch under way gets
/// the drain's time (`limits.drain`) to finish, and its abort the commit's (`limits.commit`):
/// a broker that went away cannot hold the process.
pub async fn read(
    binding: &Arc<Binding>,
    reader: &Reader<'_>,
    dispatcher: &Arc<Dispatcher>,
    permits: &Arc<Semaphore>,
    limits: Limits,
) -> Result<(), BindingError> {
    let (name, producer) = (reader.name, &binding.outputs.producer);
    loop {
        let batch = read_batch(reader, permits, binding.settings.max_in_flight).await;
        if batch.is_empty() {
            return Ok(());
        }
        let (first, positions) = bounds(&batch);
        blocking(producer, kafka::producer::begin)
            .await
            .map_err(|source| BindingError::Transaction { step: "begin", source })?;
        let finished = handle_batch(binding, reader, dispatcher, permits, batch, limits).await;
        let committed = match finished {
            Finished::Whole => commit(name, producer, reader, positions.clone()).await,
            Finished::Interrupted => Err(Unfinished::Interrupted),
        };
        let Err(why) = committed else {
            tracing::debug!(binding = %name, offsets = ?positions, "Transaction committed.");
            continue;
        };
        tracing::warn!(binding = %name, reason = %why, "Transaction aborted; its events are read again.");
        if reader.cancel.is_cancelled() {
            abort_at_shutdown(name, producer, limits).await;
            return Ok(());
        }
        blocking(producer, kafka::producer::abort)
            .await
            .map_err(|source| BindingError::Transaction { step: "abort", source })?;
        rewind(reader, first).await?;
    }
}

/// Why a batch's transaction is aborted.
#[derive(Debug, thiserror::Error)]
enum Unfinished {
    /// Shutdown cut the batch short, or one of its events was abandoned.
    #[error("interrupted")]
    Interrupted,
    /// The commit failed.
    #[error("the commit failed: {0}")]
    Commit(kafka::producer::TransactionError),
    /// The commit's blocking thread did not finish.
    #[error("the commit did not finish: {0}")]
    Thread(tokio::task::JoinError),
}

/// How a batch's handling ended.
enum Finished {
    /// Every event finished: the batch may be committed.
    Whole,
    /// Shutdown cut it short, or an event was abandoned: the batch is aborted.
    Interrupted,
}

/// Hands the batch to the dispatcher and waits until every event is finished, the producer is
/// fenced, or shutdown's drain time is up.
async fn handle_batch(
    binding: &Binding,
    reader: &Reader<'_>,
    dispatcher: &Arc<Dispatcher>,
    permits: &Arc<Semaphore>,
    batch: Vec<crate::engine::dispatcher::Work>,
    limits: Limits,
) -> Finished {
    dispatcher.take_abandoned();
    for work in batch {
        dispatcher.submit(work);
    }
    let all = u32::try_from(binding.settings.max_in_flight).unwrap_or(u32::MAX);
    let cut_short = tokio::select! {
        acquired = permits.acquire_many(all) => {
            drop(acquired);
            false
        }
        // Fenced meanwhile: the sends the batch waits on fail now rather than at their
        // timeout; its events are abandoned, the permits come back, and the batch is given up.
        never = fail_pending_once_fenced(reader.name, &binding.outputs.producer) => match never {},
        () = async {
            reader.cancel.cancelled().await;
            tokio::time::sleep(limits.drain).await;
        } => true,
    };
    if cut_short {
        // What still runs is dropped; the batch is aborted and read again.
        dispatcher.stop_now();
    }
    if cut_short || dispatcher.take_abandoned() > 0 { Finished::Interrupted } else { Finished::Whole }
}

/// Sends the batch's offsets to its transaction and commits it, on a blocking thread.
async fn commit(
    name: &str,
    producer: &Arc<FutureProducer>,
    reader: &Reader<'_>,
    positions: Vec<(TopicPartition, i64)>,
) -> Result<(), Unfinished> {
    let (producer, consumer) = (producer.clone(), reader.consumer.clone());
    tokio::task::spawn_blocking(move || kafka::producer::commit(&producer, consumer.as_ref(), &positions))
        .await
        .map_err(Unfinished::Thread)?
        .map_err(|error| {
            if error.is_fatal() {
                tracing::error!(binding = %name, %error, "Transaction failed for good.");
            }
            Unfinished::Commit(error)
        })
}

/// Shutting down: an abort the broker does not answer in time is left to the broker's
/// transaction timeout, or to the fencing of the next start with the same transactional id.
/// Nothing of the batch becomes visible either way.
async fn abort_at_shutdown(name: &str, producer: &Arc<FutureProducer>, limits: Limits) {
    match tokio::time::timeout(limits.commit, blocking(producer, kafka::producer::abort)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(binding = %name, %error, "Transaction not aborted at shutdown; its events are read again after a restart.");
        }
        Err(_) => {
            tracing::warn!(binding = %name, "Transaction not aborted within shutdown.commit_timeout_ms; its events are read again after a restart.");
        }
    }
}

/// Reads an aborted batch again: back to its first offsets, with fresh offset tracking.
async fn rewind(reader: &Reader<'_>, first: Vec<(TopicPartition, i64)>) -> Result<(), BindingError> {
    reader.tracker.assign(first.iter().map(|(partition, _)| partition.clone()));
    for (partition, offset) in first {
        let (consumer, at) = (reader.consumer.clone(), partition.clone());
        KafkaCallError::blocking(move || {
            consumer.seek(&at.topic, at.partition, rdkafka::Offset::Offset(offset), Duration::from_secs(10))
        })
        .await
        .map_err(|source| BindingError::Rewind { partition: partition.clone(), source })?;
        reader.rewound(partition, offset);
    }
    Ok(())
}

/// Watches the producer while a batch runs; once it has failed for good, fails its pending
/// sends (see [`kafka::producer::fail_pending`]) and waits forever.
async fn fail_pending_once_fenced(name: &str, producer: &FutureProducer) -> std::convert::Infallible {
    /// How often the producer's fatal state is read: a lock in librdkafka, nothing sent.
    const EVERY: Duration = Duration::from_millis(50);
    while !kafka::producer::failed_for_good(producer) {
        tokio::time::sleep(EVERY).await;
    }
    tracing::error!(binding = %name, "The transactional producer failed for good; failing its pending sends.");
    kafka::producer::fail_pending(producer);
    std::future::pending().await
}

/// A transactional producer call: it blocks until the broker answers, so it runs on a
/// blocking thread.
async fn blocking(
    producer: &Arc<FutureProducer>,
    call: fn(&FutureProducer) -> rdkafka::error::KafkaResult<()>,
) -> Result<(), KafkaCallError> {
    let producer = producer.clone();
    KafkaCallError::blocking(move || call(&producer)).await
}
