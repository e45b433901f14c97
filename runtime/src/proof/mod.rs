//! Reading access receipts back: `keyhole receipts verify` checks their hash chains
//! ([`crate::records::chain`]) and names every receipt changed, removed, inserted, reordered or
//! cut off; `keyhole receipts report` answers a person's access request (GDPR Art. 15) from the
//! same receipts, verified as they are read.
//!
//! - [`source`]: the receipts files, line by line, or the receipts topic, every partition from
//!   its beginning to its end;
//! - [`record`]: what one line or record is (a chained receipt, an unchained one, unreadable);
//! - [`verify`]: the [`Verifier`], which keeps of each receipt only its place, stream, seq, hash
//!   and `prev`, and checks the chains once everything is read;
//! - [`head`]: a published head given with `--head`;
//! - [`findings`]: what the verification found;
//! - [`access`]: a person's receipts, in time order, with the verification of their streams.
//!
//! The sources are read once; each line or record is parsed once and then forgotten but for
//! what the verifier (and, for a report, the receipts asked for) keep. Nothing here panics on
//! any input: whatever is not a receipt is a finding.

pub mod access;
pub mod findings;
pub mod head;
pub mod record;
pub mod source;
pub mod verify;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

pub use access::{AccessReport, Collector, Query};
pub use findings::{Finding, Kind, StreamSummary, Verification};
pub use head::PublishedHead;
pub use source::{SourceError, TopicSource};
pub use verify::{Options, Verifier};

use record::Parsed;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;

/// Where receipts are read from.
#[derive(Clone, Debug)]
pub enum Source {
    /// JSON-lines files (a keyhole's `receipts.path`; several replicas' files at once).
    Files(Vec<PathBuf>),
    /// A receipts topic.
    Topic(TopicSource),
}

/// A place receipts are read in order: a file, or a partition of the topic. Within a lane, a
/// stream's seqs increase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lane {
    /// A file, by the name it was given.
    File(String),
    /// A partition of the topic.
    Partition(i32),
}

impl Lane {
    /// Whether the lane is a file (complete from the first receipt its writer wrote) rather
    /// than a partition (whose beginning retention may have deleted).
    pub fn is_file(&self) -> bool {
        matches!(self, Lane::File(_))
    }
}

/// Where a line or record is: its lane (an index into the verifier's lanes) and its line number
/// (from 1) or offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The lane's index.
    pub lane: u32,
    /// The line's number, or the record's offset.
    pub index: i64,
}

/// `file:line` or `partition@offset`: where `at` is, in `lanes`.
pub fn describe(lanes: &[Lane], at: Position) -> String {
    match lanes.get(at.lane as usize) {
        Some(Lane::File(name)) => format!("{name}:{}", at.index),
        Some(Lane::Partition(partition)) => format!("{partition}@{}", at.index),
        None => format!("?{}:{}", at.lane, at.index),
    }
}

/// `text` with its control characters escaped: receipts and file names are printed to
/// terminals, and an inserted line may carry escape sequences.
pub fn printable(text: &str) -> Cow<'_, str> {
    if text.chars().any(char::is_control) {
        Cow::Owned(
            text.chars()
                .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
                .collect(),
        )
    } else {
        Cow::Borrowed(text)
    }
}

/// Reads every line or record of `source` once, into `verifier`, and hands each to `each` too
/// (the access report keeps the receipts it asks for). Stops at the first source that cannot be
/// read, or when the verifier or `each` holds as much as it may.
pub fn read(
    source: &Source,
    verifier: &mut Verifier,
    mut each: impl FnMut(Position, &Parsed<'_>) -> Result<(), SourceError>,
) -> Result<(), SourceError> {
    match source {
        Source::Files(paths) => {
            let mut seen = std::collections::HashSet::new();
            for path in paths {
                // The same file twice would be every receipt inserted twice.
                let canonical = std::fs::canonicalize(path)
                    .map_err(|source| SourceError::File { path: path.display().to_string(), source })?;
                if !seen.insert(canonical) {
                    return Err(SourceError::Stopped(format!("{} is given twice", path.display())));
                }
                let lane = verifier.open_lane(Lane::File(path.display().to_string()));
                source::read_file(path, |line, value| {
                    let at = Position { lane, index: i64::try_from(line).unwrap_or(i64::MAX) };
                    let parsed = record::parse(value);
                    verifier.add(at, &parsed)?;
                    each(at, &parsed)
                })?;
            }
        }
        Source::Topic(topic) => {
            verifier.describe_source(format!("topic {}", topic.topic));
            let mut lanes: HashMap<i32, u32> = HashMap::new();
            let read = source::read_topic(topic, |partition, offset, value| {
                let lane =
                    *lanes.entry(partition).or_insert_with(|| verifier.open_lane(Lane::Partition(partition)));
                let at = Position { lane, index: offset };
                let parsed = record::parse(value);
                verifier.add(at, &parsed)?;
                each(at, &parsed)
            })?;
            for (partition, first) in read.first_offsets.into_iter().filter(|(_, first)| *first > 0) {
                verifier.note(format!(
                    "partition {partition} begins at offset {first}: its earlier records were deleted (retention, or a \
                     request to delete them)"
                ));
            }
        }
    }
    Ok(())
}
