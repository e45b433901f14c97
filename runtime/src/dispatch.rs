//! One event through the pipeline: envelope → resolve (with retries) → sandbox → outcome, and
//! the key-ordered concurrency that runs many events at once.
//!
//! Events with the same Kafka key (within a partition) are handled strictly one after another;
//! events with different keys, or none, run concurrently. Each event holds a permit of its
//! binding's in-flight limit from the moment it is read until it is finished, so a full binding
//! stops reading and memory stays bounded.

use crate::audit::{Asker, Audit, Decision, Disposal, Origin, Outcome};
use crate::config::{BindingSettings, Delivery, FailurePolicy, Stage};
use crate::envelope::{EnvelopeError, ReferenceEvent};
use crate::kafka::{self, BindingConsumer, OffsetTracker, Received, Ticket};
use crate::receipt::{self, Receipt, Receipts};
use crate::resolve::{Backoff, Disposition, Released, Requester, ResolveError, Resolver};
use crate::sandbox::{self, GuestError, Handler};
use crate::telemetry::{self, BindingLabels, InFlight, TraceContext};
use rdkafka::producer::FutureProducer;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Everything a binding's events need, shared by its tasks.
pub struct Binding {
    /// The binding's configuration.
    pub settings: BindingSettings,
    /// The active version of the handler component; replaced in place when another version is
    /// activated. Each event takes the version current when it starts and keeps it to the end.
    pub handler: HandlerSlot,
    /// The data source's resolver (shared with other bindings of the same source).
    pub resolver: Arc<Resolver>,
    /// The data source's base URL, that references resolve against.
    pub base_url: url::Url,
    /// Backoff between retries.
    pub backoff: Backoff,
    /// Closed while the data owner refuses keyhole's own credentials (401).
    pub gate: PauseGate,
    /// Where outcomes go.
    pub audit: Arc<Audit>,
    /// Where access receipts go, one per request to the data owner.
    pub receipts: Arc<Receipts>,
    /// Publishes replies and dead letters: shared by the bindings that are not exactly-once;
    /// a binding's own transactional producer when it is.
    pub producer: Arc<FutureProducer>,
}

impl Binding {
    fn asker(&self, handler: &Handler) -> Asker {
        Asker {
            tenant: self.settings.tenant.clone(),
            handler: self.settings.handler.clone(),
            purpose: self.settings.purpose.clone(),
            version: handler.version().to_string(),
        }
    }

    /// The labels of the binding's metrics.
    pub fn labels(&self) -> BindingLabels {
        BindingLabels::new(&self.settings.name, &self.settings.tenant)
    }
}

/// A binding's active handler version, swappable while events run (hot swap).
pub struct HandlerSlot(std::sync::RwLock<Arc<Handler>>);

impl HandlerSlot {
    /// A slot holding `handler`.
    pub fn new(handler: Handler) -> Self {
        HandlerSlot(std::sync::RwLock::new(Arc::new(handler)))
    }

    /// The version new events start on.
    pub fn current(&self) -> Arc<Handler> {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Makes `handler` the version new events start on; events already started finish on
    /// theirs, which lives as long as they hold it.
    pub fn replace(&self, handler: Handler) {
        *self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(handler);
    }
}

/// Pauses a binding: while the data owner refuses keyhole's credentials, no new request starts;
/// the events that met the refusal keep probing with backoff and reopen the gate on success.
pub struct PauseGate(watch::Sender<bool>);

impl Default for PauseGate {
    fn default() -> Self {
        PauseGate(watch::Sender::new(false))
    }
}

impl PauseGate {
    fn close(&self) {
        self.0.send_if_modified(|paused| !std::mem::replace(paused, true));
    }

    fn open(&self) {
        self.0.send_if_modified(|paused| std::mem::replace(paused, false));
    }

    /// Waits until the gate is open; `false` if cancelled first.
    async fn wait_open(&self, cancel: &CancellationToken) -> bool {
        let mut paused = self.0.subscribe();
        tokio::select! {
            // An open gate wins over shutdown: events already read are finished in the drain.
            biased;
            opened = paused.wait_for(|p| !*p) => opened.is_ok(),
            () = cancel.cancelled() => false,
        }
    }

