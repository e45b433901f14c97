//! Authenticates registry records: whoever can write to the registry topic must not be able to
//! create tenants, issue tokens or activate components.
//!
//! Every record a replica writes carries a header `keyhole-signature: <key id>:<hex HMAC-SHA256>`
//! over its Kafka key and value, with a key from `registry.signing_keys` that only the replicas
//! hold. A replica applies a record only when the signature checks out against one of its keys:
//! the first key signs, every key verifies, so a new key can be rolled out to every replica
//! before it signs, and an old one removed once nothing it signed is needed (after an
//! export/import, or once compaction has rewritten the log).
//!
//! The component chunks in the blob topic need no signature of their own: a version's manifest
//! (a signed command) names their offsets and SHA-256 digest, and they are checked against it
//! when read.

use crate::config::SigningKey;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries a record's signature.
pub const HEADER: &str = "keyhole-signature";

type HmacSha256 = Hmac<Sha256>;

/// Signs records with the first key and verifies them against every key.
pub struct Signer {
    /// Never empty: configuration validation requires a key with the Kafka store.
    keys: Vec<SigningKey>,
}

/// Why a record was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// No `keyhole-signature` header, or more than one.
    #[error("not signed")]
    Unsigned,
    /// The header is not `<key id>:<64 hex digits>`.
    #[error("the signature header is malformed")]
    Malformed,
    /// Signed with a key this replica does not have.
    #[error("signed with an unknown key")]
    UnknownKey,
    /// The signature does not match the record.
    #[error("the signature does not match the record")]
    Mismatch,
}

impl Rejected {
    /// Every rejection, for showing each at zero from the start.
    pub const ALL: [Rejected; 4] =
        [Rejected::Unsigned, Rejected::Malformed, Rejected::UnknownKey, Rejected::Mismatch];

    /// A stable label for the rejection metric.
    pub fn label(self) -> &'static str {
        match self {
            Rejected::Unsigned => "unsigned",
            Rejected::Malformed => "malformed",
            Rejected::UnknownKey => "unknown_key",
            Rejected::Mismatch => "mismatch",
        }
    }
}

impl Signer {
    /// A signer over `keys`; `None` when there are none.
    pub fn new(keys: Vec<SigningKey>) -> Option<Signer> {
        (!keys.is_empty()).then_some(Signer { keys })
    }

    /// The signature header's value for a record with this key and value.
    pub fn sign(&self, key: &[u8], value: &[u8]) -> String {
        let signing = &self.keys[0];
        let tag = mac(&signing.secret, key, value).finalize().into_bytes();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}:{hex}", signing.id)
    }

    /// Checks a record's signature headers (every `keyhole-signature` value it carries).
    pub fn verify(&self, key: &[u8], value: &[u8], headers: &[&[u8]]) -> Result<(), Rejected> {
        let [header] = headers else { return Err(Rejected::Unsigned) };
        let header = std::str::from_utf8(header).map_err(|_| Rejected::Malformed)?;
        let (id, tag) = header.rsplit_once(':').ok_or(Rejected::Malformed)?;
        let tag = from_hex(tag).ok_or(Rejected::Malformed)?;
        let signing = self.keys.iter().find(|k| k.id == id).ok_or(Rejected::UnknownKey)?;
        // `verify_slice` compares in constant time.
        mac(&signing.secret, key, value).verify_slice(&tag).map_err(|_| Rejected::Mismatch)
    }
}

/// 64 hex digits as 32 bytes.
fn from_hex(hex: &str) -> Option<[u8; 32]> {
    let digits = hex.as_bytes();
    if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(bytes)
}

/// The MAC of a record: the key's length first, so that no (key, value) pair can pass for
/// another with the boundary moved.
fn mac(secret: &[u8], key: &[u8], value: &[u8]) -> HmacSha256 {
    // invariant: HMAC takes a key of any length (RFC 2104 hashes a longer one), so
    // `new_from_slice` cannot fail for it; no input reaches this with another outcome.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(&(key.len() as u64).to_be_bytes());
    mac.update(key);
    mac.update(value);
    mac
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn key(id: &str, secret: &str) -> SigningKey {
        SigningKey { id: id.into(), secret: secret.as_bytes().to_vec() }
    }

    #[test]
    fn a_signed_record_verifies_and_any_change_is_rejected() {
        let signer = Signer::new(vec![key("k1", "0123456789abcdef0123456789abcdef")]).unwrap();
        let header = signer.sign(b"command/1", b"{\"x\":1}");
        assert!(header.starts_with("k1:"));
        assert_eq!(signer.verify(b"command/1", b"{\"x\":1}", &[header.as_bytes()]), Ok(()));
        assert_eq!(signer.verify(b"command/1", b"{\"x\":2}", &[header.as_bytes()]), Err(Rejected::Mismatch));
        assert_eq!(signer.verify(b"command/2", b"{\"x\":1}", &[header.as_bytes()]), Err(Rejected::Mismatch));
        // The boundary between key and value cannot move.
        assert_eq!(signer.verify(b"command/1{", b"\"x\":1}", &[header.as_bytes()]), Err(Rejected::Mismatch));
        assert_eq!(signer.verify(b"command/1", b"{\"x\":1}", &[]), Err(Rejected::Unsigned));
        let twice = [header.as_bytes(), header.as_bytes()];
        assert_eq!(signer.verify(b"command/1", b"{\"x\":1}", &twice), Err(Rejected::Unsigned));
        assert_eq!(signer.verify(b"command/1", b"{\"x\":1}", &[b"k1:zz"]), Err(Rejected::Malformed));
    }

    #[test]
    fn rotation_verifies_with_every_key_and_signs_with_the_first() {
        let old = Signer::new(vec![key("old", "an old secret of thirty-two bytes!")]).unwrap();
        let both = Signer::new(vec![
            key("new", "a new secret of at least 32 bytes"),
            key("old", "an old secret of thirty-two bytes!"),
        ])
        .unwrap();
        let by_old = old.sign(b"k", b"v");
        assert_eq!(both.verify(b"k", b"v", &[by_old.as_bytes()]), Ok(()));
        let by_both = both.sign(b"k", b"v");
        assert!(by_both.starts_with("new:"));
        assert_eq!(old.verify(b"k", b"v", &[by_both.as_bytes()]), Err(Rejected::UnknownKey));
        let forged = format!("old:{}", "0".repeat(64));
        assert_eq!(both.verify(b"k", b"v", &[forged.as_bytes()]), Err(Rejected::Mismatch));
    }
}
