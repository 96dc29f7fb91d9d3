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

from engine.data.chexpert import normalise_image_id
from engine.data.errors import DataError, OutputExistsError
from engine.data.io import read_table, require_columns
from engine.data.labels import LABEL_POLICIES, target_expr
from engine.data.schema import PATHOLOGIES
from engine.metrics import store as st
from engine.metrics.store_schema import COHORT_FILE, COHORT_REQUIRED, NON_ATTRIBUTE_COLUMNS, SCORE_KINDS

DUPLICATE_MODES = ("error", "weight")
PLACEHOLDER = "{pathology}"
# Repeated inferences of one image on a GPU differ in the 7th significant digit (float32, non-deterministic kernels:
# the real cxr-foundation-bias sample differs by up to 1.7e-6); duplicates within this relative tolerance are "equal".
DEFAULT_SCORE_TOLERANCE = 1e-5
_KEY = ("split", "image_id", "pathology")
_CHEXPERT_PATIENT = r"(?:^|/)(patient\d+)/study\d+/"  # <folder>/patientNNNNN/studyN/viewN.jpg


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
    keys, split_note = _keys(raw, id_column, split_column, default_split, path)
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


def _examples(bad: pl.DataFrame, column: str, file: Path) -> list[str]:
    """Offending rows as CSV line numbers (header = line 1) or 0-based parquet rows, with the image id when known."""
    word, offset = _where(file)
    ids = bad["image_id"] if "image_id" in bad.columns and column != "image_id" else None
    return [f"{word} {row + offset}: " + (f"{ids[k]} " if ids is not None else "") + f"{column}={value!r}"
            for k, (row, value) in enumerate(bad.select("_row", column).head(5).iter_rows())]


def _where(file: Path) -> tuple[str, int]:
    """How rows are numbered in messages: 0-based parquet rows, or CSV lines (header = line 1)."""
    return ("row", 0) if file.name.lower().endswith(".parquet") else ("line", 2)


def _require(raw: pl.DataFrame, columns: list[str], file: Path, what: str = "predictions file") -> None:
    """require_columns on the input columns (without the row number added here)."""
    require_columns(raw.drop("_row", strict=False), columns, file=file, what=what)


def _fail_rows(raw: pl.DataFrame, mask: pl.Series | pl.Expr, problem: str, column: str, file: Path,
               hint: str | None = None) -> None:
    """Raise a DataError for the rows of ``raw`` where ``mask`` holds (nothing when none)."""
    bad = raw.filter(mask)
    if bad.height:
        raise DataError(problem, file=file, column=column, rows=_examples(bad, column, file), n_bad=bad.height,
                        hint=hint)


def _keys(raw: pl.DataFrame, id_column: str, split_column: str | None, default_split: str,
          file: Path) -> tuple[pl.DataFrame, str]:
    """``_row``, ``image_id`` (CheXpert release prefix removed) and ``split`` of every input row."""
    _require(raw, [id_column] + ([split_column] if split_column else []), file)
    image_id = normalise_image_id(pl.col(id_column).cast(pl.String))
    _fail_rows(raw, image_id.is_null() | (image_id == ""), "blank image id", id_column, file)
    if split_column is None:
        split, note = pl.lit(default_split), f"every row assigned split {default_split!r} (no split column)"
    else:
        split, note = pl.col(split_column).cast(pl.String).str.strip_chars(), f"column {split_column!r}"
        _fail_rows(raw, split.is_null() | (split == ""), "blank split (pass split_column=None / --split-column '' "
                   "to assign default_split to every row)", split_column, file)
    return raw.select("_row", image_id.alias("image_id"), split.alias("split")), note


def _numbers(raw: pl.DataFrame, column: str, file: Path) -> pl.Series:
    """A column as Float64 (strings stripped, blank = null); a value that is not a number is a DataError."""
    series = raw[column]
    if series.dtype == pl.String:
        text = series.str.strip_chars().replace("", None)
        parsed = text.cast(pl.Float64, strict=False)
        _fail_rows(raw, text.is_not_null() & parsed.is_null(), "not a number", column, file)
        return parsed
    if not (series.dtype.is_numeric() or series.dtype == pl.Boolean):
        raise DataError(f"column has type {series.dtype}; expected numbers", file=file, column=column)
    return series.cast(pl.Float64)


def _labels(raw: pl.DataFrame, column: str, policy: str | None, file: Path) -> pl.Series:
    """Raw labels: 1 / 0 / -1 / blank under a label policy, else already 0 / 1 / blank (blank = not scored)."""
    values = _numbers(raw, column, file)
    allowed = [1.0, 0.0, -1.0] if policy else [0.0, 1.0]
    problem = f"label outside {{1, 0, -1, blank}} (label policy {policy})" if policy else "label outside {0, 1, blank}"
    hint = None if policy else "raw CheXpert labels (1 / 0 / -1 / blank) need label_policy (--label-policy u-zeros)"
    _fail_rows(raw, values.is_not_null() & ~values.is_in(allowed).fill_null(False), problem, column, file, hint)
    return values


