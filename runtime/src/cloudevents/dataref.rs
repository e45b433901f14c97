//! The `dataref` extension: [`DataRef`], a reference checked to stay below the data source's base
//! URL, and [`DatarefRefusal`], the rule a refused reference breaks.

use std::fmt;

use super::{EnvelopeError, MAX_DATAREF_BYTES};

/// A validated relative reference: a path relative to the data source's base URL, with an
/// optional query.
///
/// Only [`DataRef::parse`] builds one, so holding a `DataRef` means the reference cannot name
/// another host or leave the base path. Its `Debug` output shows the path only: the query may
/// hold personal data (`?email=...`).
#[derive(Clone, PartialEq, Eq)]
pub struct DataRef {
    /// The relative path: no leading '/', no dot segments, no encoded dots or slashes.
    pub(super) path: String,
    /// Everything after the first '?', kept verbatim for the request and never shown.
    pub(super) query: Option<String>,
}

impl DataRef {
    /// Validates a `dataref` value and refuses, without any request, every reference that is
    /// not a plain relative path (with an optional query) under the base URL.
    ///
    /// The rules are stricter than RFC 3986 on purpose: what the `url` crate, a proxy and the
    /// data owner's server make of `%2e%2e`, `..;`, backslashes or double encoding differs, so
    /// anything that one of them could read as "go up" is refused rather than normalised.
    pub fn parse(reference: &str) -> Result<DataRef, EnvelopeError> {
        check_reference(reference).map_err(|reason| EnvelopeError::ForbiddenDataref { reason })?;
        let (path, query) = match reference.split_once('?') {
            Some((path, query)) => (path, Some(query.to_owned())),
            None => (reference, None),
        };
        Ok(DataRef { path: path.to_owned(), query })
    }

    /// The path part only (never the query), safe to log and to record.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Joins the reference onto `base` (a URL whose path ends with '/', e.g.
    /// `https://crm.example.com/api/v1/`) and re-checks that the result has the same scheme,
    /// host and port as `base` and a path under base's path. Returns the full URL to request
    /// (with the query).
    ///
    /// A base path without the trailing '/' is treated as if it had one: RFC 3986 would
    /// otherwise replace its last segment, and the request would leave the configured path.
    /// A query or fragment on `base` is dropped.
    pub fn resolve_against(&self, base: &url::Url) -> Result<url::Url, EnvelopeError> {
        let forbidden = |reason| EnvelopeError::ForbiddenDataref { reason };
        if base.cannot_be_a_base() {
            return Err(forbidden(DatarefRefusal::BaseNotHierarchical));
        }
        let mut base = base.clone();
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }

        let relative = match &self.query {
            Some(query) => format!("{}?{}", self.path, query),
            None => self.path.clone(),
        };
        let joined = base.join(&relative).map_err(|_| forbidden(DatarefRefusal::NotJoinable))?;
        // Defence in depth: `parse` already refused everything that could change the origin
        // or climb out of the base path, but the request goes wherever the `url` crate says,
        // so check what it says.
        check_below(&base, &joined).map_err(forbidden)?;
        Ok(joined)
    }
}

/// Whether `url` is below `base` (whose path ends with '/') as a reference's URL must be: the
/// same scheme, host, port and user, no fragment, a path below the base's whose rest passes
/// the reference path rules. Redirects the data source answers with are checked by it too.
pub fn check_below(base: &url::Url, url: &url::Url) -> Result<(), DatarefRefusal> {
    if url.scheme() != base.scheme()
        || url.host_str() != base.host_str()
        || url.port_or_known_default() != base.port_or_known_default()
        || url.username() != base.username()
        || url.password() != base.password()
    {
        return Err(DatarefRefusal::OtherHost);
    }
    if url.fragment().is_some() {
        return Err(DatarefRefusal::Fragment);
    }
    let below_base = url
        .path()
        .strip_prefix(base.path())
        .filter(|rest| !rest.is_empty() && base.path().ends_with('/'))
        .ok_or(DatarefRefusal::EscapesBasePath)?;
    // The part below the base must still pass the path rules after the crate's own
    // normalisation and encoding.
    check_path(below_base)
}

