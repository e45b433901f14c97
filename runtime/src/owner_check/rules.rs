//! The rules an owner's answers are held to beyond their status, each a pure function so that it
//! is tested on its own: a refusal carries no data, a released answer says what it is, and a
//! `Retry-After` is one keyhole can read.

use super::shorten;
use crate::resolve::parse_retry_after;
use http::HeaderValue;
use std::time::SystemTime;

/// The largest body a refusal (401, 403, 404, 410, 451) may carry: room for an RFC 9457 problem
/// object with a `type`, `title`, `status` and a sentence of `detail`, not for a record.
pub const MAX_REFUSAL_BODY_BYTES: usize = 1024;

/// The only media type a refusal's body may have: RFC 9457 problem details, a vocabulary for
/// saying what went wrong and nothing else.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Why a refusal's body breaks the rule, or None when it keeps it: empty, or a JSON object of at
/// most [`MAX_REFUSAL_BODY_BYTES`] sent as [`PROBLEM_JSON`].
///
/// keyhole never reads a refusal's body, so a body can only do harm: whatever personal data it
/// holds travels to keyhole's host and through every proxy and log on the way for nothing, after
/// the owner decided not to release it. The rule is strict so that it is checkable: an
/// `application/json` error body cannot be told from the record itself, a problem object can.
///
/// `complete` is false when more than `prefix` was sent (or the body did not arrive whole).
pub fn refusal_body_problem(
    content_type: Option<&HeaderValue>,
    prefix: &[u8],
    complete: bool,
) -> Option<String> {
    if prefix.is_empty() && complete {
        return None;
    }
    let rule = format!(
        "but a refusal carries no data: an empty body, or at most {MAX_REFUSAL_BODY_BYTES} bytes of {PROBLEM_JSON}"
    );
    if !complete {
        return Some(format!(
            "a body of more than {MAX_REFUSAL_BODY_BYTES} bytes (or one that did not arrive whole), {rule}"
        ));
    }
    let size = prefix.len();
    let media_type = content_type.and_then(|value| value.to_str().ok()).map(essence);
    match media_type.as_deref() {
        Some(PROBLEM_JSON) => {}
        Some(other) => return Some(format!("{size} bytes of {other}, {rule}")),
        None => return Some(format!("{size} bytes without a readable Content-Type, {rule}")),
    }
    match serde_json::from_slice::<serde_json::Value>(prefix) {
        Ok(serde_json::Value::Object(_)) => None,
        _ => Some(format!("{size} bytes of {PROBLEM_JSON} that are not a JSON object, {rule}")),
    }
}

/// Why a `Retry-After` value on an answer keyhole retries (408, 429, 5xx) cannot be read, or
/// None when keyhole reads it: delta-seconds or an HTTP-date (RFC 9110 §10.2.3). keyhole ignores
/// an unreadable one and backs off on its own, which is not what the owner asked for.
pub fn retry_after_problem(value: &HeaderValue, now: SystemTime) -> Option<String> {
    let Ok(text) = value.to_str() else {
        return Some(
            "a Retry-After that is not visible ASCII: neither delta-seconds nor an HTTP-date".into(),
        );
    };
    match parse_retry_after(text, now) {
        Some(_) => None,
        None => Some(format!(
            "Retry-After {:?} is neither delta-seconds (`120`) nor an HTTP-date (`Sun, 06 Nov 1994 08:49:37 \
             GMT`): keyhole ignores it",
            shorten(text, 64)
        )),
    }
}

/// Whether a released answer's `Content-Type` is the one a fixture expects: the media type alone
/// when the fixture names no parameters (`application/json` matches `application/json;
/// charset=utf-8`), else the whole value; case and spaces around separators do not count.
pub fn content_type_matches(expected: &str, received: &str) -> bool {
    if expected.contains(';') {
        normalised(expected) == normalised(received)
    } else {
        essence(expected) == essence(received)
    }
}

