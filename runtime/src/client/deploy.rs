//! The third party's side of the admin API: upload a handler component to a running keyhole,
//! activate it, or roll back (`keyhole deploy`, `keyhole rollback`).

use crate::registry::{HandlerView, VersionInfo};
use std::time::Duration;

/// Why a deployment did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// keyhole could not be reached, or answered with something that is not its API.
    #[error("cannot reach keyhole's admin API at {url}: {message}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// Why.
        message: String,
    },
    /// keyhole refused: the problem it described.
    #[error("{status}: {detail}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The problem's `detail` (or the body).
        detail: String,
    },
}

/// What `keyhole deploy` did.
#[derive(Debug)]
pub struct Deployed {
    /// The uploaded version.
    pub version: VersionInfo,
    /// Whether these bytes were new.
    pub created: bool,
    /// The handler after activation, when activated.
    pub handler: Option<HandlerView>,
}

/// A client of one tenant's handler.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// A client of the admin API at `base` (e.g. `http://keyhole:9090`) with a tenant's token.
    pub fn new(base: &str, token: &str) -> Result<Self, DeployError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| DeployError::Unreachable { url: base.into(), message: e.to_string() })?;
        Ok(Client { http, base: base.trim_end_matches('/').to_string(), token: token.to_string() })
    }

    /// Uploads `wasm` as a version of `tenant/handler`; activates it when `activate`.
    pub async fn deploy(
        &self,
        tenant: &str,
        handler: &str,
        wasm: Vec<u8>,
        activate: bool,
    ) -> Result<Deployed, DeployError> {
        let path = format!("/v1/tenants/{tenant}/handlers/{handler}");
        let request = self.http.post(self.url(&format!("{path}/versions"))).body(wasm);
        let (status, body) =
            self.send(request.header(reqwest::header::CONTENT_TYPE, "application/wasm")).await?;
        let version: VersionInfo = self.parse(&body)?;
        let handler = match activate {
            true => {
                let url = format!("{path}/versions/{}/activate", version.version);
                let (_, body) = self.send(self.http.post(self.url(&url))).await?;
                Some(self.parse(&body)?)
            }
            false => None,
        };
        Ok(Deployed { version, created: status == 201, handler })
    }

    /// Activates the version that was active before the current one.
    pub async fn rollback(&self, tenant: &str, handler: &str) -> Result<HandlerView, DeployError> {
        let url = self.url(&format!("/v1/tenants/{tenant}/handlers/{handler}/rollback"));
        let (_, body) = self.send(self.http.post(url)).await?;
        self.parse(&body)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), DeployError> {
        let unreachable =
            |e: reqwest::Error| DeployError::Unreachable { url: self.base.clone(), message: e.to_string() };
        let response = request.bearer_auth(&self.token).send().await.map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(unreachable)?.to_vec();
        if (200..300).contains(&status) {
            return Ok((status, body));
        }
        let detail = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|problem| problem["detail"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(500).collect());
        Err(DeployError::Refused { status, detail })
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, body: &[u8]) -> Result<T, DeployError> {
        serde_json::from_slice(body).map_err(|e| DeployError::Unreachable {
            url: self.base.clone(),
            message: format!("the answer is not keyhole's: {e}"),
        })
    }
}
