//! An OpenTelemetry collector on loopback: a real HTTP server taking OTLP/HTTP protobuf exports
//! at `/v1/traces`, keeping every body as it came and decoding it with the protocol's own
//! definitions (`opentelemetry-proto`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::served::{Served, serve};

/// A running collector. Dropping it stops the server.
pub struct Collector {
    pub addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Bytes>>>,
    _server: Served,
}

/// One exported span with its resource's attributes.
#[derive(Clone, Debug)]
pub struct Exported {
    pub span: Span,
    pub resource: Vec<KeyValue>,
}

impl Exported {
    /// The span's attribute `key`, as a string (ints formatted).
    pub fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }

    /// The resource's attribute `key`.
    pub fn resource_attr(&self, key: &str) -> Option<String> {
        attr(&self.resource, key)
    }

    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value {
        AnyValue { value: Some(any_value::Value::StringValue(s)) } => Some(s.clone()),
        AnyValue { value: Some(any_value::Value::IntValue(i)) } => Some(i.to_string()),
        AnyValue { value: Some(any_value::Value::BoolValue(b)) } => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn export(
    State(bodies): State<Arc<Mutex<Vec<Bytes>>>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Vec<u8>) {
    let protobuf = headers.get(header::CONTENT_TYPE).is_some_and(|v| v == "application/x-protobuf");
    if !protobuf || ExportTraceServiceRequest::decode(body.clone()).is_err() {
        return (StatusCode::BAD_REQUEST, Vec::new());
    }
    bodies.lock().unwrap().push(body);
    // An empty ExportTraceServiceResponse: everything accepted.
    (StatusCode::OK, Vec::new())
}

impl Collector {
    /// Starts on a free loopback port.
    pub async fn start() -> Collector {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let app =
            axum::Router::new().route("/v1/traces", axum::routing::post(export)).with_state(bodies.clone());
        let server = serve(app).await;
        Collector { addr: server.addr, bodies, _server: server }
    }

    /// The OTLP/HTTP base URL (what `OTEL_EXPORTER_OTLP_ENDPOINT` names).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every export body received, as it came.
    pub fn raw(&self) -> Vec<Bytes> {
        self.bodies.lock().unwrap().clone()
    }

    /// Every span received, decoded.
    pub fn spans(&self) -> Vec<Exported> {
        let mut spans = Vec::new();
        for body in self.raw() {
            let request = ExportTraceServiceRequest::decode(body).unwrap();
            for resource_spans in request.resource_spans {
                let resource = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
                for scope in resource_spans.scope_spans {
                    for span in scope.spans {
                        spans.push(Exported { span, resource: resource.clone() });
                    }
                }
            }
        }
        spans
    }
}

/// A collector that accepts connections and never answers: every export waits for its timeout.
pub async fn hung_collector() -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    Served::spawn(addr, async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    })
}
