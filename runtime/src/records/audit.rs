//! What was decided for each event: the data owner's proof of who asked for which reference,
//! why, and what happened.
//!
//! Every finished event yields one [`Outcome`]. It is logged, recorded in the configured sink (an
//! audit file, or a Kafka topic that outlives the pod), and handed to an optional tap (tests, the
//! demo). An audit record never holds resolved data, a reply's bytes, a token or a reference's
//! query string: only the reference's path, sizes, statuses and error kinds.

use super::json_lines::{AppendError, JsonLines};
use crate::config::{AuditSink, Stage};
use crate::sandbox::Reply;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

pub use crate::model::Origin;

/// Who asked: the binding that consumed the event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Asker {
    /// The tenant.
    pub tenant: String,
    /// The handler.
    pub handler: String,
    /// The declared purpose, as sent to the data owner.
    pub purpose: String,
    /// The handler's version: `sha256:<hex>` of its component.
    pub version: String,
}

/// What was decided for one event.
#[derive(Clone, Debug)]
pub enum Decision {
    /// The owner released the data and the handler handled it.
    Delivered {
        /// The handler's answer, if any. Held in memory for the reply path and the demo; never
        /// written to the audit file (it is derived from personal data).
        reply: Option<Reply>,
        /// Bytes the owner released.
        data_bytes: u64,
        /// Where the reply was published, and its CloudEvents id (its `causationid` is the
        /// request's id).
        published: Option<(String, String)>,
    },
    /// The owner refused: consent missing or withdrawn (403), or legally unavailable (451).
    ConsentDenied {
        /// The owner's status.
        status: u16,
    },
    /// The owner has no such data: unknown (404) or deleted/erased (410).
    Gone {
        /// The owner's status.
        status: u16,
    },
    /// keyhole refused the event before asking anyone: a malformed envelope or a hostile
    /// reference.
    Refused {
        /// A stable label, e.g. `forbidden_dataref`.
        kind: &'static str,
        /// Why, without any payload, header value or query string.
        reason: String,
    },
    /// Resolving, handling or replying failed for good (or past the retry limits).
    Failed {
        /// Where it failed.
        stage: Stage,
        /// A stable label, e.g. `trapped`, `too_large`.
        kind: &'static str,
        /// Why.
        reason: String,
    },
}

impl Decision {
    /// A stable label: `delivered`, `consent_denied`, `gone`, `refused`, `failed`.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Delivered { .. } => "delivered",
            Decision::ConsentDenied { .. } => "consent_denied",
            Decision::Gone { .. } => "gone",
            Decision::Refused { .. } => "refused",
            Decision::Failed { .. } => "failed",
        }
    }

    /// The stage whose failure policy applies, for a refused or failed event.
    pub fn failed_stage(&self) -> Option<Stage> {
        match self {
            Decision::Refused { .. } => Some(Stage::Envelope),
            Decision::Failed { stage, .. } => Some(*stage),
            _ => None,
        }
    }

    /// The failure's stable label and reason, for a refused or failed event.
    pub fn failure(&self) -> Option<(&'static str, &str)> {
        match self {
            Decision::Refused { kind, reason } | Decision::Failed { kind, reason, .. } => {
                Some((kind, reason))
            }
            _ => None,
        }
    }
}

/// What was done with an event that failed for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposal {
    /// Published to the dead-letter topic, at this place.
    DeadLettered {
        /// The dead-letter topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
    },
    /// The binding stopped without acknowledging the event; it is read again after a restart.
    BindingStopped,
}

/// One finished event.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// When it was decided.
    pub time: SystemTime,
    /// Who asked.
    pub asker: Asker,
    /// Where the event came from.
    pub origin: Origin,
    /// The CloudEvents id, when the envelope had one.
    pub event_id: Option<String>,
    /// The reference's path (never its query), when it passed validation.
    pub dataref_path: Option<String>,
    /// Attempts made (1 when nothing was retried).
    pub attempts: u32,
    /// What was decided.
    pub decision: Decision,
    /// What was done with it, when it failed for good.
    pub disposal: Option<Disposal>,
}

