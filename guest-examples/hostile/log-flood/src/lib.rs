//! Hostile: logs without end.
use keyhole_guest::{Event, Guest, HandlerError, Reply};

struct Hostile;

use keyhole_guest::{Level, log};

impl Guest for Hostile {
    fn handle(_event: Event) -> Result<Option<Reply>, HandlerError> {
        loop {
            log(Level::Error, "spam spam spam spam spam spam spam spam spam spam spam spam");
        }
    }
}

keyhole_guest::export_handler!(Hostile);
