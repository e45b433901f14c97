//! Structured content mode: the value is the JSON event (`application/cloudevents+json`), read
//! member by member so that a duplicated member is refused rather than silently won by one copy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::error::{malformed_event, printable_name};
use super::{
    ContentMode, EnvelopeError, RawRecord, ReferenceEvent, STRUCTURED_PREFIX, assemble, is_attribute_name,
};

/// Structured mode: the value is the JSON event.
pub(super) fn parse_structured(record: &RawRecord<'_>) -> Result<ReferenceEvent, EnvelopeError> {
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
