#!/usr/bin/env bash
# Fresh machine -> everything installed -> the whole test suite. `.ci/run` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure_chromium.sh
bash scripts/setup_env.sh all
exec .venv/bin/python -m pytest "$@"
