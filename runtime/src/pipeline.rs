//! Wires the configuration into running bindings and runs them until shutdown.
//!
//! Start-up loads everything first — the sandbox, a resolver per data source, every handler
//! component — and reports every problem at once, before any event is consumed. Then each binding
//! consumes in its own task: read (while under its in-flight limit) → envelope → dispatch. On
//! shutdown each binding stops reading, lets in-flight events finish within the drain timeout,
//! and commits the offsets it stored.

use crate::audit::{Audit, Origin, Outcome};
use crate::config::{BindingSettings, Delivery, Problem, Settings};
use crate::dispatch::{Binding, Dispatcher, HandlerSlot, PauseGate, Work};
use crate::envelope;
use crate::kafka::{self, BindingConsumer, OffsetTracker};
use crate::receipt::Receipts;
use crate::resolve::{Backoff, Resolver};
use crate::sandbox::{HandlerIdentity, Sandbox};
use crate::telemetry::{self, BindingLabels, InFlight};
use rdkafka::Message;
use rdkafka::consumer::Consumer as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Why the pipeline could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Something configured could not be loaded; every problem is listed.
    #[error("cannot start: {} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  {}: {}", p.path, p.message)).collect::<Vec<_>>().join("\n"))]
    Start(Vec<Problem>),
    /// Every binding stopped because a failure policy said so.
    #[error("every binding stopped on a failure (on_failure = \"stop\"); see the log")]
    Stopped,
    /// A binding's consumer failed.
    #[error("binding {binding}: {message}")]
    Binding {
        /// The binding.
        binding: String,
        /// What failed.
        message: String,
    },
}

/// Runs every configured binding until `shutdown` completes, then drains and commits.
/// Outcomes also go to `tap` when given (tests, the demo).
pub async fn run(
    settings: Settings,
    tap: Option<mpsc::Sender<Outcome>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PipelineError> {
    // The metrics macros record nothing until a recorder is installed.
    telemetry::prometheus();
    let bindings = start(&settings, tap)?;
    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (binding, consumer, tracker) in bindings {
        let cancel = cancel.clone();
        let drain = settings.drain_timeout;
        tasks.spawn(async move { consume(binding, consumer, tracker, cancel, drain).await });
    }
    tracing::info!(bindings = tasks.len(), "keyhole is running.");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("Shutting down: draining in-flight events.");
                break;
            }
            Some(ended) = tasks.join_next() => match ended {
                // A binding its failure policy stopped: the others go on.
                Ok(Err(PipelineError::Stopped)) if !tasks.is_empty() => continue,
                Ok(Err(PipelineError::Stopped)) => return Err(PipelineError::Stopped),
                // A binding that ends on its own failed; stop the others too.
                ended => {
                    cancel.cancel();
                    while tasks.join_next().await.is_some() {}
                    return match ended {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(error)) => Err(error),
                        Err(join) => Err(PipelineError::Binding { binding: "?".into(), message: join.to_string() }),
                    };
                }
            },
            else => return Err(PipelineError::Stopped),
        }
    }
    cancel.cancel();
    let mut result = Ok(());
    while let Some(ended) = tasks.join_next().await {
        match ended {
            Ok(Ok(()) | Err(PipelineError::Stopped)) => {}
            Ok(Err(error)) => result = Err(error),
            Err(join) => {
                result = Err(PipelineError::Binding { binding: "?".into(), message: join.to_string() })
            }
        }
    }
    result
}

type Started = Vec<(Arc<Binding>, Arc<BindingConsumer>, Arc<OffsetTracker>)>;

