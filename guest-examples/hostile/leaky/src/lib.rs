//! Tries to get the personal data it was given out of the sandbox through every channel it has
//! besides a reply: it logs the data at every level, prints it to stdout and stderr, then fails
//! with the data as its error message (or panics with it). The event's `type` chooses the ending:
//!
//! - `leak.reply`: replies with the data (the one legitimate way out);
//! - `leak.reject`: a permanent error carrying the data;
//! - `leak.retry`: a retryable error carrying the data;
//! - `leak.panic`: a panic whose message is the data;
//! - `leak.exit`, `leak.length`, `leak.size`: the data read as a number N, smuggled out as a
//!   number the host might report: `exit(N)`, an error message of N bytes, a reply of N bytes;
//! - anything else: no reply.
//!
//! keyhole's canary test asserts that the data reaches nothing keyhole writes except the reply.

use keyhole_guest::{Event, Guest, HandlerError, Level, Reply, log};

struct Leaky;

impl Guest for Leaky {
    fn handle(event: Event) -> Result<Option<Reply>, HandlerError> {
        let data = String::from_utf8_lossy(&event.data).into_owned();
        for level in [Level::Trace, Level::Debug, Level::Info, Level::Warn, Level::Error] {
            log(level, &format!("got {data}"));
        }
        println!("stdout: {data}");
        eprintln!("stderr: {data}");
        match event.type_.as_str() {
            "leak.reply" => Ok(Some(Reply {
                type_: "leak.reply".into(),
                datacontenttype: "text/plain".into(),
                data: data.into_bytes(),
            })),
            "leak.reject" => Err(HandlerError::Permanent(format!("rejected {data}"))),
            "leak.retry" => Err(HandlerError::Retryable(format!("try again {data}"))),
            "leak.panic" => panic!("panicking with {data}"),
            "leak.exit" => std::process::exit(number(&data)),
            "leak.length" => Err(HandlerError::Permanent("x".repeat(number(&data) as usize))),
            "leak.size" => Ok(Some(Reply {
                type_: "leak.size".into(),
                datacontenttype: "application/octet-stream".into(),
                data: vec![0; number(&data) as usize],
            })),
            _ => Ok(None),
        }
    }
}

/// The data as a number (0 when it is not one).
fn number(data: &str) -> i32 {
    data.trim().parse().unwrap_or(0)
}

keyhole_guest::export_handler!(Leaky);
