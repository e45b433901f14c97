//! Checking the chains: the [`Verifier`] takes every line or record as it is read, keeps of each
//! chained receipt only its place, stream, seq, hash and `prev` (about 100 bytes), checks the
//! order of each stream within each file and partition on the way, and checks the links once
//! everything is read ([`Verifier::finish`]).
//!
//! How a stream is checked: its receipts are sorted by seq. For each seq, one receipt is taken
//! as the stream's: the one a published head names, else the one that links to the receipt
//! before it and is linked to by the one after it, else the first read; every other receipt with
//! that seq is *inserted*. Then each gap in the seqs is *removed* receipts, and each broken link
//! (a receipt's hash that is not the next one's `prev`) names a *changed* receipt: the one before
//! the break, unless the receipt after it is also broken with its own successor (then that one
//! was replaced: its `prev` and its bytes both differ), or the one before is confirmed by a
//! published head (then the one after links to nothing: *inserted*). A seq lower than the one
//! before it in the same file or partition is *reordered*. A published head the stream does not
//! reach, or whose seq hashes otherwise, is *truncated*.
//!
//! A file is the whole of its streams (a keyhole writes every receipt it makes to it, from the
//! first), so a stream there that starts after seq 1 lost its beginning: *removed* (or, when it
//! is a single receipt, *inserted*: it links to nothing). A file has one writer at a time, so
//! receipts of another stream amid a stream's are *inserted*. On a topic, retention deletes the
//! oldest records: a stream that starts after seq 1 is a note, unless [`Options::from_start`]
//! says the topic keeps everything.

use super::findings::{Finding, HeadCheck, Kind, Missing, StreamSummary, Verification};
use super::head::PublishedHead;
use super::record::{Digest, GENESIS, Parsed, Unreadable, format_digest};
use super::source::SourceError;
use super::{Lane, Position};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

/// The most violations listed one by one; more are counted. A file rewritten wholesale would
/// otherwise list a violation per line.
pub const MAX_FINDINGS: usize = 10_000;

/// The torn lines of a file listed by number in the note about them.
const TORN_LISTED: usize = 10;

/// The most chained receipts held by default: about 100 bytes each, so 1 GB.
pub const DEFAULT_MAX_RECEIPTS: usize = 10_000_000;

/// How to verify.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The topic has kept every receipt since its first (no retention, nothing deleted): a
    /// stream that starts after seq 1 is a violation there too.
    pub from_start: bool,
    /// The most chained receipts held; reading stops with an error beyond.
    pub max_receipts: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { from_start: false, max_receipts: DEFAULT_MAX_RECEIPTS }
    }
}

/// What is kept of a chained receipt.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The stream's index in `Verifier::streams`.
    stream: u32,
    /// Set when the receipt was found to intrude on another stream in a file: it is reported
    /// as such, and left out of its own stream's checks.
    intruding: bool,
    seq: u64,
    at: Position,
    hash: Digest,
    prev: Digest,
}

/// A file's consecutive receipts of one stream.
#[derive(Clone, Debug)]
struct Run {
    stream: u32,
    /// Their indices in `Verifier::entries`.
    entries: Range<usize>,
}

/// A file or partition, as it is read.
#[derive(Debug)]
struct LaneState {
    lane: Lane,
    /// Whether a chained receipt was read in it yet.
    chained_seen: bool,
    /// Files: lines before the first chained one, and how many of them are unreadable.
    before_chain: u64,
    unreadable_before_chain: u64,
    /// Files: lines cut off by a crash while writing, after the first chained line (how many,
    /// and the first few).
    torn: u64,
    torn_at: Vec<i64>,
    /// The last seq (and where) of each stream in this lane.
    last: HashMap<u32, (u64, Position)>,
    /// Files: the runs of receipts of one stream.
    runs: Vec<Run>,
}

