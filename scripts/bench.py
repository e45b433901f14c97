#!/usr/bin/env python3
"""keyhole's end-to-end benchmark: `keyhole run` (release) on a backlog of reference events, with
the limits it is measured against taken in the same run.

Each run starts its own tansu broker and an nginx data owner (another process), then measures:

- the owner's HTTP rate at keyhole's concurrency, with wrk (the limit keyhole cannot beat: every
  event is one request);
- raw consumption of the same backlog by a plain librdkafka consumer (confluent-kafka);
- keyhole on the backlog: events/s and keyhole's CPU per event between 10% and 90% of the
  backlog (from /proc/PID/stat), peak RSS (VmHWM), and, for key-ordered scenarios, whether
  every key's events were handled in offset order (from the audit file).

Figures are printed per run and as medians, ratios first: absolute rates on a shared machine
drift, ratios against a limit measured in the same run do not. scripts/bench.sh sets everything
up and calls this; see docs/performance.md.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCENARIOS = {
    # name: events, partitions, keys, owner latency (ms), replies, check per-key order
    "instant": dict(events=50_000, partitions=4, keys=1000, latency_ms=0, replies=True),
    "instant-no-replies": dict(events=50_000, partitions=4, keys=1000, latency_ms=0, replies=False),
    "latency-5ms": dict(events=30_000, partitions=1, keys=1000, latency_ms=5, replies=True, order=True),
    # The instant scenario with the echo reply built natively in place of the Wasm handler
    # (a binary built with --features bench-native-handler): the difference is the sandbox's cost.
    "instant-native": dict(events=50_000, partitions=4, keys=1000, latency_ms=0, replies=True,
                           native=True),
    # Batched resolution (docs/data-owners.md): the owner's batch endpoint (nginx with njs)
    # answers 16 references per request; its limit is its batched capacity in references/s.
    "instant-batched": dict(events=50_000, partitions=4, keys=1000, latency_ms=0, replies=True,
                            batch=16),
    "at-most-once": dict(events=50_000, partitions=4, keys=1000, latency_ms=0, replies=True,
                         delivery="at-most-once"),
    # Span export on (docs/observability.md): to a collector that accepts every batch (the owner's
    # nginx answers /v1/traces with 200), and to one that is down (nothing listens).
    "instant-traced": dict(events=50_000, partitions=4, keys=1000, latency_ms=0, replies=True,
                           telemetry="live"),
    "instant-collector-down": dict(events=50_000, partitions=4, keys=1000, latency_ms=0, replies=True,
                                   telemetry="down"),
    "backlog-10k": dict(events=10_000, partitions=4, keys=1000, latency_ms=0, replies=True),
    "backlog-100k": dict(events=100_000, partitions=4, keys=1000, latency_ms=0, replies=True),
    "backlog-1m": dict(events=1_000_000, partitions=4, keys=1000, latency_ms=0, replies=True),
}

MAX_IN_FLIGHT = 256
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The owner's answer: a 1 KiB JSON record.
_PREFIX, _SUFFIX = '{"name":"Ada Lovelace","country":"GB","note":"', '"}'
RECORD = _PREFIX + "x" * (1024 - len(_PREFIX) - len(_SUFFIX)) + _SUFFIX


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, seconds=15):
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port}")


class Broker:
    """A tansu broker of this run alone, in memory."""

    def __init__(self, tansu, workdir):
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(os.path.join(workdir, "tansu.log"), "w")
        self.process = subprocess.Popen(
            [tansu, "broker", "--cluster-id", "bench", "--storage-engine", "memory://tansu/",
             "--listener-url", url, "--advertised-listener-url", url],
            stdout=log, stderr=log)
        wait_port(self.port, "tansu")

    def create(self, name, partitions):
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result(30)

    def stop(self):
        self.process.kill()
        self.process.wait()


BATCH_JS = """
var RESULT = {status: 200, content_type: "application/json", data_base64: DATA};
function batch(r) {
    var request = JSON.parse(r.requestText);
    var results = [];
    for (var i = 0; i < request.references.length; i++) {
        results.push(RESULT);
    }
    r.headersOut["Content-Type"] = "application/json";
    r.return(200, JSON.stringify({version: 1, results: results}));
}
export default {batch};
"""


class Owner:
    """nginx answering every reference with the 1 KiB record, at once or after `latency_ms`; with
    `batch`, also a batch endpoint (njs) answering every reference of a batch with the record."""

    def __init__(self, workdir, latency_ms, batch=False):
        self.port = free_port()
        self.dir = os.path.join(workdir, "nginx")
        os.makedirs(os.path.join(self.dir, "logs"), exist_ok=True)
        body = RECORD.replace("'", "\\'")
        if latency_ms:
            module = "load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;"
            answer = f"echo_sleep {latency_ms / 1000}; echo -n '{body}';"
        else:
            module, answer = "", f"return 200 '{body}';"
        batch_location = ""
        if batch:
            import base64
            with open(os.path.join(self.dir, "batch.js"), "w") as f:
                f.write(BATCH_JS.replace("DATA", json.dumps(base64.b64encode(RECORD.encode()).decode())))
            module += "\nload_module /usr/lib/nginx/modules/ngx_http_js_module.so;"
            batch_location = (f"js_import batch from {self.dir}/batch.js;\n"
                              "    location = /api/batch { client_body_buffer_size 1m; js_content batch.batch; }")
        conf = f"""{module}
