//! keyhole as `keyhole run` starts it: the engine, the registry and the admin API wired
//! together. The only module that knows all three: the engine does not know the admin API, and
//! the admin API reaches the engine only through [`admin::Control`].

use crate::admin::{self, BoxFuture, Control, HandlerState, Scope};
use crate::config::{AdminSettings, Problem, RegistryStore, Settings};
use crate::engine::{BindingError, Engine, Supervisor, supervisor};
use crate::records::audit::Outcome;
use crate::registry::{Announced, Catalog, Registry};
use crate::sandbox::{ComponentReport, LoadError};
use crate::telemetry;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Why keyhole could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
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
    /// One of keyhole's own tasks (the admin API, the probes, the supervisor, ...) ended
    /// before shutdown or panicked.
    #[error("{task}: {message}")]
    Task {
        /// The task.
        task: String,
        /// How it ended.
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
    /// The probes' and metrics' listener, already bound; without it, keyhole binds
    /// `admin.monitoring_listen`.
    pub monitoring_listener: Option<tokio::net::TcpListener>,
}

/// Runs every configured binding until `shutdown` completes, then drains and commits.
/// Outcomes also go to `tap` when given (tests, the demo).
pub async fn run(
    settings: Settings,
    tap: Option<mpsc::Sender<Outcome>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    run_with(settings, Extras { tap, ..Extras::default() }, shutdown).await
}

/// [`run`], with the admin API and the handlers uploaded to it when `[admin]` is configured.
///
/// Every task it starts is owned here, by name: the configured bindings' read loops in
/// `bindings`; the admin API, the probes, the broker check, the supervisor and the registry's
/// followers in `services`. At shutdown (or when a binding fails, or a service ends before
/// shutdown) all are cancelled and awaited within the drain and commit bounds, then aborted.
pub async fn run_with(
    settings: Settings,
    extras: Extras,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    // The metrics macros record nothing until a recorder is installed.
    telemetry::prometheus();
    let tap = extras.tap;
    // Building the sandbox (wasmtime's engine and instance pool) and opening the records'
    // files block: not on an async worker.
    let engine = tokio::task::spawn_blocking(move || Engine::new(settings, tap))
        .await
        .map_err(|e| start_problem("sandbox", format!("start-up did not finish: {e}")))?
        .map_err(RunError::Start)?;
    let engine = Arc::new(engine);
    let configured = engine.start_configured().await.map_err(RunError::Start)?;
    let cancel = CancellationToken::new();
    let mut bindings = Tasks::default();
    for started in configured {
        let name = started.0.settings().name.clone();
        let (engine, cancel, named) = (engine.clone(), cancel.clone(), name.clone());
        bindings
            .spawn(name, async move { engine.consume(started, cancel).await.map_err(|e| ended(named, e)) });
    }
    let mut services = Tasks::default();
    let listeners = (extras.admin_listener, extras.monitoring_listener);
    let registry = match &engine.settings.admin {
        Some(admin) => match start_admin(&engine, admin, listeners, &cancel, &mut services).await {
            Ok(registry) => Some(registry),
            Err(error) => {
                cancel.cancel();
                let _ = stop(bindings, services, &engine).await;
                return Err(error);
            }
        },
        None => None,
    };
    let admin = registry.is_some();
    tracing::info!(bindings = bindings.len(), admin, "keyhole is running.");
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            () = &mut shutdown => {
                tracing::info!("Shutting down: draining in-flight events.");
                break Ok(());
            }
            Some((name, ended)) = bindings.join_next(), if !bindings.is_empty() => match ended {
                // A binding its failure policy stopped: the others go on (and the admin API may
                // start more).
                Ok(Err(RunError::Stopped)) if !bindings.is_empty() || admin => continue,
                // A binding that ends on its own failed; stop the others too.
                Ok(result) => break result,
                Err(join) => break Err(RunError::Binding { binding: name, message: panicked(&join) }),
            },
            // A service ends only at shutdown: before it, keyhole would run without its admin
            // API, its probes or its supervisor. Stop, so that the orchestrator restarts it.
            Some((name, ended)) = services.join_next(), if !services.is_empty() => {
                let message = match ended {
                    Ok(()) => "it ended before shutdown".to_string(),
                    Err(join) => panicked(&join),
                };
                tracing::error!(task = %name, reason = %message, "A task of keyhole's ended; stopping.");
                break Err(RunError::Task { task: name, message });
            }
        }
    };
    cancel.cancel();
    let stopped = stop(bindings, services, &engine).await;
    if let Some(registry) = registry {
        registry.close().await;
    }
    result.and(stopped)
}

