//! One data source's HTTP client: a single attempt to resolve a reference, classified.

use super::batch::{Asker, BatchAnswer, BatchRequest, BatchSettings, Batcher, SendBatch, Waiting};
use super::{
    DataSourceSettings, EVENT_ID_HEADER, HANDLER_HEADER, HANDLER_VERSION_HEADER, Identity, PURPOSE_HEADER,
    Released, Requester, ResolveError, ResolverBuildError, TENANT_HEADER,
};
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION,
    RETRY_AFTER, USER_AGENT as USER_AGENT_HEADER,
};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Semaphore;
use url::Url;

/// The most redirects one fetch follows (all within the data source).
pub const MAX_REDIRECTS: usize = 5;

const USER_AGENT: &str = concat!("keyhole/", env!("CARGO_PKG_VERSION"));

/// What a `Keyhole-*` header value must not carry raw: controls cannot be sent at all (and a
/// newline could forge headers), non-ASCII is encoded by `utf8_percent_encode` anyway, and `%`
/// itself is encoded so that the owner can decode every value unambiguously.
const HEADER_VALUE_ESCAPES: &AsciiSet = &CONTROLS.add(b'%');

/// hyper's pooled client over plain TCP or native TLS. reqwest was used before; its layers
/// (redirect policy, retries, proxies, a URL parse per request) cost a quarter of keyhole's CPU
/// per event, and the resolver needs none of them: it follows redirects itself, within the data
/// source, and never retries (the engine does, with backoff).
type HttpClient = Client<hyper_tls::HttpsConnector<HttpConnector>, Empty<Bytes>>;
/// The batch endpoint's client: the same connector, a body to post.
type BatchHttpClient = Client<hyper_tls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One pooled HTTP client per data source, plus a semaphore bounding concurrent requests.
///
/// Cheap to share: wrap it in an `Arc` and call [`Resolver::fetch`] from many tasks.
pub struct Resolver {
    /// The data source's name, for metrics, logs and errors.
    name: String,
    /// Which redirect targets may be followed (see [`RedirectRule`]).
    redirect_rule: RedirectRule,
    /// The data source's base URL: no request and no redirect leaves it.
    base_url: Url,
    /// One client for the data source, so that connections (and TLS sessions) are reused.
    client: HttpClient,
    /// `Bearer <token>`, built once so that a bad token fails at start, marked sensitive so that
    /// the HTTP stack never prints it.
    authorization: Option<HeaderValue>,
    /// Limit on one whole request, body included.
    timeout: Duration,
    /// Limit on a released body.
    max_response_bytes: u64,
    /// Bounds concurrent requests so that keyhole never floods the owner; a permit is held
    /// until the body is read.
    permits: Arc<Semaphore>,
    /// Batched resolution, when the data source has a batch endpoint.
    batch: Option<Batching>,
    /// How many times the owner answered (anything but a transient failure), by any binding:
    /// an event failing while this grows fails on its own (a poison reference), not because
    /// the owner is down.
    answered: AtomicU64,
}

/// One answer as [`Resolver::inspect`] saw it: what keyhole made of it, and what `keyhole owner
/// check` needs besides. `Debug` shows no body.
pub(crate) struct Inspection {
    /// The final answer's status and headers (after the redirects followed), when one came.
    pub(crate) head: Option<(StatusCode, HeaderMap)>,
    /// Exactly what [`Resolver::fetch`] returns for the same answer.
    pub(crate) outcome: Result<Released, ResolveError>,
    /// The body of an answer that released nothing, as far as it was read.
    pub(crate) refusal_body: Option<RefusalBody>,
}

impl Inspection {
    fn unanswered(error: ResolveError) -> Inspection {
        Inspection { head: None, outcome: Err(error), refusal_body: None }
    }
}

impl std::fmt::Debug for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspection")
            .field("status", &self.head.as_ref().map(|(status, _)| status.as_u16()))
            .field("outcome", &self.outcome)
            .field("refusal_body", &self.refusal_body)
            .finish()
    }
}