/// The audit record's format: a line of the audit file, or a record's value on the audit topic.
/// Built from an [`Outcome`], leaving out everything personal.
#[derive(Serialize)]
struct Record<'a> {
    time: String,
    tenant: &'a str,
    handler: &'a str,
    handler_version: &'a str,
    purpose: &'a str,
    topic: &'a str,
    partition: i32,
    offset: i64,
    event_id: Option<&'a str>,
    dataref: Option<&'a str>,
    decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<Stage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_letter_topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_letter_partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_letter_offset: Option<i64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    binding_stopped: bool,
    attempts: u32,
}

impl<'a> Record<'a> {
    fn from(outcome: &'a Outcome) -> Self {
        let (mut status, mut stage, mut kind, mut reason, mut data_bytes, mut reply_bytes) =
            (None, None, None, None, None, None);
        let (mut reply_topic, mut reply_id) = (None, None);
        match &outcome.decision {
            Decision::Delivered { reply, data_bytes: n, published } => {
                data_bytes = Some(*n);
                reply_bytes = reply.as_ref().map(|r| r.data.len() as u64);
                (reply_topic, reply_id) = published.as_ref().map(|(t, i)| (t.as_str(), i.as_str())).unzip();
            }
            Decision::ConsentDenied { status: s } | Decision::Gone { status: s } => status = Some(*s),
            Decision::Refused { kind: k, reason: r } => (kind, reason) = (Some(*k), Some(r.as_str())),
            Decision::Failed { stage: s, kind: k, reason: r } => {
                (stage, kind, reason) = (Some(*s), Some(*k), Some(r.as_str()))
            }
        }
        let (mut dead_letter_topic, mut dead_letter_partition, mut dead_letter_offset) = (None, None, None);
        if let Some(Disposal::DeadLettered { topic, partition, offset }) = &outcome.disposal {
            (dead_letter_topic, dead_letter_partition, dead_letter_offset) =
                (Some(topic.as_str()), Some(*partition), Some(*offset));
        }
        Record {
            time: humantime::format_rfc3339_millis(outcome.time).to_string(),
            tenant: &outcome.asker.tenant,
            handler: &outcome.asker.handler,
            handler_version: &outcome.asker.version,
            purpose: &outcome.asker.purpose,
            topic: &outcome.origin.topic,
            partition: outcome.origin.partition,
            offset: outcome.origin.offset,
            event_id: outcome.event_id.as_deref(),
            dataref: outcome.dataref_path.as_deref(),
            decision: outcome.decision.label(),
            status,
            stage,
            kind,
            reason,
            data_bytes,
            reply_bytes,
            reply_topic,
            reply_id,
            dead_letter_topic,
            dead_letter_partition,
            dead_letter_offset,
            binding_stopped: outcome.disposal == Some(Disposal::BindingStopped),
            attempts: outcome.attempts,
        }
    }

    /// The record's key on a Kafka topic: where its event came from, `<topic>/<partition>` (a
    /// topic name holds no `/`). Every record of one input partition, a redelivered event's
    /// included, lands on one audit partition in the order it was written; an event refused
    /// without a readable id has a key too.
    fn key(&self) -> String {
        format!("{}/{}", self.topic, self.partition)
    }
}

/// Records outcomes: to the log, to the audit sink, and to a tap.
pub struct Audit {
    /// Where each outcome's record goes. Written before the event's offset is stored, so a
    /// decision whose offset was committed is never missing from it.
    sink: Sink,
    /// A bounded channel for in-process observers; a full tap slows the pipeline rather than
    /// losing outcomes.
    tap: Option<mpsc::Sender<Outcome>>,
}

/// The configured audit sink, opened.
enum Sink {
    /// Only logged.
    LogOnly,
    /// Opened with O_APPEND; one write per line.
    File(JsonLines),
    /// Sent with the binding's producer.
    Kafka(String),
}

