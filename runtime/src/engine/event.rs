//! One event through resolve → handler → reply, attempted again on transient failures: the
//! owner is asked again on every attempt (consent is checked each time), each answer gets its
//! receipt before it is acted on, and the event keeps the handler version it started on.

use super::binding::{Binding, OwnerAccess};
use super::decide::{self, Failure, Next, RetryBudget, Unresolved};
use super::outputs::{self, Interrupted};
use crate::cloudevents::{ReferenceEvent, Refusal};
use crate::config::{FailurePolicy, Stage};
use crate::model::Origin;
use crate::records::audit::{Decision, Outcome};
use crate::resolve::{Released, Requester, ResolveError};
use crate::sandbox::{self, Handler};
use crate::telemetry::trace::StageSpan;
use crate::telemetry::{self, EventTrace};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Decides one event. `None` when shutdown or revocation interrupted it before a decision.
/// `trace` is the event's trace: each attempt's stages are its spans, and its context goes on
/// with the reply.
pub async fn decide(
    binding: &Binding,
    event: Result<ReferenceEvent, Refusal>,
    origin: Origin,
    key: Option<&[u8]>,
    trace: &EventTrace,
    cancel: &CancellationToken,
) -> Option<Outcome> {
    // The version this event runs on from its first attempt to its last, whatever is activated
    // meanwhile.
    let handler = binding.handler.current();
    let outcome = |event_id, dataref_path, attempts, decision| Outcome {
        time: SystemTime::now(),
        asker: binding.asker(&handler),
        origin,
        event_id,
        dataref_path,
        attempts,
        decision,
        disposal: None,
    };
    let event = match event {
        Ok(event) => event,
        Err(Refusal { id, error }) => {
            return Some(outcome(id, None, 1, refused(binding, error.kind(), error.to_string())));
        }
    };
    let (id, path) = (Some(event.id.clone()), Some(event.dataref.path().to_string()));
    let url = match event.dataref.resolve_against(&binding.owner.base_url) {
        Ok(url) => url,
        Err(error) => return Some(outcome(id, path, 1, refused(binding, error.kind(), error.to_string()))),
    };
    let run = Run { handler: &handler, event: &event, url: &url, key, trace };
    let (decision, attempts) = attempt_until_decided(binding, &run, cancel).await?;
    Some(outcome(id, path, attempts, decision))
}

/// Attempts the event until it is decided or its failure is final; the decision and the number
/// of attempts. `None` when interrupted.
async fn attempt_until_decided(
    binding: &Binding,
    run: &Run<'_>,
    cancel: &CancellationToken,
) -> Option<(Decision, u32)> {
    let mut budget = RetryBudget::new(&binding.settings.retry);
    let mut window = Window {
        // An event that met an outage probes on through the closed gate; the others wait at it.
        probing: false,
        // The owner's answer count before this event's latest attempt: a failure while it grew
        // is this reference's own.
        answered_before: binding.owner.resolver.answered(),
    };
    let mut number = 1;
    loop {
        let started = Instant::now();
        // Time spent waiting for the sandbox to admit the handler: backpressure, not the event's.
        let mut waited = Duration::ZERO;
        let failure = match attempt(binding, run, number, window, &mut waited, cancel).await {
            Attempt::Decided(decision) => return Some((decision, number)),
            Attempt::Failed(failure) => failure,
            Attempt::Interrupted => return None,
        };
        window =
            Window { probing: failure.pause.is_some(), answered_before: binding.owner.resolver.answered() };
        let delay = binding.backoff.delay(number, failure.retry_after);
        budget.spend(&failure, started.elapsed().saturating_sub(waited) + delay);
        if decide::after_failure(&failure, binding.settings.on_failure.at(failure.stage), &budget)
            == Next::GiveUp
        {
            let reason = decide::final_reason(&failure, &budget);
            return Some((Decision::Failed { stage: failure.stage, kind: failure.kind, reason }, number));
        }
        if failure.pause.is_none() {
            tracing::warn!(
                binding = %binding.settings.name, event_id = %run.event.id, attempt = number,
                stage = %failure.stage, kind = failure.kind, reason = %failure.reason, "Attempt failed; retrying."
            );
        }
        binding.metrics.counter(telemetry::EVENT_RETRIES, Some(("cause", failure.kind))).increment(1);
        outputs::sleep_or_cancel(delay, cancel).await.ok()?;
        number += 1;
    }
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
    trace: &'a EventTrace,
}

