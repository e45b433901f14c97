//! `keyhole processing-record`: the record of processing activities (GDPR Art. 30(1)) that a
//! keyhole deployment carries out, built from what keyhole holds: its configuration, its
//! registry of uploaded handlers (read, never written), and what the Kafka broker reports of the
//! topics it writes to. One activity per (tenant, handler), configured and uploaded alike, each
//! with its purpose, data source, topics, versions, delivery mode, retention and safeguards, and
//! what its binding declares of what keyhole cannot know ([`crate::model::declared`]).
//!
//! - [`record`]: the record as data, which `--format json` prints as it is.
//! - [`gather`](gather::gather): from the configuration, the registry and the broker.
//! - [`retention`]: the broker's answer for each topic.
//! - [`markdown`](markdown::render): for a data protection officer's register.
//!
//! No secret reaches the record: a data source's credential is named by its kind, the
//! registry's token digests, the operator's token, signing keys and Kafka's secret properties
//! are never read into it.

mod gather;
mod markdown;
pub mod record;
mod retention;

pub use gather::gather;
pub use markdown::render as markdown;
pub use record::Record;

use std::path::PathBuf;

/// Why no record could be made.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The registry the configuration names cannot be read.
    #[error("cannot read the registry: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    /// A configured handler's component cannot be read (to name its version).
    #[error("cannot read the component {}: {source}", path.display())]
    Component {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The record as JSON, pretty-printed, with a final newline.
pub fn json(record: &Record) -> String {
    let mut text = serde_json::to_string_pretty(record).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}
