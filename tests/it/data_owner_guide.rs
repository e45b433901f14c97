//! The commands of docs/data-owners.md that use the Python examples (examples/data-owner/), run as
//! the guide writes them, so that a data owner's developer who copies one gets what the guide
//! shows. "The whole loop": `owner.py` as the data owner of a `keyhole run` made from
//! keyhole.example.toml; `publish.py` gets a reply for customer 42 and none for 44 (no consent)
//! or 43 (erased); `read_receipts.py` prints a receipt for every request with its decision. The
//! outbox: `relay_outbox.py`'s events are read by keyhole like `publish.py`'s. And the curl block
//! of "Testing your endpoint", taken from the guide itself, prints what its comments say.
//!
//! Each command is looked up in the guide word for word before it runs; the test changes only the
//! broker, the topics, the files and the port to its own (appending the flags that name them) and
//! the wait for a reply that must not come, and runs `python3` as the python of
//! `KEYHOLE_TEST_PYTHON_KAFKA` (confluent-kafka; scripts/lib.sh `ensure_python_kafka`), except for
//! `owner.py`, which needs only the standard library.
// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{self, broker, config::TestConfig};
use rdkafka::message::{Headers as _, OwnedMessage};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt as _;

/// The example handler's purpose in keyhole.example.toml, the one `owner.py` has consent for.
const PURPOSE: &str = "Age statistics for product planning (contract ACME-17)";
/// Partitions of the references and reply topics, as `publish.py --create-topics` makes them.
const PARTITIONS: i32 = 3;
/// How long `publish.py` waits for a reply that must not come (the guide waits 30 s for one that
/// does): keyhole decides an event in milliseconds once it runs, and it is running by then.
const NO_REPLY_WAIT: &str = "1";

fn guide() -> String {
    std::fs::read_to_string(common::repo_root().join("docs/data-owners.md")).unwrap()
}

/// Fails the test if the guide no longer says `text` (compared with every run of white space as
/// one space, so that a paragraph may be wrapped anew): what the test runs is what it says.
fn assert_the_guide_says(text: &str) {
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(words(&guide()).contains(&words(text)), "docs/data-owners.md no longer says:\n{text}");
}

/// The last lines of a log file, for a failure's message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- {} (last 40 lines)\n{}\n",
        path.display(),
        lines[lines.len().saturating_sub(40)..].join("\n")
    )
}

/// What a finished command printed.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs a command of the guide from the repository's root: `command` as the guide writes it
/// (asserted to be there), each word `from` of `replace` replaced by `to`, then `extra`.
async fn run_documented(command: &str, replace: &[(&str, &str)], extra: &[&str]) -> Ran {
    assert_the_guide_says(command);
    let mut words: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
    for (from, to) in replace {
        let word =
            words.iter_mut().find(|w| w == from).unwrap_or_else(|| panic!("no `{from}` in `{command}`"));
        *word = (*to).to_owned();
    }
    assert_eq!(words[0], "python3", "{command}");
    let python = common::prerequisite("KEYHOLE_TEST_PYTHON_KAFKA");
    let mut child = tokio::process::Command::from(common::command_dying_with_the_test(python));
    child
        .args(&words[1..])
        .args(extra)
        .current_dir(common::repo_root())
        // relay_outbox.py imports publish.py: no __pycache__ written into the repository.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), child.output())
        .await
        .unwrap_or_else(|_| panic!("`{command}` {extra:?} ran for over 60 s"))
        .unwrap();
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `owner.py` serving on loopback, its log (one JSON line per decision) in a file; killed when
/// dropped.
struct OwnerPy {
    port: u16,
    log: PathBuf,
    _child: tokio::process::Child,
}

impl OwnerPy {
    /// The guide's command, on a free port (`--port 0`), approving `version` (the example
    /// handler's).
    async fn start(dir: &Path, version: &str) -> OwnerPy {
        assert_the_guide_says(
            "python3 examples/data-owner/owner.py --token dev --port 8080 \\\n  --approve \"acme/age-band=sha256:$(sha256sum guest-examples/dist/age-band.wasm | cut -d' ' -f1)\"",
        );
        let log = dir.join("owner.log");
        let mut child = tokio::process::Command::from(common::command_dying_with_the_test("python3"));
        child
            // --port 0: a free port, printed alone as the first line on stdout.
            .args(["examples/data-owner/owner.py", "--token", "dev", "--port", "0"])
            .arg("--approve")
            .arg(format!("acme/age-band={version}"))
            .current_dir(common::repo_root())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true);
        let mut child = child.spawn().unwrap();
        let mut line = String::new();
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
        tokio::time::timeout(Duration::from_secs(10), stdout.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("owner.py printed no port within 10 s\n{}", tail(&log)))
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("owner.py printed {line:?}, not its port"));
        // Then it says where it serves, the guide's first line of its log.
        let serving = format!("serving http://127.0.0.1:{port}/api/");
        let started = Instant::now();
        while !std::fs::read_to_string(&log).unwrap().contains(&serving) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "owner.py did not say `{serving}`\n{}",
                tail(&log)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        OwnerPy { port, log, _child: child }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/", self.port)
    }

    /// (path, status) of each decision it logged, by event id.
    fn decisions(&self) -> BTreeMap<String, Vec<(String, u64)>> {
        let mut decisions: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for line in std::fs::read_to_string(&self.log).unwrap().lines().filter(|l| l.starts_with('{')) {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = entry["event_id"].as_str().unwrap().to_owned();
            let decision = (entry["path"].as_str().unwrap().to_owned(), entry["status"].as_u64().unwrap());
            decisions.entry(id).or_default().push(decision);
        }
        decisions
    }
}

