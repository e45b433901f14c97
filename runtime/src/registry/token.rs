//! Tenants' bearer tokens: issued at random, kept only as SHA-256 digests, checked in constant
//! time.

use super::model::IssuedToken;
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// A new token: `kh_` and 256 random bits (URL-safe base64), with a short random id.
pub(crate) fn issue() -> IssuedToken {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let mut id = [0u8; 6];
    rand::rng().fill_bytes(&mut id);
    IssuedToken {
        id: id.iter().map(|b| format!("{b:02x}")).collect(),
        token: format!("kh_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)),
    }
}

/// The digest a token is stored as.
pub(crate) fn digest_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `presented` hashes to `expected` (a digest held in memory), in constant time.
pub fn matches(presented: &str, expected: &[u8; 32]) -> bool {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    digest.ct_eq(expected).into()
}

/// The owner of the candidate whose digest `presented` hashes to. Every candidate is compared,
/// so the time taken depends on how many tokens exist, not on which one matched or how much of
/// it did.
pub(crate) fn find<'a, T>(
    presented: &str,
    candidates: impl Iterator<Item = (&'a T, &'a str)>,
) -> Option<&'a T> {
    let digest = digest_hex(presented);
    let mut found = None;
    for (owner, stored) in candidates {
        if bool::from(digest.as_bytes().ct_eq(stored.as_bytes())) {
            found = Some(owner);
        }
    }
    found
}

/// Whether `presented` has the shape of a token [`issue`] makes (`kh_` and 43 URL-safe base64
/// characters): what is not cannot be any tenant's token, whatever the registry holds.
pub fn is_tenant_token_shaped(presented: &str) -> bool {
    presented.strip_prefix("kh_").is_some_and(|rest| {
        rest.len() == 43 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_found_by_its_digest_and_only_by_it() {
        let a = issue();
        let b = issue();
        let stored = [("a".to_string(), digest_hex(&a.token)), ("b".to_string(), digest_hex(&b.token))];
        let candidates = || stored.iter().map(|(owner, digest)| (owner, digest.as_str()));
        assert_eq!(find(&a.token, candidates()).unwrap(), "a");
        assert_eq!(find(&b.token, candidates()).unwrap(), "b");
        assert!(find("kh_not-a-token", candidates()).is_none());
        assert!(find(&a.token[..a.token.len() - 1], candidates()).is_none());
        assert_ne!(a.token, b.token);
        assert!(a.token.starts_with("kh_") && a.token.len() == 46, "{}", a.token);
    }

    #[test]
    fn only_an_issued_token_is_tenant_shaped() {
        assert!(is_tenant_token_shaped(&issue().token));
        for other in
            ["", "kh_", "kh_too-short", "operator-token-for-the-tests", &format!("kh_{}", "a".repeat(44))]
        {
            assert!(!is_tenant_token_shaped(other), "{other:?}");
        }
    }
}
