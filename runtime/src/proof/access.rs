//! A person's access report (GDPR Art. 15): every receipt about them, in time order — who asked
//! (tenant, handler and its version), when, for what purpose, what the data owner decided, from
//! which data source — with the verification of the receipts it is drawn from.
//!
//! A receipt is about the person when its `subject` is one of theirs, or, for an event without a
//! subject, when its `dataref` is one of their records' paths. The report holds and prints only
//! receipt fields: receipts hold no personal data but these two, by design.

use super::findings::{Kind, Verification};
use super::record::{Fields, Parsed};
use super::source::SourceError;
use super::{Position, printable};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt;
use std::time::SystemTime;

/// The most receipts one report holds.
pub const MAX_REPORT_RECEIPTS: usize = 1_000_000;

/// Whose receipts the report is about.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Query {
    /// The person's subjects, as the data owner names them in events.
    pub subjects: Vec<String>,
    /// Their records' paths, for events without a subject.
    pub datarefs: Vec<String>,
}

impl Query {
    /// Whether the receipt is about the person.
    pub fn matches(&self, fields: &Fields<'_>) -> bool {
        match &fields.subject {
            Some(subject) => self.subjects.iter().any(|s| s == subject),
            None => fields.dataref.as_ref().is_some_and(|dataref| self.datarefs.iter().any(|d| d == dataref)),
        }
    }
}

/// A receipt kept for the report.
#[derive(Clone, Debug)]
struct Held {
    at: Position,
    fields: Fields<'static>,
    chained: bool,
}

/// Keeps the receipts a [`Query`] asks for, as the sources are read.
#[derive(Debug)]
pub struct Collector {
    query: Query,
    held: Vec<Held>,
    max: usize,
}

impl Collector {
    /// Keeps at most `max` receipts.
    pub fn new(query: Query, max: usize) -> Self {
        Collector { query, held: Vec::new(), max }
    }

    /// Takes one line or record; keeps it if it is a receipt about the person.
    pub fn add(&mut self, at: Position, parsed: &Parsed<'_>) -> Result<(), SourceError> {
        let (fields, chained) = match parsed {
            Parsed::Chained { fields, .. } => (fields, true),
            Parsed::Unchained { fields } => (fields, false),
            Parsed::Unreadable(_) => return Ok(()),
        };
        if !self.query.matches(fields) {
            return Ok(());
        }
        if self.held.len() >= self.max {
            return Err(SourceError::Stopped(format!("more than {} receipts about this person", self.max)));
        }
        self.held.push(Held { at, fields: fields.clone().into_owned(), chained });
        Ok(())
    }

    /// The report, in time order, with the verification of everything read.
    pub fn finish(self, verification: Verification) -> AccessReport {
        let mut held = self.held;
        let time = |h: &Held| h.fields.time.as_deref().and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        // Receipts without a readable time last; ties in the order read.
        held.sort_by_cached_key(|h| (time(h).is_none(), time(h).unwrap_or(SystemTime::UNIX_EPOCH), h.at));
        let receipts: Vec<Receipt> = held
            .into_iter()
            .map(|h| {
                let violations = verification.flagged_at(h.at).to_vec();
                let stream = h.fields.stream.as_deref().filter(|_| h.chained).map(str::to_string);
                let stream_intact =
                    stream.as_deref().and_then(|s| verification.stream(s)).is_some_and(|s| s.violations == 0);
                let check = if !h.chained {
                    "unchained"
                } else if !violations.is_empty() {
                    "violation"
                } else if stream_intact {
                    "verified"
                } else {
                    "stream-not-verified"
                };
                Receipt {
                    at: verification.describe(h.at),
                    stream,
                    seq: h.fields.seq.filter(|_| h.chained),
                    check,
                    violations,
                    receipt: h.fields,
                }
            })
            .collect();
        let drawn_from: BTreeSet<&str> = receipts.iter().filter_map(|r| r.stream.as_deref()).collect();
        let streams = drawn_from
            .into_iter()
            .filter_map(|id| verification.stream(id))
            .map(|s| StreamStatus {
                stream: s.stream.clone(),
                intact: s.violations == 0,
                head: s.head.clone(),
                checked_against_a_head: s.heads.iter().any(|h| h.result == "matches"),
            })
            .collect();
        AccessReport { query: self.query, verified: verification.verified, receipts, streams, verification }
    }
}

/// One receipt in the report.
#[derive(Clone, Debug, Serialize)]
pub struct Receipt {
    /// The receipt's fields, as written (without its link).
    pub receipt: Fields<'static>,
    /// Where it was read.
    pub at: String,
    /// Its stream, when chained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Its seq, when chained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// `verified` (chained, in a stream without violation), `unchained` (written before
    /// receipts were chained: not verifiable), `violation` (a violation names it), or
    /// `stream-not-verified` (its stream has violations elsewhere).
    pub check: &'static str,
    /// The violations that name it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Kind>,
}

/// A stream the report draws from.
#[derive(Clone, Debug, Serialize)]
pub struct StreamStatus {
    /// Its id.
    pub stream: String,
    /// No violation names it.
    pub intact: bool,
    /// Its head as read.
    pub head: String,
    /// A `--head` given for it matches.
    pub checked_against_a_head: bool,
}

