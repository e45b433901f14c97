//! Hostile: returns a reply whose `type` is not valid UTF-8, which the component model forbids.
#![allow(unsafe_code)]
use keyhole_guest::{Event, Guest, HandlerError, Reply};

struct Hostile;

impl Guest for Hostile {
    fn handle(_event: Event) -> Result<Option<Reply>, HandlerError> {
        // SAFETY: deliberately not safe: this breaks the `string` invariant to test the host.
        let type_ = unsafe { String::from_utf8_unchecked(vec![0xC3, 0x28, 0xFF]) };
        Ok(Some(Reply { type_, datacontenttype: "text/plain".into(), data: Vec::new() }))
    }
}

keyhole_guest::export_handler!(Hostile);
