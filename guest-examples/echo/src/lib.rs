//! Replies with exactly what reached it: the event's attributes and its data, as JSON.
//!
//! keyhole's tests use this reply to see what a handler was given. The reply is a JSON object
//! with keys in sorted order: `data` (the data as a string when it is UTF-8) or `data_base64`
//! (standard base64 otherwise), `datacontenttype`, `extensions` (an object of name to value),
//! `id`, `source`, `subject`, `time` and `type`; absent attributes are `null`.

use base64::Engine as _;
use keyhole_guest::{Event, Guest, HandlerError, Reply};
use serde_json::{Map, Value, json};

struct Echo;

impl Guest for Echo {
    fn handle(event: Event) -> Result<Option<Reply>, HandlerError> {
        let extensions: Map<String, Value> =
            event.extensions.into_iter().map(|e| (e.name, Value::String(e.value))).collect();
        let mut body = json!({
            "id": event.id,
            "source": event.source,
            "type": event.type_,
            "subject": event.subject,
            "time": event.time,
            "datacontenttype": event.datacontenttype,
            "extensions": extensions,
        });
        let (key, data) = match String::from_utf8(event.data) {
            Ok(text) => ("data", text),
            Err(bytes) => {
                ("data_base64", base64::engine::general_purpose::STANDARD.encode(bytes.into_bytes()))
            }
        };
        body[key] = Value::String(data);
        Ok(Some(Reply {
            type_: "keyhole.example.echo".to_string(),
            datacontenttype: "application/json".to_string(),
            data: body.to_string().into_bytes(),
        }))
    }
}

keyhole_guest::export_handler!(Echo);
