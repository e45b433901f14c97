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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

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
    /// The content mode the event arrived in; replies are written in the same mode.
    pub mode: ContentMode,
}

/// A validated relative reference: a path relative to the data source's base URL, with an
/// optional query.
///
/// Only [`DataRef::parse`] builds one, so holding a `DataRef` means the reference cannot name
/// another host or leave the base path. Its `Debug` output shows the path only: the query may
/// hold personal data (`?email=...`).
#[derive(Clone, PartialEq, Eq)]
pub struct DataRef {
    /// The relative path: no leading '/', no dot segments, no encoded dots or slashes.
    path: String,
    /// Everything after the first '?', kept verbatim for the request and never shown.
    query: Option<String>,
}

impl DataRef {
    /// Validates a `dataref` value and refuses, without any request, every reference that is
    /// not a plain relative path (with an optional query) under the base URL.
    ///
    /// The rules are stricter than RFC 3986 on purpose: what the `url` crate, a proxy and the
    /// data owner's server make of `%2e%2e`, `..;`, backslashes or double encoding differs, so
    /// anything that one of them could read as "go up" is refused rather than normalised.
    pub fn parse(reference: &str) -> Result<DataRef, EnvelopeError> {
        check_reference(reference).map_err(|reason| EnvelopeError::ForbiddenDataref { reason })?;
        let (path, query) = match reference.split_once('?') {
            Some((path, query)) => (path, Some(query.to_owned())),
            None => (reference, None),
        };
        Ok(DataRef { path: path.to_owned(), query })
    }

    /// The path part only (never the query), safe to log and to record.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Joins the reference onto `base` (a URL whose path ends with '/', e.g.
    /// `https://crm.example.com/api/v1/`) and re-checks that the result has the same scheme,
    /// host and port as `base` and a path under base's path. Returns the full URL to request
    /// (with the query).
    ///
    /// A base path without the trailing '/' is treated as if it had one: RFC 3986 would
    /// otherwise replace its last segment, and the request would leave the configured path.
    /// A query or fragment on `base` is dropped.
    pub fn resolve_against(&self, base: &url::Url) -> Result<url::Url, EnvelopeError> {
        let forbidden = |reason| EnvelopeError::ForbiddenDataref { reason };
        if base.cannot_be_a_base() {
            return Err(forbidden(DatarefRefusal::BaseNotHierarchical));
        }
        let mut base = base.clone();
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }

        let relative = match &self.query {
            Some(query) => format!("{}?{}", self.path, query),
            None => self.path.clone(),
        };
        let joined = base.join(&relative).map_err(|_| forbidden(DatarefRefusal::NotJoinable))?;

        // Defence in depth: `parse` already refused everything that could change the origin
        // or climb out of the base path, but the request goes wherever the `url` crate says,
        // so check what it says.
        if joined.scheme() != base.scheme()
            || joined.host_str() != base.host_str()
            || joined.port_or_known_default() != base.port_or_known_default()
            || joined.username() != base.username()
            || joined.password() != base.password()
        {
            return Err(forbidden(DatarefRefusal::OtherHost));
        }
        if joined.fragment().is_some() {
            return Err(forbidden(DatarefRefusal::Fragment));
        }
        let below_base = joined
            .path()
            .strip_prefix(base.path())
            .filter(|rest| !rest.is_empty())
            .ok_or_else(|| forbidden(DatarefRefusal::EscapesBasePath))?;
        // The part below the base must still pass the path rules after the crate's own
        // normalisation and encoding.
        check_path(below_base).map_err(forbidden)?;
        Ok(joined)
    }
}

impl fmt::Debug for DataRef {
    /// Prints the path only, e.g. `DataRef("customers/42")`: the query may hold personal data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DataRef").field(&self.path).finish()
    }
}

/// Why a `dataref` was refused. The text names the rule, never the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatarefRefusal {
    /// The reference is empty.
    Empty,
    /// The reference has nothing before its query: it would name the base itself.
    EmptyPath,
    /// The reference has a scheme (`http:`, `javascript:`): references must be relative.
    AbsoluteUrl,
    /// The first path segment has a ':' and could be read as a scheme.
    ColonInFirstSegment,
    /// The reference starts with `//` and would name another host.
    NetworkPath,
    /// The reference starts with `/` and would leave the base path.
    AbsolutePath,
    /// The reference has a `#fragment`.
    Fragment,
    /// The reference has a backslash, which some parsers read as '/'.
    Backslash,
    /// The reference has an ASCII control character or a space.
    ControlOrSpace,
    /// The reference has a non-ASCII character (it must be percent-encoded).
    NonAscii,
    /// A path segment is `.` or `..` (also `..;param`).
    DotSegment,
    /// The path has a percent-escape for '.', '/', '\\', '%' or a control character.
    EncodedDotOrSlash,
    /// A '%' is not followed by two hex digits.
    MalformedPercentEscape,
    /// The `url` crate could not join the reference onto the base URL.
    NotJoinable,
    /// The joined URL has another scheme, host, port or user than the base URL.
    OtherHost,
    /// The joined URL's path is not below the base URL's path.
    EscapesBasePath,
    /// The base URL cannot have relative references (e.g. `mailto:`); a configuration error.
    BaseNotHierarchical,
}

