//! The record as Markdown, for a data protection officer to paste into the controller's
//! register: the deployment first, then one section per activity. Everything a tenant or an
//! operator wrote (purposes, declarations, paths) is escaped, so that it shows as written and
//! cannot add a link, an image, HTML or a table cell of its own.

use super::record::{
    Activity, BrokerAnswer, Declarations, Deployment, Record, RegistryLocation, Safeguards, Sink, Version,
};
use std::fmt::Write as _;

/// The Markdown of `record`.
pub fn render(record: &Record) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Record of processing activities (GDPR Art. 30(1))\n");
    let _ = writeln!(
        out,
        "Made by `keyhole processing-record` (keyhole {}) at {} from {}.\n",
        text(record.keyhole_version),
        text(&record.generated_at),
        code(&record.configuration),
    );
    out.push_str(INTRODUCTION);
    deployment(&mut out, &record.deployment);
    out.push_str("\n## Processing activities\n");
    if record.activities.is_empty() {
        out.push_str("\nNo handler is configured or registered: keyhole processes nothing.\n");
    }
    for activity in &record.activities {
        section(&mut out, activity);
    }
    out
}

const INTRODUCTION: &str = "\
This record lists what this keyhole deployment processes: one activity per third party (tenant) \
and handler. It is made from keyhole's configuration, its registry of uploaded handlers and what \
the Kafka broker reports, as they were when it was made. keyhole cannot know the name and contact \
details of the controller, of its representative or of its data protection officer (Art. 30(1)(a)), \
nor how long the recipients of replies keep them: add these in your register. Whose data an \
activity processes, which categories, who outside the tenant receives the results and transfers to \
third countries are shown as the handler's binding declares them, or as *not declared*.
";

const SAFEGUARDS: &str = "\
- **References, not data, on the input topics.** Events carry a reference to the data, never the \
data; keyhole fetches it from the data owner only to hand it to the handler, and keeps none of it. \
A handler's replies are published as the handler wrote them: treat its reply topics as holding \
personal data.
- **Consent checked per event.** Every reference is resolved at the data owner when its event is \
processed, naming the tenant, the handler, the purpose and the handler's version; data the owner \
does not release (consent missing or withdrawn, record erased) never reaches the handler. Every \
request leaves an access receipt.
- **Sandbox.** Each event runs in a fresh WebAssembly instance with no network, no files, no \
environment and no view of topics, offsets or references, within the limits listed per activity; \
nothing of it outlives the event but the reply.
- **Records without released data.** Audit records, access receipts, dead letters and keyhole's \
log hold identifiers (event ids, subjects, the references' paths without their query strings), \
sizes and decisions, never the data an owner released or a reply's content.
";

fn deployment(out: &mut String, deployment: &Deployment) {
    let kafka = &deployment.kafka;
    out.push_str("\n## The deployment\n\n| | |\n| --- | --- |\n");
    let protection = match kafka.security_protocol.to_ascii_lowercase().as_str() {
        "ssl" => "encrypted (TLS)",
        "sasl_ssl" => "encrypted (TLS), keyhole authenticated (SASL)",
        "sasl_plaintext" => "not encrypted, keyhole authenticated (SASL)",
        "plaintext" => "not encrypted",
        _ => "as configured",
    };
    row(
        out,
        "Kafka cluster",
        &format!(
            "{}, security.protocol {}: {protection}",
            code(&kafka.bootstrap_servers),
            code(&kafka.security_protocol)
        ),
    );
    let registry = match &deployment.registry {
        None => "none: no admin API, only the configured handlers run".to_string(),
        Some(RegistryLocation::Local { directory }) => format!("local directory {}", code(directory)),
        Some(RegistryLocation::Kafka { topic, blob_topic }) => {
            format!("Kafka topics {} (log) and {} (components)", code(topic), code(blob_topic))
        }
    };
    row(out, "Registry of uploaded handlers", &registry);
    row(out, "Audit records (one per event)", &sink(&deployment.audit));
    row(out, "Access receipts (one per request to a data owner)", &sink(&deployment.receipts));

    out.push_str(
        "\n### Data sources\n\nThe data owners keyhole asks for the data an event refers to, as the \
         handler that will receive it; the owner decides on every request.\n\n",
    );
    if deployment.data_sources.is_empty() {
        out.push_str("None is configured.\n");
    } else {
        out.push_str("| data source | base URL | keyhole identifies itself with | requests |\n");
        out.push_str("| --- | --- | --- | --- |\n");
    }
    for source in &deployment.data_sources {
        let identity = match source.identity {
            "bearer_token" => "a bearer token (not shown)",
            "client_certificate" => "a client certificate, mTLS (key not shown)",
            _ => "nothing",
        };
        let requests = match source.resolution {
            "batched" => "batched, each reference decided on its own",
            _ => "one per reference",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {identity} | {requests} |",
            code(&source.name),
            code(&source.base_url)
        );
    }
    out.push_str("\n### Safeguards in every activity\n\n");
    out.push_str(SAFEGUARDS);
}

