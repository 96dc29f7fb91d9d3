"""Row checks of an imported predictions file: each failure names the file, the column and example lines."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from engine.data.chexpert import normalise_image_id
from engine.data.errors import DataError
from engine.data.io import require_columns

CHEXPERT_PATIENT = r"(?:^|/)(patient\d+)/study\d+/"  # <folder>/patientNNNNN/studyN/viewN.jpg


def row_examples(bad: pl.DataFrame, column: str, file: Path) -> list[str]:
    """Offending rows as CSV line numbers (header = line 1) or 0-based parquet rows, with the image id when known."""
    word, offset = file_location(file)
    ids = bad["image_id"] if "image_id" in bad.columns and column != "image_id" else None
    return [f"{word} {row + offset}: " + (f"{ids[k]} " if ids is not None else "") + f"{column}={value!r}"
            for k, (row, value) in enumerate(bad.select("_row", column).head(5).iter_rows())]


def file_location(file: Path) -> tuple[str, int]:
    """How rows are numbered in messages: 0-based parquet rows, or CSV lines (header = line 1)."""
    return ("row", 0) if file.name.lower().endswith(".parquet") else ("line", 2)


def require_input_columns(raw: pl.DataFrame, columns: list[str], file: Path, what: str = "predictions file") -> None:
    """require_columns on the input columns (without the row number added here)."""
    require_columns(raw.drop("_row", strict=False), columns, file=file, what=what)


def fail_rows(raw: pl.DataFrame, mask: pl.Series | pl.Expr, problem: str, column: str, file: Path,
               hint: str | None = None) -> None:
    """Raise a DataError for the rows of ``raw`` where ``mask`` holds (nothing when none)."""
    bad = raw.filter(mask)
    if bad.height:
        raise DataError(problem, file=file, column=column, rows=row_examples(bad, column, file), n_bad=bad.height,
                        hint=hint)


def key_columns(raw: pl.DataFrame, id_column: str, split_column: str | None, default_split: str,
          file: Path) -> tuple[pl.DataFrame, str]:
    """``_row``, ``image_id`` (CheXpert release prefix removed) and ``split`` of every input row."""
    require_input_columns(raw, [id_column] + ([split_column] if split_column else []), file)
    image_id = normalise_image_id(pl.col(id_column).cast(pl.String))
    fail_rows(raw, image_id.is_null() | (image_id == ""), "blank image id", id_column, file)
    if split_column is None:
        split, note = pl.lit(default_split), f"every row assigned split {default_split!r} (no split column)"
    else:
        split, note = pl.col(split_column).cast(pl.String).str.strip_chars(), f"column {split_column!r}"
        fail_rows(raw, split.is_null() | (split == ""), "blank split (pass split_column=None / --split-column '' "
                   "to assign default_split to every row)", split_column, file)
    return raw.select("_row", image_id.alias("image_id"), split.alias("split")), note


def parse_numbers(raw: pl.DataFrame, column: str, file: Path) -> pl.Series:
    """A column as Float64 (strings stripped, blank = null); a value that is not a number is a DataError."""
    series = raw[column]
    if series.dtype == pl.String:
        text = series.str.strip_chars().replace("", None)
        parsed = text.cast(pl.Float64, strict=False)
        fail_rows(raw, text.is_not_null() & parsed.is_null(), "not a number", column, file)
        return parsed
    if not (series.dtype.is_numeric() or series.dtype == pl.Boolean):
        raise DataError(f"column has type {series.dtype}; expected numbers", file=file, column=column)
    return series.cast(pl.Float64)


def parse_labels(raw: pl.DataFrame, column: str, policy: str | None, file: Path) -> pl.Series:
    """Raw labels: 1 / 0 / -1 / blank under a label policy, else already 0 / 1 / blank (blank = not scored)."""
    values = parse_numbers(raw, column, file)
    allowed = [1.0, 0.0, -1.0] if policy else [0.0, 1.0]
    problem = f"label outside {{1, 0, -1, blank}} (label policy {policy})" if policy else "label outside {0, 1, blank}"
    hint = None if policy else "raw CheXpert labels (1 / 0 / -1 / blank) need label_policy (--label-policy u-zeros)"
    fail_rows(raw, values.is_not_null() & ~values.is_in(allowed).fill_null(False), problem, column, file, hint)
    return values


def parse_scores(raw: pl.DataFrame, column: str, file: Path) -> pl.Series:
    """Scores must be finite numbers: blank, NaN and infinity are errors."""
    values = parse_numbers(raw, column, file)
    fail_rows(raw, ~values.is_finite().fill_null(False), "score is blank, NaN or infinite", column, file)
    return values
