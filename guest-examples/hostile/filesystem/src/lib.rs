//! Hostile: tries to read a file from the host. keyhole must refuse to load it.
use keyhole_guest::{Event, Guest, HandlerError, Reply};

struct Hostile;

impl Guest for Hostile {
    fn handle(_event: Event) -> Result<Option<Reply>, HandlerError> {
        let stolen = std::fs::read("/etc/passwd").map_err(|e| HandlerError::Permanent(e.to_string()))?;
        Ok(Some(Reply { type_: "stolen".into(), datacontenttype: "text/plain".into(), data: stolen }))
    }
}

keyhole_guest::export_handler!(Hostile);