fn sink(sink: &Sink) -> String {
    match sink {
        Sink::LogOnly => "keyhole's log only (no audit file or topic configured)".into(),
        Sink::Nowhere => "not written".into(),
        Sink::File { path } => format!("file {}", code(path)),
        Sink::Kafka { topic, broker } => format!("topic {}; {}", code(topic), retention_sentence(broker)),
    }
}

/// A topic's retention in words, for the deployment's table.
fn retention_sentence(broker: &BrokerAnswer) -> String {
    match broker {
        BrokerAnswer::Described { cleanup_policy, retention_ms, retention_bytes } => format!(
            "cleanup.policy {}, retention.ms {}, retention.bytes {}",
            reported(cleanup_policy.as_deref(), text),
            reported(retention_ms.as_deref(), duration_ms),
            reported(retention_bytes.as_deref(), size_setting),
        ),
        BrokerAnswer::Missing => "the topic does not exist".into(),
        BrokerAnswer::Unavailable { reason } => format!("retention unknown: {}", text(reason)),
    }
}

fn section(out: &mut String, activity: &Activity) {
    let _ = writeln!(out, "\n### {} / {}\n", text(&activity.tenant), text(&activity.handler));
    out.push_str("| | |\n| --- | --- |\n");
    row(out, "Status", &status(activity));
    row(out, "Purpose", &text(&activity.purpose));
    declared(out, &activity.declared);
    let source = match &activity.data_source.base_url {
        Some(url) => format!("{} at {}", code(&activity.data_source.name), code(url)),
        None => format!("{} (not configured)", code(&activity.data_source.name)),
    };
    row(out, "Data source", &source);
    row(out, "Reads references from", &codes(&activity.topics));
    let mut replies = match &activity.reply_topic {
        Some(topic) => code(topic),
        None => "nowhere: replies are dropped".into(),
    };
    if !activity.reply_topics_allowed.is_empty() {
        let _ = write!(replies, "; on request also {}", codes(&activity.reply_topics_allowed));
    }
    row(out, "Replies to", &replies);
    row(out, "Dead letters to", &code(&activity.dead_letter_topic));
    row(out, "Delivery", &text(activity.delivery));
    row(out, "Consumer group", &code(&activity.consumer_group));

    out.push_str(
        "\nVersions (components named by their SHA-256 digest, which the data owner is sent with \
         every request and the receipts record):\n\n",
    );
    if activity.versions.is_empty() {
        out.push_str("None uploaded.\n");
    } else {
        out.push_str("| version | state | uploaded | activated |\n| --- | --- | --- | --- |\n");
    }
    for version in &activity.versions {
        version_row(out, version, activity.status == "active");
    }

    out.push_str("\nRetention on the broker:\n\n");
    out.push_str("| topic | holds | cleanup.policy | retention.ms | retention.bytes |\n");
    out.push_str("| --- | --- | --- | --- | --- |\n");
    for topic in &activity.retention {
        let holds = match topic.role {
            "reply" => "replies",
            "reply_on_request" => "replies a request asked for",
            _ => "dead letters (events as received)",
        };
        let cells = match &topic.broker {
            BrokerAnswer::Described { cleanup_policy, retention_ms, retention_bytes } => [
                reported(cleanup_policy.as_deref(), text),
                reported(retention_ms.as_deref(), duration_ms),
                reported(retention_bytes.as_deref(), size_setting),
            ],
            BrokerAnswer::Missing => ["the topic does not exist".into(), "—".into(), "—".into()],
            BrokerAnswer::Unavailable { reason } => {
                [format!("unknown: {}", text(reason)), "—".into(), "—".into()]
            }
        };
        let _ = writeln!(out, "| {} | {holds} | {} |", code(&topic.topic), cells.join(" | "));
    }

    out.push_str("\nSafeguards:\n\n");
    match &activity.safeguards {
        Some(safeguards) => safeguards_table(out, safeguards),
        None => out.push_str("None apply: the handler cannot run.\n"),
    }
}

