//! What happens next after an attempt: pure rules, no I/O, tested on their own.
//!
//! An attempt either decides the event (released and handled, consent denied, gone) or fails.
//! A failure is retried, dead-lettered or stops the binding, by the binding's failure policy
//! and retry limits. A failure that is the data source's (it is down, or refuses keyhole's
//! credentials) pauses the binding and never counts against the event's limits: only an event
//! that keeps failing while the owner answers others (a poison reference) uses them up.

use super::pause::PauseReason;
use crate::config::{FailurePolicy, RetryConfig, Stage};
use crate::resolve::ResolveError;
use std::time::Duration;

/// One attempt that did not reach a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Where it failed.
    pub stage: Stage,
    /// A stable label, e.g. `transient`, `trapped`.
    pub kind: &'static str,
    /// Why, without personal data.
    pub reason: String,
    /// Whether trying again may succeed.
    pub retryable: bool,
    /// The owner's `Retry-After`.
    pub retry_after: Option<Duration>,
    /// Set when the failure is the data source's, not the event's: the binding pauses and the
    /// attempt is not counted.
    pub pause: Option<PauseReason>,
}

impl Failure {
    /// A failure of the event itself at `stage`.
    pub fn of_event(stage: Stage, kind: &'static str, reason: String, retryable: bool) -> Self {
        Failure { stage, kind, reason, retryable, retry_after: None, pause: None }
    }
}

/// What the owner's refusal means for the event.
#[derive(Debug)]
pub enum Unresolved {
    /// The owner decided: consent denied (403, 451) or gone (404, 410).
    Decided(ResolveError),
    /// The attempt failed.
    Failed(Failure),
}

/// Classifies the owner's answer. `answered_meanwhile`: whether the data source answered anyone
/// since this event's previous attempt (or its start): if it did, a transient failure is this
/// reference's own; if not, the owner is taken as unavailable.
pub fn unresolved(error: ResolveError, answered_meanwhile: bool) -> Unresolved {
    let retry_after = error.retry_after();
    let failure = |retryable, pause| Failure {
        stage: Stage::Resolve,
        kind: error.kind(),
        reason: error.to_string(),
        retryable,
        retry_after,
        pause,
    };
    match &error {
        ResolveError::ConsentDenied { .. } | ResolveError::Gone { .. } => Unresolved::Decided(error),
        ResolveError::Unauthorized => {
            Unresolved::Failed(failure(true, Some(PauseReason::CredentialsRefused)))
        }
        ResolveError::Transient { reason, .. } if !answered_meanwhile => {
            Unresolved::Failed(failure(true, Some(PauseReason::Unavailable(reason.clone()))))
        }
        ResolveError::Transient { .. } => Unresolved::Failed(failure(true, None)),
        ResolveError::TooLarge { .. } | ResolveError::Rejected { .. } | ResolveError::NotSent => {
            Unresolved::Failed(failure(false, None))
        }
    }
}

/// An event's use of its retry limits: only the attempts that failed on their own count, and
/// only their time.
#[derive(Clone, Debug)]
pub struct RetryBudget {
    max_attempts: u32,
    max_elapsed: Duration,
    /// Attempts that counted.
    counted: u32,
    /// Time spent in attempts that counted, and in the waits after them.
    counted_elapsed: Duration,
}

impl RetryBudget {
    /// A fresh budget under `retry`'s limits.
    pub fn new(retry: &RetryConfig) -> Self {
        RetryBudget {
            max_attempts: retry.max_attempts,
            max_elapsed: retry.max_elapsed(),
            counted: 0,
            counted_elapsed: Duration::ZERO,
        }
    }

    /// Records a failed attempt that took `spent`; a pausing failure is not counted.
    pub fn spend(&mut self, failure: &Failure, spent: Duration) {
        if failure.pause.is_none() {
            self.counted += 1;
            self.counted_elapsed += spent;
        }
    }

    /// Attempts that counted so far.
    pub fn counted(&self) -> u32 {
        self.counted
    }

    /// Time that counted so far.
    pub fn counted_elapsed(&self) -> Duration {
        self.counted_elapsed
    }

    fn within(&self) -> bool {
        self.counted < self.max_attempts && self.counted_elapsed < self.max_elapsed
    }
}

/// After a failure: try again, or give up (then the policy dead-letters or stops).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Wait with backoff, then attempt again.
    Retry,
    /// The failure is final.
    GiveUp,
}

