//! Access receipts: one record per request to a data owner, so that the owner can answer "who
//! asked for this person's data, why, and what was decided".
//!
//! A receipt is written for every resolution attempt, retries included (consent is asked again
//! on each), before the attempt's answer is acted on: the handler never sees data whose release
//! is not on record. It names the asker (tenant, handler and its version), the data source, the
//! declared purpose, the event and its subject, the reference's path and the owner's decision.
//! It never holds resolved data, a token or a reference's query string.
//!
//! This is not the audit log ([`super::audit`]): that has one record per *event* and what became
//! of it; receipts have one per *request* to an owner.

use super::chain;
use super::json_lines::{AppendError, JsonLines};
use crate::config::ReceiptSink;
use crate::telemetry;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// One resolution attempt, as recorded.
#[derive(Clone, Debug, Serialize)]
pub struct Receipt<'a> {
    /// When the owner answered (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// The event's CloudEvents id.
    pub event_id: &'a str,
    /// The tenant whose handler asked.
    pub tenant: &'a str,
    /// The handler that asked.
    pub handler: &'a str,
    /// The handler's version: `sha256:<hex>` of its component.
    pub handler_version: &'a str,
    /// The data source asked (its configured name).
    pub data_source: &'a str,
    /// The declared purpose, as sent to the owner.
    pub purpose: &'a str,
    /// The event's `subject`, when it has one: whom the data is about, in the owner's terms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
    /// The reference's path, relative to the data source; never its query string.
    pub dataref: &'a str,
    /// `released`, `consent_denied`, `gone`, or the failure's kind (`transient`,
    /// `unauthorized`, `too_large`, `rejected`).
    pub decision: &'static str,
    /// The owner's HTTP status, when there is one to tell (not for a release or a transient
    /// failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Which attempt of the event this was, from 1.
    pub attempt: u32,
}

impl Receipt<'_> {
    /// The record's key on a Kafka topic: the subject when given, so that one person's receipts
    /// share a partition and stay in order; else the event id.
    fn key(&self) -> &str {
        self.subject.unwrap_or(self.event_id)
    }
}

