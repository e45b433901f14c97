#!/usr/bin/env python3
"""Publish reference events for keyhole, as a data owner does (docs/data-owners.md).

Each event is a binary-mode CloudEvent: its attributes are `ce_*` Kafka headers, its value is
empty (the personal data stays in your API), and its record key is the entity id, so that the
events of one entity are handled in order. Two events are published:

  1. an entity update: "customer 42 changed; the data is at customers/42";
  2. a request about the same customer, with `replyto`, whose reply keyhole correlates to it.

Every event is checked with the rules keyhole applies when it reads one; an event keyhole would
refuse is not sent. The producer is idempotent with acks=all, and each send is confirmed. With
--wait-reply SECONDS it then waits for the request's reply (the record whose ce_causationid is the
request's id) and prints it.

    python3 publish.py --bootstrap 127.0.0.1:9092 --create-topics --wait-reply 30

Needs confluent-kafka (pip install confluent-kafka).
"""

import argparse
import re
import sys
import time
import uuid
from datetime import datetime, timezone

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

# --- keyhole's rules for an event (runtime/src/cloudevents), checked before sending ---

MAX_DATAREF_BYTES = 2048
MAX_ID_BYTES = 1024
ATTRIBUTE_NAME = re.compile(r"[a-z0-9]+")
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def dataref_problem(reference):
    """Why keyhole would refuse this `dataref`, in keyhole's words, or None if it is fine."""
    if reference == "":
        return "empty reference"
    if len(reference.encode("utf-8")) > MAX_DATAREF_BYTES:
        return f"longer than {MAX_DATAREF_BYTES} bytes (a reference names data, it does not carry it)"
    if not reference.isascii():
        return "non-ASCII character (must be percent-encoded)"
    if any(ord(c) < 0x20 or ord(c) == 0x7F or c == " " for c in reference):
        return "control character or space"
    if "\\" in reference:
        return "backslash"
    if "#" in reference:
        return "fragment not allowed"
    if reference.startswith("//"):
        return "network-path reference (other host)"
    if reference.startswith("/"):
        return "absolute path (leaves the base path)"
    first_segment = re.split(r"[/?]", reference, maxsplit=1)[0]
    if ":" in first_segment:
        if SCHEME.fullmatch(first_segment.split(":", 1)[0]):
            return "absolute URL (references must be relative)"
        return "colon in the first path segment"
    path, has_query, query = reference.partition("?")
    if path == "":
        return "empty path"
    problem = _escapes_problem(path, in_path=True)
    if problem:
        return problem
    for segment in path.split("/"):
        # `..;x` is `..` to servlet containers, which cut `;parameters` (also `%3B`) first.
        cuts = [i for i in (segment.find(";"), segment.lower().find("%3b")) if i >= 0]
        head = segment[: min(cuts)] if cuts else segment
        if head and set(head) == {"."}:
            return "dot segment (path escapes the base path)"
    if has_query:
        return _escapes_problem(query, in_path=False)
    return None


def _escapes_problem(part, in_path):
    i = 0
    while i < len(part):
        if part[i] != "%":
            i += 1
            continue
        digits = part[i + 1 : i + 3]
        if len(digits) != 2 or not all(c in "0123456789abcdefABCDEF" for c in digits):
            return "malformed percent-escape"
        byte = int(digits, 16)
        if in_path and (chr(byte) in "./\\%" or byte < 0x20 or byte == 0x7F):
            return "percent-encoded dot or slash"
        if in_path and (byte >= 0x80 or byte == 0x20):
            return "percent-encoded non-ASCII byte, space or DEL in the path"
        i += 3
    return None


def event_problem(attributes):
    """Why keyhole would refuse an event with these attributes (name -> value), or None."""
    for name in attributes:
        if not ATTRIBUTE_NAME.fullmatch(name):
            return f"attribute name {name!r}: must be lower-case a-z and 0-9"
    if attributes.get("specversion") != "1.0":
        return "attribute `specversion` must be 1.0"
    if "data" in attributes:
        return "inline data: personal data must be referenced with `dataref`"
    for name, value in attributes.items():
        if name != "dataref" and any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
            return f"attribute `{name}` contains a control character"
    for name in ("id", "source", "type"):
        if not attributes.get(name):
            return f"required attribute `{name}` is missing or empty"
    if len(attributes["id"].encode("utf-8")) > MAX_ID_BYTES:
        return f"attribute `id` is longer than {MAX_ID_BYTES} bytes"
    for name in ("subject", "time"):
        if name in attributes and attributes[name] == "":
            return f"attribute `{name}` is empty"
    if "dataref" not in attributes:
        return "extension `dataref` is missing"
    problem = dataref_problem(attributes["dataref"])
    return f"`dataref` refused: {problem}" if problem else None


# --- building and sending a reference event ---


