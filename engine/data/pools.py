"""Pre-training pools: CheXpert / NIH / MIMIC image tables united, filtered and subsampled, every removal counted.

The pool holds ids and demographics only (no labels: pre-training is self-supervised). ``image_id`` is relative to
each dataset's own image root, so the image cache needs one root per dataset. Rules and defaults:
docs/protocol.md, section "Pre-training pools".
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from engine.data.chexpert import read_chexpert_csv, read_demographics
from engine.data.cohort import race_expr
from engine.data.errors import DataError
from engine.data.filter_log import FilterLog
from engine.data.io import check_output, read_table, require_columns, write_json, write_parquet
from engine.data.schema import FRONTAL, SEXES

POOL_COLUMNS: tuple[str, ...] = ("dataset", "image_id", "patient_id", "sex", "race", "age", "view", "position")
# Written columns: source_split is the source's own split column (NIH train_val/test, MIMIC official split), or null.
POOL_OUTPUT_COLUMNS: tuple[str, ...] = (*POOL_COLUMNS, "source_split")
SAMPLING_RULE = ("per dataset: floor(fraction * n + 0.5) of the images or patients sorted by id, drawn without "
                 "replacement by numpy default_rng([seed, crc32(dataset)])")
FRACTION_UNITS: tuple[str, ...] = ("images", "patients")
EVAL_SPLITS: tuple[str, ...] = ("validate", "test")
VIEWS: tuple[str, ...] = ("Frontal", "Lateral")


def read_chexpert_pool(train_csv: str | Path, demographics: str | Path | None = None) -> tuple[pl.DataFrame, dict]:
    """CheXpert ``train.csv`` as a pool source: every row, race from the demographics file when given.

    No race, ethnicity or position filter is applied (the pool needs no demographics); the single ``Unknown``
    sex of the real file becomes null. Patients absent from the demographics file get a null race (counted).
    """
    frame = read_chexpert_csv(train_csv)
    report: dict = {"train_csv": str(train_csv), "rows": frame.height,
                    "sex_unknown_set_null": frame.filter(pl.col("sex") == "Unknown").height}
    if demographics is None:
        frame = frame.with_columns(race=pl.lit(None, dtype=pl.String))
    else:
        demo, duplicates = read_demographics(demographics)
        frame = frame.join(demo.select("patient_id", "primary_race"), on="patient_id", how="left")
        frame = frame.with_columns(race_expr(pl.col("primary_race")).alias("race"))
        absent = frame.filter(~pl.col("patient_id").is_in(demo["patient_id"].implode())).height
        report |= {"demographics": str(demographics), "demographics_exact_duplicates_removed": duplicates,
                   "images_without_demographics": absent,
                   "images_without_race": frame.filter(pl.col("race").is_null()).height}
    frame = frame.with_columns(
        pl.lit("chexpert").alias("dataset"),
        pl.when(pl.col("sex").is_in(SEXES)).then(pl.col("sex")).alias("sex"),
    )
    return frame.select(*POOL_COLUMNS, "study_id"), report


def exclude_eval_patients(cohort_path: str | Path, splits: tuple[str, ...] = EVAL_SPLITS) -> pl.Series:
    """Patients of a cohort table (``cohort.parquet``: patient_id, split) whose split is validate or test."""
    cohort = read_table(cohort_path, what="cohort table")
    require_columns(cohort, ("patient_id", "split"), file=cohort_path, what="cohort table")
    chosen = cohort.filter(pl.col("split").is_in(splits))["patient_id"].drop_nulls().unique().sort()
    return chosen.alias("patient_id")


def build_pool(
    sources: list[pl.DataFrame],
    *,
    fraction: float = 1.0,
    fraction_unit: str = "images",
    seed: int = 0,
    frontal_only: bool = True,
    exclude_patients: pl.Series | None = None,
    eval_patients: pl.Series | None = None,
    keep_splits: Mapping[str, Sequence[str]] | None = None,
) -> tuple[pl.DataFrame, dict]:
    """Unite the sources, keep the chosen source splits, drop laterals, exclude patients, subsample per dataset.

    ``keep_splits`` maps a dataset to the values of its own ``split`` column to keep (e.g. ``{"mimic": ["train"]}``);
    other datasets are untouched. ``fraction`` of the images (``fraction_unit="images"``) or of the patients (all
    of their images) is kept in each dataset separately: ``floor(fraction * n + 0.5)`` draws with a generator
    seeded by ``(seed, dataset)``. ``eval_patients`` (a cohort's validate/test patients) is only counted, never
    removed; when it is None, ``exclude_patients`` is counted in its place.
    Returns ``(pool, report)``; the pool has POOL_OUTPUT_COLUMNS, sorted by dataset, image_id.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction_unit not in FRACTION_UNITS:
        raise ValueError(f"fraction_unit must be one of {', '.join(FRACTION_UNITS)}, got {fraction_unit!r}")
    frame = _union(sources)
    log = FilterLog(frame.height)
    composition_in = composition(frame)
    frame = _keep_splits(frame, keep_splits or {}, log)
    if frontal_only:
        frame = log.apply(frame, pl.col("view") == FRONTAL, step="frontal", breakdown="dataset",
                          reason="not a frontal view (lateral or unknown view)")
    watched = eval_patients if eval_patients is not None else exclude_patients
    eval_before = _eval_counts(frame, watched)
    if exclude_patients is not None:
        frame = log.apply(frame, ~pl.col("patient_id").is_in(exclude_patients.cast(pl.String).implode()),
                          step="exclude patients", breakdown="dataset",
                          reason="patient in the excluded set (fine-tuning validate/test patients)")
    frame, sampling = _subsample(frame, fraction=fraction, unit=fraction_unit, seed=seed)
    log.record(step="fraction", reason=f"not drawn into the {fraction:g} fraction of {fraction_unit}",
               removed=sum(s["images_in"] - s["images_out"] for s in sampling.values()), remaining=frame.height)
    pool = frame.sort("dataset", "image_id").rename({"split": "source_split"})
    rule = {"frontal_only": frontal_only, "keep_splits": {k: list(v) for k, v in (keep_splits or {}).items()},
            "exclude_patients": exclude_patients is not None, "fraction": fraction, "fraction_unit": fraction_unit,
            "seed": seed, "sampling": SAMPLING_RULE}
    return pool, {
        "rule": rule, "filters": log.as_dict(pool.height), "sampling": sampling,
        "eval_patients": _eval_report(watched, eval_before, pool, excluded=exclude_patients is not None),
        "composition_in": composition_in, "composition": composition(pool),
    }


def _keep_splits(frame: pl.DataFrame, keep: Mapping[str, Sequence[str]], log: FilterLog) -> pl.DataFrame:
    """Keep only the listed source-split values of the named datasets (counted by dataset:split)."""
    if not keep:
        return frame
    for dataset in keep:
        part = frame.filter(pl.col("dataset") == dataset)
        if part.height == 0 or part["split"].null_count() == part.height:
            raise ValueError(f"keep_splits names {dataset!r}, but no pool source of that dataset has a split "
                             "assignment (give its split lists / split file)")
    listed = pl.lit(False)
    for dataset, values in keep.items():
        listed = listed | ((pl.col("dataset") == dataset) & pl.col("split").is_in(list(values)))
    frame = frame.with_columns((pl.col("dataset") + ":" + pl.col("split").fill_null("(none)")).alias("_source_split"))
    frame = log.apply(frame, listed | ~pl.col("dataset").is_in(list(keep)), step="source split",
                      breakdown="_source_split", reason="source split not among those kept for its dataset")
    return frame.drop("_source_split")


def _union(sources: list[pl.DataFrame]) -> pl.DataFrame:
    """The common columns of every source, typed, with unique (dataset, image_id) and disjoint patient ids."""
    if not sources:
        raise ValueError("build_pool needs at least one source table")
    parts = []
    for number, source in enumerate(sources):
        datasets = source["dataset"].unique().sort().to_list() if "dataset" in source.columns else []
        name = f"pool source #{number} ({', '.join(map(str, datasets))})"
        require_columns(source, POOL_COLUMNS, file=name, what="pool source")
        if "split" not in source.columns:
            source = source.with_columns(split=pl.lit(None, dtype=pl.String))
        columns = (*POOL_COLUMNS, "split")
        parts.append(source.select(pl.col(c).cast(pl.Int16 if c == "age" else pl.String) for c in columns))
    frame = pl.concat(parts).with_row_index("_row")
    for column in ("dataset", "image_id", "patient_id"):
        _fail_if(frame.filter(pl.col(column).is_null()), f"{column} is blank", column)
    _fail_if(frame.filter(pl.col("sex").is_not_null() & ~pl.col("sex").is_in(SEXES)),
             f"sex outside {', '.join(SEXES)} (or null)", "sex")
    _fail_if(frame.filter(pl.col("view").is_not_null() & ~pl.col("view").is_in(VIEWS)),
             f"view outside {', '.join(VIEWS)} (or null)", "view")
    _fail_if(frame.filter(pl.struct("dataset", "image_id").is_duplicated()),
             "image_id occurs twice within one dataset (the same source given twice?)", "image_id")
    shared = frame.group_by("patient_id").agg(pl.col("dataset").n_unique().alias("n")).filter(pl.col("n") > 1)
    if shared.height:
        raise DataError("patient ids occur in more than one dataset (patient id namespaces collide)",
                        column="patient_id", rows=shared["patient_id"].head(5).to_list(), n_bad=shared.height)
    return frame.drop("_row")


def _fail_if(bad: pl.DataFrame, problem: str, column: str) -> None:
    if bad.height:
        examples = [f"{d}: {column}={v!r}" for d, v in bad.head(5).select("dataset", column).iter_rows()]
        raise DataError(problem, file="pool sources", column=column, rows=examples, n_bad=bad.height)


def _subsample(frame: pl.DataFrame, *, fraction: float, unit: str, seed: int) -> tuple[pl.DataFrame, dict]:
    """Keep ``floor(fraction * n + 0.5)`` images or patients of each dataset, seeded by (seed, dataset)."""
    kept, report = [], {}
    for dataset in sorted(frame["dataset"].unique().to_list()):
        part = frame.filter(pl.col("dataset") == dataset).sort("image_id")
        n_images = part.height
        units = part["image_id"] if unit == "images" else part["patient_id"].unique().sort()
        k = math.floor(fraction * units.len() + 0.5)  # half up; Python's round() would round half to even
        # The generator depends on the dataset name only, so one dataset's draw does not change with the others.
        rng = np.random.default_rng([seed, zlib.crc32(dataset.encode())])
        chosen = units.gather(np.sort(rng.permutation(units.len())[:k])) if k < units.len() else units
        key = "image_id" if unit == "images" else "patient_id"
        part = part.filter(pl.col(key).is_in(chosen.implode()))
        report[dataset] = {"unit": unit, "units_in": units.len(), "units_out": k,
                           "images_in": n_images, "images_out": part.height}
        kept.append(part)
    return (pl.concat(kept) if kept else frame.clear()), report


def _eval_counts(frame: pl.DataFrame, patients: pl.Series | None) -> dict | None:
    if patients is None:
        return None
    hit = frame.filter(pl.col("patient_id").is_in(patients.cast(pl.String).implode()))
    return {"images": hit.height, "patients": hit["patient_id"].n_unique()}


def _eval_report(patients: pl.Series | None, before: dict | None, pool: pl.DataFrame, *, excluded: bool) -> dict:
    """How many pool images belong to evaluation patients, before exclusion and in the final pool."""
    if patients is None:
        return {"given": False, "excluded": False}
    return {"given": True, "excluded": excluded, "patients": patients.n_unique(),
            "frontal_pool_images_before_exclusion": before,
            "pool_images_from_eval_patients": _eval_counts(pool, patients)}


def composition(frame: pl.DataFrame) -> dict:
    """Images and patients per dataset, with counts by sex, race (null = unknown), view and position."""
    out = {}
    for dataset in sorted(frame["dataset"].unique().to_list()):
        part = frame.filter(pl.col("dataset") == dataset)
        out[dataset] = {"images": part.height, "patients": part["patient_id"].n_unique(),
                        **{c: _counts(part, c) for c in ("sex", "race", "view", "position")}}
    out["total"] = {"images": frame.height, "patients": frame["patient_id"].n_unique(),
                    **{c: _counts(frame, c) for c in ("sex", "race", "view")}}
    return out


def _counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    counts = frame[column].fill_null("(unknown)").value_counts(sort=True)
    return {str(v): int(n) for v, n in counts.iter_rows()}


def pool_report_path(out_path: str | Path) -> Path:
    """``<stem>_report.json`` beside the pool parquet (``pool.parquet`` -> ``pool_report.json``)."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}_report.json")


def write_pool(pool: pl.DataFrame, report: dict, out_path: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write the pool parquet and its JSON report atomically; refuse existing outputs unless ``force``."""
    out_path = check_output(out_path, force=force)
    report_path = check_output(pool_report_path(out_path), force=force)
    missing = [c for c in POOL_OUTPUT_COLUMNS if c not in pool.columns]
    if missing:
        raise ValueError(f"pool table lacks column(s) {', '.join(missing)}")
    write_parquet(pool.select(POOL_OUTPUT_COLUMNS), out_path)
    write_json(report, report_path)
    return out_path, report_path
