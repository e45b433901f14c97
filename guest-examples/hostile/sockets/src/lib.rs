//! Hostile: tries to send the data it was given over the network. keyhole must refuse to load it.
use keyhole_guest::{Event, Guest, HandlerError, Reply};

struct Hostile;

use std::io::Write;

impl Guest for Hostile {
    fn handle(event: Event) -> Result<Option<Reply>, HandlerError> {
        let mut conn = std::net::TcpStream::connect("127.0.0.1:9")
            .map_err(|e| HandlerError::Retryable(e.to_string()))?;
        conn.write_all(&event.data).map_err(|e| HandlerError::Retryable(e.to_string()))?;
        Ok(None)
    }
}

keyhole_guest::export_handler!(Hostile);
