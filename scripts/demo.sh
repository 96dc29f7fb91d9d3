#!/usr/bin/env bash
# Fresh machine -> app requirements in .venv -> the synthetic demo results store (written once, ~10 s) -> the
# dashboard on http://127.0.0.1:8501. Extra arguments go to `streamlit run` (e.g. --server.port 8600).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh app
.venv/bin/python -m dashboard.demo_store --out demo/store
export FMFAIR_STORE="${FMFAIR_STORE:-demo/store}"
exec .venv/bin/python -m streamlit run dashboard/app.py "$@"
