#!/usr/bin/env python3
"""keyhole's alerting rules and monitoring resources: generated, covered by tests, valid.

    python3 scripts/monitoring.py generate   # writes deploy/kubernetes/monitoring/prometheusrule.yaml
    python3 scripts/monitoring.py groups     # prints that PrometheusRule's groups as a rules file
    python3 scripts/monitoring.py check [--kubernetes-version 1.34.0]

deploy/prometheus/keyhole-rules.yaml is the source: the PrometheusRule carries its groups as
they are written (comments included), under `spec:`, so the two cannot say different things.
`generate` and `groups` need only the standard library.

`check` (run by scripts/deploy-checks.sh with the deploy tools' Python, which has PyYAML,
jsonschema and kubernetes-validate) fails, naming each problem, when:

- the PrometheusRule is not what `generate` makes of the rules file, or its groups differ;
- an alert has no `severity` of warning or critical, no summary or description, or a
  runbook_url that is not docs/observability.md#<its name, lower-cased> with a `### <name>`
  heading there;
- an alert lacks a promtool test case where it fires or one where it stays silent
  (deploy/prometheus/keyhole-rules.test.yaml), or a test names an alert that does not exist;
- a manifest in deploy/kubernetes/monitoring/ does not validate against the schema of its kind:
  the prometheus-operator CRDs' schemas in scripts/crd-schemas/ (kubernetes-validate has none
  and passes such manifests unchecked), made strict as kubernetes-validate --strict makes
  Kubernetes' own (an unknown field anywhere is an error), with `metadata` checked against
  Kubernetes' ObjectMeta from kubernetes-validate's strict schemas;
- the kustomization does not list exactly the manifests beside it, or the PodMonitor does not
  select the Deployment's pods or names a port the keyhole container does not have.
"""
import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy/prometheus/keyhole-rules.yaml"
RULE_TESTS = ROOT / "deploy/prometheus/keyhole-rules.test.yaml"
MONITORING = ROOT / "deploy/kubernetes/monitoring"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DEPLOYMENT = ROOT / "deploy/kubernetes/deployment.yaml"
OBSERVABILITY = ROOT / "docs/observability.md"
SCHEMAS = ROOT / "scripts/crd-schemas"
RUNBOOK_BASE = "https://github.com/keyhole-rs/keyhole/blob/main/docs/observability.md#"
SEVERITIES = ("warning", "critical")

PROMETHEUS_RULE_HEAD = """\
# GENERATED from deploy/prometheus/keyhole-rules.yaml by `python3 scripts/monitoring.py generate`:
# edit that file, then generate this one again (scripts/deploy-checks.sh fails when they differ).
# keyhole's alerting rules for the Prometheus Operator; a Prometheus whose ruleSelector matches
# this resource's labels loads them (docs/deploy.md#alerts-and-monitoring-resources). What each
# alert means and what to do: docs/observability.md#alerts.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: keyhole
spec:
"""


def prometheus_rule_text():
    """The PrometheusRule: the rules file from its `groups:` line on, indented under `spec:`."""
    lines = RULES.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("groups:")]
    if len(starts) != 1:
        raise SystemExit(f"{RULES.relative_to(ROOT)}: expected one top-level `groups:` line, found {len(starts)}")
    body = lines[starts[0]:]
    top_level = [line for line in body[1:] if line and not line.startswith((" ", "#"))]
    if top_level:
        raise SystemExit(f"{RULES.relative_to(ROOT)}: `groups:` must be the last top-level key, found {top_level[0]!r}")
    return PROMETHEUS_RULE_HEAD + "".join(f"  {line}\n" if line else "\n" for line in body)


def generate(_args):
    PROMETHEUS_RULE.write_text(prometheus_rule_text())
    print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}")
    return 0


def groups(_args):
    """The PrometheusRule's groups as written in the file (for promtool check rules)."""
    lines = PROMETHEUS_RULE.read_text().splitlines()
    start = lines.index("spec:") + 1
    for line in lines[start:]:
        if line and not line.startswith("  "):
            break
        sys.stdout.write(line[2:] + "\n")
    return 0


