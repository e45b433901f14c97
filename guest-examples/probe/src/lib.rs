//! A well-behaved handler that uses as much of each resource as the event asks, so tests can
//! run it close to a limit (the memory is held while it spins): `{"spin_ms": 0, "alloc_bytes": 0, "reply_bytes": 0, "log_bytes": 0,
//! "stdout_bytes": 0, "fail": null, "count_calls": false}` (every field optional). It replies
//! with `reply_bytes` bytes of `x`; with `count_calls`, with the number of calls this instance
//! has served (to show that no state survives between events); with `fail` set to `retryable`
//! or `permanent`, with that error.

use keyhole_guest::{Event, Guest, HandlerError, Level, Reply, log};
use serde::Deserialize;
use std::hint::black_box;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Ask {
    spin_ms: u64,
    alloc_bytes: usize,
    reply_bytes: usize,
    log_bytes: usize,
    stdout_bytes: usize,
    fail: Option<String>,
    count_calls: bool,
}

/// Calls served by this instance. keyhole gives every event a fresh instance, so it is always 1
/// there.
static CALLS: AtomicU32 = AtomicU32::new(0);

struct Probe;

impl Guest for Probe {
    fn handle(event: Event) -> Result<Option<Reply>, HandlerError> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        let ask: Ask = serde_json::from_slice(&event.data)
            .map_err(|e| HandlerError::Permanent(format!("not a probe request: {e}")))?;

        // Touch every page so the memory is really committed, and hold it while spinning: an
        // instance that keeps its memory for its whole call.
        let block = black_box(vec![1u8; ask.alloc_bytes]);
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(ask.spin_ms) {
            black_box(());
        }
        drop(block);

        let line = "x".repeat(99);
        for _ in 0..ask.log_bytes / 100 {
            log(Level::Debug, &line);
        }
        let mut out = std::io::stdout().lock();
        for _ in 0..ask.stdout_bytes / 100 {
            writeln!(out, "{line}").map_err(|e| HandlerError::Retryable(e.to_string()))?;
        }

        match ask.fail.as_deref() {
            Some("retryable") => return Err(HandlerError::Retryable("asked to fail".into())),
            Some(_) => return Err(HandlerError::Permanent("asked to fail".into())),
            None => {}
        }
        let data = if ask.count_calls { calls.to_string().into_bytes() } else { vec![b'x'; ask.reply_bytes] };
        Ok(Some(Reply {
            type_: "keyhole.example.probe".to_string(),
            datacontenttype: "application/octet-stream".to_string(),
            data,
        }))
    }
}

keyhole_guest::export_handler!(Probe);