def _scores(raw: pl.DataFrame, column: str, file: Path) -> pl.Series:
    """Scores must be finite numbers: blank, NaN and infinity are errors."""
    values = _numbers(raw, column, file)
    _fail_rows(raw, ~values.is_finite().fill_null(False), "score is blank, NaN or infinite", column, file)
    return values


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
        _require(raw, list(found.values()), file, "predictions file (score columns)")
    elif not found:
        raise DataError(f"score pattern {score_pattern!r} matches no column", file=file, column=score_pattern,
                        hint=f"columns present: {', '.join(raw.columns[1:])}")
    columns = {p: {"score": s, "label": label_pattern.replace(PLACEHOLDER, p)} for p, s in found.items()}
    _require(raw, [c["label"] for c in columns.values()], file, "predictions file (label columns)")
    parts = [keys.with_columns(pathology=pl.lit(p), y_raw=_labels(raw, c["label"], policy, file),
                               y_score=_scores(raw, c["score"], file)) for p, c in columns.items()]
    return pl.concat(parts), columns, []


def _long(raw: pl.DataFrame, keys: pl.DataFrame, pathologies: list[str] | None, policy: str | None,
          file: Path) -> tuple[pl.DataFrame, dict, list]:
    """Long rows; with ``pathologies`` the other pathologies' rows are removed and counted."""
    _require(raw, ["pathology", "y_true", "y_score"], file)
    pathology = pl.col("pathology").cast(pl.String).str.strip_chars()
    _fail_rows(raw, pathology.is_null() | (pathology == ""), "blank pathology", "pathology", file)
    extra = {"weight": _numbers(raw, "weight", file)} if "weight" in raw.columns else {}
    long = keys.with_columns(pathology=raw.select(pathology).to_series(), y_raw=_labels(raw, "y_true", policy, file),
                             y_score=_scores(raw, "y_score", file), **extra)
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
        word, offset = _where(file)
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
                            rows=_examples(bad, f"{kind}s", file))
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
    _fail_rows(missing, pl.lit(True), f"image id not in the cohort ({source})", id_column, file,
               hint=f"ids are compared without the CheXpert-v1.0[-small]/ prefix; cohort ids look like "
                    f"{cohort['image_id'].head(2).to_list()}")
    mismatch = joined.filter(pl.col("split") != pl.col("_cohort"))
    _fail_rows(mismatch.with_columns(pl.format("{} (cohort: {})", "split", "_cohort").alias("split")), pl.lit(True),
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
    _require(frame, list(COHORT_REQUIRED), path, "cohort file")
    labels = [p for p in PATHOLOGIES if p in frame.columns]  # a CSV holds raw labels as text: numbers, not attributes
    frame = frame.with_columns(normalise_image_id(pl.col("image_id").cast(pl.String)),
                               *[_numbers(frame, p, path).alias(p) for p in labels]).drop("_row")
    st.validate_cohort(frame, file=path)
    return frame


def _cohort_from_predictions(keys: pl.DataFrame, raw: pl.DataFrame, attributes: list[str],
                             patient_column: str | None, file: Path) -> tuple[pl.DataFrame, dict]:
    """One cohort row per image: image_id, patient_id, split and the attribute columns (as strings)."""
    _require(raw, attributes + ([patient_column] if patient_column else []), file, "predictions file (cohort columns)")
    reserved = [a for a in attributes if a in NON_ATTRIBUTE_COLUMNS]
    if reserved:
        raise DataError(f"{', '.join(reserved)} cannot be an attribute (reserved: ids, split, raw age ...); bin or "
                        "rename it", file=file, column=reserved[0])
    text = {a: pl.col(a).cast(pl.String).str.strip_chars() for a in dict.fromkeys(attributes)}
    if patient_column:
        text["_patient"] = pl.col(patient_column).cast(pl.String).str.strip_chars()
        _fail_rows(raw, text["_patient"].is_null() | (text["_patient"] == ""), "blank patient id", patient_column, file)
    table = keys.hstack(raw.select(expr.alias(name) for name, expr in text.items()))
    note = f"column {patient_column!r}"
    if not patient_column:  # CheXpert paths name the patient; any other id stands for itself
        derived = pl.col("image_id").str.extract(_CHEXPERT_PATIENT, 1)
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
                        rows=_examples(bad.rename({"_patient": "patient_id"}), column, file),
                        n_bad=clashing["image_id"].n_unique())
    st.validate_cohort(cohort, file=file)
    nulls = {a: cohort[a].null_count() for a in attributes}
    return cohort, {"source": f"predictions file columns {', '.join(attributes)}", "patient_id": note,
                    "attribute_nulls": nulls}
