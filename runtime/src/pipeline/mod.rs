//! Wires the configuration into running bindings and runs them until shutdown.
//!
//! Start-up loads everything first — the sandbox, a resolver per data source, every handler
//! component — and reports every problem at once, before any event is consumed. Then each binding
//! consumes in its own task: read (while under its in-flight limit) → envelope → dispatch. On
//! shutdown each binding stops reading, lets in-flight events finish within the drain timeout,
//! and commits the offsets it stored.

mod registered;

pub use registered::Supervisor;

use crate::audit::{Audit, Origin, Outcome};
use crate::config::{BindingSettings, Delivery, Problem, Settings};
use crate::dispatch::{Binding, Dispatcher, HandlerSlot, PauseGate, Work};
use crate::envelope;
use crate::kafka::{self, BindingConsumer, OffsetTracker};
use crate::receipt::Receipts;
use crate::registry::{Catalog, Registry};
use crate::resolve::{Backoff, Resolver};
use crate::sandbox::{Handler, HandlerIdentity, LoadError, Sandbox};
use crate::telemetry::{self, BindingLabels, InFlight};
use rdkafka::Message;
use rdkafka::consumer::Consumer as _;
use rdkafka::producer::FutureProducer;
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

/// What a caller may add to a run besides the configuration.
#[derive(Default)]
pub struct Extras {
    /// Receives every outcome too (tests, the demo).
    pub tap: Option<mpsc::Sender<Outcome>>,
    /// The admin API's listener, already bound (tests bind port 0); without it, keyhole binds
    /// `admin.listen` when `[admin]` is configured.
    pub admin_listener: Option<tokio::net::TcpListener>,
}

/// Runs every configured binding until `shutdown` completes, then drains and commits.
/// Outcomes also go to `tap` when given (tests, the demo).
pub async fn run(
    settings: Settings,
    tap: Option<mpsc::Sender<Outcome>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PipelineError> {
    run_with(settings, Extras { tap, admin_listener: None }, shutdown).await
}

/// [`run`], with the admin API and the handlers uploaded to it when `[admin]` is configured.
pub async fn run_with(
    settings: Settings,
    extras: Extras,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PipelineError> {
    // The metrics macros record nothing until a recorder is installed.
    telemetry::prometheus();
    let host = Arc::new(Host::new(settings, extras.tap)?);
    let configured = host.start_configured()?;
    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (binding, consumer, tracker) in configured {
        let (host, cancel) = (host.clone(), cancel.clone());
        tasks.spawn(async move { host.consume(binding, consumer, tracker, cancel).await });
    }
    let supervisor = match &host.settings.admin {
        Some(admin) => Some(start_admin(&host, admin, extras.admin_listener, &cancel).await?),
        None => None,
    };
    tracing::info!(bindings = tasks.len(), admin = supervisor.is_some(), "keyhole is running.");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("Shutting down: draining in-flight events.");
                break;
            }
            Some(ended) = tasks.join_next(), if !tasks.is_empty() => match ended {
                // A binding its failure policy stopped: the others go on (and the admin API may
                // start more).
                Ok(Err(PipelineError::Stopped)) if !tasks.is_empty() || supervisor.is_some() => continue,
                Ok(Err(PipelineError::Stopped)) => return Err(PipelineError::Stopped),
                // A binding that ends on its own failed; stop the others too.
                ended => {
                    cancel.cancel();
                    while tasks.join_next().await.is_some() {}
                    if let Some(supervisor) = &supervisor {
                        supervisor.stop_all().await;
                    }
                    return match ended {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(error)) => Err(error),
                        Err(join) => Err(PipelineError::Binding { binding: "?".into(), message: join.to_string() }),
                    };
                }
            },
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
    if let Some(supervisor) = &supervisor {
        supervisor.stop_all().await;
    }
    result
}

