"""Build the CheXpert cohort without opening any image (``run_experiments.py prepare chexpert``).

Order of operations follows the upstream notebooks (shared/notes/peers.md sections 5a and 5b):
split file -> join demographics on patient id -> race mapping -> non-Hispanic filter -> frontal filter ->
AP/PA filter. With the shipped split and the real files every filter after the split is a no-op; each one is
still applied and counted so that other inputs are handled the same way.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from engine.data.chexpert import read_chexpert_csv, read_demographics
from engine.data.errors import DataError
from engine.data.filter_log import FilterLog
from engine.data.schema import (
    AGE_BIN_LABELS,
    AGE_BIN_UPPER_EDGES,
    COHORT_ID_COLUMNS,
    ETHNICITIES_KEPT,
    FRONTAL,
    OFFICIAL_VALID_SPLIT,
    PATHOLOGIES,
    POSITIONS_KEPT,
    RACE_SUBSTRINGS,
)
from engine.data.splits import (
    DEFAULT_RANDOM_FRACTIONS,
    DEFAULT_RANDOM_SEED,
    SHIPPED_SPLIT,
    SHIPPED_SPLIT_EXPECTED,
    patients_in_several_splits,
    random_patient_split,
    read_split_file,
)


def race_expr(primary_race: pl.Expr) -> pl.Expr:
    """PRIMARY_RACE -> White / Asian / Black by substring; a later rule overwrites an earlier one (peers.md 5a)."""
    expr = pl.lit(None, dtype=pl.String)
    for needle, value in RACE_SUBSTRINGS:  # applied in order, so the last match wins
        expr = pl.when(primary_race.str.contains(needle, literal=True)).then(pl.lit(value)).otherwise(expr)
    return expr


def age_bin_expr(age: pl.Expr) -> pl.Expr:
    """Age -> bin label with upper edges <=20, <=30, ..., <=80, >80 (chexploration resampling notebook)."""
    expr = pl.lit(AGE_BIN_LABELS[-1])
    for edge, label in reversed(list(zip(AGE_BIN_UPPER_EDGES, AGE_BIN_LABELS, strict=False))):
        expr = pl.when(age <= edge).then(pl.lit(label)).otherwise(expr)
    return pl.when(age.is_null()).then(pl.lit(None, dtype=pl.String)).otherwise(expr)


def build_chexpert_cohort(
    train_csv: str | Path,
    demographics: str | Path,
    *,
    split: str | Path | None = None,
    valid_csv: str | Path | None = None,
    fractions: tuple[float, float, float] = DEFAULT_RANDOM_FRACTIONS,
    seed: int = DEFAULT_RANDOM_SEED,
    allow_missing_demographics: bool = False,
) -> tuple[pl.DataFrame, dict]:
    """Return ``(cohort, report)``.

    ``split``: None for the shipped upstream split file, a path to a file in the same format, or ``"random"``
    for a seeded patient-level split with ``fractions`` (train, validate, test) drawn after the filters.
    ``valid_csv``: the official CheXpert ``valid.csv``; its images are added with split ``official_valid``
    (an external check set, never used for training or checkpoint selection).
    """
    split_path = SHIPPED_SPLIT if split is None else (None if str(split) == "random" else Path(split))
    demo, demo_duplicates = read_demographics(demographics)
    frame = read_chexpert_csv(train_csv)
    log = FilterLog(frame.height)
    if split_path is not None:
        assignment = read_split_file(split_path, n_rows=frame.height)
        frame = frame.join(assignment, on="source_row", how="left")
        frame = log.apply(frame, pl.col("split").is_not_null(), step="split file",
                          reason=f"train.csv row not listed in {split_path.name}")
    frame = _demographic_and_view_filters(frame, demo, log, demographics, allow_missing_demographics)
    if split_path is None:
        frame = frame.join(random_patient_split(frame["patient_id"], fractions=fractions, seed=seed),
                           on="patient_id", how="left")
    cohort = _finalise(frame)
    sources = {"train_csv": str(train_csv), "demographics": str(demographics),
               "split": str(split_path) if split_path else f"random patient split {fractions}, seed {seed}",
               "demographics_exact_duplicates_removed": demo_duplicates}
    filters = {"train.csv": log.as_dict(cohort.height)}
    if valid_csv is not None:
        valid = read_chexpert_csv(valid_csv)
        valid_log = FilterLog(valid.height)
        valid = _demographic_and_view_filters(valid, demo, valid_log, demographics, allow_missing_demographics)
        valid = _finalise(valid.with_columns(split=pl.lit(OFFICIAL_VALID_SPLIT)))
        filters["valid.csv"] = valid_log.as_dict(valid.height)
        sources["valid_csv"] = str(valid_csv)
        cohort = pl.concat([cohort, valid])
    _check_no_patient_leak(cohort)
    checks = _check_shipped_counts(cohort) if split_path == SHIPPED_SPLIT else {}
    return cohort, {"sources": sources, "filters": filters, "checks": checks}


def _demographic_and_view_filters(frame: pl.DataFrame, demo: pl.DataFrame, log: FilterLog,
                                  demographics: str | Path, allow_missing: bool) -> pl.DataFrame:
    """Join demographics, then the race, ethnicity, frontal and AP/PA filters, each counted."""
    frame = frame.join(demo, on="patient_id", how="left")
    absent = frame.filter(pl.col("primary_race").is_null() & ~pl.col("patient_id").is_in(demo["patient_id"].implode()))
    if absent.height and not allow_missing:
        patients = absent["patient_id"].unique(maintain_order=True)
        raise DataError(
            f"{patients.len()} patient(s) of train.csv are absent from the demographics file",
            file=demographics, column="PATIENT", rows=patients.head(5).to_list(), n_bad=patients.len(),
            hint="pass --allow-missing-demographics to exclude their images (counted in the cohort report)",
        )
    frame = log.apply(frame, pl.col("patient_id").is_in(demo["patient_id"].implode()), step="demographics",
                      reason="patient absent from the demographics file")
    frame = frame.with_columns(race_expr(pl.col("primary_race")).alias("race"))
    frame = log.apply(frame, pl.col("race").is_not_null(), step="race", breakdown="primary_race",
                      reason="PRIMARY_RACE contains none of White / Asian / Black")
    frame = log.apply(frame, pl.col("ethnicity").is_in(sorted(ETHNICITIES_KEPT)), step="ethnicity",
                      breakdown="ethnicity", reason="ETHNICITY not non-Hispanic")
    frame = log.apply(frame, pl.col("view") == FRONTAL, step="frontal", breakdown="view",
                      reason="not a frontal view")
    return log.apply(frame, pl.col("position").is_in(sorted(POSITIONS_KEPT)), step="AP/PA",
                     breakdown="position", reason="frontal view with a position other than AP or PA")


def _finalise(frame: pl.DataFrame) -> pl.DataFrame:
    """Contract column order and types (engine/data/schema.py COHORT_ID_COLUMNS, then the raw labels)."""
    frame = frame.with_columns(
        pl.lit("chexpert").alias("dataset"),
        age_bin_expr(pl.col("age")).alias("age_bin"),
    )
    return frame.select("dataset", *COHORT_ID_COLUMNS, "source_row", *PATHOLOGIES).sort("split", "source_row")


def _check_no_patient_leak(cohort: pl.DataFrame) -> None:
    leaks = patients_in_several_splits(cohort)
    if leaks.height:
        examples = [f"{p}: {', '.join(s)}" for p, s in leaks.head(5).iter_rows()]
        raise DataError("patients appear in more than one split (a train/test leak)", column="split",
                        rows=examples, n_bad=leaks.height)


def _check_shipped_counts(cohort: pl.DataFrame) -> dict:
    """Compare with the published counts of the shipped split; mismatches are reported, loudly, by the caller."""
    main = cohort.filter(pl.col("split") != OFFICIAL_VALID_SPLIT)
    observed = {"images": main.height, "patients": main["patient_id"].n_unique()}
    observed |= {s: main.filter(pl.col("split") == s).height for s in ("train", "validate", "test")}
    mismatches = {k: {"expected": v, "observed": observed[k]} for k, v in SHIPPED_SPLIT_EXPECTED.items()
                  if observed[k] != v}
    return {"shipped_split_expected": SHIPPED_SPLIT_EXPECTED, "observed": observed, "mismatches": mismatches,
            "ok": not mismatches}
