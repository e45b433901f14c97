//! Hostile: allocates and touches memory until something stops it.
use keyhole_guest::{Event, Guest, HandlerError, Reply};

struct Hostile;

impl Guest for Hostile {
    fn handle(_event: Event) -> Result<Option<Reply>, HandlerError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(vec![0xAB; 1 << 20]));
        }
    }
}

keyhole_guest::export_handler!(Hostile);
