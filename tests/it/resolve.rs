//! Resolution against real HTTP servers on loopback: what the owner receives, how each of its
//! answers is classified, the limits (time, size, concurrency, redirects) and that no error
//! repeats the token or a reference's query string.
// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use keyhole::resolve::{
    Backoff, DataSourceSettings, Identity, RETRY_AFTER_CEILING, Released, Requester, ResolveError, Resolver,
    ResolverBuildError,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use url::Url;

const TOKEN: &str = "tok-3xq9-very-secret";
const LIMIT: u64 = 1024;
const CUSTOMER: &str = r#"{"name":"Zoë","email":"zoe@example.com"}"#;

const WHO: Requester<'static> = Requester {
    tenant: "acme",
    handler: "welcome-mail",
    purpose: "marketing",
    event_id: "ev-1",
    handler_version: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
};

/// What the fake data owner saw.
#[derive(Default)]
struct Seen {
    /// The headers of every request to `/api/customers/42`.
    headers: Mutex<Vec<HeaderMap>>,
    /// Requests under way at `/api/slow-count` now, and the most at once.
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// Requests that reached paths outside `/api/` (a redirect escaping the base path).
    outside: AtomicUsize,
    /// Requests to `/api/loop`.
    loops: AtomicUsize,
    /// Port of the canary, for the cross-origin redirect.
    canary_port: Mutex<u16>,
}

async fn customer(State(seen): State<Arc<Seen>>, headers: HeaderMap) -> Response {
    seen.headers.lock().unwrap().push(headers);
    ([(header::CONTENT_TYPE, "application/json; charset=utf-8")], CUSTOMER).into_response()
}

async fn status(Path(code): Path<u16>) -> Response {
    let mut response = StatusCode::from_u16(code).unwrap().into_response();
    let retry_after = match code {
        429 => Some("2".to_owned()),
        503 => Some(httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120))),
        _ => None,
    };
    if let Some(value) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_str(&value).unwrap());
    }
    response
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(5)).await;
    "too late"
}

async fn slow_count(State(seen): State<Arc<Seen>>) -> &'static str {
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.most_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
    "done"
}

/// One byte over the limit, with a Content-Length.
async fn big() -> Vec<u8> {
    vec![b'x'; LIMIT as usize + 1]
}

/// Over the limit in small chunks, without a Content-Length (chunked transfer).
async fn streamed() -> Response {
    let chunks = (0..16).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 100])));
    let response = Response::new(Body::from_stream(futures_util::stream::iter(chunks)));
    assert!(response.headers().get(header::CONTENT_LENGTH).is_none());
    response
}

/// Exactly at the limit, without a Content-Length.
async fn streamed_at_limit() -> Response {
    let chunks = (0..4).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; LIMIT as usize / 4])));
    Response::new(Body::from_stream(futures_util::stream::iter(chunks)))
}

fn redirect_to(location: String) -> Response {
    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response()
}

async fn outside(State(seen): State<Arc<Seen>>) -> &'static str {
    seen.outside.fetch_add(1, Ordering::SeqCst);
    "should never be asked"
}

async fn redirect_loop(State(seen): State<Arc<Seen>>) -> Response {
    seen.loops.fetch_add(1, Ordering::SeqCst);
    redirect_to("/api/loop".to_owned())
}

/// A fake data owner serving under `/api/`; returns its base URL and what it saw.
async fn owner() -> (Url, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let router = Router::new()
        .route("/api/customers/42", get(customer))
        .route("/api/status/{code}", get(status))
        .route("/api/slow", get(slow))
        .route("/api/slow-count", get(slow_count))
        .route("/api/big", get(big))
        .route("/api/streamed", get(streamed))
        .route("/api/streamed-at-limit", get(streamed_at_limit))
        .route("/api/moved", get(|| async { redirect_to("/api/customers/42".to_owned()) }))
        .route("/api/loop", get(redirect_loop))
        .route("/api/escape", get(|| async { redirect_to("/admin/secret".to_owned()) }))
        .route(
            "/api/away",
            get(|State(seen): State<Arc<Seen>>| async move {
                let port = *seen.canary_port.lock().unwrap();
                redirect_to(format!("http://127.0.0.1:{port}/api/customers/42"))
            }),
        )
        .route("/admin/secret", get(outside))
        .with_state(seen.clone());
    let base = serve(router).await;
    (base, seen)
}

