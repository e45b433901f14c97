//! Why a Kafka record is not a usable reference event ([`EnvelopeError`]), and the helpers that
//! build those errors without echoing a value: names are escaped and truncated for logs.

use std::fmt;

use super::{ContentMode, DatarefRefusal};

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
    /// An attribute is longer than keyhole records.
    #[error("attribute `{attribute}` is longer than {limit} bytes")]
    TooLong {
        /// The attribute's name.
        attribute: &'static str,
        /// The limit.
        limit: usize,
    },
    /// An attribute holds a control character (U+0000-U+001F, U+007F-U+009F), which the
    /// CloudEvents type system forbids in every String attribute: an `id` with a newline would
    /// otherwise forge lines in a text log.
    #[error("attribute `{attribute}` contains a control character")]
    ControlCharacter {
        /// The attribute's name, escaped and truncated for logs.
        attribute: String,
    },
    /// The structured-mode value is not a usable JSON CloudEvent.
    #[error("structured event: {detail}")]
    MalformedStructuredEvent {
        /// What is wrong, with a position or a member name but never content.
        detail: String,
    },
}

impl EnvelopeError {
    /// Every [`EnvelopeError::kind`], so that metrics can show each at 0 before it first
    /// happens.
    pub const KINDS: &'static [&'static str] = &[
        "missing_attribute",
        "malformed_header",
        "not_utf8",
        "unsupported_specversion",
        "inline_data",
        "missing_dataref",
        "forbidden_dataref",
        "malformed_structured_event",
        "too_long",
        "control_character",
    ];

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
            EnvelopeError::TooLong { .. } => "too_long",
            EnvelopeError::ControlCharacter { .. } => "control_character",
        }
    }
}

/// Header and member names are echoed in errors; bound them so a hostile name cannot flood logs.
const MAX_NAME_CHARS_SHOWN: usize = 64;

pub(super) fn malformed_header(header: &str, problem: HeaderProblem) -> EnvelopeError {
    EnvelopeError::MalformedHeader { header: printable_name(header), problem }
}

pub(super) fn control_character(attribute: &str) -> EnvelopeError {
    EnvelopeError::ControlCharacter { attribute: printable_name(attribute) }
}

/// Whether `value` holds a character the CloudEvents type system forbids in a String:
/// U+0000-U+001F and U+007F-U+009F.
pub(super) fn has_control_character(value: &str) -> bool {
    value.chars().any(|c| matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'))
}

pub(super) fn malformed_event(detail: String) -> EnvelopeError {
    EnvelopeError::MalformedStructuredEvent { detail }
}

/// A name fit for a log line: escaped (no newlines or control characters) and truncated.
pub(super) fn printable_name(name: &str) -> String {
    let mut shown: String = name.chars().take(MAX_NAME_CHARS_SHOWN).flat_map(char::escape_debug).collect();
    if name.chars().count() > MAX_NAME_CHARS_SHOWN {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each variant. The match below has no wildcard: a new variant does not compile
    /// until it is added here, and then the assertion asks for its kind in `KINDS`.
    fn one_of_each() -> Vec<EnvelopeError> {
        let all = vec![
            EnvelopeError::MissingAttribute { attribute: "id" },
            EnvelopeError::EmptyAttribute { attribute: "id" },
            EnvelopeError::MalformedHeader { header: "ce_x".into(), problem: HeaderProblem::NullValue },
            EnvelopeError::NotUtf8 { header: "ce_x".into() },
            EnvelopeError::UnsupportedSpecversion,
            EnvelopeError::InlineData { mode: ContentMode::Binary },
            EnvelopeError::MissingDataref,
            EnvelopeError::ForbiddenDataref { reason: DatarefRefusal::DotSegment },
            EnvelopeError::TooLong { attribute: "id", limit: 1 },
            EnvelopeError::ControlCharacter { attribute: "id".into() },
            EnvelopeError::MalformedStructuredEvent { detail: String::new() },
        ];
        for error in &all {
            match error {
                EnvelopeError::MissingAttribute { .. }
                | EnvelopeError::EmptyAttribute { .. }
                | EnvelopeError::MalformedHeader { .. }
                | EnvelopeError::NotUtf8 { .. }
                | EnvelopeError::UnsupportedSpecversion
                | EnvelopeError::InlineData { .. }
                | EnvelopeError::MissingDataref
                | EnvelopeError::ForbiddenDataref { .. }
                | EnvelopeError::TooLong { .. }
                | EnvelopeError::ControlCharacter { .. }
                | EnvelopeError::MalformedStructuredEvent { .. } => {}
            }
        }
        all
    }

    #[test]
    fn kinds_lists_the_kind_of_every_variant_and_nothing_else() {
        let kinds: std::collections::BTreeSet<&str> = one_of_each().iter().map(EnvelopeError::kind).collect();
        let listed: std::collections::BTreeSet<&str> = EnvelopeError::KINDS.iter().copied().collect();
        assert_eq!(kinds, listed);
        assert_eq!(listed.len(), EnvelopeError::KINDS.len(), "KINDS lists a kind twice");
    }
}
