#!/usr/bin/env python3
"""A data owner's API as keyhole asks it (docs/data-owners.md): standard library only.

keyhole sends `GET <base_url><dataref>` with who asks and why in `Keyhole-*` headers. This owner
serves customer records under /api/ and decides every request on the spot:

  401  the bearer token is not keyhole's
  403  the handler version is not one you approved for that tenant and handler
  404  no such record              410  the record was erased
  403  the customer gave no consent to that tenant for that purpose
  200  the fields that purpose needs, and nothing else

It logs one line per request to stderr: who asked, why, for which event and path, and what was
decided. Never the data, the token or the query string.

    python3 owner.py --token dev --port 8080 \\
        --approve acme/age-band=sha256:cd600bbe07589a3eb1f3de31c127ff2385d692f312d95b867c7a980722b7b8a3

Then point a `[[data_source]]` at http://127.0.0.1:8080/api/ with `bearer_token` = dev.
"""

import argparse
import hmac
import http.server
import json
import re
import sys
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

PATH = re.compile(r"/api/customers/([0-9]+)")


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


def handler_for(token, approved):
    expected = f"Bearer {token}".encode()

    class Owner(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the standard library's name)
            path = self.path.split("?", 1)[0]  # the query string may hold personal data: never logged
            who = requester(self.headers)
            if not hmac.compare_digest(self.headers.get("Authorization", "").encode(), expected):
                status, body = 401, {"error": "not keyhole"}
            else:
                status, body = decide(path, who, approved)
            self.log_decision(path, who, status)
            data = json.dumps(body).encode()
            self.send_response(status)
            # A refusal's body says why, and nothing of the record: problem+json (RFC 9457).
            self.send_header("Content-Type", "application/json" if status == 200 else "application/problem+json")
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
    args = parser.parse_args()
    approved = {}
    for entry in args.approve:
        name, _, version = entry.partition("=")
        tenant, _, handler = name.partition("/")
        if not (tenant and handler and re.fullmatch(r"sha256:[0-9a-f]{64}", version)):
            parser.error(f"--approve {entry!r}: expected TENANT/HANDLER=sha256:<64 hex digits>")
        approved.setdefault((tenant, handler), set()).add(version)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(args.token, approved))
    print(f"serving http://127.0.0.1:{server.server_address[1]}/api/", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
