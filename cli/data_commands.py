"""Subcommands of the cohort layer: synth, prepare (chexpert / nih / mimic / pool), subsets, cache."""

from __future__ import annotations

import argparse
from pathlib import Path


def _fractions(text: str) -> tuple[float, float, float]:
    """Parse 'train,validate,test' fractions such as 0.6,0.1,0.3."""
    parts = tuple(float(x) for x in text.split(","))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("give three comma-separated fractions: train,validate,test")
    return parts  # type: ignore[return-value]

def cmd_synth(args: argparse.Namespace) -> None:
    from engine.data import synth, synth_nih

    if args.predictions:
        from engine.metrics.synth_predictions import write_synthetic_store

        summary = write_synthetic_store(args.out, n_images=args.images or 38_240, seed=args.seed, force=args.force)
        print(f"synthetic results store -> {args.out}: {len(summary['runs'])} runs (marked synthetic in store.json)")
        return
    if args.dataset is None:
        raise SystemExit("synth: name a dataset (chexpert, nih, weights) or pass --predictions")
    if args.dataset == "weights":
        from engine.models.demo_weights import write_demo_weights

        for name, path in write_demo_weights(args.out, seed=args.seed).items():
            print(f"{name:<14} {path}")
        return
    if args.dataset == "chexpert":
        paths = synth.write_synthetic_chexpert(args.out, n_patients=args.patients, seed=args.seed, force=args.force)
    else:
        paths = synth_nih.write_synthetic_nih(args.out, n_images=args.images or 500, seed=args.seed, force=args.force)
    for name, path in paths.items():
        print(f"{name:<14} {path}")

def cmd_prepare_chexpert(args: argparse.Namespace) -> None:
    from engine.data.prepare import prepare_chexpert

    prepare_chexpert(
        train_csv=args.train_csv, demographics=args.demographics, out=args.out, split=args.split,
        valid_csv=args.valid_csv, fractions=args.split_fractions, seed=args.split_seed,
        allow_missing_demographics=args.allow_missing_demographics, force=args.force,
    )

def cmd_prepare_nih(args: argparse.Namespace) -> None:
    from engine.data.prepare_pool import prepare_nih

    prepare_nih(data_entry=args.data_entry, out=args.out, image_subdir=args.image_subdir,
                train_val_list=args.train_val_list, test_list=args.test_list, force=args.force)

def cmd_prepare_mimic(args: argparse.Namespace) -> None:
    from engine.data.prepare_pool import prepare_mimic

    prepare_mimic(metadata=args.metadata, chexpert_labels=args.chexpert_labels, out=args.out, split=args.split,
                  patients=args.patients, admissions=args.admissions, force=args.force)

def cmd_prepare_pool(args: argparse.Namespace) -> None:
    from engine.data.prepare_pool import prepare_pool

    prepare_pool(sources=args.source, out=args.out, chexpert_train_csv=args.chexpert_train_csv,
                 chexpert_demographics=args.chexpert_demographics, fraction=args.fraction,
                 fraction_unit=args.fraction_unit, seed=args.seed, include_laterals=args.include_laterals,
                 keep_splits=args.keep_split, cohort=args.cohort, exclude_eval=args.exclude_eval_patients,
                 force=args.force)

def cmd_subsets(args: argparse.Namespace) -> None:
    from engine.data.subsets import build_subsets

    build_subsets(args.cohort, args.out, seed=args.seed, sample_size_factor=args.sample_size_factor,
                  evaluation_policy=args.evaluation_policy, force=args.force)

def cmd_cache(args: argparse.Namespace) -> None:
    from engine.data.cache_stage import cache_images

    cache_images(table=args.table, image_root=args.image_root, out_dir=args.out, size=args.size,
                 workers=args.workers, skip_bad=args.skip_bad, force=args.force, progress=not args.no_progress,
                 dataset=args.dataset)

def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write synthetic data in the real file formats, or a synthetic results store")
    p.add_argument("dataset", nargs="?", choices=["chexpert", "nih", "weights"],
                   help="weights: stand-in BiT .npz files for the CPU demo's ResNet slots")
    p.add_argument("--predictions", action="store_true",
                   help="write a synthetic results store: the paper's model matrix with planted effects")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--patients", type=int, default=1500, help="CheXpert: number of patients")
    p.add_argument("--images", type=int, help="NIH: number of images (500); --predictions: cohort images (38,240)")
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
    add_prepare_pools(datasets)

def add_prepare_pools(datasets: argparse._SubParsersAction) -> None:
    n = datasets.add_parser("nih", help="NIH ChestX-ray14 image table for pre-training pools")
    n.add_argument("--data-entry", type=Path, required=True, help="Data_Entry_2017[_v2020].csv[.gz]")
    n.add_argument("--image-subdir", default="images", help="folder of the PNGs under the dataset root")
    n.add_argument("--train-val-list", type=Path, help="train_val_list.txt (or Medical MAE's train_official.txt)")
    n.add_argument("--test-list", type=Path, help="test_list.txt")
    m = datasets.add_parser("mimic", help="MIMIC-CXR-JPG image table for pre-training pools")
    m.add_argument("--metadata", type=Path, required=True, help="mimic-cxr-2.0.0-metadata.csv[.gz]")
    m.add_argument("--chexpert-labels", type=Path, required=True, help="mimic-cxr-2.0.0-chexpert.csv[.gz]")
    m.add_argument("--split", type=Path, help="mimic-cxr-2.0.0-split.csv[.gz] (official split)")
    m.add_argument("--patients", type=Path, help="MIMIC-IV hosp/patients.csv[.gz] (sex, age)")
    m.add_argument("--admissions", type=Path, help="MIMIC-IV hosp/admissions.csv[.gz] (race)")
    p = datasets.add_parser("pool", help="union of datasets into a pre-training pool (pool.parquet + report)")
    p.add_argument("--source", type=Path, action="append", default=[], help="table from prepare nih/mimic")
    p.add_argument("--chexpert-train-csv", type=Path, help="add CheXpert train.csv (all rows) as a source")
    p.add_argument("--chexpert-demographics", type=Path, help="race for the CheXpert source (optional)")
    p.add_argument("--fraction", type=float, default=1.0, help="seeded fraction kept per dataset (0, 1]")
    p.add_argument("--fraction-unit", choices=["images", "patients"], default="images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--include-laterals", action="store_true", help="keep lateral views (default: frontal only)")
    p.add_argument("--keep-split", action="append", default=[], metavar="DATASET=SPLIT[,SPLIT]",
                   help="keep only these values of a dataset's own split column, e.g. nih=train_val")
    p.add_argument("--cohort", type=Path, help="fine-tuning cohort: its validate/test patients are counted")
    p.add_argument("--exclude-eval-patients", action="store_true",
                   help="remove the cohort's validate/test patients from the pool (default: kept, as the paper)")
    for parser, func in ((n, cmd_prepare_nih), (m, cmd_prepare_mimic), (p, cmd_prepare_pool)):
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
        parser.set_defaults(func=func)

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
    p.add_argument("--out", type=Path, required=True, help="cache directory (one per size, e.g. cache-256, cache-448)")
    p.add_argument("--size", type=int, default=256, help="short side resized to SIZE, centre crop SIZE x SIZE")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    p.add_argument("--skip-bad", action="store_true", help="continue past missing/corrupt images and flag them "
                                                            "in the cohort (column excluded_reason)")
    p.add_argument("--force", action="store_true", help="discard an existing cache in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
    p.add_argument("--dataset", help="pool tables: cache only this dataset's rows (ids relative to its image root)")
    p.set_defaults(func=cmd_cache)
