//! `keyhole owner check`: a data owner's conformance test of its own endpoint, run in its CI
//! before any keyhole asks it for personal data.
//!
//! Every request is made by the [`resolve`](crate::resolve) module's own client
//! (`Resolver::inspect`), and every answer classified by its own rules: what this check calls
//! released, denied or gone is exactly what keyhole would make of the same answer. The checks,
//! each a [`Check`] in the [`Report`]:
//!
//! - each fixture reference gets the decision its fixture expects;
//! - a released answer carries a `Content-Type` (the expected one, if named) and a body within
//!   keyhole's default `max_response_bytes`;
//! - a refusal carries no data ([`rules::refusal_body_problem`]);
//! - a reference the owner cannot know (a random path under the base URL) answers 404;
//! - a request without the token answers 401;
//! - every reference asked for another handler version is answered with a decision (an owner
//!   must expect versions it has not approved, and refuse them with 403, not fail);
//! - a `Retry-After` on 408, 429 or 5xx is one keyhole can read;
//! - with a batch endpoint (`--batch-path`), the references posted in one batch, exactly as
//!   keyhole batches them (`Resolver::inspect_batch`), get a readable answer and each the same
//!   decision as alone (for a release, the same content type and bytes);
//! - a batch without the token answers 401 as a whole;
//! - over `repeat` rounds, the released references stay released, and their latency
//!   percentiles are measured.
//!
//! Nothing here prints or keeps a released body, a refusal's body, the token, or a reference's
//! query string.

mod fixtures;
mod report;
pub mod rules;

pub use fixtures::{Asker, Expect, FixtureError, Fixtures, Problem, Reference};
pub use report::{Check, Latency, Line, Report};

use crate::cloudevents::check_below;
use crate::config::{BatchConfig, DataSourceConfig};
use crate::resolve::{
    BatchSettings, DataSourceSettings, Identity, Inspection, Released, Requester, ResolveError, Resolver,
    ResolverBuildError,
};
use rules::{MAX_REFUSAL_BODY_BYTES, content_type_matches, refusal_body_problem, retry_after_problem};
use std::time::{Duration, Instant, SystemTime};
use url::Url;

/// The most rounds `repeat` may ask for: enough for stable percentiles, bounded so that a typo
/// does not keep an owner's CI busy for hours.
pub const MAX_REPEAT: u32 = 10_000;

/// How the check reaches the owner. `Debug` shows no token.
#[derive(Clone)]
pub struct Settings {
    /// The base URL, as the operator would configure it (`[[data_source]] base_url`).
    pub base_url: Url,
    /// The bearer token keyhole would send.
    pub token: String,
    /// Limit on one request, as a data source's `timeout_ms`.
    pub timeout: Duration,
    /// The largest body keyhole reads: a data source's default `max_response_bytes`.
    pub max_response_bytes: u64,
    /// Rounds of the released references whose latency is measured.
    pub repeat: u32,
    /// The owner's batch endpoint, relative to the base URL (`[data_source.batch] path`); None:
    /// the batch checks are skipped.
    pub batch_path: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("base_url", &self.base_url.as_str())
            .field("token", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("repeat", &self.repeat)
            .field("batch_path", &self.batch_path)
            .finish()
    }
}

impl Settings {
    /// Settings for `base_url` with `token`, and keyhole's own defaults for a data source's
    /// timeout and body limit, and 20 rounds.
    pub fn new(base_url: &str, token: String) -> Result<Settings, SetupError> {
        let base_url = parse_base_url(base_url).map_err(SetupError::BaseUrl)?;
        let (timeout_ms, max_response_bytes) = data_source_defaults();
        Ok(Settings {
            base_url,
            token,
            timeout: Duration::from_millis(timeout_ms),
            max_response_bytes,
            repeat: 20,
            batch_path: None,
        })
    }
}

/// A data source's default `timeout_ms` and `max_response_bytes`, read from the configuration
/// module itself so that the check holds owners to what an operator gets without setting them.
fn data_source_defaults() -> (u64, u64) {
    let defaults =
        toml::from_str::<DataSourceConfig>("name = \"owner-check\"\nbase_url = \"http://localhost/\"");
    defaults.map_or((5_000, 1 << 20), |config| (config.timeout_ms, config.max_response_bytes))
}