fn start_problem(path: &str, message: String) -> RunError {
    RunError::Start(vec![Problem { path: path.into(), message }])
}

fn ended(binding: String, error: BindingError) -> RunError {
    match error {
        BindingError::Stopped => RunError::Stopped,
        failed => RunError::Binding { binding, message: failed.to_string() },
    }
}

fn panicked(join: &tokio::task::JoinError) -> String {
    if join.is_panic() {
        format!("its task panicked: {join}")
    } else {
        format!("its task was cancelled: {join}")
    }
}

/// Beyond the drain and commit bounds, how long keyhole waits at shutdown for its tasks before
/// it aborts them (the supervisor's own bound is shorter: it reports before it is aborted).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// After `cancel`: waits for every binding to drain and commit and for every service to end,
/// within the drain and commit bounds plus [`SHUTDOWN_GRACE`]; aborts what is left after that.
/// The first binding that failed, or task that panicked, is the result.
async fn stop(
    mut bindings: Tasks<Result<(), RunError>>,
    mut services: Tasks<()>,
    engine: &Engine,
) -> Result<(), RunError> {
    let bound = engine.settings.drain_timeout + engine.settings.commit_timeout + SHUTDOWN_GRACE;
    let deadline = tokio::time::Instant::now() + bound;
    let mut result = Ok(());
    loop {
        tokio::select! {
            Some((name, ended)) = bindings.join_next(), if !bindings.is_empty() => match ended {
                Ok(Ok(()) | Err(RunError::Stopped)) => {}
                Ok(Err(error)) => result = result.and(Err(error)),
                Err(join) => result = result.and(Err(RunError::Binding { binding: name, message: panicked(&join) })),
            },
            Some((name, ended)) = services.join_next(), if !services.is_empty() => {
                if let Err(join) = ended {
                    tracing::error!(task = %name, error = %join, "A task of keyhole's failed as it stopped.");
                    result = result.and(Err(RunError::Task { task: name, message: panicked(&join) }));
                }
            }
            () = tokio::time::sleep_until(deadline), if !bindings.is_empty() || !services.is_empty() => {
                let left: Vec<String> = bindings.names().chain(services.names()).collect();
                tracing::warn!(?left, bound_ms = bound.as_millis(), "Tasks did not stop within the shutdown bound; aborted.");
                bindings.abort_all();
                services.abort_all();
                // Aborted tasks end at their next await; one stuck in a blocking call is left.
                let _ = tokio::time::timeout(ABORTED_TIMEOUT, async {
                    while bindings.join_next().await.is_some() {}
                    while services.join_next().await.is_some() {}
                })
                .await;
                return result;
            }
            else => return result,
        }
    }
}

/// How long aborted tasks get to end.
const ABORTED_TIMEOUT: Duration = Duration::from_secs(1);

/// Tasks known by name: a task's name outlives its panic (a `JoinError` has only its id).
struct Tasks<T> {
    set: JoinSet<T>,
    names: HashMap<tokio::task::Id, String>,
}

impl<T> Default for Tasks<T> {
    fn default() -> Self {
        Tasks { set: JoinSet::new(), names: HashMap::new() }
    }
}

impl<T: Send + 'static> Tasks<T> {
    fn spawn(&mut self, name: impl Into<String>, task: impl Future<Output = T> + Send + 'static) {
        let id = self.set.spawn(task).id();
        self.names.insert(id, name.into());
    }

    /// The next task to end, by name, and how it ended.
    async fn join_next(&mut self) -> Option<(String, Result<T, tokio::task::JoinError>)> {
        let joined = self.set.join_next_with_id().await?;
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(error) => error.id(),
        };
        let name = self.names.remove(&id).unwrap_or_default();
        Some((name, joined.map(|(_, value)| value)))
    }

    fn len(&self) -> usize {
        self.set.len()
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.names.values().cloned()
    }

    fn abort_all(&mut self) {
        self.set.abort_all();
    }
}