impl fmt::Display for DatarefRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatarefRefusal::Empty => "empty reference",
            DatarefRefusal::EmptyPath => "empty path",
            DatarefRefusal::AbsoluteUrl => "absolute URL (references must be relative)",
            DatarefRefusal::ColonInFirstSegment => "colon in the first path segment",
            DatarefRefusal::NetworkPath => "network-path reference (other host)",
            DatarefRefusal::AbsolutePath => "absolute path (leaves the base path)",
            DatarefRefusal::Fragment => "fragment not allowed",
            DatarefRefusal::Backslash => "backslash",
            DatarefRefusal::ControlOrSpace => "control character or space",
            DatarefRefusal::NonAscii => "non-ASCII character (must be percent-encoded)",
            DatarefRefusal::DotSegment => "dot segment (path escapes the base path)",
            DatarefRefusal::EncodedDotOrSlash => "percent-encoded dot or slash",
            DatarefRefusal::MalformedPercentEscape => "malformed percent-escape",
            DatarefRefusal::NotJoinable => "cannot be joined onto the base URL",
            DatarefRefusal::OtherHost => "other host",
            DatarefRefusal::EscapesBasePath => "path escapes the base path",
            DatarefRefusal::BaseNotHierarchical => "base URL cannot take relative references",
        })
    }
}

/// What is wrong with a `ce_` (or `content-type`) header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderProblem {
    /// The attribute name after `ce_` is empty or not lower-case a-z0-9.
    InvalidName,
    /// The header's value is null.
    NullValue,
    /// The header occurs more than once, so its meaning is ambiguous.
    Duplicated,
}

impl fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderProblem::InvalidName => "attribute name must be lower-case a-z and 0-9",
            HeaderProblem::NullValue => "null value",
            HeaderProblem::Duplicated => "duplicated (ambiguous)",
        })
    }
}

/// Why a Kafka record is not a usable reference event. Every case is permanent: the same
/// record fails the same way on every retry.
///
/// Messages name the attribute or header and the rule, never a value.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// A required attribute is absent.
    #[error("required attribute `{attribute}` is missing")]
    MissingAttribute {
        /// The attribute's name.
        attribute: &'static str,
    },
    /// An attribute that must be non-empty when present is empty.
    #[error("attribute `{attribute}` is empty")]
    EmptyAttribute {
        /// The attribute's name.
        attribute: &'static str,
    },
    /// A `ce_` or `content-type` header cannot be read unambiguously.
    #[error("header `{header}`: {problem}")]
    MalformedHeader {
        /// The header's name, escaped and truncated for logs.
        header: String,
        /// What is wrong with it.
        problem: HeaderProblem,
    },
    /// A `ce_` header's value is not UTF-8.
    #[error("header `{header}`: value is not UTF-8")]
    NotUtf8 {
        /// The header's name, escaped and truncated for logs.
        header: String,
    },
    /// `specversion` is not "1.0".
    #[error("attribute `specversion` is not 1.0 (the only version supported)")]
    UnsupportedSpecversion,
    /// The event carries data instead of (or besides) a reference.
    #[error(
        "{mode}-mode event carries inline data; personal data must be referenced with \
         `dataref`, not written to the topic"
    )]
    InlineData {
        /// The mode the event arrived in (binary: a non-empty value; structured: a `data` or
        /// `data_base64` member).
        mode: ContentMode,
    },
    /// The `dataref` extension is absent.
    #[error("extension `dataref` is missing")]
    MissingDataref,
    /// The `dataref` could lead the request elsewhere than below the base URL.
    #[error("`dataref` refused: {reason}")]
    ForbiddenDataref {
        /// The rule the reference breaks.
        reason: DatarefRefusal,
    },
    /// The structured-mode value is not a usable JSON CloudEvent.
    #[error("structured event: {detail}")]
    MalformedStructuredEvent {
        /// What is wrong, with a position or a member name but never content.
        detail: String,
    },
}

impl EnvelopeError {
    /// A short stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            EnvelopeError::MissingAttribute { .. } | EnvelopeError::EmptyAttribute { .. } => {
                "missing_attribute"
            }
            EnvelopeError::MalformedHeader { .. } => "malformed_header",
            EnvelopeError::NotUtf8 { .. } => "not_utf8",
            EnvelopeError::UnsupportedSpecversion => "unsupported_specversion",
            EnvelopeError::InlineData { .. } => "inline_data",
            EnvelopeError::MissingDataref => "missing_dataref",
            EnvelopeError::ForbiddenDataref { .. } => "forbidden_dataref",
            EnvelopeError::MalformedStructuredEvent { .. } => "malformed_structured_event",
        }
    }
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

/// Header and member names are echoed in errors; bound them so a hostile name cannot flood logs.
const MAX_NAME_CHARS_SHOWN: usize = 64;

