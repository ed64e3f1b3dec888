#!/usr/bin/env bash
# Installs everything Outpost needs on a fresh Debian/Ubuntu machine; safe to run again.
#   - a virtualenv in .venv with Outpost and its dev tools
#   - Mosquitto 2.x (apt, when root), FerretDB v1.24.2 and versitygw v1.7.0 (Go >= 1.25)
#   - Prometheus 2.x with promtool (apt), kustomize v5 (Go) unless kubectl is there
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin:${HOME}/go/bin:/usr/sbin"

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "error: Python >= 3.11 is required (found $(python3 --version 2>&1))" >&2; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
# uv (a PyPI package) installs the same versions as pip, in seconds instead of a minute
# (measured: 7 s against 64 s with warm caches, 13 s with none); pip if uv cannot be had.
if .venv/bin/python -m pip install -q uv; then
  .venv/bin/python -m uv pip install -q --python .venv/bin/python -e ".[dev]"
else
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
fi
.venv/bin/outpost dev install

# deploy/k8s is rendered in CI with `kubectl kustomize`, or the standalone kustomize.
if ! command -v kubectl >/dev/null && ! command -v kustomize >/dev/null; then
  go install sigs.k8s.io/kustomize/kustomize/v5@v5.7.1
fi