impl fmt::Debug for DataRef {
    /// Prints the path only, e.g. `DataRef("customers/42")`: the query may hold personal data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DataRef").field(&self.path).finish()
    }
}

/// Why a `dataref` was refused. The text names the rule, never the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatarefRefusal {
    /// The reference is empty.
    Empty,
    /// The reference has nothing before its query: it would name the base itself.
    EmptyPath,
    /// The reference has a scheme (`http:`, `javascript:`): references must be relative.
    AbsoluteUrl,
    /// The first path segment has a ':' and could be read as a scheme.
    ColonInFirstSegment,
    /// The reference starts with `//` and would name another host.
    NetworkPath,
    /// The reference starts with `/` and would leave the base path.
    AbsolutePath,
    /// The reference has a `#fragment`.
    Fragment,
    /// The reference has a backslash, which some parsers read as '/'.
    Backslash,
    /// The reference has an ASCII control character or a space.
    ControlOrSpace,
    /// The reference has a non-ASCII character (it must be percent-encoded).
    NonAscii,
    /// A path segment is made of dots only (`.`, `..`, `...`; also `..;param`).
    DotSegment,
    /// The path has a percent-escape for '.', '/', '\\', '%' or a control character.
    EncodedDotOrSlash,
    /// The path has a percent-escape of a non-ASCII byte, a space or DEL.
    EncodedNonAscii,
    /// A '%' is not followed by two hex digits.
    MalformedPercentEscape,
    /// The `url` crate could not join the reference onto the base URL.
    NotJoinable,
    /// The joined URL has another scheme, host, port or user than the base URL.
    OtherHost,
    /// The joined URL's path is not below the base URL's path.
    EscapesBasePath,
    /// The base URL cannot have relative references (e.g. `mailto:`); a configuration error.
    BaseNotHierarchical,
    /// The reference is longer than [`MAX_DATAREF_BYTES`].
    TooLong,
}

impl fmt::Display for DatarefRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatarefRefusal::Empty => "empty reference",
            DatarefRefusal::EmptyPath => "empty path",
            DatarefRefusal::AbsoluteUrl => "absolute URL (references must be relative)",
            DatarefRefusal::ColonInFirstSegment => "colon in the first path segment",
            DatarefRefusal::NetworkPath => "network-path reference (other host)",
            DatarefRefusal::AbsolutePath => "absolute path (leaves the base path)",
            DatarefRefusal::Fragment => "fragment not allowed",
            DatarefRefusal::Backslash => "backslash",
            DatarefRefusal::ControlOrSpace => "control character or space",
            DatarefRefusal::NonAscii => "non-ASCII character (must be percent-encoded)",
            DatarefRefusal::DotSegment => "dot segment (path escapes the base path)",
            DatarefRefusal::EncodedDotOrSlash => "percent-encoded dot or slash",
            DatarefRefusal::EncodedNonAscii => "percent-encoded non-ASCII byte, space or DEL in the path",
            DatarefRefusal::MalformedPercentEscape => "malformed percent-escape",
            DatarefRefusal::NotJoinable => "cannot be joined onto the base URL",
            DatarefRefusal::OtherHost => "other host",
            DatarefRefusal::EscapesBasePath => "path escapes the base path",
            DatarefRefusal::BaseNotHierarchical => "base URL cannot take relative references",
            DatarefRefusal::TooLong => {
                return write!(
                    f,
                    "longer than {MAX_DATAREF_BYTES} bytes (a reference names data, it does not carry it)"
                );
            }
        })
    }
}

