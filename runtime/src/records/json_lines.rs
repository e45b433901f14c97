//! The one writer of JSON-lines files (the audit file, the receipts file): one record a line,
//! appended whole, and a line torn by a crash ended before the next is written.

use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// A JSON-lines file opened for appending.
pub struct JsonLines(Mutex<std::fs::File>);

/// A record could not be appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The record cannot be encoded.
    #[error("cannot encode the record: {0}")]
    Encode(#[from] serde_json::Error),
    /// The file refused the write (a full disk, a lost mount).
    #[error("cannot append to the file: {0}")]
    Write(#[from] std::io::Error),
}

impl JsonLines {
    /// Opens (or creates) the file at `path`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(JsonLines(Mutex::new(open_json_lines(path)?)))
    }

    /// Appends `record` as one line.
    pub fn append(&self, record: &impl Serialize) -> Result<(), AppendError> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        // One write of the whole line on an O_APPEND file: lines of concurrent events never
        // interleave.
        let mut file = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        file.write_all(&line)?;
        Ok(())
    }
}

/// Opens a JSON-lines file for appending (created if missing). A process killed in the middle of
/// a write (SIGKILL, power loss) can leave a torn last line; it is ended here, so the next record
/// starts on a line of its own and only the torn one fails to parse. (Its event was not
/// acknowledged: the record is written before the offset is stored, so it comes again.)
fn open_json_lines(path: &Path) -> std::io::Result<std::fs::File> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut file = std::fs::OpenOptions::new().create(true).read(true).append(true).open(path)?;
    if file.seek(SeekFrom::End(0))? > 0 {
        file.seek(SeekFrom::End(-1))?;
        let mut last = [0u8; 1];
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            tracing::warn!(path = %path.display(), "The file ends in a torn line (keyhole was killed while writing it); starting a new line.");
            file.write_all(b"\n")?;
        }
    }
    Ok(file)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn a_torn_last_line_is_ended_before_the_next_record() {
        let path = std::env::temp_dir().join(format!("keyhole-torn-{}.jsonl", std::process::id()));
        std::fs::write(&path, "{\"a\":1}\n{\"b\":").unwrap();
        let mut file = super::open_json_lines(&path).unwrap();
        std::io::Write::write_all(&mut file, b"{\"c\":3}\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"b\":\n{\"c\":3}\n");
        // A whole file is left as it is.
        drop(super::open_json_lines(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        std::fs::remove_file(&path).unwrap();
    }
}
