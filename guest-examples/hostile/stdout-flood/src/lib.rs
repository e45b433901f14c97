//! Hostile: prints to stdout without end.
use keyhole_guest::{Event, Guest, HandlerError, Reply};

struct Hostile;

impl Guest for Hostile {
    fn handle(_event: Event) -> Result<Option<Reply>, HandlerError> {
        loop {
            println!("spam spam spam spam spam spam spam spam spam spam spam spam");
        }
    }
}

keyhole_guest::export_handler!(Hostile);
