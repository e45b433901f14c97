//! Hostile: never returns.
use keyhole_guest::{Event, Guest, HandlerError, Reply};

struct Hostile;

impl Guest for Hostile {
    fn handle(_event: Event) -> Result<Option<Reply>, HandlerError> {
        loop {
            std::hint::black_box(());
        }
    }
}

keyhole_guest::export_handler!(Hostile);
