//! The admin API alone: its router over a registry in a temporary directory and a fake
//! [`Control`], served on loopback. No engine, no broker: what these tests prove is the API's
//! own (authentication, tenant isolation, names, media types, readiness); the end-to-end ones
//! under tests/ prove it drives the engine.

use super::{Api, BoxFuture, Control, HandlerState};
use crate::config::AdminSettings;
use crate::registry::{Catalog, Registry};
use crate::sandbox::{ComponentReport, LoadError};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

const OPERATOR: &str = "operator-token";

/// Records what the API asked; accepts any bytes that start like WebAssembly.
#[derive(Default)]
struct FakeControl {
    applied: Mutex<usize>,
    not_ready: Mutex<Vec<String>>,
}

impl Control for FakeControl {
    fn check(&self, _tenant: &str, wasm: Arc<Vec<u8>>) -> BoxFuture<'_, Result<ComponentReport, LoadError>> {
        Box::pin(async move {
            if !wasm.starts_with(b"\0asm") {
                return Err(LoadError::NotWasm);
            }
            Ok(ComponentReport { imports: vec![], exports: vec!["handle (func)".into()] })
        })
    }

    fn state(&self, _tenant: &str, _handler: &str) -> HandlerState {
        HandlerState { label: "paused", reason: Some("the data owner is unavailable: HTTP 503".into()) }
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), Vec<String>>> {
        let problems = self.not_ready.lock().unwrap().clone();
        Box::pin(async move { if problems.is_empty() { Ok(()) } else { Err(problems) } })
    }

    fn apply(&self, _scope: super::Scope) -> BoxFuture<'_, Result<(), Vec<(String, String)>>> {
        *self.applied.lock().unwrap() += 1;
        Box::pin(async { Ok(()) })
    }
}

struct Served {
    url: String,
    monitoring_url: String,
    control: Arc<FakeControl>,
    http: reqwest::Client,
    _stop: tokio::sync::watch::Sender<()>,
}

impl Served {
    async fn start() -> Served {
        let dir = std::env::temp_dir().join(format!(
            "keyhole-admin-unit-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let catalog = Catalog { data_sources: vec!["owner".into()], ..Catalog::default() };
        let registry = Arc::new(Registry::open(&dir, catalog).unwrap());
        let control = Arc::new(FakeControl::default());
        let settings = AdminSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            operator_token_sha256: Some(Sha256::digest(OPERATOR).into()),
            state_dir: dir,
            max_upload_bytes: 1 << 20,
            monitoring_listen: "127.0.0.1:0".parse().unwrap(),
            max_connections: 16,
            header_read_timeout: std::time::Duration::from_secs(5),
            idle_timeout: std::time::Duration::from_secs(5),
            registry: crate::config::RegistryStore::Local,
        };
        let api = Api::new(registry, control.clone(), &settings);
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let (listener, monitoring) = (bind().await.unwrap(), bind().await.unwrap());
        let url = format!("http://{}", listener.local_addr().unwrap());
        let monitoring_url = format!("http://{}", monitoring.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::watch::channel(());
        let bounds = super::Bounds {
            max_connections: settings.max_connections,
            header_read_timeout: settings.header_read_timeout,
            idle_timeout: settings.idle_timeout,
        };
        let mut stopped_too = stopped.clone();
        let mut stopped = stopped;
        tokio::spawn(super::serve(super::Listener::Api, listener, api.clone(), bounds, async move {
            let _ = stopped.changed().await;
        }));
        tokio::spawn(super::serve(super::Listener::Monitoring, monitoring, api, bounds, async move {
            let _ = stopped_too.changed().await;
        }));
        Served { url, monitoring_url, control, http: reqwest::Client::new(), _stop: stop }
    }

    /// Status and JSON body (Null when there is none), from the API's listener.
    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        self.call_at(&self.url, method, path, token, body).await
    }

    /// GETs `path` on the monitoring listener.
    async fn probe(&self, path: &str) -> (u16, Value) {
        self.call_at(&self.monitoring_url, "GET", path, None, None).await
    }

    async fn call_at(
        &self,
        base: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, format!("{base}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request = match body {
            Some(Value::String(wasm)) => {
                request.header("content-type", "application/wasm").body(wasm.into_bytes())
            }
            Some(json) => {
                request.header("content-type", "application/json").body(serde_json::to_vec(&json).unwrap())
            }
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null))
    }

