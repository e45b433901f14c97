//! Every kind of tampering, on chains written exactly as keyhole writes them
//! ([`chain::linked`], [`chain::Head`]): in memory, in files, and on the partitions of a topic
//! (as the verifier is fed them); and inputs that are no receipts at all.

use super::findings::Kind;
use super::record::{self, Value};
use super::*;
use crate::records::chain::{self, Head};
use crate::records::receipt::Receipt;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};

/// The receipt keyhole would write for the `n`th request, about `subject`.
fn receipt(n: usize, subject: Option<&'static str>) -> Receipt<'static> {
    Receipt {
        time: format!("2026-11-23T10:{:02}:{:02}.000Z", n / 60 % 60, n % 60),
        event_id: Box::leak(format!("e-{n}").into_boxed_str()),
        tenant: "acme",
        handler: "age-band",
        handler_version: "sha256:1c7fade2ae61cef416657dc79e782f8cfd794371e13755138eab5ff84dd7b1ff",
        data_source: "crm",
        purpose: "Age statistics (ACME-17)",
        subject,
        dataref: "customers/42",
        decision: if n.is_multiple_of(3) { "consent_denied" } else { "released" },
        status: n.is_multiple_of(3).then_some(403),
        attempt: 1,
    }
}

/// A stream's lines, seq 1 to `n`, as keyhole writes them; and its head.
fn stream(id: &str, n: usize) -> (Vec<Vec<u8>>, Head) {
    let mut head = Head::new(id.into());
    let lines = (1..=n)
        .map(|i| {
            let link = head.next();
            let line = chain::linked(&receipt(i, Some("customer/42")), &link).unwrap();
            head.advance(&link, &line);
            line
        })
        .collect();
    (lines, head)
}

fn published(head: &Head) -> PublishedHead {
    format!("{}:{}:{}", head.stream, head.seq, head.hash).parse().unwrap()
}

/// Verifies `lines` as one file, `receipts.jsonl`.
fn verify_file(lines: &[Vec<u8>], heads: &[PublishedHead]) -> Verification {
    let mut verifier = Verifier::new(Options::default());
    let lane = verifier.open_lane(Lane::File("receipts.jsonl".into()));
    for (i, line) in lines.iter().enumerate() {
        let at = Position { lane, index: i as i64 + 1 };
        verifier.add(at, &record::parse(Value::Bytes(line))).unwrap();
    }
    verifier.finish(heads)
}

/// Verifies partitions, each a list of lines at offsets from 0, as a topic.
fn verify_topic(partitions: &[Vec<Vec<u8>>], options: Options, heads: &[PublishedHead]) -> Verification {
    let mut verifier = Verifier::new(options);
    verifier.describe_source("topic receipts".into());
    for (p, records) in partitions.iter().enumerate() {
        let lane = verifier.open_lane(Lane::Partition(p as i32));
        for (offset, value) in records.iter().enumerate() {
            let at = Position { lane, index: offset as i64 };
            verifier.add(at, &record::parse(Value::Bytes(value))).unwrap();
        }
    }
    verifier.finish(heads)
}

/// (kind, at) of every finding.
fn found(verification: &Verification) -> Vec<(Kind, String)> {
    verification.findings.iter().map(|f| (f.kind, f.at.clone().unwrap_or_default())).collect()
}

fn at(line: usize) -> String {
    format!("receipts.jsonl:{line}")
}

#[test]
fn an_intact_chain_verifies_and_gives_its_head() {
    let (lines, head) = stream("s-1", 10);
    let verification = verify_file(&lines, &[published(&head)]);
    assert!(verification.verified, "{verification}");
    assert_eq!(verification.chained, 10);
    let summary = &verification.streams[0];
    assert_eq!((summary.first_seq, summary.last_seq, summary.receipts), (1, 10, 10));
    assert_eq!(summary.head, published(&head).to_string());
    assert_eq!(summary.heads[0].result, "matches");
    let text = verification.to_string();
    assert!(text.contains("result: verified, no violation"), "{text}");
    assert!(text.contains(&format!("head {}", published(&head))), "{text}");
}

#[test]
fn an_edited_receipt_is_changed_at_its_line() {
    let (mut lines, _) = stream("s-1", 10);
    lines[3] =
        String::from_utf8(lines[3].clone()).unwrap().replace("released", "consent_denied").into_bytes();
    let verification = verify_file(&lines, &[]);
    assert_eq!(found(&verification), vec![(Kind::Changed, at(4))], "{verification}");
    assert_eq!(verification.findings[0].seq, Some(4));
    assert!(verification.findings[0].detail.contains("receipts.jsonl:5, seq 5"), "{verification}");
}

#[test]
fn a_replaced_receipt_is_changed_once_at_its_own_line() {
    // Its prev and its bytes both differ: the receipt itself, not its neighbour, is named.
    let (mut lines, _) = stream("s-1", 10);
    let forged = chain::Link { stream: "s-1".into(), seq: 6, prev: chain::hash(b"elsewhere") };
    lines[5] = chain::linked(&receipt(99, Some("customer/42")), &forged).unwrap();
    let verification = verify_file(&lines, &[]);
    assert_eq!(found(&verification), vec![(Kind::Changed, at(6))], "{verification}");
}

#[test]
fn a_deleted_receipt_is_removed_with_its_seq_and_neighbours() {
    let (mut lines, _) = stream("s-1", 10);
    lines.drain(4..6); // seqs 5 and 6
    let verification = verify_file(&lines, &[]);
    assert_eq!(found(&verification), vec![(Kind::Removed, at(5))], "{verification}");
    let finding = &verification.findings[0];
    assert_eq!(finding.missing, Some(findings::Missing { first: 5, last: 6 }));
    assert!(
        finding
            .detail
            .contains("seqs 5..6 missing, between receipts.jsonl:4 (seq 4) and receipts.jsonl:5 (seq 7)"),
        "{}",
        finding.detail
    );
}

#[test]
fn the_first_receipts_deleted_from_a_file_are_removed() {
    let (lines, _) = stream("s-1", 10);
    let verification = verify_file(&lines[3..], &[]);
    assert_eq!(found(&verification), vec![(Kind::Removed, at(1))], "{verification}");
    assert_eq!(verification.findings[0].missing, Some(findings::Missing { first: 1, last: 3 }));
}

#[test]
fn a_second_receipt_with_a_taken_seq_is_inserted_and_the_linked_one_kept() {
    let (mut lines, _) = stream("s-1", 10);
    // A forgery that claims seq 4 with the right prev: only the next receipt tells them apart.
    let link = chain::Link { stream: "s-1".into(), seq: 4, prev: chain::hash(&lines[2]) };
    let forged = chain::linked(&receipt(77, Some("customer/42")), &link).unwrap();
    lines.insert(3, forged); // before the genuine seq 4
    let verification = verify_file(&lines, &[]);
    assert_eq!(found(&verification), vec![(Kind::Inserted, at(4))], "{verification}");
    assert!(verification.findings[0].detail.contains("receipts.jsonl:5 already has"), "{verification}");
}

#[test]
fn an_exact_copy_of_a_receipt_is_inserted() {
    let (mut lines, _) = stream("s-1", 10);
    lines.push(lines[2].clone());
    let verification = verify_file(&lines, &[]);
    // It is a copy, and it also goes backwards in the file.
    assert_eq!(
        found(&verification),
        vec![(Kind::Inserted, at(11)), (Kind::Reordered, at(11))],
        "{verification}"
    );
    assert!(
        verification.findings[0].detail.contains("a copy of the receipt at receipts.jsonl:3"),
        "{verification}"
    );
}

#[test]
fn a_forged_receipt_of_a_stream_of_its_own_links_to_nothing() {
    let (mut lines, _) = stream("s-1", 10);
    let link = chain::Link { stream: "forged".into(), seq: 7, prev: chain::hash(b"nothing") };
    lines.push(chain::linked(&receipt(5, Some("customer/42")), &link).unwrap());
    let verification = verify_file(&lines, &[]);
    assert_eq!(found(&verification), vec![(Kind::Inserted, at(11))], "{verification}");
    assert!(verification.findings[0].detail.contains("links to nothing"), "{verification}");
}

#[test]
fn a_receipt_of_another_stream_amid_a_files_stream_is_inserted() {
    // A whole valid stream of one receipt (seq 1, the genesis) in the middle of the file.
    let (mut lines, _) = stream("s-1", 10);
    let (intruder, _) = stream("intruder", 1);
    lines.insert(5, intruder[0].clone());
    let verification = verify_file(&lines, &[]);
    assert_eq!(found(&verification), vec![(Kind::Inserted, at(6))], "{verification}");
    assert!(verification.findings[0].detail.contains("a file has one writer at a time"), "{verification}");
    // Streams that follow one another (a file continued by a new stream) are fine.
    let (mut lines, _) = stream("s-1", 3);
    lines.extend(stream("s-2", 3).0);
    assert!(verify_file(&lines, &[]).verified);
}

#[test]
fn an_unreadable_line_among_chained_ones_is_torn_or_inserted() {
    let (mut lines, _) = stream("s-1", 6);
    let torn = lines[3][..40].to_vec();
    lines.insert(3, torn);
    lines.insert(5, b"not json at all".to_vec());
    lines.push(br#"{"event_id":"e-1","subject":"customer/42"}"#.to_vec());
    let verification = verify_file(&lines, &[]);
    assert_eq!(
        found(&verification),
        vec![(Kind::Inserted, at(6)), (Kind::Inserted, at(9))],
        "{verification}"
    );
    let details: Vec<&str> = verification.findings.iter().map(|f| f.detail.as_str()).collect();
    assert!(details[0].starts_with("unreadable (not JSON"), "{}", details[0]);
    assert!(details[0].ends_with("torn by a crash while writing, or inserted"), "{}", details[0]);
    assert!(details[1].contains("without stream, seq and prev among chained ones"), "{}", details[1]);
    // The torn line (JSON cut off) is what keyhole's writer leaves after a crash, and continues
    // the chain across: a note, since it hides no receipt.
    assert!(
        verification.notes.iter().any(|n| n.contains("receipts.jsonl: 1 torn line(s) (line 4)")),
        "{verification}"
    );
}

#[test]
fn a_torn_line_that_took_a_receipts_place_leaves_a_gap() {
    // Cutting a receipt short (instead of a crash) removes it: the chain shows the gap.
    let (mut lines, _) = stream("s-1", 6);
    lines[2].truncate(50);
    let verification = verify_file(&lines, &[]);
    assert_eq!(found(&verification), vec![(Kind::Removed, at(4))], "{verification}");
}

#[test]
fn lines_before_the_first_chained_line_are_unchained_not_violations() {
    let mut lines: Vec<Vec<u8>> =
        (1..=3).map(|i| serde_json::to_vec(&receipt(i, Some("customer/42"))).unwrap()).collect();
    lines.push(b"{\"torn by an old crash".to_vec());
    lines.extend(stream("s-1", 4).0);
    let verification = verify_file(&lines, &[]);
    assert!(verification.verified, "{verification}");
    assert_eq!((verification.unchained, verification.chained), (4, 4));
    assert!(
        verification
            .notes
            .iter()
            .any(|n| n.contains("4 line(s) before its first chained line, 1 of them unreadable")),
        "{verification}"
    );
}

#[test]
fn swapped_receipts_are_reordered_once() {
    let (mut lines, _) = stream("s-1", 10);
    lines.swap(4, 5);
    let verification = verify_file(&lines, &[]);
    assert_eq!(found(&verification), vec![(Kind::Reordered, at(6))], "{verification}");
    assert!(
        verification.findings[0].detail.contains("seq 5 comes after seq 6 (receipts.jsonl:5)"),
        "{verification}"
    );
    // A receipt moved far is one finding too.
    let (mut lines, _) = stream("s-1", 10);
    let moved = lines.remove(2);
    lines.push(moved);
    assert_eq!(found(&verify_file(&lines, &[])), vec![(Kind::Reordered, at(10))]);
}

#[test]
fn a_cut_off_tail_is_found_only_with_a_published_head() {
    let (lines, head) = stream("s-1", 10);
    let cut = &lines[..7];
    assert!(verify_file(cut, &[]).verified, "without a head, a cut-off tail leaves no trace");
    let verification = verify_file(cut, &[published(&head)]);
    assert_eq!(found(&verification), vec![(Kind::Truncated, at(7))], "{verification}");
    assert_eq!(verification.findings[0].missing, Some(findings::Missing { first: 8, last: 10 }));
    assert_eq!(verification.streams[0].heads[0].result, "beyond-end");
}

#[test]
fn a_tail_cut_off_and_written_again_differs_from_the_head() {
    let (lines, head) = stream("s-1", 10);
    let mut rewritten = lines[..7].to_vec();
    let mut forger = Head { stream: "s-1".into(), seq: 7, hash: chain::hash(&lines[6]) };
    for n in 8..=12 {
        let link = forger.next();
        let line = chain::linked(&receipt(n + 100, Some("customer/42")), &link).unwrap();
        forger.advance(&link, &line);
        rewritten.push(line);
    }
    assert!(verify_file(&rewritten, &[]).verified, "a consistent rewrite is found only with a head");
    let verification = verify_file(&rewritten, &[published(&head)]);
    assert_eq!(found(&verification), vec![(Kind::Truncated, at(10))], "{verification}");
    assert_eq!(verification.streams[0].heads[0].result, "differs");
}

#[test]
fn a_receipt_appended_after_a_confirmed_head_links_to_nothing() {
    let (mut lines, head) = stream("s-1", 10);
    let link = chain::Link { stream: "s-1".into(), seq: 11, prev: chain::hash(b"made up") };
    lines.push(chain::linked(&receipt(11, Some("customer/42")), &link).unwrap());
    // Without the head the break is put on the last genuine receipt (edited, or the next's
    // prev was); the head shows the genuine one is intact.
    assert_eq!(found(&verify_file(&lines, &[])), vec![(Kind::Changed, at(10))]);
    let verification = verify_file(&lines, &[published(&head)]);
    assert_eq!(found(&verification), vec![(Kind::Inserted, at(11))], "{verification}");
    assert!(verification.findings[0].detail.contains("which a published head confirms"), "{verification}");
}

#[test]
fn a_head_of_a_stream_that_is_nowhere_is_truncated() {
    let (lines, _) = stream("s-1", 3);
    let (_, gone) = stream("gone", 4);
    let verification = verify_file(&lines, &[published(&gone)]);
    assert_eq!(found(&verification), vec![(Kind::Truncated, String::new())], "{verification}");
    assert!(verification.findings[0].detail.contains("in none of the sources"), "{verification}");
}

/// Two streams over three partitions, as keyhole's producers write them: each record goes to
/// the partition of its subject, and each stream's records keep their order in each partition.
fn topic_of_two_streams() -> (Vec<Vec<Vec<u8>>>, Vec<Head>) {
    let (a, head_a) = stream("a", 12);
    let (b, head_b) = stream("b", 9);
    let mut partitions = vec![Vec::new(); 3];
    let (mut ia, mut ib) = (a.into_iter().enumerate(), b.into_iter().enumerate());
    loop {
        let (next_a, next_b) = (ia.next(), ib.next());
        if next_a.is_none() && next_b.is_none() {
            break;
        }
        for (i, line) in next_a.into_iter().chain(next_b) {
            partitions[i * 7 % 3].push(line);
        }
    }
    (partitions, vec![head_a, head_b])
}

#[test]
fn streams_spread_over_partitions_verify() {
    let (partitions, heads) = topic_of_two_streams();
    let heads: Vec<PublishedHead> = heads.iter().map(published).collect();
    let verification = verify_topic(&partitions, Options::default(), &heads);
    assert!(verification.verified, "{verification}");
    assert_eq!(verification.streams.len(), 2);
    assert_eq!(verification.streams[0].receipts + verification.streams[1].receipts, 21);
}

#[test]
fn on_a_topic_seq_going_backwards_within_a_partition_is_reordered() {
    let (mut partitions, _) = topic_of_two_streams();
    // Two records of stream `a` in partition 1, swapped.
    let positions: Vec<usize> = (0..partitions[1].len())
        .filter(|i| String::from_utf8_lossy(&partitions[1][*i]).contains(r#""stream":"a""#))
        .take(2)
        .collect();
    partitions[1].swap(positions[0], positions[1]);
    let verification = verify_topic(&partitions, Options::default(), &[]);
    assert_eq!(
        found(&verification),
        vec![(Kind::Reordered, format!("1@{}", positions[1]))],
        "{verification}"
    );
}

#[test]
fn on_a_topic_a_lost_beginning_is_a_note_unless_from_start() {
    let (a, _) = stream("a", 10);
    let partitions = vec![a[4..].to_vec()];
    let verification = verify_topic(&partitions, Options::default(), &[]);
    assert!(verification.verified, "{verification}");
    assert!(verification.streams[0].beginning_gone);
    assert!(
        verification.notes.iter().any(|n| n.contains("stream a begins at seq 5 (0@0)")),
        "{verification}"
    );
    let strict = Options { from_start: true, ..Options::default() };
    let verification = verify_topic(&partitions, strict, &[]);
    assert_eq!(found(&verification), vec![(Kind::Removed, "0@0".into())], "{verification}");
}

#[test]
fn on_a_topic_unchained_records_are_counted_and_garbage_is_inserted() {
    let (a, _) = stream("a", 4);
    let old = serde_json::to_vec(&receipt(1, None)).unwrap();
    let partitions = vec![
        vec![a[0].clone(), old.clone(), a[1].clone()],
        vec![a[2].clone(), b"garbage".to_vec(), a[3].clone()],
    ];
    let verification = verify_topic(&partitions, Options::default(), &[]);
    assert_eq!(found(&verification), vec![(Kind::Inserted, "1@1".into())], "{verification}");
    assert_eq!(verification.unchained, 1);
}

#[test]
fn every_single_byte_edit_deletion_and_swap_is_found_given_the_head() {
    let (lines, head) = stream("s-1", 6);
    let heads = [published(&head)];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for line in 0..lines.len() {
        for _ in 0..40 {
            let mut edited = lines.clone();
            let at = rng.random_range(0..edited[line].len());
            let byte = rng.random::<u8>();
            if edited[line][at] == byte {
                continue;
            }
            edited[line][at] = byte;
            let verification = verify_file(&edited, &heads);
            assert!(!verification.verified, "line {line}, byte {at} -> {byte}: {verification}");
        }
        let mut deleted = lines.clone();
        deleted.remove(line);
        assert!(!verify_file(&deleted, &heads).verified, "line {line} deleted");
        if line + 1 < lines.len() {
            let mut swapped = lines.clone();
            swapped.swap(line, line + 1);
            assert_eq!(found(&verify_file(&swapped, &heads)), vec![(Kind::Reordered, at(line + 2))]);
        }
    }
}

#[test]
fn random_input_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let (a, _) = stream("a", 30);
    let (b, _) = stream("b", 30);
    for round in 0..300 {
        let mut lines: Vec<Vec<u8>> = a.iter().chain(&b).cloned().collect();
        lines.shuffle(&mut rng);
        lines.truncate(rng.random_range(0..lines.len()));
        for _ in 0..rng.random_range(0..10) {
            let len = rng.random_range(0..300);
            let junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let at = rng.random_range(0..=lines.len());
            lines.insert(at, junk);
        }
        if round % 10 == 0 {
            lines.push(vec![b'{'; record::MAX_RECORD_BYTES + 1]);
        }
        let mut verifier = Verifier::new(Options { from_start: round % 2 == 0, max_receipts: 1000 });
        let lanes = [verifier.open_lane(Lane::File("f".into())), verifier.open_lane(Lane::Partition(0))];
        for (i, line) in lines.iter().enumerate() {
            let at = Position { lane: lanes[i % 2], index: i as i64 };
            verifier.add(at, &record::parse(Value::Bytes(line))).unwrap();
        }
        let verification = verifier.finish(&[]);
        let _ = verification.to_string();
        let _ = serde_json::to_string(&verification).unwrap();
    }
}

#[test]
fn more_receipts_than_allowed_stop_the_reading() {
    let (lines, _) = stream("s", 5);
    let mut verifier = Verifier::new(Options { from_start: false, max_receipts: 3 });
    let lane = verifier.open_lane(Lane::File("f".into()));
    let results: Vec<bool> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            verifier.add(Position { lane, index: i as i64 }, &record::parse(Value::Bytes(line))).is_ok()
        })
        .collect();
    assert_eq!(results, vec![true, true, true, false, false]);
}

#[test]
fn many_violations_are_counted_beyond_those_listed() {
    let lines: Vec<Vec<u8>> = std::iter::once(stream("s", 1).0[0].clone())
        .chain((0..verify::MAX_FINDINGS + 5).map(|_| b"x".to_vec()))
        .collect();
    let verification = verify_file(&lines, &[]);
    assert_eq!(verification.violations, verify::MAX_FINDINGS as u64 + 5);
    assert_eq!(verification.findings.len(), verify::MAX_FINDINGS);
    assert_eq!(verification.findings_not_shown, 5);
}

/// Writes `lines` to a new file; its path.
fn file_of(lines: &[Vec<u8>]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("keyhole-proof-{}.jsonl", uuid::Uuid::new_v4()));
    let mut content = Vec::new();
    for line in lines {
        content.extend_from_slice(line);
        content.push(b'\n');
    }
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn files_verify_as_written_and_their_findings_name_file_and_line() {
    let (lines, head) = stream("s-1", 8);
    let clean = file_of(&lines);
    let mut verifier = Verifier::new(Options::default());
    read(&Source::Files(vec![clean.clone()]), &mut verifier, |_, _| Ok(())).unwrap();
    let verification = verifier.finish(&[published(&head)]);
    assert!(verification.verified, "{verification}");

    let mut tampered = lines.clone();
    tampered[2] = String::from_utf8(tampered[2].clone()).unwrap().replace("acme", "acne").into_bytes();
    tampered.remove(5);
    let tampered = file_of(&tampered);
    let mut verifier = Verifier::new(Options::default());
    read(&Source::Files(vec![tampered.clone()]), &mut verifier, |_, _| Ok(())).unwrap();
    let verification = verifier.finish(&[]);
    let name = tampered.display().to_string();
    assert_eq!(
        found(&verification),
        vec![(Kind::Changed, format!("{name}:3")), (Kind::Removed, format!("{name}:6"))]
    );

    // A torn last line (a crash while writing) is named as such, and is no violation.
    let mut torn = std::fs::read(&clean).unwrap();
    torn.extend_from_slice(&lines[0][..30]);
    std::fs::write(&clean, torn).unwrap();
    let mut verifier = Verifier::new(Options::default());
    read(&Source::Files(vec![clean.clone()]), &mut verifier, |_, _| Ok(())).unwrap();
    let verification = verifier.finish(&[]);
    assert!(verification.verified, "{verification}");
    let note = format!("{}: 1 torn line(s) (line 9)", clean.display());
    assert!(verification.notes.iter().any(|n| n.starts_with(&note)), "{verification}");

    // The same file twice is a usage error, not every receipt inserted.
    let mut verifier = Verifier::new(Options::default());
    let twice = read(&Source::Files(vec![clean.clone(), clean.clone()]), &mut verifier, |_, _| Ok(()));
    assert!(twice.unwrap_err().to_string().contains("given twice"));
    for path in [clean, tampered] {
        std::fs::remove_file(path).ok();
    }
}

#[test]
fn an_access_report_holds_the_persons_receipts_of_every_file_in_time_order() {
    // Three replicas' files, each its own stream; customer/7's receipts are spread over them.
    let mut expected = Vec::new();
    let mut paths = Vec::new();
    for (replica, id) in ["r-a", "r-b", "r-c"].iter().enumerate() {
        let mut head = Head::new((*id).into());
        let mut lines = Vec::new();
        for n in 0..12 {
            let time_order = n * 3 + replica; // interleaved in time across the files
            let subject = match n % 4 {
                0 => Some("customer/7"),
                1 => None, // an event without a subject: matched by its dataref
                _ => Some("customer/8"),
            };
            let mut receipt = receipt(time_order, subject);
            if subject.is_none() {
                receipt.dataref = if n % 8 == 1 { "customers/7" } else { "customers/8" };
            }
            let link = head.next();
            let line = chain::linked(&receipt, &link).unwrap();
            head.advance(&link, &line);
            if subject == Some("customer/7") || receipt.dataref == "customers/7" && subject.is_none() {
                expected.push((time_order, serde_json::to_value(&receipt).unwrap()));
            }
            lines.push(line);
        }
        paths.push(file_of(&lines));
    }
    expected.sort_by_key(|(t, _)| *t);
    let query = Query { subjects: vec!["customer/7".into()], datarefs: vec!["customers/7".into()] };
    let mut verifier = Verifier::new(Options::default());
    let mut collector = Collector::new(query, 1000);
    read(&Source::Files(paths.clone()), &mut verifier, |at, parsed| collector.add(at, parsed)).unwrap();
    let report = collector.finish(verifier.finish(&[]));
    assert!(report.verified);
    let got: Vec<serde_json::Value> =
        report.receipts.iter().map(|r| serde_json::to_value(&r.receipt).unwrap()).collect();
    let expected: Vec<serde_json::Value> = expected.into_iter().map(|(_, r)| r).collect();
    assert_eq!(got, expected);
    assert!(report.receipts.iter().all(|r| r.check == "verified"));
    assert_eq!(report.streams.len(), 3);
    let text = report.to_string();
    assert!(text.contains("verification: every chain read is intact"), "{text}");
    assert!(!text.contains("customer/8") && !text.contains("customers/8"), "{text}");
    for path in paths {
        std::fs::remove_file(path).ok();
    }
}

#[test]
fn an_access_report_over_a_tampered_source_is_not_verified_and_marks_the_receipt() {
    let (mut lines, _) = stream("s-1", 6);
    lines[1] =
        String::from_utf8(lines[1].clone()).unwrap().replace("released", "consent_denied").into_bytes();
    let path = file_of(&lines);
    let query = Query { subjects: vec!["customer/42".into()], datarefs: vec![] };
    let mut verifier = Verifier::new(Options::default());
    let mut collector = Collector::new(query, 1000);
    read(&Source::Files(vec![path.clone()]), &mut verifier, |at, parsed| collector.add(at, parsed)).unwrap();
    let report = collector.finish(verifier.finish(&[]));
    assert!(!report.verified);
    let checks: Vec<&str> = report.receipts.iter().map(|r| r.check).collect();
    assert_eq!(
        checks,
        vec![
            "stream-not-verified",
            "violation",
            "stream-not-verified",
            "stream-not-verified",
            "stream-not-verified",
            "stream-not-verified"
        ]
    );
    let text = report.to_string();
    assert!(text.contains("NOT VERIFIED, 1 violation(s) (1 changed)"), "{text}");
    std::fs::remove_file(path).ok();
}

#[test]
fn printed_fields_cannot_drive_the_terminal() {
    assert_eq!(printable("a\u{1b}[2Jb\nc"), "a\\u{1b}[2Jb\\nc");
    assert_eq!(printable("plain"), "plain");
}
