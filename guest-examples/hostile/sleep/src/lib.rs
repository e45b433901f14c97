//! Hostile: waits for an hour inside a host call (a clock subscription), where no epoch check
//! can interrupt it.
use keyhole_guest::{Event, Guest, HandlerError, Reply};

struct Hostile;

impl Guest for Hostile {
    fn handle(_event: Event) -> Result<Option<Reply>, HandlerError> {
        std::thread::sleep(std::time::Duration::from_secs(3600));
        Ok(None)
    }
}

keyhole_guest::export_handler!(Hostile);
