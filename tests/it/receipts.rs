//! `keyhole receipts verify` and `keyhole receipts report` on receipts written by keyhole's own
//! receipt writers (`records::receipt`): three replicas' files, and a three-partition topic that
//! three bindings' streams write to, keyed by subject. Copies of the topic are tampered with one
//! way each (a forged receipt, a duplicate, deletions, two records swapped, an edit, a cut-off
//! tail) and verify must name exactly that; the access report of one subject must be exactly the
//! receipts written about them, in time order.
// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::broker::{self, bootstrap, create_topic, unique};
use keyhole::config::ReceiptSink;
use keyhole::records::receipt::{Receipt, Receipts};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

const PARTITIONS: i32 = 3;
const SUBJECTS: [&str; 5] = ["customer/1", "customer/2", "customer/3", "customer/4", "customer/5"];
/// The subject whose access report is asked for.
const ASKED: &str = "customer/2";

/// The `n`th receipt written (in time order), about `subject`; events without a subject refer
/// to `customers/<n>`.
fn receipt(n: usize, subject: Option<&'static str>, handler: &'static str) -> Receipt<'static> {
    Receipt {
        time: format!("2026-11-23T10:{:02}:{:02}.{:03}Z", n / 60, n % 60, n % 1000),
        event_id: Box::leak(format!("ev-{n}").into_boxed_str()),
        tenant: if handler == "echo" { "globex" } else { "acme" },
        handler,
        handler_version: "sha256:1c7fade2ae61cef416657dc79e782f8cfd794371e13755138eab5ff84dd7b1ff",
        data_source: "crm",
        purpose: if handler == "echo" { "Fraud scoring (GLOBEX-3)" } else { "Age statistics (ACME-17)" },
        subject,
        dataref: match subject {
            Some(subject) => Box::leak(subject.replace("customer/", "customers/").into_boxed_str()),
            None => Box::leak(format!("customers/{}", 100 + n % 3).into_boxed_str()),
        },
        decision: ["released", "consent_denied", "gone", "transient"][n % 4],
        status: match n % 4 {
            1 => Some(403),
            2 => Some(410),
            _ => None,
        },
        attempt: 1 + (n % 4 == 3) as u32,
    }
}

/// Which subject the `n`th receipt is about: every sixth has none.
fn subject_of(n: usize) -> Option<&'static str> {
    (n % 6 != 5).then(|| SUBJECTS[n * 7 % SUBJECTS.len()])
}

fn keyhole(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyhole")).args(args).output().expect("run keyhole")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(output)))
}

/// `keyhole receipts <args> --topic <topic>` against the test broker.
fn on_topic(command: &str, topic: &str, args: &[&str]) -> Output {
    let bootstrap = bootstrap();
    let mut all = vec!["receipts", command, "--topic", topic, "--bootstrap-servers", &bootstrap];
    // tansu holds a fetch for fetch.wait.max.ms even when data is ready.
    all.extend(["--property", "fetch.wait.max.ms=10", "--timeout", "60s"]);
    all.extend(args);
    keyhole(&all)
}

