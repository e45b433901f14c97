//! What each binding is doing, for `/readyz`, the admin API and the paused gauge.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

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
        }
    }

    /// Why, for the states that have a reason.
    pub fn reason(&self) -> Option<&str> {
        match self {
            BindingState::Paused(why) | BindingState::NotGranted(why) | BindingState::Failed(why) => {
                Some(why)
            }
            BindingState::Stopped => Some("stopped by its failure policy"),
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

#[cfg(test)]
mod tests {
    use super::*;

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
