//! keyhole as `keyhole run` starts it: the engine, the registry and the admin API wired
//! together. The only module that knows all three: the engine does not know the admin API, and
//! the admin API reaches the engine only through [`admin::Control`].

use crate::admin::{self, BoxFuture, Control, HandlerState};
use crate::config::{AdminSettings, Problem, RegistryStore, Settings};
use crate::engine::{BindingError, Engine, Supervisor};
use crate::records::audit::Outcome;
use crate::registry::{Announced, Catalog, Registry};
use crate::sandbox::{ComponentReport, LoadError};
use crate::telemetry;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
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
pub async fn run_with(
    settings: Settings,
    extras: Extras,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    // The metrics macros record nothing until a recorder is installed.
    telemetry::prometheus();
    let engine = Arc::new(Engine::new(settings, extras.tap).map_err(RunError::Start)?);
    let configured = engine.start_configured().map_err(RunError::Start)?;
    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for started in configured {
        let name = started.0.settings.name.clone();
        let (engine, cancel) = (engine.clone(), cancel.clone());
        tasks.spawn(async move { engine.consume(started, cancel).await.map_err(|e| ended(name, e)) });
    }
    let supervisor = match &engine.settings.admin {
        Some(admin) => Some(
            start_admin(&engine, admin, (extras.admin_listener, extras.monitoring_listener), &cancel).await?,
        ),
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
                Ok(Err(RunError::Stopped)) if !tasks.is_empty() || supervisor.is_some() => continue,
                Ok(Err(RunError::Stopped)) => return Err(RunError::Stopped),
                // A binding that ends on its own failed; stop the others too.
                ended => {
                    cancel.cancel();
                    while tasks.join_next().await.is_some() {}
                    if let Some(supervisor) = &supervisor {
                        supervisor.stop_all().await;
                    }
                    return match ended {
                        Ok(result) => result,
                        Err(join) => Err(RunError::Binding { binding: "?".into(), message: join.to_string() }),
                    };
                }
            },
        }
    }
    cancel.cancel();
    let mut result = Ok(());
    while let Some(ended) = tasks.join_next().await {
        match ended {
            Ok(Ok(()) | Err(RunError::Stopped)) => {}
            Ok(Err(error)) => result = Err(error),
            Err(join) => result = Err(RunError::Binding { binding: "?".into(), message: join.to_string() }),
        }
    }
    if let Some(supervisor) = &supervisor {
        supervisor.stop_all().await;
    }
    result
}

fn ended(binding: String, error: BindingError) -> RunError {
    match error {
        BindingError::Stopped => RunError::Stopped,
        BindingError::Failed(message) => RunError::Binding { binding, message },
    }
}

/// Opens the registry, starts the handlers active in it, and serves the admin API and the
/// monitoring endpoints until `cancel`.
async fn start_admin(
    engine: &Arc<Engine>,
    admin: &AdminSettings,
    (listener, monitoring_listener): (Option<tokio::net::TcpListener>, Option<tokio::net::TcpListener>),
    cancel: &CancellationToken,
) -> Result<Arc<Supervisor>, RunError> {
    let start_problem =
        |path: &str, message: String| RunError::Start(vec![Problem { path: path.into(), message }]);
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
    let supervisor = Arc::new(Supervisor::new(engine.clone(), registry.clone(), cancel.clone()));
    if let Some(changes) = registry.changes() {
        tokio::spawn(follow(supervisor.clone(), changes, cancel.clone()));
    }
    if let Some(announced) = announced {
        tokio::spawn(prepare(supervisor.clone(), announced, cancel.clone()));
    }
    // Handlers that cannot start now are reported in their state; keyhole itself still starts,
    // so that their tenants can fix them through the API.
    if let Err(problems) = supervisor.reconcile().await {
        for (binding, problem) in problems {
            tracing::error!(binding = %binding, reason = %problem, "Uploaded handler cannot start.");
        }
    }
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
    let api = admin::Api::new(registry, Arc::new(SupervisorControl(supervisor.clone())), admin);
    let bounds = admin::Bounds {
        max_connections: admin.max_connections,
        header_read_timeout: admin.header_read_timeout,
        idle_timeout: admin.idle_timeout,
    };
    let monitoring_bounds = admin::Bounds { max_connections: admin::MONITORING_MAX_CONNECTIONS, ..bounds };
    let (shutdown, monitoring_api) = (cancel.clone(), api.clone());
    tokio::spawn(async move {
        if let Err(error) = admin::serve(listener, api, bounds, shutdown.cancelled_owned()).await {
            tracing::error!(%error, "The admin API stopped.");
        }
    });
    let shutdown = cancel.clone();
    tokio::spawn(async move {
        let serving = admin::serve_monitoring(
            monitoring_listener,
            monitoring_api,
            monitoring_bounds,
            shutdown.cancelled_owned(),
        );
        if let Err(error) = serving.await {
            tracing::error!(%error, "The probes' and metrics' listener stopped.");
        }
    });
    Ok(supervisor)
}

/// Makes the running handlers follow a registry that other replicas change too: after every
/// batch of records read from the registry log, whoever wrote them.
async fn follow(supervisor: Arc<Supervisor>, mut changes: watch::Receiver<i64>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        if let Err(problems) = supervisor.reconcile().await {
            for (binding, problem) in problems {
                tracing::error!(binding = %binding, reason = %problem, "Uploaded handler cannot run.");
            }
        }
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
        supervisor.prepare(&tenant, &handler, &version).await;
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
        Box::pin(self.0.ready())
    }

    fn apply(&self) -> BoxFuture<'_, Result<(), Vec<(String, String)>>> {
        Box::pin(self.0.reconcile())
    }
}