/// The start of the body of an answer that released nothing. `Debug` shows its length only.
pub(crate) struct RefusalBody {
    /// The body's first bytes, at most the limit given to [`Resolver::inspect`].
    pub(crate) prefix: Bytes,
    /// Whether `prefix` is the whole body: false when the body was longer than the limit,
    /// broke off, or was still arriving when the time ran out.
    pub(crate) complete: bool,
}

impl std::fmt::Debug for RefusalBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusalBody")
            .field("prefix", &format_args!("<{} bytes>", self.prefix.len()))
            .field("complete", &self.complete)
            .finish()
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("name", &self.name)
            .field("base_url", &self.base_url.as_str())
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// Builds the client for one data source. Fails on an unusable token, certificate or key,
    /// with a message that names the data source and never contains the secret.
    pub fn new(settings: DataSourceSettings) -> Result<Resolver, ResolverBuildError> {
        let DataSourceSettings {
            name,
            base_url,
            identity,
            timeout,
            max_response_bytes,
            max_concurrent_requests,
            batch,
        } = settings;
        let invalid = |reason| Err(ResolverBuildError::InvalidSetting { data_source: name.clone(), reason });
        if !matches!(base_url.scheme(), "http" | "https") || base_url.host().is_none() {
            return invalid("the base URL must be an http or https URL with a host");
        }
        if !base_url.path().ends_with('/') {
            return invalid("the base URL's path must end with '/'");
        }
        if timeout.is_zero() {
            return invalid("the timeout must be above zero");
        }
        if max_concurrent_requests == 0 {
            return invalid("max_concurrent_requests must be at least 1");
        }

        let mut tls = hyper_tls::native_tls::TlsConnector::builder();
        let mut authorization = None;
        match identity {
            Identity::None => {}
            Identity::Bearer(token) => {
                let mut value = HeaderValue::try_from(format!("Bearer {token}"))
                    .ok()
                    .filter(|_| !token.is_empty())
                    .ok_or_else(|| ResolverBuildError::InvalidBearerToken { data_source: name.clone() })?;
                value.set_sensitive(true);
                authorization = Some(value);
            }
            Identity::ClientCertificate { certificate_pem, key_pem } => {
                tls.identity(client_identity(&name, &certificate_pem, &key_pem)?);
            }
        }
        let tls = tls.build().map_err(|error| ResolverBuildError::Client {
            data_source: name.clone(),
            reason: error_chain(&error),
        })?;
        let mut tcp = HttpConnector::new();
        // The connector serves https too; whether plain http is allowed is decided below.
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(timeout));
        tcp.set_nodelay(true);
        let mut connector = hyper_tls::HttpsConnector::from((tcp, tls.into()));
        connector.https_only(base_url.scheme() == "https");
        // No proxy (personal data goes straight to the data owner or nowhere), no retries, no
        // redirects followed by the client (see `exchange`).
        let permits = Arc::new(Semaphore::new(max_concurrent_requests.min(Semaphore::MAX_PERMITS)));
        let batch = batch.map(|settings| Batching {
            client: Arc::new(BatchClient {
                client: Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(max_concurrent_requests)
                    .build(connector.clone()),
                url: base_url.join(&settings.path).unwrap_or_else(|_| base_url.clone()),
                authorization: authorization.clone(),
                timeout,
                permits: permits.clone(),
                max_answer_bytes: batch_answer_limit(&settings, max_response_bytes),
            }),
            batcher: std::sync::OnceLock::new(),
            settings,
        });
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(max_concurrent_requests)
            .build(connector);

        Ok(Resolver {
            name,
            base_url,
            client,
            authorization,
            timeout,
            max_response_bytes,
            permits,
            batch,
            answered: AtomicU64::new(0),
            redirect_rule: any_redirect,
        })
    }

    /// Follows only the redirects `rule` allows (within the base URL in any case).
    #[must_use]
    pub fn with_redirect_rule(mut self, rule: RedirectRule) -> Self {
        self.redirect_rule = rule;
        self
    }

    /// The data source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many times the data owner has answered so far (anything but a transient failure).
    /// Compare two readings to learn whether it answered anyone in between.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// One attempt: GET `url` as the consuming service. No retries here.
    ///
    /// Waits for one of the data source's request permits first; the timeout starts once the
    /// permit is held. A `url` outside the data source's base URL is never requested
    /// ([`ResolveError::NotSent`]).
    pub async fn fetch(&self, url: &Url, who: &Requester<'_>) -> Result<Released, ResolveError> {
        let started = Instant::now();
        let outcome = self.fetch_once(url, who).await;
        // Only what the owner answered counts: not a failure to reach it, nor a request keyhole
        // refused to send.
        if !matches!(outcome, Err(ResolveError::Transient { .. } | ResolveError::NotSent)) {
            self.answered.fetch_add(1, Ordering::Relaxed);
        }
        let label = match &outcome {
            Ok(_) => "released",
            Err(error) => error.kind(),
        };
        tracing::debug!(
            data_source = %self.name,
            outcome = label,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Reference resolved."
        );
        outcome
    }

    async fn fetch_once(&self, url: &Url, who: &Requester<'_>) -> Result<Released, ResolveError> {
        // The caller resolved the reference against the base URL; checking again here means no
        // bug upstream can make keyhole send its credentials anywhere else.
        if !within(&self.base_url, url) {
            return Err(ResolveError::NotSent);
        }
        if let Some(batching) = &self.batch {
            return self.fetch_in_a_batch(batching, url, who).await;
        }
        let _permit = self.permits.acquire().await.map_err(|_| shutting_down())?;
        match tokio::time::timeout(self.timeout, self.exchange(url, who)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(self.timed_out()),
        }
    }

    /// Asks for `url` in the next batch of its asker and waits for its own answer.
    async fn fetch_in_a_batch(
        &self,
        batching: &Batching,
        url: &Url,
        who: &Requester<'_>,
    ) -> Result<Released, ResolveError> {
        let dataref = url.as_str().strip_prefix(self.base_url.as_str()).ok_or(ResolveError::NotSent)?;
        // What goes in the batch's headers must be sendable, exactly as for a single request.
        for value in [who.tenant, who.handler, who.purpose, who.handler_version] {
            requester_header_value(value)?;
        }
        let batcher = batching.batcher.get_or_init(|| {
            Batcher::start(batching.settings.clone(), batching.client.clone(), self.max_response_bytes)
        });
        let (answer, answered) = tokio::sync::oneshot::channel();
        let asker = Asker {
            tenant: who.tenant.to_owned(),
            handler: who.handler.to_owned(),
            purpose: who.purpose.to_owned(),
            handler_version: who.handler_version.to_owned(),
        };
        let waiting =
            Waiting { asker, event_id: who.event_id.to_owned(), dataref: dataref.to_owned(), answer };
        // The batch's own request is bounded by the timeout; this adds the window it waited in
        // and the wait for a permit, as a single request's timeout starts once it holds one.
        let bound = self.timeout.saturating_mul(2) + batching.settings.max_wait;
        match tokio::time::timeout(bound, async {
            batcher.ask(waiting).await?;
            answered.await.map_err(|_| shutting_down())?
        })
        .await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(self.timed_out()),
        }
    }

    fn request_headers(&self, who: &Requester<'_>) -> Result<HeaderMap, ResolveError> {
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        headers.insert(USER_AGENT_HEADER, HeaderValue::from_static(USER_AGENT));
        if let Some(authorization) = &self.authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        for (name, value) in [
            (TENANT_HEADER, who.tenant),
            (HANDLER_HEADER, who.handler),
            (PURPOSE_HEADER, who.purpose),
            (EVENT_ID_HEADER, who.event_id),
            (HANDLER_VERSION_HEADER, who.handler_version),
        ] {
            headers.insert(HeaderName::from_static(name), requester_header_value(value)?);
        }
        Ok(headers)
    }

    /// Sends the request, following redirects that stay within the data source (at most
    /// [`MAX_REDIRECTS`]), and reads the answer; the caller bounds the time. A redirect that
    /// would leave the data source is not followed: the 3xx is the answer. An owner must not be
    /// able to send keyhole, with its credentials and the user's reference, to another host.
    async fn exchange(&self, url: &Url, who: &Requester<'_>) -> Result<Released, ResolveError> {
        let response = self.send(url, who).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(refusal(status, response.headers(), SystemTime::now()));
        }
        self.read_released(response, url).await
    }

    /// One attempt made exactly as [`Resolver::fetch`] makes it (the same request, redirects,
    /// timeout and classification) for `keyhole owner check`, which needs more than the
    /// outcome: the final answer's head, and up to `refusal_body_limit` bytes of the body of an
    /// answer that released nothing (keyhole itself never reads those). The answer counter is
    /// left alone.
    pub(crate) async fn inspect(
        &self,
        url: &Url,
        who: &Requester<'_>,
        refusal_body_limit: usize,
    ) -> Inspection {
        if !within(&self.base_url, url) {
            return Inspection::unanswered(ResolveError::NotSent);
        }
        let Ok(_permit) = self.permits.acquire().await else {
            return Inspection::unanswered(shutting_down());
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, self.send(url, who)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return Inspection::unanswered(error),
            Err(_) => return Inspection::unanswered(self.timed_out()),
        };
        let status = response.status();
        let headers = response.headers().clone();
        if status.is_success() {
            let outcome = tokio::time::timeout_at(deadline, self.read_released(response, url))
                .await
                .unwrap_or_else(|_| Err(self.timed_out()));
            return Inspection { head: Some((status, headers)), outcome, refusal_body: None };
        }
        // Classified on the head alone, as `exchange` does; the body is read only for the
        // inspection, within what is left of the same time limit.
        let outcome = Err(refusal(status, &headers, SystemTime::now()));
        let body = read_prefix(response.into_body(), refusal_body_limit, deadline).await;
        Inspection { head: Some((status, headers)), outcome, refusal_body: Some(body) }
    }

    /// One batch sent exactly as the batcher sends it (the same request, headers, timeout,
    /// checks of the answer and classification of each result) for `keyhole owner check`:
    /// `references` (event id, URL) in one `POST` to the batch endpoint, for the asker of `who`
    /// (whose `event_id` is not used). Each reference's outcome, in order, or why the batch as a
    /// whole failed. Needs `[data_source.batch]` (otherwise [`ResolveError::NotSent`]); the
    /// answer counter is left alone.
    pub(crate) async fn inspect_batch(
        &self,
        who: &Requester<'_>,
        references: &[(String, Url)],
    ) -> Result<Vec<Result<Released, ResolveError>>, ResolveError> {
        let batching = self.batch.as_ref().ok_or(ResolveError::NotSent)?;
        let references = references
            .iter()
            .map(|(event_id, url)| {
                // As `fetch_once` and `fetch_in_a_batch`: only references within the data source.
                let dataref =
                    url.as_str().strip_prefix(self.base_url.as_str()).filter(|_| within(&self.base_url, url));
                dataref.map(|dataref| (event_id.as_str(), dataref)).ok_or(ResolveError::NotSent)
            })
            .collect::<Result<Vec<_>, _>>()?;
        for value in [who.tenant, who.handler, who.purpose, who.handler_version] {
            requester_header_value(value)?;
        }
        let asker = Asker {
            tenant: who.tenant.to_owned(),
            handler: who.handler.to_owned(),
            purpose: who.purpose.to_owned(),
            handler_version: who.handler_version.to_owned(),
        };
        super::batch::send_one(&*batching.client, &asker, &references, self.max_response_bytes).await
    }

    /// The error of a request that found no complete answer within the timeout.
    fn timed_out(&self) -> ResolveError {
        ResolveError::Transient {
            reason: format!("timed out: no complete answer within {} ms", self.timeout.as_millis()),
            retry_after: None,
        }
    }

    /// Sends the request and follows the redirects that stay within the data source (see
    /// [`Resolver::exchange`]); the final answer, its body unread.
    async fn send(&self, url: &Url, who: &Requester<'_>) -> Result<http::Response<Incoming>, ResolveError> {
        let mut target = url.clone();
        let mut followed = 0;
        let response = loop {
            let uri: http::Uri = target.as_str().parse().map_err(|_| ResolveError::NotSent)?;
            let mut request = http::Request::new(Empty::new());
            *request.uri_mut() = uri;
            // Built per request rather than cloned: a redirect is rare, a request per event is not.
            *request.headers_mut() = self.request_headers(who)?;
            let response = self.client.request(request).await.map_err(|error| request_failed(&error, url))?;
            let next = response
                .status()
                .is_redirection()
                .then(|| response.headers().get(LOCATION))
                .flatten()
                .and_then(|location| location.to_str().ok())
                .and_then(|location| target.join(location).ok())
                .filter(|next| {
                    followed < MAX_REDIRECTS
                        && within(&self.base_url, next)
                        && (self.redirect_rule)(&self.base_url, next)
                });
            match next {
                Some(next) => {
                    followed += 1;
                    target = next;
                }
                None => break response,
            }
        };
        Ok(response)
    }

    /// Reads a 2xx answer into what the owner released, within `max_response_bytes`.
    async fn read_released(
        &self,
        response: http::Response<Incoming>,
        url: &Url,
    ) -> Result<Released, ResolveError> {
        let limit = self.max_response_bytes;
        let declared =
            response.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit) {
            return Err(ResolveError::TooLarge { limit });
        }
        let content_type =
            response.headers().get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).map(str::to_owned);

        // Most bodies arrive in one chunk: keep it as it is and copy only when there are more.
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut total: u64 = 0;
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| broke_off(&error, url))?;
            let Ok(chunk) = frame.into_data() else { continue }; // trailers
            total = total.saturating_add(chunk.len() as u64);
            if total > limit {
                return Err(ResolveError::TooLarge { limit });
            }
            chunks.push(chunk);
        }
        let body = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => {
                let mut joined = BytesMut::with_capacity(usize::try_from(total).unwrap_or(usize::MAX));
                for chunk in &chunks {
                    joined.extend_from_slice(chunk);
                }
                joined.freeze()
            }
        };
        Ok(Released { body, content_type })
    }
}

