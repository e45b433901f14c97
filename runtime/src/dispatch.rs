//! One event through the pipeline: envelope → resolve (with retries) → sandbox → outcome, and
//! the key-ordered concurrency that runs many events at once.
//!
//! Events with the same Kafka key (within a partition) are handled strictly one after another;
//! events with different keys, or none, run concurrently. Each event holds a permit of its
//! binding's in-flight limit from the moment it is read until it is finished, so a full binding
//! stops reading and memory stays bounded.

use crate::audit::{Asker, Audit, Decision, Origin, Outcome};
use crate::config::BindingSettings;
use crate::envelope::{EnvelopeError, ReferenceEvent};
use crate::kafka::{self, BindingConsumer, OffsetTracker, Ticket};
use crate::resolve::{Backoff, Disposition, Released, Requester, ResolveError, Resolver};
use crate::sandbox::{self, GuestError, Handler};
use rdkafka::producer::FutureProducer;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio_util::sync::CancellationToken;

/// Everything a binding's events need, shared by its tasks.
pub struct Binding {
    /// The binding's configuration.
    pub settings: BindingSettings,
    /// The loaded handler component.
    pub handler: Handler,
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
    /// Publishes replies (shared by every binding).
    pub replies: Arc<FutureProducer>,
}

impl Binding {
    fn asker(&self) -> Asker {
        Asker {
            tenant: self.settings.tenant.clone(),
            handler: self.settings.handler.clone(),
            purpose: self.settings.purpose.clone(),
        }
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
struct Interrupted;

/// Decides one event. `None` when shutdown or revocation interrupted it before a decision.
pub async fn decide(
    binding: &Binding,
    event: Result<ReferenceEvent, EnvelopeError>,
    origin: Origin,
    key: Option<&[u8]>,
    cancel: &CancellationToken,
) -> Option<Outcome> {
    let mut outcome = Outcome {
        time: SystemTime::now(),
        asker: binding.asker(),
        origin,
        event_id: None,
        dataref_path: None,
        attempts: 1,
        decision: Decision::Refused { kind: "", reason: String::new() },
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
    let max_attempts = binding.settings.retry.handler_max_attempts;
    let mut handler_attempts = 0;
    loop {
        // Consent is checked again on every attempt: the owner is asked each time.
        let released = match resolve(binding, &event, &url, &mut outcome.attempts, cancel).await {
            Ok(Ok(released)) => released,
            Ok(Err(decision)) => {
                outcome.decision = decision;
                break;
            }
            Err(Interrupted) => return None,
        };
        handler_attempts += 1;
        let data_bytes = released.body.len() as u64;
        match binding.handler.handle(&guest_event(&event, released)).await {
            Ok(reply) => {
                let destination = reply_destination(&binding.settings, &event, reply.is_some());
                outcome.decision = match (reply, destination) {
                    (_, Err(reason)) => {
                        Decision::Failed { stage: "reply", kind: "reply_topic_not_allowed", reason }
                    }
                    (Some(reply), Ok(Some(topic))) => {
                        let id = publish_reply(binding, topic, &event, key, &reply, cancel).await.ok()?;
                        Decision::Delivered {
                            reply: Some(reply),
                            data_bytes,
                            published: Some((topic.to_string(), id)),
                        }
                    }
                    (reply, Ok(_)) => Decision::Delivered { reply, data_bytes, published: None },
                };
                break;
            }
            Err(error) if error.is_retryable() && handler_attempts < max_attempts => {
                tracing::warn!(
                    binding = %binding.settings.name, event_id = %event.id, attempt = handler_attempts,
                    kind = error.kind(), %error, "Handler failed; retrying."
                );
                metrics::counter!(crate::telemetry::EVENT_RETRIES, "binding" => binding.settings.name.clone(), "cause" => error.kind()).increment(1);
                let delay = binding.backoff.delay(handler_attempts, None);
                if sleep_or_cancel(delay, cancel).await.is_err() {
                    return None;
                }
                outcome.attempts += 1;
            }
            Err(error) => {
                outcome.decision = handler_failed(error);
                break;
            }
        }
    }
    outcome.time = SystemTime::now();
    Some(outcome)
}

/// Asks the data owner until it decides. Transient failures are retried with backoff, without
/// limit: skipping the event would skip a request someone is waiting for, and nothing behind it
/// in its key may overtake it. A refusal of keyhole's own credentials pauses the binding.
async fn resolve(
    binding: &Binding,
    event: &ReferenceEvent,
    url: &url::Url,
    attempts: &mut u32,
    cancel: &CancellationToken,
) -> Result<Result<Released, Decision>, Interrupted> {
    let who = Requester {
        tenant: &binding.settings.tenant,
        handler: &binding.settings.handler,
        purpose: &binding.settings.purpose,
        event_id: &event.id,
    };
    let mut retries = 0;
    // An event that met the refusal probes on through the closed gate; the others wait at it.
    let mut probing = false;
    loop {
        if !probing && !binding.gate.wait_open(cancel).await {
            return Err(Interrupted);
        }
        let error = match binding.resolver.fetch(url, &who).await {
            Ok(released) => {
                binding.gate.open();
                return Ok(Ok(released));
            }
            Err(error) => error,
        };
        let (name, event_id) = (&binding.settings.name, &event.id);
        let retry_after = match (&error, error.disposition()) {
            (ResolveError::ConsentDenied { status }, _) => {
                return Ok(Err(Decision::ConsentDenied { status: *status }));
            }
            (ResolveError::Gone { status }, _) => return Ok(Err(Decision::Gone { status: *status })),
            (_, Disposition::Decided | Disposition::Fail) => {
                return Ok(Err(Decision::Failed {
                    stage: "resolve",
                    kind: error.kind(),
                    reason: error.to_string(),
                }));
            }
            (_, Disposition::Pause) => {
                tracing::error!(binding = %name, event_id = %event_id, data_source = binding.resolver.name(),
                    "The data owner refused keyhole's credentials (401); binding paused, retrying.");
                binding.gate.close();
                probing = true;
                None
            }
            (ResolveError::Transient { retry_after, .. }, Disposition::Retry) => {
                tracing::warn!(binding = %name, event_id = %event_id, data_source = binding.resolver.name(),
                    %error, "Data owner unavailable; retrying.");
                *retry_after
            }
            (_, Disposition::Retry) => None,
        };
        retries += 1;
        *attempts += 1;
        metrics::counter!(crate::telemetry::EVENT_RETRIES, "binding" => name.clone(), "cause" => error.kind()).increment(1);
        sleep_or_cancel(binding.backoff.delay(retries, retry_after), cancel).await?;
    }
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

/// Publishes a reply until the broker confirms it: the request's offset is not stored before.
async fn publish_reply(
    binding: &Binding,
    topic: &str,
    request: &ReferenceEvent,
    key: Option<&[u8]>,
    reply: &sandbox::Reply,
    cancel: &CancellationToken,
) -> Result<String, Interrupted> {
    let who = binding.handler.identity();
    let mut attempt = 0;
    loop {
        let sent =
            kafka::reply::publish(&binding.replies, topic, who, request, key, reply, Duration::from_secs(30));
        match tokio::select! { biased; sent = sent => Some(sent), () = cancel.cancelled() => None } {
            Some(Ok(id)) => return Ok(id),
            Some(Err(error)) => {
                attempt += 1;
                tracing::warn!(binding = %binding.settings.name, event_id = %request.id, %error, attempt, "Reply not confirmed; retrying.");
                sleep_or_cancel(binding.backoff.delay(attempt, None), cancel).await?;
            }
            None => return Err(Interrupted),
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
    metrics::counter!(crate::telemetry::EVENTS_REFUSED, "binding" => binding.settings.name.clone(), "kind" => error.kind())
        .increment(1);
    Decision::Refused { kind: error.kind(), reason: error.to_string() }
}

fn handler_failed(error: GuestError) -> Decision {
    Decision::Failed { stage: "handler", kind: error.kind(), reason: error.to_string() }
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
    /// Its Kafka key: events with the same key run in order.
    pub key: Option<Vec<u8>>,
    /// The parsed envelope, or why it was refused.
    pub event: Result<ReferenceEvent, EnvelopeError>,
    /// Its share of the binding's in-flight limit, released when the event is finished.
    pub permit: OwnedSemaphorePermit,
}

/// Orders a partition's events by key: a queue per busy key; a key's chain runs on one task.
type Slot = (String, i32, Vec<u8>);

/// Runs a binding's events with per-key ordering, and stores offsets as they finish.
pub struct Dispatcher {
    binding: Arc<Binding>,
    consumer: Arc<BindingConsumer>,
    tracker: Arc<OffsetTracker>,
    /// Events waiting behind a busy key.
    waiting: Mutex<HashMap<Slot, VecDeque<Work>>>,
    /// Interrupts retries at shutdown: an event waiting for an unavailable owner is left to be
    /// read again rather than holding up the drain.
    cancel: CancellationToken,
}

impl Dispatcher {
    /// A dispatcher for one binding's consumer.
    pub fn new(
        binding: Arc<Binding>,
        consumer: Arc<BindingConsumer>,
        tracker: Arc<OffsetTracker>,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Dispatcher { binding, consumer, tracker, waiting: Mutex::new(HashMap::new()), cancel })
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<Slot, VecDeque<Work>>> {
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the event now, or queues it behind the events of its key.
    pub fn submit(self: &Arc<Self>, work: Work) {
        let slot = work.key.clone().map(|key| (work.origin.topic.clone(), work.origin.partition, key));
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

    async fn run(&self, work: Work) {
        let Work { ticket, origin, event, permit, key } = work;
        // Its partition was revoked and drained meanwhile: the partition's next owner reads the
        // event again. (Events read before a revocation or a shutdown are still handled: the
        // drain finishes them, so a clean stop or rebalance redelivers nothing.)
        if !self.tracker.is_current(&ticket) {
            self.tracker.abandon(ticket);
            return;
        }
        match decide(&self.binding, event, origin, key.as_deref(), &self.cancel).await {
            Some(outcome) => {
                // Recorded before the offset is stored: a committed decision is always on record.
                self.binding.audit.record(outcome).await;
                let consumer = self.consumer.as_ref();
                self.tracker.finish(ticket, |partition, offset| kafka::store(consumer, partition, offset));
            }
            None => self.tracker.abandon(ticket),
        }
        drop(permit);
    }
}