    async fn tenant(&self, name: &str, topic: &str) -> String {
        let grant = json!({ "topics": [topic], "data_sources": ["owner"], "purposes": ["testing"] });
        assert_eq!(
            self.call("PUT", &format!("/v1/tenants/{name}"), Some(OPERATOR), Some(grant)).await.0,
            201
        );
        let (status, issued) =
            self.call("POST", &format!("/v1/tenants/{name}/tokens"), Some(OPERATOR), None).await;
        assert_eq!(status, 201);
        issued["token"].as_str().unwrap().to_string()
    }
}

fn spec(topic: &str) -> Value {
    json!({ "topics": [topic], "data_source": "owner", "purpose": "testing" })
}

/// A stand-in component: the fake control accepts what starts like WebAssembly.
fn component() -> Value {
    Value::String("\0asm fake component".into())
}

#[tokio::test]
async fn tenants_cannot_touch_each_others_handlers_and_bad_tokens_are_refused() {
    let api = Served::start().await;
    let a = api.tenant("a", "topic-a").await;
    let b = api.tenant("b", "topic-b").await;
    assert_eq!(api.call("PUT", "/v1/tenants/a/handlers/h", Some(&a), Some(spec("topic-a"))).await.0, 201);
    let (status, uploaded) =
        api.call("POST", "/v1/tenants/a/handlers/h/versions", Some(&a), Some(component())).await;
    assert_eq!(status, 201, "{uploaded}");
    let version = uploaded["version"].as_str().unwrap().to_string();
    let before = api.call("GET", "/v1/tenants/a/handlers/h", Some(&a), None).await;
    let applied = *api.control.applied.lock().unwrap();
    let h = "/v1/tenants/a/handlers/h";
    let operations: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/v1/tenants/a".into(), None),
        ("GET", "/v1/tenants/a/handlers".into(), None),
        ("GET", h.into(), None),
        ("PUT", h.into(), Some(spec("topic-b"))),
        ("DELETE", h.into(), None),
        ("GET", format!("{h}/versions"), None),
        ("POST", format!("{h}/versions"), Some(component())),
        ("GET", format!("{h}/versions/{version}"), None),
        ("DELETE", format!("{h}/versions/{version}"), None),
        ("POST", format!("{h}/versions/{version}/activate"), None),
        ("POST", format!("{h}/rollback"), None),
    ];
    for (method, path, body) in &operations {
        let what = format!("{method} {path}");
        let (status, problem) = api.call(method, path, None, body.clone()).await;
        assert_eq!((status, &problem["type"]), (401, &json!("urn:keyhole:problem:missing-token")), "{what}");
        let (status, problem) = api.call(method, path, Some("kh_not-a-token"), body.clone()).await;
        assert_eq!((status, &problem["type"]), (401, &json!("urn:keyhole:problem:invalid-token")), "{what}");
        let (status, problem) = api.call(method, path, Some(&b), body.clone()).await;
        assert_eq!((status, &problem["type"]), (403, &json!("urn:keyhole:problem:wrong-tenant")), "{what}");
    }
    assert_eq!(api.call("GET", h, Some(&a), None).await, before, "nothing of a's changed");
    // Refused calls never reached the engine.
    assert_eq!(*api.control.applied.lock().unwrap(), applied, "no refused call was applied");
}

#[tokio::test]
async fn a_specs_declarations_are_kept_as_written_and_refused_with_every_key_at_fault() {
    let api = Served::start().await;
    let a = api.tenant("a", "topic-a").await;
    let declared = json!({
        "data_subjects": ["Kundinnen"],
        "recipients": [],
        "transfers": [{ "country": "US", "safeguard": "SCC (EU 2021/914)" }]
    });
    let mut good = spec("topic-a");
    good["declared"] = declared.clone();
    let (status, view) = api.call("PUT", "/v1/tenants/a/handlers/h", Some(&a), Some(good)).await;
    assert_eq!(status, 201, "{view}");
    assert_eq!(
        api.call("GET", "/v1/tenants/a/handlers/h", Some(&a), None).await.1["spec"]["declared"],
        declared
    );

    let mut bad = spec("topic-a");
    bad["declared"] =
        json!({ "data_categories": ["name\u{202e}"], "transfers": [{ "country": " ", "safeguard": "x" }] });
    let (status, problem) = api.call("PUT", "/v1/tenants/a/handlers/h", Some(&a), Some(bad)).await;
    assert_eq!((status, &problem["type"]), (422, &json!("urn:keyhole:problem:invalid")), "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("declared.data_categories[0]") && detail.contains("declared.transfers[0].country"),
        "{detail}"
    );
    let mut unknown = spec("topic-a");
    unknown["declared"] = json!({ "data_category": ["x"] });
    assert_eq!(api.call("PUT", "/v1/tenants/a/handlers/h", Some(&a), Some(unknown)).await.0, 422);
    let kept = api.call("GET", "/v1/tenants/a/handlers/h", Some(&a), None).await.1;
    assert_eq!(kept["spec"]["declared"], declared, "a refused spec changed nothing");
}

