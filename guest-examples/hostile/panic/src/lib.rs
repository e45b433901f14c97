//! Hostile: panics, which in WebAssembly is a trap.
use keyhole_guest::{Event, Guest, HandlerError, Reply};

struct Hostile;

impl Guest for Hostile {
    fn handle(event: Event) -> Result<Option<Reply>, HandlerError> {
        panic!("handler panicked on event {}", event.id);
    }
}

keyhole_guest::export_handler!(Hostile);
