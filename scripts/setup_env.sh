#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv) from pinned requirement files.
# Usage: scripts/setup_env.sh app|all      (app = no torch: dashboard, prepare, synth, metrics, report)
set -euo pipefail
cd "$(dirname "$0")/.."
set_name=${1:-app}
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
case "$set_name" in
  app) files=(-r requirements-app.txt) ;;
  all) files=(-r requirements.txt -r requirements-test.txt) ;;
  *) echo "usage: $0 app|all" >&2; exit 2 ;;
esac
# Skip pip when the same requirement files were already installed into this venv (saves ~1 min per call).
stamp=".venv/.fmfair-$set_name-$(cat requirements*.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --disable-pip-version-check -q "${files[@]}"
  touch "$stamp"
fi
