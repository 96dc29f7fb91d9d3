"""Import another tool's per-image predictions into the results store (``run_experiments.py import``).

Long files (split, image_id, pathology, y_true, y_score[, weight]) or wide files (one score and one label column per
pathology, named by patterns such as ``'Logit - {pathology}'``); CSV or parquet. Nothing is dropped silently: every
removed or merged row is counted in the returned report (docs/results-store.md, "Importing predictions").
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import polars as pl

from engine.data.errors import DataError, OutputExistsError
from engine.data.io import read_table
from engine.data.labels import LABEL_POLICIES, target_expr
from engine.metrics import store as st
from engine.metrics.importer_checks import (
    fail_rows,
    file_location,
    key_columns,
    parse_labels,
    parse_numbers,
    parse_scores,
    require_input_columns,
    row_examples,
)
from engine.metrics.importer_cohort import resolve_cohort
from engine.metrics.store_schema import SCORE_KINDS

DUPLICATE_MODES = ("error", "weight")
PLACEHOLDER = "{pathology}"
# Repeated inferences of one image on a GPU differ in the 7th significant digit (float32, non-deterministic kernels:
# the real cxr-foundation-bias sample differs by up to 1.7e-6); duplicates within this relative tolerance are "equal".
DEFAULT_SCORE_TOLERANCE = 1e-5
_KEY = ("split", "image_id", "pathology")


def import_predictions(*, store: str | Path, run_id: str, predictions: str | Path, cohort: str | Path | None = None,
                       wide: bool = False, score_pattern: str | None = None, label_pattern: str | None = None,
                       id_column: str = "image_id", split_column: str | None = "split", default_split: str = "test",
                       score_kind: str = "score", label_policy: str | None = None,
                       attribute_columns: list[str] | None = None, patient_column: str | None = None,
                       duplicates: str = "error", pathologies: list[str] | None = None,
                       tags: dict[str, str] | None = None, run_info: dict | None = None, force: bool = False,
                       score_tolerance: float = DEFAULT_SCORE_TOLERANCE) -> dict:
    """Validate a predictions file, write it as run ``run_id`` (and the cohort when needed); return the report."""
    store, path = Path(store), Path(predictions)
    _check_options(wide, score_pattern, label_pattern, score_kind, label_policy, duplicates, score_tolerance)
    if cohort is not None and attribute_columns:
        raise DataError("give cohort (--cohort) or attribute_columns (--attribute-columns), not both")
    target = st.run_dir(store, run_id)
    if target.exists() and not force:
        raise OutputExistsError(target)
    raw = read_table(path, what="predictions file").with_row_index("_row")
    if raw.is_empty():
        raise DataError("the predictions file has no rows", file=path)
    keys, split_note = key_columns(raw, id_column, split_column, default_split, path)
    if wide:
        long, columns, removed = _wide(raw, keys, score_pattern, label_pattern, pathologies, label_policy, path)
    else:
        long, columns, removed = _long(raw, keys, pathologies, label_policy, path)
    long, dup_report = _collapse(long, duplicates, score_tolerance, columns, path)
    long = _targets(long, label_policy)
    cohort_frame, cohort_report = resolve_cohort(store, cohort, keys, raw, attribute_columns, patient_column, path)
    _check_cohort(keys, raw, id_column, cohort_frame, cohort_report["source"], path)
    long = st.validate_predictions(long, cohort_frame, file=path)
    sha256 = _sha256(path)
    summary = {"format": "wide" if wide else "long", "id_column": id_column, "split": split_note, "columns": columns,
               "rows_read": raw.height, "duplicates": duplicates, "rows_merged": dup_report["rows_merged"]}
    info = _run_info(run_id, run_info, score_kind, label_policy, tags, path, sha256, summary)
    st.normalise_run_info(run_id, info, file=target / "run.json")  # refuse a bad run_info before writing anything
    if cohort_report["rows_written"]:
        st.write_cohort(store, cohort_frame, force=True)
    st.write_run(store, run_id, long, info, force=force)
    return {"run_id": run_id, "run_dir": str(target), "file": str(path), "sha256": sha256, **summary,
            "label_policy": label_policy or "as-given", "score_kind": score_kind, "removed": removed,
            "duplicates": dup_report, "rows_written": long.height,
            "distinct_image_ids": long["image_id"].n_unique(), "rows_per_pathology": _per_pathology(long),
            "cohort": cohort_report}


def _check_options(wide: bool, score_pattern: str | None, label_pattern: str | None, score_kind: str,
                   label_policy: str | None, duplicates: str, score_tolerance: float) -> None:
    """Refuse unknown option values and patterns given for the wrong format."""
    for name, value, allowed in (("score_kind", score_kind, SCORE_KINDS), ("duplicates", duplicates, DUPLICATE_MODES),
                                 ("label_policy", label_policy or LABEL_POLICIES[0], LABEL_POLICIES)):
        if value not in allowed:
            raise DataError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
    if wide != (score_pattern is not None and label_pattern is not None):
        raise DataError("wide format needs both score_pattern and label_pattern (--score-pattern, --label-pattern); "
                        "the long format takes neither")
    if not (math.isfinite(score_tolerance) and score_tolerance >= 0):
        raise DataError(f"score_tolerance must be a finite number >= 0, got {score_tolerance!r}")


def pattern_columns(columns: list[str], pattern: str) -> dict[str, str]:
    """{pathology: column} for every column that ``pattern`` ('Logit - {pathology}') matches, in column order."""
    if pattern.count(PLACEHOLDER) != 1:
        raise DataError(f"pattern {pattern!r} must contain {PLACEHOLDER} exactly once")
    prefix, suffix = pattern.split(PLACEHOLDER)
    return {c[len(prefix):len(c) - len(suffix)]: c for c in columns
            if c.startswith(prefix) and c.endswith(suffix) and len(c) > len(prefix) + len(suffix)}


def _wide(raw: pl.DataFrame, keys: pl.DataFrame, score_pattern: str, label_pattern: str,
          pathologies: list[str] | None, policy: str | None, file: Path) -> tuple[pl.DataFrame, dict, list]:
    """One long row per (input row, pathology); pathologies from the score pattern's matches or the given list."""
    found = pattern_columns(raw.columns, score_pattern)
    pattern_columns(raw.columns, label_pattern)  # checks the placeholder
    if pathologies:
        found = {p: score_pattern.replace(PLACEHOLDER, p) for p in pathologies}
        require_input_columns(raw, list(found.values()), file, "predictions file (score columns)")
    elif not found:
        raise DataError(f"score pattern {score_pattern!r} matches no column", file=file, column=score_pattern,
                        hint=f"columns present: {', '.join(raw.columns[1:])}")
    columns = {p: {"score": s, "label": label_pattern.replace(PLACEHOLDER, p)} for p, s in found.items()}
    require_input_columns(raw, [c["label"] for c in columns.values()], file, "predictions file (label columns)")
    parts = [keys.with_columns(pathology=pl.lit(p), y_raw=parse_labels(raw, c["label"], policy, file),
                               y_score=parse_scores(raw, c["score"], file)) for p, c in columns.items()]
    return pl.concat(parts), columns, []


