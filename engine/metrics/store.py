"""Results store: the cohort, runs (predictions.parquet + run.json) and evaluation sets (docs/results-store.md).

Layout and allowed values: :mod:`engine.metrics.store_schema`. Writers are atomic (a run folder appears whole or
not at all); readers validate, and bad input raises :class:`DataError` naming the file, the column and example rows.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import polars as pl

from engine.data.errors import DataError, OutputExistsError
from engine.data.io import check_output, require_columns, write_parquet
from engine.metrics import store_schema as schema
from engine.metrics.store_validate import (  # noqa: F401  (validate_predictions is part of this API)
    BAD_WEIGHT,
    cast_predictions,
    fail_rows,
    row_examples,
    validate_predictions,
)

# A run id is a folder name; a leading "." is refused too (hidden folders are never runs).
_RUN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
STAGING_DIR = ".staging"  # write_run's temporary folders: same filesystem as runs/, outside the runs/* glob
REQUIRED_RUN_FIELDS = ("run_id", "model", "score_kind", "evaluation_label_policy")
_INT_FIELDS = frozenset({"pretraining_epochs", "seed", "input_size"})
_FLOAT_FIELDS = frozenset({"pretraining_fraction"})
_CHOICES = {"score_kind": schema.SCORE_KINDS, "finetune_mode": schema.FINETUNE_MODES, "balancing": schema.BALANCING,
            "domain": schema.DOMAINS}
_FIELD_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    **{f: (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)), "int or null")
       for f in _INT_FIELDS},
    **{f: (lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)),
           "finite number or null") for f in _FLOAT_FIELDS},
    **{f: (lambda v, c=c: v is None or v in c, " | ".join(c)) for f, c in _CHOICES.items()},
    "synthetic": (lambda v: isinstance(v, bool), "true or false"),
    "tags": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()),
             "object of string to string"),
}
PREDICTION_SCHEMA = {"run_id": pl.String, "split": pl.String, "image_id": pl.String, "pathology": pl.String,
                     "y_true": pl.Float64, "y_score": pl.Float64, "weight": pl.Float64}


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` when it is a safe folder name ([A-Za-z0-9._-]+, not starting with '.')."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise DataError(f"unsafe run_id {run_id!r}: use letters, digits, '.', '_' and '-' only, not starting with '.'",
                        column="run_id")
    return run_id


def run_dir(store: str | Path, run_id: str) -> Path:
    """The folder of one run: ``<store>/runs/<run_id>``."""
    return Path(store) / schema.RUNS_DIR / check_run_id(run_id)


def validate_cohort(cohort: pl.DataFrame, *, file: str | Path) -> None:
    """image_id, patient_id and split present, String, never null; image_id unique; attribute names usable."""
    require_columns(cohort, schema.COHORT_REQUIRED, file=file, what="cohort")
    for column in schema.COHORT_REQUIRED:
        if cohort.schema[column] != pl.String:
            raise DataError(f"column has type {cohort.schema[column]}; expected String", file=file, column=column)
        nulls = cohort.with_row_index("_row").filter(pl.col(column).is_null())
        if nulls.height:
            raise DataError("null value", file=file, column=column, rows=row_examples(nulls, column),
                            n_bad=nulls.height)
    dup = cohort.filter(pl.col("image_id").is_duplicated())
    if dup.height:
        raise DataError("duplicate image_id in the cohort", file=file, column="image_id",
                        rows=dup["image_id"].unique(maintain_order=True).head(5).to_list(), n_bad=dup.height)
    for name in attribute_columns(cohort):
        # "sex x race" is parsed as an intersection and "all" names the whole population (metrics contract).
        if schema.INTERSECTION_SEPARATOR in name or name == schema.ALL_ATTRIBUTE:
            raise DataError(f"attribute column name {name!r} is reserved (contains {schema.INTERSECTION_SEPARATOR!r} "
                            f"or is {schema.ALL_ATTRIBUTE!r}); rename it", file=file, column=name)


def write_cohort(store: str | Path, cohort: pl.DataFrame, *, force: bool = False) -> Path:
    """Validate and write ``<store>/cohort.parquet`` atomically; refuse to overwrite unless ``force``."""
    path = check_output(Path(store) / schema.COHORT_FILE, force=force)
    validate_cohort(cohort, file=path)
    return write_parquet(cohort, path)


def read_cohort(store: str | Path) -> pl.DataFrame:
    """Read and validate ``<store>/cohort.parquet``."""
    path = Path(store) / schema.COHORT_FILE
    if not path.exists():
        raise DataError("the store has no cohort", file=path,
                        hint="write one with prepare, or import with cohort (--cohort) or attribute_columns")
    cohort = pl.read_parquet(path)
    validate_cohort(cohort, file=path)
    return cohort


def merge_cohort(existing: pl.DataFrame, new: pl.DataFrame, *, file: str | Path) -> tuple[pl.DataFrame, dict]:
    """Add the rows and columns of ``new`` to the store cohort ``existing``; a value that would change is an error."""
    common = [c for c in new.columns if c in existing.columns and c != "image_id"]
    both = new.join(existing.select("image_id", *common), on="image_id", how="inner", suffix="__store")
    for column in common:
        if existing.schema[column] != new.schema[column]:
            raise DataError(f"column is {existing.schema[column]} in the store cohort but {new.schema[column]} in the "
                            "new cohort", file=file, column=column)
        bad = both.filter(pl.col(column).ne_missing(pl.col(f"{column}__store")))
        if bad.height:
            rows = [f"{i}: store {old!r}, new {value!r}"
                    for i, value, old in bad.select("image_id", column, f"{column}__store").head(5).iter_rows()]
            raise DataError("the new cohort would change existing rows of the store cohort", file=file,
                            column=column, rows=rows, n_bad=bad.height)
    columns = [c for c in new.columns if c not in existing.columns]
    added = new.join(existing.select("image_id"), on="image_id", how="anti")
    if columns:  # existing rows keep their order; only the new columns are filled in
        existing = existing.join(new.select("image_id", *columns), on="image_id", how="left", maintain_order="left")
    merged = pl.concat([existing, added], how="diagonal")
    changed = bool(columns) or added.height > 0
    return merged, {"rows_in_store_before": existing.height, "rows_added": added.height, "columns_added": columns,
                    "rows_written": merged.height if changed else 0}


def attribute_columns(cohort: pl.DataFrame) -> list[str]:
    """Attribute columns: String columns not in NON_ATTRIBUTE_COLUMNS (numeric raw labels are skipped by type)."""
    reserved = schema.NON_ATTRIBUTE_COLUMNS
    return [name for name, dtype in cohort.schema.items() if dtype == pl.String and name not in reserved]


def normalise_run_info(run_id: str, run_info: dict, *, file: str | Path) -> dict:
    """RUN_FIELDS in order, missing optional fields null (synthetic False, tags {}); unknown keys under "extra"."""
    if not isinstance(run_info, dict) or not isinstance(run_info.get("extra") or {}, dict):
        raise DataError("run.json must be a JSON object (and its extra an object)", file=file)
    info = dict(run_info)
    if info.pop("run_id", run_id) != run_id:
        raise DataError(f"run_info run_id {run_info['run_id']!r} differs from run_id {run_id!r}", file=file,
                        column="run_id")
    extra = dict(info.pop("extra", None) or {})
    extra.update({key: info.pop(key) for key in list(info) if key not in schema.RUN_FIELDS})
    defaults = {"synthetic": False, "tags": {}}
    out = {"run_id": check_run_id(run_id)}
    out.update({field: info.get(field, defaults.get(field)) for field in schema.RUN_FIELDS if field != "run_id"})
    missing = [field for field in REQUIRED_RUN_FIELDS if out[field] is None]
    if missing:
        raise DataError(f"run.json lacks required field(s): {', '.join(missing)}", file=file, column=missing[0])
    for field, value in out.items():
        ok, expected = _FIELD_CHECKS.get(field, (lambda v: v is None or isinstance(v, str), "string or null"))
        if not ok(value):
            raise DataError(f"run.json field {field!r} is {value!r}; expected {expected}", file=file, column=field)
    if extra:
        out["extra"] = extra
    return out


def read_run_info(store: str | Path, run_id: str) -> dict:
    """Read and check ``runs/<run_id>/run.json``."""
    path = run_dir(store, run_id) / schema.RUN_FILE
    if not path.exists():
        raise DataError(f"run {run_id!r} has no run.json", file=path, hint=f"runs present: {list_run_ids(store)}")
    try:
        return normalise_run_info(run_id, json.loads(path.read_text()), file=path)
    except json.JSONDecodeError as exc:
        raise DataError(f"run.json is not valid JSON: {exc}", file=path) from exc


def require_probabilities(run_info: dict, operation: str) -> None:
    """Refuse ``operation`` (mean-of-probabilities ensemble, ECE, a 0.5 threshold) unless scores are probabilities."""
    kind = run_info.get("score_kind")
    if kind != "probability":
        raise DataError(
            f"run {run_info.get('run_id')} has score_kind {kind}; {operation} needs probabilities: its scores are not "
            "probabilities on a 0-1 scale", column="score_kind",
            hint="use a rank-based alternative (AUC, rank-average ensemble, a threshold chosen on validation), or "
                 "re-import the run with score_kind probability (--score-kind probability) if the scores are "
                 "probabilities")


def write_run(store: str | Path, run_id: str, predictions: pl.DataFrame, run_info: dict, *,
              force: bool = False) -> Path:
    """Validate and write ``runs/<run_id>/`` (predictions.parquet + run.json) as one unit; return the folder.

    Both files are written into a temporary folder under ``<store>/.staging`` (same filesystem, outside the
    ``runs/*`` glob of readers) that is renamed into place; with ``force`` an existing run is replaced only once the
    new folder is complete.
    """
    target = run_dir(store, run_id)
    if target.exists() and not force:
        raise OutputExistsError(target)
    info = normalise_run_info(run_id, run_info, file=target / schema.RUN_FILE)
    frame = validate_predictions(predictions, read_cohort(store), file=target / schema.PREDICTIONS_FILE)
    staging = Path(store) / STAGING_DIR
    for folder in (target.parent, staging):
        folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{run_id}-", dir=staging))
    try:
        frame.write_parquet(tmp / schema.PREDICTIONS_FILE, compression="zstd")
        (tmp / schema.RUN_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")  # extra: paths ...
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; give the run folder a plain mkdir's mode
        _move_into_place(tmp, target, staging)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    return target


def _move_into_place(tmp: Path, target: Path, staging: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is set aside first and restored if the rename fails."""
    if not target.exists():
        os.rename(tmp, target)
        return
    old = staging / f"replaced-{target.name}-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except OSError:
        os.rename(old, target)
        raise
    shutil.rmtree(old)


def list_run_ids(store: str | Path) -> list[str]:
    """Run folders of the store, sorted (hidden '.'-folders are not runs)."""
    runs = Path(store) / schema.RUNS_DIR
    if not runs.is_dir():
        return []
    return sorted(p.name for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_runs(store: str | Path) -> pl.DataFrame:
    """One row per run with every RUN_FIELD (tags as a JSON string), sorted by run_id."""
    dtypes = {field: (pl.Int64 if field in _INT_FIELDS else pl.Float64 if field in _FLOAT_FIELDS
                      else pl.Boolean if field == "synthetic" else pl.String) for field in schema.RUN_FIELDS}
    rows = []
    for run_id in list_run_ids(store):
        info = read_run_info(store, run_id)
        rows.append({field: json.dumps(info[field], sort_keys=True) if field == "tags" else info[field]
                     for field in schema.RUN_FIELDS})
    return pl.DataFrame(rows, schema=dtypes, orient="row") if rows else pl.DataFrame(schema=dtypes)


def read_predictions(store: str | Path, run_ids: list[str] | None = None, *, validate: bool = True) -> pl.DataFrame:
    """Predictions of ``run_ids`` (all runs when None) with a run_id column; weight 1.0 where a run has none."""
    present = list_run_ids(store)
    run_ids = present if run_ids is None else list(run_ids)
    unknown = [r for r in run_ids if r not in present]
    if unknown:
        raise DataError(f"unknown run(s): {', '.join(map(str, unknown))}", file=Path(store) / schema.RUNS_DIR,
                        column="run_id", hint=f"runs present: {', '.join(present) or 'none'}")
    cohort = read_cohort(store) if validate and run_ids else None
    frames = []
    for run_id in run_ids:
        path = run_dir(store, run_id) / schema.PREDICTIONS_FILE
        frame = pl.read_parquet(path)
        if validate:
            frame = validate_predictions(frame, cohort, file=path)
        else:
            require_columns(frame, schema.PREDICTION_COLUMNS, file=path, what="predictions")
        if "weight" not in frame.columns:
            frame = frame.with_columns(weight=pl.lit(1.0))
        frames.append(frame.with_columns(run_id=pl.lit(run_id)).select(
            pl.col(name).cast(dtype) for name, dtype in PREDICTION_SCHEMA.items()))
    return pl.concat(frames) if frames else pl.DataFrame(schema=PREDICTION_SCHEMA)


def read_eval_sets(store: str | Path) -> pl.DataFrame | None:
    """``subsets.parquet`` (set, pathology [null = all], image_id, weight as Float64), or None when absent."""
    path = Path(store) / schema.SUBSETS_FILE
    if not path.exists():
        return None
    sets = pl.read_parquet(path)
    require_columns(sets, ("set", "pathology", "image_id", "weight"), file=path, what="evaluation sets")
    sets = cast_predictions(sets.select("set", "pathology", "image_id", "weight"), path).with_row_index("_row")
    fail_rows(sets.filter(BAD_WEIGHT), "weight is null, negative, NaN or infinite", "weight", path)
    return sets.drop("_row")