/// Loads everything and creates the consumers; every problem is reported at once.
fn start(settings: &Settings, tap: Option<mpsc::Sender<Outcome>>) -> Result<Started, PipelineError> {
    let mut problems = Vec::new();
    let problem = |path: String, message: String| Problem { path, message };
    let sandbox = Sandbox::new(&settings.sandbox)
        .map_err(|e| PipelineError::Start(vec![problem("sandbox".into(), e.to_string())]))?;
    let resolvers: Vec<Option<Arc<Resolver>>> = settings
        .data_sources
        .iter()
        .enumerate()
        .map(|(i, source)| match Resolver::new(source.clone()) {
            Ok(resolver) => Some(Arc::new(resolver)),
            Err(e) => {
                problems.push(problem(format!("data_source[{i}]"), e.to_string()));
                None
            }
        })
        .collect();
    let audit = match Audit::new(settings.audit_path.as_deref(), tap) {
        Ok(audit) => Some(Arc::new(audit)),
        Err(e) => {
            let path = settings.audit_path.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
            problems.push(problem("audit.path".into(), format!("cannot open {path}: {e}")));
            None
        }
    };
    let receipts = match Receipts::open(&settings.receipts) {
        Ok(receipts) => Some(Arc::new(receipts)),
        Err(e) => {
            problems.push(problem("receipts.path".into(), e.to_string()));
            None
        }
    };
    let shared = match kafka::producer::shared(&settings.kafka) {
        Ok(producer) => Some(Arc::new(producer)),
        Err(e) => {
            problems.push(problem("kafka".into(), format!("cannot create the producer: {e}")));
            None
        }
    };
    let mut started = Vec::new();
    for binding_config in &settings.bindings {
        let at = |key: &str| format!("{}.{key}", binding_config.key_path);
        let handler = std::fs::read(&binding_config.component)
            .map_err(|e| format!("cannot read {}: {e}", binding_config.component.display()))
            .and_then(|wasm| {
                let identity = HandlerIdentity {
                    tenant: binding_config.tenant.clone(),
                    handler: binding_config.handler.clone(),
                };
                sandbox
                    .load(identity, &wasm, binding_config.limits.clone())
                    .map_err(|e| format!("{} refused: {e}", binding_config.component.display()))
            });
        let handler = match handler {
            Ok(handler) => handler.with_output(binding_config.guest_output),
            Err(message) => {
                problems.push(problem(at("component"), message));
                continue;
            }
        };
        let (Some(resolver), Some(audit), Some(receipts), Some(shared)) = (
            resolvers.get(binding_config.data_source).cloned().flatten(),
            audit.clone(),
            receipts.clone(),
            shared.clone(),
        ) else {
            continue;
        };
        let producer = match binding_config.delivery {
            Delivery::ExactlyOnce => {
                let id = format!("{}.{}", binding_config.group_id, settings.kafka.instance_id);
                match kafka::producer::transactional(&settings.kafka, &id) {
                    Ok(producer) => Arc::new(producer),
                    Err(e) => {
                        problems.push(problem(
                            at("delivery"),
                            format!("exactly-once needs Kafka transactions, which failed to start: {e}"),
                        ));
                        continue;
                    }
                }
            }
            Delivery::AtLeastOnce | Delivery::AtMostOnce => shared,
        };
        let tracker = Arc::new(OffsetTracker::default());
        let consumer = match kafka::consumer(
            &settings.kafka,
            &binding_config.group_id,
            &binding_config.topics,
            tracker.clone(),
            settings.drain_timeout,
            binding_config.delivery,
            BindingLabels::new(&binding_config.name, &binding_config.tenant),
        ) {
            Ok(consumer) => Arc::new(consumer),
            Err(e) => {
                problems.push(problem(at("topics"), format!("cannot create the Kafka consumer: {e}")));
                continue;
            }
        };
        let binding = Arc::new(Binding {
            settings: binding_config.clone(),
            handler: HandlerSlot::new(handler),
            base_url: resolver_base(settings, binding_config),
            resolver,
            backoff: backoff(binding_config),
            gate: PauseGate::default(),
            audit,
            receipts,
            producer,
        });
        started.push((binding, consumer, tracker));
    }
    if problems.is_empty() { Ok(started) } else { Err(PipelineError::Start(problems)) }
}

fn resolver_base(settings: &Settings, binding: &BindingSettings) -> url::Url {
    settings.data_sources[binding.data_source].base_url.clone()
}

fn backoff(binding: &BindingSettings) -> Backoff {
    Backoff {
        initial: Duration::from_millis(binding.retry.initial_backoff_ms),
        max: Duration::from_millis(binding.retry.max_backoff_ms),
        ..Backoff::default()
    }
}