def _long(raw: pl.DataFrame, keys: pl.DataFrame, pathologies: list[str] | None, policy: str | None,
          file: Path) -> tuple[pl.DataFrame, dict, list]:
    """Long rows; with ``pathologies`` the other pathologies' rows are removed and counted."""
    require_input_columns(raw, ["pathology", "y_true", "y_score"], file)
    pathology = pl.col("pathology").cast(pl.String).str.strip_chars()
    fail_rows(raw, pathology.is_null() | (pathology == ""), "blank pathology", "pathology", file)
    extra = {"weight": parse_numbers(raw, "weight", file)} if "weight" in raw.columns else {}
    long = keys.with_columns(pathology=raw.select(pathology).to_series(),
                             y_raw=parse_labels(raw, "y_true", policy, file),
                             y_score=parse_scores(raw, "y_score", file), **extra)
    removed = []
    if pathologies:
        absent = sorted(set(pathologies) - set(long["pathology"].unique().to_list()))
        if absent:
            raise DataError(f"requested pathologies absent from the file: {', '.join(absent)}", file=file,
                            column="pathology")
        kept = long.filter(pl.col("pathology").is_in(pathologies))
        removed.append({"rule": "pathology not requested", "rows": long.height - kept.height,
                        "why": f"only {', '.join(pathologies)} were asked for (pathologies / --pathologies)"})
        long = kept
    return long, {p: {"score": "y_score", "label": "y_true"} for p in long["pathology"].unique().sort()}, removed