fn status(activity: &Activity) -> String {
    let reason = activity.status_reason.as_deref().map(text).unwrap_or_default();
    match activity.status {
        "configured" => "configured: runs whenever keyhole runs with this configuration".into(),
        "active" => {
            let active = activity.versions.iter().find(|v| v.active);
            match active.and_then(|v| v.activated_at.last()) {
                Some(at) => {
                    format!("active: uploaded through the admin API, its version active since {}", text(at))
                }
                None => "active: uploaded through the admin API".into(),
            }
        }
        "inactive" => "inactive: uploaded, no version active; processes nothing".into(),
        _ => format!("does not run: {reason}"),
    }
}

fn declared(out: &mut String, declared: &Declarations) {
    let not_declared = || "*not declared*".to_string();
    let list = |entries: &Option<Vec<String>>| match entries {
        None => not_declared(),
        Some(entries) if entries.is_empty() => "none".into(),
        Some(entries) => entries.iter().map(|e| text(e)).collect::<Vec<_>>().join("; "),
    };
    row(out, "Categories of data subjects", &list(&declared.data_subjects));
    row(out, "Categories of personal data", &list(&declared.data_categories));
    row(out, "Recipients outside the tenant", &list(&declared.recipients));
    let transfers = match &declared.transfers {
        None => not_declared(),
        Some(transfers) if transfers.is_empty() => "none".into(),
        Some(transfers) => transfers
            .iter()
            .map(|t| format!("{}, safeguard: {}", text(&t.country), text(&t.safeguard)))
            .collect::<Vec<_>>()
            .join("; "),
    };
    row(out, "Transfers to third countries", &transfers);
}

fn version_row(out: &mut String, version: &Version, runs: bool) {
    let state = match (&version.component, version.active, version.stored) {
        (Some(path), _, _) => format!("runs, from the file {}", code(path)),
        (None, true, _) if runs => "active".into(),
        (None, true, _) => "active, but not running (see Status)".into(),
        (None, false, true) if version.activated_at.is_empty() => "stored, not active".into(),
        (None, false, true) => "stored, no longer active".into(),
        (None, false, false) => "deleted".into(),
    };
    let uploaded = version.uploaded_at.as_deref().map_or_else(|| "—".to_string(), text);
    let activated = if version.component.is_some() {
        "—".to_string()
    } else if version.activated_at.is_empty() {
        "none recorded".to_string()
    } else {
        version.activated_at.iter().map(|at| text(at)).collect::<Vec<_>>().join(", ")
    };
    let _ = writeln!(out, "| {} | {state} | {uploaded} | {activated} |", code(&version.version));
}

fn safeguards_table(out: &mut String, s: &Safeguards) {
    out.push_str("| | |\n| --- | --- |\n");
    row(out, "Consent", "checked at the data owner for every event, on every attempt");
    let limits = &s.sandbox;
    row(
        out,
        "Sandbox limits per event",
        &format!(
            "at most {} ms, {} of memory, replies of {}, logs of {}",
            limits.deadline_ms,
            size(limits.max_memory_bytes),
            size(limits.max_reply_bytes),
            size(limits.max_log_bytes),
        ),
    );
    let output = match s.handler_output {
        "withheld" => {
            "withheld: its logs, output and error messages reach no log or record, only their sizes"
        }
        _ => {
            "forwarded: its logs, output and error messages reach keyhole's log, audit records and dead letters"
        }
    };
    row(out, "The handler's own output", output);
    let f = &s.on_failure;
    let policy = |policy: &str| match policy {
        "dead-letter" => "set aside on the dead-letter topic",
        "retry" => "retried without end",
        _ => "the handler stops",
    };
    let policies = [f.envelope, f.resolve, f.handler, f.reply];
    let failed = if policies.iter().all(|p| *p == f.envelope) {
        format!("{}, whatever failed", policy(f.envelope))
    } else {
        format!(
            "a malformed event or refused reference: {}; the data owner failing: {}; the handler \
             failing: {}; a reply to a topic not allowed: {}",
            policy(f.envelope),
            policy(f.resolve),
            policy(f.handler),
            policy(f.reply),
        )
    };
    row(
        out,
        "Events that fail for good",
        &format!(
            "{failed} (transient failures are tried up to {} times before this applies)",
            s.max_attempts
        ),
    );
}