    /// Whether the binding is paused.
    pub fn is_paused(&self) -> bool {
        *self.0.borrow()
    }
}

/// Why an event stopped before it was decided: it will be read again.
pub struct Interrupted;

/// One attempt that did not reach a decision.
struct Failure {
    stage: Stage,
    kind: &'static str,
    reason: String,
    /// Whether trying again may succeed.
    retryable: bool,
    /// Not counted against the retry limits: keyhole's own credentials were refused (401), which
    /// is the operator's to fix, not the event's fault.
    paused: bool,
    /// The owner's `Retry-After`.
    retry_after: Option<Duration>,
}

/// Decides one event: envelope → resolve → handler → reply, attempted again on transient
/// failures within the binding's retry limits (or without end where its failure policy says
/// `retry`). `None` when shutdown or revocation interrupted it before a decision. `trace` is the
/// event's trace context continued by keyhole, if it carried one; its reply carries it on.
pub async fn decide(
    binding: &Binding,
    event: Result<ReferenceEvent, EnvelopeError>,
    origin: Origin,
    key: Option<&[u8]>,
    trace: Option<&TraceContext>,
    cancel: &CancellationToken,
) -> Option<Outcome> {
    // The version this event runs on from its first attempt to its last, whatever is activated
    // meanwhile.
    let handler = binding.handler.current();
    let mut outcome = Outcome {
        time: SystemTime::now(),
        asker: binding.asker(&handler),
        origin,
        event_id: None,
        dataref_path: None,
        attempts: 1,
        decision: Decision::Refused { kind: "", reason: String::new() },
        disposal: None,
    };
    let event = match event {
        Ok(event) => event,
        Err(error) => {
            outcome.decision = refused(binding, error);
            return Some(outcome);
        }
    };
    outcome.event_id = Some(event.id.clone());
    outcome.dataref_path = Some(event.dataref.path().to_string());
    let url = match event.dataref.resolve_against(&binding.base_url) {
        Ok(url) => url,
        Err(error) => {
            outcome.decision = refused(binding, error);
            return Some(outcome);
        }
    };
    let retry = &binding.settings.retry;
    let started = Instant::now();
    // An event that met a refusal of keyhole's credentials probes on through the closed gate;
    // the others wait at it.
    let mut probing = false;
    // Attempts that met a refusal of keyhole's credentials do not count against the limits.
    let mut paused_attempts = 0;
    let run = Run { handler: &handler, event: &event, url: &url, key, trace };
    loop {
        let failure = match attempt(binding, &run, outcome.attempts, &mut probing, cancel).await {
            Ok(Ok(decision)) => {
                outcome.decision = decision;
                break;
            }
            Ok(Err(failure)) => failure,
            Err(Interrupted) => return None,
        };
        let policy = binding.settings.on_failure.at(failure.stage);
        if failure.paused {
            paused_attempts += 1;
        }
        let counted = outcome.attempts - paused_attempts;
        let within_limits = counted < retry.max_attempts && started.elapsed() < retry.max_elapsed();
        if !(failure.paused || policy == FailurePolicy::Retry || (failure.retryable && within_limits)) {
            let reason = if failure.retryable {
                format!(
                    "{} (gave up after {} attempts in {})",
                    failure.reason,
                    counted,
                    humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()))
                )
            } else {
                failure.reason
            };
            outcome.decision = Decision::Failed { stage: failure.stage, kind: failure.kind, reason };
            break;
        }
        if !failure.paused {
            tracing::warn!(
                binding = %binding.settings.name, event_id = %event.id, attempt = outcome.attempts,
                stage = %failure.stage, kind = failure.kind, reason = %failure.reason, "Attempt failed; retrying."
            );
        }
        metrics::counter!(telemetry::EVENT_RETRIES, binding.labels().with("cause", failure.kind))
            .increment(1);
        sleep_or_cancel(binding.backoff.delay(outcome.attempts, failure.retry_after), cancel).await.ok()?;
        outcome.attempts += 1;
    }
    outcome.time = SystemTime::now();
    Some(outcome)
}

