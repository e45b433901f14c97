//! Pausing a binding whose data source cannot answer: its outage is not the events' fault.
//!
//! While paused, no new event asks the owner; the events that met the outage keep probing with
//! backoff, and one waiting event is let through every [`PROBE_INTERVAL`] (half-open, as a
//! circuit breaker would), so that a reference that merely fails on its own (a poison reference)
//! cannot hold the binding paused while the owner answers everyone else. The first answer that
//! is not a failure resumes the binding.

use super::health::Health;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a paused binding lets one waiting event through to probe the owner.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Why a binding paused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PauseReason {
    /// The owner refused keyhole's own credentials (401): the operator's to fix.
    CredentialsRefused,
    /// The owner is unavailable: connection refused or reset, timeout, 408, 429, 5xx.
    Unavailable(String),
}

impl PauseReason {
    /// The reason's value of the paused gauge's `reason` label (`telemetry::PAUSE_REASONS`).
    pub fn label(&self) -> &'static str {
        match self {
            PauseReason::Unavailable(_) => "owner_unavailable",
            PauseReason::CredentialsRefused => "unauthorized",
        }
    }
}

impl std::fmt::Display for PauseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PauseReason::CredentialsRefused => {
                f.write_str("the data owner refuses keyhole's credentials (401)")
            }
            PauseReason::Unavailable(why) => write!(f, "the data owner is unavailable: {why}"),
        }
    }
}

/// A binding's pause gate: open while the owner answers.
pub struct PauseGate {
    paused: watch::Sender<Option<PauseReason>>,
    /// When the next waiting event may go through as a probe.
    next_probe: Mutex<Instant>,
    /// The binding's name, in [`Health`].
    name: String,
    /// The binding's paused gauges, one per reason (`telemetry::PAUSE_REASONS`).
    gauges: [metrics::Gauge; 2],
    health: Arc<Health>,
}

impl PauseGate {
    /// An open gate for binding `name`, reporting to `health` and the paused `gauges` (one per
    /// reason of `telemetry::PAUSE_REASONS`, in its order).
    pub fn new(name: &str, gauges: [metrics::Gauge; 2], health: Arc<Health>) -> Self {
        for gauge in &gauges {
            gauge.set(0.0);
        }
        PauseGate {
            paused: watch::Sender::new(None),
            next_probe: Mutex::new(Instant::now()),
            name: name.to_string(),
            gauges,
            health,
        }
    }

    /// Sets the paused gauges: 1 for `reason`'s, 0 for the others (all 0 for `None`).
    fn show(&self, reason: Option<&PauseReason>) {
        let label = reason.map(PauseReason::label);
        for (gauge, name) in self.gauges.iter().zip(crate::telemetry::PAUSE_REASONS) {
            gauge.set(if label == Some(name) { 1.0 } else { 0.0 });
        }
    }

    /// Pauses the binding (or updates why); logs only when it was running.
    ///
    /// The gate, the binding's health and the gauge change together, under the gate's lock:
    /// a close and an open racing each other (two answers of an owner going down or coming
    /// back) must not leave the health saying "paused" with the gate open.
    pub fn close(&self, reason: PauseReason) {
        self.paused.send_if_modified(|paused| {
            let was_open = paused.is_none();
            self.health.pause(&self.name, reason.to_string());
            // Also when only the reason changed (an outage, then refused credentials).
            self.show(Some(&reason));
            if was_open {
                *self.next_probe.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now() + PROBE_INTERVAL;
                tracing::error!(binding = %self.name, reason = %reason,
                    "Binding paused: no new event asks the owner; events under way keep probing.");
            }
            *paused = Some(reason.clone());
            was_open
        });
    }

    /// Resumes the binding.
    pub fn open(&self) {
        self.paused.send_if_modified(|paused| {
            if paused.take().is_none() {
                return false;
            }
            self.health.resume(&self.name);
            self.show(None);
            tracing::info!(binding = %self.name, "Binding resumed: the data owner answers again.");
            true
        });
    }

