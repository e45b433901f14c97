//! Runs a binding's events with per-key ordering, settles failures by the binding's policy, and
//! acknowledges events as they finish.
//!
//! Each event holds a permit of its binding's in-flight limit from the moment it is read until
//! it is finished, so a full binding stops reading and memory stays bounded.

use super::binding::Binding;
use super::event::{self, decide};
use super::ordering::KeyOrder;
use super::outputs::{self, Interrupted};
use crate::cloudevents::{ReferenceEvent, Refusal};
use crate::config::Stage;
use crate::kafka::{self, BindingConsumer, OffsetTracker, Received, Ticket, TopicPartition};
use crate::model::Origin;
use crate::records::audit::{Decision, Disposal, Outcome};
use crate::telemetry::{self, Consumed, EventTrace, InFlight};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// How long the best-effort audit record of an event that stops its binding may take: the event
/// is not acknowledged (it is read again after a restart), so the stop does not wait longer.
const STOP_RECORD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One event read from Kafka and waiting for its turn.
pub struct Work {
    /// Its place in the partition's offset tracking.
    pub ticket: Ticket,
    /// Its topic, partition and offset.
    pub origin: Origin,
    /// The record as received: its key orders events, and a dead letter is this copy.
    pub received: Received,
    /// The parsed envelope, or why it was refused.
    pub event: Result<ReferenceEvent, Refusal>,
    /// Its share of the binding's in-flight limit, released when the event is finished.
    pub permit: OwnedSemaphorePermit,
    /// Counts the event in the in-flight gauge until it is finished, abandoned or dropped.
    pub in_flight: InFlight,
}

/// Events of one key within one partition run one at a time: the key, with its partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    partition: TopicPartition,
    key: Vec<u8>,
}

/// Runs one binding's events.
pub struct Dispatcher {
    binding: Arc<Binding>,
    consumer: Arc<BindingConsumer>,
    tracker: Arc<OffsetTracker>,
    /// Events waiting behind a busy key.
    order: Mutex<KeyOrder<Key, Work>>,
    /// The binding's own token: cancelled at shutdown, or when a failure policy stops the
    /// binding. Interrupts retries: an event waiting for an unavailable owner is left to be read
    /// again rather than holding up the drain.
    cancel: CancellationToken,
    /// Whether a finished event's offset is stored here (at-least-once). At-most-once committed
    /// before handling; exactly-once commits in the batch's transaction.
    store_offsets: bool,
    /// Set when a failure policy stopped the binding.
    stopped: AtomicBool,
    /// Events left unfinished (to be read again) since the counter was last taken.
    abandoned: AtomicUsize,
    /// Cancelled when the drain's time is up: whatever still runs is dropped where it stands
    /// (its event is not acknowledged, so it is read again), so that nothing is sent or stored
    /// after the binding's final commit.
    hard_stop: CancellationToken,
}

impl Dispatcher {
    /// A dispatcher for one binding's consumer. `cancel` is the binding's own token.
    pub fn new(
        binding: Arc<Binding>,
        consumer: Arc<BindingConsumer>,
        tracker: Arc<OffsetTracker>,
        cancel: CancellationToken,
        store_offsets: bool,
    ) -> Arc<Self> {
        Arc::new(Dispatcher {
            binding,
            consumer,
            tracker,
            order: Mutex::new(KeyOrder::default()),
            cancel,
            store_offsets,
            stopped: AtomicBool::new(false),
            abandoned: AtomicUsize::new(0),
            hard_stop: CancellationToken::new(),
        })
    }

    /// Whether a failure policy stopped the binding.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Drops every event still running (after the drain's deadline).
    pub fn stop_now(&self) {
        self.hard_stop.cancel();
    }

    /// How many events were left unfinished since the last call, and resets the count.
    pub fn take_abandoned(&self) -> usize {
        self.abandoned.swap(0, Ordering::SeqCst)
    }