#[tokio::test]
async fn names_with_dots_or_dot_segments_are_refused() {
    let api = Served::start().await;
    let grant = json!({ "topics": ["t"], "data_sources": ["owner"], "purposes": ["testing"] });
    // (A client normalises `.`/`..` and `%2E` segments away before sending; tests/it/admin.rs
    // sends those raw.)
    for tenant in ["dot.x", "x%2Ey", "a.b.c"] {
        let (status, problem) =
            api.call("PUT", &format!("/v1/tenants/{tenant}"), Some(OPERATOR), Some(grant.clone())).await;
        assert_eq!(status, 422, "{tenant}: {problem}");
        assert_eq!(problem["type"], "urn:keyhole:problem:invalid");
    }
    let token = api.tenant("dot", "t").await;
    for handler in ["x.y", "x%2Ey"] {
        let (status, _) = api
            .call("PUT", &format!("/v1/tenants/dot/handlers/{handler}"), Some(&token), Some(spec("t")))
            .await;
        assert_eq!(status, 422, "{handler}");
    }
}

#[tokio::test]
async fn uploads_other_than_wasm_are_refused_before_the_body_is_read() {
    let api = Served::start().await;
    let a = api.tenant("a", "topic-a").await;
    api.call("PUT", "/v1/tenants/a/handlers/h", Some(&a), Some(spec("topic-a"))).await;
    let url = format!("{}/v1/tenants/a/handlers/h/versions", api.url);
    let send = |content_type: &'static str| {
        api.http.post(&url).bearer_auth(&a).header("content-type", content_type).body("\0asm fake").send()
    };
    let refused = send("application/x-www-form-urlencoded").await.unwrap();
    assert_eq!(refused.status(), 415);
    assert_eq!(send("application/octet-stream").await.unwrap().status(), 201);
    // Nothing refused was stored: one version only.
    let (_, versions) = api.call("GET", "/v1/tenants/a/handlers/h/versions", Some(&a), None).await;
    assert_eq!(versions.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn readiness_and_handler_state_say_what_the_control_reports() {
    let api = Served::start().await;
    assert_eq!(api.probe("/readyz").await.0, 200);
    api.control.not_ready.lock().unwrap().push("binding a/h is paused: the data owner is unavailable".into());
    let (status, problem) = api.probe("/readyz").await;
    assert_eq!(status, 503);
    assert!(problem["detail"].as_str().unwrap().contains("paused"), "{problem}");
    let a = api.tenant("a", "topic-a").await;
    api.call("PUT", "/v1/tenants/a/handlers/h", Some(&a), Some(spec("topic-a"))).await;
    let (_, uploaded) =
        api.call("POST", "/v1/tenants/a/handlers/h/versions", Some(&a), Some(component())).await;
    let version = uploaded["version"].as_str().unwrap();
    let (status, view) = api
        .call("POST", &format!("/v1/tenants/a/handlers/h/versions/{version}/activate"), Some(&a), None)
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["state"], "paused");
    assert!(view["state_reason"].as_str().unwrap().contains("503"), "{view}");
}

#[tokio::test]
async fn the_probes_and_metrics_are_served_apart_from_the_api() {
    let api = Served::start().await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(api.probe(path).await.0, 200, "{path} on the monitoring listener");
        let (status, problem) = api.call("GET", path, None, None).await;
        assert_eq!(status, 404, "{path} on the API's listener: {problem}");
    }
    for path in ["/v1/tenants", "/openapi.json"] {
        assert_eq!(api.probe(path).await.0, 404, "{path} on the monitoring listener");
    }
    assert_eq!(api.call("GET", "/openapi.json", None, None).await.0, 200);
}
