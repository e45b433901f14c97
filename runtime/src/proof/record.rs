//! What one line of a receipts file, or one record of a receipts topic, is to a verifier: a
//! chained receipt (its link and its own hash), a receipt written before receipts were chained,
//! or something unreadable, and why.
//!
//! Nothing here keeps or repeats the bytes it was given beyond the receipt's own fields: a reason
//! names the kind of problem and a column, never a value (serde's messages quote the values they
//! could not use, and an inserted line may hold anything).

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

/// The longest line or record value read as a receipt. A receipt is well under a kilobyte (its
/// longest fields are a 2 KiB `dataref` at most and the purpose); a longer one is not a receipt
/// keyhole wrote, and is not held in memory whole.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// The longest `stream` id read (keyhole's are 36-character UUIDs): ids are kept once per
/// stream, and an inserted line must not make that unbounded.
pub const MAX_STREAM_BYTES: usize = 256;

/// A SHA-256 digest, as `prev` and a receipt's hash are compared.
pub type Digest = [u8; 32];

/// The digest of `written` (the bytes of a line without its newline, or a record's value): the
/// same as [`chain::hash`](crate::records::chain::hash), kept as bytes.
pub fn digest(written: &[u8]) -> Digest {
    use sha2::Digest as _;
    sha2::Sha256::digest(written).into()
}

/// `sha256:<hex>`, as [`chain::hash`](crate::records::chain::hash) writes it.
pub fn format_digest(digest: &Digest) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity("sha256:".len() + 64);
    out.push_str("sha256:");
    for byte in digest {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Reads `sha256:` and 64 lowercase hex digits, exactly as keyhole writes a digest.
pub fn parse_digest(text: &str) -> Option<Digest> {
    let hex = text.strip_prefix("sha256:")?.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// [`chain::GENESIS`](crate::records::chain::GENESIS) as a digest.
pub const GENESIS: Digest = [0; 32];

/// One line or record, as it came out of its source.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    /// The bytes (a line without its newline).
    Bytes(&'a [u8]),
    /// Longer than [`MAX_RECORD_BYTES`]; only its length was kept.
    TooLong(u64),
    /// A record without a value (a tombstone).
    Missing,
}

/// A receipt's fields, as far as a reader needs them; every one optional, so that a receipt of
/// another keyhole version is still read. Unknown fields are ignored.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Fields<'a> {
    /// When the owner answered.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Cow<'a, str>>,
    /// The event's id.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Cow<'a, str>>,
    /// The tenant whose handler asked.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Cow<'a, str>>,
    /// The handler that asked.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<Cow<'a, str>>,
    /// The handler's version.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub handler_version: Option<Cow<'a, str>>,
    /// The data source asked.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub data_source: Option<Cow<'a, str>>,
    /// The declared purpose.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<Cow<'a, str>>,
    /// Whom the data is about, in the owner's terms.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Cow<'a, str>>,
    /// The reference's path.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub dataref: Option<Cow<'a, str>>,
    /// What the owner decided.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Cow<'a, str>>,
    /// The owner's HTTP status, when there was one to tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Which attempt of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The chain the receipt belongs to.
    #[serde(borrow, default, skip_serializing)]
    pub stream: Option<Cow<'a, str>>,
    /// Its place in the chain.
    #[serde(default, skip_serializing)]
    pub seq: Option<u64>,
    /// The previous receipt's hash.
    #[serde(borrow, default, skip_serializing)]
    pub prev: Option<Cow<'a, str>>,
}

impl Fields<'_> {
    /// The same fields, owning their text.
    pub fn into_owned(self) -> Fields<'static> {
        fn own(text: Option<Cow<'_, str>>) -> Option<Cow<'static, str>> {
            text.map(|t| Cow::Owned(t.into_owned()))
        }
        Fields {
            time: own(self.time),
            event_id: own(self.event_id),
            tenant: own(self.tenant),
            handler: own(self.handler),
            handler_version: own(self.handler_version),
            data_source: own(self.data_source),
            purpose: own(self.purpose),
            subject: own(self.subject),
            dataref: own(self.dataref),
            decision: own(self.decision),
            status: self.status,
            attempt: self.attempt,
            stream: own(self.stream),
            seq: self.seq,
            prev: own(self.prev),
        }
    }
}

/// A chained receipt's place in its stream, and its own hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLink<'a> {
    /// The stream's id.
    pub stream: Cow<'a, str>,
    /// Its place, from 1.
    pub seq: u64,
    /// The hash of the stream's previous receipt ([`GENESIS`] for seq 1).
    pub prev: Digest,
    /// The hash of this receipt's bytes.
    pub hash: Digest,
}

