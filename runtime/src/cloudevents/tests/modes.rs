//! Tests of reading records in either content mode: binary mode, how `content-type` selects the
//! mode, and structured mode.

use super::*;

// --- binary mode ---

#[test]
fn binary_event_is_read_with_sorted_extensions() {
    let headers = vec![
        ("ce_specversion", Some(b"1.0".as_slice())),
        ("ce_type", Some(b"com.example.customer.updated".as_slice())),
        ("ce_zeta", Some(b"last".as_slice())),
        ("ce_id", Some(b"evt-1".as_slice())),
        ("ce_source", Some(b"/crm".as_slice())),
        ("ce_subject", Some(b"customer-42".as_slice())),
        ("ce_time", Some(b"2024-05-01T12:00:00Z".as_slice())),
        ("ce_correlationid", Some(b"corr-7".as_slice())),
        ("ce_replyto", Some(b"replies".as_slice())),
        ("ce_partitionkey", Some(b"42".as_slice())),
        ("ce_dataref", Some(b"customers/42".as_slice())),
        ("ce_alpha", Some(b"first".as_slice())),
        ("ce_datacontenttype", Some(b"application/json".as_slice())),
        ("traceparent", Some(b"ignored, not a ce_ header".as_slice())),
        ("content-type", Some(b"application/json".as_slice())),
    ];
    let event = parse(&RawRecord { key: Some(b"42"), value: Some(b""), headers }).unwrap();
    assert_eq!(event.id, "evt-1");
    assert_eq!(event.source, "/crm");
    assert_eq!(event.type_, "com.example.customer.updated");
    assert_eq!(event.subject.as_deref(), Some("customer-42"));
    assert_eq!(event.time.as_deref(), Some("2024-05-01T12:00:00Z"));
    assert_eq!(event.dataref.path(), "customers/42");
    assert_eq!(event.correlationid.as_deref(), Some("corr-7"));
    assert_eq!(event.replyto.as_deref(), Some("replies"));
    assert_eq!(event.mode, ContentMode::Binary);
    assert_eq!(
        event.extensions,
        vec![
            ("alpha".to_owned(), "first".to_owned()),
            ("correlationid".to_owned(), "corr-7".to_owned()),
            ("zeta".to_owned(), "last".to_owned()),
        ]
    );
}

#[test]
fn binary_minimal_event_has_no_optional_parts() {
    let event = binary(binary_headers()).unwrap();
    assert_eq!(event.subject, None);
    assert_eq!(event.time, None);
    assert_eq!(event.correlationid, None);
    assert_eq!(event.replyto, None);
    assert!(event.extensions.is_empty());
    assert_eq!(event.dataref, DataRef::parse("customers/42?fields=name").unwrap());
}

#[test]
fn binary_missing_required_attributes_are_refused() {
    for attribute in ["specversion", "id", "source", "type"] {
        let header = format!("ce_{attribute}");
        let error = binary(without(binary_headers(), &header)).unwrap_err();
        assert_eq!(error, EnvelopeError::MissingAttribute { attribute });
        assert_eq!(error.kind(), "missing_attribute");
    }
}

#[test]
fn binary_empty_required_attributes_are_refused() {
    for (attribute, header) in [("id", "ce_id"), ("source", "ce_source"), ("type", "ce_type")] {
        let headers = with(without(binary_headers(), header), header, Some(b""));
        let error = binary(headers).unwrap_err();
        assert_eq!(error, EnvelopeError::EmptyAttribute { attribute });
        assert_eq!(error.kind(), "missing_attribute");
    }
    let error = binary(with(binary_headers(), "ce_time", Some(b""))).unwrap_err();
    assert_eq!(error, EnvelopeError::EmptyAttribute { attribute: "time" });
}

#[test]
fn binary_other_specversion_is_unsupported() {
    for version in [b"0.3".as_slice(), b"1.0.2", b"1", b""] {
        let headers = with(without(binary_headers(), "ce_specversion"), "ce_specversion", Some(version));
        let error = binary(headers).unwrap_err();
        assert_eq!(error, EnvelopeError::UnsupportedSpecversion);
        assert_eq!(error.kind(), "unsupported_specversion");
    }
}

#[test]
fn binary_value_is_inline_data() {
    let error =
        parse(&RawRecord { key: None, value: Some(b"{\"name\":\"Alice\"}"), headers: binary_headers() })
            .unwrap_err();
    assert_eq!(error, EnvelopeError::InlineData { mode: ContentMode::Binary });
    assert_eq!(error.kind(), "inline_data");
    assert!(!error.to_string().contains("Alice"));
}

