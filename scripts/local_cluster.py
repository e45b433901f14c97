#!/usr/bin/env python3
"""A three-replica keyhole cluster on this machine (run through scripts/local-cluster.sh).

Starts tansu, a sample data owner and N `keyhole run` replicas sharing one configuration and a
registry in Kafka; grants a tenant, uploads and activates the echo handler through replica 1 with
`keyhole deploy`; publishes reference events until every replica has handled some; prints each
replica's share and the registry as each replica's admin API shows it. Then waits for Ctrl-C, or
stops everything with --once. Standard library only.
"""

import argparse
import hashlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

OPERATOR = "local-cluster-operator-token"
OWNER_TOKEN = "local-cluster-owner-token"
# Signs every registry record (docs/cluster.md#signed-records); the same on every replica.
SIGNING_KEY = "local-cluster-registry-signing-key-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, within=60):
    deadline = time.time() + within
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.2)
    sys.exit(f"local cluster: {what} did not happen within {within} s")


def parse(text):
    try:
        return json.loads(text) if text else None
    except ValueError:  # /healthz and /readyz answer text
        return text.decode(errors="replace")


def api(url, method="GET", path="/", token=None, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            return response.status, parse(text)
    except urllib.error.HTTPError as error:
        return error.code, parse(error.read())
    except (urllib.error.URLError, ConnectionError):
        return None, None


def delivered(audit):
    try:
        lines = audit.read_text().splitlines()
    except FileNotFoundError:
        return 0
    return sum(1 for line in lines if '"decision":"delivered"' in line)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keyhole", required=True, help="the keyhole binary")
    parser.add_argument("--tansu", required=True, help="the tansu binary")
    parser.add_argument("--handler", required=True, help="the component to deploy")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--once", action="store_true", help="stop after showing the cluster at work")
    parser.add_argument("--dir", help="where the replicas keep their files (default: a new temporary directory)")
    args = parser.parse_args()
    root = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="keyhole-local-cluster-"))
    root.mkdir(parents=True, exist_ok=True)
    children = []

    def stop(*_):
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=40)
            except subprocess.TimeoutExpired:
                child.kill()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        broker = f"127.0.0.1:{free_port()}"
        print(f"==> tansu on {broker} (log: {root}/tansu.log)")
        children.append(subprocess.Popen(
            [args.tansu, "broker", "--cluster-id", "keyhole-local", "--storage-engine", "memory://tansu/",
             "--listener-url", f"tcp://{broker}", "--advertised-listener-url", f"tcp://{broker}"],
            stdout=open(root / "tansu.log", "w"), stderr=subprocess.STDOUT))
        wait_for("tansu accepting connections", lambda: socket.socket().connect_ex(tuple([broker.split(":")[0], int(broker.split(":")[1])])) == 0)
        # The reference data owner (examples/data-owner/owner.py) with a table of its own: ten customers,
        # each consenting to acme's purpose, and the deployed handler's version approved.
        purpose = "local demonstration"
        table = root / "owner-table.json"
        table.write_text(json.dumps({
            "customers": {str(n): {"name": f"Ada {n}", "birthdate": "1990-05-01", "country": "DE"} for n in range(10)},
            "consent": [[str(n), "acme", purpose] for n in range(10)],
            "fields": {purpose: ["name", "birthdate", "country"]},
        }))
        version = "sha256:" + hashlib.sha256(pathlib.Path(args.handler).read_bytes()).hexdigest()
        owner_script = pathlib.Path(__file__).resolve().parent.parent / "examples/data-owner/owner.py"
        owner = subprocess.Popen([sys.executable, str(owner_script), "--token", OWNER_TOKEN, "--port", "0",
                                  "--table", str(table), "--approve", f"acme/echo={version}"],
                                 stdout=subprocess.PIPE, stderr=open(root / "owner.log", "w"), text=True)
        children.append(owner)
        owner_port = int(owner.stdout.readline())
        print(f"==> the reference data owner on 127.0.0.1:{owner_port} (customers/0 … customers/9; log: {root}/owner.log)")
        topic = "customer-references"
        for name, partitions in [(topic, 6), ("keyhole.acme.echo.dlq", 1)]:
            subprocess.run([args.tansu, "topic", "create", name, "--broker", f"tcp://{broker}",
                            "--partitions", str(partitions)], check=True, stdout=subprocess.DEVNULL)

        replicas = []
        for i in range(1, args.replicas + 1):
            directory = root / f"replica-{i}"
            directory.mkdir(exist_ok=True)
            port, monitoring_port = free_port(), free_port()
            (directory / "keyhole.toml").write_text(f'''
[kafka]
bootstrap_servers = "{broker}"
group_id = "keyhole"
instance_id = "replica-{i}"
properties = {{ "fetch.wait.max.ms" = "10" }}

[audit]
path = "{directory}/audit.jsonl"

[receipts]
path = "{directory}/receipts.jsonl"

[admin]
listen = "127.0.0.1:{port}"
monitoring_listen = "127.0.0.1:{monitoring_port}"
operator_token = {{ value = "{OPERATOR}" }}
state_dir = "{directory}/state"

[registry]
store = "kafka"
create_topics = true
replication_factor = 1
signing_keys = [{{ id = "local", secret = {{ value = "{SIGNING_KEY}" }} }}]

[[data_source]]
name = "owner"
base_url = "http://127.0.0.1:{owner_port}/api/"
identity = {{ bearer_token = {{ value = "{OWNER_TOKEN}" }} }}
''')
            log = open(directory / "keyhole.log", "w")
            child = subprocess.Popen([args.keyhole, "run", "--config", str(directory / "keyhole.toml")],
                                     stdout=subprocess.DEVNULL, stderr=log)
            children.append(child)
            url = f"http://127.0.0.1:{port}"
            replicas.append((i, url, directory))
            print(f"==> replica {i}: {url} (its files: {directory})")
            probes = f"http://127.0.0.1:{monitoring_port}"
            wait_for(f"replica {i} answering", lambda: api(probes, path="/healthz")[0] == 200)

        first = replicas[0][1]
        grant = {"topics": [topic], "data_sources": ["owner"], "purposes": [purpose]}
        api(first, "PUT", "/v1/tenants/acme", OPERATOR, grant)
        status, issued = api(first, "POST", "/v1/tenants/acme/tokens", OPERATOR)
        token = issued["token"]
        spec = {"topics": [topic], "data_source": "owner", "purpose": purpose}
        api(first, "PUT", "/v1/tenants/acme/handlers/echo", token, spec)
        print(f"==> tenant acme granted {topic}; `keyhole deploy` through replica 1:")
        subprocess.run([args.keyhole, "deploy", args.handler, "--admin-url", first, "--tenant", "acme",
                        "--handler", "echo"], check=True, env={**os.environ, "KEYHOLE_TOKEN": token})
        for i, url, _ in replicas:
            wait_for(f"the handler running on replica {i}",
                     lambda: (api(url, path="/v1/tenants/acme/handlers/echo", token=token)[1] or {}).get("state") == "running")

        print("==> publishing reference events until every replica has handled some")
        published = 0
        deadline = time.time() + 120
        while True:
            for _ in range(30):
                subprocess.run([args.keyhole, "publish", "--bootstrap-servers", broker, "--topic", topic,
                                "--dataref", f"customers/{published % 10}", "--key", f"k{published}"],
                               check=True, stdout=subprocess.DEVNULL)
                published += 1
            time.sleep(2)
            shares = [delivered(directory / "audit.jsonl") for _, _, directory in replicas]
            if all(shares) and sum(shares) >= published:
                break
            if time.time() > deadline:
                sys.exit(f"local cluster: shares {shares} of {published} events after 120 s")
        for (i, _, _), share in zip(replicas, shares):
            print(f"    replica {i} handled {share} of {published} events")
        views = []
        for i, url, _ in replicas:
            _, view = api(url, path="/v1/tenants/acme/handlers/echo", token=token)
            views.append({k: view[k] for k in ("spec", "active", "versions")})
            print(f"    replica {i} shows acme/echo active {view['active']} ({view['state']})")
        if any(view != views[0] for view in views):
            sys.exit("local cluster: the replicas show different registries")
        print("==> every replica handled its share, and every admin API shows the same registry")
        if args.once:
            return
        print(f"==> running; admin APIs: {', '.join(url for _, url, _ in replicas)}; operator token {OPERATOR}")
        print("    Ctrl-C stops everything")
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        stop()


if __name__ == "__main__":
    main()