/// Takes every line or record read, then checks the chains.
#[derive(Debug)]
pub struct Verifier {
    options: Options,
    lanes: Vec<LaneState>,
    sources: Vec<String>,
    streams: Vec<String>,
    stream_ids: HashMap<String, u32>,
    entries: Vec<Entry>,
    read: u64,
    unchained: u64,
    findings: Vec<Finding>,
    by_kind: BTreeMap<Kind, u64>,
    by_stream: HashMap<u32, u64>,
    notes: Vec<String>,
}

impl Verifier {
    /// A verifier with nothing read.
    pub fn new(options: Options) -> Self {
        Verifier {
            options,
            lanes: Vec::new(),
            sources: Vec::new(),
            streams: Vec::new(),
            stream_ids: HashMap::new(),
            entries: Vec::new(),
            read: 0,
            unchained: 0,
            findings: Vec::new(),
            by_kind: Kind::ALL.iter().map(|k| (*k, 0)).collect(),
            by_stream: HashMap::new(),
            notes: Vec::new(),
        }
    }

    /// Starts a lane; its index, for the positions in it. A file is a source of its own.
    pub fn open_lane(&mut self, lane: Lane) -> u32 {
        if let Lane::File(name) = &lane {
            self.sources.push(name.clone());
        }
        self.lanes.push(LaneState {
            lane,
            chained_seen: false,
            before_chain: 0,
            unreadable_before_chain: 0,
            torn: 0,
            torn_at: Vec::new(),
            last: HashMap::new(),
            runs: Vec::new(),
        });
        u32::try_from(self.lanes.len() - 1).unwrap_or(u32::MAX)
    }

    /// Names a source that is not a file (a topic).
    pub fn describe_source(&mut self, source: String) {
        self.sources.push(source);
    }

    /// Adds a note: something worth knowing that is no violation.
    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// `file:line` or `partition@offset`.
    pub fn describe(&self, at: Position) -> String {
        match self.lanes.get(at.lane as usize) {
            Some(lane) => super::describe(std::slice::from_ref(&lane.lane), Position { lane: 0, ..at }),
            None => super::describe(&[], at),
        }
    }

    fn is_file(&self, at: Position) -> bool {
        self.lanes.get(at.lane as usize).is_some_and(|l| l.lane.is_file())
    }

    /// Takes one line or record, read at `at` in the lane `at.lane`, in the lane's order.
    pub fn add(&mut self, at: Position, parsed: &Parsed<'_>) -> Result<(), SourceError> {
        self.read += 1;
        let Some(lane) = self.lanes.get_mut(at.lane as usize) else {
            return Err(SourceError::Stopped(format!("no lane {}", at.lane)));
        };
        let is_file = lane.lane.is_file();
        match parsed {
            Parsed::Chained { link, .. } => {
                if self.entries.len() >= self.options.max_receipts {
                    return Err(SourceError::Stopped(format!(
                        "more than {} chained receipts: verify fewer at a time, or raise --max-receipts (about \
                         100 bytes of memory each)",
                        self.options.max_receipts
                    )));
                }
                let stream = match self.stream_ids.get(link.stream.as_ref()) {
                    Some(id) => *id,
                    None => {
                        let id = u32::try_from(self.streams.len()).unwrap_or(u32::MAX);
                        self.streams.push(link.stream.to_string());
                        self.stream_ids.insert(link.stream.to_string(), id);
                        id
                    }
                };
                let lane = &mut self.lanes[at.lane as usize];
                lane.chained_seen = true;
                let before = lane.last.insert(stream, (link.seq, at));
                let index = self.entries.len();
                if is_file {
                    match lane.runs.last_mut() {
                        Some(run) if run.stream == stream => run.entries.end = index + 1,
                        _ => lane.runs.push(Run { stream, entries: index..index + 1 }),
                    }
                }
                self.entries.push(Entry {
                    stream,
                    intruding: false,
                    seq: link.seq,
                    at,
                    hash: link.hash,
                    prev: link.prev,
                });
                if let Some((before_seq, before_at)) = before.filter(|(seq, _)| *seq > link.seq) {
                    let detail = format!(
                        "seq {} comes after seq {before_seq} ({}) of the same stream in this {}: moved",
                        link.seq,
                        self.describe(before_at),
                        if is_file { "file" } else { "partition" }
                    );
                    self.find(Kind::Reordered, Some(at), Some(stream), Some(link.seq), None, detail);
                }
            }
            Parsed::Unchained { .. } if is_file && !lane.chained_seen => lane.before_chain += 1,
            Parsed::Unreadable(_) if is_file && !lane.chained_seen => {
                lane.before_chain += 1;
                lane.unreadable_before_chain += 1;
            }
            Parsed::Unreadable(Unreadable::CutOff { .. }) if is_file => {
                // What a crash in the middle of a write leaves; the writer ends the line when
                // it opens the file again and continues the chain across it. Not a receipt,
                // and it hides none: a receipt missing around it is a gap in the seqs.
                lane.torn += 1;
                if lane.torn_at.len() < TORN_LISTED {
                    lane.torn_at.push(at.index);
                }
            }
            Parsed::Unchained { .. } if !is_file => self.unchained += 1,
            Parsed::Unchained { .. } => {
                let detail =
                    "a receipt without stream, seq and prev among chained ones: inserted (or written by an \
                              older keyhole after a downgrade)"
                        .to_string();
                self.find(Kind::Inserted, Some(at), None, None, None, detail);
            }
            Parsed::Unreadable(why) => {
                let detail = if is_file {
                    format!("unreadable ({why}): torn by a crash while writing, or inserted")
                } else {
                    format!("unreadable ({why}): not a record keyhole wrote, inserted")
                };
                self.find(Kind::Inserted, Some(at), None, None, None, detail);
            }
        }
        Ok(())
    }