/// Where an attempt stands with the data source's pause gate.
#[derive(Clone, Copy)]
struct Window {
    /// The previous attempt met an outage: this one probes through the closed gate.
    probing: bool,
    /// The owner's answer count when the previous attempt ended.
    answered_before: u64,
}

/// How one attempt ended.
enum Attempt {
    /// The event is decided: delivered, or the owner's decision.
    Decided(Decision),
    /// It failed; [`decide::after_failure`] says whether to try again.
    Failed(Failure),
    /// Shutdown or revocation interrupted it.
    Interrupted,
}

impl From<Interrupted> for Attempt {
    fn from(Interrupted: Interrupted) -> Self {
        Attempt::Interrupted
    }
}

/// One attempt (`number`, from 1): ask the owner and record its answer, run the handler on what
/// it released, publish its reply. The time spent waiting for the sandbox is added to `waited`.
async fn attempt(
    binding: &Binding,
    run: &Run<'_>,
    number: u32,
    window: Window,
    waited: &mut Duration,
    cancel: &CancellationToken,
) -> Attempt {
    let released = match ask_owner(binding, run, number, window, cancel).await {
        Ok(released) => released,
        Err(ended) => return ended,
    };
    let data_bytes = released.body.len() as u64;
    let reply = match run_handler(binding, run, number, released, waited).await {
        Ok(reply) => reply,
        Err(failure) => return Attempt::Failed(failure),
    };
    match publish(binding, run, reply.as_ref(), cancel).await {
        Ok(Ok(published)) => Attempt::Decided(Decision::Delivered { reply, data_bytes, published }),
        Ok(Err(failure)) => Attempt::Failed(failure),
        Err(Interrupted) => Attempt::Interrupted,
    }
}

/// Waits at the pause gate (unless probing), asks the owner, records the answer's receipt and
/// opens or closes the gate by it. The released data, or how the attempt ended.
async fn ask_owner(
    binding: &Binding,
    run: &Run<'_>,
    number: u32,
    window: Window,
    cancel: &CancellationToken,
) -> Result<Released, Attempt> {
    let Run { handler, event, url, trace, .. } = *run;
    let mut answered_before = window.answered_before;
    if !window.probing {
        if !binding.owner.gate.admit(cancel).await {
            return Err(Attempt::Interrupted);
        }
        // A first attempt's window starts when it may ask, not when it was read: answers that
        // reopened the gate while it waited say nothing about this reference.
        if number == 1 {
            answered_before = binding.owner.resolver.answered();
        }
    }
    let who = Requester {
        tenant: &binding.settings.tenant,
        handler: &binding.settings.handler,
        purpose: &binding.settings.purpose,
        event_id: &event.id,
        handler_version: handler.version(),
    };
    let mut span = trace.resolve(binding.owner.resolver.name(), number);
    let asked = Instant::now();
    let resolved = binding.owner.resolver.fetch(url, &who).await;
    binding.metrics.owner_request_duration.record(asked.elapsed().as_secs_f64());
    note_answer(&mut span, &resolved);
    drop(span);
    outputs::record_receipt(binding, handler, event, &resolved, number, cancel).await?;
    match resolved {
        Ok(released) => {
            binding.owner.gate.open();
            Ok(released)
        }
        Err(error) => Err(unresolved(&binding.owner, error, answered_before)),
    }
}

/// The owner did not release the data: its decision, or a failure (which may pause the binding).
fn unresolved(owner: &OwnerAccess, error: ResolveError, answered_before: u64) -> Attempt {
    // Answered by someone else meanwhile, or this very answer was a decision.
    let answered_meanwhile = owner.resolver.answered() > answered_before;
    // A status that is not a transient failure (400, an oversized body): the owner is up.
    let owner_answered = matches!(error, ResolveError::Rejected { .. } | ResolveError::TooLarge { .. });
    match decide::unresolved(error, answered_meanwhile) {
        Unresolved::Decided(decided) => {
            owner.gate.open();
            Attempt::Decided(match decided {
                ResolveError::ConsentDenied { status } => Decision::ConsentDenied { status },
                ResolveError::Gone { status } => Decision::Gone { status },
                other => {
                    Decision::Failed { stage: Stage::Resolve, kind: other.kind(), reason: other.to_string() }
                }
            })
        }
        Unresolved::Failed(failure) => {
            match &failure.pause {
                Some(reason) => owner.gate.close(reason.clone()),
                None if owner_answered => owner.gate.open(),
                // A poison reference's transient failure: leave the gate as it is; only an
                // answer reopens it.
                None => {}
            }
            Attempt::Failed(failure)
        }
    }
}

