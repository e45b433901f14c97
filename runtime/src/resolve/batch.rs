//! Batched resolution, opt-in per data source (`[data_source.batch]`): the references of events
//! in flight at the same time, for the same asker (tenant, handler, purpose, handler version),
//! go to the owner in one `POST`, and the owner answers one decision per reference.
//!
//! Every guarantee of the single request holds per reference, because a batch only carries
//! what single requests would have carried: each reference is still asked for by its own event,
//! at that moment, and gets its own answer, classified exactly as a single answer is (the same
//! statuses, `Retry-After`, size limit). The caller then writes that reference's receipt and
//! decides, retries or pauses as it would have. A batch that fails as a whole (no answer, a
//! status other than 200, a malformed body) fails each of its references transiently, once: each
//! event retries on its own budget.
//!
//! The wire format (version 1, docs/data-owners.md "Batched resolution") takes from AIP-231's
//! batch get (a list in, a list out in the same order), from Skyflow's bulk detokenize (a
//! result per item, with its own status, so one refusal does not fail the batch) and from
//! DataLoader (coalescing what is asked within one short window). The asker travels once, in
//! the same `Keyhole-*` headers as a single request, because a batch never mixes askers.
//!
//! Written here rather than with a crate: no batching crate keeps a per-key window with a size
//! cap, answers each waiter separately and shuts down with its channel.

use super::client::refusal_of;
use super::{Released, ResolveError};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// The version of the wire format keyhole speaks.
pub const BATCH_PROTOCOL_VERSION: u32 = 1;

/// How a data source batches, after validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchSettings {
    /// The batch endpoint, relative to the base URL (`batch`, `v1/resolve-batch`).
    pub path: String,
    /// The most references in one request.
    pub max_references: usize,
    /// How long the first reference of a batch waits for others.
    pub max_wait: Duration,
}

/// Who asks, shared by every reference of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Asker {
    pub tenant: String,
    pub handler: String,
    pub purpose: String,
    pub handler_version: String,
}

/// One reference waiting for its answer.
pub(super) struct Waiting {
    pub asker: Asker,
    pub event_id: String,
    /// The reference as the event carries it, relative to the base URL.
    pub dataref: String,
    pub answer: oneshot::Sender<Result<Released, ResolveError>>,
}

/// Sends one batch and reads its answers; the resolver implements it with its client.
pub(super) trait SendBatch: Send + Sync + 'static {
    /// The answer to each reference of `batch`, in order, or why the batch as a whole failed.
    fn send(
        &self,
        asker: &Asker,
        batch: &BatchRequest<'_>,
    ) -> impl std::future::Future<Output = Result<BatchAnswer, ResolveError>> + Send;
}

/// The batch request's body.
#[derive(Serialize)]
pub(super) struct BatchRequest<'a> {
    pub version: u32,
    pub references: Vec<BatchReference<'a>>,
}

/// One reference in a batch request.
#[derive(Serialize)]
pub(super) struct BatchReference<'a> {
    pub event_id: &'a str,
    pub dataref: &'a str,
}

/// The batch answer's body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchAnswer {
    pub version: u32,
    pub results: Vec<BatchResult>,
}

/// The owner's answer to one reference: the status a single request would have had, and for a
/// release its content type and bytes (base64, so that any body travels in JSON).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchResult {
    pub status: u16,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub data_base64: Option<String>,
    /// As the header would say it: delta-seconds or an HTTP-date.
    #[serde(default)]
    pub retry_after: Option<String>,
}

