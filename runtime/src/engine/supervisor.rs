//! Handlers uploaded through the admin API: the supervisor runs each handler's active version
//! and follows the registry as it changes.
//!
//! Activating another version of a running handler swaps it in place: the binding keeps its
//! consumer, its partitions and its in-flight events, which finish on the version they started
//! on (see [`crate::engine::HandlerSlot`]); nothing is read twice. A changed spec (topics, data
//! source, limits) restarts the binding: it drains, commits, and starts again from the committed
//! offsets, as a rebalance would.
//!
//! One task, [`Supervisor::run`], owns the running bindings; nothing else touches them, so no
//! lock guards them. A request ([`Supervisor::apply`], [`Supervisor::poke`]) bumps a generation
//! on a `watch`; the task then makes the running set what the registry says. Starting, swapping
//! and stopping a binding are jobs in the task's `JoinSet`: they run concurrently, and the task
//! itself never waits for a drain or a compile. One tenant's write is therefore never held up
//! by another tenant's draining binding or compiling component. A binding that restarts starts
//! once its previous instance has stopped: never two consumers of one binding at once. While a
//! binding drains, its state is [`BindingState::Stopping`].

use super::{Binding, BindingError, BindingState, Engine};
use crate::config::{BindingSettings, UploadedBinding};
use crate::model::names;
use crate::registry::{Deployment, HandlerSpec, Registry};
use crate::sandbox::{ComponentReport, Handler, LoadError};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

type Key = (String, String);

/// Beyond the drain and commit bounds, how long the supervisor waits at shutdown for its
/// bindings and jobs before it aborts them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Which bindings a request waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every binding (keyhole's start).
    All,
    /// A tenant's bindings (its grant changed, or it was deleted).
    Tenant(String),
    /// One handler's binding.
    Handler(String, String),
}

impl Scope {
    fn covers(&self, (tenant, handler): &Key) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant(t) => t == tenant,
            Scope::Handler(t, h) => t == tenant && h == handler,
        }
    }
}

/// A running uploaded handler.
struct Deployed {
    binding: Arc<Binding>,
    /// The spec it was started with: a different one needs a restart.
    spec: HandlerSpec,
    /// The version new events start on.
    version: String,
    /// Stops this binding alone.
    cancel: CancellationToken,
    /// Its read loop; awaited when it is stopped.
    task: JoinHandle<Result<(), BindingError>>,
}

/// What a job did.
enum Done {
    /// A binding started, or why it could not.
    Started(Box<Result<Deployed, String>>),
    /// A version loaded for a running binding, or why it could not be.
    Swapped { version: String, handler: Result<Handler, String> },
    /// A binding stopped: how its read loop ended.
    Stopped(Result<Result<(), BindingError>, JoinError>),
}

/// What the supervisor's task has done, for the requests waiting on it.
#[derive(Clone, Default)]
struct Progress {
    /// The newest request the task has acted on: every change it called for is done or in a
    /// job listed in `busy`.
    seen: u64,
    /// Bindings with a start, swap or stop in progress.
    busy: HashSet<Key>,
    /// Per binding, why its last start or swap failed; cleared once it runs as wanted.
    problems: HashMap<Key, String>,
    /// The task has ended (keyhole is stopping): nobody waits any more.
    ended: bool,
}

/// The supervisor task's own books: only [`Supervisor::run`] has them.
#[derive(Default)]
struct Books {
    running: HashMap<Key, Deployed>,
    /// Starts, swaps and stops in progress.
    jobs: JoinSet<Done>,
    /// Each job's binding and the request it was started for; a panicked job keeps its name.
    job_keys: HashMap<tokio::task::Id, (Key, u64)>,
    /// Bindings with a job in progress: nothing else is done to them until it ends.
    busy: HashSet<Key>,
    problems: HashMap<Key, String>,
    /// Per binding, the request for which its start or swap last failed: not tried again before
    /// a newer request (so that a failure does not retry in a loop).
    failed_at: HashMap<Key, u64>,
    /// Bindings whose stop finished and whose next state is not said yet.
    stopped: HashSet<Key>,
}

