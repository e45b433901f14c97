//! What each binding is doing, for `/readyz`, the admin API and the paused gauge; and whether
//! the Kafka cluster answered lately ([`Reachability`]). Both are latches that the components
//! set as they learn something: `/readyz` reads them and does no I/O of its own.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What a binding is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindingState {
    /// Consuming.
    Running,
    /// Consuming, but no new event starts: its data source is unavailable or refuses keyhole's
    /// credentials (the reason). Events already started keep probing; the first success resumes.
    Paused(String),
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
    /// Being stopped (deleted, deactivated, no longer granted, or restarting on a changed
    /// spec): its in-flight events drain and its offsets are committed. What it is next is set
    /// once that has finished.
    Stopping,
}

impl BindingState {
    /// The state's name in the admin API.
    pub fn label(&self) -> &'static str {
        match self {
            BindingState::Running => "running",
            BindingState::Paused(_) => "paused",
            BindingState::Inactive => "inactive",
            BindingState::NotGranted(_) => "not_granted",
            BindingState::Stopped => "stopped",
            BindingState::Failed(_) => "failed",
            BindingState::Finished => "finished",
            BindingState::Stopping => "stopping",
        }
    }

    /// Why, for the states that have a reason.
    pub fn reason(&self) -> Option<&str> {
        match self {
            BindingState::Paused(why) | BindingState::NotGranted(why) | BindingState::Failed(why) => {
                Some(why)
            }
            BindingState::Stopped => {
                Some("stopped by its failure policy; activate a version to start it again")
            }
            _ => None,
        }
    }
}

/// Every binding's state, by binding name (`tenant/handler`).
#[derive(Default)]
pub struct Health(Mutex<BTreeMap<String, BindingState>>);

impl Health {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, BindingState>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets a binding's state.
    pub fn set(&self, binding: &str, state: BindingState) {
        self.lock().insert(binding.to_string(), state);
    }

    /// What a binding's own read loop reports about itself (running; finished, stopped or
    /// failed when it ends). A binding its supervisor is stopping stays
    /// [`BindingState::Stopping`]: the supervisor says what it is next.
    pub fn report(&self, binding: &str, state: BindingState) {
        let mut states = self.lock();
        if states.get(binding) != Some(&BindingState::Stopping) {
            states.insert(binding.to_string(), state);
        }
    }

    /// Pauses a running binding (or changes why it is paused); nothing else is overwritten.
    pub fn pause(&self, binding: &str, why: String) {
        if let Some(state @ (BindingState::Running | BindingState::Paused(_))) = self.lock().get_mut(binding)
        {
            *state = BindingState::Paused(why);
        }
    }

    /// Resumes a paused binding.
    pub fn resume(&self, binding: &str) {
        if let Some(state @ BindingState::Paused(_)) = self.lock().get_mut(binding) {
            *state = BindingState::Running;
        }
    }

    /// Forgets a binding.
    pub fn remove(&self, binding: &str) {
        self.lock().remove(binding);
    }

    /// A binding's state, if keyhole knows it.
    pub fn get(&self, binding: &str) -> Option<BindingState> {
        self.lock().get(binding).cloned()
    }

    /// The bindings that should do their work but do not: paused, stopped or failed.
    pub fn unhealthy(&self) -> Vec<(String, BindingState)> {
        self.lock()
            .iter()
            .filter(|(_, state)| {
                matches!(state, BindingState::Paused(_) | BindingState::Stopped | BindingState::Failed(_))
            })
            .map(|(name, state)| (name.clone(), state.clone()))
            .collect()
    }
}

/// How often the Kafka cluster is asked whether it answers.
pub const BROKER_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// How long one check waits for the cluster's answer.
pub const BROKER_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A check older than this is not trusted (the checking task is stuck or gone).
const BROKER_CHECK_STALE: Duration = Duration::from_secs(30);

/// Whether the Kafka cluster answered keyhole's last check. Set by the engine's checking task
/// ([`crate::engine::Engine::watch_broker`]), read by `/readyz` without any I/O: a probe answers
/// at once however the broker fares, and a flood of probes sends nothing to the cluster.
#[derive(Default)]
pub struct Reachability(Mutex<Option<(Instant, Result<(), String>)>>);

impl Reachability {
    /// Records a check's result.
    pub fn set(&self, checked: Result<(), String>) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((Instant::now(), checked));
    }

    /// `Ok` when the last check, a recent one, was answered; else why the cluster is not known
    /// to be reachable.
    pub fn get(&self) -> Result<(), String> {
        match &*self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) {
            None => Err("the Kafka cluster has not answered yet (its first check is under way)".into()),
            Some((at, _)) if at.elapsed() > BROKER_CHECK_STALE => Err(format!(
                "the Kafka cluster was last checked {} s ago; its check does not run",
                at.elapsed().as_secs()
            )),
            Some((_, Ok(()))) => Ok(()),
            Some((_, Err(error))) => Err(format!("the Kafka cluster is not reachable: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopping_binding_keeps_its_state_until_its_supervisor_says() {
        let health = Health::default();
        health.report("a/x", BindingState::Running);
        health.set("a/x", BindingState::Stopping);
        health.report("a/x", BindingState::Finished);
        health.pause("a/x", "owner down".into());
        assert_eq!(health.get("a/x"), Some(BindingState::Stopping));
        assert!(health.unhealthy().is_empty(), "draining is not a failure");
        health.set("a/x", BindingState::Inactive);
        health.report("a/x", BindingState::Running);
        assert_eq!(health.get("a/x"), Some(BindingState::Running));
    }

    #[test]
    fn the_broker_is_not_ready_before_its_first_check_nor_after_a_failed_one() {
        let broker = Reachability::default();
        assert!(broker.get().unwrap_err().contains("not answered yet"));
        broker.set(Err("all brokers down".into()));
        let why = broker.get().unwrap_err();
        assert!(why.contains("not reachable") && why.contains("all brokers down"), "{why}");
        broker.set(Ok(()));
        assert_eq!(broker.get(), Ok(()));
    }

    #[test]
    fn only_a_running_binding_pauses_and_only_a_paused_one_resumes() {
        let health = Health::default();
        health.set("a/x", BindingState::Running);
        health.set("a/y", BindingState::Stopped);
        health.pause("a/x", "owner down".into());
        health.pause("a/y", "owner down".into());
        assert_eq!(health.get("a/x"), Some(BindingState::Paused("owner down".into())));
        assert_eq!(health.get("a/y"), Some(BindingState::Stopped));
        assert_eq!(health.unhealthy().len(), 2);
        health.resume("a/x");
        health.resume("a/y");
        assert_eq!(health.get("a/x"), Some(BindingState::Running));
        assert_eq!(health.get("a/y"), Some(BindingState::Stopped));
    }
}