impl Audit {
    /// An audit that records to `sink` (a file is created if missing; a topic must exist
    /// already) and feeds `tap`.
    pub fn new(sink: &AuditSink, tap: Option<mpsc::Sender<Outcome>>) -> std::io::Result<Self> {
        let sink = match sink {
            AuditSink::LogOnly => Sink::LogOnly,
            AuditSink::File(path) => Sink::File(JsonLines::open(path)?),
            AuditSink::Kafka { topic } => Sink::Kafka(topic.clone()),
        };
        Ok(Audit { sink, tap })
    }

    /// Writes one outcome's record to the audit sink. To a topic, it is sent with `producer`
    /// (the binding's: an exactly-once binding's records are part of its transaction, committed
    /// with the batch's offsets) and waited for until the broker confirms it or `timeout`
    /// passes. The caller retries a failed write before acknowledging the event: a committed
    /// decision is never missing from the record.
    pub async fn write(
        &self,
        outcome: &Outcome,
        producer: &FutureProducer,
        timeout: Duration,
    ) -> Result<(), AuditError> {
        match &self.sink {
            Sink::LogOnly => Ok(()),
            Sink::File(file) => Ok(file.append(&Record::from(outcome)).await?),
            Sink::Kafka(topic) => {
                let record = Record::from(outcome);
                let value = serde_json::to_vec(&record)?;
                let key = record.key();
                let headers = OwnedHeaders::new()
                    .insert(Header { key: "content-type", value: Some("application/json") });
                let message = FutureRecord::to(topic).key(&key).payload(&value).headers(headers);
                producer.send(message, timeout).await.map_err(|(error, _)| error)?;
                Ok(())
            }
        }
    }

    /// Announces a recorded outcome: the log line, the finished counter and the tap.
    pub async fn announce(&self, outcome: Outcome, metrics: &crate::telemetry::BindingMetrics) {
        let record = Record::from(&outcome);
        // Per event: debug, not info. The audit sink holds the per-event record; a log line per
        // event costs more than the event's own handling at thousands of events a second.
        tracing::debug!(
            tenant = record.tenant,
            handler = record.handler,
            version = record.handler_version,
            topic = record.topic,
            partition = record.partition,
            offset = record.offset,
            event_id = record.event_id,
            decision = record.decision,
            status = record.status,
            stage = record.stage.map(Stage::as_str),
            kind = record.kind,
            reason = record.reason,
            dead_letter_topic = record.dead_letter_topic,
            binding_stopped = record.binding_stopped,
            attempts = record.attempts,
            "Event finished."
        );
        metrics
            .counter(crate::telemetry::EVENTS_FINISHED, Some(("decision", outcome.decision.label())))
            .increment(1);
        if let Some(tap) = &self.tap {
            // A closed tap means nobody is watching any more; the outcome is recorded above.
            let _ = tap.send(outcome).await;
        }
    }
}

/// An audit record could not be written; the caller tries again.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The record cannot be encoded.
    #[error("cannot encode an audit record: {0}")]
    Encode(#[from] serde_json::Error),
    /// The audit file refused the write.
    #[error("audit file: {0}")]
    Write(#[from] AppendError),
    /// The broker did not confirm the record.
    #[error("the audit record was not confirmed: {0}")]
    Kafka(#[from] KafkaError),
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn refused(event_id: Option<&str>) -> Outcome {
        Outcome {
            time: SystemTime::UNIX_EPOCH,
            asker: Asker {
                tenant: "acme".into(),
                handler: "echo".into(),
                purpose: "testing".into(),
                version: "sha256:00".into(),
            },
            origin: Origin { topic: "refs".into(), partition: 3, offset: 7 },
            event_id: event_id.map(str::to_string),
            dataref_path: None,
            attempts: 1,
            decision: Decision::Refused { kind: "forbidden_dataref", reason: "a dot segment".into() },
            disposal: None,
        }
    }

    #[test]
    fn a_record_is_keyed_by_where_its_event_came_from_with_or_without_an_id() {
        assert_eq!(Record::from(&refused(Some("e-1"))).key(), "refs/3");
        assert_eq!(Record::from(&refused(None)).key(), "refs/3");
    }
}
