//! Unit tests of the CloudEvents reader: the record builders they share are here, the tests in
//! [`modes`] (binary mode, content-type, structured mode) and [`dataref`] (the reference rules).

mod dataref;
mod modes;

use super::*;

fn binary_headers() -> Vec<(&'static str, Option<&'static [u8]>)> {
    vec![
        ("ce_specversion", Some(b"1.0".as_slice())),
        ("ce_id", Some(b"evt-1".as_slice())),
        ("ce_source", Some(b"/crm".as_slice())),
        ("ce_type", Some(b"com.example.customer.updated".as_slice())),
        ("ce_dataref", Some(b"customers/42?fields=name".as_slice())),
    ]
}

fn binary(headers: Vec<(&str, Option<&[u8]>)>) -> Result<ReferenceEvent, EnvelopeError> {
    parse(&RawRecord { key: Some(b"42"), value: None, headers })
}

fn with(
    mut headers: Vec<(&'static str, Option<&'static [u8]>)>,
    name: &'static str,
    value: Option<&'static [u8]>,
) -> Vec<(&'static str, Option<&'static [u8]>)> {
    headers.push((name, value));
    headers
}

fn without(
    headers: Vec<(&'static str, Option<&'static [u8]>)>,
    name: &str,
) -> Vec<(&'static str, Option<&'static [u8]>)> {
    headers.into_iter().filter(|(n, _)| *n != name).collect()
}

fn structured(json: &str) -> Result<ReferenceEvent, EnvelopeError> {
    parse(&RawRecord {
        key: None,
        value: Some(json.as_bytes()),
        headers: vec![("content-type", Some(b"application/cloudevents+json; charset=utf-8".as_slice()))],
    })
}

fn refusal(reference: &str) -> DatarefRefusal {
    match DataRef::parse(reference) {
        Err(EnvelopeError::ForbiddenDataref { reason }) => reason,
        other => panic!("{reference:?} was not refused: {other:?}"),
    }
}

fn base() -> url::Url {
    url::Url::parse("https://crm.example.com/api/v1/").unwrap()
}
