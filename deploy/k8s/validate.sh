#!/usr/bin/env bash
# Validates the Kubernetes manifests offline against the API schemas of several Kubernetes
# versions, strictly (unknown fields are errors), with the `kubernetes-validate` package from PyPI
# installed into a virtualenv under target/. No cluster is needed (or used).
#
#   deploy/k8s/validate.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/k8s-validate
if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'kubernetes-validate>=1.30'
fi
for version in 1.28.0 1.30.0 1.37.0; do
    "$venv/bin/kubernetes-validate" --strict --kubernetes-version "$version" deploy/k8s/*.yaml
done
