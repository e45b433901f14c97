//! Prints what the simulator saw: per event, what the handler received and answered, or why it
//! never saw the data; then the totals. Readable by a person, or one JSON object per line.

use super::EventResult;
use crate::config::Stage;
use crate::records::audit::Decision;
use crate::sandbox::Reply;
use base64::Engine as _;
use std::fmt::Write as _;

/// How a result reads in one word, as a handler author thinks of it.
pub fn verdict(result: &EventResult) -> &'static str {
    match &result.outcome.decision {
        Decision::Delivered { .. } => "delivered",
        Decision::ConsentDenied { .. } => "denied",
        Decision::Gone { .. } => "gone",
        Decision::Refused { .. } => "refused",
        Decision::Failed { kind: "deadline_exceeded", .. } => "deadline exceeded",
        Decision::Failed { stage: Stage::Handler, .. } => "handler error",
        Decision::Failed { .. } => "failed",
    }
}

/// Whether the handler itself failed on any event.
pub fn handler_failed(results: &[EventResult]) -> bool {
    results.iter().any(|r| matches!(r.outcome.decision, Decision::Failed { stage: Stage::Handler, .. }))
}

fn why(decision: &Decision) -> String {
    match decision {
        Decision::Delivered { .. } => String::new(),
        Decision::ConsentDenied { status: 451 } => {
            "the owner may not release it (451): the handler never saw it".into()
        }
        Decision::ConsentDenied { status } => {
            format!("the end user's consent is missing or withdrawn ({status}): the handler never saw it")
        }
        Decision::Gone { status: 410 } => "the record was erased (410): the handler never saw it".into(),
        Decision::Gone { status } => {
            format!("the owner has no such record ({status}): the handler never saw it")
        }
        Decision::Refused { reason, .. } => format!("refused before anyone was asked: {reason}"),
        Decision::Failed { reason, .. } => reason.clone(),
    }
}

/// The reply's data as text when it is UTF-8, else base64.
fn reply_text(reply: &Reply) -> String {
    match std::str::from_utf8(&reply.data) {
        Ok(text) => text.to_string(),
        Err(_) => format!("(base64) {}", base64::engine::general_purpose::STANDARD.encode(&reply.data)),
    }
}

/// The human-readable report.
pub fn text(handler: &str, results: &[EventResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} event(s) through {handler}\n", results.len());
    for result in results {
        let event = &result.event;
        let _ = write!(out, "  {:<17}  {}  {}", verdict(result), event.id, event.dataref);
        if let Some(note) = &event.note {
            let _ = write!(out, "  ({note})");
        }
        out.push('\n');
        match &result.outcome.decision {
            Decision::Delivered { reply: Some(reply), data_bytes, .. } => {
                let _ = writeln!(
                    out,
                    "                     received {data_bytes} bytes; replied {} ({}): {}",
                    reply.type_,
                    reply.datacontenttype,
                    reply_text(reply)
                );
            }
            Decision::Delivered { reply: None, data_bytes, .. } => {
                let _ = writeln!(out, "                     received {data_bytes} bytes; no reply");
            }
            other => {
                let _ = writeln!(out, "                     {}", why(other));
            }
        }
    }
    let count = |word: &str| results.iter().filter(|r| verdict(r) == word).count();
    let _ = writeln!(
        out,
        "\ntotals: {} delivered, {} denied, {} gone, {} refused, {} handler error, {} deadline exceeded, {} failed",
        count("delivered"),
        count("denied"),
        count("gone"),
        count("refused"),
        count("handler error"),
        count("deadline exceeded"),
        count("failed"),
    );
    out
}

/// One JSON object per event.
pub fn json_lines(results: &[EventResult]) -> String {
    let mut out = String::new();
    for result in results {
        let decision = &result.outcome.decision;
        let mut value = serde_json::json!({
            "event_id": result.event.id,
            "dataref": result.event.dataref,
            "outcome": verdict(result),
            "decision": decision.label(),
        });
        match decision {
            Decision::Delivered { reply: Some(reply), .. } => {
                let mut json =
                    serde_json::json!({ "type": reply.type_, "datacontenttype": reply.datacontenttype });
                match std::str::from_utf8(&reply.data) {
                    Ok(text) => json["data"] = text.into(),
                    Err(_) => {
                        json["data_base64"] =
                            base64::engine::general_purpose::STANDARD.encode(&reply.data).into()
                    }
                }
                value["reply"] = json;
            }
            Decision::Delivered { reply: None, .. } => value["reply"] = serde_json::Value::Null,
            Decision::ConsentDenied { status } | Decision::Gone { status } => {
                value["status"] = (*status).into()
            }
            Decision::Refused { kind, reason } | Decision::Failed { kind, reason, .. } => {
                value["kind"] = (*kind).into();
                value["reason"] = reason.as_str().into();
            }
        }
        out.push_str(&value.to_string());
        out.push('\n');
    }
    out
}