/// Another server that counts every request it receives: proof that nothing reached it.
async fn canary() -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let router = Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            CUSTOMER
        }
    });
    let base = serve(router).await;
    (base.port().unwrap(), hits)
}

async fn serve(router: Router) -> Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Url::parse(&format!("http://127.0.0.1:{port}/api/")).unwrap()
}

fn settings(base: &Url) -> DataSourceSettings {
    DataSourceSettings {
        name: "crm".into(),
        base_url: base.clone(),
        identity: Identity::Bearer(TOKEN.into()),
        timeout: Duration::from_secs(2),
        max_response_bytes: LIMIT,
        max_concurrent_requests: 8,
        batch: None,
    }
}

fn resolver(base: &Url) -> Resolver {
    Resolver::new(settings(base)).unwrap()
}

async fn fetch(base: &Url, reference: &str) -> Result<Released, ResolveError> {
    resolver(base).fetch(&base.join(reference).unwrap(), &WHO).await
}

async fn refusal(base: &Url, reference: &str) -> ResolveError {
    match fetch(base, reference).await {
        Ok(released) => panic!("{reference}: expected a refusal, got {released:?}"),
        Err(error) => error,
    }
}

/// Asserts that neither the error's message nor its Debug form repeats a secret.
fn assert_tells_no_secret(error: &ResolveError) {
    for shown in [error.to_string(), format!("{error:?}")] {
        assert!(!shown.contains("secret"), "query string leaked: {shown}");
        assert!(!shown.contains(TOKEN), "token leaked: {shown}");
    }
}

// --- What the owner receives and what it releases ------------------------------------------

#[tokio::test]
async fn released_data_arrives_exactly_and_the_owner_learns_who_asks() {
    let (base, seen) = owner().await;
    let released = fetch(&base, "customers/42").await.unwrap();
    assert_eq!(released.body, CUSTOMER.as_bytes());
    assert_eq!(released.content_type.as_deref(), Some("application/json; charset=utf-8"));

    let headers = seen.headers.lock().unwrap();
    assert_eq!(headers.len(), 1);
    let header = |name: &str| headers[0].get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("authorization").as_deref(), Some(&*format!("Bearer {TOKEN}")));
    assert_eq!(header("keyhole-tenant").as_deref(), Some("acme"));
    assert_eq!(header("keyhole-handler").as_deref(), Some("welcome-mail"));
    assert_eq!(header("keyhole-purpose").as_deref(), Some("marketing"));
    assert_eq!(header("keyhole-event-id").as_deref(), Some("ev-1"));
    assert_eq!(header("keyhole-handler-version").as_deref(), Some(WHO.handler_version));
    assert_eq!(header("accept").as_deref(), Some("*/*"));
    assert_eq!(header("user-agent"), Some(format!("keyhole/{}", env!("CARGO_PKG_VERSION"))));
}

#[tokio::test]
async fn without_identity_no_authorization_is_sent() {
    let (base, seen) = owner().await;
    let resolver = Resolver::new(DataSourceSettings { identity: Identity::None, ..settings(&base) }).unwrap();
    resolver.fetch(&base.join("customers/42").unwrap(), &WHO).await.unwrap();
    assert!(seen.headers.lock().unwrap()[0].get("authorization").is_none());
}

#[tokio::test]
async fn event_id_that_is_not_a_header_value_is_sent_percent_encoded() {
    let (base, seen) = owner().await;
    let who = Requester { event_id: "ev-ü\r\nX-Forged: 1 100%", ..WHO };
    resolver(&base).fetch(&base.join("customers/42").unwrap(), &who).await.unwrap();
    let headers = seen.headers.lock().unwrap();
    assert_eq!(headers[0].get("keyhole-event-id").unwrap(), "ev-%C3%BC%0D%0AX-Forged: 1 100%25");
    assert!(headers[0].get("x-forged").is_none());
}

#[tokio::test]
async fn resolver_reports_its_data_source_name() {
    let (base, _) = owner().await;
    assert_eq!(resolver(&base).name(), "crm");
}

// --- The owner's refusals, after the table "Answers from a data owner" ---------------------

#[tokio::test]
async fn consent_withdrawn_is_reported_as_consent_denied() {
    let (base, _) = owner().await;
    let error = refusal(&base, "status/403").await;
    assert!(matches!(error, ResolveError::ConsentDenied { status: 403 }), "{error:?}");
    assert_eq!(error.kind(), "consent_denied");
}

