#!/usr/bin/env python3
"""A transactional outbox and its relay, for reference events (docs/data-owners.md).

The service changes a customer and writes the reference event to an `outbox` table in the same
database transaction: either both happen or neither does. The relay then publishes the outbox
rows in order, waits for the broker to confirm each, and only then marks them published. A relay
that crashes between the two publishes the row again, with the same event id: a duplicate that
readers drop by (source, id), never a lost event.

SQLite stands in for your database here; the pattern is the same with PostgreSQL or MySQL (there,
run several relays with `SELECT ... FOR UPDATE SKIP LOCKED`, or one relay per outbox).

    python3 relay_outbox.py --bootstrap 127.0.0.1:9092 --db /tmp/crm.sqlite

Needs confluent-kafka (pip install confluent-kafka) and publish.py beside it.
"""

import argparse
import os
import sqlite3
import sys

from confluent_kafka import KafkaException, Producer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from publish import event_problem, now, reference_event  # noqa: E402 (after the path is set)

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    id TEXT PRIMARY KEY, name TEXT, birthdate TEXT, country TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order to publish in
    topic        TEXT NOT NULL,
    record_key   TEXT NOT NULL,                      -- the entity id
    ce_id        TEXT NOT NULL UNIQUE,
    ce_source    TEXT NOT NULL,
    ce_type      TEXT NOT NULL,
    ce_subject   TEXT NOT NULL,
    ce_time      TEXT NOT NULL,
    ce_dataref   TEXT NOT NULL,                      -- where the data is; never the data
    published    INTEGER NOT NULL DEFAULT 0
);
"""


def change_customer(db, topic, customer, **fields):
    """The business change and its reference event, in one transaction."""
    with db:  # commits both statements, or rolls both back
        db.execute(
            "INSERT INTO customers (id) VALUES (?) ON CONFLICT (id) DO NOTHING",
            (customer,),
        )
        for column, value in fields.items():
            db.execute(f"UPDATE customers SET {column} = ? WHERE id = ?", (value, customer))  # noqa: S608
        event = reference_event(
            "urn:example:crm", "com.example.customer.updated", f"customers/{customer}", subject=f"customer-{customer}"
        )
        db.execute(
            "INSERT INTO outbox (topic, record_key, ce_id, ce_source, ce_type, ce_subject, ce_time, ce_dataref)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (topic, f"customer-{customer}", event["id"], event["source"], event["type"], event["subject"],
             event["time"], event["dataref"]),
        )


def relay(db, producer, batch=100):
    """Publishes the unpublished rows in order, and marks each once the broker confirmed it."""
    rows = db.execute(
        "SELECT seq, topic, record_key, ce_id, ce_source, ce_type, ce_subject, ce_time, ce_dataref"
        " FROM outbox WHERE published = 0 ORDER BY seq LIMIT ?",
        (batch,),
    ).fetchall()
    confirmed, failed = [], []
    for seq, topic, key, *values in rows:
        names = ("id", "source", "type", "subject", "time", "dataref")
        attributes = {"specversion": "1.0", **dict(zip(names, values))}
        problem = event_problem(attributes)
        if problem:  # a bug in the writer: keep the row, and say so
            print(f"outbox row {seq} would be refused by keyhole: {problem}", file=sys.stderr)
            continue

        def delivered(error, _message, seq=seq):
            (failed if error else confirmed).append((seq, error))

        headers = [(f"ce_{name}", value.encode("utf-8")) for name, value in attributes.items()]
        producer.produce(topic, key=key.encode("utf-8"), value=b"", headers=headers, on_delivery=delivered)
    producer.flush(30)
    with db:
        db.executemany("UPDATE outbox SET published = 1 WHERE seq = ?", [(seq,) for seq, _ in confirmed])
    for seq, error in failed:
        print(f"outbox row {seq} not confirmed ({error}); it is sent again on the next run", file=sys.stderr)
    return [seq for seq, _ in confirmed], len(rows) - len(confirmed)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers (host:port,...)")
    parser.add_argument("--db", default="crm.sqlite", help="the SQLite database (created if missing)")
    parser.add_argument("--topic", default="customer-references", help="the topic keyhole consumes (must exist)")
    args = parser.parse_args()

    db = sqlite3.connect(args.db)
    db.executescript(SCHEMA)
    change_customer(db, args.topic, "42", name="Ada Lovelace", birthdate="1990-04-12", country="DE")
    change_customer(db, args.topic, "42", country="FR")
    print(f"{now()}: 2 changes of customer 42 committed with their reference events", file=sys.stderr)

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "client.id": "data-owner-outbox-relay",
            "enable.idempotence": True,  # keeps the order of one key's events on retries
            "acks": "all",
        }
    )
    published, left = relay(db, producer)
    for seq in published:
        ce_id, key = db.execute("SELECT ce_id, record_key FROM outbox WHERE seq = ?", (seq,)).fetchone()
        print(f"outbox row {seq}: published {ce_id} (key {key}) to {args.topic}")
    if left:
        raise KafkaException(f"{left} outbox row(s) not confirmed")


if __name__ == "__main__":
    main()