/// Reads at most `limit` bytes of `body` before `deadline`.
async fn read_prefix(mut body: Incoming, limit: usize, deadline: tokio::time::Instant) -> RefusalBody {
    let mut prefix = BytesMut::new();
    let read = tokio::time::timeout_at(deadline, async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            let Ok(chunk) = frame.into_data() else { continue }; // trailers
            let room = limit.saturating_sub(prefix.len());
            prefix.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
            if chunk.len() > room {
                return false;
            }
        }
        true
    })
    .await;
    RefusalBody { prefix: prefix.freeze(), complete: read.unwrap_or(false) }
}

fn shutting_down() -> ResolveError {
    ResolveError::Transient { reason: "the resolver is shutting down".to_owned(), retry_after: None }
}

/// Loads a client certificate, telling the operator which half is unreadable.
fn client_identity(
    name: &str,
    certificate_pem: &[u8],
    key_pem: &[u8],
) -> Result<hyper_tls::native_tls::Identity, ResolverBuildError> {
    let unreadable =
        |reason| ResolverBuildError::InvalidClientCertificate { data_source: name.to_owned(), reason };
    // The TLS library's own messages are not passed on: they are not needed to fix the
    // problem, and nothing derived from key material may reach an error.
    let key_pem = key_pem.trim_ascii_start();
    if !key_pem.starts_with(b"-----BEGIN PRIVATE KEY-----") {
        return Err(unreadable(
            "the private key is not a PKCS#8 PEM key (`-----BEGIN PRIVATE KEY-----`); convert it \
             with `openssl pkcs8 -topk8 -nocrypt`",
        ));
    }
    if hyper_tls::native_tls::Certificate::from_pem(certificate_pem).is_err() {
        return Err(unreadable("the client certificate is not a valid PEM certificate"));
    }
    hyper_tls::native_tls::Identity::from_pkcs8(certificate_pem, key_pem)
        .map_err(|_| unreadable("the private key or the certificate chain cannot be read as PEM"))
}

