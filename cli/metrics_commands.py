"""Subcommands of the results store and metrics: import, report."""

from __future__ import annotations

import argparse
from pathlib import Path


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