/// The rules of [`DataRef::parse`], in the order that gives the most telling reason.
fn check_reference(reference: &str) -> Result<(), DatarefRefusal> {
    if reference.is_empty() {
        return Err(DatarefRefusal::Empty);
    }
    if reference.len() > MAX_DATAREF_BYTES {
        return Err(DatarefRefusal::TooLong);
    }
    if !reference.is_ascii() {
        return Err(DatarefRefusal::NonAscii);
    }
    // The `url` crate silently strips tabs, newlines and surrounding spaces: what it would
    // request is then not what was checked.
    if reference.bytes().any(|byte| byte.is_ascii_control() || byte == b' ') {
        return Err(DatarefRefusal::ControlOrSpace);
    }
    // WHATWG URL parsing reads '\' as '/' in http(s) URLs, so `..\admin` climbs.
    if reference.contains('\\') {
        return Err(DatarefRefusal::Backslash);
    }
    if reference.contains('#') {
        return Err(DatarefRefusal::Fragment);
    }
    if reference.starts_with("//") {
        return Err(DatarefRefusal::NetworkPath);
    }
    if reference.starts_with('/') {
        return Err(DatarefRefusal::AbsolutePath);
    }
    let first_segment = reference.split(['/', '?']).next().unwrap_or_default();
    if let Some((scheme, _)) = first_segment.split_once(':') {
        if is_scheme(scheme) {
            return Err(DatarefRefusal::AbsoluteUrl);
        }
        // RFC 3986 4.2: such a segment cannot start a relative-path reference; parsers differ
        // on what they make of it.
        return Err(DatarefRefusal::ColonInFirstSegment);
    }
    let (path, query) = match reference.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (reference, None),
    };
    if path.is_empty() {
        return Err(DatarefRefusal::EmptyPath);
    }
    check_path(path)?;
    if let Some(query) = query {
        check_percent_escapes(query, false)?;
    }
    Ok(())
}

/// `^[A-Za-z][A-Za-z0-9+.-]*$` (RFC 3986 3.1).
fn is_scheme(candidate: &str) -> bool {
    let mut bytes = candidate.bytes();
    bytes.next().is_some_and(|first| first.is_ascii_alphabetic())
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'.' | b'-'))
}

/// Rules for the path part (relative, ASCII): no encoded dots or slashes, no dot segments.
fn check_path(path: &str) -> Result<(), DatarefRefusal> {
    check_percent_escapes(path, true)?;
    for segment in path.split('/') {
        // Servlet containers strip `;parameters` from a segment before resolving dot segments,
        // so `..;x/admin` climbs there although it is a plain name to the `url` crate.
        // A `%3B` is cut too, for servers that decode before stripping.
        let lowered = segment.to_ascii_lowercase();
        let end =
            [lowered.find(';'), lowered.find("%3b")].into_iter().flatten().min().unwrap_or(segment.len());
        let head = segment.get(..end).unwrap_or(segment);
        // `...` too: servers that trim trailing dots (Windows, some proxies) read it as `..`.
        if !head.is_empty() && head.bytes().all(|b| b == b'.') {
            return Err(DatarefRefusal::DotSegment);
        }
    }
    Ok(())
}

/// Every '%' must start a two-hex-digit escape. In the path an escape must not decode to '.',
/// '/', '\\', '%' or a control character: WHATWG URL parsing reads `%2e` as a dot, servers
/// decode `%2f` to '/', and `%25` hides any of these behind a second decoding.
fn check_percent_escapes(part: &str, in_path: bool) -> Result<(), DatarefRefusal> {
    let bytes = part.as_bytes();
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte != b'%' {
            index += 1;
            continue;
        }
        let high = bytes.get(index + 1).and_then(|digit| hex_value(*digit));
        let low = bytes.get(index + 2).and_then(|digit| hex_value(*digit));
        let (Some(high), Some(low)) = (high, low) else {
            return Err(DatarefRefusal::MalformedPercentEscape);
        };
        let decoded = high * 16 + low;
        if in_path && (matches!(decoded, b'.' | b'/' | b'\\' | b'%') || decoded.is_ascii_control()) {
            return Err(DatarefRefusal::EncodedDotOrSlash);
        }
        // Overlong UTF-8 (`%c0%ae`), full-width dots (`%ef%bc%8e`) and an escaped space or DEL
        // (`..%20`) are dots or nothing to owners that decode leniently or trim.
        if in_path && (decoded >= 0x80 || decoded == b' ' || decoded == 0x7f) {
            return Err(DatarefRefusal::EncodedNonAscii);
        }
        index += 3;
    }
    Ok(())
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).and_then(|value| u8::try_from(value).ok())
}
