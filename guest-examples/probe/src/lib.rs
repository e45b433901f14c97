//! A well-behaved handler that uses as much of each resource as the event asks, so tests can
//! run it close to a limit: `{"spin_ms": 0, "alloc_bytes": 0, "reply_bytes": 0, "log_bytes": 0,
//! "stdout_bytes": 0}` (every field optional). It replies with `reply_bytes` bytes of `x`.

use keyhole_guest::{Event, Guest, HandlerError, Level, Reply, log};
use serde::Deserialize;
use std::hint::black_box;
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Ask {
    spin_ms: u64,
    alloc_bytes: usize,
    reply_bytes: usize,
    log_bytes: usize,
    stdout_bytes: usize,
}

struct Probe;

impl Guest for Probe {
    fn handle(event: Event) -> Result<Option<Reply>, HandlerError> {
        let ask: Ask = serde_json::from_slice(&event.data)
            .map_err(|e| HandlerError::Permanent(format!("not a probe request: {e}")))?;

        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(ask.spin_ms) {
            black_box(());
        }

        // Touch every page so the memory is really committed.
        let block = black_box(vec![1u8; ask.alloc_bytes]);
        drop(block);

        let line = "x".repeat(99);
        for _ in 0..ask.log_bytes / 100 {
            log(Level::Debug, &line);
        }
        let mut out = std::io::stdout().lock();
        for _ in 0..ask.stdout_bytes / 100 {
            writeln!(out, "{line}").map_err(|e| HandlerError::Retryable(e.to_string()))?;
        }

        Ok(Some(Reply {
            type_: "keyhole.example.probe".to_string(),
            datacontenttype: "application/octet-stream".to_string(),
            data: vec![b'x'; ask.reply_bytes],
        }))
    }
}

keyhole_guest::export_handler!(Probe);