/// One binding's read loop, then its drain.
async fn consume(
    binding: Arc<Binding>,
    consumer: Arc<BindingConsumer>,
    tracker: Arc<OffsetTracker>,
    cancel: CancellationToken,
    drain_timeout: Duration,
) -> Result<(), PipelineError> {
    let name = binding.settings.name.clone();
    let delivery = binding.settings.delivery;
    let limit = binding.settings.max_in_flight;
    let permits = Arc::new(Semaphore::new(limit));
    // The binding's own token: a failure policy may stop this binding alone.
    let cancel = cancel.child_token();
    let dispatcher = Dispatcher::new(binding.clone(), consumer.clone(), tracker.clone(), cancel.clone());
    let reader = Reader {
        name: &name,
        labels: binding.labels(),
        consumer: &consumer,
        tracker: &tracker,
        cancel: &cancel,
    };
    if delivery == Delivery::ExactlyOnce {
        transactions(&binding, &reader, &dispatcher, &permits).await?;
    } else {
        loop {
            // Reading waits for a free permit: a full binding stops fetching.
            let permit = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let Some(work) = reader.next(permit).await else { break };
            if delivery == Delivery::AtMostOnce && !reader.commit_before_handling(&work).await {
                continue;
            }
            dispatcher.submit(work);
        }
    }
    // Every permit back means every event finished (or was abandoned for redelivery).
    let all = u32::try_from(limit).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain_timeout, permits.acquire_many(all)).await.is_err() {
        tracing::warn!(binding = %name, in_flight = tracker.in_flight(), "Drain timeout passed; unfinished events will be redelivered.");
    }
    if delivery == Delivery::AtLeastOnce {
        commit_stored(&name, &consumer, &tracker).await;
    }
    if dispatcher.stopped() {
        tracing::error!(binding = %name, "Binding stopped by its failure policy; the other bindings go on.");
        return Err(PipelineError::Stopped);
    }
    tracing::info!(binding = %name, "Binding stopped.");
    Ok(())
}

/// Reads a binding's records into [`Work`].
struct Reader<'a> {
    name: &'a str,
    /// The binding's metric labels.
    labels: BindingLabels,
    consumer: &'a Arc<BindingConsumer>,
    tracker: &'a OffsetTracker,
    cancel: &'a CancellationToken,
}

impl Reader<'_> {
    /// The next record as work holding `permit`; `None` once the binding is cancelled.
    async fn next(&self, permit: OwnedSemaphorePermit) -> Option<Work> {
        loop {
            let message = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return None,
                message = self.consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => {
                    metrics::counter!(telemetry::EVENTS_CONSUMED, self.labels.labels()).increment(1);
                    message
                }
                Err(error) => {
                    tracing::warn!(binding = %self.name, %error, "Kafka consumer error.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let origin = Origin {
                topic: message.topic().to_string(),
                partition: message.partition(),
                offset: message.offset(),
            };
            let Some(ticket) = self.tracker.begin((origin.topic.clone(), origin.partition), origin.offset)
            else {
                continue; // Its partition was revoked meanwhile: its next owner reads it.
            };
            let record = kafka::raw_record(&message);
            let event = envelope::parse(&record);
            if let Err(error) = &event {
                tracing::warn!(binding = %self.name, topic = %origin.topic, partition = origin.partition,
                    offset = origin.offset, reason = %error, "Event refused.");
            }
            let received = kafka::Received::copy(&record, message.timestamp().to_millis());
            let in_flight = InFlight::start(&self.labels);
            return Some(Work { ticket, origin, received, event, permit, in_flight });
        }
    }

    /// At-most-once: commits the event's offset before it is handled, retrying until the
    /// commit succeeds (an event is never handled uncommitted). `false` if the binding is
    /// cancelled first: the event is then not handled here.
    async fn commit_before_handling(&self, work: &Work) -> bool {
        let partition = (work.origin.topic.clone(), work.origin.partition);
        let offsets = [(partition, work.origin.offset + 1)];
        let consumer = self.consumer.as_ref();
        let mut delay = Duration::from_millis(100);
        loop {
            match tokio::task::block_in_place(|| kafka::commit(consumer, &offsets)) {
                Ok(()) => return true,
                Err(error) => tracing::warn!(binding = %self.name, %error, offset = work.origin.offset,
                    "Cannot commit before handling; retrying."),
            }
            tokio::select! {
                () = self.cancel.cancelled() => return false,
                () = tokio::time::sleep(delay) => delay = (delay * 2).min(Duration::from_secs(10)),
            }
        }
    }
}