/// (kind, at) of every violation in a verification's JSON.
fn findings(verification: &Value) -> Vec<(String, String)> {
    verification["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["kind"].as_str().unwrap().to_string(), f["at"].as_str().unwrap_or("").to_string()))
        .collect()
}

/// Writes 60 receipts through three replicas' receipt files, interleaved in time; the receipts
/// written about [`ASKED`] (and about `customers/101` without a subject), in time order.
async fn write_three_files(dir: &Path) -> (Vec<PathBuf>, Vec<Value>) {
    let producer = broker::producer();
    let paths: Vec<PathBuf> = (0..3).map(|r| dir.join(format!("replica-{r}.jsonl"))).collect();
    let writers: Vec<_> = paths
        .iter()
        .map(|path| {
            Arc::new(Receipts::open(&ReceiptSink::File(path.clone())).unwrap()).writer("acme/age-band")
        })
        .collect();
    let mut asked = Vec::new();
    for n in 0..60 {
        let receipt = receipt(n, subject_of(n), "age-band");
        writers[n % 3].write(&receipt, &producer, Duration::from_secs(10)).await.unwrap();
        if receipt.subject == Some(ASKED) || receipt.subject.is_none() && receipt.dataref == "customers/101" {
            asked.push(serde_json::to_value(&receipt).unwrap());
        }
    }
    drop(writers);
    (paths, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_files_of_three_replicas_verify_and_give_a_subjects_report() {
    let dir = std::env::temp_dir().join(unique("keyhole-receipts"));
    std::fs::create_dir_all(&dir).unwrap();
    let (paths, asked) = write_three_files(&dir).await;
    let files: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let mut file_args: Vec<&str> = Vec::new();
    for file in &files {
        file_args.extend(["--file", file]);
    }
    let with_files = |args: &[&str]| keyhole(&[args, &file_args[..]].concat());

    let clean = with_files(&["receipts", "verify", "--json"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    let verification = json(&clean);
    assert_eq!(verification["chained"], 60);
    let heads: Vec<String> = verification["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["head"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(heads.len(), 3);

    let report =
        with_files(&["receipts", "report", "--subject", ASKED, "--dataref", "customers/101", "--json"]);
    assert_eq!(report.status.code(), Some(0), "{}", text(&report));
    let report = json(&report);
    let got: Vec<Value> =
        report["receipts"].as_array().unwrap().iter().map(|r| r["receipt"].clone()).collect();
    assert_eq!(got, asked, "the report is exactly the receipts written about the subject, in time order");
    assert!(report["receipts"].as_array().unwrap().iter().all(|r| r["check"] == "verified"));
    assert_eq!(report["verified"], true);

    // The readable table names each receipt's asker, purpose and decision, and nobody else's.
    let table = with_files(&["receipts", "report", "--subject", ASKED]);
    let table = text(&table);
    assert!(
        table.contains("verification: every chain read is intact (3 stream(s), 60 chained receipt(s))"),
        "{table}"
    );
    assert!(table.contains("Age statistics (ACME-17)") && table.contains("consent_denied (403)"), "{table}");
    for other in SUBJECTS.iter().filter(|s| **s != ASKED) {
        assert!(!table.contains(&other.replace("customer/", "customers/")), "{other} in\n{table}");
    }

    // One replica's file edited and cut short: both found, with the heads published before.
    let second = std::fs::read_to_string(&paths[1]).unwrap();
    let mut lines: Vec<String> = second.lines().map(str::to_string).collect();
    lines[4] = lines[4].replace("\"tenant\":\"acme\"", "\"tenant\":\"acne\"");
    lines.truncate(17);
    std::fs::write(&paths[1], lines.join("\n") + "\n").unwrap();
    let mut args = vec!["receipts", "verify", "--json"];
    for head in &heads {
        args.extend(["--head", head]);
    }
    let tampered = with_files(&args);
    assert_eq!(tampered.status.code(), Some(1), "{}", text(&tampered));
    assert_eq!(
        findings(&json(&tampered)),
        vec![
            ("changed".to_string(), format!("{}:5", files[1])),
            ("truncated".to_string(), format!("{}:17", files[1])),
        ]
    );
    let report = with_files(&["receipts", "report", "--subject", ASKED]);
    assert_eq!(report.status.code(), Some(1), "a report over a tampered file says so: {}", text(&report));
    assert!(text(&report).contains("NOT VERIFIED"), "{}", text(&report));

    let missing = keyhole(&["receipts", "verify", "--file", "/nonexistent/receipts.jsonl"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    std::fs::remove_dir_all(&dir).ok();
}

/// One record as read back.
#[derive(Clone, Debug)]
struct Record {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
}

impl Record {
    fn field(&self, name: &str) -> Value {
        serde_json::from_slice::<Value>(&self.value).unwrap()[name].clone()
    }
}

/// Every record of `topic`, partition by partition, in offset order.
async fn read_back(topic: &str) -> Vec<Record> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("reader"))
        .set("fetch.wait.max.ms", "10")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let (mut records, mut at_end) = (Vec::new(), HashSet::new());
    while at_end.len() < PARTITIONS as usize {
        match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.expect("the topic's end") {
            Ok(m) => records.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap().to_vec(),
            }),
            Err(KafkaError::PartitionEOF(p)) => drop(at_end.insert(p)),
            Err(e) => panic!("reading {topic}: {e}"),
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// A copy of the topic: `records` produced in order, each to its partition; where each landed.
async fn copy(records: &[Record]) -> (String, Vec<String>) {
    let topic = create_topic(PARTITIONS).await;
    let producer = broker::producer();
    let mut landed = Vec::new();
    for record in records {
        let mut out: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&topic).partition(record.partition).payload(&record.value);
        if let Some(key) = &record.key {
            out = out.key(key);
        }
        let delivery = producer.send(out, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
        landed.push(format!("{}@{}", delivery.partition, delivery.offset));
    }
    (topic, landed)
}

fn verify_copy(topic: &str, heads: &[String]) -> (Output, Vec<(String, String)>) {
    let mut args = vec!["--json"];
    for head in heads {
        args.extend(["--head", head.as_str()]);
    }
    let output = on_topic("verify", topic, &args);
    let found = findings(&json(&output));
    (output, found)
}

fn pair(kind: &str, at: &str) -> (String, String) {
    (kind.to_string(), at.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_on_a_topic_verify_and_each_tampering_is_named() {
    // Three bindings' writers (three streams), as keyhole writes them: keyed by subject over
    // three partitions, each confirmed before the next.
    let topic = create_topic(PARTITIONS).await;
    let producer = broker::producer();
    let sink = Arc::new(Receipts::open(&ReceiptSink::Kafka { topic: topic.clone() }).unwrap());
    let writers = [
        (sink.writer("acme/age-band"), "age-band"),
        (sink.writer("globex/echo"), "echo"),
        (sink.writer("acme/echo"), "echo"),
    ];
    let mut asked = Vec::new();
    for n in 0..60 {
        let (writer, handler) = &writers[n % 3];
        let receipt = receipt(n, subject_of(n), handler);
        writer.write(&receipt, &producer, Duration::from_secs(10)).await.unwrap();
        if receipt.subject == Some(ASKED) {
            asked.push(serde_json::to_value(&receipt).unwrap());
        }
    }
    drop(writers);

    let clean = on_topic("verify", &topic, &["--json"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    let verification = json(&clean);
    assert_eq!(verification["chained"], 60);
    let streams = verification["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 3);
    assert!(streams.iter().all(|s| s["first_seq"] == 1 && s["last_seq"] == 20), "{verification}");
    let heads: Vec<String> = streams.iter().map(|s| s["head"].as_str().unwrap().to_string()).collect();
    let with_heads = verify_copy(&topic, &heads).0;
    assert_eq!(with_heads.status.code(), Some(0), "{}", text(&with_heads));

    let report = on_topic("report", &topic, &["--subject", ASKED, "--json"]);
    assert_eq!(report.status.code(), Some(0), "{}", text(&report));
    let report = json(&report);
    let got: Vec<Value> =
        report["receipts"].as_array().unwrap().iter().map(|r| r["receipt"].clone()).collect();
    assert_eq!(got, asked, "the report is exactly the receipts written about the subject, in time order");

    let records = read_back(&topic).await;
    assert_eq!(records.len(), 60);
    let stream_of = |r: &Record| r.field("stream").as_str().unwrap().to_string();
    let seq_of = |r: &Record| r.field("seq").as_u64().unwrap();
    let first_stream = stream_of(&records[0]);
    // Two records of one stream in one partition, one after the other in that partition, the
    // second not the stream's last (so that a receipt follows each in the chain).
    let (i, j) = (0..records.len())
        .flat_map(|i| (i + 1..records.len()).map(move |j| (i, j)))
        .find(|(i, j)| {
            let (a, b) = (&records[*i], &records[*j]);
            a.partition == b.partition && stream_of(a) == stream_of(b) && seq_of(b) < 20
        })
        .unwrap();

    // Forged: a receipt that claims a taken seq with the right prev, placed before the genuine one.
    let mut forged = records[j].clone();
    let text_value = String::from_utf8(forged.value.clone()).unwrap();
    forged.value =
        text_value.replacen("\"decision\":\"", "\"decision\":\"released\",\"x\":\"", 1).into_bytes();
    let mut with_forged = records.clone();
    with_forged.insert(j, forged);
    let (copy_topic, landed) = copy(&with_forged).await;
    let (output, found) = verify_copy(&copy_topic, &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(found, vec![pair("inserted", &landed[j])], "{}", text(&output));

    // A duplicate: the same record produced again at the end of its partition.
    let mut duplicated = records.clone();
    duplicated.push(records[i].clone());
    let (copy_topic, landed) = copy(&duplicated).await;
    let (output, found) = verify_copy(&copy_topic, &[]);
    let duplicate_at = landed.last().unwrap();
    assert!(found.contains(&pair("inserted", duplicate_at)), "{}", text(&output));
    assert!(found.iter().all(|(_, at)| at == duplicate_at), "{}", text(&output));
    assert!(text(&output).contains("a copy of the receipt at"), "{}", text(&output));

    // Deleted: two records (seqs 5 and 6 of a stream) skipped in the copy; the seqs missing are
    // named.
    let skipped: Vec<usize> = (0..records.len())
        .filter(|k| stream_of(&records[*k]) == first_stream && [5, 6].contains(&seq_of(&records[*k])))
        .collect();
    let kept: Vec<Record> =
        records.iter().enumerate().filter(|(k, _)| !skipped.contains(k)).map(|(_, r)| r.clone()).collect();
    let (copy_topic, _) = copy(&kept).await;
    let (output, _) = verify_copy(&copy_topic, &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let verification = json(&output);
    let removed: Vec<&Value> =
        verification["findings"].as_array().unwrap().iter().filter(|f| f["kind"] == "removed").collect();
    let mut missing: Vec<u64> = skipped.iter().map(|k| seq_of(&records[*k])).collect();
    missing.sort_unstable();
    assert_eq!(removed.len(), 1, "{verification}");
    assert_eq!(missing, vec![5, 6]);
    assert_eq!(removed[0]["missing"], serde_json::json!({"first": 5, "last": 6}), "{verification}");
    assert_eq!(verification["violations"], 1, "{verification}");

    // Reordered: two records of one stream in one partition swapped.
    let mut swapped = records.clone();
    swapped.swap(i, j);
    let (copy_topic, landed) = copy(&swapped).await;
    let (output, found) = verify_copy(&copy_topic, &[]);
    assert_eq!(found, vec![pair("reordered", &landed[j])], "{}", text(&output));

    // Edited: one record's decision changed.
    let mut edited = records.clone();
    let value = String::from_utf8(edited[i].value.clone()).unwrap();
    let decision = edited[i].field("decision");
    let other = if decision == "gone" { "released" } else { "gone" };
    edited[i].value = value
        .replacen(&format!("\"decision\":{decision}"), &format!("\"decision\":\"{other}\""), 1)
        .into_bytes();
    let (copy_topic, landed) = copy(&edited).await;
    let (output, found) = verify_copy(&copy_topic, &[]);
    assert_eq!(found, vec![pair("changed", &landed[i])], "{}", text(&output));

    // Truncated: the first stream's last two receipts cut off; only its published head shows it.
    let last_two: Vec<usize> = (0..records.len())
        .filter(|k| stream_of(&records[*k]) == first_stream && seq_of(&records[*k]) > 18)
        .collect();
    let cut: Vec<Record> =
        records.iter().enumerate().filter(|(k, _)| !last_two.contains(k)).map(|(_, r)| r.clone()).collect();
    let (copy_topic, landed) = copy(&cut).await;
    let (output, found) = verify_copy(&copy_topic, &[]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "without a head, a cut-off tail leaves no trace: {}",
        text(&output)
    );
    assert!(found.is_empty());
    let (output, found) = verify_copy(&copy_topic, &heads);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let last_kept = cut.iter().position(|r| stream_of(r) == first_stream && seq_of(r) == 18).unwrap();
    assert_eq!(found, vec![pair("truncated", &landed[last_kept])], "{}", text(&output));
}

/// On noida-db, which implements transactions: an exactly-once binding's receipts are sent in
/// its transactions, and the seqs of a transaction that was aborted are spent. Read
/// `read_uncommitted`, its receipts are in the chain and it verifies; a `read_committed` reader
/// would see seqs missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_of_aborted_transactions_are_part_of_the_chain() {
    use rdkafka::producer::{FutureProducer, Producer as _};
    let noida = crate::common::noida::Noida::start().await;
    noida.create_topics(&[("receipts", 2)]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &noida.bootstrap)
        .set("transactional.id", unique("receipts-tx"))
        .create()
        .unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    let sink = Arc::new(Receipts::open(&ReceiptSink::Kafka { topic: "receipts".into() }).unwrap());
    let writer = sink.writer("acme/age-band");
    let mut n = 0;
    for (count, commit) in [(5, true), (3, false), (4, true)] {
        producer.begin_transaction().unwrap();
        for _ in 0..count {
            writer
                .write(&receipt(n, subject_of(n), "age-band"), &producer, Duration::from_secs(10))
                .await
                .unwrap();
            n += 1;
        }
        if commit {
            producer.commit_transaction(Duration::from_secs(30)).unwrap();
        } else {
            producer.abort_transaction(Duration::from_secs(30)).unwrap();
        }
    }
    drop(writer);
    let output = keyhole(&[
        "receipts",
        "verify",
        "--json",
        "--topic",
        "receipts",
        "--bootstrap-servers",
        &noida.bootstrap,
        "--timeout",
        "60s",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let verification = json(&output);
    assert_eq!(verification["chained"], 12, "{verification}");
    assert_eq!(verification["streams"][0]["last_seq"], 12, "{verification}");
}

/// The examples of docs/data-protection.md ("Verifying receipts", "Answering an access
/// request"), exactly as keyhole prints them: two replicas' files with fixed stream ids, verified
/// clean, then with one receipt edited and one file's tail cut off (given the head published
/// before), and the access report of `customer/42`.
#[test]
fn receipts_doc_examples_are_what_keyhole_prints() {
    use keyhole::records::chain::{Head, linked};
    let dir = std::env::temp_dir().join(unique("keyhole-receipts-doc"));
    std::fs::create_dir_all(&dir).unwrap();
    let age_band = "sha256:1c7fade2ae61cef416657dc79e782f8cfd794371e13755138eab5ff84dd7b1ff";
    let echo = "sha256:cd60aa0a3d3f2b1e6c8e5f0a9b7d4c2e1f3a5b7c9d0e2f4a6b8c0d1e3f5a7b9c";
    let example = |time: &str,
                   id: &'static str,
                   asker: (&'static str, &'static str, &'static str, &'static str),
                   subject: Option<&'static str>,
                   dataref: &'static str,
                   decision: &'static str,
                   status: Option<u16>,
                   attempt: u32| {
        Receipt {
            time: time.to_string(),
            event_id: id,
            tenant: asker.0,
            handler: asker.1,
            handler_version: asker.2,
            data_source: "crm",
            purpose: asker.3,
            subject,
            dataref,
            decision,
            status,
            attempt,
        }
    };
    let acme = ("acme", "age-band", age_band, "Age statistics for product planning (contract ACME-17)");
    let globex = ("globex", "echo", echo, "Fraud scoring (contract GLOBEX-3)");
    let replicas = [
        (
            "replica-a.jsonl",
            "6f1c0b7e-2d4a-4c1e-9a57-3b8e0d2f4a10",
            vec![
                example(
                    "2026-11-23T09:14:02.117Z",
                    "evt-101",
                    acme,
                    Some("customer/42"),
                    "customers/42",
                    "released",
                    None,
                    1,
                ),
                example(
                    "2026-11-23T09:14:05.530Z",
                    "evt-102",
                    acme,
                    Some("customer/7"),
                    "customers/7",
                    "consent_denied",
                    Some(403),
                    1,
                ),
                example(
                    "2026-11-23T09:20:41.002Z",
                    "evt-107",
                    globex,
                    Some("customer/42"),
                    "customers/42",
                    "transient",
                    None,
                    1,
                ),
                example(
                    "2026-11-23T09:20:43.318Z",
                    "evt-107",
                    globex,
                    Some("customer/42"),
                    "customers/42",
                    "consent_denied",
                    Some(403),
                    2,
                ),
            ],
        ),
        (
            "replica-b.jsonl",
            "a83e5d21-9c47-4b0f-8e6a-71d2c4f9b305",
            vec![
                example(
                    "2026-11-23T09:16:30.884Z",
                    "evt-104",
                    acme,
                    None,
                    "customers/42/avatar",
                    "released",
                    None,
                    1,
                ),
                example(
                    "2026-11-23T09:17:12.450Z",
                    "evt-105",
                    acme,
                    Some("customer/42"),
                    "customers/42",
                    "gone",
                    Some(410),
                    1,
                ),
                example(
                    "2026-11-23T09:18:00.009Z",
                    "evt-106",
                    acme,
                    Some("customer/9"),
                    "customers/9",
                    "released",
                    None,
                    1,
                ),
            ],
        ),
    ];
    for (file, stream, receipts) in &replicas {
        let mut head = Head::new((*stream).into());
        let mut content = Vec::new();
        for receipt in receipts {
            let link = head.next();
            let line = linked(receipt, &link).unwrap();
            head.advance(&link, &line);
            content.extend_from_slice(&line);
            content.push(b'\n');
        }
        std::fs::write(dir.join(file), content).unwrap();
    }
    let run = |args: &[&str]| {
        let output =
            Command::new(env!("CARGO_BIN_EXE_keyhole")).args(args).current_dir(&dir).output().unwrap();
        (output.status.code(), String::from_utf8(output.stdout).unwrap())
    };
    let files = ["--file", "replica-a.jsonl", "--file", "replica-b.jsonl"];

    let (code, clean) = run(&[&["receipts", "verify"][..], &files].concat());
    assert_eq!(code, Some(0));

    let (code, report) = run(&[
        &["receipts", "report", "--subject", "customer/42", "--dataref", "customers/42/avatar"][..],
        &files,
    ]
    .concat());
    assert_eq!(code, Some(0));

    let head_b = clean.lines().find(|l| l.trim_start().starts_with("head a83e5d21")).unwrap().trim_start()
        ["head ".len()..]
        .to_string();
    let a = std::fs::read_to_string(dir.join("replica-a.jsonl")).unwrap();
    std::fs::write(
        dir.join("replica-a.jsonl"),
        a.replacen("\"decision\":\"consent_denied\"", "\"decision\":\"released\"", 1),
    )
    .unwrap();
    let b = std::fs::read_to_string(dir.join("replica-b.jsonl")).unwrap();
    let cut: Vec<&str> = b.lines().take(2).collect();
    std::fs::write(dir.join("replica-b.jsonl"), cut.join("\n") + "\n").unwrap();
    let (code, tampered) = run(&[&["receipts", "verify"][..], &files, &["--head", &head_b]].concat());
    assert_eq!(code, Some(1));
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(clean, VERIFIED);
    assert_eq!(report, REPORT);
    assert_eq!(tampered, TAMPERED);
}

const VERIFIED: &str = r"read:   7 lines (7 chained, 0 unchained) in 2 streams, from replica-a.jsonl, replica-b.jsonl
heads:  none given; a stream's last receipts can be cut off unseen without one
result: verified, no violation

streams:
  6f1c0b7e-2d4a-4c1e-9a57-3b8e0d2f4a10  seq 1..4, 4 receipts, replica-a.jsonl:1 .. replica-a.jsonl:4: intact
    head 6f1c0b7e-2d4a-4c1e-9a57-3b8e0d2f4a10:4:sha256:fa6d8ee5f100fffaf350a16e5c930327acf9523fd23db9d0701adafa58dae6c5
  a83e5d21-9c47-4b0f-8e6a-71d2c4f9b305  seq 1..3, 3 receipts, replica-b.jsonl:1 .. replica-b.jsonl:3: intact
    head a83e5d21-9c47-4b0f-8e6a-71d2c4f9b305:3:sha256:a46c20d83c5045ef098dc3444c3c68f4e0133e9955062933b4ebd57785a715ff
";
const REPORT: &str = r"access report: subject customer/42; dataref customers/42/avatar (receipts without a subject)
read: replica-a.jsonl, replica-b.jsonl
5 receipt(s), 2026-11-23T09:14:02.117Z to 2026-11-23T09:20:43.318Z

time                      tenant  handler   version               purpose                                                 data source  decision              attempt  dataref              receipt
2026-11-23T09:14:02.117Z  acme    age-band  sha256:1c7fade2ae61…  Age statistics for product planning (contract ACME-17)  crm          released              1        customers/42         replica-a.jsonl:1 verified
2026-11-23T09:16:30.884Z  acme    age-band  sha256:1c7fade2ae61…  Age statistics for product planning (contract ACME-17)  crm          released              1        customers/42/avatar  replica-b.jsonl:1 verified
2026-11-23T09:17:12.450Z  acme    age-band  sha256:1c7fade2ae61…  Age statistics for product planning (contract ACME-17)  crm          gone (410)            1        customers/42         replica-b.jsonl:2 verified
2026-11-23T09:20:41.002Z  globex  echo      sha256:cd60aa0a3d3f…  Fraud scoring (contract GLOBEX-3)                       crm          transient             1        customers/42         replica-a.jsonl:3 verified
2026-11-23T09:20:43.318Z  globex  echo      sha256:cd60aa0a3d3f…  Fraud scoring (contract GLOBEX-3)                       crm          consent_denied (403)  2        customers/42         replica-a.jsonl:4 verified

verification: every chain read is intact (2 stream(s), 7 chained receipt(s)); this report draws from 2 stream(s), 0 of them checked against a published head
";
const TAMPERED: &str = r"read:   6 lines (6 chained, 0 unchained) in 2 streams, from replica-a.jsonl, replica-b.jsonl
heads:  1 beyond-end
result: NOT VERIFIED, 2 violations (1 changed, 1 truncated)

violations:
  changed    replica-a.jsonl:2        its hash is not the prev of the next receipt (replica-a.jsonl:3, seq 3): it was edited (or the next one's prev was)
  truncated  replica-b.jsonl:2        the published head is at seq 3, but the stream ends at seq 2 (replica-b.jsonl:2): seq 3 cut off

streams:
  6f1c0b7e-2d4a-4c1e-9a57-3b8e0d2f4a10  seq 1..4, 4 receipts, replica-a.jsonl:1 .. replica-a.jsonl:4: 1 violation
    head 6f1c0b7e-2d4a-4c1e-9a57-3b8e0d2f4a10:4:sha256:fa6d8ee5f100fffaf350a16e5c930327acf9523fd23db9d0701adafa58dae6c5
  a83e5d21-9c47-4b0f-8e6a-71d2c4f9b305  seq 1..2, 2 receipts, replica-b.jsonl:1 .. replica-b.jsonl:2: 1 violation
    head a83e5d21-9c47-4b0f-8e6a-71d2c4f9b305:2:sha256:8b3fdea616d6c1e2ba0d6488ffc2af04feaae861277e4f821f5badd9b646c2cc
    --head a83e5d21-9c47-4b0f-8e6a-71d2c4f9b305:3:sha256:a46c20d83c5045ef098dc3444c3c68f4e0133e9955062933b4ebd57785a715ff: beyond-end
";

/// What `keyhole run` itself writes, through the engine, verifies: on a topic (a stream per
/// start of the binding) and in a file (one stream, continued across the restart), each checked
/// against the heads keyhole logged; a subject's report is exactly the requests made about
/// them; and the file with its last line cut off fails against the logged head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_keyhole_run_writes_verify_across_a_restart_against_its_logged_heads() {
    use crate::common::owner::{Answer, Owner};
    let owner = Owner::start().await;
    for n in 1..=3 {
        owner.set(&format!("customers/{n}"), Answer::Release("application/json", b"{}".to_vec()));
    }
    owner.set("customers/4", Answer::Status(403));

    for sink in ["kafka", "file"] {
        let dir = std::env::temp_dir().join(unique("keyhole-chain-e2e"));
        std::fs::create_dir_all(&dir).unwrap();
        let topic = create_topic(2).await;
        let group = unique("keyhole");
        let identity = format!(r#"{{ bearer_token = {{ value = "{}" }} }}"#, crate::common::owner::TOKEN);
        let mut config =
            crate::common::config::TestConfig::echo(&group, &topic, &owner.base_url(), &identity, "");
        let receipts_topic = create_topic(PARTITIONS).await;
        let receipts_file = dir.join("receipts.jsonl");
        config.set("audit.path", dir.join("audit.jsonl").display().to_string());
        match sink {
            "kafka" => config.set("receipts.sink", "kafka").set("receipts.topic", receipts_topic.as_str()),
            _ => config.set("receipts.path", receipts_file.display().to_string()),
        };
        broker::create_named_topic(&config.settings().bindings[0].on_failure.dead_letter_topic, 1).await;
        config.write(&dir.join("keyhole.toml"));

        // Two runs of keyhole, 8 events each; every event names its subject.
        let producer = broker::producer();
        let mut about = std::collections::BTreeMap::<String, Vec<String>>::new();
        for run in 0..2 {
            let mut keyhole = crate::common::run_keyhole(&dir.join("keyhole.toml"));
            for i in 0..8 {
                let (id, customer) = (format!("{sink}-{run}-{i}"), 1 + i % 4);
                let mut headers = broker::reference(&id, &format!("customers/{customer}"));
                headers.push(("ce_subject".into(), format!("customer/{customer}").into_bytes()));
                broker::publish(&producer, &topic, None, Some(&format!("k{customer}")), &headers, None).await;
                about.entry(format!("customer/{customer}")).or_default().push(id);
            }
            let started = std::time::Instant::now();
            while std::fs::read_to_string(dir.join("audit.jsonl")).unwrap_or_default().lines().count()
                < 8 * (run + 1)
            {
                assert!(started.elapsed() < Duration::from_secs(60), "{sink}: events not handled");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // SIGTERM: a clean stop, which ends (and logs the head of) each stream.
            assert!(
                Command::new("kill").args(["-TERM", &keyhole.id().to_string()]).status().unwrap().success()
            );
            let stopped = tokio::task::spawn_blocking(move || keyhole.wait().unwrap()).await.unwrap();
            assert!(stopped.success(), "{sink}: keyhole did not stop cleanly");
        }

        // The last head keyhole logged for each stream.
        let log = std::fs::read_to_string(dir.join("keyhole.log")).unwrap();
        let mut heads = std::collections::BTreeMap::new();
        for line in log.lines().filter(|l| l.contains("Receipts chain head.")) {
            let field = |name: &str| {
                let start = line.find(&format!(" {name}=")).unwrap() + name.len() + 2;
                line[start..].split_whitespace().next().unwrap().trim_matches('"').to_string()
            };
            heads.insert(field("stream"), format!("{}:{}:{}", field("stream"), field("seq"), field("head")));
        }
        assert_eq!(heads.len(), if sink == "kafka" { 2 } else { 1 }, "{sink}: streams logged:\n{log}");
        let mut args: Vec<String> = match sink {
            "kafka" => {
                vec!["--topic".into(), receipts_topic.clone(), "--bootstrap-servers".into(), bootstrap()]
            }
            _ => vec!["--file".into(), receipts_file.display().to_string()],
        };
        args.extend(
            ["--property", "fetch.wait.max.ms=10"].map(String::from).into_iter().filter(|_| sink == "kafka"),
        );
        for head in heads.values() {
            args.extend(["--head".into(), head.clone()]);
        }
        let run = |command: &str, more: &[&str]| {
            let mut all = vec!["receipts", command];
            all.extend(args.iter().map(String::as_str));
            all.extend(more);
            keyhole(&all)
        };

        let verified = run("verify", &["--json"]);
        assert_eq!(verified.status.code(), Some(0), "{sink}: {}", text(&verified));
        let verification = json(&verified);
        assert_eq!(verification["chained"], 16, "{sink}: one receipt per request: {verification}");
        let streams = verification["streams"].as_array().unwrap();
        assert_eq!(streams.len(), heads.len(), "{sink}: {verification}");
        for stream in streams {
            assert_eq!(stream["first_seq"], 1, "{sink}: {stream}");
            assert_eq!(stream["heads"].as_array().unwrap().len(), 1, "{sink}: its logged head: {stream}");
            for head in stream["heads"].as_array().unwrap() {
                assert_eq!(head["result"], "matches", "{sink}: {stream}");
            }
        }

        let report = run("report", &["--subject", "customer/2", "--json"]);
        assert_eq!(report.status.code(), Some(0), "{sink}: {}", text(&report));
        let mut reported: Vec<String> = json(&report)["receipts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["receipt"]["event_id"].as_str().unwrap().to_string())
            .collect();
        reported.sort();
        let mut expected = about["customer/2"].clone();
        expected.sort();
        assert_eq!(reported, expected, "{sink}");

        if sink == "file" {
            // docs/data-protection.md's way of taking the heads from the log, run as written
            // against this log and file.
            let doc =
                std::fs::read_to_string(crate::common::repo_root().join("docs/data-protection.md")).unwrap();
            let start =
                doc.find("heads=$(grep 'Receipts chain head' keyhole.log").expect("the doc's head snippet");
            let snippet = &doc[start..start + doc[start..].find("```").unwrap()];
            let script = snippet
                .replace("keyhole.log", &dir.join("keyhole.log").display().to_string())
                .replace("keyhole receipts verify", env!("CARGO_BIN_EXE_keyhole"))
                .replace(
                    "--file keyhole-receipts.jsonl",
                    &format!("receipts verify --file {}", receipts_file.display()),
                );
            let documented = Command::new("bash").args(["-euc", &script]).output().unwrap();
            assert_eq!(documented.status.code(), Some(0), "{script}\n{}", text(&documented));
            assert!(text(&documented).contains("matches"), "{}", text(&documented));

            // The last receipt cut off: only the logged head tells.
            let text_before = std::fs::read_to_string(&receipts_file).unwrap();
            let mut lines: Vec<&str> = text_before.lines().collect();
            lines.pop();
            std::fs::write(&receipts_file, lines.join("\n") + "\n").unwrap();
            let cut = run("verify", &["--json"]);
            assert_eq!(cut.status.code(), Some(1), "{}", text(&cut));
            assert!(findings(&json(&cut)).iter().any(|(kind, _)| kind == "truncated"), "{}", text(&cut));
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