/// Why a line or record is not a receipt that can be placed in a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// An empty line.
    Empty,
    /// Longer than [`MAX_RECORD_BYTES`].
    TooLong(u64),
    /// A record without a value.
    NoValue,
    /// Ends before the JSON does: what a crash in the middle of a write leaves.
    CutOff {
        /// Where it ends (from 1).
        column: usize,
    },
    /// Not JSON (or not UTF-8).
    NotJson {
        /// Where the reader gave up (from 1).
        column: usize,
    },
    /// JSON, but not an object with a receipt's fields of a receipt's types.
    NotAReceipt {
        /// Where the reader gave up (from 1).
        column: usize,
    },
    /// Has some of `stream`, `seq` and `prev`, not all three.
    IncompleteLink,
    /// `seq` is 0 (a stream counts from 1).
    SeqZero,
    /// `prev` is not `sha256:` and 64 lowercase hex digits.
    MalformedPrev,
    /// `stream` is empty or longer than [`MAX_STREAM_BYTES`].
    MalformedStream,
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreadable::Empty => write!(f, "an empty line"),
            Unreadable::TooLong(bytes) => {
                write!(f, "{bytes} bytes long, more than the {MAX_RECORD_BYTES} a receipt may have")
            }
            Unreadable::NoValue => write!(f, "a record without a value"),
            Unreadable::CutOff { column } => write!(f, "JSON cut off at column {column}"),
            Unreadable::NotJson { column } => write!(f, "not JSON (column {column})"),
            Unreadable::NotAReceipt { column } => write!(f, "JSON, but not a receipt (column {column})"),
            Unreadable::IncompleteLink => write!(f, "has some of stream, seq and prev, not all three"),
            Unreadable::SeqZero => write!(f, "seq 0 (a stream counts from 1)"),
            Unreadable::MalformedPrev => write!(f, "prev is not sha256:<64 lowercase hex digits>"),
            Unreadable::MalformedStream => {
                write!(f, "stream is empty or longer than {MAX_STREAM_BYTES} bytes")
            }
        }
    }
}

/// One line or record, read.
#[derive(Clone, Debug)]
pub enum Parsed<'a> {
    /// A receipt with its link.
    Chained {
        /// Its place in its stream and its hash.
        link: ChainLink<'a>,
        /// Its fields.
        fields: Fields<'a>,
    },
    /// A receipt without `stream`, `seq` and `prev`: written by a keyhole before receipts were
    /// chained.
    Unchained {
        /// Its fields.
        fields: Fields<'a>,
    },
    /// Not a receipt that can be placed.
    Unreadable(Unreadable),
}

