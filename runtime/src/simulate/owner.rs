//! A sample data owner for the demo and `keyhole dev`: a real HTTP API on loopback that holds
//! records and the end user's consent for each, and answers as a data owner would.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// The end user's consent for a record, as the owner sees it when keyhole asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consent {
    /// Released: 200 with the record.
    Granted,
    /// Never given: 403.
    Missing,
    /// Given when the event was published, withdrawn before keyhole consumed it: 403.
    Withdrawn,
    /// Legally unavailable: 451.
    LegallyUnavailable,
    /// The record was erased: 410.
    Erased,
}

/// One record the owner holds.
#[derive(Clone, Debug)]
pub struct Record {
    /// Its path under the owner's base URL, e.g. `customers/42`.
    pub path: String,
    /// Its media type.
    pub content_type: String,
    /// Its bytes.
    pub body: Vec<u8>,
    /// The consent in force.
    pub consent: Consent,
}

/// The token the sample owner accepts.
pub const SAMPLE_TOKEN: &str = "keyhole-sample-token";

#[derive(Default)]
struct Table {
    records: Mutex<HashMap<String, Record>>,
}

/// A running sample owner; stops when dropped.
pub struct SampleOwner {
    addr: SocketAddr,
    table: Arc<Table>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for SampleOwner {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl SampleOwner {
    /// Starts on a free loopback port with these records.
    pub async fn start(records: impl IntoIterator<Item = Record>) -> std::io::Result<SampleOwner> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let table = Arc::new(Table::default());
        {
            let mut map = table.records.lock().unwrap_or_else(|p| p.into_inner());
            for record in records {
                map.insert(record.path.clone(), record);
            }
        }
        let app =
            axum::Router::new().route("/api/{*path}", axum::routing::get(answer)).with_state(table.clone());
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "The sample data owner stopped.");
            }
        });
        Ok(SampleOwner { addr, table, server })
    }

    /// The base URL references resolve against.
    pub fn base_url(&self) -> url::Url {
        #[allow(clippy::expect_used)]
        url::Url::parse(&format!("http://{}/api/", self.addr)).expect("loopback URL") // invariant: a socket address always makes a valid URL
    }

    /// Changes the consent for a record (the user withdraws it, say).
    pub fn set_consent(&self, path: &str, consent: Consent) {
        let mut map = self.table.records.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(record) = map.get_mut(path) {
            record.consent = consent;
        }
    }
}

async fn answer(State(table): State<Arc<Table>>, Path(path): Path<String>, headers: HeaderMap) -> Response {
    let expected = format!("Bearer {SAMPLE_TOKEN}");
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let record = table.records.lock().unwrap_or_else(|p| p.into_inner()).get(&path).cloned();
    match record {
        None => StatusCode::NOT_FOUND.into_response(),
        Some(record) => match record.consent {
            Consent::Granted => ([(header::CONTENT_TYPE, record.content_type)], record.body).into_response(),
            Consent::Missing | Consent::Withdrawn => StatusCode::FORBIDDEN.into_response(),
            Consent::LegallyUnavailable => StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS.into_response(),
            Consent::Erased => StatusCode::GONE.into_response(),
        },
    }
}
