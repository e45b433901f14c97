//! Tests of the `dataref` rules, of resolving against a base URL, and of what errors may show.

use super::*;

// --- dataref ---

#[test]
fn hostile_references_are_refused_with_their_reason() {
    use DatarefRefusal as R;
    let cases = [
        ("", R::Empty),
        ("?x=1", R::EmptyPath),
        ("http://127.0.0.1:9999/x", R::AbsoluteUrl),
        ("https://crm.example.com/api/v1/x", R::AbsoluteUrl),
        ("javascript:alert(1)", R::AbsoluteUrl),
        ("C:/windows", R::AbsoluteUrl),
        ("1a:b", R::ColonInFirstSegment),
        ("//169.254.169.254/latest/meta-data", R::NetworkPath),
        ("/etc/passwd", R::AbsolutePath),
        ("../admin", R::DotSegment),
        ("customers/../../admin", R::DotSegment),
        ("customers/./42", R::DotSegment),
        ("customers/..", R::DotSegment),
        ("..", R::DotSegment),
        ("customers/..;x/admin", R::DotSegment),
        ("customers/..%3Bx/admin", R::DotSegment),
        ("customers/%2e%2e/admin", R::EncodedDotOrSlash),
        ("customers/%2E%2E/admin", R::EncodedDotOrSlash),
        ("%2e%2e/x", R::EncodedDotOrSlash),
        ("customers/.%2e/admin", R::EncodedDotOrSlash),
        ("customers/..%2fadmin", R::EncodedDotOrSlash),
        ("customers%2f..%2fadmin", R::EncodedDotOrSlash),
        ("customers%2F42", R::EncodedDotOrSlash),
        ("customers/%252e%252e/admin", R::EncodedDotOrSlash),
        ("customers/%5c..", R::EncodedDotOrSlash),
        ("customers/%00", R::EncodedDotOrSlash),
        ("customers/%7f", R::EncodedDotOrSlash),
        ("customers\\..\\admin", R::Backslash),
        ("customers/42#frag", R::Fragment),
        ("customers/42?x=1#frag", R::Fragment),
        ("customers/4 2", R::ControlOrSpace),
        ("customers/42\n", R::ControlOrSpace),
        ("\tcustomers/42", R::ControlOrSpace),
        ("customers/é", R::NonAscii),
        ("customers/%zz", R::MalformedPercentEscape),
        ("customers/%2", R::MalformedPercentEscape),
        ("customers/42?q=%", R::MalformedPercentEscape),
        // Read as a traversal by owners that decode overlong UTF-8 or full-width dots, or trim
        // trailing dots and spaces (an attack review's four vectors).
        ("%c0%ae%c0%ae/secret", R::EncodedNonAscii),
        ("%ef%bc%8e%ef%bc%8e/secret", R::EncodedNonAscii),
        ("a/..%20/secret", R::EncodedNonAscii),
        (".../secret", R::DotSegment),
        ("customers/....;x", R::DotSegment),
        ("customers/caf%C3%A9", R::EncodedNonAscii),
        ("customers/a%20b", R::EncodedNonAscii),
        ("customers/...", R::DotSegment),
    ];
    for (reference, expected) in cases {
        assert_eq!(refusal(reference), expected, "{reference:?}");
    }
}

#[test]
fn plain_references_are_accepted() {
    for reference in [
        "customers/42",
        "customers/42/",
        "customers/a%22b",
        "customers/a..b",
        "customers/.hidden",
        "customers/42?name=caf%C3%A9&q=a%20b",
        "customers/42:profile",
        "customers/42?next=../admin&path=%2e%2e%2f",
        "42",
    ] {
        assert!(DataRef::parse(reference).is_ok(), "{reference:?}");
    }
}

