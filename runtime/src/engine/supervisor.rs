//! Handlers uploaded through the admin API: the supervisor runs each handler's active version
//! and follows the registry as it changes.
//!
//! Activating another version of a running handler swaps it in place: the binding keeps its
//! consumer, its partitions and its in-flight events, which finish on the version they started
//! on (see [`crate::engine::HandlerSlot`]); nothing is read twice. A changed spec (topics, data
//! source, limits) restarts the binding: it drains, commits, and starts again from the committed
//! offsets, as a rebalance would.

use super::{Binding, BindingError, BindingState, Engine};
use crate::config::{BindingSettings, UploadedBinding};
use crate::model::names;
use crate::registry::{Deployment, HandlerSpec, Registry};
use crate::sandbox::{ComponentReport, Handler, LoadError};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

type Key = (String, String);

/// A running uploaded handler.
struct Deployed {
    binding: Arc<Binding>,
    /// The spec it was started with: a different one needs a restart.
    spec: HandlerSpec,
    /// The version new events start on.
    version: String,
    /// Stops this binding alone.
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), BindingError>>,
}

/// Runs the registry's active handlers.
pub struct Supervisor {
    engine: Arc<Engine>,
    registry: Arc<Registry>,
    /// keyhole's run token: every binding stops with it.
    cancel: CancellationToken,
    /// Held while the running set is changed, so that changes apply one at a time, in order.
    /// Never held across a compile: versions are compiled first.
    running: tokio::sync::Mutex<HashMap<Key, Deployed>>,
    /// Each tenant's compile queue: a tenant's components are compiled one at a time, and apart
    /// from other tenants' (the sandbox caps compiles at once across tenants).
    queues: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Supervisor {
    /// A supervisor of `registry`'s handlers; every binding it starts stops with `cancel`.
    pub fn new(engine: Arc<Engine>, registry: Arc<Registry>, cancel: CancellationToken) -> Self {
        Supervisor {
            engine,
            registry,
            cancel,
            running: tokio::sync::Mutex::new(HashMap::new()),
            queues: Default::default(),
        }
    }

    /// Validates a tenant's component exactly as `keyhole check` does: read first, then compiled
    /// in a child process within the compile budget, after the tenant's earlier components and
    /// apart from other tenants'. Dropping the future (a client gone) stops the compile.
    pub async fn check(&self, tenant: &str, wasm: Arc<Vec<u8>>) -> Result<ComponentReport, LoadError> {
        let _turn = self.queue(tenant).lock_owned().await;
        self.engine.sandbox.check_bounded(&wasm).await.map_err(|(_, error)| error)
    }

    fn queue(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut queues = self.queues.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        queues.entry(tenant.to_string()).or_default().clone()
    }

    /// Compiles the versions the registry wants running and this replica is not running yet,
    /// before the running set is locked: a slow compile then delays no other change.
    async fn compile_ahead(&self) {
        let current: HashMap<Key, String> = {
            let running = self.running.lock().await;
            running
                .iter()
                .filter(|(_, deployed)| !deployed.task.is_finished())
                .map(|(key, deployed)| (key.clone(), deployed.version.clone()))
                .collect()
        };
        let wanted = self.registry.deployments().into_iter().filter(|d| {
            d.not_granted.is_none()
                && current.get(&(d.tenant.clone(), d.handler.clone())) != Some(&d.version)
                && self.engine.sandbox.compiled.get(&d.version).is_none()
        });
        let compiles = wanted.map(|d| async move { self.prepare(&d.tenant, &d.handler, &d.version).await });
        futures_util::future::join_all(compiles).await;
    }

    /// What an uploaded handler's binding is doing.
    pub fn state(&self, tenant: &str, handler: &str) -> BindingState {
        self.engine.health.get(&names::binding_name(tenant, handler)).unwrap_or(BindingState::Inactive)
    }

    /// Ready when the broker answers, the registry is current (a Kafka registry read lately) and
    /// no binding that should run has stopped or failed.
    pub async fn ready(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if let Err(error) = self.engine.broker_reachable(std::time::Duration::from_secs(2)).await {
            problems.push(format!("the Kafka cluster is not reachable: {error}"));
        }
        if let Err(error) = self.registry.current() {
            problems.push(error.to_string());
        }
        for (binding, state) in self.engine.health.unhealthy() {
            let why = state.reason().unwrap_or_default();
            problems.push(format!("binding {binding} is {}: {why}", state.label()));
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// Makes the running handlers what the registry says: starts newly active ones, swaps in
    /// newly activated versions, restarts those whose spec changed, and stops those deleted,
    /// deactivated or no longer granted. Returns, per binding, what could not be applied.
    pub async fn reconcile(&self) -> Result<(), Vec<(String, String)>> {
        self.compile_ahead().await;
        let mut running = self.running.lock().await;
        let mut desired: HashMap<Key, Deployment> = HashMap::new();
        let mut not_granted: HashMap<Key, String> = HashMap::new();
        for deployment in self.registry.deployments() {
            let key = (deployment.tenant.clone(), deployment.handler.clone());
            match &deployment.not_granted {
                Some(why) => {
                    not_granted.insert(key, why.clone());
                }
                None => {
                    desired.insert(key, deployment);
                }
            }
        }
        let keys: Vec<Key> = running.keys().cloned().collect();
        for key in keys {
            let keep = desired.get(&key).is_some_and(|d| running.get(&key).is_some_and(|r| r.spec == d.spec));
            if keep {
                continue;
            }
            if let Some(deployed) = running.remove(&key) {
                let name = deployed.binding.settings.name.clone();
                tracing::info!(binding = %name, "Stopping an uploaded handler's binding.");
                deployed.cancel.cancel();
                let _ = deployed.task.await;
                // Restarted below, or inactive (deleted, deactivated); not_granted is set below.
                match desired.contains_key(&key) {
                    true => self.engine.health.remove(&name),
                    false => {
                        self.engine.health.set(&name, BindingState::Inactive);
                        // Deleted or deactivated: its series leave /metrics.
                        crate::telemetry::retire(&name);
                    }
                }
            }
        }
        for ((tenant, handler), why) in not_granted {
            self.engine.health.set(&names::binding_name(&tenant, &handler), BindingState::NotGranted(why));
        }
        let mut problems = Vec::new();
        for (key, deployment) in desired {
            let name = names::binding_name(&key.0, &key.1);
            let outcome = match running.get_mut(&key) {
                Some(deployed) if deployed.version == deployment.version => continue,
                // A live binding: swap the version in place.
                Some(deployed) if !deployed.task.is_finished() => self.swap(deployed, &deployment).await,
                // Not running, or stopped by its failure policy: a new version starts it afresh.
                _ => match self.start(&deployment).await {
                    Ok(deployed) => {
                        running.insert(key, deployed);
                        crate::telemetry::revive(&name);
                        Ok(())
                    }
                    Err(error) => Err(error),
                },
            };
            if let Err(error) = outcome {
                self.engine.health.set(&name, BindingState::Failed(error.clone()));
                problems.push((name, error));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// Stops every uploaded handler's binding (at shutdown, after keyhole's run token was
    /// cancelled) and waits for their drains.
    pub async fn stop_all(&self) {
        let mut running = self.running.lock().await;
        for (_, deployed) in running.drain() {
            deployed.cancel.cancel();
            let _ = deployed.task.await;
        }
    }

    async fn swap(&self, deployed: &mut Deployed, deployment: &Deployment) -> Result<(), String> {
        let handler = self.load(&deployed.binding.settings, deployment).await?;
        deployed.binding.handler.replace(handler);
        tracing::info!(binding = %deployed.binding.settings.name, from = %deployed.version, to = %deployment.version,
            "Version activated; in-flight events finish on the one they started on.");
        deployed.version = deployment.version.clone();
        Ok(())
    }

    async fn start(&self, deployment: &Deployment) -> Result<Deployed, String> {
        let settings = self.binding_settings(deployment)?;
        let handler = self.load(&settings, deployment).await?;
        let started =
            self.engine.bind(&settings, handler).map_err(|(key, message)| format!("{key}: {message}"))?;
        let binding = started.0.clone();
        let cancel = self.cancel.child_token();
        let engine = self.engine.clone();
        let task_cancel = cancel.clone();
        // Marked running before the task is scheduled, so that a status read right after an
        // activation sees it.
        self.engine.health.set(&settings.name, BindingState::Running);
        let task = tokio::spawn(async move { engine.consume(started, task_cancel).await });
        tracing::info!(binding = %settings.name, version = %deployment.version, "Uploaded handler started.");
        Ok(Deployed {
            binding,
            spec: deployment.spec.clone(),
            version: deployment.version.clone(),
            cancel,
            task,
        })
    }

    /// Reads the deployment's component from the registry (fetching it into this replica's
    /// cache when the registry is in Kafka), compiles it within the budget unless it is compiled
    /// already ([`Supervisor::compile_ahead`] did), and loads it on a blocking thread.
    async fn load(&self, settings: &BindingSettings, deployment: &Deployment) -> Result<Handler, String> {
        let wasm = self
            .registry
            .component(&deployment.tenant, &deployment.handler, &deployment.version)
            .await
            .map_err(|e| format!("cannot read its component: {e}"))?;
        let wasm = Arc::new(wasm);
        if self.engine.sandbox.compiled.get(&deployment.version).is_none() {
            let _turn = self.queue(&deployment.tenant).lock_owned().await;
            self.engine
                .sandbox
                .check_bounded(&wasm)
                .await
                .map_err(|(_, e)| format!("component refused: {e}"))?;
        }
        let engine = self.engine.clone();
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || {
            engine.load(&settings, &wasm).map_err(|e| format!("component refused: {e}"))
        })
        .await
        .map_err(|e| format!("loading did not finish: {e}"))?
    }

    /// Fetches and compiles a version as soon as it is uploaded (on any replica), so that its
    /// activation finds it compiled: within the compile budget, in the tenant's queue, as an
    /// upload is. Failures only cost the activation the time to do it then.
    pub async fn prepare(&self, tenant: &str, handler: &str, version: &str) {
        let wasm = match self.registry.component(tenant, handler, version).await {
            Ok(wasm) => Arc::new(wasm),
            Err(error) => {
                tracing::warn!(tenant, handler, version, %error, "Cannot fetch a new version ahead of its activation.");
                return;
            }
        };
        let _turn = self.queue(tenant).lock_owned().await;
        if let Err((_, error)) = self.engine.sandbox.check_bounded(&wasm).await {
            tracing::warn!(tenant, handler, version, reason = %error, "A new version was refused ahead of its activation.");
        }
    }

    /// The binding an uploaded handler runs as (see [`crate::config::UploadedBinding`]).
    fn binding_settings(&self, d: &Deployment) -> Result<BindingSettings, String> {
        self.engine.settings.uploaded_binding(UploadedBinding {
            tenant: &d.tenant,
            handler: &d.handler,
            component: d.component.clone(),
            topics: d.spec.topics.clone(),
            data_source: &d.spec.data_source,
            purpose: d.spec.purpose.clone(),
            max_in_flight: d.spec.max_in_flight.unwrap_or(d.limits.max_in_flight),
            reply_topic: d.spec.reply_topic.clone(),
            deadline_ms: d.spec.deadline_ms.unwrap_or(d.limits.max_deadline_ms),
            max_memory_bytes: d.spec.max_memory_bytes.unwrap_or(d.limits.max_memory_bytes),
        })
    }
}
