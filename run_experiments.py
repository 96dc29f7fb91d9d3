#!/usr/bin/env python
"""fmfair command line: one subcommand per pipeline stage (argparse only; the work happens in engine/).

  synth     write synthetic data in the real CheXpert / NIH ChestX-ray14 formats
  prepare   build a cohort (CheXpert) or a pre-training pool table (NIH, MIMIC-CXR, unions)
  subsets   per-pathology resampled test sets, Glocker's resampled test set, balanced training sets
  cache     decode and resize images once into a uint8 cache
  import    import another tool's predictions into a results store
  report    subgroup AUCs, fairness gaps and scores, thresholds, the paper's tables (CSV / LaTeX / Markdown)
  finetune  fine-tune or linear-probe one registry model from a YAML config (one process or under torchrun)
  predict   score the validation and test splits with the selected checkpoint into a results store
  pretrain  MAE or MoCo v3 self-supervised pre-training on a pool (one process or under torchrun)
  convert-remedis  REMEDIS TensorFlow SavedModel -> BiT .npz the engine loads
  run       a whole study from one config (configs/demo.yaml, configs/paper.yaml): plan, dry run, resume

Engine stages import torch lazily; this file and engine.data import without it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.config import ConfigError
from engine.data.errors import DataError, OutputExistsError
from engine.data.io import check_output
from engine.models.registry import RegistryError
from engine.models.weights_error import WeightsError


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


def cmd_import(args: argparse.Namespace) -> None:
    import json

    from engine.metrics.importer import import_predictions

    tags = dict(_key_value(t) for t in args.tag)
    run_info = json.loads(Path(args.run_info).read_text()) if args.run_info else None
    report = import_predictions(
        store=args.store, run_id=args.run_id, predictions=args.predictions, cohort=args.cohort,
        wide=bool(args.score_pattern or args.label_pattern), score_pattern=args.score_pattern,
        label_pattern=args.label_pattern, id_column=args.id_column, split_column=args.split_column or None,
        default_split=args.default_split, score_kind=args.score_kind, label_policy=args.label_policy,
        attribute_columns=_csv_list(args.attribute_columns), patient_column=args.patient_column,
        duplicates=args.duplicates, score_tolerance=args.score_tolerance, pathologies=_csv_list(args.pathologies),
        tags=tags, run_info=run_info, force=args.force,
    )
    print(json.dumps(report, indent=2, default=str))


def _csv_list(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def cmd_report(args: argparse.Namespace) -> None:
    from engine.metrics.report import write_report

    manifest = write_report(
        args.store, args.out, runs=_csv_list(args.runs), attributes=_csv_list(args.attributes) or ["sex", "race"],
        eval_set=args.eval_set, threshold=args.threshold, operating_fpr=args.operating_fpr, n_boot=args.bootstrap,
        seed=args.seed, formats=_csv_list(args.format) or ["csv", "latex"], paper=not args.no_paper,
        force=args.force,
    )
    for name, files in manifest["files"].items():
        print(f"{name:<18} {', '.join(files)}")
    for name, note in manifest["notes"].items():
        print(f"note: {name}: {note}")
    print(f"report of {len(manifest['runs'])} runs on eval set {manifest['eval_set']!r} in {manifest['seconds']} s "
          f"-> {args.out}")


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


def add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="import another tool's predictions into a results store")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--predictions", type=Path, required=True, help="CSV or parquet, long or wide format")
    p.add_argument("--cohort", type=Path, help="cohort file (default: the store's cohort.parquet)")
    p.add_argument("--score-pattern", help="wide format: score columns, e.g. 'Logit - {pathology}'")
    p.add_argument("--label-pattern", help="wide format: label columns, e.g. '{pathology}'")
    p.add_argument("--id-column", default="image_id")
    p.add_argument("--split-column", default="split", help="'' to use --default-split for every row")
    p.add_argument("--default-split", default="test")
    p.add_argument("--score-kind", choices=["probability", "logit", "score"], default="score")
    p.add_argument("--label-policy", choices=["u-zeros", "u-ones", "medical-mae", "ignore"],
                   help="convert raw CheXpert labels (1 / 0 / -1 / blank); without it labels must be 0/1/blank")
    p.add_argument("--attribute-columns", help="take the cohort from the predictions file: e.g. sex,race")
    p.add_argument("--patient-column", help="patient id column when the cohort comes from the predictions file")
    p.add_argument("--duplicates", choices=["error", "weight"], default="error",
                   help="repeated (split, image, pathology) rows: error, or collapse into one row with a weight")
    p.add_argument("--score-tolerance", type=float, default=1e-5,
                   help="--duplicates weight: repeats whose scores differ by less (relative) are merged")
    p.add_argument("--pathologies", help="comma-separated subset of pathologies to import")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--run-info", type=Path, help="JSON file with run.json fields (model, architecture, ...)")
    p.add_argument("--force", action="store_true", help="replace an existing run")
    p.set_defaults(func=cmd_import)


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="subgroup AUCs, fairness summary, thresholds and the paper's tables")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--runs", help="comma-separated run ids (default: every run; FS compares these)")
    p.add_argument("--attributes", default="sex,race", help="e.g. sex,race,age_bin,'sex x race'")
    p.add_argument("--eval-set", help="test, validate, resampled, glocker-original... (default: resampled if "
                                      "present, else test)")
    threshold = p.add_mutually_exclusive_group()
    threshold.add_argument("--threshold", type=float, help="y_score >= T is positive")
    threshold.add_argument("--operating-fpr", type=float, help="threshold at this FPR on validation (default 0.2)")
    p.add_argument("--bootstrap", type=int, default=0, help="patient bootstrap replicates for 95%% CIs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--format", default="csv,latex", help="any of csv,latex,md")
    p.add_argument("--no-paper", action="store_true", help="skip the paper's tables and figure numbers")
    p.add_argument("--force", action="store_true", help="write into a non-empty output folder")
    p.set_defaults(func=cmd_report)


def cmd_finetune(args: argparse.Namespace) -> None:
    from engine.config import load_config
    from engine.recipes import FinetuneConfig
    from engine.train.finetune import finetune

    finetune(load_config(FinetuneConfig, args.config, args.set))


def cmd_predict(args: argparse.Namespace) -> None:
    from engine.config import load_config
    from engine.recipes import FinetuneConfig
    from engine.train.predict import predict

    folder = predict(load_config(FinetuneConfig, args.config, args.set), force=args.force)
    if folder is not None:
        print(f"wrote {folder}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from engine.config import load_config
    from engine.pretrain_config import PretrainConfig
    from engine.train.pretrain import pretrain

    pretrain(load_config(PretrainConfig, args.config, args.set))


def cmd_run(args: argparse.Namespace) -> None:
    from engine.study.command import run_study

    status = run_study(args.config, overrides=args.set, dry_run=args.dry_run, force=args.force, only=args.only,
                       launcher=args.launcher, slurm_cluster=args.slurm_cluster, parallel=args.parallel)
    if status:
        raise SystemExit(status)


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="a whole study from one config: prepare -> cache -> pretrain -> finetune -> "
                                   "predict -> report (idempotent, resumable)")
    p.add_argument("config", type=Path, help="study YAML, e.g. configs/demo.yaml or configs/paper.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--dry-run", action="store_true", help="print the plan with images and GPU-hour estimates")
    p.add_argument("--force", action="store_true", help="rerun the selected jobs even when up to date")
    p.add_argument("--only", metavar="PATTERN", help="comma-separated globs of job names, e.g. 'finetune-mae-*'")
    p.add_argument("--launcher", choices=["local", "torchrun", "slurm"], default="local")
    p.add_argument("--parallel", type=int, metavar="N", help="local: run up to N independent jobs at a time "
                                                             "(each in its own process; default: the config's)")
    p.add_argument("--slurm-cluster", default=None, help=argparse.SUPPRESS)  # 'local' in tests (submitit)
    p.set_defaults(func=cmd_run)


def cmd_convert_remedis(args: argparse.Namespace) -> None:
    from engine.models.remedis import convert_remedis_dir

    summary = convert_remedis_dir(args.saved_model, check_output(args.out, force=args.force))
    print(f"wrote {args.out}: {summary}")


def add_engine_stages(sub: argparse._SubParsersAction) -> None:
    for name, func, text in (("pretrain", cmd_pretrain, "MAE or MoCo v3 pre-training on a pool (YAML config)"),
                             ("finetune", cmd_finetune, "fine-tune or linear-probe one model (YAML config)"),
                             ("predict", cmd_predict, "score validate/test with the selected checkpoint")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config", type=Path, help="YAML config (engine/pretrain_config.py or engine/recipes.py)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.blr=5e-4 (repeatable; type-checked)")
        if name == "predict":
            p.add_argument("--force", action="store_true", help="replace the run if the store has it")
        p.set_defaults(func=func)
    r = sub.add_parser("convert-remedis", help="REMEDIS TF SavedModel folder -> BiT .npz (needs tensorflow once)")
    r.add_argument("saved_model", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--force", action="store_true")
    r.set_defaults(func=cmd_convert_remedis)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_experiments.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_synth, add_prepare, add_subsets, add_cache, add_import, add_report, add_engine_stages, add_run):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DataError, OutputExistsError, FileExistsError, ConfigError, RegistryError,
            WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
