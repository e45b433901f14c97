//! keyhole with its admin API on loopback, and a small client for the tests.

use super::broker;
use super::running::Running;
use keyhole::config::Config;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The operator's token in every admin test.
pub const OPERATOR: &str = "operator-token-for-the-tests";

/// keyhole running with the admin API, no configured handler, one data source `owner`.
pub struct Admin {
    pub url: String,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub monitoring_url: String,
    pub running: Running,
    pub state_dir: PathBuf,
    pub group: String,
    http: reqwest::Client,
}

/// An answer: status, content type, body as JSON (Null when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub www_authenticate: Option<String>,
    pub body: Value,
}

/// The configuration: the test broker, a data source `owner` at `owner_base`, the admin API
/// keeping its registry in `state_dir`.
pub fn admin_config(group: &str, owner_base: &str, state_dir: &Path) -> String {
    format!(
        r#"
        {common}
        [[data_source]]
        name = "other"
        base_url = "http://127.0.0.1:9/"

        [receipts]
        path = "{state_dir}/receipts.jsonl"

        [admin]
        listen = "127.0.0.1:0"
        operator_token = {{ value = "{OPERATOR}" }}
        state_dir = "{state_dir}"
        "#,
        common = super::kafka_and_owner_toml(
            group,
            owner_base,
            &format!(r#"{{ bearer_token = {{ value = "{}" }} }}"#, super::owner::TOKEN)
        ),
        state_dir = state_dir.display(),
    )
}

impl Admin {
    /// Starts keyhole with a fresh registry.
    pub async fn start(owner_base: &str) -> Admin {
        let state_dir = std::env::temp_dir().join(broker::unique("keyhole-registry"));
        Admin::start_in(owner_base, &state_dir, &broker::unique("keyhole")).await
    }

    /// Starts keyhole on an existing registry directory and consumer group prefix.
    pub async fn start_in(owner_base: &str, state_dir: &Path, group: &str) -> Admin {
        // The receipts file lives there too, and keyhole opens it before the registry.
        std::fs::create_dir_all(state_dir).unwrap();
        let config: Config = toml::from_str(&admin_config(group, owner_base, state_dir)).unwrap();
        let settings = config.validate(Path::new(".")).unwrap_or_else(|p| panic!("{p:#?}"));
        let listeners = super::running::Listeners::bind().await;
        let (url, monitoring_url) = listeners.urls();
        let running = Running::start_with(settings, Some(listeners));
        Admin {
            url,
            monitoring_url,
            running,
            state_dir: state_dir.to_path_buf(),
            group: group.to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// keyhole started by the caller (with settings of its own) on `url` and `monitoring_url`.
    pub fn from_parts(
        url: String,
        monitoring_url: String,
        running: Running,
        state_dir: PathBuf,
        group: String,
    ) -> Admin {
        Admin { url, monitoring_url, running, state_dir, group, http: reqwest::Client::new() }
    }

    /// Calls the API: `body` is JSON for a `Value`, raw bytes for `Body::Bytes`.
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Body) -> Answer {
        call(&self.http, &self.url, method, path, token, body).await
    }

    /// GETs `path` on the monitoring listener (probes, metrics).
    pub async fn probe(&self, path: &str) -> Answer {
        call(&self.http, &self.monitoring_url, "GET", path, None, Body::None).await
    }

    /// A call that must succeed with `status`; its body.
    pub async fn ok(&self, status: u16, method: &str, path: &str, token: Option<&str>, body: Body) -> Value {
        let answer = self.call(method, path, token, body).await;
        assert_eq!(answer.status, status, "{method} {path}: {answer:#?}");
        answer.body
    }

    /// Creates a tenant granted `topics`, the `owner` data source and the purpose `testing`;
    /// returns its token.
    pub async fn tenant(&self, tenant: &str, topics: &[&str], limits: Value) -> String {
        let grant = serde_json::json!({
            "topics": topics, "data_sources": ["owner"], "purposes": ["testing"],
            "reply_topics": [], "limits": limits,
        });
        self.ok(201, "PUT", &format!("/v1/tenants/{tenant}"), Some(OPERATOR), Body::Json(grant)).await;
        let issued =
            self.ok(201, "POST", &format!("/v1/tenants/{tenant}/tokens"), Some(OPERATOR), Body::None).await;
        issued["token"].as_str().unwrap().to_string()
    }
}

/// Calls the admin API at `url`.
pub async fn call(
    http: &reqwest::Client,
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Body,
) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = http.request(method, format!("{url}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request = match body {
        Body::None => request,
        Body::Json(value) => {
            request.header("content-type", "application/json").body(serde_json::to_vec(&value).unwrap())
        }
        Body::Bytes(bytes) => request.header("content-type", "application/wasm").body(bytes),
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    let content_type = header("content-type").unwrap_or_default();
    let www_authenticate = header("www-authenticate");
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, content_type, www_authenticate, body }
}

/// A request body.
pub enum Body {
    None,
    Json(Value),
    Bytes(Vec<u8>),
}
