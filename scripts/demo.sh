#!/usr/bin/env bash
# Fresh machine -> app requirements in .venv -> the dashboard on http://127.0.0.1:8501 on the shipped output of
# `run_experiments.py run configs/demo.yaml` (data/demo-engine-store). Also writes demo/store, the synthetic store
# of the paper's full-size matrix (~10 s). Extra arguments go to `streamlit run` (e.g. --server.port 8600).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh app
.venv/bin/python -m dashboard.demo_store --out demo/store
export FMFAIR_STORE="${FMFAIR_STORE:-data/demo-engine-store}"
exec .venv/bin/python -m streamlit run dashboard/app.py "$@"
