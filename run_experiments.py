#!/usr/bin/env python
"""fmfair command line: one subcommand per pipeline stage (argparse only; the work happens in engine/).

  synth     write synthetic data in the real CheXpert / NIH ChestX-ray14 formats
  prepare   build a cohort (CheXpert) or a pre-training pool table (NIH, MIMIC-CXR, unions)
  subsets   per-pathology resampled test sets, Glocker's resampled test set, balanced training sets
  cache     decode and resize images once into a uint8 cache

Engine stages import torch lazily; this file and engine.data import without it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.data.errors import DataError, OutputExistsError


def _fractions(text: str) -> tuple[float, float, float]:
    """Parse 'train,validate,test' fractions such as 0.6,0.1,0.3."""
    parts = tuple(float(x) for x in text.split(","))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("give three comma-separated fractions: train,validate,test")
    return parts  # type: ignore[return-value]


def cmd_synth(args: argparse.Namespace) -> None:
    from engine.data import synth

    if args.dataset == "chexpert":
        paths = synth.write_synthetic_chexpert(args.out, n_patients=args.patients, seed=args.seed, force=args.force)
    else:
        paths = synth.write_synthetic_nih(args.out, n_images=args.images, seed=args.seed, force=args.force)
    for name, path in paths.items():
        print(f"{name:<14} {path}")


def cmd_prepare_chexpert(args: argparse.Namespace) -> None:
    from engine.data.prepare import prepare_chexpert

    prepare_chexpert(
        train_csv=args.train_csv, demographics=args.demographics, out=args.out, split=args.split,
        valid_csv=args.valid_csv, fractions=args.split_fractions, seed=args.split_seed,
        allow_missing_demographics=args.allow_missing_demographics, force=args.force,
    )


def cmd_subsets(args: argparse.Namespace) -> None:
    from engine.data.subsets import build_subsets

    build_subsets(args.cohort, args.out, seed=args.seed, sample_size_factor=args.sample_size_factor,
                  evaluation_policy=args.evaluation_policy, force=args.force)


def cmd_cache(args: argparse.Namespace) -> None:
    from engine.data.cache_cli import cache_images

    cache_images(table=args.table, image_root=args.image_root, out_dir=args.out, size=args.size,
                 workers=args.workers, skip_bad=args.skip_bad, force=args.force)


def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write synthetic data in the real file formats")
    p.add_argument("dataset", choices=["chexpert", "nih"])
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--patients", type=int, default=1500, help="CheXpert: number of patients")
    p.add_argument("--images", type=int, default=500, help="NIH: number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite an existing output directory")
    p.set_defaults(func=cmd_synth)


def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="build a cohort or a pre-training pool table (no image is opened)")
    datasets = p.add_subparsers(dest="dataset", required=True)
    c = datasets.add_parser("chexpert", help="the paper's CheXpert subset (cohort.parquet + cohort_report.json)")
    c.add_argument("--train-csv", type=Path, required=True, help="CheXpert-v1.0[-small]/train.csv")
    c.add_argument("--valid-csv", type=Path, help="official valid.csv, added as split 'official_valid'")
    c.add_argument("--demographics", type=Path, required=True, help="CHEXPERT DEMO.xlsx or a CSV with its columns")
    c.add_argument("--split", help="split file in the upstream format (default: the shipped Glocker/Gichoya "
                                    "split, data/splits/), or 'random' for a seeded patient-level split")
    c.add_argument("--split-fractions", type=_fractions, help="with --split random: train,validate,test "
                                                               "(default 0.6,0.1,0.3)")
    c.add_argument("--split-seed", type=int, help="with --split random (default 2021)")
    c.add_argument("--allow-missing-demographics", action="store_true",
                   help="exclude (and count) images of patients absent from the demographics file")
    c.add_argument("--out", type=Path, required=True, help="cohort parquet path")
    c.add_argument("--force", action="store_true", help="overwrite existing outputs")
    c.set_defaults(func=cmd_prepare_chexpert)


def add_subsets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("subsets", help="resampled test sets and balanced training sets (subsets.parquet)")
    p.add_argument("--cohort", type=Path, required=True)
    p.add_argument("--out", type=Path, help="default: subsets.parquet beside the cohort")
    p.add_argument("--seed", type=int, default=42, help="seed of every draw (upstream used 42)")
    p.add_argument("--sample-size-factor", type=int, default=3, help="resampled size = factor x test images")
    p.add_argument("--evaluation-policy", default="u-zeros", choices=["u-zeros", "u-ones", "medical-mae", "ignore"])
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_subsets)


def add_cache(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="decode + resize images once into a uint8 cache (parallel, resumable)")
    p.add_argument("--table", type=Path, required=True, help="cohort.parquet or pool.parquet (column image_id)")
    p.add_argument("--image-root", type=Path, required=True, help="folder the image_ids are relative to")
    p.add_argument("--out", type=Path, required=True, help="cache directory")
    p.add_argument("--size", type=int, default=256, help="short side resized to SIZE, centre crop SIZE x SIZE")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    p.add_argument("--skip-bad", action="store_true", help="continue past missing/corrupt images and flag them "
                                                            "in the cohort (column excluded_reason)")
    p.add_argument("--force", action="store_true", help="discard an existing cache in --out")
    p.set_defaults(func=cmd_cache)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_experiments.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_synth, add_prepare, add_subsets, add_cache):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DataError, OutputExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
