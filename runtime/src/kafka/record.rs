//! A consumed Kafka message as the envelope parser sees it.
//!
//! rdkafka's `Headers::get`/`iter` unwrap the header name as UTF-8 and would panic the host on a
//! hostile producer's header. So the headers are read here, through librdkafka's C API, and a
//! name that is not UTF-8 is handled as bad input instead.
#![allow(unsafe_code)]

use crate::cloudevents::RawRecord;
use rdkafka::Message;
use rdkafka::bindings as rdsys;
use rdkafka::message::BorrowedMessage;
use std::ffi::{CStr, c_char, c_void};

/// Stands in for a `ce_` header name that is not UTF-8; the envelope refuses it as malformed.
const NOT_UTF8_CE_HEADER: &str = "ce_\u{fffd}";

/// Headers to send, from `(name, value)` pairs (see [`crate::cloudevents::encode`]).
pub fn owned_headers<N: AsRef<str>>(pairs: &[(N, &str)]) -> rdkafka::message::OwnedHeaders {
    pairs.iter().fold(rdkafka::message::OwnedHeaders::new(), |headers, (name, value)| {
        headers.insert(rdkafka::message::Header { key: name.as_ref(), value: Some(value.as_bytes()) })
    })
}

/// The key, value and headers of a message, borrowed from it.
pub fn raw_record<'a>(message: &'a BorrowedMessage<'a>) -> RawRecord<'a> {
    RawRecord { key: message.key(), value: message.payload(), headers: headers(message) }
}

fn headers<'a>(message: &'a BorrowedMessage<'a>) -> Vec<(&'a str, Option<&'a [u8]>)> {
    let mut headers = Vec::new();
    let mut native: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `message.ptr()` is a live message owned by the consumer for the lifetime 'a; the
    // headers it returns are owned by the message and live as long as it does.
    let err = unsafe { rdsys::rd_kafka_message_headers(message.ptr(), &mut native) };
    if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || native.is_null() {
        return headers; // RD_KAFKA_RESP_ERR__NOENT: the message has no headers.
    }
    // SAFETY: `native` is non-null and valid (above).
    let count = unsafe { rdsys::rd_kafka_header_cnt(native) };
    for index in 0..count {
        let mut name: *const c_char = std::ptr::null();
        let mut value: *const c_void = std::ptr::null();
        let mut size = 0usize;
        // SAFETY: `index < count`; the out-pointers are valid locals.
        let err = unsafe { rdsys::rd_kafka_header_get_all(native, index, &mut name, &mut value, &mut size) };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            continue;
        }
        // SAFETY: librdkafka returns a NUL-terminated name and a value of `size` bytes (or null
        // for a null value), both owned by the message for 'a.
        let (name, value) = unsafe {
            let name = CStr::from_ptr(name).to_bytes();
            let value = (!value.is_null()).then(|| std::slice::from_raw_parts(value.cast::<u8>(), size));
            (name, value)
        };
        match std::str::from_utf8(name) {
            Ok(name) => headers.push((name, value)),
            Err(_) if name.starts_with(b"ce_") => headers.push((NOT_UTF8_CE_HEADER, value)),
            // Not a CloudEvents attribute: keyhole ignores it, whatever its name.
            Err(_) => {}
        }
    }
    headers
}