def _collapse(long: pl.DataFrame, mode: str, tolerance: float, columns: dict,
              file: Path) -> tuple[pl.DataFrame, dict]:
    """Duplicate (split, image_id, pathology) rows: an error, or one row whose weight counts them ("weight")."""
    dup = long.filter(pl.struct(_KEY).is_duplicated())
    report = {"mode": mode, "duplicate_rows": dup.height, "rows_merged": 0}
    if not dup.height:
        return long, report
    if mode == "error":
        word, offset = file_location(file)
        rows = dup.group_by("image_id", maintain_order=True).agg(pl.col("_row").unique().sort() + offset).head(5)
        raise DataError("duplicate (split, image id, pathology) rows", file=file, column="image_id",
                        rows=[f"{i} on {word}s {r}" for i, r in rows.iter_rows()], n_bad=dup["image_id"].n_unique(),
                        hint="duplicates='weight' (--duplicates weight) merges identical repeats into one row "
                             "whose weight is their count")
    weight = pl.col("weight") if "weight" in long.columns else pl.lit(1.0)
    groups = long.with_columns(_w=weight).group_by(_KEY, maintain_order=True).agg(
        pl.col("_row").min(), pl.len().alias("_n"), pl.col("y_raw").n_unique().alias("_labels"),
        pl.col("y_raw").first(), pl.col("y_raw").unique().sort().alias("labels"),
        pl.col("y_score").first().alias("_first"), pl.col("y_score").mean().alias("_mean"),
        (pl.col("y_score").max() - pl.col("y_score").min()).alias("_spread"), pl.col("y_score").alias("scores"),
        pl.col("y_score").abs().max().alias("_scale"), pl.col("_w").sum().alias("weight"))
    too_far = pl.col("_spread") > tolerance * pl.max_horizontal(1.0, pl.col("_scale"))
    for bad, kind in ((groups.filter(pl.col("_labels") > 1), "label"), (groups.filter(too_far), "score")):
        if bad.height:  # name the input column of the first offending pathology
            raise DataError(f"duplicates of one image disagree on the {kind}"
                            + (f" beyond score_tolerance {tolerance}" if kind == "score" else ""),
                            file=file, column=columns[bad["pathology"][0]][kind], n_bad=bad.height,
                            rows=row_examples(bad, f"{kind}s", file))
    # Equal scores stay bit-identical; scores within the tolerance become their mean (order-independent).
    score = pl.when(pl.col("_spread") == 0).then(pl.col("_first")).otherwise(pl.col("_mean")).alias("y_score")
    merged = groups.with_columns(score)
    varied = merged.filter((pl.col("_n") > 1) & (pl.col("_spread") > 0))
    report.update(rows_merged=long.height - merged.height, keys_with_duplicates=merged.filter(pl.col("_n") > 1).height,
                  keys_with_score_spread=varied.height, max_score_spread=float(varied["_spread"].max() or 0.0),
                  score_rule=f"weight = summed weight (1 per row); score = their mean when they differ by at most "
                             f"{tolerance} x max(1, |score|), else an error")
    return merged.select("_row", *_KEY, "y_raw", "y_score", "weight"), report


def _check_cohort(keys: pl.DataFrame, raw: pl.DataFrame, id_column: str, cohort: pl.DataFrame, source: str,
                  file: Path) -> None:
    """Every image is in the cohort, with the cohort's split (named by input line, before any reshaping)."""
    given = keys.with_columns(raw[id_column].cast(pl.String).alias("_given"))
    joined = given.join(cohort.select("image_id", pl.col("split").alias("_cohort")), on="image_id", how="left",
                        maintain_order="left")
    missing = joined.filter(pl.col("_cohort").is_null()).drop("image_id").rename({"_given": id_column})
    fail_rows(missing, pl.lit(True), f"image id not in the cohort ({source})", id_column, file,
               hint=f"ids are compared without the CheXpert-v1.0[-small]/ prefix; cohort ids look like "
                    f"{cohort['image_id'].head(2).to_list()}")
    mismatch = joined.filter(pl.col("split") != pl.col("_cohort"))
    fail_rows(mismatch.with_columns(pl.format("{} (cohort: {})", "split", "_cohort").alias("split")), pl.lit(True),
               "split differs from the image's split in the cohort", "split", file)


def _targets(long: pl.DataFrame, policy: str | None) -> pl.DataFrame:
    """y_true from raw labels under ``policy`` (engine.data.labels), per pathology; without one, as given."""
    if policy is None:
        return long.rename({"y_raw": "y_true"})
    parts = [part.with_columns(target_expr(pl.col("y_raw"), policy, pathology).alias("y_true")).drop("y_raw")
             for (pathology,), part in long.partition_by("pathology", as_dict=True).items()]
    return pl.concat(parts)


def _per_pathology(long: pl.DataFrame) -> dict:
    """Rows, summed weight, positives, negatives and unscored rows per pathology."""
    weight = pl.col("weight") if "weight" in long.columns else pl.lit(1.0)
    table = long.group_by("pathology").agg(
        pl.len().alias("rows"), weight.sum().alias("weight"), (pl.col("y_true") == 1).sum().alias("n_pos"),
        (pl.col("y_true") == 0).sum().alias("n_neg"), pl.col("y_true").is_null().sum().alias("not_scored"))
    return {row.pop("pathology"): row for row in table.sort("pathology").iter_rows(named=True)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run_info(run_id: str, run_info: dict | None, score_kind: str, policy: str | None, tags: dict[str, str] | None,
              path: Path, sha256: str, summary: dict) -> dict:
    """run.json content: model = run_id unless run_info says otherwise; provenance in tags and extra.import."""
    info = {"model": run_id, **(run_info or {})}
    for key, value in (("score_kind", score_kind), ("evaluation_label_policy", policy or "as-given")):
        if info.get(key, value) != value:
            raise DataError(f"run_info {key} {info[key]!r} contradicts the import option {value!r}", column=key)
        info[key] = value
    info["tags"] = {**(info.get("tags") or {}), **(tags or {}), "imported_from": str(path.resolve()),
                    "imported_sha256": sha256}
    info["extra"] = {**(info.get("extra") or {}), "import": summary}
    return info