/// Tells binary from structured mode by the `content-type` header, as the binding requires.
fn content_mode(record: &RawRecord<'_>) -> Result<ContentMode, EnvelopeError> {
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

/// Binary mode: attributes are `ce_` headers, and the value must be empty.
fn parse_binary(record: &RawRecord<'_>) -> Result<ReferenceEvent, EnvelopeError> {
    let mut attributes: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &record.headers {
        let Some(attribute) = ce_attribute_name(name)? else {
            continue;
        };
        let value = value.ok_or_else(|| malformed_header(name, HeaderProblem::NullValue))?;
        let value = std::str::from_utf8(value)
            .map_err(|_| EnvelopeError::NotUtf8 { header: printable_name(name) })?;
        if attributes.insert(attribute.to_owned(), value.to_owned()).is_some() {
            return Err(malformed_header(name, HeaderProblem::Duplicated));
        }
    }
    // A `ce_data` header is data travelling through the topic just as much as a value is.
    let inline_data = record.value.is_some_and(|value| !value.is_empty()) || attributes.contains_key("data");
    assemble(attributes, inline_data, ContentMode::Binary)
}

/// The attribute name of a `ce_` header, `None` for other headers (which binary mode ignores).
fn ce_attribute_name(header: &str) -> Result<Option<&str>, EnvelopeError> {
    let Some(prefix) = header.get(..3) else {
        return Ok(None);
    };
    if !prefix.eq_ignore_ascii_case("ce_") {
        return Ok(None);
    }
    // `CE_id` is refused rather than ignored: a consumer that lower-cases names would read an
    // attribute keyhole did not, and the two would disagree about the event.
    let attribute = &header[3..];
    if prefix != "ce_" || !is_attribute_name(attribute) {
        return Err(malformed_header(header, HeaderProblem::InvalidName));
    }
    Ok(Some(attribute))
}

/// Structured mode: the value is the JSON event.
fn parse_structured(record: &RawRecord<'_>) -> Result<ReferenceEvent, EnvelopeError> {
    check_structured_format(record)?;
    let value = record
        .value
        .filter(|value| !value.is_empty())
        .ok_or_else(|| malformed_event("the record has no value".to_owned()))?;
    let Members(members) = serde_json::from_slice(value).map_err(|error| {
        // serde's message could quote the input; keep only the category and the position.
        let what = match error.classify() {
            serde_json::error::Category::Data => "not a JSON object",
            serde_json::error::Category::Eof => "truncated JSON",
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => "invalid JSON",
        };
        malformed_event(format!("{what} at line {} column {}", error.line(), error.column()))
    })?;

    let mut attributes: BTreeMap<String, String> = BTreeMap::new();
    let mut inline_data = false;
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for (name, value) in &members {
        // serde_json keeps the last of duplicated members, other parsers the first: refuse,
        // so that every reader sees the same `dataref`.
        if !seen.insert(name.as_str()) {
            return Err(malformed_event(format!("member `{}` is duplicated", printable_name(name))));
        }
        match name.as_str() {
            // Any presence counts, even `null`: a producer that writes the key writes data.
            "data" | "data_base64" => inline_data = true,
            // Describe inline data, which a reference event has none of.
            "datacontenttype" | "dataschema" => {}
            "specversion" | "id" | "source" | "type" | "subject" | "time" | "dataref" => {
                let Value::String(text) = value else {
                    return Err(malformed_event(format!("attribute `{name}` must be a string")));
                };
                attributes.insert(name.clone(), text.clone());
            }
            _ => {
                if !is_attribute_name(name) {
                    return Err(malformed_event(format!(
                        "invalid attribute name `{}` (must be lower-case a-z and 0-9)",
                        printable_name(name)
                    )));
                }
                attributes.insert(name.clone(), canonical_extension_value(name, value)?);
            }
        }
    }
    assemble(attributes, inline_data, ContentMode::Structured)
}

/// Only the JSON event format is read; batches would need one outcome per event.
fn check_structured_format(record: &RawRecord<'_>) -> Result<(), EnvelopeError> {
    let content_type = record
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .and_then(|(_, value)| *value)
        .unwrap_or_default()
        .trim_ascii_start();
    let format = content_type.get(STRUCTURED_PREFIX.len()..).unwrap_or_default();
    let format = format.split(|byte| *byte == b';').next().unwrap_or_default().trim_ascii();
    if format.eq_ignore_ascii_case(b"+json") {
        Ok(())
    } else if format.eq_ignore_ascii_case(b"-batch+json") {
        Err(malformed_event(
            "batched events (application/cloudevents-batch+json) are not supported".to_owned(),
        ))
    } else {
        Err(malformed_event("unsupported event format (only application/cloudevents+json)".to_owned()))
    }
}

/// An extension's value in the canonical string form of the CloudEvents type system.
fn canonical_extension_value(name: &str, value: &Value) -> Result<String, EnvelopeError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Bool(flag) => Ok(flag.to_string()),
        Value::Number(number) if number.is_i64() || number.is_u64() => Ok(number.to_string()),
        // CloudEvents has integers but no floating-point type.
        Value::Number(_) => {
            Err(malformed_event(format!("extension `{name}` must be an integer, not a fraction")))
        }
        Value::Null | Value::Array(_) | Value::Object(_) => {
            Err(malformed_event(format!("extension `{name}` must be a string, number or boolean")))
        }
    }
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
    let id = required(&mut attributes, "id")?;
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

fn malformed_header(header: &str, problem: HeaderProblem) -> EnvelopeError {
    EnvelopeError::MalformedHeader { header: printable_name(header), problem }
}

fn malformed_event(detail: String) -> EnvelopeError {
    EnvelopeError::MalformedStructuredEvent { detail }
}

/// A name fit for a log line: escaped (no newlines or control characters) and truncated.
fn printable_name(name: &str) -> String {
    let mut shown: String = name.chars().take(MAX_NAME_CHARS_SHOWN).flat_map(char::escape_debug).collect();
    if name.chars().count() > MAX_NAME_CHARS_SHOWN {
        shown.push('…');
    }
    shown
}

/// The rules of [`DataRef::parse`], in the order that gives the most telling reason.
fn check_reference(reference: &str) -> Result<(), DatarefRefusal> {
    if reference.is_empty() {
        return Err(DatarefRefusal::Empty);
    }
    if !reference.is_ascii() {
        return Err(DatarefRefusal::NonAscii);
    }
    // The `url` crate silently strips tabs, newlines and surrounding spaces: what it would
    // request is then not what was checked.
    if reference.bytes().any(|byte| byte.is_ascii_control() || byte == b' ') {
        return Err(DatarefRefusal::ControlOrSpace);
    }
    // WHATWG URL parsing reads '\' as '/' in http(s) URLs, so `..\admin` climbs.
    if reference.contains('\\') {
        return Err(DatarefRefusal::Backslash);
    }
    if reference.contains('#') {
        return Err(DatarefRefusal::Fragment);
    }
    if reference.starts_with("//") {
        return Err(DatarefRefusal::NetworkPath);
    }
    if reference.starts_with('/') {
        return Err(DatarefRefusal::AbsolutePath);
    }
    let first_segment = reference.split(['/', '?']).next().unwrap_or_default();
    if let Some((scheme, _)) = first_segment.split_once(':') {
        if is_scheme(scheme) {
            return Err(DatarefRefusal::AbsoluteUrl);
        }
        // RFC 3986 4.2: such a segment cannot start a relative-path reference; parsers differ
        // on what they make of it.
        return Err(DatarefRefusal::ColonInFirstSegment);
    }
    let (path, query) = match reference.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (reference, None),
    };
    if path.is_empty() {
        return Err(DatarefRefusal::EmptyPath);
    }
    check_path(path)?;
    if let Some(query) = query {
        check_percent_escapes(query, false)?;
    }
    Ok(())
}