/// The receipt time format.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Why a receipt could not be written; the caller tries again.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// The receipts file cannot be opened.
    #[error("cannot open the receipts file {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The receipt cannot be encoded.
    #[error("cannot encode a receipt: {0}")]
    Encode(#[from] serde_json::Error),
    /// The receipts file refused the write.
    #[error("receipts file: {0}")]
    Write(#[from] AppendError),
    /// The broker did not confirm the receipt.
    #[error("the receipt was not confirmed: {0}")]
    Kafka(#[from] KafkaError),
    /// The broker did not confirm the receipt in time.
    #[error("the receipt was not confirmed within {0:?}")]
    Timeout(Duration),
}

/// The configured receipt sink, shared by every binding; each binding writes through a
/// [`ReceiptWriter`] of its own.
pub struct Receipts(Sink);

enum Sink {
    /// One writer thread, which links every line into the file's chain.
    File(JsonLines),
    /// Sent with the binding's producer, in the binding's own chain.
    Kafka(String),
    Discard,
}

impl Receipts {
    /// Opens the sink: creates the file if missing (a Kafka topic must exist already).
    pub fn open(sink: &ReceiptSink) -> Result<Self, ReceiptError> {
        Ok(Receipts(match sink {
            ReceiptSink::File(path) => {
                let publisher = chain::Publisher::new(
                    metrics::gauge!(telemetry::RECEIPTS_CHAIN_SEQ, "sink" => "file"),
                    "file",
                );
                Sink::File(
                    JsonLines::open_chained(path, publisher)
                        .map_err(|source| ReceiptError::Open { path: path.display().to_string(), source })?,
                )
            }
            ReceiptSink::Kafka { topic } => Sink::Kafka(topic.clone()),
            ReceiptSink::Discard => Sink::Discard,
        }))
    }

    /// The writer of binding `binding` (its name, `<tenant>/<handler>`): on a topic, a new
    /// chain of its own ([`chain`]: a stream per producer, for as long as the binding runs).
    pub fn writer(self: &Arc<Self>, binding: &str) -> ReceiptWriter {
        let stream = match &self.0 {
            Sink::Kafka(_) => {
                let gauge = metrics::gauge!(telemetry::RECEIPTS_CHAIN_SEQ, "sink" => "kafka", "binding" => binding.to_owned());
                Some(Mutex::new((
                    chain::Head::new(chain::new_stream()),
                    chain::Publisher::new(gauge, "kafka"),
                )))
            }
            Sink::File(_) | Sink::Discard => None,
        };
        ReceiptWriter { sink: self.clone(), stream }
    }
}

/// Where one binding writes its receipts.
pub struct ReceiptWriter {
    sink: Arc<Receipts>,
    /// The binding's chain on the receipts topic: its head, taken and moved as a record is
    /// enqueued with the producer, so that the producer's order within a partition is the
    /// chain's order.
    stream: Option<Mutex<(chain::Head, chain::Publisher)>>,
}

impl Drop for ReceiptWriter {
    fn drop(&mut self) {
        // The binding stopped: its stream ends here; its last head, for the record.
        if let Some(stream) = &self.stream {
            let (head, publisher) = &mut *stream.lock().unwrap_or_else(|p| p.into_inner());
            publisher.log(head);
        }
    }
}

impl ReceiptWriter {
    /// Writes one receipt. To a topic, it is sent with `producer` (the binding's: an
    /// exactly-once binding's receipts are part of its transaction) and waited for until the
    /// broker confirms it or `timeout` passes.
    pub async fn write(
        &self,
        receipt: &Receipt<'_>,
        producer: &FutureProducer,
        timeout: Duration,
    ) -> Result<(), ReceiptError> {
        match (&self.sink.0, &self.stream) {
            (Sink::File(file), _) => Ok(file.append(receipt).await?),
            (Sink::Kafka(topic), Some(stream)) => {
                let value = serde_json::to_vec(receipt)?;
                let delivery = {
                    let (head, publisher) = &mut *stream.lock().unwrap_or_else(|p| p.into_inner());
                    let link = head.next();
                    let mut value = value;
                    chain::append_link(&mut value, &link)?;
                    let headers = OwnedHeaders::new()
                        .insert(Header { key: "content-type", value: Some("application/json") });
                    let record = FutureRecord::to(topic).key(receipt.key()).payload(&value).headers(headers);
                    // Enqueued, or not at all (a full queue): the head moves only if it was.
                    let delivery = producer.send_result(record).map_err(|(error, _)| error)?;
                    head.advance(&link, &value);
                    publisher.written(head);
                    delivery
                };
                match tokio::time::timeout(timeout, delivery).await {
                    Ok(Ok(Ok(_))) => Ok(()),
                    Ok(Ok(Err((error, _)))) => Err(error.into()),
                    // Not confirmed in time, or the producer was dropped: tried again as a new
                    // receipt. If this one was lost, its seq shows as removed in
                    // `keyhole receipts verify`, beside this binding's receipt errors.
                    Ok(Err(_)) => Err(KafkaError::Canceled.into()),
                    Err(_) => Err(ReceiptError::Timeout(timeout)),
                }
            }
            (Sink::Kafka(_), None) | (Sink::Discard, _) => Ok(()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn receipt(subject: Option<&str>) -> Receipt<'_> {
        Receipt {
            time: now(),
            event_id: "e-1",
            tenant: "acme",
            handler: "echo",
            handler_version: "sha256:00",
            data_source: "crm",
            purpose: "testing",
            subject,
            dataref: "customers/1",
            decision: "consent_denied",
            status: Some(403),
            attempt: 1,
        }
    }

    #[test]
    fn a_receipt_is_keyed_by_its_subject_else_its_event() {
        assert_eq!(receipt(Some("customer/1")).key(), "customer/1");
        assert_eq!(receipt(None).key(), "e-1");
    }

    #[test]
    fn absent_fields_are_left_out_of_the_line() {
        let mut r = receipt(None);
        r.status = None;
        let line = serde_json::to_value(&r).unwrap();
        assert!(line.get("subject").is_none() && line.get("status").is_none(), "{line}");
        assert_eq!(line["decision"], "consent_denied");
    }
}