worker_processes 1;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log error;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {self.dir}; proxy_temp_path {self.dir}; fastcgi_temp_path {self.dir};
  uwsgi_temp_path {self.dir}; scgi_temp_path {self.dir};
  server {{
    listen 127.0.0.1:{self.port} backlog=4096;
    location /api/ {{ default_type application/json; {answer} }}
    {batch_location}
    location = /status {{ stub_status; }}
    location = /v1/traces {{ return 200; }}
  }}
}}
"""
        path = os.path.join(self.dir, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.process = subprocess.Popen(["nginx", "-c", path, "-p", self.dir],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, "nginx")
        self.base_url = f"http://127.0.0.1:{self.port}/api/"
        # An OTLP/HTTP collector that accepts everything.
        self.collector_url = f"http://127.0.0.1:{self.port}"

    def http_rate(self, connections, seconds):
        """Requests/s wrk gets at `connections` concurrent connections."""
        out = subprocess.run(
            ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", self.base_url + "customers/1"],
            capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Requests/sec:"):
                return float(line.split()[1])
        sys.exit(f"cannot read wrk's output:\n{out}")

    def batch_rate(self, connections, seconds, references):
        """References/s wrk gets posting batches of `references` at `connections` connections."""
        body = json.dumps({"version": 1, "references": [
            {"event_id": f"e{i}", "dataref": f"customers/{i}"} for i in range(references)]})
        script = os.path.join(self.dir, "batch.lua")
        with open(script, "w") as f:
            f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                    'wrk.headers["Content-Type"] = "application/json"\n')
        out = subprocess.run(
            ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "-s", script, self.base_url + "batch"],
            capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Requests/sec:"):
                return float(line.split()[1]) * references
        sys.exit(f"cannot read wrk's output:\n{out}")

    def requests(self):
        """Requests nginx has answered so far (stub_status)."""
        with socket.create_connection(("127.0.0.1", self.port)) as connection:
            connection.sendall(b"GET /status HTTP/1.0\r\nHost: owner\r\n\r\n")
            answer = b""
            while chunk := connection.recv(4096):
                answer += chunk
        # "Active connections: N \nserver accepts handled requests\n A H R \n..."
        return int(answer.decode().split("\r\n\r\n", 1)[1].splitlines()[2].split()[2])

    def stop(self):
        self.process.terminate()
        self.process.wait()


def produce(bootstrap, topic, events, keys):
    """The backlog: binary-mode reference events, keyed `k<i mod keys>`, ids `e<i>`."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 2_000_000, "enable.idempotence": True,
                         "compression.type": "none"})
    for i in range(events):
        headers = [("ce_specversion", b"1.0"), ("ce_id", f"e{i}".encode()),
                   ("ce_source", b"urn:bench"), ("ce_type", b"com.example.customer.updated"),
                   ("ce_dataref", f"customers/{i % 1000}".encode())]
        while True:
            try:
                producer.produce(topic, key=f"k{i % keys}", value=b"", headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10000 == 0:
            producer.poll(0)
    remaining = producer.flush(120)
    if remaining:
        sys.exit(f"{remaining} events were not confirmed by the broker")


def raw_consume(bootstrap, topic, events):
    """Messages/s a plain librdkafka consumer reads the backlog at."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"raw-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "fetch.wait.max.ms": 1})
    consumer.subscribe([topic])
    got, first = 0, None
    deadline = time.time() + 300
    while got < events and time.time() < deadline:
        batch = consumer.consume(num_messages=10000, timeout=1.0)
        if batch and first is None:
            first = time.time()
        got += sum(1 for m in batch if m.error() is None)
    elapsed = time.time() - (first or time.time())
    consumer.close()
    return got / elapsed if elapsed > 0 else float("nan")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def keyhole_config(workdir, broker, owner, scenario, echo):
    reply = 'reply_topic = "replies"' if scenario["replies"] else ""
    delivery = f'delivery = "{scenario["delivery"]}"' if "delivery" in scenario else ""
    collector = {"live": owner.collector_url, "down": f"http://127.0.0.1:{free_port()}"}.get(scenario.get("telemetry"))
    telemetry = f'[telemetry]\notlp_endpoint = "{collector}"' if collector else ""
    batch = (f'\n[data_source.batch]\npath = "batch"\nmax_references = {scenario["batch"]}\nmax_wait_ms = 2\n'
             if scenario.get("batch") else "")
    config = f"""{telemetry}

[kafka]
bootstrap_servers = "{broker.bootstrap}"
group_id = "bench"
# tansu holds every fetch for fetch.wait.max.ms even when data is ready (docs/performance.md).
properties = {{ "fetch.wait.max.ms" = "1", "auto.commit.interval.ms" = "200" }}

[audit]
path = "audit.jsonl"

[receipts]
path = "receipts.jsonl"

[shutdown]
drain_timeout_ms = 10000

[[data_source]]
name = "owner"
base_url = "{owner.base_url}"
timeout_ms = 10000
max_concurrent_requests = {MAX_IN_FLIGHT}
{batch}
[[handler]]
name = "echo"
tenant = "bench"
component = "{echo}"
topics = ["refs"]
data_source = "owner"
purpose = "benchmark"
max_in_flight = {MAX_IN_FLIGHT}
{reply}
{delivery}
"""
    path = os.path.join(workdir, "keyhole.toml")
    with open(path, "w") as f:
        f.write(config)
    return path


class AuditProgress:
    """Counts audit lines as the file grows (a line is written before its offset is stored)."""

    def __init__(self, path):
        self.path, self.offset, self.lines = path, 0, 0

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return self.lines
        # Count complete lines only.
        end = chunk.rfind(b"\n") + 1
        self.lines += chunk.count(b"\n", 0, end)
        self.offset += end
        return self.lines


def run_keyhole(keyhole, workdir, config, events):
    log = open(os.path.join(workdir, "keyhole.log"), "w")
    env = dict(os.environ)
    env.pop("RUST_LOG", None)  # as an operator runs it: the default log level
    process = subprocess.Popen([keyhole, "run", "--config", config], cwd=workdir, stdout=log, stderr=log, env=env)
    progress = AuditProgress(os.path.join(workdir, "audit.jsonl"))
    marks = {}
    started = time.time()
    deadline = started + max(600, events / 500)
    while True:
        done = progress.poll()
        now = time.time()
        cpu = cpu_seconds(process.pid)
        for share in (0.1, 0.9):
            if share not in marks and done >= share * events:
                marks[share] = (now, done, cpu)
        if done >= events:
            break
        if process.poll() is not None:
            sys.exit(f"keyhole exited with {process.returncode}; see {workdir}/keyhole.log")
        if now > deadline:
            sys.exit(f"keyhole handled {done} of {events} events in {now - started:.0f} s")
        time.sleep(0.05)
    rss = peak_rss_mib(process.pid)
    process.send_signal(signal.SIGTERM)
    code = process.wait(60)
    (t0, n0, c0), (t1, n1, c1) = marks[0.1], marks[0.9]
    return {
        "events_per_s": (n1 - n0) / (t1 - t0),
        "cpu_us_per_event": (c1 - c0) / (n1 - n0) * 1e6,
        "peak_rss_mib": rss,
        "exit": code,
    }


def per_key_order(audit_path, keys):
    """Whether every key's events were recorded in offset order."""
    last = {}
    with open(audit_path) as f:
        for line in f:
            record = json.loads(line)
            if record["decision"] != "delivered":
                return False, f"event {record['event_id']} was {record['decision']}"
            index = int(record["event_id"][1:])
            key = index % keys
            if last.get(key, -1) >= record["offset"]:
                return False, f"key k{key}: offset {record['offset']} after {last[key]}"
            last[key] = record["offset"]
    return True, "every key in offset order"


def one_run(args, name, scenario, run):
    workdir = tempfile.mkdtemp(prefix=f"keyhole-bench-{name.split()[0]}-")
    broker = Broker(args.tansu, workdir)
    owner = Owner(workdir, scenario["latency_ms"], batch=bool(scenario.get("batch")))
    try:
        broker.create("refs", scenario["partitions"])
        broker.create("replies", scenario["partitions"])
        broker.create("bench.bench.echo.dlq", 1)
        produce(broker.bootstrap, "refs", scenario["events"], scenario["keys"])
        if scenario.get("batch"):
            # The limit: the owner's batched capacity, in references/s, at a concurrency that
            # keeps every batch of keyhole's in-flight limit busy.
            http = owner.batch_rate(MAX_IN_FLIGHT // scenario["batch"], args.wrk_seconds, scenario["batch"])
        else:
            http = owner.http_rate(MAX_IN_FLIGHT, args.wrk_seconds)
        raw = raw_consume(broker.bootstrap, "refs", scenario["events"])
        config = keyhole_config(workdir, broker, owner, scenario, args.echo)
        keyhole = scenario.get("binary") or (args.keyhole_native if scenario.get("native") else args.keyhole)
        requests_before = owner.requests()
        result = run_keyhole(keyhole, workdir, config, scenario["events"])
        # Every event is asked for once at least (retries would add): requests per event.
        result["owner_requests_per_event"] = (owner.requests() - requests_before - 1) / scenario["events"]
        result.update(http_rate=http, raw_consume=raw)
        if scenario.get("order"):
            result["order_ok"], result["order"] = per_key_order(os.path.join(workdir, "audit.jsonl"), scenario["keys"])
        print(f"  run {run}: keyhole {result['events_per_s']:,.0f} events/s "
              f"({result['events_per_s'] / http:.3f} x HTTP {http:,.0f} req/s, "
              f"{result['events_per_s'] / raw:.4f} x raw consume {raw:,.0f} msg/s), "
              f"{result['cpu_us_per_event']:.0f} us CPU/event, peak RSS {result['peak_rss_mib']:.1f} MiB, "
              f"{result['owner_requests_per_event']:.3f} owner requests/event"
              + (f", {result['order']}" if "order" in result else ""), flush=True)
        return result
    finally:
        owner.stop()
        broker.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", default=["instant", "instant-no-replies", "latency-5ms"],
                        help=f"of {', '.join(SCENARIOS)}; 'all' for every one")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--events", type=int, help="override the scenario's backlog")
    parser.add_argument("--keyhole", default=os.path.join(ROOT, "target/release/keyhole"))
    parser.add_argument("--keyhole-native", help="the binary built with --features bench-native-handler")
    parser.add_argument("--baseline", help="another keyhole binary (an earlier build): every scenario also "
                        "runs on it, interleaved run by run, reported as '<scenario> (baseline)'")
    parser.add_argument("--tansu", required=True)
    parser.add_argument("--echo", default=os.path.join(ROOT, "guest-examples/dist/echo.wasm"))
    parser.add_argument("--wrk-seconds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep each run's directory (logs, audit)")
    args = parser.parse_args()
    names = list(SCENARIOS) if args.scenarios == ["all"] else args.scenarios
    if any(SCENARIOS[name].get("native") for name in names) and not args.keyhole_native:
        sys.exit("a native scenario needs --keyhole-native (scripts/bench.sh builds it)")
    scenarios = {}
    for name in names:
        scenario = dict(SCENARIOS[name])
        if args.events:
            scenario["events"] = args.events
        scenarios[name] = scenario
        if args.baseline and not scenario.get("native"):
            scenarios[f"{name} (baseline)"] = dict(scenario, binary=args.baseline)
        print(f"{name}: {scenario['events']:,} events, {scenario['partitions']} partition(s), "
              f"{scenario['keys']} keys, owner latency {scenario['latency_ms']} ms, "
              f"replies {'on' if scenario['replies'] else 'off'}"
              + (", native echo in place of the Wasm handler" if scenario.get("native") else ""), flush=True)
    # Round-robin (run 1 of every scenario, then run 2, ...): the machine's drift over the
    # session spreads over every scenario alike, so their figures compare.
    names = list(scenarios)
    results = {name: [] for name in names}
    for run in range(args.runs):
        for name in names:
            print(f"{name}:", end="", flush=True)
            results[name].append(one_run(args, name, scenarios[name], run + 1))
    summary = []
    for name in names:
        median = {k: statistics.median(r[k] for r in results[name])
                  for k in ("events_per_s", "cpu_us_per_event", "peak_rss_mib", "http_rate", "raw_consume",
                            "owner_requests_per_event")}
        median["order"] = all(r.get("order_ok", True) for r in results[name])
        summary.append((name, scenarios[name], median))
    print()
    print(f"medians of {args.runs} run(s)")
    print("| scenario | keyhole / owner HTTP | keyhole / raw consume | CPU per event | peak RSS "
          "| keyhole | owner HTTP (batched: references/s) | raw consume | owner requests per event |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, scenario, m in summary:
        order = "" if not scenario.get("order") else (" (per-key order kept)" if m["order"] else " (ORDER BROKEN)")
        print(f"| {name}{order} | {m['events_per_s'] / m['http_rate']:.3f} | "
              f"{m['events_per_s'] / m['raw_consume']:.4f} | {m['cpu_us_per_event']:.0f} µs | "
              f"{m['peak_rss_mib']:.1f} MiB | {m['events_per_s']:,.0f} events/s | "
              f"{m['http_rate']:,.0f} req/s | {m['raw_consume']:,.0f} msg/s | "
              f"{m['owner_requests_per_event']:.3f} |")
    if any(not m["order"] for _, s, m in summary if s.get("order")):
        sys.exit("per-key order was broken")


if __name__ == "__main__":
    main()
