//! Binary content mode: the attributes are `ce_` headers and the value must be empty.

use std::collections::BTreeMap;

use super::error::{HeaderProblem, malformed_header, printable_name};
use super::{ContentMode, EnvelopeError, RawRecord, ReferenceEvent, assemble, is_attribute_name};

/// Binary mode: attributes are `ce_` headers, and the value must be empty.
pub(super) fn parse_binary(record: &RawRecord<'_>) -> Result<ReferenceEvent, EnvelopeError> {
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