/// Exactly-once: reads a batch (up to the in-flight limit, as much as is ready), handles it in
/// one transaction with its replies and dead letters, and commits the batch's offsets in that
/// transaction. A batch that cannot be finished is aborted and read again.
async fn transactions(
    binding: &Arc<Binding>,
    reader: &Reader<'_>,
    dispatcher: &Arc<Dispatcher>,
    permits: &Arc<Semaphore>,
) -> Result<(), PipelineError> {
    let name = reader.name;
    let producer = binding.producer.clone();
    let failed = |message: String| PipelineError::Binding { binding: name.to_string(), message };
    'batches: loop {
        let mut batch = Vec::new();
        while batch.len() < binding.settings.max_in_flight {
            let Ok(permit) = permits.clone().try_acquire_owned() else { break };
            let work = if batch.is_empty() {
                reader.next(permit).await
            } else {
                // Take what is already there; do not wait to fill the batch.
                tokio::time::timeout(BATCH_LINGER, reader.next(permit)).await.ok().flatten()
            };
            match work {
                Some(work) => batch.push(work),
                None => break,
            }
        }
        if batch.is_empty() {
            break 'batches;
        }
        let mut first: Vec<((String, i32), i64)> = Vec::new();
        let mut positions: Vec<((String, i32), i64)> = Vec::new();
        for work in &batch {
            let partition = (work.origin.topic.clone(), work.origin.partition);
            match positions.iter_mut().find(|(p, _)| *p == partition) {
                Some((_, next)) => *next = (*next).max(work.origin.offset + 1),
                None => {
                    positions.push((partition.clone(), work.origin.offset + 1));
                    first.push((partition, work.origin.offset));
                }
            }
        }
        tokio::task::block_in_place(|| kafka::producer::begin(&producer))
            .map_err(|e| failed(format!("cannot begin a transaction: {e}")))?;
        dispatcher.take_abandoned();
        for work in batch {
            dispatcher.submit(work);
        }
        let all = u32::try_from(binding.settings.max_in_flight).unwrap_or(u32::MAX);
        drop(permits.acquire_many(all).await);
        let consumer = reader.consumer.as_ref();
        let committed = if dispatcher.take_abandoned() > 0 {
            Err("interrupted".to_string())
        } else {
            tokio::task::block_in_place(|| kafka::producer::commit(&producer, consumer, &positions)).map_err(
                |error| {
                    if error.is_fatal() {
                        tracing::error!(binding = %name, %error, "Transaction failed for good.");
                    }
                    error.to_string()
                },
            )
        };
        let Err(why) = committed else {
            tracing::debug!(binding = %name, offsets = ?positions, "Transaction committed.");
            continue;
        };
        tracing::warn!(binding = %name, reason = %why, "Transaction aborted; its events are read again.");
        tokio::task::block_in_place(|| kafka::producer::abort(&producer))
            .map_err(|e| failed(format!("cannot abort a transaction: {e}")))?;
        if reader.cancel.is_cancelled() {
            break 'batches;
        }
        // Read the batch again: back to its first offsets, with fresh offset tracking.
        reader.tracker.assign(first.iter().map(|(partition, _)| partition.clone()));
        for ((topic, partition), offset) in &first {
            tokio::task::block_in_place(|| {
                consumer.seek(topic, *partition, rdkafka::Offset::Offset(*offset), Duration::from_secs(10))
            })
            .map_err(|e| failed(format!("cannot rewind {topic}[{partition}] after an abort: {e}")))?;
        }
    }
    Ok(())
}

/// How long an exactly-once batch waits for more records once it has one.
const BATCH_LINGER: Duration = Duration::from_millis(5);

/// Commits the offsets a binding stored (at-least-once), on its way out.
async fn commit_stored(name: &str, consumer: &Arc<BindingConsumer>, tracker: &OffsetTracker) {
    let stored = tracker.stored();
    tracing::info!(binding = %name, offsets = ?stored, "Committing stored offsets.");
    let consumer = consumer.clone();
    match tokio::task::spawn_blocking(move || kafka::commit(consumer.as_ref(), &stored)).await {
        Ok(Ok(())) => tracing::info!(binding = %name, "Offsets committed."),
        Ok(Err(error)) => {
            tracing::warn!(binding = %name, %error, "Final commit failed; the last events may be redelivered.")
        }
        Err(error) => tracing::warn!(binding = %name, %error, "Final commit did not run."),
    }
}