    fn order(&self) -> std::sync::MutexGuard<'_, KeyOrder<Key, Work>> {
        self.order.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the event now, or queues it behind the events of its key.
    pub fn submit(self: &Arc<Self>, work: Work) {
        let key = work.received.key.clone().map(|key| Key {
            partition: TopicPartition::new(work.origin.topic.clone(), work.origin.partition),
            key,
        });
        let Some(work) = self.order().submit(key.as_ref(), work) else { return };
        let (this, hard_stop) = (self.clone(), self.hard_stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = this.run_chain(work, key) => {}
                () = hard_stop.cancelled() => {}
            }
        });
    }

    /// Runs `work`, then every event that queued behind its key meanwhile. A panic while an
    /// event is decided makes it fail at the `internal` stage (dead lettered, acknowledged: see
    /// [`internal_failure`]). A panic after that (writing its records) abandons it by its
    /// dropped ticket, so it is read again after a restart or a rebalance; either way the key's
    /// next event still runs: one bad event stops neither its key nor the partition's drains.
    async fn run_chain(self: Arc<Self>, work: Work, key: Option<Key>) {
        let next = || key.as_ref().and_then(|key| self.order().finished(key));
        let panicked = |(partition, offset): (i32, i64)| {
            tracing::error!(binding = %self.binding.settings.name, partition, offset,
                "Recording an event panicked (a bug in keyhole); it is left to be read again, and the next events go on.");
            self.binding.metrics.counter(telemetry::EVENT_PANICS, None).increment(1);
        };
        one_after_another(
            work,
            next,
            |work| Box::pin(self.run(work)),
            |work| (work.origin.partition, work.origin.offset),
            panicked,
        )
        .await;
    }

    /// Runs one event in its log span and its trace (exported when span export is on).
    async fn run(&self, work: Work) {
        let settings = &self.binding.settings;
        let (event_id, extensions) = match &work.event {
            Ok(event) => (Some(event.id.as_str()), Some(event.extensions.as_slice())),
            Err(refusal) => (refusal.id.as_deref(), None),
        };
        let consumed = Consumed {
            topic: &work.origin.topic,
            partition: work.origin.partition,
            offset: work.origin.offset,
            group: &settings.group_id,
            tenant: &settings.tenant,
            handler: &settings.handler,
            event_id,
        };
        let trace = EventTrace::start(&consumed, extensions);
        let span = telemetry::event_span(&settings.name, event_id, trace.context());
        self.settle(work, trace).instrument(span).await
    }

    /// Decides the event, disposes of a failure, records the outcome, then acknowledges it. An
    /// event interrupted meanwhile is abandoned (read again); its trace ends without a decision.
    async fn settle(&self, work: Work, trace: EventTrace) {
        // The guard lives to the end of this function, however it returns.
        let Work { ticket, origin, event, permit, received, in_flight: _in_flight } = work;
        // Its partition was revoked and drained meanwhile, or the binding stopped: the event is
        // read again. (Events read before a revocation or a shutdown are still handled: the
        // drain finishes them, so a clean stop or rebalance redelivers nothing.)
        if !self.tracker.is_current(&ticket) || self.stopped() {
            return self.abandon(ticket);
        }
        let binding = &self.binding;
        let event_id = match &event {
            Ok(event) => Some(event.id.clone()),
            Err(refusal) => refusal.id.clone(),
        };
        // Boxed: the future is several KiB (the owner's request, the sandbox call), and the panic
        // guard moves what it wraps; a move of a box copies a pointer, not the state machine.
        let deciding =
            Box::pin(decide(binding, event, origin, received.key.as_deref(), &trace, &self.cancel));
        let panicked = || {
            tracing::error!(binding = %binding.settings.name, partition = ticket.partition.partition,
                offset = ticket.offset, "Handling an event panicked (a bug in keyhole); it is dead lettered.");
            binding.metrics.counter(telemetry::EVENT_PANICS, None).increment(1);
            internal_failure(binding, &ticket, event_id)
        };
        let Some(mut outcome) = decided_or(deciding, panicked).await else {
            return self.abandon(ticket);
        };
        if let Some(stage) = outcome.decision.failed_stage() {
            // `retry` was applied while deciding; what failed here is stopped or dead lettered.
            if event::stops(binding, stage) {
                tracing::error!(binding = %binding.settings.name, event_id = outcome.event_id.as_deref(),
                    %stage, "Event failed; stopping the binding (on_failure.{stage} = \"stop\"). It is read again after a restart.");
                outcome.disposal = Some(Disposal::BindingStopped);
                // Best effort: the event is not acknowledged, so it comes again either way. A
                // broker that does not confirm the record within the bound does not hold the stop.
                let write =
                    binding.outputs.audit.write(&outcome, &binding.outputs.producer, STOP_RECORD_TIMEOUT);
                if matches!(tokio::time::timeout(STOP_RECORD_TIMEOUT, write).await, Ok(Ok(()))) {
                    binding.outputs.audit.announce(outcome, &binding.metrics).await;
                }
                self.stopped.store(true, Ordering::SeqCst);
                self.cancel.cancel();
                return self.abandon(ticket);
            }
            match outputs::dead_letter(binding, &received, &outcome, &trace, &self.cancel).await {
                Ok(disposal) => outcome.disposal = Some(disposal),
                Err(Interrupted) => return self.abandon(ticket),
            }
        }
        // Recorded before the offset is stored: a committed decision is always on record.
        let (decision, attempts) = (outcome.decision.label(), outcome.attempts);
        let failure = outcome.decision.failure().map(|(kind, _)| kind);
        if outputs::record(binding, outcome, &self.cancel).await.is_err() {
            return self.abandon(ticket);
        }
        trace.finish(decision, attempts, failure);
        let consumer = self.consumer.as_ref();
        let store = self.store_offsets;
        self.tracker.finish(ticket, |partition, offset| {
            if store {
                kafka::store(consumer, partition, offset);
            }
        });
        drop(permit);
    }

    fn abandon(&self, ticket: Ticket) {
        self.abandoned.fetch_add(1, Ordering::SeqCst);
        self.tracker.abandon(ticket);
    }
}

