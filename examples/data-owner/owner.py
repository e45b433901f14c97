#!/usr/bin/env python3
"""A data owner's API as keyhole asks it (docs/data-owners.md): standard library only.

keyhole sends `GET <base_url><dataref>` with who asks and why in `Keyhole-*` headers. This owner
serves customer records under /api/ and decides every request on the spot:

  401  the bearer token is not keyhole's
  403  the handler version is not one you approved for that tenant and handler
  404  no such record              410  the record was erased
  403  the customer gave no consent to that tenant for that purpose
  200  the fields that purpose needs, and nothing else

It also serves keyhole's batch endpoint (docs/data-owners.md, "Batched resolution"):
`POST /api/batch` with `{"version": 1, "references": [{"event_id", "dataref"}, ...]}` is answered
`{"version": 1, "results": [...]}`, one result per reference, in order, each decided exactly as
the same `GET` would be: `{"status": 200, "content_type": ..., "data_base64": ...}` for a release,
`{"status": 403}` and so on for a refusal. Without the token the whole batch gets 401; a request
that is not that JSON gets 400.

It logs one line per decision to stderr: who asked, why, for which event and path, and what was
decided. Never the data, the token or the query string.

When more than --max-concurrent requests are being answered at once, the next ones get
503 with `Retry-After: 1`: keyhole waits that long before asking again, and pauses the binding if
the owner keeps answering nobody (docs/data-owners.md, "Your answers").

The records, the consent and what each purpose may see are a table (your database, in a real
service): the one below, or `--table FILE`, a JSON file of the same shape:

    {"customers": {"42": {"name": "Ada Lovelace", "birthdate": "1990-04-12", ...}},
     "erased": ["43"],
     "consent": [["42", "acme", "Age statistics for product planning (contract ACME-17)"]],
     "fields": {"Age statistics for product planning (contract ACME-17)": ["birthdate", "country"]}}

    python3 owner.py --token dev --port 8080 \\
        --approve acme/age-band=sha256:cd600bbe07589a3eb1f3de31c127ff2385d692f312d95b867c7a980722b7b8a3

With --port 0 it listens on a free port and prints that port, alone, as the first line on stdout.

Then point a `[[data_source]]` at http://127.0.0.1:8080/api/ with `bearer_token` = dev (and,
to batch, `[data_source.batch] path = "batch"`).
"""

import argparse
import base64
import hmac
import http.server
import json
import re
import sys
import threading
import time
from urllib.parse import unquote

AGE_STATISTICS = "Age statistics for product planning (contract ACME-17)"
FRAUD_SCORING = "Fraud scoring (contract GLOBEX-3)"

# The records, by customer id. In a real service: your database.
CUSTOMERS = {
    "42": {"name": "Ada Lovelace", "birthdate": "1990-04-12", "country": "DE", "email": "ada@example.com"},
    "44": {"name": "Grace Hopper", "birthdate": "1986-12-09", "country": "US", "email": "grace@example.com"},
}
ERASED = {"43"}  # erased on the customer's request: 410, so keyhole records the event as `gone`

# Consent, as the customer gave it: (customer, tenant, purpose). Withdrawing it is deleting the row;
# the next request is refused, whenever the event was published.
CONSENT = {
    ("42", "acme", AGE_STATISTICS),
    ("42", "globex", FRAUD_SCORING),
}

# What each purpose may see: release the fields the purpose needs, not the whole record.
FIELDS = {
    AGE_STATISTICS: ("birthdate", "country"),
    FRAUD_SCORING: ("name", "country", "email"),
}


def load_table(path):
    """Replaces the table above with a JSON file's (see the module's help for its shape)."""
    global CUSTOMERS, ERASED, CONSENT, FIELDS
    with open(path, encoding="utf-8") as file:
        table = json.load(file)
    CUSTOMERS = {str(k): dict(v) for k, v in table.get("customers", {}).items()}
    ERASED = {str(k) for k in table.get("erased", [])}
    CONSENT = {tuple(str(part) for part in row) for row in table.get("consent", [])}
    FIELDS = {purpose: tuple(fields) for purpose, fields in table.get("fields", {}).items()}
    if any(len(row) != 3 for row in CONSENT):
        raise ValueError("every consent row is [customer, tenant, purpose]")


PATH = re.compile(r"/api/customers/([0-9]+)")
MAX_BATCH_BYTES = 1 << 20  # a batch request is a list of references: far below this
RETRY_AFTER_SECONDS = 1  # what an overloaded owner asks keyhole to wait before asking again


def requester(headers):
    """Who asks and why. keyhole percent-encodes every Keyhole-* value (controls, non-ASCII and
    `%` itself become %XX), so decode each exactly once."""
    return {
        name: unquote(headers.get(f"Keyhole-{header}", ""))
        for name, header in (
            ("tenant", "Tenant"),
            ("handler", "Handler"),
            ("purpose", "Purpose"),
            ("event_id", "Event-Id"),
            ("version", "Handler-Version"),
        )
    }


def decide(path, who, approved):
    """(status, body) for one request."""
    # The code that will receive the data: only versions approved for this tenant and handler.
    # A request without the header (a keyhole that does not send it) is not approved either.
    # Decided first, so that code you did not approve learns nothing, not even whether a record exists.
    if who["version"] not in approved.get((who["tenant"], who["handler"]), set()):
        return 403, {"error": "handler version not approved"}
    match = PATH.fullmatch(path)
    customer = match.group(1) if match else None
    if customer in ERASED:
        return 410, {"error": "erased"}
    if customer not in CUSTOMERS:
        return 404, {"error": "no such record"}
    if (customer, who["tenant"], who["purpose"]) not in CONSENT:
        return 403, {"error": "no consent for this purpose"}
    record = CUSTOMERS[customer]
    return 200, {field: record[field] for field in FIELDS.get(who["purpose"], ())}


