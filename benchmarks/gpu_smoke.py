"""GPU smoke test of the engine: a tiny synthetic cohort fine-tuned under torchrun (NCCL, world size 1, bf16),
predicted into a results store, and the store's run checked; prints PASS or raises.

  python benchmarks/gpu_smoke.py OUT_DIR
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from engine_fixtures import build_tiny_cohort, tiny_config  # noqa: E402

from engine.config import to_dict  # noqa: E402


def main(out: Path) -> None:
    paths = build_tiny_cohort(out / "cohort")
    config = tiny_config(paths, out, run_id="gpu-smoke", train={"precision": "bf16", "epochs": 2},
                         data={"workers": 2})
    path = out / "smoke.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    for stage in ("finetune", "predict"):
        subprocess.run([*torchrun, str(ROOT / "run_experiments.py"), stage, str(path)], check=True, cwd=ROOT)
    run = Path(config.store) / "runs" / config.run_id
    frame = pl.read_parquet(run / "predictions.parquet")
    info = json.loads((run / "run.json").read_text())
    assert frame.height == (24 + 64) * 14 and frame["y_score"].is_between(0, 1).all()
    history = [json.loads(x) for x in (Path(config.out_dir) / "log.jsonl").read_text().splitlines()]
    print(json.dumps({"history": [{k: h[k] for k in ("epoch", "train_loss", "val_loss")} for h in history],
                      "selected": info["extra"]["selected"] if "extra" in info else info.get("selected")}))
    print("PASS: NCCL world-size-1 fine-tune + predict on", __import__("torch").cuda.get_device_name(0))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
