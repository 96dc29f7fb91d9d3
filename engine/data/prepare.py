"""The ``prepare`` stage: build a cohort or pool table, write it with its report, print the summary."""

from __future__ import annotations

import sys
from pathlib import Path

from engine.data.cohort import build_chexpert_cohort
from engine.data.cohort_report import build_report, summary_lines
from engine.data.io import check_output, write_json, write_parquet


def report_path_for(out: str | Path) -> Path:
    """``cohort_report.json`` beside the output table."""
    return Path(out).with_name("cohort_report.json")


def prepare_chexpert(
    *,
    train_csv: str | Path,
    demographics: str | Path,
    out: str | Path,
    split: str | Path | None = None,
    valid_csv: str | Path | None = None,
    fractions: tuple[float, float, float] | None = None,
    seed: int | None = None,
    allow_missing_demographics: bool = False,
    force: bool = False,
    echo: bool = True,
) -> dict:
    """Build the CheXpert cohort and write ``out`` (parquet) and ``cohort_report.json`` beside it."""
    out = check_output(out, force=force)
    check_output(report_path_for(out), force=force)
    options = {k: v for k, v in {"fractions": fractions, "seed": seed}.items() if v is not None}
    cohort, provenance = build_chexpert_cohort(
        train_csv, demographics, split=split, valid_csv=valid_csv,
        allow_missing_demographics=allow_missing_demographics, **options,
    )
    report = build_report(cohort, provenance)
    write_parquet(cohort, out)
    write_json(report, report_path_for(out))
    if echo:
        print("\n".join(summary_lines(report)))
        print(f"wrote {out} and {report_path_for(out)}")
    warn_on_mismatch(report)
    return report


def warn_on_mismatch(report: dict) -> None:
    """Loud warning when the shipped split does not give the published counts (wrong train.csv, demographics...)."""
    checks = report.get("checks") or {}
    if checks.get("ok", True):
        return
    bar = "!" * 78
    lines = [bar, "WARNING: the shipped split does not reproduce the paper's cohort counts:"]
    for key, values in checks["mismatches"].items():
        lines.append(f"  {key}: expected {values['expected']:,}, observed {values['observed']:,}")
    lines += ["  Check that train.csv is CheXpert-v1.0(-small) train.csv (223,414 rows) and that the demographics",
              "  file is the official CHEXPERT DEMO.xlsx; see the filter counts above.", bar]
    print("\n".join(lines), file=sys.stderr)