/// Whether `url` lies within the data source: same scheme, host and port as the base URL, and a
/// path under the base path (which ends with '/'; `Url` has already removed dot segments).
fn within(base_url: &Url, url: &Url) -> bool {
    url.scheme() == base_url.scheme()
        && url.host() == base_url.host()
        && url.port_or_known_default() == base_url.port_or_known_default()
        && url.path().starts_with(base_url.path())
}

/// Which redirect targets within the base URL may be followed, besides [`within`]: by default
/// any; the engine sets the rules a reference's own path must pass (`cloudevents::check_below`,
/// a module this one does not depend on), so that an owner that decodes or trims what it is
/// sent cannot be led out of its base path by a redirect either.
pub type RedirectRule = fn(&Url, &Url) -> bool;

fn any_redirect(_: &Url, _: &Url) -> bool {
    true
}

/// Encodes one `Keyhole-*` value (see [`Requester`]): event ids come from Kafka and may hold
/// anything, and a value that cannot be sent must not stop the event nor panic.
fn requester_header_value(value: &str) -> Result<HeaderValue, ResolveError> {
    let encoded = utf8_percent_encode(value, HEADER_VALUE_ESCAPES).to_string();
    // Cannot fail after encoding (only visible ASCII and spaces remain); should it ever, the
    // request is refused rather than sent with a wrong value.
    HeaderValue::try_from(encoded).map_err(|_| ResolveError::NotSent)
}

