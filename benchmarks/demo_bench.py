"""Wall time of the whole CPU demo (`run_experiments.py run configs/demo.yaml`) from scratch, per stage.

  python benchmarks/demo_bench.py            # removes the demo's work_dir and store first, then runs the demo
  python benchmarks/demo_bench.py --keep     # time a rerun (everything up to date: the skip path)

It regenerates the shipped demo store (data/demo-engine-store) exactly as the README's command would, and prints
the time of each stage summed over its jobs (from the job manifests) next to the total; the issue's budget is
10 minutes on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="do not remove earlier outputs")
    args = parser.parse_args()
    study = yaml.safe_load(CONFIG.read_text())
    work, store = ROOT / study["work_dir"], ROOT / study["store"]
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(store, ignore_errors=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "run_experiments.py", "run", str(CONFIG)], cwd=ROOT, text=True,
                            capture_output=True)
    total = time.perf_counter() - start
    print(result.stdout.splitlines()[-1] if result.stdout else result.stderr[-2000:])
    by_stage: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for path in (work / "jobs").glob("*/manifest.json"):
        manifest = json.loads(path.read_text())
        by_stage[manifest["stage"]] += manifest["wall_s"]
        counts[manifest["stage"]] += 1
    for stage, seconds in sorted(by_stage.items(), key=lambda kv: -kv[1]):
        print(f"{stage:<10} {counts[stage]:>3} jobs {seconds:8.1f} s")
    print(f"total wall time {total:.1f} s ({total / 60:.1f} min); exit status {result.returncode}")


if __name__ == "__main__":
    main()