#[test]
fn binary_ce_data_header_is_inline_data() {
    let error = binary(with(binary_headers(), "ce_data", Some(b"Alice"))).unwrap_err();
    assert_eq!(error.kind(), "inline_data");
}

#[test]
fn binary_missing_dataref_is_refused() {
    let error = binary(without(binary_headers(), "ce_dataref")).unwrap_err();
    assert_eq!(error, EnvelopeError::MissingDataref);
    assert_eq!(error.kind(), "missing_dataref");
}

#[test]
fn binary_hostile_dataref_is_refused() {
    let headers = with(without(binary_headers(), "ce_dataref"), "ce_dataref", Some(b"../admin"));
    let error = binary(headers).unwrap_err();
    assert_eq!(error, EnvelopeError::ForbiddenDataref { reason: DatarefRefusal::DotSegment });
    assert_eq!(error.kind(), "forbidden_dataref");
}

#[test]
fn binary_invalid_attribute_names_are_malformed_headers() {
    for name in ["ce_Foo", "ce_foo-bar", "ce_foo_bar", "ce_", "CE_id", "Ce_x", "ce_é"] {
        let error = binary(with(binary_headers(), name, Some(b"x"))).unwrap_err();
        assert_eq!(
            error,
            EnvelopeError::MalformedHeader { header: name.to_owned(), problem: HeaderProblem::InvalidName },
            "{name}"
        );
        assert_eq!(error.kind(), "malformed_header");
    }
}

#[test]
fn binary_null_header_value_is_malformed() {
    let error = binary(with(binary_headers(), "ce_subject", None)).unwrap_err();
    assert_eq!(
        error,
        EnvelopeError::MalformedHeader { header: "ce_subject".to_owned(), problem: HeaderProblem::NullValue }
    );
}

#[test]
fn binary_duplicated_header_is_malformed() {
    let error = binary(with(binary_headers(), "ce_dataref", Some(b"other/1"))).unwrap_err();
    assert_eq!(
        error,
        EnvelopeError::MalformedHeader {
            header: "ce_dataref".to_owned(),
            problem: HeaderProblem::Duplicated
        }
    );
}

#[test]
fn binary_non_utf8_value_names_the_header() {
    let error = binary(with(binary_headers(), "ce_subject", Some(b"\xff\xfe"))).unwrap_err();
    assert_eq!(error, EnvelopeError::NotUtf8 { header: "ce_subject".to_owned() });
    assert_eq!(error.kind(), "not_utf8");
    assert!(error.to_string().contains("ce_subject"));
}

#[test]
fn non_ce_headers_are_ignored_even_when_odd() {
    let headers = with(binary_headers(), "x-whatever", None);
    let headers = with(headers, "c", Some(b"\xff"));
    assert!(binary(headers).is_ok());
}

#[test]
fn long_header_names_are_truncated_and_escaped_in_errors() {
    let name: &'static str = Box::leak(format!("ce_{}\n", "a".repeat(200)).into_boxed_str());
    let error = binary(with(binary_headers(), name, Some(b"x"))).unwrap_err();
    let shown = error.to_string();
    assert!(!shown.contains('\n'));
    assert!(shown.len() < 150, "{shown}");
}

// --- content mode ---

#[test]
fn content_type_prefix_selects_structured_mode_case_insensitively() {
    let json = r#"{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"a/1"}"#;
    let event = parse(&RawRecord {
        key: None,
        value: Some(json.as_bytes()),
        headers: vec![("Content-Type", Some(b"Application/CloudEvents+JSON".as_slice()))],
    })
    .unwrap();
    assert_eq!(event.mode, ContentMode::Structured);
}

#[test]
fn duplicated_content_type_is_malformed() {
    let error = parse(&RawRecord {
        key: None,
        value: None,
        headers: with(
            with(binary_headers(), "content-type", Some(b"application/json")),
            "content-type",
            Some(b"application/cloudevents+json"),
        ),
    })
    .unwrap_err();
    assert_eq!(error.kind(), "malformed_header");
}