/// What `deciding` decides; if it panics (a bug in keyhole), what `panicked` makes instead.
async fn decided_or<T>(
    deciding: impl std::future::Future<Output = Option<T>>,
    panicked: impl FnOnce() -> T,
) -> Option<T> {
    use futures_util::FutureExt as _;
    match std::panic::AssertUnwindSafe(deciding).catch_unwind().await {
        Ok(decided) => decided,
        Err(_) => Some(panicked()),
    }
}

/// The outcome of an event whose handling panicked: a failure at the `internal` stage, which is
/// always dead lettered and then acknowledged like any other failure, so the partition's offsets
/// go on and the event is not read again in a loop (it would panic again). The reason names no
/// more than that: a panic's message could quote anything the code had at hand.
fn internal_failure(binding: &Binding, ticket: &Ticket, event_id: Option<String>) -> Outcome {
    Outcome {
        time: std::time::SystemTime::now(),
        asker: binding.asker(&binding.handler.current()),
        origin: Origin {
            topic: ticket.partition.topic.clone(),
            partition: ticket.partition.partition,
            offset: ticket.offset,
        },
        event_id,
        dataref_path: None,
        attempts: 1,
        decision: Decision::Failed {
            stage: Stage::Internal,
            kind: "panic",
            reason: "keyhole failed while handling this event (a bug in keyhole: see its log)".into(),
        },
        disposal: None,
    }
}

/// Runs `each` on `first`, then on whatever `next` gives, until it gives nothing. A panic in one
/// is caught and reported to `panicked` (with what `describe` said of the item before it ran),
/// and the next item still runs: a chain of one key's events must not stop at a bad one, or every
/// later event of the key would wait for ever.
async fn one_after_another<T, D, F, Fut>(
    first: T,
    mut next: impl FnMut() -> Option<T>,
    mut each: F,
    describe: impl Fn(&T) -> D,
    panicked: impl Fn(D),
) where
    F: FnMut(T) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures_util::FutureExt as _;
    let mut item = first;
    loop {
        let described = describe(&item);
        if std::panic::AssertUnwindSafe(each(item)).catch_unwind().await.is_err() {
            panicked(described);
        }
        match next() {
            Some(following) => item = following,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{decided_or, one_after_another};
    use std::sync::Mutex;

    #[tokio::test]
    async fn a_panic_while_deciding_becomes_the_fallback_decision_and_an_interruption_stays_one() {
        let deciding = async {
            let decided: Option<u8> = Some(1);
            if decided.is_some() {
                panic!("a bug in keyhole");
            }
            decided
        };
        assert_eq!(decided_or(deciding, || 7).await, Some(7), "the panic is caught and replaced");
        assert_eq!(decided_or(async { Some(1) }, || 7).await, Some(1));
        assert_eq!(decided_or(async { None::<u8> }, || 7).await, None, "interrupted: abandoned, not failed");
    }

    #[tokio::test]
    async fn a_panicking_event_does_not_stop_the_events_queued_behind_it() {
        let queued = Mutex::new(vec![3, 2]);
        let (ran, panicked) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
        one_after_another(
            1,
            || queued.lock().unwrap().pop(),
            |n: i32| {
                let ran = &ran;
                async move {
                    assert!(n != 2, "event 2 is a bug");
                    ran.lock().unwrap().push(n);
                }
            },
            |n| *n,
            |n| panicked.lock().unwrap().push(n),
        )
        .await;
        assert_eq!(*ran.lock().unwrap(), [1, 3]);
        assert_eq!(*panicked.lock().unwrap(), [2]);
    }
}
