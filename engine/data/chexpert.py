"""Readers for CheXpert ``train.csv`` / ``valid.csv`` and the demographics file ``CHEXPERT DEMO.xlsx``.

Formats: shared/notes/formats.md section 9. The readers validate and normalise; they never filter rows
(filters live in :mod:`engine.data.cohort`, where every removal is counted).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from engine.data.errors import DataError, example_rows
from engine.data.io import read_table, require_columns
from engine.data.schema import (
    CHEXPERT_PATH_PREFIXES,
    CHEXPERT_TRAIN_COLUMNS,
    DEMOGRAPHICS_COLUMNS,
    PATHOLOGIES,
    SEX_VALUES_ALLOWED,
)

# After the release prefix: <folder>/patientNNNNN/studyN/viewN_<frontal|lateral>.jpg
_IMAGE_ID_PATTERN = r"^[^/]+/patient\d+/study\d+/[^/]+\.(jpg|jpeg|png)$"


def normalise_image_id(path: pl.Expr) -> pl.Expr:
    """Dataset-relative image id: the path without a ``CheXpert-v1.0[-small]/`` prefix (both layouts match)."""
    expr = path.str.strip_chars()
    for prefix in CHEXPERT_PATH_PREFIXES:
        expr = expr.str.strip_prefix(prefix)
    return expr


def read_chexpert_csv(path: str | Path) -> pl.DataFrame:
    """Read and validate a CheXpert ``train.csv`` / ``valid.csv``.

    Returns one row per CSV row with ``source_row`` (0-based), ``image_id``, ``patient_id``, ``study_id``,
    ``sex``, ``age``, ``view``, ``position`` and the 14 raw labels as Float64 (1 / 0 / -1 / null).
    """
    raw = read_table(path, what="CheXpert CSV")
    require_columns(raw, CHEXPERT_TRAIN_COLUMNS, file=path, what="CheXpert CSV")
    raw = raw.with_row_index("_row")
    frame = raw.select(
        "_row",
        pl.col("_row").cast(pl.Int64).alias("source_row"),
        normalise_image_id(pl.col("Path")).alias("image_id"),
        pl.col("Path"),
        pl.col("Sex").alias("sex"),
        pl.col("Age").alias("age_raw"),
        pl.col("Frontal/Lateral").alias("view"),
        pl.col("AP/PA").alias("position"),
        *[pl.col(p) for p in PATHOLOGIES],
    )
    _check_paths(frame, path)
    frame = parse_raw_labels(frame, path)
    frame = _parse_age(frame, path)
    _check_sex(frame, path)
    parts = pl.col("image_id").str.split("/")
    return frame.select(
        "source_row",
        "image_id",
        parts.list.get(1).alias("patient_id"),
        (parts.list.get(1) + "/" + parts.list.get(2)).alias("study_id"),
        "sex",
        "age",
        "view",
        "position",
        *PATHOLOGIES,
    )


def _check_paths(frame: pl.DataFrame, file: str | Path) -> None:
    """Every Path must parse as <folder>/patientN/studyN/<view>.jpg and appear once."""
    bad = frame.filter(pl.col("image_id").is_null() | ~pl.col("image_id").str.contains(_IMAGE_ID_PATTERN))
    if bad.height:
        raise DataError("Path does not look like a CheXpert image path (<release>/<folder>/patientN/studyN/viewN.jpg)",
                        file=file, column="Path", rows=example_rows(bad, "Path"), n_bad=bad.height)
    dup = frame.filter(pl.col("image_id").is_duplicated())
    if dup.height:
        raise DataError("duplicate image paths (after removing the CheXpert-v1.0[-small]/ prefix)", file=file,
                        column="Path", rows=example_rows(dup, "Path"), n_bad=dup.height)


def parse_raw_labels(frame: pl.DataFrame, file: str | Path) -> pl.DataFrame:
    """Cast the 14 label columns (strings) to Float64; reject anything outside {1, 0, -1, blank}.

    ``frame`` carries a ``_row`` column (0-based data row) so that errors name the offending lines.
    """
    for pathology in PATHOLOGIES:
        value = pl.col(pathology).str.strip_chars()
        parsed = value.cast(pl.Float64, strict=False)
        bad = frame.filter((value.is_not_null() & (value != "")) & (parsed.is_null() | ~parsed.is_in([1.0, 0.0, -1.0])))
        if bad.height:
            raise DataError("label outside {1, 0, -1, blank}", file=file, column=pathology,
                            rows=example_rows(bad, pathology),
                            n_bad=bad.height)
        frame = frame.with_columns(parsed.alias(pathology))
    return frame


def _parse_age(frame: pl.DataFrame, file: str | Path) -> pl.DataFrame:
    """Age must be a whole number of years in 0..120 (blank allowed, stays null)."""
    parsed = pl.col("age_raw").str.strip_chars().cast(pl.Float64, strict=False)
    invalid = parsed.is_null() | (parsed < 0) | (parsed > 120) | (parsed != parsed.round())
    bad = frame.filter(pl.col("age_raw").is_not_null() & invalid)
    if bad.height:
        raise DataError("Age is not a whole number of years in 0..120", file=file, column="Age",
                        rows=example_rows(bad, "age_raw"),
                        n_bad=bad.height)
    return frame.with_columns(parsed.cast(pl.Int16).alias("age")).drop("age_raw")


def _check_sex(frame: pl.DataFrame, file: str | Path) -> None:
    """Sex must be Male, Female or Unknown (the real file has one Unknown)."""
    bad = frame.filter(~pl.col("sex").is_in(sorted(SEX_VALUES_ALLOWED)) | pl.col("sex").is_null())
    if bad.height:
        raise DataError(f"unknown Sex value (allowed: {', '.join(sorted(SEX_VALUES_ALLOWED))})", file=file,
                        column="Sex", rows=example_rows(bad, "sex"),
                        n_bad=bad.height)


def read_demographics(path: str | Path) -> tuple[pl.DataFrame, int]:
    """Read ``CHEXPERT DEMO.xlsx`` (or a CSV with the same columns); return ``(patient_id, primary_race,
    ethnicity)`` one row per patient, and the number of exact duplicate rows removed.

    GENDER and AGE_AT_CXR are not used: sex and age come from train.csv, as upstream (peers.md 5b step 2).
    """
    raw = read_table(path, what="demographics file")
    require_columns(raw, DEMOGRAPHICS_COLUMNS, file=path, what="demographics file")
    raw = raw.with_row_index("_row")
    frame = raw.select(
        "_row",
        pl.col("PATIENT").str.strip_chars().alias("patient_id"),
        pl.col("PRIMARY_RACE").str.strip_chars().alias("primary_race"),
        pl.col("ETHNICITY").str.strip_chars().alias("ethnicity"),
    )
    missing_id = frame.filter(pl.col("patient_id").is_null())
    if missing_id.height:
        raise DataError("demographics row without a PATIENT id", file=path, column="PATIENT",
                        rows=example_rows(missing_id, "patient_id"), n_bad=missing_id.height)
    unique = frame.unique(subset=["patient_id", "primary_race", "ethnicity"], keep="first", maintain_order=True)
    conflicting = unique.filter(pl.col("patient_id").is_duplicated())
    if conflicting.height:
        raise DataError("a patient has conflicting demographics rows", file=path, column="PATIENT",
                        rows=example_rows(conflicting, "patient_id"), n_bad=conflicting.height)
    return unique.drop("_row"), frame.height - unique.height