/// What every attempt of one event works on.
struct Run<'a> {
    /// The handler version the event started on.
    handler: &'a Handler,
    event: &'a ReferenceEvent,
    /// The reference resolved against the data source's base URL.
    url: &'a url::Url,
    /// The record's key, which the reply keeps.
    key: Option<&'a [u8]>,
    trace: Option<&'a TraceContext>,
}

/// One attempt (`number`, from 1): ask the owner (again: consent is checked on every attempt),
/// record its answer in a receipt, run the handler, publish its reply.
async fn attempt(
    binding: &Binding,
    run: &Run<'_>,
    number: u32,
    probing: &mut bool,
    cancel: &CancellationToken,
) -> Result<Result<Decision, Failure>, Interrupted> {
    let Run { handler, event, url, key, trace } = *run;
    if !*probing && !binding.gate.wait_open(cancel).await {
        return Err(Interrupted);
    }
    let who = Requester {
        tenant: &binding.settings.tenant,
        handler: &binding.settings.handler,
        purpose: &binding.settings.purpose,
        event_id: &event.id,
    };
    let resolved = binding.resolver.fetch(url, &who).await;
    record_receipt(binding, handler, event, &resolved, number, cancel).await?;
    let released = match resolved {
        Ok(released) => {
            binding.gate.open();
            *probing = false;
            released
        }
        Err(error) => return Ok(unresolved(binding, event, error, probing)),
    };
    let data_bytes = released.body.len() as u64;
    let started = Instant::now();
    let handled = handler.handle(&guest_event(event, released)).await;
    metrics::histogram!(telemetry::HANDLER_DURATION, binding.labels())
        .record(started.elapsed().as_secs_f64());
    let reply = match handled {
        Ok(reply) => reply,
        Err(error) => {
            metrics::counter!(telemetry::HANDLER_ERRORS, binding.labels().with("kind", error.kind()))
                .increment(1);
            return Ok(Err(handler_failed(error)));
        }
    };
    let destination = match reply_destination(&binding.settings, event, reply.is_some()) {
        Ok(destination) => destination,
        Err(reason) => {
            return Ok(Err(Failure {
                stage: Stage::Reply,
                kind: "reply_topic_not_allowed",
                reason,
                retryable: false,
                paused: false,
                retry_after: None,
            }));
        }
    };
    let published = match (&reply, destination) {
        (Some(reply), Some(topic)) => {
            let request = kafka::reply::Request { who: handler.identity(), event, key, trace };
            let id = until_confirmed(binding, &event.id, "Reply", cancel, || {
                kafka::reply::publish(&binding.producer, topic, &request, reply, SEND_TIMEOUT)
            })
            .await?;
            metrics::counter!(telemetry::REPLIES, binding.labels()).increment(1);
            Some((topic.to_string(), id))
        }
        _ => None,
    };
    Ok(Ok(Decision::Delivered { reply, data_bytes, published }))
}

/// Writes the receipt of one resolution attempt, and counts its outcome. Retried until written:
/// an answer whose receipt is not on record is not acted on. Only shutdown or revocation
/// interrupts it (the event is then read again, and the owner asked again).
async fn record_receipt(
    binding: &Binding,
    handler: &Handler,
    event: &ReferenceEvent,
    resolved: &Result<Released, ResolveError>,
    number: u32,
    cancel: &CancellationToken,
) -> Result<(), Interrupted> {
    let (decision, status) = match resolved {
        Ok(_) => ("released", None),
        Err(error) => (error.kind(), error.status()),
    };
    let labels = binding.labels();
    let data_source = binding.resolver.name();
    let mut outcome_labels = labels.with("data_source", data_source.to_string());
    outcome_labels.push(metrics::Label::new("outcome", decision));
    metrics::counter!(telemetry::RESOLUTIONS, outcome_labels).increment(1);
    let receipt = Receipt {
        time: receipt::now(),
        event_id: &event.id,
        tenant: &binding.settings.tenant,
        handler: &binding.settings.handler,
        handler_version: handler.version(),
        data_source,
        purpose: &binding.settings.purpose,
        subject: event.subject.as_deref(),
        dataref: event.dataref.path(),
        decision,
        status,
        attempt: number,
    };
    until_confirmed(binding, &event.id, "Receipt", cancel, || async {
        let written = binding.receipts.write(&receipt, &binding.producer, SEND_TIMEOUT).await;
        if written.is_err() {
            metrics::counter!(telemetry::RECEIPT_ERRORS, labels.labels()).increment(1);
        }
        written
    })
    .await?;
    metrics::counter!(telemetry::RECEIPTS, labels.with("decision", decision)).increment(1);
    Ok(())
}

