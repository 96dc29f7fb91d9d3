"""Train / validate / test assignment: the shipped upstream split file, or a seeded patient-level random split.

The upstream file (Gichoya et al. 2022, reused by Glocker et al. 2022; shared/notes/peers.md section 5a) has
columns ``(unnamed running number, index, split)`` where ``index`` is the 0-based row of CheXpert ``train.csv``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from engine.data.errors import DataError, example_rows
from engine.data.io import read_table, require_columns
from engine.data.schema import SPLITS

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_SPLIT = PROJECT_ROOT / "data" / "splits" / "chexpert_split_2021_08_20.csv"

# What the shipped split must give on the real CheXpert train.csv (paper section 3.3; peers.md 5a).
SHIPPED_SPLIT_EXPECTED = {
    "images": 127_118,
    "patients": 42_884,
    "train": 76_205,
    "validate": 12_673,
    "test": 38_240,
}

DEFAULT_RANDOM_FRACTIONS = (0.6, 0.1, 0.3)
# Upstream drew its split with np.random.seed(2021); we keep the number as the default seed (draws differ).
DEFAULT_RANDOM_SEED = 2021


def read_split_file(path: str | Path, *, n_rows: int) -> pl.DataFrame:
    """Read an upstream-format split file and check that its indices fit a train.csv of ``n_rows`` rows.

    Returns a frame ``(source_row: Int64, split: String)``.
    """
    frame = read_table(path, what="split file")
    require_columns(frame, ("index", "split"), file=path, what="split file")
    frame = frame.with_row_index("_row")
    index = frame["index"].cast(pl.Int64, strict=False)
    not_int = frame.filter(index.is_null())
    if not_int.height:
        raise DataError("split file index is not an integer", file=path, column="index",
                        rows=example_rows(not_int, "index"), n_bad=not_int.height)
    split = frame.with_columns(source_row=index).select("_row", "source_row", "split")
    outside = split.filter((pl.col("source_row") < 0) | (pl.col("source_row") >= n_rows))
    if outside.height:
        raise DataError(
            f"split file indices do not fit train.csv ({n_rows} rows, valid indices 0..{n_rows - 1})",
            file=path, column="index", rows=example_rows(outside, "source_row"), n_bad=outside.height,
            hint="is this split file meant for another train.csv (e.g. a different CheXpert release)?",
        )
    duplicated = split.filter(pl.col("source_row").is_duplicated())
    if duplicated.height:
        raise DataError("split file lists a train.csv row twice", file=path, column="index",
                        rows=example_rows(duplicated, "source_row"), n_bad=duplicated.height)
    unknown = split.filter(~pl.col("split").is_in(SPLITS) | pl.col("split").is_null())
    if unknown.height:
        raise DataError(f"split file has split values outside {', '.join(SPLITS)}", file=path, column="split",
                        rows=example_rows(unknown, "split"), n_bad=unknown.height)
    return split.drop("_row")


def random_patient_split(
    patient_ids: pl.Series, *, fractions: tuple[float, float, float] = DEFAULT_RANDOM_FRACTIONS,
    seed: int = DEFAULT_RANDOM_SEED,
) -> pl.DataFrame:
    """Seeded patient-level split: shuffle the sorted unique patients, cut by ``fractions`` (train, validate, test).

    Mirrors the upstream procedure (first round(f_train * n) patients to train, next round(f_val * n) to
    validate, the rest to test) with numpy's Generator instead of the legacy global seed.
    Returns ``(patient_id, split)``.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    patients = np.array(sorted(patient_ids.unique().drop_nulls().to_list()), dtype=object)
    shuffled = patients[np.random.default_rng(seed).permutation(len(patients))]
    n_train = round(fractions[0] * len(patients))
    n_val = round(fractions[1] * len(patients))
    labels = ["train"] * n_train + ["validate"] * n_val + ["test"] * (len(patients) - n_train - n_val)
    return pl.DataFrame({"patient_id": shuffled.tolist(), "split": labels}, schema={"patient_id": pl.String,
                                                                                      "split": pl.String})


def patients_in_several_splits(cohort: pl.DataFrame) -> pl.DataFrame:
    """Patients that appear in more than one split (a leak), with the splits they appear in."""
    return (
        cohort.group_by("patient_id")
        .agg(pl.col("split").unique().sort().alias("splits"))
        .filter(pl.col("splits").list.len() > 1)
        .sort("patient_id")
    )

