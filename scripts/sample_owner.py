#!/usr/bin/env python3
"""A sample data owner for the container smoke test and the local cluster: answers
GET <base>/customers/<n> with a profile when the bearer token matches, 401 otherwise, 404 for
anything else. Standard library only. Prints its port, then serves until killed.

    python3 scripts/sample_owner.py --token TOKEN [--port 0]
"""

import argparse
import http.server
import json
import sys


def handler_for(token):
    class Owner(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the standard library's name)
            if self.headers.get("Authorization") != f"Bearer {token}":
                return self.answer(401, {"error": "who are you?"})
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) == 2 and parts[0] == "customers" and parts[1].isdigit():
                n = int(parts[1])
                return self.answer(200, {"name": f"Ada {n}", "birthdate": "1990-05-01", "country": "DE"})
            return self.answer(404, {"error": "no such record"})

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):  # quiet: the scripts print what matters
            pass

    return Owner


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--token", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(args.token))
    print(server.server_address[1], flush=True)
    sys.stdout.close()
    server.serve_forever()


if __name__ == "__main__":
    main()