#[test]
fn batch_content_type_is_not_supported() {
    let error = parse(&RawRecord {
        key: None,
        value: Some(b"[]"),
        headers: vec![("content-type", Some(b"application/cloudevents-batch+json".as_slice()))],
    })
    .unwrap_err();
    assert_eq!(error.kind(), "malformed_structured_event");
    assert!(error.to_string().contains("batch"));
}

#[test]
fn other_structured_formats_are_not_supported() {
    let error = parse(&RawRecord {
        key: None,
        value: Some(b"\x01\x02"),
        headers: vec![("content-type", Some(b"application/cloudevents+avro".as_slice()))],
    })
    .unwrap_err();
    assert_eq!(error.kind(), "malformed_structured_event");
}

// --- structured mode ---

#[test]
fn structured_event_is_read_with_canonical_extensions() {
    let event = structured(
        r#"{
            "specversion": "1.0",
            "id": "evt-2",
            "source": "/crm",
            "type": "com.example.customer.updated",
            "subject": "customer-42",
            "time": "2024-05-01T12:00:00Z",
            "datacontenttype": "application/json",
            "dataschema": "https://example.com/schema",
            "dataref": "customers/42",
            "zcount": 7,
            "negative": -3,
            "flag": true,
            "off": false,
            "correlationid": 99,
            "replyto": "replies",
            "partitionkey": "42",
            "causationid": "evt-1"
        }"#,
    )
    .unwrap();
    assert_eq!(event.id, "evt-2");
    assert_eq!(event.source, "/crm");
    assert_eq!(event.type_, "com.example.customer.updated");
    assert_eq!(event.subject.as_deref(), Some("customer-42"));
    assert_eq!(event.time.as_deref(), Some("2024-05-01T12:00:00Z"));
    assert_eq!(event.dataref.path(), "customers/42");
    assert_eq!(event.correlationid.as_deref(), Some("99"));
    assert_eq!(event.replyto.as_deref(), Some("replies"));
    assert_eq!(event.mode, ContentMode::Structured);
    let expected: Vec<(String, String)> = [
        ("causationid", "evt-1"),
        ("correlationid", "99"),
        ("flag", "true"),
        ("negative", "-3"),
        ("off", "false"),
        ("zcount", "7"),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(event.extensions, expected);
}

