#!/usr/bin/env bash
# Fresh machine -> app requirements in .venv -> a synthetic CheXpert-format demo cohort, built end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh app
exec .venv/bin/python -m engine.data.demo "$@"
