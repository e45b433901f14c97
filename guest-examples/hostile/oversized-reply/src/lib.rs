//! Hostile: answers with a 16 MiB reply.
use keyhole_guest::{Event, Guest, HandlerError, Reply};

struct Hostile;

impl Guest for Hostile {
    fn handle(_event: Event) -> Result<Option<Reply>, HandlerError> {
        Ok(Some(Reply {
            type_: "keyhole.example.flood".into(),
            datacontenttype: "application/octet-stream".into(),
            data: vec![b'x'; 16 << 20],
        }))
    }
}

keyhole_guest::export_handler!(Hostile);
