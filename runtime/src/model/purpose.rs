//! The purpose of processing a binding declares: sent to the data owner with every request, in
//! an HTTP header, so it must be printable ASCII of a header's reasonable length.

/// The longest purpose, in bytes.
pub const MAX_PURPOSE_BYTES: usize = 512;

/// Whether `purpose` can be declared: non-blank, at most [`MAX_PURPOSE_BYTES`] of printable
/// ASCII and spaces.
pub fn is_purpose(purpose: &str) -> bool {
    !purpose.trim().is_empty()
        && purpose.len() <= MAX_PURPOSE_BYTES
        && purpose.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_purpose_fits_a_header() {
        assert!(super::is_purpose("Fraud scoring (contract GLOBEX-3)"));
        assert!(!super::is_purpose("  ") && !super::is_purpose("a\nb") && !super::is_purpose("ü"));
        assert!(!super::is_purpose(&"a".repeat(513)));
    }
}