/// `^[A-Za-z][A-Za-z0-9+.-]*$` (RFC 3986 3.1).
fn is_scheme(candidate: &str) -> bool {
    let mut bytes = candidate.bytes();
    bytes.next().is_some_and(|first| first.is_ascii_alphabetic())
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'.' | b'-'))
}

/// Rules for the path part (relative, ASCII): no encoded dots or slashes, no dot segments.
fn check_path(path: &str) -> Result<(), DatarefRefusal> {
    check_percent_escapes(path, true)?;
    for segment in path.split('/') {
        // Servlet containers strip `;parameters` from a segment before resolving dot segments,
        // so `..;x/admin` climbs there although it is a plain name to the `url` crate.
        // A `%3B` is cut too, for servers that decode before stripping.
        let lowered = segment.to_ascii_lowercase();
        let end =
            [lowered.find(';'), lowered.find("%3b")].into_iter().flatten().min().unwrap_or(segment.len());
        let head = segment.get(..end).unwrap_or(segment);
        if head == "." || head == ".." {
            return Err(DatarefRefusal::DotSegment);
        }
    }
    Ok(())
}

/// Every '%' must start a two-hex-digit escape. In the path an escape must not decode to '.',
/// '/', '\\', '%' or a control character: WHATWG URL parsing reads `%2e` as a dot, servers
/// decode `%2f` to '/', and `%25` hides any of these behind a second decoding.
fn check_percent_escapes(part: &str, in_path: bool) -> Result<(), DatarefRefusal> {
    let bytes = part.as_bytes();
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte != b'%' {
            index += 1;
            continue;
        }
        let high = bytes.get(index + 1).and_then(|digit| hex_value(*digit));
        let low = bytes.get(index + 2).and_then(|digit| hex_value(*digit));
        let (Some(high), Some(low)) = (high, low) else {
            return Err(DatarefRefusal::MalformedPercentEscape);
        };
        let decoded = high * 16 + low;
        if in_path && (matches!(decoded, b'.' | b'/' | b'\\' | b'%') || decoded.is_ascii_control()) {
            return Err(DatarefRefusal::EncodedDotOrSlash);
        }
        index += 3;
    }
    Ok(())
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).and_then(|value| u8::try_from(value).ok())
}

