//! The one writer of JSON-lines files (the audit file, the receipts file): one record a line,
//! appended whole and made durable (`fdatasync`) before its `append` returns, and a line torn by
//! a crash ended before the next is written.

use super::chain;
use serde::Serialize;
use std::io::{Seek as _, SeekFrom, Write};
use std::path::Path;
use tokio::sync::{mpsc, oneshot};

/// Lines waiting for the writer at most; a full queue makes appenders wait (backpressure).
const QUEUE: usize = 4096;

/// A JSON-lines file opened for appending, written by a thread of its own.
///
/// Appenders hand their line to the writer and wait for it to be written; the writer takes
/// every line waiting, writes them in one `write` call and makes them durable with one
/// `fdatasync`. So a line is on disk before its `append` returns (the audit's promise: an event's
/// offset is stored only after its line, so a power loss cannot keep a committed offset and lose
/// its decision), the file is written on no async worker, and under load one write and one sync
/// serve many events.
pub struct JsonLines {
    /// `None` once dropped: closing it is what ends the writer.
    queue: Option<mpsc::Sender<Pending>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for JsonLines {
    /// Closes the queue and waits for the writer to end. Nothing is left for it to write (every
    /// appender waited for its line), so this takes as long as the writer's last log line: the
    /// chain's final head is logged before keyhole exits.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// A line (without its newline) and who waits for it.
struct Pending {
    line: Vec<u8>,
    written: oneshot::Sender<Result<(), String>>,
}

/// A record could not be appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The record cannot be encoded.
    #[error("cannot encode the record: {0}")]
    Encode(#[from] serde_json::Error),
    /// The file refused the write (a full disk, a lost mount).
    #[error("cannot append to the file: {0}")]
    Write(String),
    /// The writer thread is gone.
    #[error("the file's writer stopped")]
    Stopped,
}

impl JsonLines {
    /// Opens (or creates) the file at `path` and starts its writer thread, which ends when the
    /// last handle is dropped.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Self::start(path, open_json_lines(path)?, None)
    }

    /// Like [`JsonLines::open`], with every line linked into the file's hash chain
    /// ([`chain`]): the writer thread, which alone orders the lines, links each to the one
    /// before as it writes it, continuing the chain the file ends with, and publishes the head.
    pub fn open_chained(path: &Path, publisher: chain::Publisher) -> std::io::Result<Self> {
        let mut file = open_json_lines(path)?;
        let head = chain::resume(&mut file)?;
        Self::start(path, file, Some((head, publisher)))
    }

    fn start(
        path: &Path,
        file: std::fs::File,
        chain: Option<(chain::Head, chain::Publisher)>,
    ) -> std::io::Result<Self> {
        let (queue, pending) = mpsc::channel(QUEUE);
        let name = format!("keyhole-{}", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
        let writer = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || write_lines(file, pending, chain))?;
        Ok(JsonLines { queue: Some(queue), writer: Some(writer) })
    }

    /// Appends `record` as one line; returns once it is written.
    pub async fn append(&self, record: &impl Serialize) -> Result<(), AppendError> {
        let line = serde_json::to_vec(record)?;
        let (written, done) = oneshot::channel();
        let queue = self.queue.as_ref().ok_or(AppendError::Stopped)?;
        queue.send(Pending { line, written }).await.map_err(|_| AppendError::Stopped)?;
        done.await.map_err(|_| AppendError::Stopped)?.map_err(AppendError::Write)
    }
}

/// How long the writer naps between batches while lines keep coming. Each batch costs one
/// `fdatasync`, whose kernel work dominates the writer's cost: 2 ms gathers enough lines per sync
/// that keyhole's rate with durable files is within the noise of its rate without the sync (0.5 ms
/// cost a third of the rate; docs/performance.md).
const NAP: std::time::Duration = std::time::Duration::from_micros(2000);

/// How many empty naps in a row before the writer parks until the next line.
const NAPS_BEFORE_PARKING: u32 = 20;

/// The writer: takes every line waiting, writes them in one call, tells each appender.
///
/// While lines keep coming it naps between batches instead of parking on the queue: a parked
/// receiver must be woken (a system call) by every line sent, a napping one by none, and a
/// batch gathers what came during the nap. After [`NAPS_BEFORE_PARKING`] empty naps it parks.
/// A line waits at most one nap (2 ms) before it is written and synced.
///
/// A chained file's lines are linked here, in the order they are written; a batch that fails
/// leaves the head where it was, since its lines are appended again (with new links) or not at all.
fn write_lines(
    mut file: std::fs::File,
    mut pending: mpsc::Receiver<Pending>,
    mut chain: Option<(chain::Head, chain::Publisher)>,
) {
    let mut batch = Vec::new();
    let mut buffer = Vec::new();
    let mut empty_naps = 0;
    loop {
        match pending.try_recv() {
            Ok(first) => batch.push(first),
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) if empty_naps < NAPS_BEFORE_PARKING => {
                empty_naps += 1;
                std::thread::sleep(NAP);
                continue;
            }
            Err(mpsc::error::TryRecvError::Empty) => match pending.blocking_recv() {
                Some(first) => batch.push(first),
                None => break,
            },
        }
        empty_naps = 0;
        while batch.len() < QUEUE {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        buffer.clear();
        let before = chain.as_ref().map(|(head, _)| head.clone());
        let mut linked = Ok(());
        for p in &mut batch {
            if let Some((head, _)) = &mut chain {
                let link = head.next();
                linked = linked.and(chain::append_link(&mut p.line, &link).map_err(|e| e.to_string()));
                head.advance(&link, &p.line);
            }
            buffer.extend_from_slice(&p.line);
            buffer.push(b'\n');
        }
        let result = linked.and_then(|()| {
            append_whole(&mut file, &buffer).and_then(|()| file.sync_data()).map_err(|e| e.to_string())
        });
        if let Some((head, publisher)) = &mut chain {
            match (&result, before) {
                (Ok(()), _) => publisher.written(head),
                (Err(_), Some(before)) => *head = before,
                (Err(_), None) => {}
            }
        }
        for p in batch.drain(..) {
            // An appender that stopped waiting (shutdown) needs no answer.
            let _ = p.written.send(result.clone());
        }
    }
    // Every handle is gone: the stream's last head, for the record.
    if let Some((head, publisher)) = &mut chain {
        publisher.log(head);
    }
}

/// Appends `bytes` whole or not at all: a write that fails part-way (a disk filling up) is cut
/// off again, so a retried line never follows a fragment of itself.
fn append_whole(file: &mut std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
    let before = file.seek(SeekFrom::End(0))?;
    match file.write_all(bytes) {
        Ok(()) => Ok(()),
        Err(error) => {
            let _ = file.set_len(before);
            Err(error)
        }
    }
}

/// Opens a JSON-lines file for appending (created if missing). A process killed in the middle of
/// a write (SIGKILL, power loss) can leave a torn last line; it is ended here, so the next record
/// starts on a line of its own and only the torn one fails to parse. (Its event was not
/// acknowledged: the record is written before the offset is stored, so it comes again.)
fn open_json_lines(path: &Path) -> std::io::Result<std::fs::File> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let existed = path.exists();
    let mut file = std::fs::OpenOptions::new().create(true).read(true).append(true).open(path)?;
    if !existed {
        // A new file's name is durable only once its directory is: else a power loss could take
        // the whole file, synced lines and all.
        sync_directory(path)?;
    }
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

/// Makes the entries of `path`'s directory durable.
fn sync_directory(path: &Path) -> std::io::Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(directory)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_are_whole_lines_each_written_before_append_returns() {
        let path = std::env::temp_dir().join(format!("keyhole-lines-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let lines = std::sync::Arc::new(super::JsonLines::open(&path).unwrap());
        let tasks: Vec<_> = (0..16)
            .map(|task| {
                let (lines, path) = (lines.clone(), path.clone());
                tokio::spawn(async move {
                    for i in 0..20 {
                        let record = serde_json::json!({ "task": task, "i": i, "pad": "x".repeat(i * 10) });
                        lines.append(&record).await.unwrap();
                        // On file as soon as `append` returns.
                        let line = format!("{record}\n");
                        assert!(std::fs::read_to_string(&path).unwrap().contains(&line));
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(parsed.len(), 16 * 20);
        std::fs::remove_file(&path).unwrap();
    }

    /// Every line of a chained file links to the one before, across a reopening (a restart)
    /// and a torn line left by a crash: one stream, seq from 1 without a gap.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chained_file_links_every_line_across_restarts() {
        use super::chain;
        let path = std::env::temp_dir().join(format!("keyhole-chained-{}.jsonl", uuid::Uuid::new_v4()));
        let publisher = || chain::Publisher::new(metrics::gauge!("test_chain_seq"), "file");
        let lines = std::sync::Arc::new(super::JsonLines::open_chained(&path, publisher()).unwrap());
        let tasks: Vec<_> = (0..4)
            .map(|task| {
                let lines = lines.clone();
                tokio::spawn(async move {
                    for i in 0..5 {
                        lines.append(&serde_json::json!({ "task": task, "i": i })).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        drop(lines);
        // A crash while writing the next line, then a restart.
        std::io::Write::write_all(
            &mut std::fs::OpenOptions::new().append(true).open(&path).unwrap(),
            b"{\"ta",
        )
        .unwrap();
        let lines = super::JsonLines::open_chained(&path, publisher()).unwrap();
        lines.append(&serde_json::json!({ "after": "restart" })).await.unwrap();

        let text = std::fs::read(&path).unwrap();
        let mut head = None::<chain::Head>;
        let mut chained = 0;
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(line) else {
                assert_eq!(line, b"{\"ta", "only the torn line is unreadable");
                continue;
            };
            let stream = value["stream"].as_str().unwrap().to_owned();
            let expected = head.clone().unwrap_or_else(|| chain::Head::new(stream.clone())).next();
            assert_eq!(
                (value["stream"].as_str().unwrap(), value["seq"].as_u64().unwrap()),
                (expected.stream.as_str(), expected.seq)
            );
            assert_eq!(value["prev"].as_str().unwrap(), expected.prev);
            head.get_or_insert_with(|| chain::Head::new(stream)).advance(&expected, line);
            chained += 1;
        }
        assert_eq!(chained, 21);
        std::fs::remove_file(&path).unwrap();
    }

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
