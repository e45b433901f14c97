//! The engine: every binding's events from Kafka through resolve and sandbox to their reply or
//! dead letter and their acknowledgement.
//!
//! - [`Engine`] (here) holds what every binding shares — the sandbox, a resolver per data
//!   source, the audit, the receipts, the producer, the bindings' health — built once at start,
//!   with every problem reported at once; it makes bindings and runs their read loops.
//! - [`binding`]: a running binding and its swappable handler version.
//! - [`reader`] → [`dispatcher`] (with [`ordering`]) → [`event`] (with [`decide`], [`pause`]) →
//!   [`outputs`]: one event's way.
//! - [`delivery`]: the read loop of each delivery mode, and the drain.
//! - [`supervisor`]: runs the handlers uploaded to the registry and follows its changes.
//! - [`health`]: what each binding is doing.

pub(crate) mod binding;
pub(crate) mod decide;
pub(crate) mod delivery;
pub(crate) mod dispatcher;
pub(crate) mod event;
pub(crate) mod health;
pub(crate) mod ordering;
pub(crate) mod outputs;
pub(crate) mod pause;
pub(crate) mod reader;
pub(crate) mod supervisor;

pub use binding::{Binding, HandlerSlot};
use binding::{Outputs, OwnerAccess};
pub use delivery::BindingError;
pub use health::{BindingState, Health, Reachability};
pub use supervisor::Supervisor;

use crate::config::{BindingSettings, Delivery, Problem, Settings};
use crate::kafka::{self, BindingConsumer, OffsetTracker};
use crate::model::names;
use crate::records::audit::{Audit, Outcome};
use crate::records::receipt::Receipts;
use crate::resolve::{Backoff, Resolver};
use crate::sandbox::{Handler, HandlerIdentity, LoadError, Sandbox};
use crate::telemetry::{BindingLabels, BindingMetrics};
use pause::PauseGate;
use rdkafka::producer::FutureProducer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A started binding: what its read loop needs.
pub type Started = (Arc<Binding>, Arc<BindingConsumer>, Arc<OffsetTracker>);

/// What every binding shares, built once at start-up.
pub struct Engine {
    /// The validated configuration.
    pub settings: Settings,
    /// The one wasmtime engine and its instance pool.
    pub sandbox: Sandbox,
    /// One resolver per configured data source (by index); `None` where it could not be built.
    resolvers: Vec<Option<Arc<Resolver>>>,
    audit: Arc<Audit>,
    /// Where access receipts go.
    receipts: Arc<Receipts>,
    /// Replies and dead letters of every binding that is not exactly-once.
    producer: Arc<FutureProducer>,
    /// What each binding is doing, by name, for `/readyz` and the admin API.
    pub health: Arc<Health>,
    /// Whether the Kafka cluster answered lately, for `/readyz`: latched by
    /// [`Engine::watch_broker`].
    pub broker: Reachability,
}

