//! Wires the configuration into running bindings and runs them until shutdown.
//!
//! Start-up loads everything first — the sandbox, a resolver per data source, every handler
//! component — and reports every problem at once, before any event is consumed. Then each binding
//! consumes in its own task: read (while under its in-flight limit) → envelope → dispatch. On
//! shutdown each binding stops reading, lets in-flight events finish within the drain timeout,
//! and commits the offsets it stored.

use crate::audit::{Audit, Origin, Outcome};
use crate::config::{BindingSettings, Problem, Settings};
use crate::dispatch::{Binding, Dispatcher, PauseGate, Work};
use crate::envelope;
use crate::kafka::{self, BindingConsumer, OffsetTracker};
use crate::resolve::{Backoff, Resolver};
use crate::sandbox::{HandlerIdentity, Sandbox};
use rdkafka::Message;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// Why the pipeline could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Something configured could not be loaded; every problem is listed.
    #[error("cannot start: {} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  {}: {}", p.path, p.message)).collect::<Vec<_>>().join("\n"))]
    Start(Vec<Problem>),
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
    let bindings = start(&settings, tap)?;
    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (binding, consumer, tracker) in bindings {
        let cancel = cancel.clone();
        let drain = settings.drain_timeout;
        tasks.spawn(async move { consume(binding, consumer, tracker, cancel, drain).await });
    }
    tracing::info!(bindings = tasks.len(), "keyhole is running.");
    tokio::select! {
        () = shutdown => tracing::info!("Shutting down: draining in-flight events."),
        // A binding that ends on its own failed; stop the others too.
        Some(ended) = tasks.join_next() => {
            cancel.cancel();
            while tasks.join_next().await.is_some() {}
            return match ended {
                Ok(result) => result,
                Err(join) => Err(PipelineError::Binding { binding: "?".into(), message: join.to_string() }),
            };
        }
    }
    cancel.cancel();
    let mut result = Ok(());
    while let Some(ended) = tasks.join_next().await {
        match ended {
            Ok(Ok(())) => {}
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
    let replies = match kafka::reply::producer(&settings.kafka) {
        Ok(producer) => Some(Arc::new(producer)),
        Err(e) => {
            problems.push(problem("kafka".into(), format!("cannot create the reply producer: {e}")));
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
            Ok(handler) => handler,
            Err(message) => {
                problems.push(problem(at("component"), message));
                continue;
            }
        };
        let (Some(resolver), Some(audit), Some(replies)) =
            (resolvers.get(binding_config.data_source).cloned().flatten(), audit.clone(), replies.clone())
        else {
            continue;
        };
        let tracker = Arc::new(OffsetTracker::default());
        let consumer = match kafka::consumer(
            &settings.kafka,
            &binding_config.group_id,
            &binding_config.topics,
            tracker.clone(),
            settings.drain_timeout,
        ) {
            Ok(consumer) => Arc::new(consumer),
            Err(e) => {
                problems.push(problem(at("topics"), format!("cannot create the Kafka consumer: {e}")));
                continue;
            }
        };
        let binding = Arc::new(Binding {
            settings: binding_config.clone(),
            handler,
            base_url: resolver_base(settings, binding_config),
            resolver,
            backoff: backoff(binding_config),
            gate: PauseGate::default(),
            audit,
            replies,
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
    let limit = binding.settings.max_in_flight;
    let permits = Arc::new(Semaphore::new(limit));
    let dispatcher = Dispatcher::new(binding, consumer.clone(), tracker.clone(), cancel.clone());
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
        let message = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(binding = %name, %error, "Kafka consumer error.");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let origin = Origin {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
        };
        let Some(ticket) = tracker.begin((origin.topic.clone(), origin.partition), origin.offset) else {
            continue; // Its partition was revoked meanwhile: its next owner reads it.
        };
        let event = envelope::parse(&kafka::raw_record(&message));
        if let Err(error) = &event {
            tracing::warn!(binding = %name, topic = %origin.topic, partition = origin.partition, offset = origin.offset,
                reason = %error, "Event refused.");
        }
        let key = message.key().map(<[u8]>::to_vec);
        dispatcher.submit(Work { ticket, origin, key, event, permit });
    }
    // Every permit back means every event finished (or was abandoned for redelivery).
    let all = u32::try_from(limit).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain_timeout, permits.acquire_many(all)).await.is_err() {
        tracing::warn!(binding = %name, in_flight = tracker.in_flight(), "Drain timeout passed; unfinished events will be redelivered.");
    }
    let stored = tracker.stored();
    tracing::info!(binding = %name, offsets = ?stored, "Committing stored offsets.");
    let consumer_for_commit = consumer.clone();
    let committed =
        tokio::task::spawn_blocking(move || kafka::commit(consumer_for_commit.as_ref(), &stored)).await;
    match committed {
        Ok(Ok(())) => tracing::info!(binding = %name, "Offsets committed; binding stopped."),
        Ok(Err(error)) => {
            tracing::warn!(binding = %name, %error, "Final commit failed; the last events may be redelivered.")
        }
        Err(error) => tracing::warn!(binding = %name, %error, "Final commit did not run."),
    }
    Ok(())
}
