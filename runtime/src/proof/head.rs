//! A published head: the end of a stream as keyhole announced it, outside the receipts
//! (keyhole's log line "receipts chain head", its metrics). It is what shows a cut-off tail:
//! without it, a stream's last receipts can be removed without a trace.

use super::record::{Digest, format_digest, parse_digest};
use std::fmt;
use std::str::FromStr;

/// `STREAM:SEQ:sha256:HEX`: the stream, the seq of its receipt, and that receipt's hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedHead {
    /// The stream's id.
    pub stream: String,
    /// The seq of the receipt the head names.
    pub seq: u64,
    /// That receipt's hash.
    pub hash: Digest,
}

/// Why a head cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a head is STREAM:SEQ:sha256:<64 lowercase hex digits>, as keyhole logs it ({0})")]
pub struct HeadError(&'static str);

impl FromStr for PublishedHead {
    type Err = HeadError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // From the right: the hash has one colon of its own, and the seq none.
        let (rest, hex) = text.rsplit_once(':').ok_or(HeadError("no hash"))?;
        let rest = rest.strip_suffix(":sha256").ok_or(HeadError("no sha256: before the hash"))?;
        let (stream, seq) = rest.rsplit_once(':').ok_or(HeadError("no seq"))?;
        let hash = parse_digest(&format!("sha256:{hex}")).ok_or(HeadError("the hash is malformed"))?;
        if stream.is_empty() {
            return Err(HeadError("no stream"));
        }
        let seq = seq
            .parse::<u64>()
            .ok()
            .filter(|seq| *seq > 0)
            .ok_or(HeadError("the seq is not a number from 1"))?;
        Ok(PublishedHead { stream: stream.to_string(), seq, hash })
    }
}

impl fmt::Display for PublishedHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.stream, self.seq, format_digest(&self.hash))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::records::chain;

    #[test]
    fn a_head_reads_back_as_it_is_written() {
        let text = format!("5f0c2a7e-1b2c-4d5e-8f90-123456789abc:42:{}", chain::hash(b"x"));
        let head: PublishedHead = text.parse().unwrap();
        assert_eq!((head.stream.as_str(), head.seq), ("5f0c2a7e-1b2c-4d5e-8f90-123456789abc", 42));
        assert_eq!(head.to_string(), text);
        // A stream id with colons of its own still reads.
        let odd: PublishedHead = format!("a:b:7:{}", chain::hash(b"y")).parse().unwrap();
        assert_eq!((odd.stream.as_str(), odd.seq), ("a:b", 7));
    }

    #[test]
    fn a_malformed_head_is_refused() {
        let hash = chain::hash(b"x");
        for bad in [
            String::new(),
            "s:1".into(),
            format!("s:{hash}"),
            format!(":1:{hash}"),
            format!("s:0:{hash}"),
            format!("s:-1:{hash}"),
            format!("s:x:{hash}"),
            format!("s:1:{}", hash.to_uppercase()),
            format!("s:1:{}", &hash[..hash.len() - 2]),
            "s:1:sha256:".into(),
        ] {
            assert!(bad.parse::<PublishedHead>().is_err(), "{bad}");
        }
    }
}
