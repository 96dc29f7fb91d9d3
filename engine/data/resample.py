"""Glocker et al.'s demographically balanced, prevalence- and age-matched resampling of a test split.

Procedure (chexploration ``notebooks/chexpert.resample.ipynb``; shared/notes/peers.md section 5c):

b. draw ``sample_size_factor`` x N rows with replacement, row weight 1 / P(race): races equally frequent;
c. within each race subset of that sample (size n_r), redraw n_r rows, row weight P_test(y) / P_race(y);
d. within each (race, y) cell of the step-c sample, redraw the cell's count, row weight
   P_test(age_bin | y) / P_cell(age_bin).

P_test always comes from the original test rows; P_race and P_cell from the sample being redrawn (as upstream).
Upstream draws with ``torch.utils.data.WeightedRandomSampler(replacement=True)`` seeded 42; we draw with numpy
``Generator.choice(p=..., replace=True)``: the same distribution, not the same draws. The result is stored as
draw counts (weights) per image, never as copied rows.
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np
import polars as pl

from engine.data.errors import DataError
from engine.data.labels import apply_policy
from engine.data.schema import PATHOLOGIES

RESAMPLED_SET = "resampled"
GLOCKER_ORIGINAL_SET = "glocker-original"
DISEASE_COLUMN = "disease"
# Upstream bins a missing age into the oldest bin (``bin_age(NaN)`` falls through); we keep it as its own level.
UNKNOWN_AGE_BIN = "unknown"
SET_SCHEMA: dict[str, pl.DataType] = {
    "set": pl.String(),
    "pathology": pl.String(),
    "image_id": pl.String(),
    "weight": pl.Int64(),
}


class Coded(NamedTuple):
    """A column as integer codes 0..k-1 plus the sorted distinct values they stand for."""

    codes: np.ndarray
    levels: np.ndarray

    @property
    def k(self) -> int:
        return int(self.levels.size)


def encode(values: pl.Series) -> Coded:
    """Integer-code a null-free column (sorted levels, so codes do not depend on row order)."""
    levels = values.unique().sort()
    codes = values.replace_strict(levels, np.arange(levels.len(), dtype=np.int64), return_dtype=pl.Int64)
    return Coded(codes.to_numpy(), levels.to_numpy())


def shares(codes: np.ndarray, k: int) -> np.ndarray:
    """Share of each code 0..k-1 among ``codes`` (all zeros when ``codes`` is empty)."""
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    return counts / counts.sum() if counts.sum() > 0 else counts


def conditional_shares(given: np.ndarray, codes: np.ndarray, k_given: int, k: int) -> np.ndarray:
    """Matrix P(code | given): row g holds the share of each code among rows with ``given == g``."""
    joint = np.zeros((k_given, k), dtype=np.float64)
    np.add.at(joint, (given, codes), 1.0)
    totals = joint.sum(axis=1, keepdims=True)
    return np.divide(joint, totals, out=np.zeros_like(joint), where=totals > 0)


def race_balance_weights(race_codes: np.ndarray) -> np.ndarray:
    """Step b: per-row weight 1 / P(race) (upstream ``w_race``)."""
    observed = shares(race_codes, int(race_codes.max()) + 1)
    return 1.0 / observed[race_codes]


def ratio_weights(codes: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Steps c and d: per-row weight target(code) / observed share(code) within ``codes``.

    A code with target 0 gets weight 0 (never drawn); a code absent from ``codes`` simply cannot be drawn.
    """
    observed = shares(codes, target.size)
    return target[codes] / observed[codes]


def sampling_probabilities(weights: np.ndarray) -> np.ndarray:
    """Normalise row weights to draw probabilities (what WeightedRandomSampler does internally)."""
    total = weights.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("sampling weights sum to zero: no row can be drawn")
    return weights / total


def child_seed(seed: int, label: str) -> int:
    """A seed for one named set derived from ``seed``, independent of the order in which sets are built."""
    state = np.random.SeedSequence([seed, zlib.crc32(label.encode())]).generate_state(1)
    return int(state[0])


