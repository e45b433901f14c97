#!/usr/bin/env python3
"""An OTLP/HTTP collector that takes every export and keeps nothing but a line per request.

For scripts that check span export end to end (scripts/container-smoke.sh): answers POST
/v1/traces with 200 when the body is protobuf, 400 otherwise, and prints
"<content-type> <bytes>" for each request. Standard library only. Prints its port first, then
serves until killed.

    python3 scripts/otlp_sink.py [--port 0]
"""
import argparse
import http.server
import sys


class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (the standard library's name)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        content_type = self.headers.get("Content-Type", "")
        ok = self.path == "/v1/traces" and content_type == "application/x-protobuf" and body
        print(f"{content_type} {len(body)}", flush=True)
        self.send_response(200 if ok else 400)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):  # quiet: the scripts print what matters
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Sink)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