/// What the owner's refusal or failure means for the event.
fn unresolved(
    binding: &Binding,
    event: &ReferenceEvent,
    error: ResolveError,
    probing: &mut bool,
) -> Result<Decision, Failure> {
    let disposition = error.disposition();
    let mut failure = Failure {
        stage: Stage::Resolve,
        kind: error.kind(),
        reason: error.to_string(),
        retryable: matches!(disposition, Disposition::Retry | Disposition::Pause),
        paused: false,
        retry_after: None,
    };
    match (&error, disposition) {
        (ResolveError::ConsentDenied { status }, _) => {
            return Ok(Decision::ConsentDenied { status: *status });
        }
        (ResolveError::Gone { status }, _) => return Ok(Decision::Gone { status: *status }),
        (_, Disposition::Pause) => {
            tracing::error!(binding = %binding.settings.name, event_id = %event.id, data_source = binding.resolver.name(),
                "The data owner refused keyhole's credentials (401); binding paused, retrying.");
            binding.gate.close();
            *probing = true;
            failure.paused = true;
        }
        (ResolveError::Transient { retry_after, .. }, Disposition::Retry) => {
            failure.retry_after = *retry_after
        }
        _ => {}
    }
    Err(failure)
}

/// How long one send to Kafka may wait for the broker's confirmation.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends until the broker confirms, with backoff: what is not confirmed is not acknowledged, and
/// a broker that went away is waited for. Only shutdown or revocation interrupts it.
async fn until_confirmed<T, E, F, Fut>(
    binding: &Binding,
    event_id: &str,
    what: &str,
    cancel: &CancellationToken,
    mut send: F,
) -> Result<T, Interrupted>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        match tokio::select! { biased; sent = send() => Some(sent), () = cancel.cancelled() => None } {
            Some(Ok(sent)) => return Ok(sent),
            Some(Err(error)) => {
                attempt += 1;
                tracing::warn!(binding = %binding.settings.name, event_id, %error, attempt, "{what} not confirmed; retrying.");
                sleep_or_cancel(binding.backoff.delay(attempt, None), cancel).await?;
            }
            None => return Err(Interrupted),
        }
    }
}

/// Publishes a failed event to the binding's dead-letter topic, as it was received.
pub async fn dead_letter(
    binding: &Binding,
    received: &Received,
    outcome: &Outcome,
    cancel: &CancellationToken,
) -> Result<Disposal, Interrupted> {
    let (Some(stage), Some((class, message))) = (outcome.decision.failed_stage(), outcome.decision.failure())
    else {
        return Err(Interrupted);
    };
    let failure = kafka::dead_letter::Failure {
        origin: &outcome.origin,
        group: &binding.settings.group_id,
        tenant: &binding.settings.tenant,
        handler: &binding.settings.handler,
        handler_version: &outcome.asker.version,
        stage,
        class,
        message,
        attempts: outcome.attempts,
        event_id: outcome.event_id.as_deref(),
    };
    let topic = &binding.settings.on_failure.dead_letter_topic;
    let event_id = outcome.event_id.as_deref().unwrap_or("-");
    let (partition, offset) = until_confirmed(binding, event_id, "Dead letter", cancel, || {
        kafka::dead_letter::publish(&binding.producer, topic, received, &failure, SEND_TIMEOUT)
    })
    .await?;
    metrics::counter!(telemetry::DEAD_LETTERS, binding.labels().with("stage", stage.as_str())).increment(1);
    Ok(Disposal::DeadLettered { topic: topic.clone(), partition, offset })
}