#[test]
fn structured_data_member_is_inline_data_even_when_null() {
    for member in [r#""data": {"name": "Alice"}"#, r#""data": null"#, r#""data_base64": "QWxpY2U=""#] {
        let json =
            format!(r#"{{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"a/1",{member}}}"#);
        let error = structured(&json).unwrap_err();
        assert_eq!(error, EnvelopeError::InlineData { mode: ContentMode::Structured }, "{member}");
        assert!(!error.to_string().contains("Alice"));
    }
}

#[test]
fn structured_missing_attributes_are_refused() {
    let error = structured(r#"{"specversion":"1.0","source":"s","type":"t","dataref":"a"}"#).unwrap_err();
    assert_eq!(error, EnvelopeError::MissingAttribute { attribute: "id" });
    let error = structured(r#"{"id":"1","source":"s","type":"t","dataref":"a"}"#).unwrap_err();
    assert_eq!(error, EnvelopeError::MissingAttribute { attribute: "specversion" });
    let error = structured(r#"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#).unwrap_err();
    assert_eq!(error, EnvelopeError::MissingDataref);
}

#[test]
fn structured_other_specversion_is_unsupported() {
    let error =
        structured(r#"{"specversion":"0.3","id":"1","source":"s","type":"t","dataref":"a"}"#).unwrap_err();
    assert_eq!(error, EnvelopeError::UnsupportedSpecversion);
}

#[test]
fn structured_non_string_attributes_are_malformed() {
    for json in [
        r#"{"specversion":1.0,"id":"1","source":"s","type":"t","dataref":"a"}"#,
        r#"{"specversion":"1.0","id":1,"source":"s","type":"t","dataref":"a"}"#,
        r#"{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":42}"#,
        r#"{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"a","time":null}"#,
    ] {
        let error = structured(json).unwrap_err();
        assert_eq!(error.kind(), "malformed_structured_event", "{json}");
    }
}

#[test]
fn structured_extension_of_wrong_type_is_malformed() {
    for value in ["null", "[1]", r#"{"a":1}"#, "1.5"] {
        let json = format!(
            r#"{{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"a","ext":{value}}}"#
        );
        let error = structured(&json).unwrap_err();
        assert_eq!(error.kind(), "malformed_structured_event", "{value}");
        assert!(error.to_string().contains("`ext`"), "{error}");
    }
}

#[test]
fn structured_invalid_member_name_is_malformed() {
    let error =
        structured(r#"{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"a","Bad-Name":"x"}"#)
            .unwrap_err();
    assert_eq!(error.kind(), "malformed_structured_event");
}

#[test]
fn structured_duplicated_member_is_refused_not_last_wins() {
    let error = structured(
        r#"{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"a/1","dataref":"../admin"}"#,
    )
    .unwrap_err();
    assert_eq!(error.kind(), "malformed_structured_event");
    assert!(error.to_string().contains("dataref"));
    assert!(!error.to_string().contains("admin"));
}

#[test]
fn structured_value_must_be_a_json_object() {
    for value in ["", "[1,2]", "\"text\"", "{\"specversion\": \"1.0\", \"secret", "{} trailing", "not json"] {
        let error = structured(value).unwrap_err();
        assert_eq!(error.kind(), "malformed_structured_event", "{value}");
    }
    let error = structured("[\"Alice\"]").unwrap_err();
    assert!(error.to_string().contains("not a JSON object"), "{error}");
    assert!(!error.to_string().contains("Alice"));
}

#[test]
fn structured_syntax_error_gives_position_without_content() {
    let error = structured("{\"specversion\": \"1.0\",\n \"id\": Alice}").unwrap_err();
    let shown = error.to_string();
    assert!(shown.contains("line 2"), "{shown}");
    assert!(!shown.contains("Alice"), "{shown}");
}

#[test]
fn structured_hostile_dataref_is_refused() {
    let error = structured(
        r#"{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"http://127.0.0.1:9999/x"}"#,
    )
    .unwrap_err();
    assert_eq!(error, EnvelopeError::ForbiddenDataref { reason: DatarefRefusal::AbsoluteUrl });
}

#[test]
fn structured_ignores_ce_headers() {
    let event = parse(&RawRecord {
        key: None,
        value: Some(br#"{"specversion":"1.0","id":"1","source":"s","type":"t","dataref":"a/1"}"#),
        headers: vec![
            ("content-type", Some(b"application/cloudevents+json".as_slice())),
            ("ce_dataref", Some(b"../admin".as_slice())),
        ],
    })
    .unwrap();
    assert_eq!(event.dataref.path(), "a/1");
}

// --- control characters (CloudEvents type system) ---

#[test]
fn an_attribute_with_a_control_character_is_refused_in_either_mode_and_its_id_is_not_kept() {
    let forged: &'static [u8] = b"evt-1\n2026-12-06T00:00:00.000000Z  INFO keyhole: forged line";
    let headers = with(without(binary_headers(), "ce_id"), "ce_id", Some(forged));
    let record = RawRecord { key: None, value: None, headers };
    let refusal = read(&record).unwrap_err();
    assert_eq!(refusal.error, EnvelopeError::ControlCharacter { attribute: "id".into() });
    assert_eq!(refusal.error.kind(), "control_character");
    assert_eq!(refusal.id, None, "an id that could forge a log line is not recorded");
    // C1 controls and DEL too, in any attribute, extensions included.
    for value in ["a\u{7f}b", "a\u{85}b", "a\u{9f}", "\u{0}", "tab\there"] {
        let leaked: &'static str = Box::leak(value.to_string().into_boxed_str());
        let headers = with(binary_headers(), "ce_subject", Some(leaked.as_bytes()));
        assert_eq!(
            binary(headers).unwrap_err(),
            EnvelopeError::ControlCharacter { attribute: "subject".into() },
            "{value:?}"
        );
    }
    let json = r#"{"specversion":"1.0","id":"evt-1","source":"/crm","type":"t","dataref":"customers/1","note":"a\u000db"}"#;
    assert_eq!(structured(json).unwrap_err(), EnvelopeError::ControlCharacter { attribute: "note".into() });
    let json = r#"{"specversion":"1.0","id":"evt\n1","source":"/crm","type":"t","dataref":"customers/1"}"#;
    let record = RawRecord {
        key: None,
        value: Some(json.as_bytes()),
        headers: vec![("content-type", Some(b"application/cloudevents+json".as_slice()))],
    };
    assert_eq!(read(&record).unwrap_err().id, None);
    // Printable non-ASCII stays allowed.
    assert!(binary(with(binary_headers(), "ce_subject", Some("Zoë – 日本".as_bytes()))).is_ok());
}
