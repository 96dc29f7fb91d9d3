"""The cohort of an import: the store's, a given cohort file, or built from the predictions file's own columns."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from engine.data.chexpert import normalise_image_id
from engine.data.errors import DataError
from engine.data.io import read_table
from engine.data.schema import PATHOLOGIES
from engine.metrics import store as st
from engine.metrics.importer_checks import (
    CHEXPERT_PATIENT,
    fail_rows,
    parse_numbers,
    require_input_columns,
    row_examples,
)
from engine.metrics.store_schema import COHORT_FILE, COHORT_REQUIRED, NON_ATTRIBUTE_COLUMNS


def resolve_cohort(store: Path, cohort: str | Path | None, keys: pl.DataFrame, raw: pl.DataFrame,
                   attributes: list[str] | None, patient_column: str | None, file: Path) -> tuple[pl.DataFrame, dict]:
    """The cohort to validate against: a cohort file, or attributes of the predictions file (each merged into the
    store cohort without changing its rows), or the store cohort itself."""
    existing = st.read_cohort(store) if (store / COHORT_FILE).exists() else None
    if cohort is not None:
        new, report = _cohort_file(Path(cohort)), {"source": f"cohort file {cohort}"}
    elif attributes:
        new, report = _cohort_from_predictions(keys, raw, attributes, patient_column, file)
    elif existing is not None:
        return existing, {"source": f"store cohort {store / COHORT_FILE}", "rows_written": 0}
    else:
        raise DataError("no cohort: the store has none and neither cohort (--cohort FILE) nor attribute_columns "
                        "(--attribute-columns sex,race) was given", file=store / COHORT_FILE)
    if existing is None:
        return new, {**report, "rows_in_store_before": 0, "rows_added": new.height, "rows_written": new.height}
    merged, merge_report = st.merge_cohort(existing, new, file=store / COHORT_FILE)
    return merged, {**report, **merge_report}


def _cohort_file(path: Path) -> pl.DataFrame:
    """A cohort file (parquet from prepare, or CSV); image ids normalised like the predictions'."""
    frame = read_table(path, what="cohort file").with_row_index("_row")
    require_input_columns(frame, list(COHORT_REQUIRED), path, "cohort file")
    labels = [p for p in PATHOLOGIES if p in frame.columns]  # a CSV holds raw labels as text: numbers, not attributes
    frame = frame.with_columns(normalise_image_id(pl.col("image_id").cast(pl.String)),
                               *[parse_numbers(frame, p, path).alias(p) for p in labels]).drop("_row")
    st.validate_cohort(frame, file=path)
    return frame


def _cohort_from_predictions(keys: pl.DataFrame, raw: pl.DataFrame, attributes: list[str],
                             patient_column: str | None, file: Path) -> tuple[pl.DataFrame, dict]:
    """One cohort row per image: image_id, patient_id, split and the attribute columns (as strings)."""
    require_input_columns(raw, attributes + ([patient_column] if patient_column else []), file,
                          "predictions file (cohort columns)")
    reserved = [a for a in attributes if a in NON_ATTRIBUTE_COLUMNS]
    if reserved:
        raise DataError(f"{', '.join(reserved)} cannot be an attribute (reserved: ids, split, raw age ...); bin or "
                        "rename it", file=file, column=reserved[0])
    text = {a: pl.col(a).cast(pl.String).str.strip_chars() for a in dict.fromkeys(attributes)}
    if patient_column:
        text["_patient"] = pl.col(patient_column).cast(pl.String).str.strip_chars()
        fail_rows(raw, text["_patient"].is_null() | (text["_patient"] == ""), "blank patient id", patient_column, file)
    table = keys.hstack(raw.select(expr.alias(name) for name, expr in text.items()))
    note = f"column {patient_column!r}"
    if not patient_column:  # CheXpert paths name the patient; any other id stands for itself
        derived = pl.col("image_id").str.extract(CHEXPERT_PATIENT, 1)
        n_derived = table.select(derived.is_not_null().sum()).item()
        table = table.with_columns(pl.coalesce(derived, "image_id").alias("_patient"))
        note = f"derived from the CheXpert path for {n_derived} rows, the image id for {table.height - n_derived}"
    attributes = [a for a in text if a != "_patient"]
    cohort = table.select("image_id", pl.col("_patient").alias("patient_id"), "split", *attributes)
    cohort = cohort.unique(maintain_order=True)
    clashing = cohort.filter(pl.col("image_id").is_duplicated())
    if clashing.height:
        spread = clashing.group_by("image_id").agg(pl.all().n_unique())
        column = next(c for c in cohort.columns[1:] if spread[c].max() > 1)
        bad = table.join(clashing.select("image_id").unique(), on="image_id").sort("image_id", "_row")
        raise DataError(f"rows of one image disagree on {column}", file=file, column=column,
                        rows=row_examples(bad.rename({"_patient": "patient_id"}), column, file),
                        n_bad=clashing["image_id"].n_unique())
    st.validate_cohort(cohort, file=file)
    nulls = {a: cohort[a].null_count() for a in attributes}
    return cohort, {"source": f"predictions file columns {', '.join(attributes)}", "patient_id": note,
                    "attribute_nulls": nulls}