# ---------------------------------------------------------------------------------------------
# check


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading."""
    anchor = heading.strip().lower()
    anchor = re.sub(r"[^\w\- ]", "", anchor)
    return anchor.replace(" ", "-")


def check_rules(yaml, problems):
    """Alerts of the rules file, after checking their labels, annotations and runbooks."""
    rules = yaml.safe_load(RULES.read_text())
    anchors = {
        github_anchor(match.group(1))
        for match in re.finditer(r"^###\s+(.+?)\s*$", OBSERVABILITY.read_text(), re.MULTILINE)
    }
    alerts = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert")
            if name is None:
                continue
            where = f"{RULES.relative_to(ROOT)}: alert {name}"
            if name in alerts:
                problems.append(f"{where}: defined twice")
            alerts.append(name)
            severity = rule.get("labels", {}).get("severity")
            if severity not in SEVERITIES:
                problems.append(f"{where}: severity {severity!r}, expected one of {', '.join(SEVERITIES)}")
            annotations = rule.get("annotations", {})
            for key in ("summary", "description", "runbook_url"):
                if not str(annotations.get(key, "")).strip():
                    problems.append(f"{where}: no {key} annotation")
            url = annotations.get("runbook_url", "")
            expected = RUNBOOK_BASE + name.lower()
            if url != expected:
                problems.append(f"{where}: runbook_url {url!r}, expected {expected!r}")
            if name.lower() not in anchors:
                problems.append(
                    f"{where}: no `### {name}` heading in {OBSERVABILITY.relative_to(ROOT)} (its runbook)"
                )
    return alerts


def check_tests(yaml, alerts, problems):
    """Every alert has a case where it fires and one where it stays silent."""
    tests = yaml.safe_load(RULE_TESTS.read_text())
    if tests.get("rule_files") != [RULES.name]:
        problems.append(f"{RULE_TESTS.relative_to(ROOT)}: rule_files must be [{RULES.name}]")
    fires, silent = set(), set()
    for group in tests.get("tests", []):
        for case in group.get("alert_rule_test", []):
            name = case.get("alertname")
            if name not in alerts:
                problems.append(f"{RULE_TESTS.relative_to(ROOT)}: a test of {name!r}, which is no alert")
                continue
            expected = case.get("exp_alerts") or []
            (fires if expected else silent).add(name)
            for alert in expected:
                if "exp_annotations" not in alert:
                    problems.append(
                        f"{RULE_TESTS.relative_to(ROOT)}: {name} at {case.get('eval_time')}: "
                        "an expected alert without exp_annotations"
                    )
    for name in alerts:
        if name not in fires:
            problems.append(f"{RULE_TESTS.relative_to(ROOT)}: no case where {name} fires")
        if name not in silent:
            problems.append(f"{RULE_TESTS.relative_to(ROOT)}: no case where {name} stays silent (exp_alerts: [])")


def strict(schema):
    """`schema` with additionalProperties: false wherever properties are listed and nothing
    else is allowed, as kubernetes-validate's --strict schemas are (and as a Kubernetes API
    server with strict field validation treats a CRD's structural schema)."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: strict(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
            out[key] = strict(value)
        else:
            out[key] = value
    if "properties" in out and "additionalProperties" not in out and not out.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        out["additionalProperties"] = False
    return out


def validator_for(schema_file, kubernetes_version):
    """A strict validator of one CRD's resources, with Kubernetes' ObjectMeta for `metadata`."""
    import jsonschema
    import kubernetes_validate
    from referencing import Registry, Resource

    definitions_path = (
        Path(kubernetes_validate.__file__).parent
        / "kubernetes-json-schema"
        / f"v{kubernetes_version}-local-strict"
        / "_definitions.json"
    )
    definitions = json.loads(definitions_path.read_text())
    schema = json.loads(schema_file.read_text())
    crd = schema.pop("x-keyhole-crd")
    schema = strict(schema)
    schema["properties"]["metadata"] = {
        "$ref": definitions["$id"] + "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    }
    schema["properties"]["apiVersion"] = {"const": f"{crd['group']}/{crd['version']}"}
    schema["properties"]["kind"] = {"const": crd["kind"]}
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))

    def list_map_keys(validator, keys, instance, _schema):
        """x-kubernetes-list-type: map: no two items with the same keys."""
        if not validator.is_type(instance, "array"):
            return
        seen = set()
        for item in instance:
            if isinstance(item, dict):
                key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)
                if key in seen:
                    yield jsonschema.ValidationError(f"two items with the same {', '.join(keys)}: {list(key)}")
                seen.add(key)

    def list_type(validator, kind, instance, _schema):
        """x-kubernetes-list-type: set: no item twice."""
        if kind == "set" and validator.is_type(instance, "array"):
            items = [json.dumps(item, sort_keys=True) for item in instance]
            if len(items) != len(set(items)):
                yield jsonschema.ValidationError("an item listed twice in a set")

    kubernetes = jsonschema.validators.extend(
        jsonschema.Draft202012Validator,
        {"x-kubernetes-list-map-keys": list_map_keys, "x-kubernetes-list-type": list_type},
    )
    return crd, kubernetes(schema, registry=registry)