/// Opens the registry, starts the supervisor and the handlers active in the registry, and
/// serves the admin API and the monitoring endpoints until `cancel`; every task it starts goes
/// into `services`.
async fn start_admin(
    engine: &Arc<Engine>,
    admin: &AdminSettings,
    (listener, monitoring_listener): (Option<tokio::net::TcpListener>, Option<tokio::net::TcpListener>),
    cancel: &CancellationToken,
    services: &mut Tasks<()>,
) -> Result<Arc<Registry>, RunError> {
    let catalog = Catalog::of(&engine.settings);
    let (registry, announced) = Registry::open_configured(admin, &engine.settings.kafka, catalog)
        .await
        .map_err(|e| match &admin.registry {
            RegistryStore::Local => {
                start_problem("admin.state_dir", format!("{}: {e}", admin.state_dir.display()))
            }
            RegistryStore::Kafka(_) => start_problem("registry", e.to_string()),
        })?;
    let registry = Arc::new(registry);
    // Readiness is latched by this task; the probe only reads it.
    services.spawn("broker check", engine.clone().watch_broker(cancel.clone()));
    let supervisor = Arc::new(Supervisor::new(engine.clone(), registry.clone(), cancel.clone()));
    services.spawn("supervisor", supervisor.clone().run());
    if let Some(changes) = registry.changes() {
        services.spawn("registry follower", follow(supervisor.clone(), changes, cancel.clone()));
    }
    if let Some(announced) = announced {
        services.spawn("version preparer", prepare(supervisor.clone(), announced, cancel.clone()));
    }
    // Handlers that cannot start now are reported in their state (the supervisor logs why);
    // keyhole itself still starts, so that their tenants can fix them through the API.
    let _ = supervisor.apply(supervisor::Scope::All).await;
    let bind = |given: Option<tokio::net::TcpListener>, address: std::net::SocketAddr, key: &'static str| async move {
        match given {
            Some(listener) => Ok(listener),
            None => tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| start_problem(key, format!("cannot listen on {address}: {e}"))),
        }
    };
    // The probes first: an orchestrator asks them as soon as the process runs.
    let monitoring_listener =
        bind(monitoring_listener, admin.monitoring_listen, "admin.monitoring_listen").await?;
    let listener = bind(listener, admin.listen, "admin.listen").await?;
    let api = admin::Api::new(registry.clone(), Arc::new(SupervisorControl(supervisor)), admin);
    let bounds = admin::Bounds {
        max_connections: admin.max_connections,
        header_read_timeout: admin.header_read_timeout,
        idle_timeout: admin.idle_timeout,
    };
    let monitoring_bounds = admin::Bounds { max_connections: admin::MONITORING_MAX_CONNECTIONS, ..bounds };
    for (which, name, listener, api, bounds) in [
        (admin::Listener::Api, "admin API", listener, api.clone(), bounds),
        (admin::Listener::Monitoring, "probes and metrics", monitoring_listener, api, monitoring_bounds),
    ] {
        let shutdown = cancel.clone();
        services.spawn(name, async move {
            if let Err(error) = admin::serve(which, listener, api, bounds, shutdown.cancelled_owned()).await {
                tracing::error!(%error, listener = name, "A listener stopped.");
            }
        });
    }
    Ok(registry)
}

/// Makes the running handlers follow a registry that other replicas change too: after every
/// batch of records read from the registry log, whoever wrote them. Does not wait for the
/// supervisor: it logs what cannot run.
async fn follow(supervisor: Arc<Supervisor>, mut changes: watch::Receiver<i64>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        supervisor.poke();
    }
}

/// Fetches and compiles every version uploaded through any replica, one at a time, ahead of
/// its activation.
async fn prepare(
    supervisor: Arc<Supervisor>,
    mut announced: mpsc::Receiver<Announced>,
    cancel: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => return,
            next = announced.recv() => next,
        };
        let Some(Announced { tenant, handler, version }) = next else { return };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = supervisor.prepare(&tenant, &handler, &version) => {}
        }
    }
}

/// The admin API's view of the engine's supervisor.
struct SupervisorControl(Arc<Supervisor>);

impl Control for SupervisorControl {
    fn check(&self, tenant: &str, wasm: Arc<Vec<u8>>) -> BoxFuture<'_, Result<ComponentReport, LoadError>> {
        let tenant = tenant.to_string();
        Box::pin(async move { self.0.check(&tenant, wasm).await })
    }

    fn state(&self, tenant: &str, handler: &str) -> HandlerState {
        let state = self.0.state(tenant, handler);
        HandlerState { label: state.label(), reason: state.reason().map(str::to_string) }
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), Vec<String>>> {
        let ready = self.0.ready();
        Box::pin(async move { ready })
    }

    fn apply(&self, scope: Scope) -> BoxFuture<'_, Result<(), Vec<(String, String)>>> {
        let scope = match scope {
            Scope::Tenant(tenant) => supervisor::Scope::Tenant(tenant),
            Scope::Handler { tenant, handler } => supervisor::Scope::Handler(tenant, handler),
        };
        Box::pin(self.0.apply(scope))
    }
}