/// Where a reply goes: the topic the request names, if this handler may use it, else the
/// handler's reply topic. `Ok(None)` when there is nothing to publish or nowhere to publish it.
fn reply_destination<'a>(
    settings: &'a BindingSettings,
    request: &'a ReferenceEvent,
    has_reply: bool,
) -> Result<Option<&'a str>, String> {
    if !has_reply {
        return Ok(None);
    }
    match &request.replyto {
        Some(asked)
            if settings.reply_topic.as_ref() == Some(asked)
                || settings.reply_topics_allowed.contains(asked) =>
        {
            Ok(Some(asked))
        }
        Some(_) => Err("the request's replyto names a topic this handler may not publish to".into()),
        None => {
            if settings.reply_topic.is_none() {
                tracing::warn!(binding = %settings.name, event_id = %request.id, "The handler replied but no reply_topic is configured; reply dropped.");
            }
            Ok(settings.reply_topic.as_deref())
        }
    }
}

async fn sleep_or_cancel(delay: Duration, cancel: &CancellationToken) -> Result<(), Interrupted> {
    tokio::select! {
        () = tokio::time::sleep(delay) => Ok(()),
        () = cancel.cancelled() => Err(Interrupted),
    }
}

fn refused(binding: &Binding, error: EnvelopeError) -> Decision {
    metrics::counter!(telemetry::EVENTS_REFUSED, binding.labels().with("kind", error.kind())).increment(1);
    Decision::Refused { kind: error.kind(), reason: error.to_string() }
}

fn handler_failed(error: GuestError) -> Failure {
    Failure {
        stage: Stage::Handler,
        kind: error.kind(),
        reason: error.to_string(),
        retryable: error.is_retryable(),
        paused: false,
        retry_after: None,
    }
}

/// What the handler sees: the context attributes, the non-personal extensions and the released
/// bytes. Never the topic, partition, offset, key or reference.
fn guest_event(event: &ReferenceEvent, released: Released) -> sandbox::Event {
    sandbox::Event {
        id: event.id.clone(),
        source: event.source.clone(),
        type_: event.type_.clone(),
        subject: event.subject.clone(),
        time: event.time.clone(),
        datacontenttype: released.content_type,
        extensions: event
            .extensions
            .iter()
            .map(|(name, value)| sandbox::Extension { name: name.clone(), value: value.clone() })
            .collect(),
        data: released.body.to_vec(),
    }
}

/// One event read from Kafka and waiting for its turn.
pub struct Work {
    /// Its place in the partition's offset tracking.
    pub ticket: Ticket,
    /// Its topic, partition and offset.
    pub origin: Origin,
    /// The record as received: its key orders events, and a dead letter is this copy.
    pub received: Received,
    /// The parsed envelope, or why it was refused.
    pub event: Result<ReferenceEvent, EnvelopeError>,
    /// Its share of the binding's in-flight limit, released when the event is finished.
    pub permit: OwnedSemaphorePermit,
    /// Counts the event in the in-flight gauge until it is finished, abandoned or dropped.
    pub in_flight: InFlight,
}

/// Orders a partition's events by key: a queue per busy key; a key's chain runs on one task.
type Slot = (String, i32, Vec<u8>);

/// Runs a binding's events with per-key ordering, settles failures by the binding's policy, and
/// stores offsets as events finish.
pub struct Dispatcher {
    binding: Arc<Binding>,
    consumer: Arc<BindingConsumer>,
    tracker: Arc<OffsetTracker>,
    /// Events waiting behind a busy key.
    waiting: Mutex<HashMap<Slot, VecDeque<Work>>>,
    /// The binding's own token: cancelled at shutdown, or when a failure policy stops the
    /// binding. Interrupts retries: an event waiting for an unavailable owner is left to be read
    /// again rather than holding up the drain.
    cancel: CancellationToken,
    /// Set when a failure policy stopped the binding.
    stopped: std::sync::atomic::AtomicBool,
    /// Events left unfinished (to be read again) since the counter was last taken.
    abandoned: AtomicUsize,
}

