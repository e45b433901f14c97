//! A Kafka record to a [`ReferenceEvent`]: a CloudEvent (specversion 1.0) that carries a
//! reference to personal data instead of the data itself.
//!
//! This is the first module an event passes through, and the place where hostile input is
//! stopped before keyhole makes any request: an event that carries data inline is refused (the
//! topic must hold no personal data), and a `dataref` that could leave the data source's base
//! URL (an absolute URL, `..`, percent-encoded dots or slashes, backslashes, a fragment) is
//! refused by [`DataRef::parse`] and checked again by [`DataRef::resolve_against`].
//!
//! Both content modes of the CloudEvents Kafka protocol binding are read: binary mode
//! (attributes in `ce_` headers, the value must be empty) and structured mode (`content-type:
//! application/cloudevents+json`, the value is the JSON event). Parsing works on a
//! [`RawRecord`] rather than an rdkafka message so that it can be tested without a broker.
//!
//! Errors never contain payload bytes, header values or the reference's query string: they may
//! hold personal data and errors end up in logs, metrics and dead-letter records.
//!
//! The CloudEvents parsing and the percent-encoding checks are written by hand on purpose: the
//! `cloudevents-sdk` reader panics on null header values and lets duplicated attributes win, and
//! the escape checker must see every escape.

mod binary;
mod dataref;
pub mod encode;
mod error;
mod structured;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

pub use dataref::{DataRef, DatarefRefusal, check_below};
pub use error::{EnvelopeError, HeaderProblem};

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use binary::parse_binary;
use error::{control_character, has_control_character, malformed_header};
use structured::parse_structured;

/// A Kafka record as keyhole sees it, independent of rdkafka so that parsing is testable without
/// a broker.
///
/// Deliberately not `Debug`: the value and headers may hold personal data.
#[derive(Clone, Default)]
pub struct RawRecord<'a> {
    /// The record's key; not used to parse the event, kept for callers that build records.
    pub key: Option<&'a [u8]>,
    /// The record's value: empty in binary mode, the JSON event in structured mode.
    pub value: Option<&'a [u8]>,
    /// Headers in order; a header's value may be null (None).
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
}

/// How the CloudEvent was laid out in the Kafka record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentMode {
    /// Attributes in `ce_` headers, data (if any) in the value.
    Binary,
    /// The whole event as JSON in the value (`content-type: application/cloudevents+json`).
    Structured,
}

impl fmt::Display for ContentMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContentMode::Binary => "binary",
            ContentMode::Structured => "structured",
        })
    }
}

/// A CloudEvent (specversion 1.0) that references personal data instead of carrying it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceEvent {
    /// The `id` attribute (non-empty); with `source` it identifies the event.
    pub id: String,
    /// The `source` attribute (non-empty).
    pub source: String,
    /// The `type` attribute (non-empty); handlers and routing select on it.
    pub type_: String,
    /// The `subject` attribute, if present (then non-empty).
    pub subject: Option<String>,
    /// The `time` attribute as sent, if present (then non-empty; not parsed further).
    pub time: Option<String>,
    /// Extension attributes passed on to the handler: every extension except `dataref`,
    /// `partitionkey` and `replyto` (keyhole-internal or routing), as (name, canonical string
    /// value), sorted by name.
    pub extensions: Vec<(String, String)>,
    /// Where the personal data is, relative to the data source's base URL; already validated.
    pub dataref: DataRef,
    /// `correlationid` extension if present (also present in `extensions`).
    pub correlationid: Option<String>,
    /// `replyto` extension if present (NOT in `extensions`).
    pub replyto: Option<String>,
    /// The content mode the event arrived in (for logs and tests: replies are always written in
    /// binary mode).
    pub mode: ContentMode,
}

/// The longest `dataref` accepted, in bytes. A reference names data in the owner's API; one
/// longer than this carries something else (data smuggled into the query, or an attack on the
/// owner's URL parser), and it would be copied into every request, log line and audit record.
/// 2,048 bytes is the URL length every HTTP stack is known to accept.
pub const MAX_DATAREF_BYTES: usize = 2048;

/// The longest event `id` accepted, in bytes: it is sent to the owner in a header and written to
/// every log line, receipt and audit record of the event.
pub const MAX_ID_BYTES: usize = 1024;

/// An event keyhole refused, with its `id` when the record had a readable one: a refusal is
/// recorded (audit, dead letter, log) under the id its producer gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The record's CloudEvents `id`, when it could be read unambiguously.
    pub id: Option<String>,
    /// Why it was refused.
    pub error: EnvelopeError,
}

/// Reads a Kafka record as a reference event; a refusal keeps the event's id when the record
/// has a readable one.
pub fn read(record: &RawRecord<'_>) -> Result<ReferenceEvent, Refusal> {
    parse(record).map_err(|error| Refusal { id: readable_id(record), error })
}

