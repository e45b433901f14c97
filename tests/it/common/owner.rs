//! A data owner on loopback: a real HTTP server with a consent table the test changes while
//! keyhole runs, and a record of every request it got.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::served::{Served, serve_on};

/// What the owner answers for a path.
#[derive(Clone, Debug)]
pub enum Answer {
    /// 200 with this content type and body.
    Release(&'static str, Vec<u8>),
    /// This status, empty body.
    Status(u16),
}

/// One request the owner received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub event_id: Option<String>,
    pub tenant: Option<String>,
    pub handler: Option<String>,
    pub purpose: Option<String>,
    /// `Keyhole-Handler-Version`: the handler version the data would reach.
    pub handler_version: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct Table {
    answers: Mutex<HashMap<String, Answer>>,
    seen: Mutex<Vec<Seen>>,
    token: Mutex<String>,
    delay_ms: Mutex<u64>,
    /// When set, every request is answered with this status (the owner is down).
    down: Mutex<Option<u16>>,
    in_flight: Mutex<(usize, usize)>,
    /// The size of every batch request (`POST /api/batch`), in order.
    batches: Mutex<Vec<usize>>,
}

/// A running data owner. Dropping it stops the server.
pub struct Owner {
    pub addr: SocketAddr,
    table: Arc<Table>,
    _server: Served,
}

pub const TOKEN: &str = "keyhole-test-token";

impl Owner {
    /// Starts on a free loopback port.
    pub async fn start() -> Owner {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener)
    }

    /// Starts on a given address (to come back after being down).
    /// Starts an owner that releases a record holding `canary` for `customers/1` and refuses
    /// `customers/2` (403): the canary tests' data.
    pub async fn releasing_canary(canary: &str) -> Owner {
        let owner = Self::start().await;
        let record = format!("{{\"name\":\"Ada\",\"secret\":\"{canary}\"}}").into_bytes();
        owner.set("customers/1", Answer::Release("application/json", record));
        owner.set("customers/2", Answer::Status(403));
        owner
    }

    pub async fn start_on(addr: SocketAddr) -> Owner {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Self::serve(listener)
    }

    fn serve(listener: tokio::net::TcpListener) -> Owner {
        let table = Arc::new(Table::default());
        *table.token.lock().unwrap() = TOKEN.to_string();
        let app = axum::Router::new()
            .route("/api/batch", axum::routing::post(batch))
            .route("/api/{*path}", axum::routing::get(answer))
            .with_state(table.clone());
        let server = serve_on(listener, app);
        Owner { addr: server.addr, table, _server: server }
    }

    /// The base URL to configure: `http://127.0.0.1:PORT/api/`.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/", self.addr)
    }

    /// Sets the answer for a path (relative to `/api/`).
    pub fn set(&self, path: &str, answer: Answer) {
        self.table.answers.lock().unwrap().insert(path.to_string(), answer);
    }

    /// Changes the token the owner accepts (the old one then gets 401).
    pub fn set_token(&self, token: &str) {
        *self.table.token.lock().unwrap() = token.to_string();
    }

    /// Delays every answer.
    pub fn set_delay(&self, delay: Duration) {
        *self.table.delay_ms.lock().unwrap() = delay.as_millis() as u64;
    }

    /// Answers every request with `status` (an outage) until [`Owner::recover`].
    pub fn go_down(&self, status: u16) {
        *self.table.down.lock().unwrap() = Some(status);
    }

    /// Answers from the consent table again.
    pub fn recover(&self) {
        *self.table.down.lock().unwrap() = None;
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.table.seen.lock().unwrap().clone()
    }

    /// The number of references in each batch request so far (docs/data-owners.md, "Batched
    /// resolution"): the owner answers `POST /api/batch` from the same table.
    pub fn batches(&self) -> Vec<usize> {
        self.table.batches.lock().unwrap().clone()
    }

    /// The most requests it was answering at once.
    pub fn max_concurrent(&self) -> usize {
        self.table.in_flight.lock().unwrap().1
    }
}

async fn answer(State(table): State<Arc<Table>>, Path(path): Path<String>, headers: HeaderMap) -> Response {
    let event_id = headers.get("keyhole-event-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let answer = decide(&table, path, event_id, &headers).await;
    match answer {
        Answer::Release(content_type, body) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Answer::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
    }
}

/// A batch request: every reference decided as a single request would be, one result each, in
/// order; the whole batch answered with the outage's status while the owner is down, 401 without
/// the token.
async fn batch(State(table): State<Arc<Table>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    use base64::Engine as _;
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(request["version"], 1, "{request}");
    let references = request["references"].as_array().unwrap().clone();
    table.batches.lock().unwrap().push(references.len());
    let down = *table.down.lock().unwrap();
    let authorised = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&*format!("Bearer {}", table.token.lock().unwrap()));
    if let Some(status) = down.or((!authorised).then_some(401)) {
        return StatusCode::from_u16(status).unwrap().into_response();
    }
    let mut results = Vec::new();
    for reference in references {
        let dataref = reference["dataref"].as_str().unwrap();
        let path = dataref.split('?').next().unwrap_or_default().to_string();
        let event_id = reference["event_id"].as_str().map(str::to_string);
        results.push(match decide(&table, path, event_id, &headers).await {
            Answer::Release(content_type, body) => serde_json::json!({
                "status": 200,
                "content_type": content_type,
                "data_base64": base64::engine::general_purpose::STANDARD.encode(body),
            }),
            Answer::Status(status) => serde_json::json!({ "status": status }),
        });
    }
    axum::Json(serde_json::json!({ "version": 1, "results": results })).into_response()
}

/// Decides one reference and records it as seen.
async fn decide(table: &Table, path: String, event_id: Option<String>, headers: &HeaderMap) -> Answer {
    {
        let mut n = table.in_flight.lock().unwrap();
        n.0 += 1;
        n.1 = n.1.max(n.0);
    }
    let delay = *table.delay_ms.lock().unwrap();
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let authorised = text("authorization") == Some(format!("Bearer {}", table.token.lock().unwrap()));
    let down = *table.down.lock().unwrap();
    let answer = if let Some(status) = down {
        Answer::Status(status)
    } else if authorised {
        table.answers.lock().unwrap().get(&path).cloned().unwrap_or(Answer::Status(404))
    } else {
        Answer::Status(401)
    };
    let status = match &answer {
        Answer::Release(..) => 200,
        Answer::Status(s) => *s,
    };
    table.seen.lock().unwrap().push(Seen {
        path,
        event_id,
        tenant: text("keyhole-tenant"),
        handler: text("keyhole-handler"),
        purpose: text("keyhole-purpose"),
        handler_version: text("keyhole-handler-version"),
        status,
    });
    table.in_flight.lock().unwrap().0 -= 1;
    answer
}
