//! What an event leaves behind — its access receipts, its reply, its dead letter, its audit
//! record — each written until confirmed: nothing unconfirmed is acknowledged. Only shutdown or
//! revocation interrupts a write (the event is then read again).

use super::binding::Binding;
use crate::cloudevents::ReferenceEvent;
use crate::config::BindingSettings;
use crate::kafka::{self, Received};
use crate::records::audit::{Disposal, Outcome};
use crate::records::receipt::{self, Receipt};
use crate::resolve::{Released, ResolveError};
use crate::sandbox::{Handler, Reply};
use crate::telemetry::{self, EventTrace};
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long one send to Kafka may wait for room in the producer's queue (the confirmation
/// itself is bounded by librdkafka's `delivery.timeout.ms`).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an event stopped before it was decided or recorded: it will be read again.
#[derive(Debug)]
pub struct Interrupted;

/// Sleeps for `delay` unless cancelled first.
pub async fn sleep_or_cancel(delay: Duration, cancel: &CancellationToken) -> Result<(), Interrupted> {
    tokio::select! {
        () = tokio::time::sleep(delay) => Ok(()),
        () = cancel.cancelled() => Err(Interrupted),
    }
}

/// Writes or sends until it is confirmed, with backoff: what is not confirmed is not
/// acknowledged, and a broker or disk that went away is waited for.
///
/// A send under way is not raced against shutdown or revocation: an event already being handled
/// is finished in the drain (which `shutdown.drain_timeout_ms` bounds), so that what it wrote is
/// acknowledged rather than written again after a restart. Only the waits between failed sends
/// end at shutdown.
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
        match send().await {
            Ok(sent) => return Ok(sent),
            Err(error) => {
                // A producer in a fatal state (an exactly-once producer fenced by a newer
                // instance with its transactional id) never sends again: the event is
                // interrupted, its batch aborted, and the binding ends with the reason.
                if let Some((code, reason)) =
                    rdkafka::producer::Producer::client(binding.outputs.producer.as_ref()).fatal_error()
                {
                    tracing::error!(binding = %binding.settings.name, event_id, %code, %reason,
                        "{what} cannot be sent: the producer failed for good.");
                    return Err(Interrupted);
                }
                attempt += 1;
                tracing::warn!(binding = %binding.settings.name, event_id, %error, attempt, "{what} not confirmed; retrying.");
                sleep_or_cancel(binding.backoff.delay(attempt, None), cancel).await?;
            }
        }
    }
}

/// Writes the receipt of one resolution attempt, and counts its outcome: an answer whose
/// receipt is not on record is not acted on.
pub async fn record_receipt(
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
    let metrics = &binding.metrics;
    let data_source = binding.owner.resolver.name();
    metrics.counter(telemetry::RESOLUTIONS, Some(("outcome", decision))).increment(1);
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
        let written = binding.outputs.receipts.write(&receipt, &binding.outputs.producer, SEND_TIMEOUT).await;
        if written.is_err() {
            metrics.counter(telemetry::RECEIPT_ERRORS, None).increment(1);
        }
        written
    })
    .await?;
    metrics.counter(telemetry::RECEIPTS, Some(("decision", decision))).increment(1);
    Ok(())
}

/// Publishes the handler's reply to `topic`, correlated to the request; its CloudEvents id.
#[allow(clippy::too_many_arguments)]
pub async fn publish_reply(
    binding: &Binding,
    handler: &Handler,
    topic: &str,
    event: &ReferenceEvent,
    key: Option<&[u8]>,
    trace: &EventTrace,
    reply: &Reply,
    cancel: &CancellationToken,
) -> Result<String, Interrupted> {
    let request = kafka::reply::Request { who: handler.identity(), event, key, trace: trace.context() };
    let _span = trace.send(topic, "reply");
    let id = until_confirmed(binding, &event.id, "Reply", cancel, || {
        kafka::reply::publish(&binding.outputs.producer, topic, &request, reply, SEND_TIMEOUT)
    })
    .await?;
    binding.metrics.replies.increment(1);
    Ok(id)
}

/// Publishes a failed event to the binding's dead-letter topic, as it was received.
pub async fn dead_letter(
    binding: &Binding,
    received: &Received,
    outcome: &Outcome,
    trace: &EventTrace,
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
    let mut span = trace.send(topic, "dead_letter");
    let (partition, offset) = until_confirmed(binding, event_id, "Dead letter", cancel, || {
        kafka::dead_letter::publish(&binding.outputs.producer, topic, received, &failure, SEND_TIMEOUT)
    })
    .await?;
    span.placed(partition, offset);
    binding.metrics.counter(telemetry::DEAD_LETTERS, Some(("stage", stage.as_str()))).increment(1);
    Ok(Disposal::DeadLettered { topic: topic.clone(), partition, offset })
}

/// Writes the event's audit record until it is written (to a topic: confirmed by the broker,
/// in an exactly-once binding's transaction), then announces it (log, metric, tap). Its offset
/// may be stored only after this returns `Ok`: a committed decision is always on record.
///
/// A write under way is not raced against shutdown: it takes a moment, and a line written
/// after its event was given up would record an event that is then read again. Only the waits
/// between failed writes (a full disk) end at shutdown.
pub async fn record(
    binding: &Binding,
    outcome: Outcome,
    cancel: &CancellationToken,
) -> Result<(), Interrupted> {
    let audit = &binding.outputs.audit;
    let event_id = outcome.event_id.as_deref().unwrap_or("-");
    until_confirmed(binding, event_id, "Audit record", cancel, || async {
        let written = audit.write(&outcome, &binding.outputs.producer, SEND_TIMEOUT).await;
        if written.is_err() {
            binding.metrics.counter(telemetry::AUDIT_ERRORS, None).increment(1);
        }
        written
    })
    .await?;
    audit.announce(outcome, &binding.metrics).await;
    Ok(())
}

/// Where a reply goes: the topic the request names, if this handler may use it, else the
/// handler's reply topic. `Ok(None)` when there is nothing to publish or nowhere to publish it.
pub fn reply_destination<'a>(
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
