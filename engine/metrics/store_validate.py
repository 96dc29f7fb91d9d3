"""Validation of prediction rows (and subsets rows) for the results store: every failure names the file, the
column and example rows (docs/results-store.md, "Validation")."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from engine.data.errors import DataError
from engine.data.io import require_columns
from engine.metrics import store_schema as schema

STRING_COLUMNS = ("split", "image_id", "pathology", "set")  # "set": subsets.parquet
BAD_WEIGHT = ~(pl.col("weight").is_finite() & (pl.col("weight") >= 0)).fill_null(False)  # null is bad too


def row_examples(bad: pl.DataFrame, column: str) -> list[str]:
    """Up to five offending rows as ``row N image_id=.. pathology=..: column=value`` (N: 0-based row)."""
    keys = [c for c in ("image_id", "pathology") if c in bad.columns and c != column]
    return [f"row {r['_row']}" + "".join(f" {k}={r[k]!r}" for k in keys) + f": {column}={r[column]!r}"
            for r in bad.head(5).iter_rows(named=True)]


def fail_rows(bad: pl.DataFrame, problem: str, column: str, file: str | Path) -> None:
    """Raise a DataError for the rows of ``bad`` (nothing when empty)."""
    if bad.height:
        raise DataError(problem, file=file, column=column, rows=row_examples(bad, column), n_bad=bad.height)


def cast_predictions(frame: pl.DataFrame, file: str | Path) -> pl.DataFrame:
    """Keys String, y_true / y_score / weight Float64 (numeric or boolean y_true accepted); else name the type."""
    casts = []
    for column in frame.columns:
        dtype = frame.schema[column]
        if column in STRING_COLUMNS:
            ok, expected = dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum), "String"
            casts.append(pl.col(column).cast(pl.String))
        else:
            ok = dtype.is_numeric() or (column == "y_true" and dtype == pl.Boolean)
            expected = "Float64 (0/1/null)" if column == "y_true" else "Float64"
            casts.append(pl.col(column).cast(pl.Float64))
        if not ok:
            raise DataError(f"column has type {dtype}; expected {expected}", file=file, column=column)
    return frame.with_columns(casts)


def validate_predictions(frame: pl.DataFrame, cohort: pl.DataFrame | None, *, file: str | Path) -> pl.DataFrame:
    """Check a predictions table; return its contract columns (Float64 values), sorted. ``cohort`` None skips the
    cohort checks. Extra columns (e.g. run_id of read_predictions) are dropped."""
    require_columns(frame, schema.PREDICTION_COLUMNS, file=file, what="predictions")
    keep = [c for c in (*schema.PREDICTION_COLUMNS, *schema.OPTIONAL_PREDICTION_COLUMNS) if c in frame.columns]
    frame = cast_predictions(frame.select(keep), file).with_row_index("_row")
    for column in ("split", "image_id", "pathology"):
        fail_rows(frame.filter(pl.col(column).is_null()), "null value", column, file)
    fail_rows(frame.filter(pl.col("y_true").is_not_null() & ~pl.col("y_true").is_in([0.0, 1.0]).fill_null(False)),
          "y_true outside {0, 1, null}", "y_true", file)
    fail_rows(frame.filter(~pl.col("y_score").is_finite().fill_null(False)), "y_score is null, NaN or infinite",
          "y_score", file)
    if "weight" in frame.columns:
        fail_rows(frame.filter(BAD_WEIGHT), "weight is null, negative, NaN or infinite", "weight", file)
    dup = frame.filter(pl.struct("split", "image_id", "pathology").is_duplicated())
    fail_rows(dup.sort("image_id", "pathology"), "duplicate (split, image_id, pathology) rows", "image_id", file)
    if cohort is not None:
        check_against_cohort(frame, cohort, file)
    return frame.drop("_row").sort("split", "pathology", "image_id")


def check_against_cohort(frame: pl.DataFrame, cohort: pl.DataFrame, file: str | Path) -> None:
    """Every image_id is in the cohort, with the cohort's split (an image has one split)."""
    ref = cohort.select("image_id", pl.col("split").alias("cohort_split"))
    joined = frame.join(ref, on="image_id", how="left", maintain_order="left")
    fail_rows(joined.filter(pl.col("cohort_split").is_null()), "image_id not in the store cohort", "image_id", file)
    mismatch = joined.filter(pl.col("split") != pl.col("cohort_split"))
    fail_rows(mismatch.with_columns(pl.format("{} (cohort: {})", "split", "cohort_split").alias("split")),
          "split differs from the image's split in the cohort", "split", file)