/// Whether to try again after `failure`, already spent from `budget`, under `policy`.
pub fn after_failure(failure: &Failure, policy: FailurePolicy, budget: &RetryBudget) -> Next {
    let retry =
        failure.pause.is_some() || policy == FailurePolicy::Retry || (failure.retryable && budget.within());
    if retry { Next::Retry } else { Next::GiveUp }
}

/// The reason recorded for a failure that gave up after retries.
pub fn final_reason(failure: &Failure, budget: &RetryBudget) -> String {
    if failure.retryable {
        format!(
            "{} (gave up after {} attempts in {})",
            failure.reason,
            budget.counted(),
            humantime::format_duration(Duration::from_secs(budget.counted_elapsed().as_secs()))
        )
    } else {
        failure.reason.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient() -> ResolveError {
        ResolveError::Transient { reason: "HTTP 503".into(), retry_after: Some(Duration::from_secs(2)) }
    }

    fn budget(max_attempts: u32) -> RetryBudget {
        RetryBudget::new(&RetryConfig { max_attempts, ..RetryConfig::default() })
    }

    #[test]
    fn an_owner_answering_nobody_pauses_and_costs_the_event_nothing() {
        let Unresolved::Failed(failure) = unresolved(transient(), false) else { panic!() };
        assert_eq!(failure.pause, Some(PauseReason::Unavailable("HTTP 503".into())));
        assert_eq!(failure.retry_after, Some(Duration::from_secs(2)));
        let mut budget = budget(1);
        for _ in 0..1000 {
            budget.spend(&failure, Duration::from_secs(60));
            assert_eq!(after_failure(&failure, FailurePolicy::DeadLetter, &budget), Next::Retry);
        }
        assert_eq!((budget.counted(), budget.counted_elapsed()), (0, Duration::ZERO));
    }

    #[test]
    fn a_reference_failing_while_the_owner_answers_others_uses_up_its_limits() {
        let Unresolved::Failed(failure) = unresolved(transient(), true) else { panic!() };
        assert_eq!(failure.pause, None);
        let mut budget = budget(3);
        let mut nexts = Vec::new();
        for _ in 0..3 {
            budget.spend(&failure, Duration::from_millis(10));
            nexts.push(after_failure(&failure, FailurePolicy::DeadLetter, &budget));
        }
        assert_eq!(nexts, [Next::Retry, Next::Retry, Next::GiveUp]);
        assert!(final_reason(&failure, &budget).contains("gave up after 3 attempts"));
        // The `retry` policy retries past the limits.
        assert_eq!(after_failure(&failure, FailurePolicy::Retry, &budget), Next::Retry);
    }

    #[test]
    fn the_elapsed_limit_counts_only_the_events_own_failures() {
        let mut budget = RetryBudget::new(&RetryConfig { max_elapsed_ms: 1000, ..RetryConfig::default() });
        let Unresolved::Failed(outage) = unresolved(transient(), false) else { panic!() };
        let Unresolved::Failed(own) = unresolved(transient(), true) else { panic!() };
        budget.spend(&outage, Duration::from_secs(3600));
        assert_eq!(after_failure(&own, FailurePolicy::DeadLetter, &budget), Next::Retry);
        budget.spend(&own, Duration::from_millis(1500));
        assert_eq!(after_failure(&own, FailurePolicy::DeadLetter, &budget), Next::GiveUp);
    }

    #[test]
    fn credentials_refused_pause_and_decisions_are_decisions() {
        let Unresolved::Failed(failure) = unresolved(ResolveError::Unauthorized, true) else { panic!() };
        assert_eq!(failure.pause, Some(PauseReason::CredentialsRefused));
        assert!(matches!(
            unresolved(ResolveError::ConsentDenied { status: 451 }, false),
            Unresolved::Decided(_)
        ));
        assert!(matches!(unresolved(ResolveError::Gone { status: 410 }, false), Unresolved::Decided(_)));
        let Unresolved::Failed(rejected) = unresolved(ResolveError::Rejected { status: 400 }, false) else {
            panic!()
        };
        assert!(!rejected.retryable && rejected.pause.is_none());
        assert_eq!(after_failure(&rejected, FailurePolicy::DeadLetter, &budget(10)), Next::GiveUp);
    }
}
