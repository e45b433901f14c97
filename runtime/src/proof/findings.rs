//! What a verification found, for people (`Display`) and machines (`Serialize`): the
//! violations, each at the line or record it names, the notes that are not violations, and a
//! summary of every stream with the head to publish.

use super::{Lane, Position, printable};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// The kinds of violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A receipt whose hash is not the next receipt's `prev`.
    Changed,
    /// Seqs missing from a stream.
    Removed,
    /// A receipt that is not part of its stream: a second one with a seq already taken, one that
    /// links to nothing, a line that is unreadable or unchained among chained ones.
    Inserted,
    /// A stream's seq going backwards in a file or within a partition.
    Reordered,
    /// A published head that the stream does not reach, or whose receipt hashes otherwise.
    Truncated,
}

impl Kind {
    /// Every kind, in the order the report counts them.
    pub const ALL: [Kind; 5] =
        [Kind::Changed, Kind::Removed, Kind::Inserted, Kind::Reordered, Kind::Truncated];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Changed => "changed",
            Kind::Removed => "removed",
            Kind::Inserted => "inserted",
            Kind::Reordered => "reordered",
            Kind::Truncated => "truncated",
        }
    }
}

/// One violation.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// Which kind.
    pub kind: Kind,
    /// The line (`file:line`) or record (`partition@offset`) it names; none for a head whose
    /// stream is nowhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// The stream, when the line or record has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The seq of the receipt it names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// For `removed` (and `truncated` past a stream's end): the first and last seq missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<Missing>,
    /// What was found, and what it may mean.
    pub detail: String,
    /// Where, for ordering and for the access report.
    #[serde(skip)]
    pub position: Option<Position>,
}

/// A range of missing seqs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Missing {
    /// The first missing.
    pub first: u64,
    /// The last missing.
    pub last: u64,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "seq {}", self.first)
        } else {
            write!(f, "seqs {}..{}", self.first, self.last)
        }
    }
}

/// What became of a published head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeadCheck {
    /// The head, as given.
    pub head: String,
    /// `matches`, `differs` (a violation), `beyond-end` (a violation), or `not-checked` (its
    /// seq is not in the sources: removed, or before what a topic still holds).
    pub result: &'static str,
}

/// One stream, as read.
#[derive(Clone, Debug, Serialize)]
pub struct StreamSummary {
    /// Its id.
    pub stream: String,
    /// The lowest seq read.
    pub first_seq: u64,
    /// The highest seq read.
    pub last_seq: u64,
    /// Its receipts read (a seq read twice counts twice).
    pub receipts: u64,
    /// Where its lowest seq is.
    pub first: String,
    /// Where its highest seq is.
    pub last: String,
    /// Its head as read (`STREAM:SEQ:sha256:HEX` of its highest seq): publish it, and give it to
    /// the next verification with `--head`.
    pub head: String,
    /// On a topic, without `--from-start`: the stream begins after seq 1, its beginning gone
    /// from the topic (a note, not a violation).
    pub beginning_gone: bool,
    /// Violations naming this stream.
    pub violations: u64,
    /// The published heads given for it.
    pub heads: Vec<HeadCheck>,
}

/// The outcome of a verification.
#[derive(Clone, Debug, Serialize)]
pub struct Verification {
    /// No violation.
    pub verified: bool,
    /// What was read: the files, or the topic.
    pub sources: Vec<String>,
    /// Lines or records read.
    pub read: u64,
    /// Chained receipts among them.
    pub chained: u64,
    /// Receipts without a link that are not violations: in a file, the lines before its first
    /// chained line (written by a keyhole before receipts were chained); on a topic, every one
    /// (written by replicas of an older keyhole). Not verifiable.
    pub unchained: u64,
    /// Violations in all.
    pub violations: u64,
    /// Violations by kind (every kind, 0 included).
    pub by_kind: BTreeMap<Kind, u64>,
    /// The violations, in the order of the sources (at most [`super::verify::MAX_FINDINGS`]).
    pub findings: Vec<Finding>,
    /// Violations beyond those listed.
    pub findings_not_shown: u64,
    /// What is worth knowing and is no violation.
    pub notes: Vec<String>,
    /// Every stream read.
    pub streams: Vec<StreamSummary>,
    /// The kinds of violation listed at each position.
    #[serde(skip)]
    pub flagged: HashMap<Position, Vec<Kind>>,
    /// The files and partitions read, by their index in a [`Position`].
    #[serde(skip)]
    pub lanes: Vec<Lane>,
}