    /// Waits until the event may ask the owner: the gate is open, or this event is the next
    /// probe. `false` if cancelled first.
    pub async fn admit(&self, cancel: &CancellationToken) -> bool {
        let mut paused = self.paused.subscribe();
        loop {
            if paused.borrow_and_update().is_none() {
                return true;
            }
            let next_probe = *self.next_probe.lock().unwrap_or_else(|p| p.into_inner());
            tokio::select! {
                // An open gate wins over shutdown: events already read are finished in the drain.
                biased;
                changed = paused.changed() => if changed.is_err() { return false },
                () = tokio::time::sleep_until(next_probe) => {
                    if self.take_probe() {
                        return true;
                    }
                }
                () = cancel.cancelled() => return false,
            }
        }
    }

    /// Claims the probe slot if it is due; only one waiting event gets each.
    fn take_probe(&self) -> bool {
        let mut next = self.next_probe.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now < *next {
            return false;
        }
        *next = now + PROBE_INTERVAL;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> PauseGate {
        let health = Arc::new(Health::default());
        health.set("t/h", super::super::health::BindingState::Running);
        PauseGate::new("t/h", [metrics::gauge!("test_paused"), metrics::gauge!("test_paused")], health)
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_gate_lets_one_waiting_event_through_per_probe_interval() {
        let gate = Arc::new(gate());
        let cancel = CancellationToken::new();
        gate.close(PauseReason::Unavailable("HTTP 503".into()));
        assert_eq!(gate.health.get("t/h").map(|s| s.label()), Some("paused"));
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let (gate, cancel) = (gate.clone(), cancel.clone());
                tokio::spawn(async move { gate.admit(&cancel).await })
            })
            .collect();
        tokio::time::sleep(PROBE_INTERVAL / 2).await;
        assert_eq!(waiting.iter().filter(|w| w.is_finished()).count(), 0, "nothing before the first probe");
        tokio::time::sleep(PROBE_INTERVAL).await;
        assert_eq!(waiting.iter().filter(|w| w.is_finished()).count(), 1, "one probe per interval");
        tokio::time::sleep(PROBE_INTERVAL).await;
        assert_eq!(waiting.iter().filter(|w| w.is_finished()).count(), 2);
        gate.open();
        for w in waiting {
            assert!(w.await.unwrap());
        }
        assert_eq!(gate.health.get("t/h").map(|s| s.label()), Some("running"));
    }

    #[test]
    fn racing_closes_and_opens_never_leave_the_health_paused_with_the_gate_open() {
        let gate = Arc::new(gate());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let gate = gate.clone();
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        gate.close(PauseReason::Unavailable("HTTP 503".into()));
                        gate.open();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        gate.open();
        assert_eq!(gate.health.get("t/h").map(|s| s.label()), Some("running"));
        assert!(gate.paused.borrow().is_none());
    }

    #[test]
    fn the_paused_gauges_show_the_reason_while_paused_and_zero_otherwise() {
        use crate::telemetry::PAUSE_REASONS;
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let rendered = recorder.handle();
        let gauges = metrics::with_local_recorder(&recorder, || {
            PAUSE_REASONS.map(|reason| metrics::gauge!("paused", "reason" => reason))
        });
        let health = Arc::new(Health::default());
        health.set("t/h", super::super::health::BindingState::Running);
        let gate = PauseGate::new("t/h", gauges, health);
        let shown = || {
            let text = rendered.render();
            PAUSE_REASONS.map(|reason| {
                let series = format!("paused{{reason=\"{reason}\"}} ");
                text.lines().find_map(|line| line.strip_prefix(series.as_str())).map(str::to_string)
            })
        };
        let both = |a: &str, b: &str| [Some(a.to_string()), Some(b.to_string())];
        assert_eq!(shown(), both("0", "0"), "both reasons at 0 from the start");
        gate.close(PauseReason::Unavailable("HTTP 503".into()));
        assert_eq!(shown(), both("1", "0"));
        gate.close(PauseReason::CredentialsRefused);
        assert_eq!(shown(), both("0", "1"), "the reason changed while paused");
        gate.open();
        assert_eq!(shown(), both("0", "0"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_gate_admits_at_once_and_cancellation_ends_the_wait() {
        let gate = gate();
        let cancel = CancellationToken::new();
        assert!(gate.admit(&cancel).await);
        gate.close(PauseReason::CredentialsRefused);
        cancel.cancel();
        assert!(!gate.admit(&cancel).await);
    }
}