def _draw(rng: np.random.Generator, pool: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """Draw ``size`` members of ``pool`` with replacement, proportional to ``weights``."""
    picks = rng.choice(pool.size, size=size, replace=True, p=sampling_probabilities(weights))
    return pool[picks]


def _check_frame(frame: pl.DataFrame, y: str, sample_size_factor: int) -> None:
    """Reject what the procedure cannot handle: missing columns, no rows, null race or y, duplicate ids."""
    if not isinstance(sample_size_factor, int) or sample_size_factor < 1:
        raise ValueError(f"sample_size_factor must be a positive integer, got {sample_size_factor!r}")
    for column in ("image_id", "race", "age_bin", y):
        if column not in frame.columns:
            raise DataError("resampling input lacks a required column", column=column)
    if frame.height == 0:
        raise DataError(f"no rows to resample for {y!r} (empty test split, or every target null)", column=y)
    for column in ("image_id", "race", y):
        bad = frame.filter(pl.col(column).is_null())
        if bad.height:
            raise DataError("null values cannot be resampled", column=column,
                            rows=bad["image_id"].head(5).to_list(), n_bad=bad.height)
    dup = frame.filter(pl.col("image_id").is_duplicated())
    if dup.height:
        raise DataError("duplicate image_id", column="image_id", rows=dup["image_id"].head(5).to_list(),
                        n_bad=dup.height)


def _match_race(rng: np.random.Generator, pool: np.ndarray, y: Coded, age: Coded,
                p_y: np.ndarray, p_age_y: np.ndarray) -> list[np.ndarray]:
    """Steps c and d for one race's share ``pool`` of the step-b sample; returns the drawn rows per cell."""
    sub = _draw(rng, pool, ratio_weights(y.codes[pool], p_y), pool.size)  # step c
    cells = []
    for d in np.unique(y.codes[sub]):
        cell = sub[y.codes[sub] == d]
        cells.append(_draw(rng, cell, ratio_weights(age.codes[cell], p_age_y[d]), cell.size))  # step d
    return cells


def glocker_resample(frame: pl.DataFrame, y: str, *, seed: int, sample_size_factor: int = 3) -> pl.DataFrame:
    """Resample ``frame`` (one split) by Glocker's steps b-d for label column ``y``.

    Returns ``[image_id, weight]``: how often each image was drawn (weight > 0 only); weights sum to
    ``sample_size_factor * frame.height``. Rows are sorted by image_id first, so the draws do not depend on
    the input row order.
    """
    _check_frame(frame, y, sample_size_factor)
    frame = frame.sort("image_id")
    race = encode(frame["race"])
    y_coded = encode(frame[y])
    age = encode(frame["age_bin"].cast(pl.String).fill_null(UNKNOWN_AGE_BIN))
    p_y = shares(y_coded.codes, y_coded.k)  # P_test(y), from the original rows
    p_age_y = conditional_shares(y_coded.codes, age.codes, y_coded.k, age.k)  # P_test(age_bin | y)

    rng = np.random.default_rng(seed)
    rows = np.arange(frame.height)
    sample = _draw(rng, rows, race_balance_weights(race.codes), sample_size_factor * frame.height)  # step b
    drawn: list[np.ndarray] = []
    for r in np.unique(race.codes[sample]):
        drawn.extend(_match_race(rng, sample[race.codes[sample] == r], y_coded, age, p_y, p_age_y))
    counts = np.bincount(np.concatenate(drawn), minlength=frame.height)
    return (
        frame.select("image_id")
        .with_columns(weight=pl.Series(counts, dtype=pl.Int64))
        .filter(pl.col("weight") > 0)
    )


def disease_3class_expr() -> pl.Expr:
    """Glocker's 3-class label from raw values: Pleural Effusion == 1 wins over No Finding == 1, else Other.

    Raw ``== 1`` (chexploration ``chexpert.sample.ipynb``), so uncertain and blank count as Other whatever
    the evaluation policy.
    """
    return (
        pl.when(pl.col("Pleural Effusion") == 1.0)
        .then(pl.lit("Pleural Effusion"))
        .when(pl.col("No Finding") == 1.0)
        .then(pl.lit("No Finding"))
        .otherwise(pl.lit("Other"))
        .alias(DISEASE_COLUMN)
    )


def check_no_excluded(cohort: pl.DataFrame) -> None:
    """Sampling functions take a cohort whose excluded rows are already removed (and counted) by the caller."""
    if "excluded_reason" in cohort.columns:
        bad = cohort.filter(pl.col("excluded_reason").is_not_null())
        if bad.height:
            raise DataError("cohort still holds excluded rows; remove them first (subsets.drop_excluded)",
                            column="excluded_reason", rows=bad["image_id"].head(5).to_list(), n_bad=bad.height)


def evaluation_split(cohort: pl.DataFrame) -> pl.DataFrame:
    """The cohort's test rows; an empty test split is an error."""
    check_no_excluded(cohort)
    test = cohort.filter(pl.col("split") == "test")
    if test.height == 0:
        raise DataError("cohort has no test rows: nothing to resample", column="split")
    return test


def _as_set(weights: pl.DataFrame, name: str, pathology: str | None) -> pl.DataFrame:
    """Tag ``[image_id, weight]`` rows with the set name and pathology, in the subsets.parquet schema."""
    return weights.select(
        pl.lit(name, dtype=pl.String).alias("set"),
        pl.lit(pathology, dtype=pl.String).alias("pathology"),
        "image_id",
        "weight",
    )


def per_pathology_test_sets(cohort: pl.DataFrame, *, policy: str = "u-zeros", seed: int = 42,
                            sample_size_factor: int = 3) -> pl.DataFrame:
    """One resampled test set per pathology (paper 3.3), y = that pathology's target under ``policy``.

    Rows whose target is null (policy ``ignore``: uncertain labels are not scored) are left out of that
    pathology's set; the summary counts them. Each pathology gets its own child seed of ``seed``.
    """
    targets = apply_policy(evaluation_split(cohort), policy)
    sets = []
    for pathology in PATHOLOGIES:
        frame = targets.select("image_id", "race", "age_bin", pathology).drop_nulls(pathology)
        weights = glocker_resample(frame, pathology, seed=child_seed(seed, pathology),
                                   sample_size_factor=sample_size_factor)
        sets.append(_as_set(weights, RESAMPLED_SET, pathology))
    return pl.concat(sets)


def glocker_original_set(cohort: pl.DataFrame, *, seed: int = 42, sample_size_factor: int = 3) -> pl.DataFrame:
    """Glocker's original resampled test set: y = the 3-class disease label, ``seed`` used as given."""
    frame = evaluation_split(cohort).select("image_id", "race", "age_bin", disease_3class_expr())
    weights = glocker_resample(frame, DISEASE_COLUMN, seed=seed, sample_size_factor=sample_size_factor)
    return _as_set(weights, GLOCKER_ORIGINAL_SET, None)
