//! The fixture format of `keyhole dev`: a directory holding `fixtures.toml`, which lists the data
//! owner's records with the consent for each, the events to publish, and optionally the
//! handler's limits. Documented in docs/writing-handlers.md.

use super::owner::{Consent, Record};
use crate::sandbox::Limits;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `fixtures.toml`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, rename = "record")]
    records: Vec<RecordEntry>,
    #[serde(default, rename = "event")]
    events: Vec<EventEntry>,
    #[serde(default)]
    limits: Option<Limits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordEntry {
    path: String,
    #[serde(default = "default_content_type")]
    content_type: String,
    body: Option<String>,
    body_file: Option<PathBuf>,
    consent: Consent,
}

fn default_content_type() -> String {
    "application/json".into()
}

/// One event to publish: a reference to a record.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventEntry {
    /// The CloudEvents id.
    pub id: String,
    /// The reference.
    pub dataref: String,
    /// The CloudEvents type.
    #[serde(default = "default_type", rename = "type")]
    pub type_: String,
    /// The CloudEvents source.
    #[serde(default = "default_source")]
    pub source: String,
    /// The CloudEvents subject.
    pub subject: Option<String>,
    /// The CloudEvents time (RFC 3339); the publishing time when absent.
    pub time: Option<String>,
    /// The partition key.
    pub key: Option<String>,
    /// The correlation id.
    pub correlationid: Option<String>,
    /// A few words for the summary, e.g. "consent withdrawn after publishing".
    pub note: Option<String>,
}

fn default_type() -> String {
    "com.example.reference".into()
}

fn default_source() -> String {
    "urn:keyhole:fixtures".into()
}

/// A loaded fixture set.
#[derive(Debug)]
pub struct Fixtures {
    /// The owner's records.
    pub records: Vec<Record>,
    /// The events, in publishing order.
    pub events: Vec<EventEntry>,
    /// The handler's limits.
    pub limits: Limits,
}

impl Fixtures {
    /// Loads `DIR/fixtures.toml` (and the body files it names, relative to DIR).
    pub fn load(dir: &Path) -> Result<Fixtures, String> {
        let path = dir.join("fixtures.toml");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut records = Vec::new();
        for (i, entry) in file.records.into_iter().enumerate() {
            let body = match (entry.body, entry.body_file) {
                (Some(body), None) => body.into_bytes(),
                (None, Some(file)) => {
                    let file = dir.join(file);
                    std::fs::read(&file).map_err(|e| {
                        format!(
                            "{}: record[{i}].body_file: cannot read {}: {e}",
                            path.display(),
                            file.display()
                        )
                    })?
                }
                _ => {
                    return Err(format!(
                        "{}: record[{i}]: give exactly one of body and body_file",
                        path.display()
                    ));
                }
            };
            records.push(Record {
                path: entry.path,
                content_type: entry.content_type,
                body,
                consent: entry.consent,
            });
        }
        if file.events.is_empty() {
            return Err(format!("{}: no [[event]] to publish", path.display()));
        }
        Ok(Fixtures { records, events: file.events, limits: file.limits.unwrap_or_default() })
    }
}