/// The topics of one run of the loop, each of this test alone.
struct Topics {
    references: String,
    replies: String,
    receipts: String,
    dead_letters: String,
}

/// `keyhole run` with keyhole.example.toml, changed only where the test must: the test broker,
/// its own topics and group, `owner.py`'s port, receipts on a topic (`read_receipts.py` reads
/// them there; the guide's example output is of `[receipts] sink = "kafka"`), and no admin API
/// (fixed ports and an operator token, for nothing the loop uses). The token comes from
/// `KEYHOLE_CRM_TOKEN=dev`, as in the guide. Killed when dropped.
fn start_keyhole(dir: &Path, owner: &OwnerPy, topics: &Topics) -> tokio::process::Child {
    assert_the_guide_says("start keyhole with `KEYHOLE_CRM_TOKEN=dev`");
    assert_the_guide_says("with `[receipts] sink =\n\"kafka\"` and `topic = \"keyhole.receipts\"`");
    let example = std::fs::read_to_string(common::repo_root().join("keyhole.example.toml")).unwrap();
    let config = dir.join("keyhole.toml");
    TestConfig::from_toml(&example)
        .set("kafka.bootstrap_servers", broker::bootstrap())
        .set("kafka.group_id", broker::unique("keyhole"))
        // tansu holds every fetch for fetch.wait.max.ms even when data is ready.
        .kafka_property("fetch.wait.max.ms", "10")
        .remove("admin")
        .set("receipts.sink", "kafka")
        .set("receipts.topic", topics.receipts.as_str())
        .remove("receipts.path")
        .set("data_source.0.base_url", owner.base_url())
        .handler("component", common::guest_path("age-band").display().to_string())
        .handler("topics", vec![topics.references.as_str()])
        .handler("reply_topic", topics.replies.as_str())
        .handler("on_failure.dead_letter_topic", topics.dead_letters.as_str())
        .write(&config);
    let mut keyhole =
        tokio::process::Command::from(common::command_dying_with_the_test(env!("CARGO_BIN_EXE_keyhole")));
    keyhole
        .args(["run", "--config"])
        .arg(&config)
        .env("KEYHOLE_CRM_TOKEN", "dev")
        .env("RUST_LOG", "warn,keyhole=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("keyhole.log")).unwrap())
        .kill_on_drop(true);
    keyhole.spawn().unwrap()
}

/// What `publish.py` printed: its two events and the reply, if one came.
#[derive(Debug)]
struct Published {
    update_id: String,
    request_id: String,
    correlation_id: String,
    /// The reply's headers and `value`, as printed.
    reply: Option<BTreeMap<String, String>>,
}

fn published(ran: &Ran, customer: &str, topics: &Topics) -> Published {
    let mut lines = ran.stdout.lines();
    let mut next = || lines.next().unwrap_or_else(|| panic!("publish.py printed too little:\n{ran}"));
    let key = format!("customer-{customer}");
    let update = next();
    let update_id = update
        .strip_prefix("published ")
        .and_then(|rest| before(rest, &format!(" (update, key {key}) to {}[", topics.references)))
        .unwrap_or_else(|| panic!("not the update's line: {update}\n{ran}"));
    let request = next();
    let (request_id, rest) = request
        .strip_prefix("published ")
        .and_then(|rest| {
            rest.split_once(&format!(" (request, key {key}, replyto {}, correlationid ", topics.replies))
        })
        .unwrap_or_else(|| panic!("not the request's line: {request}\n{ran}"));
    let correlation_id = before(rest, &format!(") to {}[", topics.references))
        .unwrap_or_else(|| panic!("not the request's line: {request}\n{ran}"));
    let reply = lines.next().map(|line| {
        assert!(line.starts_with(&format!("reply at {}[", topics.replies)), "{line}\n{ran}");
        lines
            .map(|line| {
                let (name, value) =
                    line.trim_start().split_once(": ").unwrap_or_else(|| panic!("{line}\n{ran}"));
                (name.to_owned(), value.to_owned())
            })
            .collect()
    });
    Published {
        update_id: update_id.to_owned(),
        request_id: request_id.to_owned(),
        correlation_id: correlation_id.to_owned(),
        reply,
    }
}

/// `text` up to `marker`, if `marker` is in it.
fn before<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.split_once(marker).map(|(head, _)| head)
}