def now():
    """A CloudEvents `time`: RFC 3339, UTC, milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def reference_event(source, type_, dataref, subject=None, replyto=None, correlationid=None, id_=None):
    """The attributes of a reference event; optional ones are left out, never sent empty."""
    attributes = {
        "specversion": "1.0",
        "id": id_ or str(uuid.uuid4()),
        "source": source,
        "type": type_,
        "time": now(),
        "dataref": dataref,
        "subject": subject,
        "replyto": replyto,
        "correlationid": correlationid,
    }
    return {name: value for name, value in attributes.items() if value is not None}


def send(producer, topic, key, attributes, value=b""):
    """Sends one event in binary mode and waits for the broker's confirmation.

    `value` is the record's value: b"" (empty) for every ordinary event. Use None (a null value,
    a tombstone to Kafka) only for the last event of an entity on a compacted topic, when you want
    compaction to forget the entity: keyhole reads both as "no inline data".
    """
    problem = event_problem(attributes)
    if problem:
        raise ValueError(f"keyhole would refuse event {attributes.get('id')!r}: {problem}")
    headers = [(f"ce_{name}", value.encode("utf-8")) for name, value in attributes.items()]
    outcome = {}

    def delivered(error, message):
        outcome["error"], outcome["message"] = error, message

    producer.produce(topic, key=key.encode("utf-8"), value=value, headers=headers, on_delivery=delivered)
    producer.flush(30)
    if "message" not in outcome:
        raise KafkaException("no confirmation from the broker within 30 s")
    if outcome["error"] is not None:
        raise KafkaException(outcome["error"])
    message = outcome["message"]
    return message.partition(), message.offset()


def reply_reader(bootstrap, topic):
    """A consumer positioned at the current end of the reply topic: start it before you publish
    the request, so that a fast reply is not missed and older replies are not read."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"data-owner-replies-{uuid.uuid4()}",  # partitions are assigned, not subscribed
            "enable.auto.commit": False,
            "isolation.level": "read_committed",  # exactly-once handlers: replies of committed batches
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = []
    for partition in sorted(partitions):
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        ends.append(TopicPartition(topic, partition, high))
    consumer.assign(ends)
    return consumer


def wait_for_reply(consumer, request_id, timeout):
    """The first reply whose ce_causationid is the request's id, or None after `timeout` seconds.
    Replies published twice (a redelivery) share it: keep the first, drop the others."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        headers = dict(message.headers() or [])
        if headers.get("ce_causationid") == request_id.encode("utf-8"):
            return message
    return None


def create_topics(bootstrap, names, partitions):
    """Creates the topics that do not exist yet (replication factor 1: a development broker)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=10).topics
    missing = [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names if name not in existing]
    for name, future in (admin.create_topics(missing) if missing else {}).items():
        future.result()
        print(f"created topic {name} ({partitions} partitions)", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers (host:port,...)")
    parser.add_argument("--topic", default="customer-references", help="the topic keyhole consumes")
    parser.add_argument("--reply-topic", default="customer-age-bands", help="the request's `replyto`")
    parser.add_argument("--customer", default="42", help="the entity: customer id")
    parser.add_argument("--source", default="urn:example:crm", help="CloudEvents `source` of your events")
    parser.add_argument("--create-topics", action="store_true", help="create --topic and --reply-topic first")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of created topics")
    parser.add_argument(
        "--wait-reply", type=float, default=0, metavar="SECONDS", help="wait this long for the request's reply"
    )
    args = parser.parse_args()

    if args.create_topics:
        create_topics(args.bootstrap, [args.topic, args.reply_topic], args.partitions)

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "client.id": "data-owner-publish",
            "enable.idempotence": True,  # a retried send is never written twice, order is kept
            "acks": "all",  # confirmed on every in-sync replica
        }
    )
    key = f"customer-{args.customer}"  # the entity id: one customer's events stay in order

    # 1. An entity update: the customer changed; the reference names its current record.
    update = reference_event(
        args.source,
        "com.example.customer.updated",
        f"customers/{args.customer}",
        subject=key,
    )
    partition, offset = send(producer, args.topic, key, update)
    print(f"published {update['id']} (update, key {key}) to {args.topic}[{partition}]@{offset}")

    # 2. A request: the handler's reply goes to `replyto` (which the binding must allow), with
    #    ce_causationid = this event's id and ce_correlationid = its correlationid.
    request = reference_event(
        args.source,
        "com.example.customer.age-band.requested",
        f"customers/{args.customer}",
        subject=key,
        replyto=args.reply_topic,
        correlationid=f"signup-{uuid.uuid4().hex[:8]}",
    )
    replies = reply_reader(args.bootstrap, args.reply_topic) if args.wait_reply else None
    partition, offset = send(producer, args.topic, key, request)
    print(
        f"published {request['id']} (request, key {key}, replyto {args.reply_topic}, "
        f"correlationid {request['correlationid']}) to {args.topic}[{partition}]@{offset}"
    )
    if replies is not None:
        reply = wait_for_reply(replies, request["id"], args.wait_reply)
        replies.close()
        if reply is None:
            # Consent refused, record gone, a dead letter, no reply from the handler, or keyhole
            # not running: keyhole's audit says which.
            sys.exit(f"no reply to {request['id']} on {args.reply_topic} within {args.wait_reply:g} s")
        print(f"reply at {reply.topic()}[{reply.partition()}]@{reply.offset()}:")
        for name, value in reply.headers():
            print(f"  {name}: {value.decode('utf-8', 'replace')}")
        print(f"  value: {(reply.value() or b'').decode('utf-8', 'replace')}")


if __name__ == "__main__":
    main()