/// The record's `id` attribute, when it can be read unambiguously (one `ce_id` header, or an
/// `id` string member of a structured event) and is at most [`MAX_ID_BYTES`]; for recording a
/// refused event under its id.
pub fn readable_id(record: &RawRecord<'_>) -> Option<String> {
    let id = match content_mode(record).ok()? {
        ContentMode::Binary => {
            let mut ids = record.headers.iter().filter(|(name, _)| *name == "ce_id");
            let (_, value) = ids.next()?;
            if ids.next().is_some() {
                return None;
            }
            std::str::from_utf8((*value)?).ok()?.to_owned()
        }
        ContentMode::Structured => {
            let value: Value = serde_json::from_slice(record.value?).ok()?;
            value.get("id")?.as_str()?.to_owned()
        }
    };
    // An id that breaks the type system is not recorded either: it would reach the log.
    (!id.is_empty() && id.len() <= MAX_ID_BYTES && !has_control_character(&id)).then_some(id)
}

/// Reads a Kafka record as a reference event, in whichever content mode it was written.
pub fn parse(record: &RawRecord<'_>) -> Result<ReferenceEvent, EnvelopeError> {
    match content_mode(record)? {
        ContentMode::Binary => parse_binary(record),
        ContentMode::Structured => parse_structured(record),
    }
}

/// The prefix of `content-type` that marks structured mode (compared ASCII case-insensitively).
const STRUCTURED_PREFIX: &[u8] = b"application/cloudevents";

/// Core attribute names: never passed on as extensions.
const CORE_ATTRIBUTES: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// Tells binary from structured mode by the `content-type` header, as the binding requires.
pub fn content_mode(record: &RawRecord<'_>) -> Result<ContentMode, EnvelopeError> {
    let mut content_type: Option<&[u8]> = None;
    let mut seen = false;
    for (name, value) in &record.headers {
        // Kafka header names are case-sensitive, but a `Content-Type` sent by an HTTP-minded
        // producer means the same thing; reading it avoids a confusing "missing specversion".
        if !name.eq_ignore_ascii_case("content-type") {
            continue;
        }
        if seen {
            return Err(malformed_header(name, HeaderProblem::Duplicated));
        }
        seen = true;
        content_type = *value;
    }
    let is_structured = content_type.is_some_and(|value| {
        let value = value.trim_ascii_start();
        value
            .get(..STRUCTURED_PREFIX.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(STRUCTURED_PREFIX))
    });
    Ok(if is_structured { ContentMode::Structured } else { ContentMode::Binary })
}

/// Checks and sorts the attributes of either mode into a [`ReferenceEvent`].
///
/// The order of the checks decides which error a record with several faults gets: first
/// whether it is a CloudEvent 1.0 at all, then inline data (the fault the data owner most needs
/// to hear about), then the rest.
fn assemble(
    mut attributes: BTreeMap<String, String>,
    inline_data: bool,
    mode: ContentMode,
) -> Result<ReferenceEvent, EnvelopeError> {
    let specversion = attributes
        .remove("specversion")
        .ok_or(EnvelopeError::MissingAttribute { attribute: "specversion" })?;
    if specversion != "1.0" {
        return Err(EnvelopeError::UnsupportedSpecversion);
    }
    if inline_data {
        return Err(EnvelopeError::InlineData { mode });
    }
    // `dataref` has its own, stricter, rule (no control character and no space).
    if let Some((name, _)) =
        attributes.iter().find(|(name, value)| *name != "dataref" && has_control_character(value))
    {
        return Err(control_character(name));
    }
    let id = required(&mut attributes, "id")?;
    if id.len() > MAX_ID_BYTES {
        return Err(EnvelopeError::TooLong { attribute: "id", limit: MAX_ID_BYTES });
    }
    let source = required(&mut attributes, "source")?;
    let type_ = required(&mut attributes, "type")?;
    let subject = optional(&mut attributes, "subject")?;
    let time = optional(&mut attributes, "time")?;
    let dataref = attributes.remove("dataref").ok_or(EnvelopeError::MissingDataref)?;
    let dataref = DataRef::parse(&dataref)?;
    let replyto = attributes.remove("replyto");
    // The partition key has done its work once the record is on its partition.
    attributes.remove("partitionkey");
    let correlationid = attributes.get("correlationid").cloned();
    let extensions =
        attributes.into_iter().filter(|(name, _)| !CORE_ATTRIBUTES.contains(&name.as_str())).collect();
    Ok(ReferenceEvent { id, source, type_, subject, time, extensions, dataref, correlationid, replyto, mode })
}

fn required(
    attributes: &mut BTreeMap<String, String>,
    attribute: &'static str,
) -> Result<String, EnvelopeError> {
    optional(attributes, attribute)?.ok_or(EnvelopeError::MissingAttribute { attribute })
}

/// CloudEvents requires `subject`, `time` and the required attributes to be non-empty when
/// present.
fn optional(
    attributes: &mut BTreeMap<String, String>,
    attribute: &'static str,
) -> Result<Option<String>, EnvelopeError> {
    match attributes.remove(attribute) {
        Some(value) if value.is_empty() => Err(EnvelopeError::EmptyAttribute { attribute }),
        other => Ok(other),
    }
}

/// CloudEvents attribute names: lower-case ASCII letters and digits, at least one.
fn is_attribute_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
}