/// Collects references into batches and sends them; ends when every sender is gone.
pub(super) struct Batcher {
    waiting: mpsc::Sender<Waiting>,
    /// Owned: aborted when the resolver goes (the channel closing ends it first).
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Batcher {
    /// Starts collecting on the current runtime.
    pub fn start<S: SendBatch>(settings: BatchSettings, sender: Arc<S>, max_response_bytes: u64) -> Batcher {
        // Bounded: a reference that cannot be queued waits, as a single request waits for a
        // permit.
        let (waiting, queue) = mpsc::channel(settings.max_references.saturating_mul(4).max(64));
        let task = tokio::spawn(collect(queue, settings, sender, max_response_bytes));
        Batcher { waiting, task }
    }

    /// Queues one reference; its answer comes on `answer`.
    pub async fn ask(&self, waiting: Waiting) -> Result<(), ResolveError> {
        self.waiting.send(waiting).await.map_err(|_| ResolveError::Transient {
            reason: "keyhole is shutting down: the batch was not sent".into(),
            retry_after: None,
        })
    }
}

/// Takes references as they come; the first of a window waits `max_wait` for others with the
/// same asker, and a batch goes as soon as it is full.
async fn collect<S: SendBatch>(
    mut queue: mpsc::Receiver<Waiting>,
    settings: BatchSettings,
    sender: Arc<S>,
    max_response_bytes: u64,
) {
    let mut sending = JoinSet::new();
    let send = |sending: &mut JoinSet<()>, asker: Asker, batch: Vec<Waiting>| {
        sending.spawn(send_and_answer(sender.clone(), asker, batch, max_response_bytes));
    };
    while let Some(first) = queue.recv().await {
        let deadline = tokio::time::Instant::now() + settings.max_wait;
        let mut open: HashMap<Asker, Vec<Waiting>> = HashMap::new();
        let mut next = Some(first);
        loop {
            if let Some(waiting) = next.take() {
                let batch = open.entry(waiting.asker.clone()).or_default();
                batch.push(waiting);
                if batch.len() >= settings.max_references {
                    let asker = batch[0].asker.clone();
                    let full = open.remove(&asker).unwrap_or_default();
                    send(&mut sending, asker, full);
                }
            }
            while sending.try_join_next().is_some() {}
            tokio::select! {
                waiting = queue.recv() => match waiting {
                    Some(waiting) => next = Some(waiting),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        for (asker, batch) in open {
            send(&mut sending, asker, batch);
        }
    }
    // Every sender is gone: the batches under way still answer their events.
    while sending.join_next().await.is_some() {}
}

/// Sends one batch and answers each of its references.
async fn send_and_answer<S: SendBatch>(
    sender: Arc<S>,
    asker: Asker,
    batch: Vec<Waiting>,
    max_response_bytes: u64,
) {
    let references: Vec<_> =
        batch.iter().map(|waiting| (waiting.event_id.as_str(), waiting.dataref.as_str())).collect();
    let answered = send_one(&*sender, &asker, &references, max_response_bytes).await;
    drop(references);
    match answered {
        Ok(outcomes) => {
            for (waiting, outcome) in batch.into_iter().zip(outcomes) {
                let _ = waiting.answer.send(outcome);
            }
        }
        Err(error) => {
            for waiting in batch {
                let _ = waiting.answer.send(Err(error.clone_transient()));
            }
        }
    }
}

/// Sends one batch of `references` (event id, dataref) and reads it: each reference's outcome,
/// in order and classified as a single answer would be, or why the batch as a whole failed (the
/// owner's 401 is [`ResolveError::Unauthorized`]; anything else is transient).
pub(super) async fn send_one<S: SendBatch>(
    sender: &S,
    asker: &Asker,
    references: &[(&str, &str)],
    max_response_bytes: u64,
) -> Result<Vec<Result<Released, ResolveError>>, ResolveError> {
    let request = BatchRequest {
        version: BATCH_PROTOCOL_VERSION,
        references: references
            .iter()
            .map(|&(event_id, dataref)| BatchReference { event_id, dataref })
            .collect(),
    };
    let answer = sender.send(asker, &request).await?;
    if answer.version != BATCH_PROTOCOL_VERSION {
        return Err(malformed(format!(
            "version {} (keyhole speaks {BATCH_PROTOCOL_VERSION})",
            answer.version
        )));
    }
    if answer.results.len() != references.len() {
        return Err(malformed(format!(
            "{} results for {} references",
            answer.results.len(),
            references.len()
        )));
    }
    Ok(answer.results.into_iter().map(|result| classify(result, max_response_bytes)).collect())
}

/// One result, classified as a single answer with that status would be.
fn classify(result: BatchResult, max_response_bytes: u64) -> Result<Released, ResolveError> {
    let Ok(status) = http::StatusCode::from_u16(result.status) else {
        return Err(malformed(format!("status {} is not an HTTP status", result.status)));
    };
    if !status.is_success() {
        let retry_after = result
            .retry_after
            .as_deref()
            .and_then(|value| super::client::parse_retry_after(value, std::time::SystemTime::now()));
        return Err(refusal_of(status, retry_after));
    }
    let encoded = result.data_base64.unwrap_or_default();
    // Checked before decoding: base64 is 4 bytes for every 3.
    if (encoded.len() as u64) / 4 * 3 > max_response_bytes.saturating_add(3) {
        return Err(ResolveError::TooLarge { limit: max_response_bytes });
    }
    let body = base64::engine::general_purpose::STANDARD
        .decode(encoded.as_bytes())
        .map_err(|_| malformed("a result's data_base64 is not base64".into()))?;
    if body.len() as u64 > max_response_bytes {
        return Err(ResolveError::TooLarge { limit: max_response_bytes });
    }
    Ok(Released { body: Bytes::from(body), content_type: result.content_type })
}

/// An answer keyhole cannot read: each of its references is tried again.
fn malformed(what: String) -> ResolveError {
    ResolveError::Transient { reason: format!("the batch answer cannot be read: {what}"), retry_after: None }
}

impl ResolveError {
    /// The same failure for another reference of the batch (a whole batch only fails
    /// transiently or for keyhole's credentials).
    fn clone_transient(&self) -> ResolveError {
        match self {
            ResolveError::Unauthorized => ResolveError::Unauthorized,
            ResolveError::Transient { reason, retry_after } => {
                ResolveError::Transient { reason: reason.clone(), retry_after: *retry_after }
            }
            other => ResolveError::Transient { reason: other.to_string(), retry_after: None },
        }
    }
}
