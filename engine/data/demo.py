"""The demo of the cohort layer: synthetic CheXpert-format data -> prepare -> subsets -> cache, end to end.

``python -m engine.data.demo [--out demo] [--patients 1500] [--seed 0] [--size 64]``. Everything it writes is
synthetic (marked so in ``synthetic.json``) and lives under ``--out``; rerunning rebuilds it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl

from engine.data.cache_stage import cache_images
from engine.data.prepare import prepare_chexpert
from engine.data.subsets import build_subsets
from engine.data.synth import write_synthetic_chexpert


def run_demo(out: Path, *, patients: int = 1500, seed: int = 0, size: int = 64, workers: int | None = None,
             progress: bool = True) -> dict[str, Path]:
    """Build the whole demo under ``out``; return the paths of what it wrote."""
    out = Path(out)
    print(f"== synth: {patients} synthetic patients in the CheXpert-v1.0-small format (seed {seed})")
    synth = write_synthetic_chexpert(out / "synthetic-chexpert", n_patients=patients, seed=seed, force=True)
    cohort = out / "cohort" / "cohort.parquet"
    print("== prepare chexpert (split file written by synth, in the upstream format)")
    prepare_chexpert(train_csv=synth["train_csv"], valid_csv=synth["valid_csv"], demographics=synth["demographics"],
                     split=synth["split"], out=cohort, force=True)
    print("== subsets: per-pathology resampled test sets, Glocker's set, balanced sets")
    summary = build_subsets(cohort, seed=42, force=True)
    for entry in summary["sets"]:
        if entry.get("pathology") in (None, "Edema"):
            print(f"  {entry['set']:<18} {str(entry.get('pathology') or ''):<6} {entry['n_rows']:>6,} images, "
                  f"weight {entry['total_weight']:>7,}, by race {json.dumps(entry['by_race'])}")
    print(f"== cache: {size} x {size} uint8")
    cache_dir = out / f"cache-{size}"
    cache_images(table=cohort, image_root=synth["image_root"], out_dir=cache_dir, size=size, workers=workers,
                 force=True, progress=progress)
    subsets = pl.read_parquet(cohort.with_name("subsets.parquet"))
    print(f"done: {out} (cohort {pl.read_parquet(cohort).height:,} images, {subsets['set'].n_unique()} named sets)")
    return {"synthetic": synth["image_root"].parent, "cohort": cohort,
            "subsets": cohort.with_name("subsets.parquet"), "cache": cache_dir}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo"))
    parser.add_argument("--patients", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="cache size (the synthetic images are 112 x 96)")
    args = parser.parse_args(argv)
    run_demo(args.out, patients=args.patients, seed=args.seed, size=args.size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
