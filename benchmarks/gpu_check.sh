#!/usr/bin/env bash
# The one prepared GPU check of the engine (device tool; see docs/performance.md "Engine"): versions, the NCCL
# world-size-1 smoke test, engine loop vs raw timm step for ViT-B (compiled with the batched GPU augmentation; eager
# with timm's PIL augmentation in 14 workers; each reports CUDA's count of host syncs), prediction throughput, BiT
# R152x2, compiled + PIL, then MAE pre-training (ViT-B, batch 256).
# Most important first: each step has its own time limit. Needs polars / timm wheels in .whl (carried).
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, timm, polars; print('torch', torch.__version__, 'timm', timm.__version__, 'polars', polars.__version__)"
step() { echo "=== $*"; timeout "${LIMIT:-100}" "$@" 2>&1 | grep -v -i warn | tail -"${TAIL:-6}"; }
VIT=(--arch vit_base_patch16_224 --batch 128 --precision bf16)
LIMIT=70 TAIL=3 step python3 benchmarks/gpu_smoke.py /tmp/smoke
TAIL=12 step python3 benchmarks/engine_bench.py "${VIT[@]}" --steps 25 --workers 4 --compile --augmentation batched
LIMIT=60 step python3 benchmarks/engine_bench.py "${VIT[@]}" --steps 20 --workers 14 --predict
LIMIT=60 step python3 benchmarks/engine_bench.py --arch resnetv2_152x2_bit --batch 32 --precision bf16 --steps 15 --workers 14
step python3 benchmarks/engine_bench.py "${VIT[@]}" --steps 25 --workers 14 --compile
LIMIT=90 TAIL=8 step python3 benchmarks/pretrain_bench.py --arch vit_base_patch16_224 --input-size 224 --batch 256 \
  --methods mae --steps 10 --epochs 1 --device cuda --precision bf16 --workers 8
echo "=== done"