/// The most references keyhole puts in one batch by default (`[data_source.batch]
/// max_references`), read from the configuration module: the check's batches are no larger.
fn batch_max_references() -> usize {
    toml::from_str::<BatchConfig>("path = \"batch\"").map_or(16, |config| config.max_references)
}

/// What keeps the check from starting; nothing has been asked of the owner.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The base URL cannot be a data source's.
    #[error("--base-url: {0}")]
    BaseUrl(String),
    /// The batch path cannot be a data source's `[data_source.batch] path`.
    #[error("--batch-path: {0}")]
    BatchPath(&'static str),
    /// The limits are out of range.
    #[error("{0}")]
    Setting(&'static str),
    /// The client cannot be built (a token that cannot be sent in a header, TLS set-up).
    #[error(transparent)]
    Client(#[from] ResolverBuildError),
    /// A fixture reference cannot be joined onto the base URL and stay below it.
    #[error("reference[{index}].dataref: {reason} once joined onto the base URL")]
    Dataref {
        /// The reference's index in the fixture file.
        index: usize,
        /// The rule the joined URL breaks.
        reason: String,
    },
}

/// At most `chars` characters of a value quoted in a message (a fixture's, or an owner's
/// header), with `…` when cut.
pub(super) fn shorten(value: &str, chars: usize) -> String {
    match value.char_indices().nth(chars) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

/// The base URL as keyhole's configuration reads a data source's (the same rules, the same
/// trailing '/').
fn parse_base_url(text: &str) -> Result<Url, String> {
    crate::config::parse_base_url(text)
}

/// A check ready to run: the fixtures validated, their URLs joined, the clients built.
#[derive(Debug)]
pub struct OwnerCheck {
    fixtures: Fixtures,
    /// Each reference's URL, in the fixtures' order.
    urls: Vec<Url>,
    /// A random path under the base URL: a reference the owner cannot know.
    unknown: (String, Url),
    /// Another handler version than the asker's, random.
    other_version: String,
    /// Asks with the token, as keyhole does.
    with_token: Resolver,
    /// Asks without any credentials.
    without_token: Resolver,
    settings: Settings,
}

impl OwnerCheck {
    /// Everything that can fail before the first request.
    pub fn new(fixtures: Fixtures, settings: Settings) -> Result<OwnerCheck, SetupError> {
        if settings.timeout.is_zero() {
            return Err(SetupError::Setting("--timeout-ms must be above zero"));
        }
        if settings.repeat > MAX_REPEAT {
            return Err(SetupError::Setting("--repeat must be at most 10000"));
        }
        let base = &settings.base_url;
        // By the configuration's own rules, so that a path that passes here can be configured.
        let batch = match &settings.batch_path {
            Some(path) => {
                crate::config::check_batch_path(path, Some(base)).map_err(SetupError::BatchPath)?;
                Some(BatchSettings {
                    path: path.clone(),
                    max_references: batch_max_references(),
                    // Unused: the check sends its batches itself, one at a time.
                    max_wait: Duration::ZERO,
                })
            }
            None => None,
        };
        let urls = fixtures
            .references
            .iter()
            .enumerate()
            .map(|(index, reference)| {
                reference
                    .dataref
                    .resolve_against(base)
                    .map_err(|error| SetupError::Dataref { index, reason: error.to_string() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let unknown_path = format!("keyhole-owner-check/{}", uuid::Uuid::new_v4().simple());
        let unknown_url = base
            .join(&unknown_path)
            .map_err(|_| SetupError::BaseUrl("cannot take a relative reference".into()))?;
        let other_version = loop {
            let candidate =
                format!("sha256:{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
            if candidate != fixtures.asker.handler_version {
                break candidate;
            }
        };
        let resolver = |identity| {
            Resolver::new(DataSourceSettings {
                name: "owner-check".into(),
                base_url: base.clone(),
                identity,
                timeout: settings.timeout,
                max_response_bytes: settings.max_response_bytes,
                max_concurrent_requests: 1,
                batch: batch.clone(),
            })
            // Redirects as the engine follows them: below the base path, by the dataref rules.
            .map(|resolver| resolver.with_redirect_rule(|base, url| check_below(base, url).is_ok()))
        };
        Ok(OwnerCheck {
            with_token: resolver(Identity::Bearer(settings.token.clone()))?,
            without_token: resolver(Identity::None)?,
            urls,
            unknown: (unknown_path, unknown_url),
            other_version,
            fixtures,
            settings,
        })
    }

    /// Runs every check, one request at a time, and reports.
    pub async fn run(&self) -> Report {
        let asker = &self.fixtures.asker;
        let mut lines = Vec::new();
        let mut refusals = Tally::new(Check::RefusalBody);
        let mut retry_afters = Tally::new(Check::RetryAfter);
        let references = self.fixtures.references.iter().zip(&self.urls);

        // Each reference, as the fixtures' handler asks for it.
        let mut content_types = Vec::new();
        // Each reference's answer alone, which its answer in a batch must match.
        let mut alone = Vec::new();
        for (reference, url) in references.clone() {
            let seen = self.ask(&self.with_token, url, &asker.handler_version).await;
            let label = &reference.label;
            note_answer(&seen, label, &mut refusals, &mut retry_afters);
            lines.push(answer_line(reference, &seen, self.settings.max_response_bytes));
            if let (Expect::Released, Ok(released)) = (reference.expect, &seen.outcome) {
                content_types.push(content_type_line(reference, released));
            }
            alone.push(seen);
        }
        lines.extend(content_types);

        // A reference nobody published.
        let (unknown_path, unknown_url) = &self.unknown;
        let seen = self.ask(&self.with_token, unknown_url, &asker.handler_version).await;
        let label = format!("{unknown_path} (a reference the owner cannot know)");
        note_answer(&seen, &label, &mut refusals, &mut retry_afters);
        let passed = matches!(seen.outcome, Err(ResolveError::Gone { status: 404 }));
        let text = if passed {
            format!("{label}: {}", describe(&seen))
        } else {
            format!("{label}: expected gone (HTTP 404), received {}", describe(&seen))
        };
        lines.push(Line { check: Check::UnknownReference, passed, text });

        // Every reference without the token.
        let mut unauthorised = Tally::new(Check::WithoutToken);
        for (reference, url) in references.clone() {
            let seen = self.ask(&self.without_token, url, &asker.handler_version).await;
            let label = format!("{} (without the token)", reference.label);
            note_answer(&seen, &label, &mut refusals, &mut retry_afters);
            match seen.outcome {
                Err(ResolveError::Unauthorized) => unauthorised.pass(),
                _ => unauthorised
                    .fail(format!("{label}: expected unauthorized (HTTP 401), received {}", describe(&seen))),
            }
        }
        let count = self.urls.len();
        lines.extend(
            unauthorised.lines(|_| format!("every reference ({count}) answered 401 without the token")),
        );

        // Every reference for a handler version the owner has never seen.
        let mut versions = Tally::new(Check::OtherVersion);
        let mut decisions = Vec::new();
        for (reference, url) in references.clone() {
            let seen = self.ask(&self.with_token, url, &self.other_version).await;
            let label =
                format!("{} (handler version {})", reference.label, short_version(&self.other_version));
            note_answer(&seen, &label, &mut refusals, &mut retry_afters);
            match &seen.outcome {
                Ok(_) | Err(ResolveError::ConsentDenied { .. } | ResolveError::Gone { .. }) => {
                    versions.pass();
                    decisions.push(describe(&seen));
                }
                _ => versions.fail(format!(
                    "{label}: expected a decision (released, denied or gone; 403 for a version you have not \
                     approved), received {}",
                    describe(&seen)
                )),
            }
        }
        decisions.sort();
        decisions.dedup();
        lines.extend(versions.lines(|_| {
            format!(
                "every reference ({count}) was answered for a handler version the owner has not seen: {}",
                decisions.join(", ")
            )
        }));

        // The references in batches, as keyhole batches them.
        if let Some(path) = &self.settings.batch_path {
            lines.extend(self.check_batches(path, &alone).await);
        }

        // The released references, round after round, timed.
        let released: Vec<_> =
            references.filter(|(reference, _)| reference.expect == Expect::Released).collect();
        let rounds = self.settings.repeat;
        let mut samples = Vec::new();
        // Per reference: how many rounds released it, and the first round that did not.
        let mut tallies = vec![(0_u32, None::<String>); released.len()];
        for round in 1..=rounds {
            for ((reference, url), (count, first_other)) in released.iter().zip(tallies.iter_mut()) {
                let started = Instant::now();
                let seen = self.ask(&self.with_token, url, &asker.handler_version).await;
                // Only answers are timed: a refused connection says nothing about the owner's speed.
                if seen.head.is_some() {
                    samples.push(started.elapsed());
                }
                note_retry_after(&seen, &format!("{} (round {round})", reference.label), &mut retry_afters);
                match &seen.outcome {
                    Ok(_) => *count += 1,
                    Err(_) => {
                        first_other.get_or_insert_with(|| format!("in round {round}: {}", describe(&seen)));
                    }
                }
            }
        }
        let mut repeat = Tally::new(Check::Repeat);
        for ((reference, _), (count, first_other)) in released.iter().zip(tallies) {
            match first_other {
                None => repeat.pass(),
                Some(first_other) => repeat.fail(format!(
                    "{}: expected released in every round, released in {count} of {rounds}; the first other \
                     answer, {first_other}",
                    reference.label
                )),
            }
        }
        let timed = released.len();
        if rounds > 0 && timed > 0 {
            let references = if timed == 1 { "reference" } else { "references" };
            lines.extend(repeat.lines(|_| {
                format!("{rounds} rounds of {timed} released {references}: every answer released")
            }));
        }

        lines.extend(refusals.lines(|n| match n {
            0 => "no refusal was answered".into(),
            n => format!(
                "every refusal ({n}) carried no data: an empty body or a short {}",
                rules::PROBLEM_JSON
            ),
        }));
        lines.extend(retry_afters.lines(|n| match n {
            0 => "no 408, 429 or 5xx answer carried a Retry-After".into(),
            n => format!(
                "every Retry-After on a 408, 429 or 5xx answer ({n}) is delta-seconds or an HTTP-date"
            ),
        }));

        Report {
            title: format!(
                "keyhole owner check of {} as {}/{} (handler version {}), {} reference{}",
                self.settings.base_url,
                asker.tenant,
                asker.handler,
                short_version(&asker.handler_version),
                count,
                if count == 1 { "" } else { "s" }
            ),
            lines,
            rounds: (rounds, timed),
            latency: Latency::of(&samples),
        }
    }

    /// The `batch-answer` and `batch-without-token` lines: every reference posted to the batch
    /// endpoint (in batches of at most keyhole's default `max_references`) must get the same
    /// decision as `alone`, and one batch without the token must be refused as a whole.
    async fn check_batches(&self, path: &str, alone: &[Inspection]) -> Vec<Line> {
        let asker = &self.fixtures.asker;
        let who = Requester {
            tenant: &asker.tenant,
            handler: &asker.handler,
            purpose: &asker.purpose,
            // Each reference of a batch carries its own.
            event_id: "",
            handler_version: &asker.handler_version,
        };
        let fresh = |url: &Url| (format!("keyhole-owner-check-{}", uuid::Uuid::new_v4()), url.clone());
        let entries: Vec<_> = self.fixtures.references.iter().zip(&self.urls).zip(alone).collect();
        let per_batch = batch_max_references().max(1);

        let mut answers = Tally::new(Check::BatchAnswer);
        let mut decisions = Vec::new();
        for chunk in entries.chunks(per_batch) {
            let sent: Vec<_> = chunk.iter().map(|((_, url), _)| fresh(url)).collect();
            match self.with_token.inspect_batch(&who, &sent).await {
                Err(error) => answers.fail(format!(
                    "{}: expected 200 with version {} and one result per reference, received {}",
                    batch_label(path, chunk.iter().map(|((reference, _), _)| *reference)),
                    crate::resolve::BATCH_PROTOCOL_VERSION,
                    batch_failure(&error)
                )),
                Ok(outcomes) => {
                    for (((reference, _), seen), outcome) in chunk.iter().zip(outcomes) {
                        if same_decision(&seen.outcome, &outcome) {
                            answers.pass();
                            decisions.push(decision(&outcome));
                        } else {
                            answers.fail(format!(
                                "{} (in a batch): expected the decision it got alone, {}, received {}",
                                reference.label,
                                describe(seen),
                                decision(&outcome)
                            ));
                        }
                    }
                }
            }
        }
        decisions.sort();
        decisions.dedup();
        let count = self.urls.len();
        let mut lines = answers.lines(|_| {
            format!(
                "every reference ({count}) got the same decision in a batch (POST {path}) as alone: {}",
                decisions.join(", ")
            )
        });

        // One batch without the token: refused as a whole, as a single request is.
        let chunk = &entries[..entries.len().min(per_batch)];
        let sent: Vec<_> = chunk.iter().map(|((_, url), _)| fresh(url)).collect();
        let label = batch_label(path, chunk.iter().map(|((reference, _), _)| *reference));
        let (passed, text) = match self.without_token.inspect_batch(&who, &sent).await {
            Err(ResolveError::Unauthorized) => {
                (true, format!("{label} without the token: unauthorized (HTTP 401)"))
            }
            Err(error) => (
                false,
                format!(
                    "{label} without the token: expected unauthorized (HTTP 401) for the whole batch, received {}",
                    batch_failure(&error)
                ),
            ),
            Ok(outcomes) => {
                let mut received: Vec<_> = outcomes.iter().map(decision).collect();
                received.sort();
                received.dedup();
                (
                    false,
                    format!(
                        "{label} without the token: expected unauthorized (HTTP 401) for the whole batch, received \
                         HTTP 200 with a result per reference: {}",
                        received.join(", ")
                    ),
                )
            }
        };
        lines.push(Line { check: Check::BatchWithoutToken, passed, text });
        lines
    }

    /// One request as keyhole makes it, with a fresh event id.
    async fn ask(&self, resolver: &Resolver, url: &Url, handler_version: &str) -> Inspection {
        let asker = &self.fixtures.asker;
        let event_id = format!("keyhole-owner-check-{}", uuid::Uuid::new_v4());
        let who = Requester {
            tenant: &asker.tenant,
            handler: &asker.handler,
            purpose: &asker.purpose,
            event_id: &event_id,
            handler_version,
        };
        resolver.inspect(url, &who, MAX_REFUSAL_BODY_BYTES).await
    }
}

/// How many answers passed a check, and each distinct failure with how often it recurred.
struct Tally {
    check: Check,
    passed: usize,
    /// The failure's text (naming the first answer that had it), a key telling which later
    /// failures are the same, and how many answers had it.
    failures: Vec<(String, String, usize)>,
}

impl Tally {
    fn new(check: Check) -> Tally {
        Tally { check, passed: 0, failures: Vec::new() }
    }

    fn pass(&mut self) {
        self.passed += 1;
    }

    fn fail(&mut self, text: String) {
        self.fail_as(text.clone(), text);
    }

    /// A failure that is the same as any other with the same `key`: counted, not repeated.
    fn fail_as(&mut self, key: String, text: String) {
        match self.failures.iter_mut().find(|(_, known, _)| *known == key) {
            Some((_, _, times)) => *times += 1,
            None => self.failures.push((text, key, 1)),
        }
    }

    /// One `ok` line, `summary(passes)`, when nothing failed; else a `FAIL` line per distinct
    /// failure.
    fn lines(self, summary: impl FnOnce(usize) -> String) -> Vec<Line> {
        let check = self.check;
        if self.failures.is_empty() {
            return vec![Line { check, passed: true, text: summary(self.passed) }];
        }
        self.failures
            .into_iter()
            .map(|(text, _, times)| {
                let text = match times {
                    1 => text,
                    2 => format!("{text} (and 1 more answer like it)"),
                    n => format!("{text} (and {} more answers like it)", n - 1),
                };
                Line { check, passed: false, text }
            })
            .collect()
    }
}

/// The checks every answer is held to, whatever was asked: a refusal's body, a Retry-After.
fn note_answer(seen: &Inspection, label: &str, refusals: &mut Tally, retry_afters: &mut Tally) {
    note_retry_after(seen, label, retry_afters);
    let refused = matches!(
        seen.outcome,
        Err(ResolveError::Unauthorized | ResolveError::ConsentDenied { .. } | ResolveError::Gone { .. })
    );
    if let (true, Some((status, headers)), Some(body)) = (refused, &seen.head, &seen.refusal_body) {
        let content_type = headers.get(http::header::CONTENT_TYPE);
        match refusal_body_problem(content_type, &body.prefix, body.complete) {
            None => refusals.pass(),
            Some(problem) => refusals.fail(format!("{label}: HTTP {} with {problem}", status.as_u16())),
        }
    }
}

/// keyhole reads `Retry-After` on the answers it retries (408, 429, 5xx): exactly those it
/// classifies as transient with a status.
fn note_retry_after(seen: &Inspection, label: &str, retry_afters: &mut Tally) {
    let (Err(ResolveError::Transient { .. }), Some((status, headers))) = (&seen.outcome, &seen.head) else {
        return;
    };
    let now = SystemTime::now();
    for value in headers.get_all(http::header::RETRY_AFTER) {
        match retry_after_problem(value, now) {
            None => retry_afters.pass(),
            // The same value on the same status is one violation, however many rounds repeat it.
            Some(problem) => retry_afters.fail_as(
                format!("{status} {problem}"),
                format!("{label}: HTTP {} with {problem}", status.as_u16()),
            ),
        }
    }
}

/// The line for a fixture reference's decision.
fn answer_line(reference: &Reference, seen: &Inspection, max_response_bytes: u64) -> Line {
    let passed = matches!(
        (reference.expect, &seen.outcome),
        (Expect::Released, Ok(_))
            | (Expect::Denied, Err(ResolveError::ConsentDenied { .. }))
            | (Expect::Gone, Err(ResolveError::Gone { .. }))
    );
    let received = describe(seen);
    let text = if passed {
        format!("{}: {received}, as expected", reference.label)
    } else if let Err(ResolveError::TooLarge { .. }) = seen.outcome {
        format!(
            "{}: expected {}, received {received}: the body exceeds {max_response_bytes} bytes, the most keyhole \
             reads by default (a data source's max_response_bytes)",
            reference.label, reference.expect
        )
    } else {
        format!("{}: expected {}, received {received}", reference.label, reference.expect)
    };
    Line { check: Check::Answer, passed, text }
}

/// The line for a released reference's `Content-Type`.
fn content_type_line(reference: &Reference, released: &Released) -> Line {
    let label = &reference.label;
    let (passed, text) = match (&released.content_type, &reference.content_type) {
        (None, _) => (
            false,
            format!(
                "{label}: released without a readable Content-Type (keyhole passes it to the handler as the \
                 data's datacontenttype)"
            ),
        ),
        (Some(received), Some(expected)) if !content_type_matches(expected, received) => {
            (false, format!("{label}: expected Content-Type {expected}, received {received}"))
        }
        (Some(received), Some(_)) => (true, format!("{label}: {received}, as expected")),
        (Some(received), None) => (true, format!("{label}: {received}")),
    };
    Line { check: Check::ContentType, passed, text }
}

/// Whether a reference's answer in a batch is the decision it got alone, as keyhole records it:
/// the same outcome and, for a release, the same content type and bytes.
fn same_decision(alone: &Result<Released, ResolveError>, batched: &Result<Released, ResolveError>) -> bool {
    match (alone, batched) {
        (Ok(alone), Ok(batched)) => alone.content_type == batched.content_type && alone.body == batched.body,
        (Err(alone), Err(batched)) => alone.kind() == batched.kind(),
        _ => false,
    }
}

/// What keyhole made of one result of a batch, never its content: the decision, the status a
/// single answer would have had, a release's size and content type.
fn decision(outcome: &Result<Released, ResolveError>) -> String {
    match outcome {
        Ok(released) => format!(
            "released ({} bytes, {})",
            released.body.len(),
            released.content_type.as_deref().unwrap_or("no content type")
        ),
        Err(error @ ResolveError::Transient { .. }) => {
            format!("{}: {}", error.kind(), redact_quoted(&error.to_string()))
        }
        Err(error) => match error.status() {
            Some(status) => format!("{} (HTTP {status})", error.kind()),
            None => format!("{}: {error}", error.kind()),
        },
    }
}

/// Why a batch failed as a whole.
fn batch_failure(error: &ResolveError) -> String {
    match error {
        ResolveError::Unauthorized => "unauthorized (HTTP 401)".into(),
        // The reason may quote the answer (a JSON parser's "invalid type: string \"…\"").
        error => format!("{}: {}", error.kind(), redact_quoted(&error.to_string())),
    }
}

/// A batch named by its endpoint and its references' labels.
fn batch_label<'a>(path: &str, references: impl Iterator<Item = &'a Reference>) -> String {
    let labels: Vec<_> = references.map(|reference| reference.label.as_str()).collect();
    format!("POST {path} of {}", labels.join(", "))
}

/// `text` with every double-quoted string (as Rust's `Debug` writes them, with `\"` escapes)
/// shown as `"…"`: what an owner's answer held must not reach the report.
fn redact_quoted(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    let mut quoted = false;
    let mut escaped = false;
    for character in text.chars() {
        if quoted {
            if escaped {
                escaped = false;
            } else if character == '\\' {
                escaped = true;
            } else if character == '"' {
                quoted = false;
                shown.push_str("…\"");
            }
        } else {
            shown.push(character);
            quoted = character == '"';
        }
    }
    if quoted {
        shown.push('…');
    }
    shown
}

/// What keyhole made of an answer, with its status and size but never its content.
fn describe(seen: &Inspection) -> String {
    let status = seen.head.as_ref().map(|(status, _)| status.as_u16());
    match (&seen.outcome, status) {
        (Ok(released), Some(status)) => format!("released (HTTP {status}, {} bytes)", released.body.len()),
        (Ok(released), None) => format!("released ({} bytes)", released.body.len()),
        (Err(ResolveError::NotSent), _) => "nothing: keyhole would not send this request".into(),
        (Err(error), Some(status)) => format!("{} (HTTP {status})", error.kind()),
        // No answer: the reason (never the URL nor the token) says what happened instead.
        (Err(error), None) => format!("{}: {error}", error.kind()),
    }
}

/// `sha256:` and the first 12 hex digits, as receipts' readers print a version.
fn short_version(version: &str) -> String {
    match version.get(..19) {
        Some(short) if version.len() > 19 => format!("{short}…"),
        _ => version.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::{Check, Line, Settings, SetupError, Tally, parse_base_url, redact_quoted, short_version};

    #[test]
    fn a_failure_repeated_is_one_line_that_counts_the_answers() {
        let mut tally = Tally::new(Check::RetryAfter);
        tally.pass();
        for round in 1..=3 {
            tally.fail_as("503 soon".into(), format!("customers/42 (round {round}): soon"));
        }
        tally.fail("customers/43: later".into());
        let lines = tally.lines(|_| unreachable!("failures were noted"));
        let shown: Vec<_> = lines.iter().map(|line| (line.passed, line.text.as_str())).collect();
        assert_eq!(
            shown,
            [
                (false, "customers/42 (round 1): soon (and 2 more answers like it)"),
                (false, "customers/43: later")
            ]
        );

        let mut passing = Tally::new(Check::Repeat);
        passing.pass();
        passing.pass();
        let lines = passing.lines(|n| format!("{n} passed"));
        assert_eq!(lines, [Line { check: Check::Repeat, passed: true, text: "2 passed".into() }]);
    }

    #[test]
    fn the_base_url_follows_a_data_source_s_rules() {
        assert_eq!(
            parse_base_url("http://127.0.0.1:8080/api").unwrap().as_str(),
            "http://127.0.0.1:8080/api/"
        );
        assert_eq!(parse_base_url("https://crm.example.com/").unwrap().as_str(), "https://crm.example.com/");
        for bad in [
            "crm.example.com/api",
            "ftp://crm.example.com/",
            "https://u:p@crm.example.com/",
            "https://crm.example.com/?a=1",
        ] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_take_keyhole_s_data_source_defaults_and_hide_the_token() {
        let settings = Settings::new("http://127.0.0.1:8080/api/", "tok-s3cr3t".into()).unwrap();
        assert_eq!(settings.timeout.as_millis(), 5_000);
        assert_eq!(settings.max_response_bytes, 1 << 20);
        assert_eq!(settings.repeat, 20);
        assert!(!format!("{settings:?}").contains("tok-s3cr3t"));
        assert!(matches!(Settings::new("nope", String::new()), Err(SetupError::BaseUrl(_))));
    }

    #[test]
    fn quoted_strings_never_reach_the_report() {
        assert_eq!(
            redact_quoted(r#"invalid type: string "ada@example.com", expected u16 at line 1 column 40"#),
            r#"invalid type: string "…", expected u16 at line 1 column 40"#
        );
        assert_eq!(redact_quoted(r#"a "b\"c" d "e"#), r#"a "…" d "…"#);
        assert_eq!(redact_quoted("unknown field `data`"), "unknown field `data`");
    }

    #[test]
    fn versions_are_shortened_to_twelve_digits() {
        let version = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(short_version(&version), "sha256:abababababab…");
        assert_eq!(short_version("sha256:ab"), "sha256:ab");
    }
}