/// The members of a JSON object in document order, duplicates kept so that they can be refused
/// (`serde_json::Value` would silently keep the last one).
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MembersVisitor)
    }
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Members;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, Value>()? {
            members.push(member);
        }
        Ok(Members(members))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn binary_headers() -> Vec<(&'static str, Option<&'static [u8]>)> {
        vec![
            ("ce_specversion", Some(b"1.0".as_slice())),
            ("ce_id", Some(b"evt-1".as_slice())),
            ("ce_source", Some(b"/crm".as_slice())),
            ("ce_type", Some(b"com.example.customer.updated".as_slice())),
            ("ce_dataref", Some(b"customers/42?fields=name".as_slice())),
        ]
    }

    fn binary(headers: Vec<(&str, Option<&[u8]>)>) -> Result<ReferenceEvent, EnvelopeError> {
        parse(&RawRecord { key: Some(b"42"), value: None, headers })
    }

    fn with(
        mut headers: Vec<(&'static str, Option<&'static [u8]>)>,
        name: &'static str,
        value: Option<&'static [u8]>,
    ) -> Vec<(&'static str, Option<&'static [u8]>)> {
        headers.push((name, value));
        headers
    }

    fn without(
        headers: Vec<(&'static str, Option<&'static [u8]>)>,
        name: &str,
    ) -> Vec<(&'static str, Option<&'static [u8]>)> {
        headers.into_iter().filter(|(n, _)| *n != name).collect()
    }

    fn structured(json: &str) -> Result<ReferenceEvent, EnvelopeError> {
        parse(&RawRecord {
            key: None,
            value: Some(json.as_bytes()),
            headers: vec![("content-type", Some(b"application/cloudevents+json; charset=utf-8".as_slice()))],
        })
    }

    fn refusal(reference: &str) -> DatarefRefusal {
        match DataRef::parse(reference) {
            Err(EnvelopeError::ForbiddenDataref { reason }) => reason,
            other => panic!("{reference:?} was not refused: {other:?}"),
        }
    }

    fn base() -> url::Url {
        url::Url::parse("https://crm.example.com/api/v1/").unwrap()
    }

    // --- binary mode ---

    #[test]
    fn binary_event_is_read_with_sorted_extensions() {
        let headers = vec![
            ("ce_specversion", Some(b"1.0".as_slice())),
            ("ce_type", Some(b"com.example.customer.updated".as_slice())),
            ("ce_zeta", Some(b"last".as_slice())),
            ("ce_id", Some(b"evt-1".as_slice())),
            ("ce_source", Some(b"/crm".as_slice())),
            ("ce_subject", Some(b"customer-42".as_slice())),
            ("ce_time", Some(b"2024-05-01T12:00:00Z".as_slice())),
            ("ce_correlationid", Some(b"corr-7".as_slice())),
            ("ce_replyto", Some(b"replies".as_slice())),
            ("ce_partitionkey", Some(b"42".as_slice())),
            ("ce_dataref", Some(b"customers/42".as_slice())),
            ("ce_alpha", Some(b"first".as_slice())),
            ("ce_datacontenttype", Some(b"application/json".as_slice())),
            ("traceparent", Some(b"ignored, not a ce_ header".as_slice())),
            ("content-type", Some(b"application/json".as_slice())),
        ];
        let event = parse(&RawRecord { key: Some(b"42"), value: Some(b""), headers }).unwrap();
        assert_eq!(event.id, "evt-1");
        assert_eq!(event.source, "/crm");
        assert_eq!(event.type_, "com.example.customer.updated");
        assert_eq!(event.subject.as_deref(), Some("customer-42"));
        assert_eq!(event.time.as_deref(), Some("2024-05-01T12:00:00Z"));
        assert_eq!(event.dataref.path(), "customers/42");
        assert_eq!(event.correlationid.as_deref(), Some("corr-7"));
        assert_eq!(event.replyto.as_deref(), Some("replies"));
        assert_eq!(event.mode, ContentMode::Binary);
        assert_eq!(
            event.extensions,
            vec![
                ("alpha".to_owned(), "first".to_owned()),
                ("correlationid".to_owned(), "corr-7".to_owned()),
                ("zeta".to_owned(), "last".to_owned()),
            ]
        );
    }

    #[test]
    fn binary_minimal_event_has_no_optional_parts() {
        let event = binary(binary_headers()).unwrap();
        assert_eq!(event.subject, None);
        assert_eq!(event.time, None);
        assert_eq!(event.correlationid, None);
        assert_eq!(event.replyto, None);
        assert!(event.extensions.is_empty());
        assert_eq!(event.dataref, DataRef::parse("customers/42?fields=name").unwrap());
    }

    #[test]
    fn binary_missing_required_attributes_are_refused() {
        for attribute in ["specversion", "id", "source", "type"] {
            let header = format!("ce_{attribute}");
            let error = binary(without(binary_headers(), &header)).unwrap_err();
            assert_eq!(error, EnvelopeError::MissingAttribute { attribute });
            assert_eq!(error.kind(), "missing_attribute");
        }
    }

    #[test]
    fn binary_empty_required_attributes_are_refused() {
        for (attribute, header) in [("id", "ce_id"), ("source", "ce_source"), ("type", "ce_type")] {
            let headers = with(without(binary_headers(), header), header, Some(b""));
            let error = binary(headers).unwrap_err();
            assert_eq!(error, EnvelopeError::EmptyAttribute { attribute });
            assert_eq!(error.kind(), "missing_attribute");
        }
        let error = binary(with(binary_headers(), "ce_time", Some(b""))).unwrap_err();
        assert_eq!(error, EnvelopeError::EmptyAttribute { attribute: "time" });
    }

    #[test]
    fn binary_other_specversion_is_unsupported() {
        for version in [b"0.3".as_slice(), b"1.0.2", b"1", b""] {
            let headers = with(without(binary_headers(), "ce_specversion"), "ce_specversion", Some(version));
            let error = binary(headers).unwrap_err();
            assert_eq!(error, EnvelopeError::UnsupportedSpecversion);
            assert_eq!(error.kind(), "unsupported_specversion");
        }
    }

    #[test]
    fn binary_value_is_inline_data() {
        let error =
            parse(&RawRecord { key: None, value: Some(b"{\"name\":\"Alice\"}"), headers: binary_headers() })
                .unwrap_err();
        assert_eq!(error, EnvelopeError::InlineData { mode: ContentMode::Binary });
        assert_eq!(error.kind(), "inline_data");
        assert!(!error.to_string().contains("Alice"));
    }

    #[test]
    fn binary_ce_data_header_is_inline_data() {
        let error = binary(with(binary_headers(), "ce_data", Some(b"Alice"))).unwrap_err();
        assert_eq!(error.kind(), "inline_data");
    }

    #[test]
    fn binary_missing_dataref_is_refused() {
        let error = binary(without(binary_headers(), "ce_dataref")).unwrap_err();
        assert_eq!(error, EnvelopeError::MissingDataref);
        assert_eq!(error.kind(), "missing_dataref");
    }

    #[test]
    fn binary_hostile_dataref_is_refused() {
        let headers = with(without(binary_headers(), "ce_dataref"), "ce_dataref", Some(b"../admin"));
        let error = binary(headers).unwrap_err();
        assert_eq!(error, EnvelopeError::ForbiddenDataref { reason: DatarefRefusal::DotSegment });
        assert_eq!(error.kind(), "forbidden_dataref");
    }

    #[test]
    fn binary_invalid_attribute_names_are_malformed_headers() {
        for name in ["ce_Foo", "ce_foo-bar", "ce_foo_bar", "ce_", "CE_id", "Ce_x", "ce_é"] {
            let error = binary(with(binary_headers(), name, Some(b"x"))).unwrap_err();
            assert_eq!(
                error,
                EnvelopeError::MalformedHeader {
                    header: name.to_owned(),
                    problem: HeaderProblem::InvalidName
                },
                "{name}"
            );
            assert_eq!(error.kind(), "malformed_header");
        }
    }

    #[test]
    fn binary_null_header_value_is_malformed() {
        let error = binary(with(binary_headers(), "ce_subject", None)).unwrap_err();
        assert_eq!(
            error,
            EnvelopeError::MalformedHeader {
                header: "ce_subject".to_owned(),
                problem: HeaderProblem::NullValue
            }
        );
    }

    #[test]
    fn binary_duplicated_header_is_malformed() {
        let error = binary(with(binary_headers(), "ce_dataref", Some(b"other/1"))).unwrap_err();
        assert_eq!(
            error,
            EnvelopeError::MalformedHeader {
                header: "ce_dataref".to_owned(),
                problem: HeaderProblem::Duplicated
            }
        );
    }

    #[test]
    fn binary_non_utf8_value_names_the_header() {
        let error = binary(with(binary_headers(), "ce_subject", Some(b"\xff\xfe"))).unwrap_err();
        assert_eq!(error, EnvelopeError::NotUtf8 { header: "ce_subject".to_owned() });
        assert_eq!(error.kind(), "not_utf8");
        assert!(error.to_string().contains("ce_subject"));
    }

    #[test]
    fn non_ce_headers_are_ignored_even_when_odd() {
        let headers = with(binary_headers(), "x-whatever", None);
        let headers = with(headers, "c", Some(b"\xff"));
        assert!(binary(headers).is_ok());
    }

    #[test]
    fn long_header_names_are_truncated_and_escaped_in_errors() {
        let name: &'static str = Box::leak(format!("ce_{}\n", "a".repeat(200)).into_boxed_str());
        let error = binary(with(binary_headers(), name, Some(b"x"))).unwrap_err();
        let shown = error.to_string();
        assert!(!shown.contains('\n'));
        assert!(shown.len() < 150, "{shown}");
    }

    // --- content mode ---

    #[test]
    fn content_type_prefix_selects_structured_mode_case_insensitively() {
        let json = r#"{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"a/1"}"#;
        let event = parse(&RawRecord {
            key: None,
            value: Some(json.as_bytes()),
            headers: vec![("Content-Type", Some(b"Application/CloudEvents+JSON".as_slice()))],
        })
        .unwrap();
        assert_eq!(event.mode, ContentMode::Structured);
    }

    #[test]
    fn duplicated_content_type_is_malformed() {
        let error = parse(&RawRecord {
            key: None,
            value: None,
            headers: with(
                with(binary_headers(), "content-type", Some(b"application/json")),
                "content-type",
                Some(b"application/cloudevents+json"),
            ),
        })
        .unwrap_err();
        assert_eq!(error.kind(), "malformed_header");
    }

    #[test]
    fn batch_content_type_is_not_supported() {
        let error = parse(&RawRecord {
            key: None,
            value: Some(b"[]"),
            headers: vec![("content-type", Some(b"application/cloudevents-batch+json".as_slice()))],
        })
        .unwrap_err();
        assert_eq!(error.kind(), "malformed_structured_event");
        assert!(error.to_string().contains("batch"));
    }

    #[test]
    fn other_structured_formats_are_not_supported() {
        let error = parse(&RawRecord {
            key: None,
            value: Some(b"\x01\x02"),
            headers: vec![("content-type", Some(b"application/cloudevents+avro".as_slice()))],
        })
        .unwrap_err();
        assert_eq!(error.kind(), "malformed_structured_event");
    }

    // --- structured mode ---

    #[test]
    fn structured_event_is_read_with_canonical_extensions() {
        let event = structured(
            r#"{
                "specversion": "1.0",
                "id": "evt-2",
                "source": "/crm",
                "type": "com.example.customer.updated",
                "subject": "customer-42",
                "time": "2024-05-01T12:00:00Z",
                "datacontenttype": "application/json",
                "dataschema": "https://example.com/schema",
                "dataref": "customers/42",
                "zcount": 7,
                "negative": -3,
                "flag": true,
                "off": false,
                "correlationid": 99,
                "replyto": "replies",
                "partitionkey": "42",
                "causationid": "evt-1"
            }"#,
        )
        .unwrap();
        assert_eq!(event.id, "evt-2");
        assert_eq!(event.source, "/crm");
        assert_eq!(event.type_, "com.example.customer.updated");
        assert_eq!(event.subject.as_deref(), Some("customer-42"));
        assert_eq!(event.time.as_deref(), Some("2024-05-01T12:00:00Z"));
        assert_eq!(event.dataref.path(), "customers/42");
        assert_eq!(event.correlationid.as_deref(), Some("99"));
        assert_eq!(event.replyto.as_deref(), Some("replies"));
        assert_eq!(event.mode, ContentMode::Structured);
        let expected: Vec<(String, String)> = [
            ("causationid", "evt-1"),
            ("correlationid", "99"),
            ("flag", "true"),
            ("negative", "-3"),
            ("off", "false"),
            ("zcount", "7"),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(event.extensions, expected);
    }

    #[test]
    fn structured_data_member_is_inline_data_even_when_null() {
        for member in [r#""data": {"name": "Alice"}"#, r#""data": null"#, r#""data_base64": "QWxpY2U=""#] {
            let json = format!(
                r#"{{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"a/1",{member}}}"#
            );
            let error = structured(&json).unwrap_err();
            assert_eq!(error, EnvelopeError::InlineData { mode: ContentMode::Structured }, "{member}");
            assert!(!error.to_string().contains("Alice"));
        }
    }

    #[test]
    fn structured_missing_attributes_are_refused() {
        let error = structured(r#"{"specversion":"1.0","source":"s","type":"t","dataref":"a"}"#).unwrap_err();
        assert_eq!(error, EnvelopeError::MissingAttribute { attribute: "id" });
        let error = structured(r#"{"id":"1","source":"s","type":"t","dataref":"a"}"#).unwrap_err();
        assert_eq!(error, EnvelopeError::MissingAttribute { attribute: "specversion" });
        let error = structured(r#"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#).unwrap_err();
        assert_eq!(error, EnvelopeError::MissingDataref);
    }

    #[test]
    fn structured_other_specversion_is_unsupported() {
        let error = structured(r#"{"specversion":"0.3","id":"1","source":"s","type":"t","dataref":"a"}"#)
            .unwrap_err();
        assert_eq!(error, EnvelopeError::UnsupportedSpecversion);
    }

    #[test]
    fn structured_non_string_attributes_are_malformed() {
        for json in [
            r#"{"specversion":1.0,"id":"1","source":"s","type":"t","dataref":"a"}"#,
            r#"{"specversion":"1.0","id":1,"source":"s","type":"t","dataref":"a"}"#,
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":42}"#,
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"a","time":null}"#,
        ] {
            let error = structured(json).unwrap_err();
            assert_eq!(error.kind(), "malformed_structured_event", "{json}");
        }
    }

    #[test]
    fn structured_extension_of_wrong_type_is_malformed() {
        for value in ["null", "[1]", r#"{"a":1}"#, "1.5"] {
            let json = format!(
                r#"{{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"a","ext":{value}}}"#
            );
            let error = structured(&json).unwrap_err();
            assert_eq!(error.kind(), "malformed_structured_event", "{value}");
            assert!(error.to_string().contains("`ext`"), "{error}");
        }
    }

    #[test]
    fn structured_invalid_member_name_is_malformed() {
        let error = structured(
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"a","Bad-Name":"x"}"#,
        )
        .unwrap_err();
        assert_eq!(error.kind(), "malformed_structured_event");
    }

    #[test]
    fn structured_duplicated_member_is_refused_not_last_wins() {
        let error = structured(
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"a/1","dataref":"../admin"}"#,
        )
        .unwrap_err();
        assert_eq!(error.kind(), "malformed_structured_event");
        assert!(error.to_string().contains("dataref"));
        assert!(!error.to_string().contains("admin"));
    }

    #[test]
    fn structured_value_must_be_a_json_object() {
        for value in
            ["", "[1,2]", "\"text\"", "{\"specversion\": \"1.0\", \"secret", "{} trailing", "not json"]
        {
            let error = structured(value).unwrap_err();
            assert_eq!(error.kind(), "malformed_structured_event", "{value}");
        }
        let error = structured("[\"Alice\"]").unwrap_err();
        assert!(error.to_string().contains("not a JSON object"), "{error}");
        assert!(!error.to_string().contains("Alice"));
    }

    #[test]
    fn structured_syntax_error_gives_position_without_content() {
        let error = structured("{\"specversion\": \"1.0\",\n \"id\": Alice}").unwrap_err();
        let shown = error.to_string();
        assert!(shown.contains("line 2"), "{shown}");
        assert!(!shown.contains("Alice"), "{shown}");
    }

    #[test]
    fn structured_hostile_dataref_is_refused() {
        let error = structured(
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"http://127.0.0.1:9999/x"}"#,
        )
        .unwrap_err();
        assert_eq!(error, EnvelopeError::ForbiddenDataref { reason: DatarefRefusal::AbsoluteUrl });
    }

    #[test]
    fn structured_ignores_ce_headers() {
        let event = parse(&RawRecord {
            key: None,
            value: Some(br#"{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"a/1"}"#),
            headers: vec![
                ("content-type", Some(b"application/cloudevents+json".as_slice())),
                ("ce_dataref", Some(b"../admin".as_slice())),
            ],
        })
        .unwrap();
        assert_eq!(event.dataref.path(), "a/1");
    }

    // --- dataref ---

    #[test]
    fn hostile_references_are_refused_with_their_reason() {
        use DatarefRefusal as R;
        let cases = [
            ("", R::Empty),
            ("?x=1", R::EmptyPath),
            ("http://127.0.0.1:9999/x", R::AbsoluteUrl),
            ("https://crm.example.com/api/v1/x", R::AbsoluteUrl),
            ("javascript:alert(1)", R::AbsoluteUrl),
            ("C:/windows", R::AbsoluteUrl),
            ("1a:b", R::ColonInFirstSegment),
            ("//169.254.169.254/latest/meta-data", R::NetworkPath),
            ("/etc/passwd", R::AbsolutePath),
            ("../admin", R::DotSegment),
            ("customers/../../admin", R::DotSegment),
            ("customers/./42", R::DotSegment),
            ("customers/..", R::DotSegment),
            ("..", R::DotSegment),
            ("customers/..;x/admin", R::DotSegment),
            ("customers/..%3Bx/admin", R::DotSegment),
            ("customers/%2e%2e/admin", R::EncodedDotOrSlash),
            ("customers/%2E%2E/admin", R::EncodedDotOrSlash),
            ("%2e%2e/x", R::EncodedDotOrSlash),
            ("customers/.%2e/admin", R::EncodedDotOrSlash),
            ("customers/..%2fadmin", R::EncodedDotOrSlash),
            ("customers%2f..%2fadmin", R::EncodedDotOrSlash),
            ("customers%2F42", R::EncodedDotOrSlash),
            ("customers/%252e%252e/admin", R::EncodedDotOrSlash),
            ("customers/%5c..", R::EncodedDotOrSlash),
            ("customers/%00", R::EncodedDotOrSlash),
            ("customers/%7f", R::EncodedDotOrSlash),
            ("customers\\..\\admin", R::Backslash),
            ("customers/42#frag", R::Fragment),
            ("customers/42?x=1#frag", R::Fragment),
            ("customers/4 2", R::ControlOrSpace),
            ("customers/42\n", R::ControlOrSpace),
            ("\tcustomers/42", R::ControlOrSpace),
            ("customers/é", R::NonAscii),
            ("customers/%zz", R::MalformedPercentEscape),
            ("customers/%2", R::MalformedPercentEscape),
            ("customers/42?q=%", R::MalformedPercentEscape),
        ];
        for (reference, expected) in cases {
            assert_eq!(refusal(reference), expected, "{reference:?}");
        }
    }

    #[test]
    fn plain_references_are_accepted() {
        for reference in [
            "customers/42",
            "customers/42/",
            "customers/caf%C3%A9",
            "customers/a%20b",
            "customers/...",
            "customers/.hidden",
            "customers/42:profile",
            "customers/42?next=../admin&path=%2e%2e%2f",
            "42",
        ] {
            assert!(DataRef::parse(reference).is_ok(), "{reference:?}");
        }
    }

    #[test]
    fn query_is_kept_but_never_shown() {
        let dataref = DataRef::parse("customers/42?fields=name").unwrap();
        assert_eq!(dataref.path(), "customers/42");
        let debug = format!("{dataref:?}");
        assert_eq!(debug, r#"DataRef("customers/42")"#);
        assert!(!debug.contains("fields"));
        let event = binary(binary_headers()).unwrap();
        assert!(!format!("{event:?}").contains("fields"));
        let url = dataref.resolve_against(&base()).unwrap();
        assert_eq!(url.as_str(), "https://crm.example.com/api/v1/customers/42?fields=name");
    }

    #[test]
    fn errors_never_show_values_or_queries() {
        let secret = "alice%40example.com";
        let forbidden = [
            format!("customers/%2e%2e/x?email={secret}"),
            format!("customers/42?email={secret}#frag"),
            format!("http://evil.example/?email={secret}"),
            format!("customers/42?email={secret}%"),
        ];
        for reference in &forbidden {
            let shown = DataRef::parse(reference).unwrap_err().to_string();
            assert!(!shown.contains(secret), "{shown}");
            assert!(!shown.contains("email"), "{shown}");
        }

        let headers = with(
            without(binary_headers(), "ce_dataref"),
            "ce_dataref",
            Some(b"../x?email=alice%40example.com"),
        );
        let shown = binary(headers).unwrap_err().to_string();
        assert!(!shown.contains("email"), "{shown}");

        let headers =
            with(without(binary_headers(), "ce_specversion"), "ce_specversion", Some(b"alice@example.com"));
        let shown = binary(headers).unwrap_err().to_string();
        assert!(!shown.contains("alice"), "{shown}");

        let shown = binary(with(binary_headers(), "ce_subject", Some(b"alice\xff"))).unwrap_err().to_string();
        assert!(!shown.contains("alice"), "{shown}");

        let shown = structured(r#"{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"a","ext":{"email":"alice@example.com"}}"#)
            .unwrap_err()
            .to_string();
        assert!(!shown.contains("alice"), "{shown}");
    }

    #[test]
    fn resolution_stays_under_the_base_path() {
        let url = DataRef::parse("customers/42").unwrap().resolve_against(&base()).unwrap();
        assert_eq!(url.as_str(), "https://crm.example.com/api/v1/customers/42");
    }

    #[test]
    fn base_without_trailing_slash_keeps_its_last_segment() {
        let base = url::Url::parse("https://crm.example.com/api/v1?token=x#top").unwrap();
        let url = DataRef::parse("customers/42").unwrap().resolve_against(&base).unwrap();
        assert_eq!(url.as_str(), "https://crm.example.com/api/v1/customers/42");
    }

    #[test]
    fn resolution_keeps_the_base_port_and_encodes_odd_characters() {
        let base = url::Url::parse("http://127.0.0.1:8080/owner/").unwrap();
        let url = DataRef::parse("customers/a\"b").unwrap().resolve_against(&base).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/owner/customers/a%22b");
    }

    #[test]
    fn resolution_rechecks_references_that_bypassed_parse() {
        // Built directly to prove `resolve_against` does not rely on `parse` alone.
        let hostile = [
            ("../admin", DatarefRefusal::EscapesBasePath),
            ("//evil.example/x", DatarefRefusal::OtherHost),
            ("http://evil.example/api/v1/x", DatarefRefusal::OtherHost),
            ("https://crm.example.com:8443/api/v1/x", DatarefRefusal::OtherHost),
            ("/etc/passwd", DatarefRefusal::EscapesBasePath),
            // The `url` crate reads `%2e%2e` as `..` (WHATWG), so this climbs two levels.
            ("customers/%2e%2e/%2e%2e/%2e%2e/x", DatarefRefusal::EscapesBasePath),
            ("customers%2f..%2fadmin", DatarefRefusal::EncodedDotOrSlash),
            ("customers/..;/x", DatarefRefusal::DotSegment),
        ];
        for (path, expected) in hostile {
            let dataref = DataRef { path: path.to_owned(), query: None };
            assert_eq!(
                dataref.resolve_against(&base()),
                Err(EnvelopeError::ForbiddenDataref { reason: expected }),
                "{path:?}"
            );
        }
    }

    #[test]
    fn non_hierarchical_base_is_refused() {
        let base = url::Url::parse("mailto:owner@example.com").unwrap();
        let error = DataRef::parse("customers/42").unwrap().resolve_against(&base).unwrap_err();
        assert_eq!(error, EnvelopeError::ForbiddenDataref { reason: DatarefRefusal::BaseNotHierarchical });
    }

    #[test]
    fn every_kind_label_is_stable() {
        let errors = [
            (EnvelopeError::MissingAttribute { attribute: "id" }, "missing_attribute"),
            (EnvelopeError::EmptyAttribute { attribute: "id" }, "missing_attribute"),
            (
                EnvelopeError::MalformedHeader {
                    header: "ce_x".to_owned(),
                    problem: HeaderProblem::Duplicated,
                },
                "malformed_header",
            ),
            (EnvelopeError::NotUtf8 { header: "ce_x".to_owned() }, "not_utf8"),
            (EnvelopeError::UnsupportedSpecversion, "unsupported_specversion"),
            (EnvelopeError::InlineData { mode: ContentMode::Binary }, "inline_data"),
            (EnvelopeError::MissingDataref, "missing_dataref"),
            (EnvelopeError::ForbiddenDataref { reason: DatarefRefusal::Fragment }, "forbidden_dataref"),
            (EnvelopeError::MalformedStructuredEvent { detail: String::new() }, "malformed_structured_event"),
        ];
        for (error, kind) in errors {
            assert_eq!(error.kind(), kind);
        }
    }
}