    fn find(
        &mut self,
        kind: Kind,
        at: Option<Position>,
        stream: Option<u32>,
        seq: Option<u64>,
        missing: Option<Missing>,
        detail: String,
    ) {
        *self.by_kind.entry(kind).or_default() += 1;
        if let Some(stream) = stream {
            *self.by_stream.entry(stream).or_default() += 1;
        }
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(Finding {
                kind,
                at: at.map(|at| self.describe(at)),
                stream: stream.and_then(|s| self.streams.get(s as usize).cloned()),
                seq,
                missing,
                detail,
                position: at,
            });
        }
    }

    /// Checks every stream against itself and the published `heads`.
    pub fn finish(mut self, heads: &[PublishedHead]) -> Verification {
        self.find_intruders();
        for lane in &self.lanes {
            if lane.before_chain > 0 {
                let Lane::File(name) = &lane.lane else { continue };
                let unreadable = match lane.unreadable_before_chain {
                    0 => String::new(),
                    n => format!(", {n} of them unreadable"),
                };
                let what =
                    if lane.chained_seen { "before its first chained line" } else { "and none chained" };
                self.notes.push(format!(
                    "{name}: {} line(s) {what}{unreadable}: written by a keyhole before receipts were chained; counted, \
                     not verifiable",
                    lane.before_chain
                ));
            }
        }
        for lane in &self.lanes {
            if lane.torn > 0 {
                let Lane::File(name) = &lane.lane else { continue };
                let lines: Vec<String> = lane.torn_at.iter().map(i64::to_string).collect();
                let more = if lane.torn > lane.torn_at.len() as u64 { ", ..." } else { "" };
                self.notes.push(format!(
                    "{name}: {} torn line(s) (line {}{more}): unreadable, JSON cut off — torn by a crash while \
                     writing, or inserted; keyhole continues the chain across a torn line, so none hides a receipt \
                     (a receipt missing there shows as removed)",
                    lane.torn,
                    lines.join(", ")
                ));
            }
        }
        let unchained_before: u64 = self.lanes.iter().map(|l| l.before_chain).sum();
        self.unchained += unchained_before;
        if self.unchained > unchained_before {
            self.notes.push(format!(
                "{} record(s) without a link (written by replicas of a keyhole before receipts were chained): \
                 counted, not verifiable",
                self.unchained - unchained_before
            ));
        }

        let mut entries = std::mem::take(&mut self.entries);
        entries.sort_unstable_by_key(|e| (e.stream, e.seq, e.at));
        let mut heads_by_stream: HashMap<u32, Vec<&PublishedHead>> = HashMap::new();
        for head in heads {
            match self.stream_ids.get(&head.stream) {
                Some(id) => heads_by_stream.entry(*id).or_default().push(head),
                None => {
                    let detail = format!(
                        "the published head {head} names a stream that is in none of the sources: all its receipts \
                         were removed (or they are in sources not given)"
                    );
                    self.find(
                        Kind::Truncated,
                        None,
                        None,
                        Some(head.seq),
                        Some(Missing { first: 1, last: head.seq }),
                        detail,
                    );
                }
            }
        }
        let mut summaries = Vec::new();
        let mut start = 0;
        while start < entries.len() {
            let stream = entries[start].stream;
            let end = start + entries[start..].iter().take_while(|e| e.stream == stream).count();
            let own: Vec<Entry> = entries[start..end].iter().filter(|e| !e.intruding).copied().collect();
            let stream_heads = heads_by_stream.remove(&stream).unwrap_or_default();
            if let Some(summary) = self.check_stream(stream, &own, &stream_heads) {
                summaries.push(summary);
            }
            start = end;
        }
        // Violations counted per stream after every check.
        for summary in &mut summaries {
            if let Some(id) = self.stream_ids.get(&summary.stream) {
                summary.violations = self.by_stream.get(id).copied().unwrap_or(0);
            }
        }
        let violations: u64 = self.by_kind.values().sum();
        let mut findings = std::mem::take(&mut self.findings);
        findings.sort_by_key(|f| (f.position.is_none(), f.position, f.kind));
        let mut flagged: HashMap<Position, Vec<Kind>> = HashMap::new();
        for finding in &findings {
            if let Some(at) = finding.position {
                flagged.entry(at).or_default().push(finding.kind);
            }
        }
        Verification {
            verified: violations == 0,
            sources: self.sources,
            read: self.read,
            chained: entries.len() as u64,
            unchained: self.unchained,
            violations,
            by_kind: self.by_kind,
            findings_not_shown: violations.saturating_sub(findings.len() as u64),
            findings,
            notes: self.notes,
            streams: summaries,
            flagged,
            lanes: self.lanes.into_iter().map(|l| l.lane).collect(),
        }
    }

    /// In each file, the receipts of a stream that sit between receipts of another stream: a
    /// file has one writer at a time, whose stream never resumes after another began.
    fn find_intruders(&mut self) {
        let mut intruding_runs: Vec<Run> = Vec::new();
        for lane in &self.lanes {
            let runs = &lane.runs;
            if runs.len() < 3 {
                continue;
            }
            // Each stream's first and last run; run j intrudes when another stream has runs on
            // both sides of it.
            let mut span: HashMap<u32, (usize, usize)> = HashMap::new();
            for (j, run) in runs.iter().enumerate() {
                span.entry(run.stream).and_modify(|s| s.1 = j).or_insert((j, j));
            }
            // open[j]: how many streams have runs both before and after j.
            let mut delta = vec![0i64; runs.len() + 1];
            for (first, last) in span.values() {
                if last > first {
                    delta[first + 1] += 1;
                    delta[*last] -= 1;
                }
            }
            let mut open = 0i64;
            for (j, run) in runs.iter().enumerate() {
                open += delta[j];
                let (first, last) = span[&run.stream];
                let itself = i64::from(first < j && j < last);
                if open - itself > 0 {
                    intruding_runs.push(run.clone());
                }
            }
        }
        for run in intruding_runs {
            for entry in &mut self.entries[run.entries.clone()] {
                entry.intruding = true;
            }
            let (first, last) = (self.entries[run.entries.start], self.entries[run.entries.end - 1]);
            let count = run.entries.len();
            let lines = if count == 1 {
                "its receipt".to_string()
            } else {
                format!("its {count} receipts, to {}", self.describe(last.at))
            };
            let detail = format!(
                "stream {} ({lines}) amid the receipts of another stream that resumes after it: a file has one \
                 writer at a time; inserted (or two keyhole processes wrote this file)",
                self.streams.get(run.stream as usize).map(String::as_str).unwrap_or("?")
            );
            self.find(Kind::Inserted, Some(first.at), Some(run.stream), Some(first.seq), None, detail);
        }
    }

    /// Checks one stream's receipts (sorted by seq, then place); its summary.
    fn check_stream(
        &mut self,
        stream: u32,
        own: &[Entry],
        heads: &[&PublishedHead],
    ) -> Option<StreamSummary> {
        // Group by seq.
        let mut groups: Vec<Range<usize>> = Vec::new();
        for (i, entry) in own.iter().enumerate() {
            match groups.last_mut() {
                Some(group) if own[group.start].seq == entry.seq => group.end = i + 1,
                _ => groups.push(i..i + 1),
            }
        }
        // The stream's receipt for each seq.
        let mut chosen: Vec<Entry> = Vec::with_capacity(groups.len());
        for (g, group) in groups.iter().enumerate() {
            let seq = own[group.start].seq;
            let expected = if seq == 1 {
                Some(GENESIS)
            } else {
                chosen.last().filter(|c| c.seq + 1 == seq).map(|c| c.hash)
            };
            let next: &[Entry] = match groups.get(g + 1) {
                Some(next) if own[next.start].seq == seq + 1 => &own[next.clone()],
                _ => &[],
            };
            let score = |e: &Entry| {
                2 * u8::from(heads.iter().any(|h| h.seq == seq && h.hash == e.hash))
                    + u8::from(expected == Some(e.prev))
                    + u8::from(next.iter().any(|n| n.prev == e.hash))
            };
            // The highest score; among equals, the first read.
            let mut best = group.start;
            for i in group.clone() {
                if score(&own[i]) > score(&own[best]) {
                    best = i;
                }
            }
            let taken = own[best];
            chosen.push(taken);
            for other in group.clone().filter(|i| *i != best).map(|i| own[i]) {
                let detail = if other.hash == taken.hash {
                    format!("seq {seq} again, a copy of the receipt at {}: inserted", self.describe(taken.at))
                } else {
                    format!(
                        "seq {seq} again, which the receipt at {} already has (and links in the chain): inserted",
                        self.describe(taken.at)
                    )
                };
                self.find(Kind::Inserted, Some(other.at), Some(stream), Some(seq), None, detail);
            }
        }
        let (first, last) = (*chosen.first()?, *chosen.last()?);
        let confirmed = |e: &Entry| heads.iter().any(|h| h.seq == e.seq && h.hash == e.hash);

        // The beginning.
        let mut beginning_gone = false;
        if first.seq > 1 {
            let missing = Missing { first: 1, last: first.seq - 1 };
            let where_ = self.describe(first.at);
            if !self.is_file(first.at) && !self.options.from_start {
                beginning_gone = true;
                self.notes.push(format!(
                    "stream {} begins at seq {} ({where_}): its first {} receipt(s) are no longer on the topic \
                     (retention or deletion; with --from-start this is a violation)",
                    self.streams[stream as usize],
                    first.seq,
                    first.seq - 1
                ));
            } else if chosen.len() == 1 && own.len() == 1 {
                let detail = format!(
                    "the only receipt of its stream, with seq {}: it links to nothing in the sources (inserted), or \
                     the receipts before it were removed",
                    first.seq
                );
                self.find(
                    Kind::Inserted,
                    Some(first.at),
                    Some(stream),
                    Some(first.seq),
                    Some(missing),
                    detail,
                );
            } else {
                let detail = format!(
                    "{missing} missing: the stream's first receipt in the sources ({where_}) has seq {}",
                    first.seq
                );
                self.find(
                    Kind::Removed,
                    Some(first.at),
                    Some(stream),
                    Some(first.seq),
                    Some(missing),
                    detail,
                );
            }
        }

        // Gaps and links. broken[k]: the link into chosen[k] is broken (k = 0: from the genesis).
        let mut broken = vec![false; chosen.len()];
        broken[0] = first.seq == 1 && first.prev != GENESIS;
        for k in 1..chosen.len() {
            let (a, b) = (chosen[k - 1], chosen[k]);
            if b.seq > a.seq + 1 {
                let missing = Missing { first: a.seq + 1, last: b.seq - 1 };
                let detail = format!(
                    "{} missing, between {} (seq {}) and {} (seq {})",
                    missing,
                    self.describe(a.at),
                    a.seq,
                    self.describe(b.at),
                    b.seq
                );
                self.find(Kind::Removed, Some(b.at), Some(stream), Some(b.seq), Some(missing), detail);
            } else {
                broken[k] = b.prev != a.hash;
            }
        }
        let mut k = 0;
        while k < chosen.len() {
            if !broken[k] {
                k += 1;
                continue;
            }
            let b = chosen[k];
            if broken.get(k + 1).copied().unwrap_or(false) {
                let detail = format!(
                    "neither its prev is the hash of the receipt before it nor its hash the prev of the one after it \
                     ({}): replaced, or edited along with its link",
                    self.describe(chosen[k + 1].at)
                );
                self.find(Kind::Changed, Some(b.at), Some(stream), Some(b.seq), None, detail);
                k += 2;
                continue;
            }
            if k == 0 {
                let detail =
                    "seq 1 whose prev is not the genesis: it links to nothing (inserted, or its prev edited)";
                self.find(Kind::Inserted, Some(b.at), Some(stream), Some(b.seq), None, detail.to_string());
            } else if confirmed(&chosen[k - 1]) {
                let a = chosen[k - 1];
                let detail = format!(
                    "its prev is not the hash of seq {} ({}), which a published head confirms: it links to nothing \
                     (inserted, or its prev edited)",
                    a.seq,
                    self.describe(a.at)
                );
                self.find(Kind::Inserted, Some(b.at), Some(stream), Some(b.seq), None, detail);
            } else {
                let a = chosen[k - 1];
                let detail = format!(
                    "its hash is not the prev of the next receipt ({}, seq {}): it was edited (or the next one's prev \
                     was)",
                    self.describe(b.at),
                    b.seq
                );
                self.find(Kind::Changed, Some(a.at), Some(stream), Some(a.seq), None, detail);
            }
            k += 1;
        }

        // Published heads.
        let mut checks = Vec::new();
        for head in heads {
            let result = if head.seq > last.seq {
                let missing = Missing { first: last.seq + 1, last: head.seq };
                let detail = format!(
                    "the published head is at seq {}, but the stream ends at seq {} ({}): {missing} cut off",
                    head.seq,
                    last.seq,
                    self.describe(last.at),
                );
                self.find(
                    Kind::Truncated,
                    Some(last.at),
                    Some(stream),
                    Some(head.seq),
                    Some(missing),
                    detail,
                );
                "beyond-end"
            } else if let Some(at) = chosen.iter().find(|c| c.seq == head.seq) {
                if at.hash == head.hash {
                    "matches"
                } else {
                    let detail = format!(
                        "the receipt with seq {} hashes to {}, not to the published head's {}: the stream was cut off \
                         at or before it and written again (or it was edited)",
                        head.seq,
                        format_digest(&at.hash),
                        format_digest(&head.hash)
                    );
                    self.find(Kind::Truncated, Some(at.at), Some(stream), Some(head.seq), None, detail);
                    "differs"
                }
            } else {
                "not-checked"
            };
            checks.push(HeadCheck { head: head.to_string(), result });
        }
        Some(StreamSummary {
            stream: self.streams[stream as usize].clone(),
            first_seq: first.seq,
            last_seq: last.seq,
            receipts: own.len() as u64,
            first: self.describe(first.at),
            last: self.describe(last.at),
            head: PublishedHead {
                stream: self.streams[stream as usize].clone(),
                seq: last.seq,
                hash: last.hash,
            }
            .to_string(),
            beginning_gone,
            violations: 0,
            heads: checks,
        })
    }
}