#[test]
fn query_is_kept_but_never_shown() {
    let dataref = DataRef::parse("customers/42?fields=name").unwrap();
    assert_eq!(dataref.path(), "customers/42");
    let debug = format!("{dataref:?}");
    assert_eq!(debug, r#"DataRef("customers/42")"#);
    assert!(!debug.contains("fields"));
    let event = binary(binary_headers()).unwrap();
    assert!(!format!("{event:?}").contains("fields"));
    let url = dataref.resolve_against(&base()).unwrap();
    assert_eq!(url.as_str(), "https://crm.example.com/api/v1/customers/42?fields=name");
}

#[test]
fn errors_never_show_values_or_queries() {
    let secret = "alice%40example.com";
    let forbidden = [
        format!("customers/%2e%2e/x?email={secret}"),
        format!("customers/42?email={secret}#frag"),
        format!("http://evil.example/?email={secret}"),
        format!("customers/42?email={secret}%"),
    ];
    for reference in &forbidden {
        let shown = DataRef::parse(reference).unwrap_err().to_string();
        assert!(!shown.contains(secret), "{shown}");
        assert!(!shown.contains("email"), "{shown}");
    }

    let headers =
        with(without(binary_headers(), "ce_dataref"), "ce_dataref", Some(b"../x?email=alice%40example.com"));
    let shown = binary(headers).unwrap_err().to_string();
    assert!(!shown.contains("email"), "{shown}");

    let headers =
        with(without(binary_headers(), "ce_specversion"), "ce_specversion", Some(b"alice@example.com"));
    let shown = binary(headers).unwrap_err().to_string();
    assert!(!shown.contains("alice"), "{shown}");

    let shown = binary(with(binary_headers(), "ce_subject", Some(b"alice\xff"))).unwrap_err().to_string();
    assert!(!shown.contains("alice"), "{shown}");

    let shown = structured(r#"{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"a","ext":{"email":"alice@example.com"}}"#)
        .unwrap_err()
        .to_string();
    assert!(!shown.contains("alice"), "{shown}");
}

#[test]
fn resolution_stays_under_the_base_path() {
    let url = DataRef::parse("customers/42").unwrap().resolve_against(&base()).unwrap();
    assert_eq!(url.as_str(), "https://crm.example.com/api/v1/customers/42");
}

#[test]
fn base_without_trailing_slash_keeps_its_last_segment() {
    let base = url::Url::parse("https://crm.example.com/api/v1?token=x#top").unwrap();
    let url = DataRef::parse("customers/42").unwrap().resolve_against(&base).unwrap();
    assert_eq!(url.as_str(), "https://crm.example.com/api/v1/customers/42");
}

#[test]
fn resolution_keeps_the_base_port_and_encodes_odd_characters() {
    let base = url::Url::parse("http://127.0.0.1:8080/owner/").unwrap();
    let url = DataRef::parse("customers/a\"b").unwrap().resolve_against(&base).unwrap();
    assert_eq!(url.as_str(), "http://127.0.0.1:8080/owner/customers/a%22b");
}

#[test]
fn resolution_rechecks_references_that_bypassed_parse() {
    // Built directly to prove `resolve_against` does not rely on `parse` alone.
    let hostile = [
        ("../admin", DatarefRefusal::EscapesBasePath),
        ("//evil.example/x", DatarefRefusal::OtherHost),
        ("http://evil.example/api/v1/x", DatarefRefusal::OtherHost),
        ("https://crm.example.com:8443/api/v1/x", DatarefRefusal::OtherHost),
        ("/etc/passwd", DatarefRefusal::EscapesBasePath),
        // The `url` crate reads `%2e%2e` as `..` (WHATWG), so this climbs two levels.
        ("customers/%2e%2e/%2e%2e/%2e%2e/x", DatarefRefusal::EscapesBasePath),
        ("customers%2f..%2fadmin", DatarefRefusal::EncodedDotOrSlash),
        ("customers/..;/x", DatarefRefusal::DotSegment),
    ];
    for (path, expected) in hostile {
        let dataref = DataRef { path: path.to_owned(), query: None };
        assert_eq!(
            dataref.resolve_against(&base()),
            Err(EnvelopeError::ForbiddenDataref { reason: expected }),
            "{path:?}"
        );
    }
}

#[test]
fn non_hierarchical_base_is_refused() {
    let base = url::Url::parse("mailto:owner@example.com").unwrap();
    let error = DataRef::parse("customers/42").unwrap().resolve_against(&base).unwrap_err();
    assert_eq!(error, EnvelopeError::ForbiddenDataref { reason: DatarefRefusal::BaseNotHierarchical });
}

#[test]
fn every_kind_label_is_stable() {
    let errors = [
        (EnvelopeError::MissingAttribute { attribute: "id" }, "missing_attribute"),
        (EnvelopeError::EmptyAttribute { attribute: "id" }, "missing_attribute"),
        (
            EnvelopeError::MalformedHeader { header: "ce_x".to_owned(), problem: HeaderProblem::Duplicated },
            "malformed_header",
        ),
        (EnvelopeError::NotUtf8 { header: "ce_x".to_owned() }, "not_utf8"),
        (EnvelopeError::UnsupportedSpecversion, "unsupported_specversion"),
        (EnvelopeError::InlineData { mode: ContentMode::Binary }, "inline_data"),
        (EnvelopeError::MissingDataref, "missing_dataref"),
        (EnvelopeError::ForbiddenDataref { reason: DatarefRefusal::Fragment }, "forbidden_dataref"),
        (EnvelopeError::MalformedStructuredEvent { detail: String::new() }, "malformed_structured_event"),
    ];
    for (error, kind) in errors {
        assert_eq!(error.kind(), kind);
    }
}

#[test]
fn a_redirect_is_followed_only_where_a_reference_could_lead() {
    let base = url::Url::parse("http://127.0.0.1:8080/owner/").unwrap();
    let at = |target: &str| check_below(&base, &url::Url::parse(target).unwrap());
    assert_eq!(at("http://127.0.0.1:8080/owner/customers/42"), Ok(()));
    for (target, reason) in [
        ("http://127.0.0.1:8080/owner/%c0%ae%c0%ae/secret", DatarefRefusal::EncodedNonAscii),
        ("http://127.0.0.1:8080/owner/.../secret", DatarefRefusal::DotSegment),
        ("http://127.0.0.1:8080/owner/a/..%20/secret", DatarefRefusal::EncodedNonAscii),
        // The `url` crate reads `%2e%2e` as `..` and climbs out.
        ("http://127.0.0.1:8080/owner/%2e%2e/secret", DatarefRefusal::EscapesBasePath),
        ("http://127.0.0.1:8080/owner", DatarefRefusal::EscapesBasePath),
        ("http://127.0.0.1:8080/ownerx/a", DatarefRefusal::EscapesBasePath),
        ("http://127.0.0.1:8080/admin", DatarefRefusal::EscapesBasePath),
        ("http://user@127.0.0.1:8080/owner/a", DatarefRefusal::OtherHost),
        ("http://127.0.0.1:8081/owner/a", DatarefRefusal::OtherHost),
        ("https://127.0.0.1:8080/owner/a", DatarefRefusal::OtherHost),
        ("http://127.0.0.1:8080/owner/a#x", DatarefRefusal::Fragment),
    ] {
        assert_eq!(at(target), Err(reason), "{target}");
    }
}