#[tokio::test]
async fn legally_unavailable_is_reported_as_consent_denied() {
    let (base, _) = owner().await;
    let error = refusal(&base, "status/451").await;
    assert!(matches!(error, ResolveError::ConsentDenied { status: 451 }), "{error:?}");
}

#[tokio::test]
async fn unknown_and_erased_data_are_reported_as_gone() {
    let (base, _) = owner().await;
    for code in [404, 410] {
        let error = refusal(&base, &format!("status/{code}")).await;
        assert!(matches!(error, ResolveError::Gone { status } if status == code), "{error:?}");
    }
}

#[tokio::test]
async fn refused_credentials_pause_instead_of_deciding() {
    let (base, _) = owner().await;
    let error = refusal(&base, "status/401").await;
    assert!(matches!(error, ResolveError::Unauthorized), "{error:?}");
}

#[tokio::test]
async fn timeout_and_server_errors_without_retry_after_are_transient() {
    let (base, _) = owner().await;
    for code in [408, 500] {
        let error = refusal(&base, &format!("status/{code}")).await;
        assert!(matches!(error, ResolveError::Transient { retry_after: None, .. }), "{code}: {error:?}");
    }
}

#[tokio::test]
async fn too_many_requests_is_transient_with_retry_after_seconds() {
    let (base, _) = owner().await;
    let error = refusal(&base, "status/429").await;
    assert!(
        matches!(error, ResolveError::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(2)),
        "{error:?}"
    );
    assert_eq!(error.retry_after(), Some(Duration::from_secs(2)));
}

#[tokio::test]
async fn unavailable_is_transient_with_retry_after_date() {
    let (base, _) = owner().await;
    let error = refusal(&base, "status/503").await;
    let Some(wait) = error.retry_after() else { panic!("no Retry-After read: {error:?}") };
    // The date has whole seconds: 120 s ahead, less the time the test took.
    assert!(wait > Duration::from_secs(110) && wait <= Duration::from_secs(120), "{wait:?}");
    assert!(matches!(error, ResolveError::Transient { .. }), "{error:?}");
}

#[tokio::test]
async fn bad_request_is_rejected_for_good() {
    let (base, _) = owner().await;
    let error = refusal(&base, "status/400").await;
    assert!(matches!(error, ResolveError::Rejected { status: 400 }), "{error:?}");
}

// --- No answer ------------------------------------------------------------------------------

#[tokio::test]
async fn connection_refused_is_transient_and_does_not_repeat_the_query() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let base = Url::parse(&format!("http://127.0.0.1:{port}/api/")).unwrap();
    let error = refusal(&base, "customers/42?email=secret@example.com").await;
    let ResolveError::Transient { reason, retry_after: None } = &error else { panic!("{error:?}") };
    assert!(reason.starts_with("cannot connect"), "{reason}");
    assert_tells_no_secret(&error);
}

#[tokio::test]
async fn slow_owner_times_out_as_transient_without_the_query() {
    let (base, _) = owner().await;
    let resolver =
        Resolver::new(DataSourceSettings { timeout: Duration::from_millis(300), ..settings(&base) }).unwrap();
    let started = Instant::now();
    let error = resolver
        .fetch(&base.join("slow?email=secret@example.com").unwrap(), &WHO)
        .await
        .expect_err("the owner sleeps for 5 s");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    let ResolveError::Transient { reason, .. } = &error else { panic!("{error:?}") };
    assert!(reason.contains("timed out"), "{reason}");
    assert_tells_no_secret(&error);
}

#[tokio::test]
async fn no_refusal_repeats_the_token_or_the_query() {
    let (base, _) = owner().await;
    for code in [400, 401, 403, 404, 429, 500, 503] {
        let error = refusal(&base, &format!("status/{code}?email=secret@example.com")).await;
        assert_tells_no_secret(&error);
    }
}

// --- Size limit -----------------------------------------------------------------------------

#[tokio::test]
async fn body_over_the_limit_by_content_length_is_too_large() {
    let (base, _) = owner().await;
    let error = refusal(&base, "big").await;
    assert!(matches!(error, ResolveError::TooLarge { limit: LIMIT }), "{error:?}");
}

#[tokio::test]
async fn streamed_body_over_the_limit_is_too_large() {
    let (base, _) = owner().await;
    let error = refusal(&base, "streamed").await;
    assert!(matches!(error, ResolveError::TooLarge { limit: LIMIT }), "{error:?}");
}

