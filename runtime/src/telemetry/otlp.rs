//! Span export over OTLP/HTTP (protobuf), when `[telemetry]` or the standard `OTEL_*` variables
//! name a collector. The OpenTelemetry SDK batches spans on a thread of its own; an event only
//! hands its spans to a bounded queue, which drops them when full, so a slow or dead collector
//! never holds an event back. Requests go through keyhole's own hyper client on the tokio
//! runtime, each bounded by the export timeout.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, RetryPolicy, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where and how spans are exported: `[telemetry]` and the `OTEL_*` variables, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceExport {
    /// The collector's traces URL (`…/v1/traces`).
    pub endpoint: String,
    /// `service.name` of every span.
    pub service_name: String,
    /// `service.instance.id`: the replica (`kafka.instance_id`).
    pub instance_id: String,
    /// Bound on one export request, connection included.
    pub timeout: Duration,
    /// Spans waiting for export at most; more are dropped.
    pub max_queue_spans: usize,
    /// Spans per export request at most.
    pub max_batch_spans: usize,
    /// How long a span may wait for its batch.
    pub batch_delay: Duration,
}

/// Counter: span export requests (one per batch), by `outcome` (`ok`, `failed`). The process's,
/// not a binding's: it has no `binding` or `tenant` label.
pub const TRACE_EXPORTS: &str = "keyhole_trace_exports_total";

/// The installed exporter; flushes on [`Exporting::shutdown`].
pub struct Exporting {
    provider: SdkTracerProvider,
}

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The tracer events start their spans with; `None` until [`install`] (span export off).
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Why span export could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces to {endpoint}: {reason}")]
pub struct ExportError {
    endpoint: String,
    reason: String,
}

/// Starts exporting spans as `export` says, sending through `runtime`. Once per process: a
/// second call keeps the first exporter.
pub fn install(export: &TraceExport, runtime: tokio::runtime::Handle) -> Result<Exporting, ExportError> {
    let failed = |reason: String| ExportError { endpoint: export.endpoint.clone(), reason };
    let client = Collector::new(runtime, export.timeout).map_err(|e| failed(e.to_string()))?;
    let exporter = SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(export.endpoint.clone())
        .with_timeout(export.timeout)
        // One request per batch, bounded by the timeout: a batch retried against a struggling
        // collector only makes the spans behind it wait; the queue drops what cannot wait.
        .with_retry_policy(RetryPolicy::disabled())
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let batches = BatchConfigBuilder::default()
        .with_max_queue_size(export.max_queue_spans)
        .with_max_export_batch_size(export.max_batch_spans.min(export.max_queue_spans))
        .with_scheduled_delay(export.batch_delay)
        .build();
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batches).build();
    let resource = Resource::builder()
        .with_service_name(export.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attribute(opentelemetry::KeyValue::new("service.instance.id", export.instance_id.clone()))
        .build();
    let provider =
        SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build();
    let _ = TRACER.set(provider.tracer("keyhole"));
    // The recorder first, so that both series show from the start (at 0).
    super::prometheus();
    metrics::describe_counter!(TRACE_EXPORTS, "Span export requests to the OTLP collector, by outcome.");
    metrics::counter!(TRACE_EXPORTS, "outcome" => "ok").absolute(0);
    metrics::counter!(TRACE_EXPORTS, "outcome" => "failed").absolute(0);
    tracing::info!(endpoint = %export.endpoint, service = %export.service_name, "Exporting spans over OTLP.");
    Ok(Exporting { provider })
}

impl Exporting {
    /// Exports the spans still queued, waiting at most `timeout` (a dead collector must not
    /// hold the shutdown). Blocks: call it off the async workers.
    pub fn shutdown(self, timeout: Duration) {
        if let Err(error) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(%error, "Span export did not finish at shutdown; the spans still queued are lost.");
        }
    }
}

/// The most of a collector's answer read: OTLP answers are small (a partial-success message).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How often a failing collector is logged at most.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// keyhole's HTTP client for the exporter. The SDK's batch thread is not a tokio worker, so the
/// request runs as a task on keyhole's runtime and the thread waits for its answer.
struct Collector {
    client: Client<hyper_tls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    /// When the last failure was logged (ms since `started`), to log a dead collector once a
    /// minute rather than once a batch.
    last_logged_ms: AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Collector {
    fn new(runtime: tokio::runtime::Handle, timeout: Duration) -> Result<Self, hyper_tls::native_tls::Error> {
        let tls = hyper_tls::native_tls::TlsConnector::new()?;
        let mut tcp = HttpConnector::new();
        // The connector serves https too.
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(hyper_tls::HttpsConnector::from((tcp, tls.into())));
        Ok(Collector {
            client,
            runtime,
            timeout,
            last_logged_ms: AtomicU64::new(u64::MAX),
            started: Instant::now(),
        })
    }

    fn failed(&self, reason: &str) {
        metrics::counter!(TRACE_EXPORTS, "outcome" => "failed").increment(1);
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= FAILURE_LOG_INTERVAL.as_millis() as u64;
        if due
            && self.last_logged_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(
                reason,
                "Spans not exported; the collector is failing (logged once a minute while it lasts)."
            );
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for Collector {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (client, timeout) = (self.client.clone(), self.timeout);
        let exchange = async move {
            let response = client.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER_BYTES).collect().await?.to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        let task = self.runtime.spawn(async move {
            tokio::time::timeout(timeout, exchange).await.unwrap_or_else(|_| Err("timed out".into()))
        });
        let answer = match task.await {
            Ok(answer) => answer,
            Err(stopped) => Err(stopped.to_string().into()),
        };
        match &answer {
            Ok(response) if response.status().is_success() => {
                metrics::counter!(TRACE_EXPORTS, "outcome" => "ok").increment(1);
            }
            Ok(response) => self.failed(&format!("HTTP {}", response.status().as_u16())),
            Err(error) => self.failed(&error.to_string()),
        }
        answer
    }
}