def handler_for(token, approved, max_concurrent):
    expected = f"Bearer {token}".encode()
    # Requests being answered now. Past the limit, the answer is 503 with Retry-After rather than a
    # queue: keyhole backs off for as long as asked, and a burst never piles up in this process.
    capacity = threading.BoundedSemaphore(max_concurrent)

    class Owner(http.server.BaseHTTPRequestHandler):
        def within_capacity(answer):  # noqa: N805 (a decorator of the methods below)
            """Answers with `answer` if a slot is free (taken once the request is read, so an idle
            keep-alive connection holds none), and 503 with Retry-After otherwise."""

            def answered(self):
                if not capacity.acquire(blocking=False):
                    self.close_connection = True  # a POST's body is left unread: this connection is done
                    self.log_decision(self.path.split("?", 1)[0], requester(self.headers), 503)
                    self.send_json(503, {"error": "overloaded, ask again later"}, "application/problem+json",
                                   [("Retry-After", str(RETRY_AFTER_SECONDS)), ("Connection", "close")])
                    return
                try:
                    answer(self)
                finally:
                    capacity.release()

            return answered

        def authorised(self):
            return hmac.compare_digest(self.headers.get("Authorization", "").encode(), expected)

        @within_capacity
        def do_GET(self):  # noqa: N802 (the standard library's name)
            path = self.path.split("?", 1)[0]  # the query string may hold personal data: never logged
            who = requester(self.headers)
            if not self.authorised():
                status, body = 401, {"error": "not keyhole"}
            else:
                status, body = decide(path, who, approved)
            self.log_decision(path, who, status)
            # A refusal's body says why, and nothing of the record: problem+json (RFC 9457).
            self.send_json(status, body, "application/json" if status == 200 else "application/problem+json")

        @within_capacity
        def do_POST(self):  # noqa: N802
            path = self.path.split("?", 1)[0]
            who = requester(self.headers)
            if path != "/api/batch":
                status, body = 404, {"error": "no such endpoint"}
            elif not self.authorised():
                status, body = 401, {"error": "not keyhole"}  # the whole batch: keyhole pauses
            else:
                references = self.read_batch()
                if references is None:
                    status, body = 400, {"error": "not a version 1 batch"}
                else:
                    status, body = 200, {"version": 1, "results": [self.batch_result(r, who) for r in references]}
            if status != 200:
                self.log_decision(path, who, status)
            self.send_json(status, body, "application/json" if status == 200 else "application/problem+json")

        def read_batch(self):
            """The references of a version 1 batch request, or None."""
            try:
                length = int(self.headers.get("Content-Length", ""))
                if not 0 < length <= MAX_BATCH_BYTES:
                    return None
                request = json.loads(self.rfile.read(length))
                references = request["references"]
                if request["version"] != 1 or not all(
                    isinstance(r.get("event_id"), str) and isinstance(r.get("dataref"), str) for r in references
                ):
                    return None
                return references
            except (ValueError, TypeError, KeyError, AttributeError):
                return None

        def batch_result(self, reference, who):
            """One reference, decided exactly as `GET /api/<dataref>` with the same headers would be."""
            path = "/api/" + reference["dataref"].split("?", 1)[0]
            who = {**who, "event_id": reference["event_id"]}
            status, body = decide(path, who, approved)
            self.log_decision(path, who, status)
            if status != 200:
                return {"status": status}
            data = json.dumps(body).encode()  # the same bytes as the single answer
            return {"status": 200, "content_type": "application/json", "data_base64": base64.b64encode(data).decode()}

        def send_json(self, status, body, content_type, extra_headers=()):
            data = json.dumps(body).encode()
            self.send_response(status)
            for name, value in extra_headers:
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_decision(self, path, who, status):
            # Enough to answer "who asked for what, why, and what did we say" and to join with
            # keyhole's receipts by event id; never the released body or the token.
            entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "path": path, "status": status, **who}
            print(json.dumps(entry), file=sys.stderr, flush=True)

        def log_message(self, *args):  # the decision line above replaces the access log
            pass

    return Owner


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a connection keyhole keeps open does not hold up the exit

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client went away mid-answer (keyhole stopping, a timeout): nothing to report
        super().handle_error(request, client_address)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--token", required=True, help="the bearer token keyhole sends (its data source identity)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--approve",
        action="append",
        default=[],
        metavar="TENANT/HANDLER=sha256:HEX",
        help="a handler version you approved (repeatable)",
    )
    parser.add_argument("--table", metavar="FILE", help="records, consent and fields as JSON (see above)")
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=32,
        metavar="N",
        help="requests answered at once; beyond them 503 with Retry-After (default 32)",
    )
    args = parser.parse_args()
    if args.max_concurrent < 1:
        parser.error("--max-concurrent must be at least 1")
    if args.table:
        try:
            load_table(args.table)
        except (OSError, ValueError, TypeError, AttributeError) as error:
            parser.error(f"--table {args.table}: {error}")
    approved = {}
    for entry in args.approve:
        name, _, version = entry.partition("=")
        tenant, _, handler = name.partition("/")
        if not (tenant and handler and re.fullmatch(r"sha256:[0-9a-f]{64}", version)):
            parser.error(f"--approve {entry!r}: expected TENANT/HANDLER=sha256:<64 hex digits>")
        approved.setdefault((tenant, handler), set()).add(version)
    server = Server(("127.0.0.1", args.port), handler_for(args.token, approved, args.max_concurrent))
    port = server.server_address[1]
    if args.port == 0:
        print(port, flush=True)
    print(f"serving http://127.0.0.1:{port}/api/", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