/// Classifies an answer that released nothing, after the table "Answers from a data owner".
fn refusal(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> ResolveError {
    refusal_of(status, retry_after(headers, now))
}

/// [`refusal`], with the `Retry-After` already read (a batch result carries it in its JSON).
pub(super) fn refusal_of(status: StatusCode, retry_after: Option<Duration>) -> ResolveError {
    match status.as_u16() {
        401 => ResolveError::Unauthorized,
        403 | 451 => ResolveError::ConsentDenied { status: status.as_u16() },
        404 | 410 => ResolveError::Gone { status: status.as_u16() },
        408 | 429 | 500..=599 => {
            ResolveError::Transient { reason: format!("the data owner answered HTTP {status}"), retry_after }
        }
        other => ResolveError::Rejected { status: other },
    }
}

/// Reads `Retry-After` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date; a date in the past
/// means "now". Anything unreadable is ignored, and backoff alone decides.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    parse_retry_after(headers.get(RETRY_AFTER)?.to_str().ok()?, now)
}

/// One `Retry-After` value as keyhole reads it (see [`retry_after`]); None when keyhole would
/// ignore it. `keyhole owner check` holds owners to this.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
        // Too many digits for a u64 is still "a very long time"; backoff caps it.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Classifies a request that got no answer. The reason is the error's chain of causes; hyper