/// A record's headers as text, by name.
fn headers(message: &OwnedMessage) -> BTreeMap<String, String> {
    let Some(headers) = message.headers() else { return BTreeMap::new() };
    headers
        .iter()
        .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
        .collect()
}

/// The records of every partition of `topic` whose `ce_id` is one of `ids`, by id (fails after
/// 30 s without all of them).
async fn records_by_id(topic: &str, ids: &[&str]) -> BTreeMap<String, OwnedMessage> {
    let consumer: rdkafka::consumer::StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker::bootstrap())
        .set("group.id", broker::unique("reader"))
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    rdkafka::consumer::Consumer::assign(&consumer, &partitions).unwrap();
    let mut found = BTreeMap::new();
    while found.len() < ids.len() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {:?} of {ids:?} on {topic}", found.keys().collect::<Vec<_>>()))
            .unwrap()
            .detach();
        if let Some(id) = broker::header(&message, "ce_id").filter(|id| ids.contains(&id.as_str())) {
            found.insert(id, message);
        }
    }
    found
}

/// "The whole loop", "A producer in Python", "Access receipts" and "A relay of your own", against
/// one `keyhole run`: the reply to 42's request comes back correlated with its age band; 44's and
/// 43's requests get none in time (exit 1); `read_receipts.py` prints one receipt per request,
/// released for 42, consent_denied (403) for 44, gone (410) for 43, and the guide's summary line;
/// `owner.py` logged each of those requests. Then the outbox relay's two events carry the same
/// headers as `publish.py`'s update and keyhole releases both, in the outbox's order.
#[tokio::test(flavor = "multi_thread")]
async fn the_guides_whole_loop_releases_42_refuses_44_finds_43_gone_and_relays_the_outbox() {
    let bootstrap = broker::bootstrap();
    common::prerequisite("KEYHOLE_TEST_PYTHON_KAFKA");
    let version = keyhole::sandbox::version_of(&common::guest("age-band"));
    let dir = std::env::temp_dir().join(broker::unique("keyhole-data-owner-guide"));
    std::fs::create_dir_all(&dir).unwrap();
    let topics = Topics {
        references: broker::unique("customer-references"),
        replies: broker::unique("customer-age-bands"),
        receipts: broker::unique("keyhole.receipts"),
        dead_letters: broker::unique("keyhole.acme.age-band.dlq"),
    };
    // What an operator creates before starting keyhole (`publish.py --create-topics` then finds
    // them there): keyhole reads and writes only topics that exist.
    for (topic, partitions) in [
        (&topics.references, PARTITIONS),
        (&topics.replies, PARTITIONS),
        (&topics.receipts, 1),
        (&topics.dead_letters, 1),
    ] {
        broker::create_named_topic(topic, partitions).await;
    }
    let owner = OwnerPy::start(&dir, &version).await;
    let _keyhole = start_keyhole(&dir, &owner, &topics);
    let logs = || format!("{}{}", tail(&dir.join("keyhole.log")), tail(&owner.log));

    // A producer in Python: 42 consented, so the request's reply comes back.
    let publish = "python3 examples/data-owner/publish.py --bootstrap 127.0.0.1:9092 --wait-reply 30";
    let on_our_topics: [&str; 4] = ["--topic", &topics.references, "--reply-topic", &topics.replies];
    let ran = run_documented(
        publish,
        &[("127.0.0.1:9092", &bootstrap)],
        &[&["--create-topics"][..], &on_our_topics].concat(),
    )
    .await;
    assert_eq!(ran.code, Some(0), "{ran}\n{}", logs());
    let consented = published(&ran, "42", &topics);
    let reply = consented.reply.as_ref().unwrap_or_else(|| panic!("no reply printed:\n{ran}"));
    assert_eq!(reply["ce_causationid"], consented.request_id, "{ran}");
    assert_eq!(reply["ce_correlationid"], consented.correlation_id, "{ran}");
    assert_eq!(reply["ce_source"], "urn:keyhole:acme:age-band", "{ran}");
    assert_eq!(reply["ce_type"], "keyhole.example.age-band", "{ran}");
    assert_eq!(reply["content-type"], "application/json", "{ran}");
    assert!(reply["value"].contains(r#""age_band""#), "{ran}");
    let value: serde_json::Value = serde_json::from_str(&reply["value"]).unwrap();
    assert!(value["age_band"].is_string() && value["country"] == "DE", "{ran}");

    // 44 gave no consent and 43 was erased: no reply in time, exit 1.
    assert_the_guide_says(
        "when no reply comes in time it says so and exits 1 (`--customer 44`: `owner.py` has no\nconsent for it)",
    );
    let no_reply = |customer: &'static str| {
        let args = [&["--customer", customer][..], &on_our_topics].concat();
        let (publish, bootstrap) = (publish, bootstrap.clone());
        async move {
            run_documented(publish, &[("127.0.0.1:9092", &bootstrap), ("30", NO_REPLY_WAIT)], &args).await
        }
    };
    let (ran_44, ran_43) = tokio::join!(no_reply("44"), no_reply("43"));
    let mut refused = Vec::new();
    for (customer, ran) in [("44", &ran_44), ("43", &ran_43)] {
        assert_eq!(ran.code, Some(1), "{ran}\n{}", logs());
        let events = published(ran, customer, &topics);
        assert!(events.reply.is_none(), "{ran}");
        let said =
            format!("no reply to {} on {} within {NO_REPLY_WAIT} s", events.request_id, topics.replies);
        assert!(ran.stderr.contains(&said), "{ran}");
        refused.push(events);
    }
    let (denied, gone) = (&refused[0], &refused[1]);

    // Access receipts: one per request, read once keyhole has written all six.
    broker::read(&topics.receipts, 6).await;
    let read_receipts =
        "python3 examples/data-owner/read_receipts.py --bootstrap 127.0.0.1:9092 --topic keyhole.receipts";
    let ran = run_documented(
        read_receipts,
        &[("127.0.0.1:9092", &bootstrap), ("keyhole.receipts", &topics.receipts)],
        &[],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(
        ran.stderr.lines().any(|l| l == "receipts: 2 consent_denied, 2 gone, 2 released"),
        "{ran}\n{}",
        logs()
    );
    let expected = [
        (&consented.update_id, "released", "42"),
        (&consented.request_id, "released", "42"),
        (&denied.update_id, "consent_denied (403)", "44"),
        (&denied.request_id, "consent_denied (403)", "44"),
        (&gone.update_id, "gone (410)", "43"),
        (&gone.request_id, "gone (410)", "43"),
    ];
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{ran}");
    for (id, decision, customer) in expected {
        let receipt = format!(
            "acme/age-band@{}  {decision}  subject=customer-{customer}  dataref=customers/{customer}  \
             event={id}  attempt=1  purpose='{PURPOSE}'",
            &version[..19]
        );
        let line = lines
            .iter()
            .find(|line| line.split_once("  ").is_some_and(|(_, rest)| rest == receipt))
            .unwrap_or_else(|| panic!("no receipt line\n  {receipt}\n{ran}"));
        let time = line.split_once("  ").unwrap().0;
        assert!(time.len() == 24 && time.ends_with('Z'), "not an RFC 3339 time in ms: {line}");
    }
    // owner.py logged every request it decided, by event id.
    let decisions = owner.decisions();
    for (id, status, customer) in [
        (&consented.update_id, 200, "42"),
        (&consented.request_id, 200, "42"),
        (&denied.update_id, 403, "44"),
        (&denied.request_id, 403, "44"),
        (&gone.update_id, 410, "43"),
        (&gone.request_id, 410, "43"),
    ] {
        let path = format!("/api/customers/{customer}");
        assert_eq!(decisions.get(id.as_str()), Some(&vec![(path, status)]), "{}", tail(&owner.log));
    }

    // A relay of your own: two changes of 42, relayed from the outbox in order.
    let relay = "python3 examples/data-owner/relay_outbox.py --bootstrap 127.0.0.1:9092 --db /tmp/crm.sqlite";
    let db = dir.join("crm.sqlite");
    let ran = run_documented(
        relay,
        &[("127.0.0.1:9092", &bootstrap), ("/tmp/crm.sqlite", db.to_str().unwrap())],
        &["--topic", &topics.references],
    )
    .await;
    assert_eq!(ran.code, Some(0), "{ran}");
    assert!(ran.stderr.contains(": 2 changes of customer 42 committed with their reference events"), "{ran}");
    let relayed: Vec<String> = ran
        .stdout
        .lines()
        .enumerate()
        .map(|(i, line)| {
            line.strip_prefix(&format!("outbox row {}: published ", i + 1))
                .and_then(|rest| rest.strip_suffix(&format!(" (key customer-42) to {}", topics.references)))
                .unwrap_or_else(|| panic!("not outbox row {}'s line: {line}\n{ran}", i + 1))
                .to_owned()
        })
        .collect();
    assert_eq!(relayed.len(), 2, "{ran}");
    // On the topic, each relayed event looks like publish.py's update: the same key, an empty
    // value, the same headers with the same values but for its own id and time.
    let ids: Vec<&str> =
        [consented.update_id.as_str()].into_iter().chain(relayed.iter().map(String::as_str)).collect();
    let records = records_by_id(&topics.references, &ids).await;
    let update = &records[&consented.update_id];
    let published_headers = headers(update);
    for id in &relayed {
        let record = &records[id];
        assert_eq!(record.key(), Some(&b"customer-42"[..]));
        assert_eq!(record.key(), update.key());
        assert!(
            record.payload().unwrap_or_default().is_empty()
                && update.payload().unwrap_or_default().is_empty()
        );
        let relayed_headers = headers(record);
        assert_eq!(
            relayed_headers.keys().collect::<Vec<_>>(),
            published_headers.keys().collect::<Vec<_>>(),
            "relay_outbox.py's headers against publish.py's"
        );
        for (name, value) in &relayed_headers {
            match name.as_str() {
                "ce_id" => assert_eq!(value, id),
                "ce_time" => assert!(value.len() == 24 && value.ends_with('Z'), "ce_time {value}"),
                _ => assert_eq!(value, &published_headers[name], "{name}"),
            }
        }
    }
    // keyhole reads them as it read publish.py's: both released, row 1 before row 2.
    let receipts: Vec<serde_json::Value> = broker::read(&topics.receipts, 8)
        .await
        .iter()
        .map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap())
        .collect();
    let position = |id: &str| {
        let at = receipts
            .iter()
            .position(|r| r["event_id"] == id)
            .unwrap_or_else(|| panic!("no receipt for relayed event {id}: {receipts:#?}\n{}", logs()));
        let receipt = &receipts[at];
        assert_eq!(receipt["decision"], "released", "{receipt}");
        assert_eq!(receipt["subject"], "customer-42", "{receipt}");
        assert_eq!(receipt["dataref"], "customers/42", "{receipt}");
        at
    };
    assert!(position(&relayed[0]) < position(&relayed[1]), "{receipts:#?}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The ```sh block that follows the line `heading` in the guide.
fn sh_block_under(guide: &str, heading: &str) -> String {
    let mut lines = guide.lines().skip_while(|line| *line != heading);
    assert!(lines.next().is_some(), "no `{heading}` in docs/data-owners.md");
    let block: Vec<&str> =
        lines.skip_while(|line| *line != "```sh").skip(1).take_while(|line| *line != "```").collect();
    assert!(!block.is_empty(), "no ```sh block under `{heading}`");
    block.join("\n") + "\n"
}

/// What each `ask ...` line of the block says it prints: its comment, on the same line or, for a
/// long command, alone on the next.
fn expected_answers(block: &str) -> Vec<String> {
    let lines: Vec<&str> = block.lines().collect();
    let mut expected = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let (code, comment) = match line.split_once('#') {
            Some((code, comment)) => (code, Some(comment.trim())),
            None => (*line, None),
        };
        // `ask customers/42`, `PURPOSE='...' ask customers/42`; not the definition `ask() {`.
        if !code.split_whitespace().any(|word| word == "ask") {
            continue;
        }
        let comment = comment
            .or_else(|| lines.get(i + 1).and_then(|next| next.trim().strip_prefix('#')).map(str::trim))
            .unwrap_or_else(|| panic!("`{line}` says nothing about what it prints"));
        expected.push(comment.to_owned());
    }
    expected
}

/// The processes of process group `group` that are alive (zombies left out).
fn alive_in_group(group: u32) -> Vec<u32> {
    let mut alive = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The command name is in parentheses and may hold anything: the fields follow the last ')'.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
        if fields[0] != "Z" && fields[2] == group.to_string() {
            alive.push(pid);
        }
    }
    alive
}

/// A process group killed as a whole when dropped: the curl block starts `owner.py` in the
/// background, a child of bash that bash's death would leave running.
struct Group(rustix::process::Pid);

impl Drop for Group {
    fn drop(&mut self) {
        rustix::process::kill_process_group(self.0, rustix::process::Signal::KILL).ok();
    }
}

/// "Testing your endpoint": the guide's curl block, run by bash as it is written but for the
/// port (a free one for 8080), prints for each `ask` what its comment says, in order; and its
/// `kill %1` leaves nothing running.
#[tokio::test(flavor = "multi_thread")]
async fn the_guides_curl_block_prints_what_its_comments_say() {
    assert!(
        std::process::Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success()),
        "curl is missing: scripts/test.sh installs it (scripts/lib.sh: ensure_curl)"
    );
    let block = sh_block_under(&guide(), "### Testing your endpoint");
    let expected = expected_answers(&block);
    assert!(expected.len() >= 5, "{expected:?} from\n{block}");
    assert!(block.contains("--port 8080") && block.contains("http://127.0.0.1:8080/api/"), "{block}");
    let dir = std::env::temp_dir().join(broker::unique("keyhole-curl-block"));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("curl-block.sh");
    std::fs::write(&script, block.replace("8080", &common::cluster::free_port().to_string())).unwrap();
    let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
    let mut bash = common::command_dying_with_the_test("bash");
    // Files, not pipes: an owner.py left running would hold a pipe open after bash is gone.
    bash.arg(&script)
        .current_dir(common::repo_root())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut bash, 0);
    let mut bash = tokio::process::Command::from(bash).kill_on_drop(true).spawn().unwrap();
    let group = bash.id().unwrap();
    let _group = Group(rustix::process::Pid::from_raw(i32::try_from(group).unwrap()).unwrap());
    let status = tokio::time::timeout(Duration::from_secs(30), bash.wait())
        .await
        .unwrap_or_else(|_| panic!("the curl block ran for over 30 s\n{}", tail(&stderr)))
        .unwrap();
    let printed = std::fs::read_to_string(&stdout).unwrap();
    let context = format!("--- the block\n{block}--- stdout\n{printed}{}", tail(&stderr));
    assert!(status.success(), "exit {status}\n{context}");
    assert_eq!(printed.lines().collect::<Vec<_>>(), expected, "\n{context}");
    // `kill %1` stopped owner.py.
    let asked = Instant::now();
    while !alive_in_group(group).is_empty() {
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "left running: {:?}\n{context}",
            alive_in_group(group)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_dir_all(&dir).ok();
}