impl Engine {
    /// Loads everything shared; every problem is reported at once. Outcomes also go to `tap`.
    pub fn new(settings: Settings, tap: Option<mpsc::Sender<Outcome>>) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let problem = |path: String, message: String| Problem { path, message };
        let sandbox =
            Sandbox::new(&settings.sandbox).map_err(|e| vec![problem("sandbox".into(), e.to_string())])?;
        let resolvers: Vec<Option<Arc<Resolver>>> = settings
            .data_sources
            .iter()
            .enumerate()
            .map(|(i, source)| {
                match Resolver::new(source.clone()).map(|r| r.with_redirect_rule(redirect_below_base)) {
                    Ok(resolver) => Some(Arc::new(resolver)),
                    Err(e) => {
                        problems.push(problem(format!("data_source[{i}]"), e.to_string()));
                        None
                    }
                }
            })
            .collect();
        let audit = Audit::new(&settings.audit, tap).map_err(|e| {
            let path = settings.audit.path().map(|p| p.display().to_string()).unwrap_or_default();
            problem("audit.path".into(), format!("cannot open {path}: {e}"))
        });
        let receipts =
            Receipts::open(&settings.receipts).map_err(|e| problem("receipts.path".into(), e.to_string()));
        let producer = kafka::producer::shared(&settings.kafka)
            .map_err(|e| problem("kafka".into(), format!("cannot create the producer: {e}")));
        match (audit, receipts, producer) {
            (Ok(audit), Ok(receipts), Ok(producer)) if problems.is_empty() => Ok(Engine {
                settings,
                sandbox,
                resolvers,
                audit: Arc::new(audit),
                receipts: Arc::new(receipts),
                producer: Arc::new(producer),
                health: Arc::new(Health::default()),
                broker: Reachability::default(),
            }),
            (audit, receipts, producer) => {
                problems.extend(audit.err());
                problems.extend(receipts.err());
                problems.extend(producer.err());
                Err(problems)
            }
        }
    }

    /// Loads the configuration file's handlers and creates their consumers, on a blocking
    /// thread: reading and compiling components, and for exactly-once initialising
    /// transactions (up to their timeout), would otherwise hold an async worker.
    pub async fn start_configured(self: &Arc<Self>) -> Result<Vec<Started>, Vec<Problem>> {
        let engine = self.clone();
        tokio::task::spawn_blocking(move || engine.start_configured_blocking()).await.map_err(|e| {
            vec![Problem {
                path: "binding".into(),
                message: format!("starting the bindings did not finish: {e}"),
            }]
        })?
    }

    fn start_configured_blocking(&self) -> Result<Vec<Started>, Vec<Problem>> {
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
        if problems.is_empty() { Ok(started) } else { Err(problems) }
    }

    /// Compiles and validates a binding's handler component.
    pub fn load(&self, binding: &BindingSettings, wasm: &[u8]) -> Result<Handler, LoadError> {
        let identity = HandlerIdentity { tenant: binding.tenant.clone(), handler: binding.handler.clone() };
        Ok(self.sandbox.load(identity, wasm, binding.limits.clone())?.with_output(binding.guest_output))
    }

    /// Creates a binding's producer and consumer around its loaded handler. On failure, the
    /// configuration key at fault and why.
    pub fn bind(
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
                let id = names::transactional_id(&settings.group_id, &self.settings.kafka.instance_id);
                let producer = kafka::producer::transactional(&self.settings.kafka, &id).map_err(|e| {
                    ("delivery", format!("exactly-once needs Kafka transactions, which failed to start: {e}"))
                })?;
                Arc::new(producer)
            }
            Delivery::AtLeastOnce | Delivery::AtMostOnce => self.producer.clone(),
        };
        let labels = BindingLabels::new(&settings.name, &settings.tenant);
        let metrics =
            BindingMetrics::new(labels.clone(), &self.settings.data_sources[settings.data_source].name);
        let tracker = Arc::new(OffsetTracker::default());
        let consumer = kafka::consumer(
            &self.settings.kafka,
            settings,
            tracker.clone(),
            self.settings.drain_timeout,
            labels,
        )
        .map_err(|e| ("topics", format!("cannot create the Kafka consumer: {e}")))?;
        let binding = Arc::new(Binding {
            settings: settings.clone(),
            handler: HandlerSlot::new(handler),
            owner: OwnerAccess {
                base_url: self.settings.data_sources[settings.data_source].base_url.clone(),
                resolver,
                gate: PauseGate::new(&settings.name, metrics.paused.clone(), self.health.clone()),
            },
            outputs: Outputs {
                audit: self.audit.clone(),
                receipts: self.receipts.writer(&settings.name),
                producer,
            },
            backoff: Backoff {
                initial: Duration::from_millis(settings.retry.initial_backoff_ms),
                max: Duration::from_millis(settings.retry.max_backoff_ms),
                ..Backoff::default()
            },
            metrics,
        });
        binding.register_counters();
        Ok((binding, Arc::new(consumer), tracker))
    }

    /// Runs a binding's read loop until `cancel`, keeping its state in [`Engine::health`].
    pub async fn consume(
        &self,
        (binding, consumer, tracker): Started,
        cancel: CancellationToken,
    ) -> Result<(), BindingError> {
        let name = binding.settings.name.clone();
        self.health.report(&name, BindingState::Running);
        let limits =
            delivery::Limits { drain: self.settings.drain_timeout, commit: self.settings.commit_timeout };
        let result = delivery::run(binding, consumer, tracker, cancel, limits).await;
        match &result {
            Ok(()) => self.health.report(&name, BindingState::Finished),
            Err(BindingError::Stopped) => self.health.report(&name, BindingState::Stopped),
            Err(error) => self.health.report(&name, BindingState::Failed(error.to_string())),
        }
        result
    }

    /// Checks whether the Kafka cluster answers every [`health::BROKER_CHECK_INTERVAL`] and
    /// latches the answer in [`Engine::broker`], until `cancel`: the readiness probe reads it
    /// and asks the cluster nothing itself.
    pub async fn watch_broker(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let checked = tokio::select! {
                () = cancel.cancelled() => return,
                checked = self.broker_reachable(health::BROKER_CHECK_TIMEOUT) => checked,
            };
            if let Err(error) = &checked {
                tracing::debug!(%error, "The Kafka cluster did not answer its check.");
            }
            self.broker.set(checked);
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(health::BROKER_CHECK_INTERVAL) => {}
            }
        }
    }

    /// Whether the broker answers, within `timeout` (metadata, on a blocking thread).
    async fn broker_reachable(&self, timeout: Duration) -> Result<(), String> {
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

/// A redirect from a data owner is followed only to where a reference could lead: the rules of
/// `dataref` paths, applied to the target's path below the base URL.
fn redirect_below_base(base: &url::Url, target: &url::Url) -> bool {
    crate::cloudevents::check_below(base, target).is_ok()
}
