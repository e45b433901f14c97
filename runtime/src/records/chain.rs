//! The hash chain that makes access receipts tamper-evident.
//!
//! Every receipt carries three fields besides its own: `stream` (which chain it belongs to),
//! `seq` (its place in that chain, from 1) and `prev` (`sha256:<hex>` of the previous receipt of
//! the same stream, exactly the bytes written: the file's line without its newline, or the Kafka
//! record's value; [`GENESIS`] for seq 1). A receipt edited, removed, inserted or moved breaks a
//! link or the order of `seq`, which `keyhole receipts verify` reports. A chain's *head* (its last
//! `seq` and that receipt's hash) is published outside it, in keyhole's log and metrics, so that
//! cutting off the tail is detected too: without a published head, the last receipts of a stream
//! can be removed without a trace, and anyone who can write the file can rewrite everything after
//! an edit consistently. The head is what an attacker cannot rewrite.
//!
//! What a stream is:
//! - **a receipts file**: the file. It has one writer (one keyhole process, its writer thread),
//!   which orders the lines and links each to the one before; a restart continues the chain of
//!   the file's last line (same `stream`, next `seq`).
//! - **a receipts topic**: one binding's producer, for as long as it lives (a new `stream` each
//!   time a binding starts). Several replicas and bindings write to the topic, and a record's
//!   partition follows its subject, so one writer's receipts spread over partitions; a chain
//!   per producer is the order that one writer can promise. Its records keep that order within
//!   each partition (the producer is idempotent, and `seq` is taken as the record is enqueued),
//!   so a verifier sorts a stream by `seq` to check links and checks each partition's `seq`s
//!   increase to find records moved.

use serde::Serialize;

/// The `prev` of a stream's first receipt.
pub const GENESIS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// A receipt's place in its stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Link {
    /// The stream's id.
    pub stream: String,
    /// From 1, without gaps.
    pub seq: u64,
    /// The hash of the stream's previous receipt, [`GENESIS`] for the first.
    pub prev: String,
}

/// `sha256:<hex>` of a receipt as written: the same digest, in the same form, as a handler
/// version's.
pub fn hash(written: &[u8]) -> String {
    crate::sandbox::version_of(written)
}

/// A new stream's id: random, so that two writers never share one.
pub fn new_stream() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The end of a stream: the next link to hand out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The stream's id.
    pub stream: String,
    /// The last `seq` written; 0 before the first.
    pub seq: u64,
    /// The hash of the last receipt written; [`GENESIS`] before the first.
    pub hash: String,
}

impl Head {
    /// A stream with nothing written yet.
    pub fn new(stream: String) -> Self {
        Head { stream, seq: 0, hash: GENESIS.to_owned() }
    }

    /// The link of the next receipt.
    pub fn next(&self) -> Link {
        Link { stream: self.stream.clone(), seq: self.seq + 1, prev: self.hash.clone() }
    }

    /// Moves the head past `written`, the receipt that carries `link`.
    pub fn advance(&mut self, link: &Link, written: &[u8]) {
        self.seq = link.seq;
        self.hash = hash(written);
    }
}

/// `record` (a JSON object) with `link`'s three fields added at its end, as written.
pub fn linked(record: &impl Serialize, link: &Link) -> Result<Vec<u8>, serde_json::Error> {
    let mut object = serde_json::to_vec(record)?;
    append_link(&mut object, link)?;
    Ok(object)
}

/// Adds `link`'s three fields at the end of `object`, a serialized JSON object. The writer of a
/// receipts file links lines it got already serialized, in the order it writes them; this is
/// the same bytes as [`linked`] by construction.
pub fn append_link(object: &mut Vec<u8>, link: &Link) -> Result<(), serde_json::Error> {
    if object.last() != Some(&b'}') {
        return Err(serde::ser::Error::custom("a receipt is a JSON object"));
    }
    object.pop();
    if object.len() > 1 {
        object.push(b',');
    }
    object.extend_from_slice(b"\"stream\":");
    serde_json::to_writer(&mut *object, &link.stream)?;
    object.extend_from_slice(format!(",\"seq\":{},\"prev\":", link.seq).as_bytes());
    serde_json::to_writer(&mut *object, &link.prev)?;
    object.push(b'}');
    Ok(())
}

/// Where a stream's head ends up, in the order a receipt is written: the metric
/// [`crate::telemetry::RECEIPTS_CHAIN_SEQ`] at every receipt, and a log line at the first receipt, at
/// most every [`LOG_EVERY`] after it, and when the stream ends (its writer stops). The log line
/// carries the hash, which the metric cannot; with both kept outside the chain's storage (a log
/// pipeline, a metrics store), `keyhole receipts verify --head` detects a cut tail.
pub struct Publisher {
    gauge: metrics::Gauge,
    sink: &'static str,
    logged: Option<(std::time::Instant, u64)>,
}

