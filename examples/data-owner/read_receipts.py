#!/usr/bin/env python3
"""Read keyhole's access receipts from Kafka, as a data owner does (docs/data-owners.md).

keyhole writes one receipt per request it makes to a data owner ([receipts] sink = "kafka"): one
JSON value per record, keyed by the event's subject (else its id). A receipt says who asked
(tenant, handler and the SHA-256 of its component), why (the purpose), for which event, subject
and reference path, and what was decided. It never holds the data, a token or a query string.

This reads the topic from the beginning to its current end (or on, with --follow) and prints one
line per receipt, or the receipts themselves with --json:

    python3 read_receipts.py --bootstrap 127.0.0.1:9092 --topic keyhole.receipts --subject customer-42

Needs confluent-kafka (pip install confluent-kafka).
"""

import argparse
import json
import sys
import uuid
from collections import Counter

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition


def line(receipt):
    """One receipt as a line of text: when, who (and which code), why, about what, decided what."""
    version = receipt.get("handler_version", "")
    status = f" ({receipt['status']})" if "status" in receipt else ""
    return (
        f"{receipt.get('time')}  {receipt.get('tenant')}/{receipt.get('handler')}@{version[:19]}  "
        f"{receipt.get('decision')}{status}  subject={receipt.get('subject', '-')}  "
        f"dataref={receipt.get('dataref')}  event={receipt.get('event_id')}  attempt={receipt.get('attempt')}  "
        f"purpose={receipt.get('purpose')!r}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers (host:port,...)")
    parser.add_argument("--topic", default="keyhole.receipts", help="keyhole's receipts topic ([receipts] topic)")
    parser.add_argument("--subject", help="only the receipts of this subject (the event's `subject`)")
    parser.add_argument("--decision", help="only this decision: released, consent_denied, gone, ...")
    parser.add_argument("--follow", action="store_true", help="keep reading new receipts until Ctrl-C")
    parser.add_argument("--json", action="store_true", help="print each receipt as it is (one JSON per line)")
    parser.add_argument(
        "--committed-only",
        action="store_true",
        help="read_committed: leave out receipts of aborted exactly-once batches (the owner was asked for those too)",
    )
    args = parser.parse_args()

    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            # Partitions are assigned below, not through the group: nothing is committed.
            "group.id": f"read-receipts-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed" if args.committed_only else "read_uncommitted",
        }
    )
    metadata = consumer.list_topics(args.topic, timeout=10).topics.get(args.topic)
    if metadata is None or metadata.error is not None:
        sys.exit(f"cannot read topic {args.topic}: {metadata.error if metadata else 'no such topic'}")
    partitions = [TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in sorted(metadata.partitions)]
    consumer.assign(partitions)

    unfinished = {p.partition for p in partitions}
    decisions = Counter()
    try:
        while args.follow or unfinished:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    unfinished.discard(message.partition())
                    continue
                raise KafkaException(message.error())
            try:
                receipt = json.loads(message.value())
            except (TypeError, ValueError):
                print(f"not a receipt at {message.topic()}[{message.partition()}]@{message.offset()}", file=sys.stderr)
                continue
            if args.subject is not None and receipt.get("subject") != args.subject:
                continue
            if args.decision is not None and receipt.get("decision") != args.decision:
                continue
            decisions[receipt.get("decision")] += 1
            print(json.dumps(receipt, separators=(",", ":")) if args.json else line(receipt), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    summary = ", ".join(f"{count} {decision}" for decision, count in sorted(decisions.items())) or "none"
    print(f"receipts: {summary}", file=sys.stderr)


if __name__ == "__main__":
    main()
