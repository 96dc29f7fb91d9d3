"""``prepare nih`` / ``prepare mimic`` / ``prepare pool``: pre-training pool tables with their reports."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from engine.data.io import check_output, read_table, write_json, write_parquet
from engine.data.mimic import read_mimic
from engine.data.nih import read_nih
from engine.data.pools import build_pool, exclude_eval_patients, pool_report_path, read_chexpert_pool, write_pool


def _write_source(table: pl.DataFrame, report: dict, out: str | Path, force: bool) -> Path:
    out = check_output(out, force=force)
    check_output(pool_report_path(out), force=force)
    write_parquet(table, out)
    write_json(report, pool_report_path(out))
    print(f"{report.get('images', table.height):,} images -> {out} (report {pool_report_path(out).name})")
    return out


def prepare_nih(*, data_entry: Path, out: Path, image_subdir: str = "images", train_val_list: Path | None = None,
                test_list: Path | None = None, force: bool = False) -> Path:
    """NIH ChestX-ray14 image table (``Data_Entry_2017*.csv``) for pre-training pools."""
    table, report = read_nih(data_entry, image_subdir=image_subdir, train_val_list=train_val_list,
                             test_list=test_list)
    return _write_source(table, report, out, force)


def prepare_mimic(*, metadata: Path, chexpert_labels: Path, out: Path, split: Path | None = None,
                  patients: Path | None = None, admissions: Path | None = None, force: bool = False) -> Path:
    """MIMIC-CXR-JPG image table (metadata + CheXpert labels, optional split and MIMIC-IV demographics)."""
    table, report = read_mimic(metadata, chexpert_labels, split, patients=patients, admissions=admissions)
    return _write_source(table, report, out, force)


def parse_keep_splits(items: Sequence[str]) -> dict[str, list[str]]:
    """``["nih=train_val", "mimic=train,validate"]`` -> ``{"nih": ["train_val"], "mimic": ["train", "validate"]}``."""
    keep: dict[str, list[str]] = {}
    for item in items:
        dataset, _, splits = item.partition("=")
        if not dataset or not splits:
            raise ValueError(f"--keep-split expects DATASET=SPLIT[,SPLIT], got {item!r}")
        keep.setdefault(dataset, []).extend(s for s in splits.split(",") if s)
    return keep


def prepare_pool(*, sources: Sequence[Path], out: Path, chexpert_train_csv: Path | None = None,
                 chexpert_demographics: Path | None = None, fraction: float = 1.0, fraction_unit: str = "images",
                 seed: int = 0, include_laterals: bool = False, keep_splits: Sequence[str] = (),
                 cohort: Path | None = None, exclude_eval: bool = False, force: bool = False) -> Path:
    """Union pool sources (tables from ``prepare nih`` / ``prepare mimic`` and CheXpert train.csv) into a pool."""
    if exclude_eval and cohort is None:
        raise ValueError("--exclude-eval-patients needs --cohort (whose validate/test patients to exclude)")
    check_output(out, force=force)
    tables, source_reports = [], {}
    for path in sources:
        tables.append(read_table(path, what="pool source table"))
        source_reports[str(path)] = "table from prepare nih/mimic"
    if chexpert_train_csv is not None:
        table, report = read_chexpert_pool(chexpert_train_csv, chexpert_demographics)
        tables.append(table)
        source_reports[str(chexpert_train_csv)] = report
    if not tables:
        raise ValueError("a pool needs at least one source (--source TABLE or --chexpert-train-csv)")
    eval_patients = exclude_eval_patients(cohort) if cohort is not None else None
    pool, report = build_pool(tables, fraction=fraction, fraction_unit=fraction_unit, seed=seed,
                              frontal_only=not include_laterals, eval_patients=eval_patients,
                              exclude_patients=eval_patients if exclude_eval else None,
                              keep_splits=parse_keep_splits(keep_splits))
    report = {"sources": source_reports, **report}
    out_path, report_path = write_pool(pool, report, out, force=force)
    print(f"pool: {pool.height:,} images of {pool['patient_id'].n_unique():,} patients -> {out_path}")
    return out_path