/// How often a stream's head is logged while receipts are written.
pub const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Publisher {
    /// Publishes the head of a stream written to `sink` (`file` or `kafka`), in `gauge`.
    pub fn new(gauge: metrics::Gauge, sink: &'static str) -> Self {
        Publisher { gauge, sink, logged: None }
    }

    /// After a receipt (or a batch of them) is written.
    pub fn written(&mut self, head: &Head) {
        #[allow(clippy::cast_precision_loss)] // exact up to 2^53 receipts
        self.gauge.set(head.seq as f64);
        if self.logged.is_none_or(|(at, _)| at.elapsed() >= LOG_EVERY) {
            self.log(head);
        }
    }

    /// Logs the head unless that one was logged already.
    pub fn log(&mut self, head: &Head) {
        if head.seq == 0 || self.logged.is_some_and(|(_, seq)| seq == head.seq) {
            return;
        }
        tracing::info!(sink = self.sink, stream = %head.stream, seq = head.seq, head = %head.hash, "Receipts chain head.");
        self.logged = Some((std::time::Instant::now(), head.seq));
    }
}

/// The head to continue in a receipts file: its last readable line's stream, or a new stream
/// when that line is not chained (written by a keyhole before receipts were chained) or there is
/// none. Looks at the last [`RESUME_WINDOW`] bytes only: a receipt line is far shorter.
pub fn resume(file: &mut std::fs::File) -> std::io::Result<Head> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let length = file.seek(SeekFrom::End(0))?;
    let start = length.saturating_sub(RESUME_WINDOW);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.take(RESUME_WINDOW).read_to_end(&mut tail)?;
    // The first line of the window may be cut by it; a torn line (a crash while writing, ended
    // by the writer on opening) does not parse: both are passed over.
    let lines = tail.split(|&b| b == b'\n').skip(usize::from(start > 0));
    for line in lines.collect::<Vec<_>>().into_iter().rev() {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
        let stream = value.get("stream").and_then(|s| s.as_str());
        let seq = value.get("seq").and_then(|s| s.as_u64());
        return Ok(match (stream, seq) {
            (Some(stream), Some(seq)) => Head { stream: stream.to_owned(), seq, hash: hash(line) },
            _ => Head::new(new_stream()),
        });
    }
    Ok(Head::new(new_stream()))
}

/// How far from its end a receipts file is read to find the line to continue from.
const RESUME_WINDOW: u64 = 1 << 20;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn links_follow_the_bytes_written() {
        let mut head = Head::new("s".into());
        let first = head.next();
        assert_eq!((first.seq, first.prev.as_str()), (1, GENESIS));
        let line = linked(&serde_json::json!({"event_id": "e-1"}), &first).unwrap();
        assert_eq!(
            String::from_utf8(line.clone()).unwrap(),
            format!(r#"{{"event_id":"e-1","stream":"s","seq":1,"prev":"{GENESIS}"}}"#)
        );
        head.advance(&first, &line);
        let second = head.next();
        assert_eq!(second.seq, 2);
        assert_eq!(second.prev, hash(&line));
        let mut spliced = serde_json::to_vec(&serde_json::json!({"event_id": "e-1"})).unwrap();
        append_link(&mut spliced, &first).unwrap();
        assert_eq!(spliced, line);
        let mut empty = b"{}".to_vec();
        append_link(&mut empty, &first).unwrap();
        assert!(serde_json::from_slice::<serde_json::Value>(&empty).is_ok());
        assert!(append_link(&mut b"[1]".to_vec(), &first).is_err());
        assert_eq!(hash(b"abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod resume_tests {
    use super::*;
    use std::io::Write as _;

    fn file_with(text: &[u8]) -> std::fs::File {
        let path = std::env::temp_dir().join(format!("keyhole-resume-{}", uuid::Uuid::new_v4()));
        let mut file = std::fs::OpenOptions::new().create(true).read(true).append(true).open(&path).unwrap();
        file.write_all(text).unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    #[test]
    fn a_file_continues_the_chain_of_its_last_readable_line() {
        let line = linked(
            &serde_json::json!({"a": 1}),
            &Link { stream: "s-1".into(), seq: 7, prev: GENESIS.into() },
        )
        .unwrap();
        let mut text = line.clone();
        text.extend_from_slice(b"\n{\"torn\":\n");
        let head = resume(&mut file_with(&text)).unwrap();
        assert_eq!(head, Head { stream: "s-1".into(), seq: 7, hash: hash(&line) });
    }

    #[test]
    fn an_empty_or_unchained_file_starts_a_new_stream() {
        for text in [&b""[..], b"{\"decision\":\"released\"}\n", b"not json\n"] {
            let head = resume(&mut file_with(text)).unwrap();
            assert_eq!((head.seq, head.hash.as_str()), (0, GENESIS));
            assert!(!head.stream.is_empty());
        }
    }
}