fn row(out: &mut String, name: &str, value: &str) {
    let _ = writeln!(out, "| {name} | {value} |");
}

/// A setting the broker may not have reported.
fn reported(value: Option<&str>, show: fn(&str) -> String) -> String {
    value.map_or_else(|| "not reported by the broker".to_string(), show)
}

/// `retention.ms` in words: `-1` is without limit; whole days, hours or minutes are said so.
fn duration_ms(value: &str) -> String {
    match value.trim().parse::<i64>() {
        Ok(ms) if ms < 0 => "unlimited".into(),
        Ok(ms) => {
            let unit = [(86_400_000, "day"), (3_600_000, "hour"), (60_000, "minute"), (1_000, "second")]
                .into_iter()
                .find(|(unit, _)| ms >= *unit && ms % unit == 0);
            match unit {
                Some((unit, name)) => {
                    let n = ms / unit;
                    format!("{ms} ({n} {name}{})", if n == 1 { "" } else { "s" })
                }
                None => format!("{ms} ms"),
            }
        }
        Err(_) => text(value),
    }
}

/// `retention.bytes` in words: `-1` is without limit.
fn size_setting(value: &str) -> String {
    match value.trim().parse::<i64>() {
        Ok(bytes) if bytes < 0 => "unlimited".into(),
        Ok(bytes) => size(bytes.unsigned_abs()),
        Err(_) => text(value),
    }
}

/// Bytes in GiB, MiB or KiB when whole.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

fn codes(values: &[String]) -> String {
    values.iter().map(|v| code(v)).collect::<Vec<_>>().join(", ")
}

/// A name, topic, digest, URL or path as a code span; as escaped text when a backtick or a
/// character a line cannot hold would break out of it. A table's `|` is escaped even there.
fn code(value: &str) -> String {
    if value.is_empty() || value.contains('`') || value.chars().any(char::is_control) {
        return text(value);
    }
    format!("`{}`", value.replace('|', "\\|"))
}

/// Text as it was written: every character Markdown (or a table) would read as syntax is
/// escaped, and a control character, which would end the line, shows as U+FFFD.
fn text(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '~' | '&' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{code, duration_ms, size, size_setting, text};

    #[test]
    fn what_a_tenant_wrote_shows_as_written_and_adds_no_markup() {
        let hostile = "x | <img src=y> [link](http://e) **b** `c` &amp; _i_\nnew row";
        let escaped = text(hostile);
        assert!(!escaped.contains('\n'), "{escaped}");
        // Every character Markdown reads as syntax comes escaped: nothing of it is markup.
        let chars: Vec<char> = escaped.chars().collect();
        for (i, c) in chars.iter().enumerate() {
            if "|<>[]*`&_".contains(*c) {
                assert!(i > 0 && chars[i - 1] == '\\', "{c} unescaped at {i} in {escaped}");
            }
        }
        assert_eq!(escaped.replace('\\', "").replace('\u{FFFD}', "\n"), hostile);
        assert_eq!(text("Fraud scoring (contract GLOBEX-3)"), "Fraud scoring (contract GLOBEX-3)");
        assert_eq!(code("a|b"), "`a\\|b`");
        assert_eq!(code("a`b"), "a\\`b");
    }

    #[test]
    fn retention_settings_read_as_durations_and_sizes() {
        assert_eq!(duration_ms("604800000"), "604800000 (7 days)");
        assert_eq!(duration_ms("3600000"), "3600000 (1 hour)");
        assert_eq!(duration_ms("1500"), "1500 ms");
        assert_eq!(duration_ms("-1"), "unlimited");
        assert_eq!(size_setting("-1"), "unlimited");
        assert_eq!(size_setting("1073741824"), "1 GiB");
        assert_eq!(size(67108864), "64 MiB");
        assert_eq!(size(65536), "64 KiB");
        assert_eq!(size(1000), "1000 bytes");
    }
}
