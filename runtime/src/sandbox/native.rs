//! A native stand-in for the `echo` guest, compiled only into the benchmark's second binary
//! (`cargo build --features bench-native-handler`, see scripts/bench.sh): it builds the same
//! reply as `guest-examples/echo` in host code, with no store, no instance and no copy into
//! or out of a sandbox. The difference between the two runs is what the Wasm sandbox costs per
//! event. Never in a shipped binary: it runs no tenant code at all.

use super::{Event, Reply};
use base64::Engine as _;
use serde_json::{Map, Value, json};

/// What the `echo` guest replies to `event`.
pub(super) fn echo(event: &Event) -> Reply {
    let extensions: Map<String, Value> =
        event.extensions.iter().map(|e| (e.name.clone(), Value::String(e.value.clone()))).collect();
    let mut body = json!({
        "id": event.id,
        "source": event.source,
        "type": event.type_,
        "subject": event.subject,
        "time": event.time,
        "datacontenttype": event.datacontenttype,
        "extensions": extensions,
    });
    let (key, data) = match std::str::from_utf8(&event.data) {
        Ok(text) => ("data", text.to_string()),
        Err(_) => ("data_base64", base64::engine::general_purpose::STANDARD.encode(&event.data)),
    };
    body[key] = Value::String(data);
    Reply {
        type_: "keyhole.example.echo".to_string(),
        datacontenttype: "application/json".to_string(),
        data: body.to_string().into_bytes(),
    }
}