/// Reads one line or record. Never fails and never panics: whatever is not a receipt is
/// [`Parsed::Unreadable`] with the reason.
pub fn parse(value: Value<'_>) -> Parsed<'_> {
    let bytes = match value {
        Value::Bytes(bytes) if bytes.len() > MAX_RECORD_BYTES => {
            return Parsed::Unreadable(Unreadable::TooLong(bytes.len() as u64));
        }
        Value::Bytes([]) => return Parsed::Unreadable(Unreadable::Empty),
        Value::Bytes(bytes) => bytes,
        Value::TooLong(bytes) => return Parsed::Unreadable(Unreadable::TooLong(bytes)),
        Value::Missing => return Parsed::Unreadable(Unreadable::NoValue),
    };
    // serde reads a struct from an array too; a receipt is an object.
    if let Some(at) = bytes.iter().position(|b| !b.is_ascii_whitespace()).filter(|at| bytes[*at] == b'[') {
        return Parsed::Unreadable(Unreadable::NotAReceipt { column: at + 1 });
    }
    let fields: Fields<'_> = match serde_json::from_slice(bytes) {
        Ok(fields) => fields,
        Err(error) => {
            let column = error.column();
            return Parsed::Unreadable(match error.classify() {
                serde_json::error::Category::Eof => Unreadable::CutOff { column },
                serde_json::error::Category::Data => Unreadable::NotAReceipt { column },
                serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                    Unreadable::NotJson { column }
                }
            });
        }
    };
    match (&fields.stream, fields.seq, &fields.prev) {
        (None, None, None) => Parsed::Unchained { fields },
        (Some(stream), Some(seq), Some(prev)) => {
            if stream.is_empty() || stream.len() > MAX_STREAM_BYTES {
                return Parsed::Unreadable(Unreadable::MalformedStream);
            }
            if seq == 0 {
                return Parsed::Unreadable(Unreadable::SeqZero);
            }
            let Some(prev) = parse_digest(prev) else {
                return Parsed::Unreadable(Unreadable::MalformedPrev);
            };
            let link = ChainLink { stream: stream.clone(), seq, prev, hash: digest(bytes) };
            Parsed::Chained { link, fields }
        }
        _ => Parsed::Unreadable(Unreadable::IncompleteLink),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::records::chain::{self, Head, linked};
    use rand::{Rng, SeedableRng};

    fn line(stream: &str, record: serde_json::Value) -> Vec<u8> {
        let head = Head::new(stream.into());
        linked(&record, &head.next()).unwrap()
    }

    #[test]
    fn digests_are_the_writers() {
        for bytes in [&b""[..], b"abc", &[0xff; 300]] {
            assert_eq!(format_digest(&digest(bytes)), chain::hash(bytes));
            assert_eq!(parse_digest(&chain::hash(bytes)), Some(digest(bytes)));
        }
        assert_eq!(parse_digest(chain::GENESIS), Some(GENESIS));
        assert_eq!(format_digest(&GENESIS), chain::GENESIS);
    }

    #[test]
    fn only_the_writers_digest_form_is_read() {
        let good = chain::hash(b"x");
        assert!(parse_digest(&good).is_some());
        for bad in [
            good.to_uppercase(),
            good.replace("sha256:", "sha512:"),
            format!("{good}0"),
            good[..good.len() - 1].to_string(),
            format!("sha256:{}", "g".repeat(64)),
            "sha256:".into(),
            String::new(),
            format!("sha256:{}é", "0".repeat(62)),
        ] {
            assert_eq!(parse_digest(&bad), None, "{bad}");
        }
    }

    #[test]
    fn a_chained_receipt_gives_its_link_and_the_hash_of_its_bytes() {
        let bytes =
            line("s-1", serde_json::json!({"event_id": "e-1", "subject": "customer/1", "status": 403}));
        let Parsed::Chained { link, fields } = parse(Value::Bytes(&bytes)) else { panic!() };
        assert_eq!(
            (link.stream.as_ref(), link.seq, link.prev, link.hash),
            ("s-1", 1, GENESIS, digest(&bytes))
        );
        assert_eq!(fields.subject.as_deref(), Some("customer/1"));
        assert_eq!(fields.status, Some(403));
    }

    #[test]
    fn a_receipt_without_a_link_is_unchained() {
        let parsed =
            parse(Value::Bytes(br#"{"event_id":"e-1","dataref":"customers/1","decision":"released"}"#));
        let Parsed::Unchained { fields } = parsed else { panic!("{parsed:?}") };
        assert_eq!(fields.dataref.as_deref(), Some("customers/1"));
    }

    #[test]
    fn what_is_not_a_receipt_is_unreadable_with_a_reason_that_quotes_nothing() {
        let prev = chain::GENESIS;
        let cases: Vec<(Vec<u8>, Unreadable)> = vec![
            (b"".to_vec(), Unreadable::Empty),
            (br#"{"event_id":"e-1","stre"#.to_vec(), Unreadable::CutOff { column: 23 }),
            (b"secret@example.com".to_vec(), Unreadable::NotJson { column: 1 }),
            (b"\xff\xfe".to_vec(), Unreadable::NotJson { column: 1 }),
            (br#"["secret@example.com"]"#.to_vec(), Unreadable::NotAReceipt { column: 1 }),
            (br#"{"status":"secret@example.com"}"#.to_vec(), Unreadable::NotAReceipt { column: 30 }),
            (br#"{"seq":1,"seq":2}"#.to_vec(), Unreadable::NotAReceipt { column: 14 }),
            (br#"{"stream":"s","seq":1}"#.to_vec(), Unreadable::IncompleteLink),
            (format!(r#"{{"stream":"s","seq":0,"prev":"{prev}"}}"#).into_bytes(), Unreadable::SeqZero),
            (
                format!(r#"{{"stream":"s","seq":-1,"prev":"{prev}"}}"#).into_bytes(),
                Unreadable::NotAReceipt { column: 22 },
            ),
            (br#"{"stream":"s","seq":1,"prev":"sha256:00"}"#.to_vec(), Unreadable::MalformedPrev),
            (format!(r#"{{"stream":"","seq":1,"prev":"{prev}"}}"#).into_bytes(), Unreadable::MalformedStream),
        ];
        for (bytes, expected) in cases {
            let parsed = parse(Value::Bytes(&bytes));
            let Parsed::Unreadable(why) = parsed else {
                panic!("{} read as {parsed:?}", String::from_utf8_lossy(&bytes))
            };
            assert_eq!(why, expected, "{}", String::from_utf8_lossy(&bytes));
            assert!(!why.to_string().contains("secret"), "{why}");
        }
        assert!(matches!(parse(Value::Missing), Parsed::Unreadable(Unreadable::NoValue)));
        assert!(matches!(parse(Value::TooLong(5 << 20)), Parsed::Unreadable(Unreadable::TooLong(_))));
        let long = vec![b' '; MAX_RECORD_BYTES + 1];
        assert!(matches!(parse(Value::Bytes(&long)), Parsed::Unreadable(Unreadable::TooLong(_))));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let valid = line("s", serde_json::json!({"event_id": "e-1", "subject": "s/1", "attempt": 1}));
        for round in 0..20_000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                let len = rng.random_range(0..200);
                (0..len).map(|_| rng.random()).collect()
            } else {
                // A valid receipt with a few bytes changed, cut or added: the near misses.
                let mut bytes = valid.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..bytes.len());
                    match rng.random_range(0..3) {
                        0 => bytes[at] = rng.random(),
                        1 => bytes.truncate(at),
                        _ => bytes.insert(at, rng.random()),
                    }
                    if bytes.is_empty() {
                        break;
                    }
                }
                bytes
            };
            let _ = parse(Value::Bytes(&bytes));
        }
    }
}