/// A person's access report.
#[derive(Clone, Debug, Serialize)]
pub struct AccessReport {
    /// Whose receipts.
    pub query: Query,
    /// Every source verified without a violation.
    pub verified: bool,
    /// The receipts about the person, in time order.
    pub receipts: Vec<Receipt>,
    /// The streams those receipts are in.
    pub streams: Vec<StreamStatus>,
    /// The verification of everything read.
    pub verification: Verification,
}

/// A column of the table: its heading and how a receipt fills it.
type Column = (&'static str, fn(&Receipt) -> String);

fn text(value: &Option<std::borrow::Cow<'static, str>>) -> String {
    value.as_deref().map(|v| printable(v).into_owned()).unwrap_or_else(|| "-".into())
}

const COLUMNS: [Column; 10] = [
    ("time", |r| text(&r.receipt.time)),
    ("tenant", |r| text(&r.receipt.tenant)),
    ("handler", |r| text(&r.receipt.handler)),
    ("version", |r| {
        // The digest's first 12 hex digits identify the version to a reader; --json has it whole.
        let version = text(&r.receipt.handler_version);
        match version.char_indices().nth("sha256:".len() + 12) {
            Some((cut, _)) => format!("{}…", &version[..cut]),
            None => version,
        }
    }),
    ("purpose", |r| text(&r.receipt.purpose)),
    ("data source", |r| text(&r.receipt.data_source)),
    ("decision", |r| match r.receipt.status {
        Some(status) => format!("{} ({status})", text(&r.receipt.decision)),
        None => text(&r.receipt.decision),
    }),
    ("attempt", |r| r.receipt.attempt.map(|a| a.to_string()).unwrap_or_else(|| "-".into())),
    ("dataref", |r| text(&r.receipt.dataref)),
    ("receipt", |r| format!("{} {}", printable(&r.at), r.check)),
];

impl fmt::Display for AccessReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut whose = Vec::new();
        if !self.query.subjects.is_empty() {
            whose.push(format!("subject {}", printable(&self.query.subjects.join(", "))));
        }
        if !self.query.datarefs.is_empty() {
            whose.push(format!(
                "dataref {} (receipts without a subject)",
                printable(&self.query.datarefs.join(", "))
            ));
        }
        writeln!(f, "access report: {}", whose.join("; "))?;
        let sources: Vec<String> =
            self.verification.sources.iter().map(|s| printable(s).into_owned()).collect();
        writeln!(f, "read: {}", sources.join(", "))?;
        match (self.receipts.first(), self.receipts.last()) {
            (Some(first), Some(last)) => writeln!(
                f,
                "{} receipt(s), {} to {}\n",
                self.receipts.len(),
                text(&first.receipt.time),
                text(&last.receipt.time)
            )?,
            _ => writeln!(f, "no receipt\n")?,
        }
        if !self.receipts.is_empty() {
            let cells: Vec<Vec<String>> =
                self.receipts.iter().map(|r| COLUMNS.iter().map(|(_, cell)| cell(r)).collect()).collect();
            let widths: Vec<usize> = COLUMNS
                .iter()
                .enumerate()
                .map(|(i, (heading, _))| {
                    cells.iter().map(|row| row[i].chars().count()).chain([heading.len()]).max().unwrap_or(0)
                })
                .collect();
            let line = |values: Vec<&str>| {
                let padded: Vec<String> =
                    values.iter().zip(&widths).map(|(value, width)| format!("{value:<width$}")).collect();
                padded.join("  ").trim_end().to_string()
            };
            writeln!(f, "{}", line(COLUMNS.iter().map(|(heading, _)| *heading).collect()))?;
            for row in &cells {
                writeln!(f, "{}", line(row.iter().map(String::as_str).collect()))?;
            }
            writeln!(f)?;
        }
        let verification = &self.verification;
        let unchained = self.receipts.iter().filter(|r| r.check == "unchained").count();
        if verification.verified {
            let with_head = self.streams.iter().filter(|s| s.checked_against_a_head).count();
            writeln!(
                f,
                "verification: every chain read is intact ({} stream(s), {} chained receipt(s)); this report draws \
                 from {} stream(s), {with_head} of them checked against a published head",
                verification.streams.len(),
                verification.chained,
                self.streams.len(),
            )?;
        } else {
            let broken: Vec<String> = self
                .streams
                .iter()
                .filter(|s| !s.intact)
                .map(|s| printable(&s.stream).into_owned())
                .collect();
            writeln!(
                f,
                "verification: NOT VERIFIED, {} violation(s) ({}); streams of this report with violations: {}. A \
                 receipt changed or removed in any stream may have been about this person.",
                verification.violations,
                verification.counts(),
                if broken.is_empty() { "none".to_string() } else { broken.join(", ") },
            )?;
            verification.write_findings(f)?;
        }
        if unchained > 0 {
            writeln!(
                f,
                "{unchained} receipt(s) of this report were written before receipts were chained: not verifiable"
            )?;
        }
        Ok(())
    }
}