/// Waits for the sandbox to admit the handler, then runs it on what the owner released.
///
/// Admitted once the owner released the data: waiting for an instance slot or for memory is
/// backpressure, never a failure: no retry, no second request to the owner. Not before asking
/// the owner: a reservation held across the owner's round trip would tie the sandbox's capacity
/// to the owner's latency (8 requests at once with the default budgets). Not cancelled at
/// shutdown: the drain finishes it, within the drain's bound.
async fn run_handler(
    binding: &Binding,
    run: &Run<'_>,
    number: u32,
    released: Released,
    waited: &mut Duration,
) -> Result<Option<sandbox::Reply>, Failure> {
    let handler = run.handler;
    let waiting = Instant::now();
    let admitted = handler.admit().await;
    *waited += waiting.elapsed();
    let Some(admitted) = admitted else {
        return Err(Failure::of_event(Stage::Handler, "no_capacity", "the sandbox is closed".into(), true));
    };
    let started = Instant::now();
    let mut span = run.trace.sandbox(handler.version(), number);
    let handled = handler.handle_admitted(&guest_event(run.event, released), admitted).await;
    binding.metrics.handler_duration.record(started.elapsed().as_secs_f64());
    match handled {
        Ok(reply) => {
            span.set("keyhole.reply", if reply.is_some() { "yes" } else { "no" });
            Ok(reply)
        }
        Err(error) => {
            span.fail(error.kind());
            binding.metrics.counter(telemetry::HANDLER_ERRORS, Some(("kind", error.kind()))).increment(1);
            Err(Failure::of_event(Stage::Handler, error.kind(), error.to_string(), error.is_retryable()))
        }
    }
}

/// Publishes the handler's reply where the binding sends replies; where it went and its id.
async fn publish(
    binding: &Binding,
    run: &Run<'_>,
    reply: Option<&sandbox::Reply>,
    cancel: &CancellationToken,
) -> Result<Result<Option<(String, String)>, Failure>, Interrupted> {
    let Run { handler, event, key, trace, .. } = *run;
    let destination = match outputs::reply_destination(&binding.settings, event, reply.is_some()) {
        Ok(destination) => destination,
        Err(reason) => {
            return Ok(Err(Failure::of_event(Stage::Reply, "reply_topic_not_allowed", reason, false)));
        }
    };
    let (Some(reply), Some(topic)) = (reply, destination) else { return Ok(Ok(None)) };
    let id = outputs::publish_reply(binding, handler, topic, event, key, trace, reply, cancel).await?;
    Ok(Ok(Some((topic.to_string(), id))))
}

/// The owner's answer on its `resolve` span: its kind and status. A refusal of consent or an
/// absence is the owner's decision, not a failure of the request.
fn note_answer(span: &mut StageSpan, answer: &Result<Released, ResolveError>) {
    match answer {
        Ok(_) => span.set("keyhole.outcome", "released"),
        Err(error) => {
            span.set("keyhole.outcome", error.kind());
            if let Some(status) = error.status() {
                span.set("http.response.status_code", i64::from(status));
            }
            if !matches!(error, ResolveError::ConsentDenied { .. } | ResolveError::Gone { .. }) {
                span.fail(error.kind());
            }
        }
    }
}

fn refused(binding: &Binding, kind: &'static str, reason: String) -> Decision {
    binding.metrics.counter(telemetry::EVENTS_REFUSED, Some(("kind", kind))).increment(1);
    Decision::Refused { kind, reason }
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

/// Whether the binding's policy for `stage` is to stop.
pub fn stops(binding: &Binding, stage: Stage) -> bool {
    binding.settings.on_failure.at(stage) == FailurePolicy::Stop
}