/// `type/subtype` of a media type, lower-cased.
fn essence(value: &str) -> String {
    value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

fn normalised(value: &str) -> String {
    value
        .split(';')
        .map(|part| part.split('=').map(str::trim).collect::<Vec<_>>().join("="))
        .collect::<Vec<_>>()
        .join(";")
        .to_ascii_lowercase()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::{MAX_REFUSAL_BODY_BYTES, content_type_matches, refusal_body_problem, retry_after_problem};
    use http::HeaderValue;
    use std::time::{Duration, SystemTime};

    fn header(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).unwrap()
    }

    #[test]
    fn retry_after_in_seconds_or_as_an_http_date_is_well_formed() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for value in [
            "0",
            "120",
            " 30 ",
            "99999999999999999999999",
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            &httpdate::fmt_http_date(now + Duration::from_secs(90)),
        ] {
            assert_eq!(retry_after_problem(&header(value), now), None, "{value:?}");
        }
    }

    #[test]
    fn retry_after_keyhole_cannot_read_is_malformed() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for value in
            ["", "soon", "-1", "1.5", "2 minutes", "120s", "2026-12-06T10:00:00Z", "Sun, 06 Nov 1994"]
        {
            let problem =
                retry_after_problem(&header(value), now).unwrap_or_else(|| panic!("{value:?} passed"));
            assert!(problem.contains("neither delta-seconds"), "{problem}");
        }
        let opaque = HeaderValue::from_bytes(b"\xe2\x8f\xb3").unwrap();
        assert!(retry_after_problem(&opaque, now).unwrap().contains("not visible ASCII"));
        let long = "x".repeat(500);
        assert!(retry_after_problem(&header(&long), now).unwrap().len() < 200, "quoted in full");
    }

    #[test]
    fn an_empty_refusal_or_a_short_problem_object_carries_no_data() {
        assert_eq!(refusal_body_problem(None, b"", true), None);
        assert_eq!(refusal_body_problem(Some(&header("text/html")), b"", true), None);
        let problem = br#"{"type":"about:blank","title":"Forbidden","status":403,"detail":"no consent"}"#;
        for content_type in ["application/problem+json", "Application/Problem+JSON; charset=utf-8"] {
            assert_eq!(
                refusal_body_problem(Some(&header(content_type)), problem, true),
                None,
                "{content_type}"
            );
        }
        let largest = format!(r#"{{"detail":"{}"}}"#, "x".repeat(MAX_REFUSAL_BODY_BYTES - 13));
        assert_eq!(largest.len(), MAX_REFUSAL_BODY_BYTES);
        assert_eq!(
            refusal_body_problem(Some(&header("application/problem+json")), largest.as_bytes(), true),
            None
        );
    }

    #[test]
    fn a_refusal_with_any_other_body_breaks_the_rule() {
        let record = br#"{"name":"Ada","email":"ada@example.com"}"#;
        let problem_json = Some(header("application/problem+json"));
        let cases: [(Option<HeaderValue>, &[u8], bool, &str); 6] = [
            (Some(header("application/json")), record, true, "40 bytes of application/json"),
            (None, record, true, "without a readable Content-Type"),
            (Some(header("text/plain")), b"Forbidden", true, "9 bytes of text/plain"),
            (problem_json.clone(), b"[1,2]", true, "not a JSON object"),
            (problem_json.clone(), b"{\"detail\":", true, "not a JSON object"),
            (problem_json, b"{}", false, "more than 1024 bytes"),
        ];
        for (content_type, body, complete, reason) in cases {
            let problem = refusal_body_problem(content_type.as_ref(), body, complete)
                .unwrap_or_else(|| panic!("{reason}: passed"));
            assert!(problem.contains(reason), "{problem}");
            assert!(problem.contains("a refusal carries no data"), "{problem}");
            assert!(!problem.contains("ada@example.com"), "the body is never quoted: {problem}");
        }
    }

    #[test]
    fn content_types_match_on_the_media_type_unless_parameters_are_named() {
        assert!(content_type_matches("application/json", "application/json"));
        assert!(content_type_matches("application/json", "Application/JSON; charset=utf-8"));
        assert!(content_type_matches("application/json; charset=utf-8", "application/json;charset=UTF-8"));
        assert!(!content_type_matches("application/json; charset=utf-8", "application/json"));
        assert!(!content_type_matches("application/json", "text/json"));
        assert!(!content_type_matches("application/json", "application/jsonx"));
    }
}