def check_manifests(yaml, kubernetes_version, problems):
    """Every manifest of deploy/kubernetes/monitoring/ against its kind's strict schema."""
    validators = {}
    for schema_file in sorted(SCHEMAS.glob("*.json")):
        crd, validator = validator_for(schema_file, kubernetes_version)
        validators[(f"{crd['group']}/{crd['version']}", crd["kind"])] = (validator, schema_file)
    manifests = sorted(p for p in MONITORING.glob("*.yaml") if p.name != "kustomization.yaml")
    resources = {}
    for path in manifests:
        for document in yaml.safe_load_all(path.read_text()):
            if not document:
                continue
            where = f"{path.relative_to(ROOT)}"
            key = (document.get("apiVersion"), document.get("kind"))
            if key not in validators:
                problems.append(f"{where}: no schema for {key[1]} {key[0]} in {SCHEMAS.relative_to(ROOT)}")
                continue
            validator, schema_file = validators[key]
            errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
            for error in errors:
                at = ".".join(str(p) for p in error.absolute_path) or "(top)"
                problems.append(f"{where}: {key[1]} {at}: {error.message}")
            if not errors:
                print(f"ok   {where}: {key[1]} {document['metadata'].get('name')} valid against "
                      f"{schema_file.relative_to(ROOT)} (strict; metadata as Kubernetes {kubernetes_version})")
            resources.setdefault(key[1], []).append((path, document))

    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    listed = sorted(kustomization.get("resources", []))
    present = sorted(p.name for p in manifests)
    if listed != present:
        problems.append(
            f"{MONITORING.relative_to(ROOT)}/kustomization.yaml lists {listed}, the directory holds {present}"
        )

    deployment = yaml.safe_load(DEPLOYMENT.read_text())
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    ports = {
        port.get("name")
        for container in pod["spec"]["containers"]
        if container["name"] == "keyhole"
        for port in container.get("ports", [])
    }
    for path, monitor in resources.get("PodMonitor", []):
        where = f"{path.relative_to(ROOT)}"
        wanted = monitor["spec"].get("selector", {}).get("matchLabels", {})
        if not wanted or any(pod_labels.get(k) != v for k, v in wanted.items()):
            problems.append(f"{where}: selector {wanted} does not select the Deployment's pods ({pod_labels})")
        for endpoint in monitor["spec"].get("podMetricsEndpoints", []):
            if endpoint.get("port") not in ports:
                problems.append(f"{where}: port {endpoint.get('port')!r} is not a port of the keyhole container ({sorted(ports)})")
    if "PrometheusRule" not in resources:
        problems.append(f"{MONITORING.relative_to(ROOT)}: no PrometheusRule")
    else:
        (_, rule), = resources["PrometheusRule"]
        if rule["spec"]["groups"] != yaml.safe_load(RULES.read_text())["groups"]:
            problems.append(f"{PROMETHEUS_RULE.relative_to(ROOT)}: its groups differ from {RULES.relative_to(ROOT)}'s")


def check(args):
    import yaml

    problems = []
    if PROMETHEUS_RULE.read_text() != prometheus_rule_text():
        problems.append(
            f"{PROMETHEUS_RULE.relative_to(ROOT)} is not generated from {RULES.relative_to(ROOT)}: "
            "run `python3 scripts/monitoring.py generate`"
        )
    else:
        print(f"ok   {PROMETHEUS_RULE.relative_to(ROOT)} is generated from {RULES.relative_to(ROOT)}")
    alerts = check_rules(yaml, problems)
    check_tests(yaml, alerts, problems)
    if not problems:
        print(f"ok   {len(alerts)} alerts, each with a severity, annotations, a runbook and tests: {', '.join(alerts)}")
    check_manifests(yaml, args.kubernetes_version, problems)
    for problem in problems:
        print(f"FAIL {problem}")
    return 1 if problems else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("generate").set_defaults(run=generate)
    commands.add_parser("groups").set_defaults(run=groups)
    checking = commands.add_parser("check")
    checking.add_argument("--kubernetes-version", default="1.34.0")
    checking.set_defaults(run=check)
    args = parser.parse_args()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