/// Opens the registry, starts the handlers active in it, and serves the admin API until
/// `cancel`.
async fn start_admin(
    host: &Arc<Host>,
    admin: &crate::config::AdminSettings,
    listener: Option<tokio::net::TcpListener>,
    cancel: &CancellationToken,
) -> Result<Arc<Supervisor>, PipelineError> {
    let start_problem =
        |path: &str, message: String| PipelineError::Start(vec![Problem { path: path.into(), message }]);
    let catalog = Catalog {
        data_sources: host.settings.data_sources.iter().map(|s| s.name.clone()).collect(),
        configured: host.settings.bindings.iter().map(|b| (b.tenant.clone(), b.handler.clone())).collect(),
    };
    let registry = Registry::open(&admin.state_dir, catalog)
        .map_err(|e| start_problem("admin.state_dir", format!("{}: {e}", admin.state_dir.display())))?;
    let supervisor = Arc::new(Supervisor::new(host.clone(), Arc::new(registry), cancel.clone()));
    // Handlers that cannot start now are reported in their state; keyhole itself still starts,
    // so that their tenants can fix them through the API.
    if let Err(problems) = supervisor.reconcile().await {
        for (binding, problem) in problems {
            tracing::error!(binding = %binding, reason = %problem, "Uploaded handler cannot start.");
        }
    }
    let listener = match listener {
        Some(listener) => listener,
        None => tokio::net::TcpListener::bind(admin.listen)
            .await
            .map_err(|e| start_problem("admin.listen", format!("cannot listen on {}: {e}", admin.listen)))?,
    };
    let api = crate::admin::Api::new(supervisor.clone(), admin);
    let shutdown = cancel.clone();
    tokio::spawn(async move {
        if let Err(error) = crate::admin::serve(listener, api, shutdown.cancelled_owned()).await {
            tracing::error!(%error, "The admin API stopped.");
        }
    });
    Ok(supervisor)
}

/// A started binding: what its read loop needs.
pub(crate) type Started = (Arc<Binding>, Arc<BindingConsumer>, Arc<OffsetTracker>);

/// What every binding shares: the sandbox, the data sources' resolvers, the audit and the
/// producer, built once at start-up.
pub(crate) struct Host {
    pub(crate) settings: Settings,
    pub(crate) sandbox: Sandbox,
    resolvers: Vec<Option<Arc<Resolver>>>,
    audit: Arc<Audit>,
    /// Where access receipts go.
    receipts: Arc<Receipts>,
    /// Replies and dead letters of every binding that is not exactly-once.
    pub(crate) producer: Arc<FutureProducer>,
    /// What each binding is doing, by name, for `/readyz` and the admin API.
    pub(crate) health: Health,
}

impl Host {
    /// Loads everything shared; every problem is reported at once.
    fn new(settings: Settings, tap: Option<mpsc::Sender<Outcome>>) -> Result<Self, PipelineError> {
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
        let audit = Audit::new(settings.audit_path.as_deref(), tap).map_err(|e| {
            let path = settings.audit_path.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
            problem("audit.path".into(), format!("cannot open {path}: {e}"))
        });
        let receipts =
            Receipts::open(&settings.receipts).map_err(|e| problem("receipts.path".into(), e.to_string()));
        let producer = kafka::producer::shared(&settings.kafka)
            .map_err(|e| problem("kafka".into(), format!("cannot create the producer: {e}")));
        match (audit, receipts, producer) {
            (Ok(audit), Ok(receipts), Ok(producer)) if problems.is_empty() => Ok(Host {
                settings,
                sandbox,
                resolvers,
                audit: Arc::new(audit),
                receipts: Arc::new(receipts),
                producer: Arc::new(producer),
                health: Health::default(),
            }),
            (audit, receipts, producer) => {
                problems.extend(audit.err());
                problems.extend(receipts.err());
                problems.extend(producer.err());
                Err(PipelineError::Start(problems))
            }
        }
    }

    /// Loads the configuration file's handlers and creates their consumers.
    fn start_configured(&self) -> Result<Vec<Started>, PipelineError> {
        let mut problems = Vec::new();
        let mut started = Vec::new();
        for binding in &self.settings.bindings {
            let handler = std::fs::read(&binding.component)
                .map_err(|e| format!("cannot read {}: {e}", binding.component.display()))
                .and_then(|wasm| {
                    self.load(binding, &wasm)
                        .map_err(|e| format!("{} refused: {e}", binding.component.display()))
                });
            let result =
                handler.map_err(|m| ("component", m)).and_then(|handler| self.bind(binding, handler));
            match result {
                Ok(binding) => started.push(binding),
                Err((key, message)) => {
                    problems.push(Problem { path: format!("{}.{key}", binding.key_path), message })
                }
            }
        }
        if problems.is_empty() { Ok(started) } else { Err(PipelineError::Start(problems)) }
    }

    /// Compiles and validates a binding's handler component.
    pub(crate) fn load(&self, binding: &BindingSettings, wasm: &[u8]) -> Result<Handler, LoadError> {
        let identity = HandlerIdentity { tenant: binding.tenant.clone(), handler: binding.handler.clone() };
        Ok(self.sandbox.load(identity, wasm, binding.limits.clone())?.with_output(binding.guest_output))
    }