impl Verification {
    /// The kinds of violation that name the line or record at `at` (only among those listed).
    pub fn flagged_at(&self, at: Position) -> &[Kind] {
        self.flagged.get(&at).map(Vec::as_slice).unwrap_or_default()
    }

    /// `file:line` or `partition@offset`.
    pub fn describe(&self, at: Position) -> String {
        super::describe(&self.lanes, at)
    }

    /// The stream's summary.
    pub fn stream(&self, id: &str) -> Option<&StreamSummary> {
        self.streams.iter().find(|s| s.stream == id)
    }

    /// `1 changed, 2 removed`: the kinds found, with their counts.
    pub fn counts(&self) -> String {
        let found: Vec<String> = self
            .by_kind
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(kind, count)| format!("{count} {}", kind.name()))
            .collect();
        found.join(", ")
    }

    /// The violations and what follows them in the report, for the access report too.
    pub fn write_findings(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.findings.is_empty() {
            writeln!(f, "\nviolations:")?;
            for finding in &self.findings {
                let at = finding.at.as_deref().unwrap_or("-");
                writeln!(
                    f,
                    "  {:<10} {:<24} {}",
                    finding.kind.name(),
                    printable(at),
                    printable(&finding.detail)
                )?;
            }
            if self.findings_not_shown > 0 {
                writeln!(f, "  ... and {} more", self.findings_not_shown)?;
            }
        }
        Ok(())
    }
}

fn plural(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sources: Vec<String> = self.sources.iter().map(|s| printable(s).into_owned()).collect();
        let (one, many) = match self.lanes.first() {
            Some(Lane::Partition(_)) => ("record", "records"),
            _ => ("line", "lines"),
        };
        writeln!(
            f,
            "read:   {} ({} chained, {} unchained) in {}, from {}",
            plural(self.read, one, many),
            self.chained,
            self.unchained,
            plural(self.streams.len() as u64, "stream", "streams"),
            sources.join(", ")
        )?;
        let checks: Vec<&HeadCheck> = self.streams.iter().flat_map(|s| &s.heads).collect();
        if checks.is_empty() && self.by_kind.get(&Kind::Truncated).is_none_or(|n| *n == 0) {
            writeln!(f, "heads:  none given; a stream's last receipts can be cut off unseen without one")?;
        } else {
            let mut results: BTreeMap<&str, u64> = BTreeMap::new();
            for check in checks {
                *results.entry(check.result).or_default() += 1;
            }
            let results: Vec<String> = results.iter().map(|(result, n)| format!("{n} {result}")).collect();
            writeln!(
                f,
                "heads:  {}",
                if results.is_empty() { "none of a stream read".into() } else { results.join(", ") }
            )?;
        }
        if self.verified {
            writeln!(f, "result: verified, no violation")?;
        } else {
            writeln!(
                f,
                "result: NOT VERIFIED, {} ({})",
                plural(self.violations, "violation", "violations"),
                self.counts()
            )?;
        }
        self.write_findings(f)?;
        if !self.notes.is_empty() {
            writeln!(f, "\nnotes:")?;
            for note in &self.notes {
                writeln!(f, "  {}", printable(note))?;
            }
        }
        if !self.streams.is_empty() {
            writeln!(f, "\nstreams:")?;
        }
        for stream in &self.streams {
            let violations = match stream.violations {
                0 => "intact".to_string(),
                n => plural(n, "violation", "violations"),
            };
            let gone = if stream.beginning_gone { ", its beginning gone from the topic" } else { "" };
            writeln!(
                f,
                "  {}  seq {}..{}, {}, {} .. {}: {violations}{gone}",
                printable(&stream.stream),
                stream.first_seq,
                stream.last_seq,
                plural(stream.receipts, "receipt", "receipts"),
                printable(&stream.first),
                printable(&stream.last),
            )?;
            writeln!(f, "    head {}", printable(&stream.head))?;
            for check in &stream.heads {
                writeln!(f, "    --head {}: {}", printable(&check.head), check.result)?;
            }
        }
        Ok(())
    }
}