/// Runs the registry's active handlers.
pub struct Supervisor {
    engine: Arc<Engine>,
    registry: Arc<Registry>,
    /// keyhole's run token: every binding stops with it, and so does [`Supervisor::run`].
    cancel: CancellationToken,
    /// Bumped by every request; the task reconciles to the registry as it is then.
    requests: watch::Sender<u64>,
    /// What the task has done, as requests wait for it.
    progress: watch::Sender<Progress>,
    /// Each tenant's compile queue: a tenant's components are compiled one at a time, and apart
    /// from other tenants' (the sandbox caps compiles at once across tenants).
    queues: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Supervisor {
    /// A supervisor of `registry`'s handlers; every binding it starts stops with `cancel`.
    /// Nothing runs until [`Supervisor::run`] is spawned.
    pub fn new(engine: Arc<Engine>, registry: Arc<Registry>, cancel: CancellationToken) -> Self {
        Supervisor {
            engine,
            registry,
            cancel,
            requests: watch::Sender::new(0),
            progress: watch::Sender::new(Progress::default()),
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

    /// What an uploaded handler's binding is doing.
    pub fn state(&self, tenant: &str, handler: &str) -> BindingState {
        self.engine.health.get(&names::binding_name(tenant, handler)).unwrap_or(BindingState::Inactive)
    }

    /// Ready when the broker answered its last check, the registry is current (a Kafka registry
    /// read lately) and no binding that should run has stopped or failed. Reads what the
    /// components latched; no I/O.
    pub fn ready(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if let Err(why) = self.engine.broker.get() {
            problems.push(why);
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

    /// Asks the supervisor to follow the registry, without waiting (another replica changed it).
    pub fn poke(&self) -> u64 {
        let mut generation = 0;
        self.requests.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        generation
    }

    /// Makes the running handlers what the registry says — starts newly active ones, swaps in
    /// newly activated versions, restarts those whose spec changed, stops those deleted,
    /// deactivated or no longer granted — and waits until the bindings in `scope` are settled:
    /// started, swapped, or drained and stopped. Other bindings' starts and drains are not
    /// waited for. Returns, per binding in `scope`, what could not be applied.
    pub async fn apply(&self, scope: Scope) -> Result<(), Vec<(String, String)>> {
        let generation = self.poke();
        let mut progress = self.progress.subscribe();
        let settled = progress
            .wait_for(|p| p.ended || (p.seen >= generation && !p.busy.iter().any(|key| scope.covers(key))))
            .await;
        let problems: Vec<(String, String)> = match settled {
            Ok(p) if !p.ended => p
                .problems
                .iter()
                .filter(|(key, _)| scope.covers(key))
                .map(|((tenant, handler), why)| (names::binding_name(tenant, handler), why.clone()))
                .collect(),
            _ => vec![("keyhole".into(), "keyhole is stopping".into())],
        };
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// The supervisor's task: follows the requests until keyhole's run token is cancelled, then
    /// stops every uploaded handler's binding (concurrently, within the drain and commit
    /// bounds) and returns.
    pub async fn run(self: Arc<Self>) {
        let mut requests = self.requests.subscribe();
        // Requests made before this task first ran are acted on at once.
        requests.mark_changed();
        let mut books = Books::default();
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                Some(joined) = books.jobs.join_next_with_id(), if !books.jobs.is_empty() => {
                    self.finished(&mut books, joined);
                }
                changed = requests.changed() => if changed.is_err() { break },
            }
            let generation = *requests.borrow_and_update();
            self.reconcile(&mut books, generation);
            self.progress.send_modify(|p| {
                p.seen = generation;
                p.busy.clone_from(&books.busy);
                p.problems.clone_from(&books.problems);
            });
        }
        self.stop_all(books).await;
        self.progress.send_modify(|p| p.ended = true);
    }

    /// One pass: compares the running set with the registry and starts the jobs that close the
    /// gap. Bindings with a job in progress are left alone; the pass after their job looks
    /// again. Never waits.
    fn reconcile(self: &Arc<Self>, books: &mut Books, generation: u64) {
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
        // Stops: running bindings that are no longer wanted as they run.
        let stale: Vec<Key> = books
            .running
            .iter()
            .filter(|(key, deployed)| {
                !books.busy.contains(*key) && desired.get(*key).is_none_or(|d| d.spec != deployed.spec)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some(deployed) = books.running.remove(&key) {
                self.stop(books, key, deployed);
            }
        }
        // What a stopped binding is now, unless it starts again below.
        for key in std::mem::take(&mut books.stopped) {
            let name = names::binding_name(&key.0, &key.1);
            if !desired.contains_key(&key) {
                self.engine.health.set(&name, BindingState::Inactive);
                // Deleted, deactivated or not granted: its series leave /metrics.
                crate::telemetry::retire(&name);
            }
        }
        for ((tenant, handler), why) in &not_granted {
            let key = (tenant.clone(), handler.clone());
            if !books.busy.contains(&key) && !books.running.contains_key(&key) {
                books.problems.remove(&key);
                self.engine
                    .health
                    .set(&names::binding_name(tenant, handler), BindingState::NotGranted(why.clone()));
            }
        }
        // A binding that failed to start and is no longer wanted is no longer failing.
        let forgotten: Vec<Key> = books
            .problems
            .keys()
            .filter(|key| !desired.contains_key(*key) && !books.busy.contains(*key))
            .cloned()
            .collect();
        for key in forgotten {
            books.problems.remove(&key);
            books.failed_at.remove(&key);
            let name = names::binding_name(&key.0, &key.1);
            if !not_granted.contains_key(&key)
                && matches!(self.engine.health.get(&name), Some(BindingState::Failed(_)))
            {
                self.engine.health.set(&name, BindingState::Inactive);
            }
        }
        for (key, deployment) in desired {
            if books.busy.contains(&key) {
                continue;
            }
            let failed_now = books.failed_at.get(&key) == Some(&generation);
            match books.running.get(&key) {
                Some(deployed) if deployed.version == deployment.version => {
                    books.problems.remove(&key);
                    books.failed_at.remove(&key);
                }
                _ if failed_now => {}
                // A live binding: swap the version in place.
                Some(deployed) if !deployed.task.is_finished() => {
                    let settings = deployed.binding.settings.clone();
                    let me = self.clone();
                    let version = deployment.version.clone();
                    self.spawn(books, key, generation, async move {
                        let handler = me.load(&settings, &deployment).await;
                        Done::Swapped { version, handler }
                    });
                }
                // Not running, or stopped by its failure policy (its read loop has ended): a new
                // version starts it afresh.
                _ => {
                    books.running.remove(&key);
                    let me = self.clone();
                    self.spawn(books, key, generation, async move {
                        Done::Started(Box::new(me.start(&deployment).await))
                    });
                }
            }
        }
    }

    fn spawn(
        &self,
        books: &mut Books,
        key: Key,
        generation: u64,
        job: impl Future<Output = Done> + Send + 'static,
    ) {
        let id = books.jobs.spawn(job).id();
        books.busy.insert(key.clone());
        books.job_keys.insert(id, (key, generation));
    }

    /// Begins a binding's stop: it is cancelled at once and drains in a job of its own.
    fn stop(&self, books: &mut Books, key: Key, deployed: Deployed) {
        let name = deployed.binding.settings.name.clone();
        tracing::info!(binding = %name, "Stopping an uploaded handler's binding.");
        self.engine.health.set(&name, BindingState::Stopping);
        deployed.cancel.cancel();
        // Its next instance, if any, is a fresh attempt.
        books.failed_at.remove(&key);
        let task = deployed.task;
        self.spawn(books, key, 0, async move { Done::Stopped(task.await) });
    }

    /// Takes in a job's result.
    fn finished(&self, books: &mut Books, joined: Result<(tokio::task::Id, Done), JoinError>) {
        let (id, done) = match joined {
            Ok((id, done)) => (id, Ok(done)),
            Err(error) => (error.id(), Err(error)),
        };
        let Some((key, generation)) = books.job_keys.remove(&id) else { return };
        books.busy.remove(&key);
        let name = names::binding_name(&key.0, &key.1);
        let failed = |books: &mut Books, why: String| {
            tracing::error!(binding = %name, reason = %why, "Uploaded handler cannot run.");
            books.problems.insert(key.clone(), why);
            books.failed_at.insert(key.clone(), generation);
        };
        match done {
            Ok(Done::Started(started)) => match *started {
                Ok(deployed) => {
                    crate::telemetry::revive(&name);
                    books.problems.remove(&key);
                    books.failed_at.remove(&key);
                    books.running.insert(key, deployed);
                }
                Err(why) => {
                    self.engine.health.set(&name, BindingState::Failed(why.clone()));
                    failed(books, why);
                }
            },
            // The previous version keeps running: the binding's state stays what it is.
            Ok(Done::Swapped { handler: Err(why), .. }) => failed(books, why),
            Ok(Done::Swapped { version, handler: Ok(handler) }) => {
                // A binding whose read loop ended meanwhile starts afresh in the next pass.
                if let Some(deployed) = books.running.get_mut(&key).filter(|d| !d.task.is_finished()) {
                    deployed.binding.handler.replace(handler);
                    tracing::info!(binding = %name, from = %deployed.version, to = %version,
                        "Version activated; in-flight events finish on the one they started on.");
                    deployed.version = version;
                }
                books.problems.remove(&key);
                books.failed_at.remove(&key);
            }
            Ok(Done::Stopped(ended)) => {
                match ended {
                    Ok(Ok(()) | Err(BindingError::Stopped)) => {
                        tracing::info!(binding = %name, "Uploaded handler's binding stopped.");
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(binding = %name, %error, "Uploaded handler's binding failed as it stopped.");
                    }
                    Err(join) => {
                        tracing::error!(binding = %name, error = %join, "Uploaded handler's read loop panicked.");
                    }
                }
                books.stopped.insert(key);
            }
            // A job that panicked: a binding not running did not start (or its stop's end is
            // not known: it is not waited for again); a running one keeps its version.
            Err(join) => {
                let why = format!("its start, swap or stop did not finish: {join}");
                if !books.running.contains_key(&key) {
                    self.engine.health.set(&name, BindingState::Failed(why.clone()));
                    books.stopped.insert(key.clone());
                }
                failed(books, why);
            }
        }
    }

    /// At shutdown, after keyhole's run token was cancelled: waits for the jobs in progress and
    /// for every binding's drain, concurrently, within the drain and commit bounds; aborts
    /// whatever is left after them.
    async fn stop_all(&self, mut books: Books) {
        let bound = self.engine.settings.drain_timeout + self.engine.settings.commit_timeout + SHUTDOWN_GRACE;
        let mut aborts: Vec<tokio::task::AbortHandle> = Vec::new();
        let stopped = tokio::time::timeout(bound, async {
            // A start in progress hands over its binding (already cancelled with the run token).
            while let Some(joined) = books.jobs.join_next_with_id().await {
                if let Ok((id, Done::Started(started))) = joined
                    && let Ok(deployed) = *started
                    && let Some(((tenant, handler), _)) = books.job_keys.remove(&id)
                {
                    books.running.insert((tenant, handler), deployed);
                }
            }
            let drains = books.running.drain().map(|(_, deployed)| {
                deployed.cancel.cancel();
                aborts.push(deployed.task.abort_handle());
                let name = deployed.binding.settings.name.clone();
                async move {
                    match deployed.task.await {
                        Ok(Ok(()) | Err(BindingError::Stopped)) => {}
                        Ok(Err(error)) => {
                            tracing::warn!(binding = %name, %error, "Binding failed as it stopped.")
                        }
                        Err(join) => {
                            tracing::error!(binding = %name, error = %join, "Binding's read loop panicked.")
                        }
                    }
                }
            });
            futures_util::future::join_all(drains.collect::<Vec<_>>()).await;
        })
        .await;
        if stopped.is_err() {
            tracing::warn!(
                bound_ms = bound.as_millis(),
                "Uploaded handlers did not stop within the bound; aborted."
            );
            books.jobs.abort_all();
            for abort in aborts {
                abort.abort();
            }
        }
    }

    async fn start(&self, deployment: &Deployment) -> Result<Deployed, String> {
        let settings = self.binding_settings(deployment)?;
        let handler = self.load(&settings, deployment).await?;
        // Creating the clients blocks (for exactly-once, initialising transactions, up to their
        // timeout): not on an async worker.
        let (engine, bound) = (self.engine.clone(), settings.clone());
        let started = tokio::task::spawn_blocking(move || engine.bind(&bound, handler))
            .await
            .map_err(|e| format!("creating its clients did not finish: {e}"))?
            .map_err(|(key, message)| format!("{key}: {message}"))?;
        if self.cancel.is_cancelled() {
            return Err("keyhole is stopping".into());
        }
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
    /// cache when the registry is in Kafka), compiles it within the budget in its tenant's queue
    /// unless it is compiled already ([`Supervisor::prepare`] did, or another binding of the
    /// same bytes), and loads it on a blocking thread.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_covers_its_own_bindings_only() {
        let key = |t: &str, h: &str| (t.to_string(), h.to_string());
        assert!(Scope::All.covers(&key("a", "x")));
        assert!(Scope::Tenant("a".into()).covers(&key("a", "x")));
        assert!(!Scope::Tenant("a".into()).covers(&key("b", "x")));
        assert!(Scope::Handler("a".into(), "x".into()).covers(&key("a", "x")));
        assert!(!Scope::Handler("a".into(), "x".into()).covers(&key("a", "y")));
    }
}