/// never puts the URL in it, and should a cause repeat the query it is cut out anyway.
fn request_failed(error: &hyper_util::client::legacy::Error, url: &Url) -> ResolveError {
    let what = if error.is_connect() { "cannot connect" } else { "the request failed" };
    let causes = match std::error::Error::source(error) {
        Some(cause) => error_chain(cause),
        None => error.to_string(),
    };
    transient(format!("{what}: {causes}"), url)
}

/// The answer's body broke off.
fn broke_off(error: &hyper::Error, url: &Url) -> ResolveError {
    transient(format!("the answer broke off: {}", error_chain(error)), url)
}

fn transient(mut reason: String, url: &Url) -> ResolveError {
    if let Some(query) = url.query().filter(|query| !query.is_empty()) {
        reason = reason.replace(query, "<query>");
    }
    ResolveError::Transient { reason, retry_after: None }
}

/// An error and its causes on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        line.push_str(": ");
        line.push_str(&inner.to_string());
        cause = inner.source();
    }
    line
}

/// A data source's batching: its settings, the client that posts batches, and the collector,
/// started on first use (on the runtime the first event runs on).
struct Batching {
    settings: BatchSettings,
    client: Arc<BatchClient>,
    batcher: std::sync::OnceLock<Batcher>,
}

/// Posts batches to the owner's batch endpoint with the resolver's credentials and limits.
struct BatchClient {
    client: BatchHttpClient,
    url: Url,
    authorization: Option<HeaderValue>,
    timeout: Duration,
    /// Shared with single requests: a batch takes one of the data source's request permits.
    permits: Arc<Semaphore>,
    max_answer_bytes: u64,
}