    /// Creates a binding's producer and consumer around its loaded handler. On failure, the
    /// configuration key at fault and why.
    pub(crate) fn bind(
        &self,
        settings: &BindingSettings,
        handler: Handler,
    ) -> Result<Started, (&'static str, String)> {
        let resolver = self
            .resolvers
            .get(settings.data_source)
            .cloned()
            .flatten()
            .ok_or(("data_source", "the data source is not available".to_string()))?;
        let producer = match settings.delivery {
            Delivery::ExactlyOnce => {
                let id = format!("{}.{}", settings.group_id, self.settings.kafka.instance_id);
                let producer = kafka::producer::transactional(&self.settings.kafka, &id).map_err(|e| {
                    ("delivery", format!("exactly-once needs Kafka transactions, which failed to start: {e}"))
                })?;
                Arc::new(producer)
            }
            Delivery::AtLeastOnce | Delivery::AtMostOnce => self.producer.clone(),
        };
        let tracker = Arc::new(OffsetTracker::default());
        let consumer = kafka::consumer(
            &self.settings.kafka,
            &settings.group_id,
            &settings.topics,
            tracker.clone(),
            self.settings.drain_timeout,
            settings.delivery,
            BindingLabels::new(&settings.name, &settings.tenant),
        )
        .map_err(|e| ("topics", format!("cannot create the Kafka consumer: {e}")))?;
        let binding = Arc::new(Binding {
            settings: settings.clone(),
            handler: HandlerSlot::new(handler),
            base_url: self.settings.data_sources[settings.data_source].base_url.clone(),
            resolver,
            backoff: backoff(settings),
            gate: PauseGate::default(),
            audit: self.audit.clone(),
            receipts: self.receipts.clone(),
            producer,
        });
        Ok((binding, Arc::new(consumer), tracker))
    }

    /// Runs a binding's read loop, keeping its state in [`Host::health`].
    pub(crate) async fn consume(
        &self,
        binding: Arc<Binding>,
        consumer: Arc<BindingConsumer>,
        tracker: Arc<OffsetTracker>,
        cancel: CancellationToken,
    ) -> Result<(), PipelineError> {
        let name = binding.settings.name.clone();
        self.health.set(&name, BindingState::Running);
        let result = consume(binding, consumer, tracker, cancel, self.settings.drain_timeout).await;
        match &result {
            Ok(()) => self.health.set(&name, BindingState::Finished),
            Err(PipelineError::Stopped) => self.health.set(&name, BindingState::Stopped),
            Err(error) => self.health.set(&name, BindingState::Failed(error.to_string())),
        }
        result
    }

    /// Whether the broker answers, within `timeout`.
    pub(crate) async fn broker_reachable(&self, timeout: Duration) -> Result<(), String> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            rdkafka::producer::Producer::client(producer.as_ref())
                .fetch_metadata(None, timeout)
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// What a binding is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindingState {
    /// Consuming.
    Running,
    /// Uploaded, but no version is active.
    Inactive,
    /// Its spec asks for more than its tenant's grant allows (the grant changed); not running.
    NotGranted(String),
    /// A failure policy stopped it.
    Stopped,
    /// It could not start or its consumer failed.
    Failed(String),
    /// It ended at shutdown or was replaced.
    Finished,
}

impl BindingState {
    /// The state's name in the admin API.
    pub fn label(&self) -> &'static str {
        match self {
            BindingState::Running => "running",
            BindingState::Inactive => "inactive",
            BindingState::NotGranted(_) => "not_granted",
            BindingState::Stopped => "stopped",
            BindingState::Failed(_) => "failed",
            BindingState::Finished => "finished",
        }
    }
}

/// Every binding's state, by name (`tenant/handler`).
#[derive(Default)]
pub struct Health(std::sync::Mutex<std::collections::BTreeMap<String, BindingState>>);

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, BindingState>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn set(&self, binding: &str, state: BindingState) {
        self.lock().insert(binding.to_string(), state);
    }

    pub(crate) fn remove(&self, binding: &str) {
        self.lock().remove(binding);
    }

    /// A binding's state, if keyhole knows it.
    pub fn get(&self, binding: &str) -> Option<BindingState> {
        self.lock().get(binding).cloned()
    }

    /// The bindings that should run but do not.
    pub fn unhealthy(&self) -> Vec<(String, BindingState)> {
        self.lock()
            .iter()
            .filter(|(_, state)| matches!(state, BindingState::Stopped | BindingState::Failed(_)))
            .map(|(name, state)| (name.clone(), state.clone()))
            .collect()
    }
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