impl Dispatcher {
    /// A dispatcher for one binding's consumer. `cancel` is the binding's own token.
    pub fn new(
        binding: Arc<Binding>,
        consumer: Arc<BindingConsumer>,
        tracker: Arc<OffsetTracker>,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Dispatcher {
            binding,
            consumer,
            tracker,
            waiting: Mutex::new(HashMap::new()),
            cancel,
            stopped: false.into(),
            abandoned: AtomicUsize::new(0),
        })
    }

    /// Whether a failure policy stopped the binding.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// How many events were left unfinished since the last call, and resets the count.
    pub fn take_abandoned(&self) -> usize {
        self.abandoned.swap(0, Ordering::SeqCst)
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<Slot, VecDeque<Work>>> {
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the event now, or queues it behind the events of its key.
    pub fn submit(self: &Arc<Self>, work: Work) {
        let slot =
            work.received.key.clone().map(|key| (work.origin.topic.clone(), work.origin.partition, key));
        if let Some(slot) = &slot {
            let mut waiting = self.waiting();
            match waiting.get_mut(slot) {
                Some(queue) => {
                    queue.push_back(work);
                    return;
                }
                None => {
                    waiting.insert(slot.clone(), VecDeque::new());
                }
            }
        }
        let this = self.clone();
        tokio::spawn(async move { this.run_chain(work, slot).await });
    }

    /// Runs `work`, then every event that queued behind its key meanwhile.
    async fn run_chain(self: Arc<Self>, mut work: Work, slot: Option<Slot>) {
        loop {
            self.run(work).await;
            let Some(slot) = &slot else { return };
            let mut waiting = self.waiting();
            match waiting.get_mut(slot).and_then(VecDeque::pop_front) {
                Some(next) => work = next,
                None => {
                    waiting.remove(slot);
                    return;
                }
            }
        }
    }

    /// Runs one event in its span, which carries its trace context when it has one.
    async fn run(&self, work: Work) {
        let trace = work.event.as_ref().ok().and_then(|event| TraceContext::continue_from(&event.extensions));
        let event_id = work.event.as_ref().ok().map(|event| event.id.as_str());
        let span = telemetry::event_span(&self.binding.settings.name, event_id, trace.as_ref());
        self.settle(work, trace.as_ref()).instrument(span).await
    }

    async fn settle(&self, work: Work, trace: Option<&TraceContext>) {
        // The guard lives to the end of this function, however it returns.
        let Work { ticket, origin, event, permit, received, in_flight: _in_flight } = work;
        // Its partition was revoked and drained meanwhile, or the binding stopped: the event is
        // read again. (Events read before a revocation or a shutdown are still handled: the
        // drain finishes them, so a clean stop or rebalance redelivers nothing.)
        if !self.tracker.is_current(&ticket) || self.stopped() {
            return self.abandon(ticket);
        }
        let Some(mut outcome) =
            decide(&self.binding, event, origin, received.key.as_deref(), trace, &self.cancel).await
        else {
            return self.abandon(ticket);
        };
        if let Some(stage) = outcome.decision.failed_stage() {
            // `retry` was applied while deciding; what failed here is stopped or dead lettered.
            if self.binding.settings.on_failure.at(stage) == FailurePolicy::Stop {
                tracing::error!(binding = %self.binding.settings.name, event_id = outcome.event_id.as_deref(),
                    %stage, "Event failed; stopping the binding (on_failure.{stage} = \"stop\"). It is read again after a restart.");
                outcome.disposal = Some(Disposal::BindingStopped);
                self.binding.audit.record(outcome).await;
                self.stopped.store(true, Ordering::SeqCst);
                self.cancel.cancel();
                return self.abandon(ticket);
            }
            match dead_letter(&self.binding, &received, &outcome, &self.cancel).await {
                Ok(disposal) => outcome.disposal = Some(disposal),
                Err(Interrupted) => return self.abandon(ticket),
            }
        }
        // Recorded before the offset is stored: a committed decision is always on record.
        self.binding.audit.record(outcome).await;
        let consumer = self.consumer.as_ref();
        // Only at-least-once stores offsets here: at-most-once committed before handling, and
        // exactly-once commits them in the batch's transaction.
        let store = self.binding.settings.delivery == Delivery::AtLeastOnce;
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