#[tokio::test]
async fn streamed_body_at_the_limit_is_released_whole() {
    let (base, _) = owner().await;
    let released = fetch(&base, "streamed-at-limit").await.unwrap();
    assert_eq!(released.body, vec![b'y'; LIMIT as usize]);
}

// --- Redirects and the data source's boundary ---------------------------------------------

#[tokio::test]
async fn redirect_within_the_data_source_is_followed() {
    let (base, seen) = owner().await;
    let released = fetch(&base, "moved").await.unwrap();
    assert_eq!(released.body, CUSTOMER.as_bytes());
    // Same origin: the owner still learns who asks.
    let headers = seen.headers.lock().unwrap();
    assert_eq!(headers[0].get("authorization").unwrap(), &*format!("Bearer {TOKEN}"));
}

#[tokio::test]
async fn redirect_to_another_origin_is_not_followed() {
    let (base, seen) = owner().await;
    let (canary_port, canary_hits) = canary().await;
    *seen.canary_port.lock().unwrap() = canary_port;
    let error = refusal(&base, "away").await;
    assert!(matches!(error, ResolveError::Rejected { status: 307 }), "{error:?}");
    assert_eq!(canary_hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn redirect_outside_the_base_path_is_not_followed() {
    let (base, seen) = owner().await;
    let error = refusal(&base, "escape").await;
    assert!(matches!(error, ResolveError::Rejected { status: 307 }), "{error:?}");
    assert_eq!(seen.outside.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn redirect_chain_stops_after_five() {
    let (base, seen) = owner().await;
    let error = refusal(&base, "loop").await;
    assert!(matches!(error, ResolveError::Rejected { status: 307 }), "{error:?}");
    assert_eq!(seen.loops.load(Ordering::SeqCst), 1 + keyhole::resolve::MAX_REDIRECTS);
}

#[tokio::test]
async fn reference_outside_the_data_source_is_never_requested() {
    let (base, seen) = owner().await;
    let (canary_port, canary_hits) = canary().await;
    let resolver = resolver(&base);
    let elsewhere = Url::parse(&format!("http://127.0.0.1:{canary_port}/api/customers/42")).unwrap();
    for url in [base.join("/admin/secret").unwrap(), elsewhere] {
        let error = resolver.fetch(&url, &WHO).await.expect_err("outside the data source");
        assert!(matches!(error, ResolveError::NotSent), "{url}: {error:?}");
    }
    assert_eq!(seen.outside.load(Ordering::SeqCst), 0);
    assert_eq!(canary_hits.load(Ordering::SeqCst), 0);
}

// --- Concurrency ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_never_exceed_the_limit() {
    let (base, seen) = owner().await;
    let resolver = Arc::new(
        Resolver::new(DataSourceSettings { max_concurrent_requests: 2, ..settings(&base) }).unwrap(),
    );
    let url = base.join("slow-count").unwrap();
    let fetches: Vec<_> = (0..6)
        .map(|_| {
            let (resolver, url) = (resolver.clone(), url.clone());
            tokio::spawn(async move { resolver.fetch(&url, &WHO).await })
        })
        .collect();
    for fetch in fetches {
        assert_eq!(fetch.await.unwrap().unwrap().body, "done");
    }
    // Exactly 2: the limit held, and the requests did overlap (so the test can fail).
    assert_eq!(seen.most_in_flight.load(Ordering::SeqCst), 2);
}

// --- Building a resolver --------------------------------------------------------------------

#[test]
fn garbage_client_certificate_fails_without_showing_the_key() {
    let key = b"-----BEGIN PRIVATE KEY-----\nS3CR3T-KEY-BYTES\n-----END PRIVATE KEY-----\n".to_vec();
    for certificate_pem in [
        b"not pem at all".to_vec(),
        b"-----BEGIN CERTIFICATE-----\nZm9v\n-----END CERTIFICATE-----\n".to_vec(),
    ] {
        let identity = Identity::ClientCertificate { certificate_pem, key_pem: key.clone() };
        let base = Url::parse("https://crm.example.com/api/").unwrap();
        let error = Resolver::new(DataSourceSettings { identity, ..settings(&base) }).unwrap_err();
        assert!(matches!(error, ResolverBuildError::InvalidClientCertificate { .. }), "{error:?}");
        for shown in [error.to_string(), format!("{error:?}")] {
            assert!(shown.contains("crm"), "names the data source: {shown}");
            assert!(!shown.contains("S3CR3T"), "key leaked: {shown}");
        }
    }
}

#[test]
fn key_that_is_not_pkcs8_is_refused_with_a_hint() {
    let identity = Identity::ClientCertificate {
        certificate_pem: b"-----BEGIN CERTIFICATE-----\nZm9v\n-----END CERTIFICATE-----\n".to_vec(),
        key_pem: b"-----BEGIN RSA PRIVATE KEY-----\nS3CR3T\n-----END RSA PRIVATE KEY-----\n".to_vec(),
    };
    let base = Url::parse("https://crm.example.com/api/").unwrap();
    let error = Resolver::new(DataSourceSettings { identity, ..settings(&base) }).unwrap_err();
    let shown = error.to_string();
    assert!(shown.contains("PKCS#8") && !shown.contains("S3CR3T"), "{shown}");
}

#[test]
fn bearer_token_that_cannot_be_a_header_fails_without_showing_it() {
    let base = Url::parse("https://crm.example.com/api/").unwrap();
    for token in ["tok-secret\r\nX-Forged: 1", ""] {
        let identity = Identity::Bearer(token.into());
        let error = Resolver::new(DataSourceSettings { identity, ..settings(&base) }).unwrap_err();
        assert!(matches!(error, ResolverBuildError::InvalidBearerToken { .. }), "{error:?}");
        assert!(!format!("{error} {error:?}").contains("secret"), "{error}");
    }
}

#[test]
fn zero_concurrency_is_refused() {
    let base = Url::parse("https://crm.example.com/api/").unwrap();
    let error =
        Resolver::new(DataSourceSettings { max_concurrent_requests: 0, ..settings(&base) }).unwrap_err();
    assert!(matches!(error, ResolverBuildError::InvalidSetting { .. }), "{error:?}");
}

// --- Backoff --------------------------------------------------------------------------------

#[test]
fn backoff_delays_stay_within_a_growing_capped_ceiling() {
    let backoff = Backoff::default();
    let mut previous = Duration::ZERO;
    for attempt in 1..=20 {
        let ceiling = backoff.ceiling(attempt);
        assert!(ceiling >= previous, "attempt {attempt}: the ceiling shrank");
        assert!(ceiling <= backoff.max, "attempt {attempt}: over the cap");
        previous = ceiling;
        for _ in 0..200 {
            let delay = backoff.delay(attempt, None);
            assert!(delay <= ceiling, "attempt {attempt}: {delay:?} > {ceiling:?}");
        }
    }
    assert_eq!(backoff.ceiling(1), Duration::from_millis(100));
    assert_eq!(backoff.ceiling(4), Duration::from_millis(800));
    assert_eq!(backoff.ceiling(20), Duration::from_secs(30));
}

#[test]
fn backoff_is_jittered_and_grows_on_average() {
    let backoff = Backoff::default();
    let mean = |attempt| (0..2000).map(|_| backoff.delay(attempt, None)).sum::<Duration>() / 2000;
    let (first, fifth) = (mean(1), mean(5));
    // Full jitter: the mean is about half the ceiling (50 ms, then 800 ms).
    assert!(first > Duration::from_millis(35) && first < Duration::from_millis(65), "{first:?}");
    assert!(fifth > Duration::from_millis(600) && fifth < Duration::from_millis(1000), "{fifth:?}");
    let distinct: std::collections::HashSet<_> = (0..50).map(|_| backoff.delay(3, None)).collect();
    assert!(distinct.len() > 40, "not jittered: {distinct:?}");
}

#[test]
fn backoff_never_retries_sooner_than_retry_after() {
    let backoff = Backoff::default();
    assert_eq!(backoff.delay(1, Some(Duration::from_secs(2))), Duration::from_secs(2));
    for _ in 0..200 {
        let delay = backoff.delay(12, Some(Duration::from_secs(1)));
        assert!(delay >= Duration::from_secs(1) && delay <= backoff.max, "{delay:?}");
    }
}

#[test]
fn backoff_honours_retry_after_above_max_up_to_five_minutes() {
    let backoff = Backoff::default();
    assert_eq!(backoff.delay(1, Some(Duration::from_secs(120))), Duration::from_secs(120));
    assert_eq!(backoff.delay(1, Some(Duration::from_secs(3600))), RETRY_AFTER_CEILING);
    assert_eq!(RETRY_AFTER_CEILING, Duration::from_secs(300));
}