/// Why a batch answer is not protocol JSON, without serde's message: that quotes the values it
/// could not use, and a value in an owner's answer may be the personal data it released.
fn unreadable_json(error: &serde_json::Error) -> String {
    let what = match error.classify() {
        serde_json::error::Category::Data => "a field is missing, unknown or of the wrong type",
        serde_json::error::Category::Syntax => "it is not JSON",
        serde_json::error::Category::Eof => "it ends too early",
        serde_json::error::Category::Io => "it could not be read",
    };
    format!("{what} (line {}, column {})", error.line(), error.column())
}

/// The largest batch answer keyhole reads: every result at the data source's body limit (in
/// base64), and room for the JSON around them.
fn batch_answer_limit(settings: &BatchSettings, max_response_bytes: u64) -> u64 {
    let per_result = max_response_bytes.saturating_mul(4) / 3 + 4 + 1024;
    per_result.saturating_mul(settings.max_references as u64).saturating_add(1024)
}

impl SendBatch for BatchClient {
    async fn send(&self, asker: &Asker, batch: &BatchRequest<'_>) -> Result<BatchAnswer, ResolveError> {
        let body = serde_json::to_vec(batch).map_err(|_| ResolveError::NotSent)?;
        let _permit = self.permits.acquire().await.map_err(|_| shutting_down())?;
        let exchange = async {
            let mut request = http::Request::new(Full::new(Bytes::from(body)));
            *request.method_mut() = http::Method::POST;
            *request.uri_mut() = self.url.as_str().parse().map_err(|_| ResolveError::NotSent)?;
            let headers = request.headers_mut();
            headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(USER_AGENT_HEADER, HeaderValue::from_static(USER_AGENT));
            if let Some(authorization) = &self.authorization {
                headers.insert(AUTHORIZATION, authorization.clone());
            }
            for (name, value) in [
                (TENANT_HEADER, asker.tenant.as_str()),
                (HANDLER_HEADER, asker.handler.as_str()),
                (PURPOSE_HEADER, asker.purpose.as_str()),
                (HANDLER_VERSION_HEADER, asker.handler_version.as_str()),
            ] {
                headers.insert(HeaderName::from_static(name), requester_header_value(value)?);
            }
            let response =
                self.client.request(request).await.map_err(|error| request_failed(&error, &self.url))?;
            let status = response.status();
            if status != StatusCode::OK {
                // The batch as a whole: never an owner's decision about a reference.
                return Err(match refusal(status, response.headers(), SystemTime::now()) {
                    ResolveError::Unauthorized => ResolveError::Unauthorized,
                    ResolveError::Transient { reason, retry_after } => {
                        ResolveError::Transient { reason: format!("batch endpoint: {reason}"), retry_after }
                    }
                    _ => ResolveError::Transient {
                        reason: format!("the batch endpoint answered HTTP {status}, not 200"),
                        retry_after: None,
                    },
                });
            }
            let limit = self.max_answer_bytes;
            let body = http_body_util::Limited::new(
                response.into_body(),
                usize::try_from(limit).unwrap_or(usize::MAX),
            )
            .collect()
            .await
            .map_err(|_| ResolveError::Transient {
                reason: format!("the batch answer broke off or exceeded {limit} bytes"),
                retry_after: None,
            })?
            .to_bytes();
            serde_json::from_slice::<BatchAnswer>(&body).map_err(|error| ResolveError::Transient {
                reason: format!("the batch answer cannot be read: {}", unreadable_json(&error)),
                retry_after: None,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(ResolveError::Transient {
                reason: format!("timed out: no complete batch answer within {} ms", self.timeout.as_millis()),
                retry_after: None,
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::{refusal, requester_header_value, retry_after, within};

    #[test]
    fn an_unreadable_batch_answer_is_described_without_what_it_held() {
        for answer in [
            r#"{"version":1,"results":[{"status":"Ada-canary"}]}"#,
            r#"{"version":1,"results":[{"status":200,"Ada-canary":1}]}"#,
            r#"{"version":1,"results":[{"status":200,"data_base64":"Ada-canary""#,
        ] {
            let Err(error) = serde_json::from_slice::<super::BatchAnswer>(answer.as_bytes()) else {
                panic!("{answer} was read");
            };
            let reason = super::unreadable_json(&error);
            assert!(!reason.contains("canary"), "{reason}");
            assert!(reason.contains("line 1"), "{reason}");
        }
    }
    use crate::resolve::ResolveError;
    use http::StatusCode;
    use http::header::{HeaderMap, HeaderValue, RETRY_AFTER};
    use std::time::{Duration, SystemTime};
    use url::Url;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn only_urls_under_the_base_are_within_the_data_source() {
        let base = url("https://crm.example.com/api/");
        assert!(within(&base, &url("https://crm.example.com/api/customers/42?x=1")));
        assert!(within(&base, &url("https://CRM.example.com:443/api/customers/42")));
        assert!(!within(&base, &url("http://crm.example.com/api/customers/42")));
        assert!(!within(&base, &url("https://crm.example.com:8443/api/customers/42")));
        assert!(!within(&base, &url("https://evil.example.com/api/customers/42")));
        assert!(!within(&base, &url("https://crm.example.com/apix/customers/42")));
        assert!(!within(&base, &url("https://crm.example.com/api/../admin")));
        assert!(!within(&base, &url("https://crm.example.com/admin")));
    }

    #[test]
    fn header_values_are_percent_encoded_only_where_needed() {
        assert_eq!(requester_header_value("ev-1 a/b:c").unwrap(), "ev-1 a/b:c");
        assert_eq!(requester_header_value("ev\r\nX-Evil: 1").unwrap(), "ev%0D%0AX-Evil: 1");
        assert_eq!(requester_header_value("zoë%").unwrap(), "zo%C3%AB%25");
        assert_eq!(requester_header_value("").unwrap(), "");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
            retry_after(&headers, now)
        };
        assert_eq!(with("2"), Some(Duration::from_secs(2)));
        assert_eq!(with(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(with("99999999999999999999999"), Some(Duration::from_secs(u64::MAX)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(with(&later), Some(Duration::from_secs(90)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(with(&earlier), Some(Duration::ZERO));
        assert_eq!(with("soon"), None);
        assert_eq!(with("-1"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn statuses_map_to_the_owner_table() {
        let now = SystemTime::now();
        let kind = |code: u16| refusal(StatusCode::from_u16(code).unwrap(), &HeaderMap::new(), now).kind();
        for (code, expected) in [
            (401, "unauthorized"),
            (403, "consent_denied"),
            (451, "consent_denied"),
            (404, "gone"),
            (410, "gone"),
            (408, "transient"),
            (429, "transient"),
            (500, "transient"),
            (502, "transient"),
            (503, "transient"),
            (599, "transient"),
            (400, "rejected"),
            (409, "rejected"),
            (302, "rejected"),
            (304, "rejected"),
        ] {
            assert_eq!(kind(code), expected, "HTTP {code}");
        }
        assert!(matches!(
            refusal(StatusCode::MOVED_PERMANENTLY, &HeaderMap::new(), now),
            ResolveError::Rejected { status: 301 }
        ));
    }
}
