"""The images and 14 targets of one split for training or scoring, read from the cohort (torch-free).

Every row a filter removes is counted and returned in ``SplitTable.removed`` (images flagged by the image cache,
images outside the balanced set, the ``max_images`` cap), so the stage can report it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from engine.data.errors import DataError
from engine.data.io import read_table, require_columns
from engine.data.labels import apply_policy
from engine.data.schema import PATHOLOGIES

BALANCED_SETS = {"train": "balanced-train", "validate": "balanced-validate"}


@dataclass(frozen=True)
class SplitTable:
    split: str
    image_ids: list[str]
    targets: np.ndarray  # [N, 14] float32; NaN = masked (the 'ignore' policy's uncertain labels)
    removed: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_ids)


def read_cohort_for_training(path: str | Path) -> pl.DataFrame:
    """The prepared cohort with the columns training needs (DataError naming the file and columns otherwise)."""
    cohort = read_table(path, what="cohort")
    require_columns(cohort, ("image_id", "patient_id", "split", *PATHOLOGIES), file=path, what="cohort")
    return cohort


def _balanced_ids(subsets_path: str | Path | None, set_name: str) -> pl.DataFrame:
    if subsets_path is None:
        raise DataError(f"balanced training needs the subsets file (data.subsets) holding the {set_name!r} set")
    sets = read_table(subsets_path, what="subsets")
    require_columns(sets, ("set", "image_id", "weight"), file=subsets_path, what="subsets")
    chosen = sets.filter(pl.col("set") == set_name).select("image_id", "weight")
    if chosen.is_empty():
        raise DataError(f"no rows of set {set_name!r}; rerun the subsets stage", file=subsets_path, column="set")
    return chosen


def split_table(cohort: pl.DataFrame, split: str, policy: str, *, balanced: bool = False,
                subsets_path: str | Path | None = None, max_images: int | None = None) -> SplitTable:
    """Images of ``split`` with targets under label ``policy``; ``balanced`` restricts to the balanced set."""
    rows = cohort.filter(pl.col("split") == split)
    removed: dict[str, int] = {}
    if "excluded_reason" in rows.columns:
        excluded = rows.filter(pl.col("excluded_reason").is_not_null()).height
        rows = rows.filter(pl.col("excluded_reason").is_null())
        if excluded:
            removed["excluded by the image cache (bad image)"] = excluded
    if balanced:
        chosen = _balanced_ids(subsets_path, BALANCED_SETS[split])
        before = rows.height
        # weights are draw counts (issue A): an image drawn k times is repeated k times, never re-weighted
        rows = rows.join(chosen, on="image_id", how="inner").select(pl.exclude("weight").repeat_by(pl.col("weight"))
                                                                    ).explode(pl.all())
        removed[f"not in the {BALANCED_SETS[split]} set"] = before - rows["image_id"].n_unique()
    if max_images is not None and rows.height > max_images:
        removed["beyond data.max_images"] = rows.height - max_images
        rows = rows.head(max_images)
    if rows.is_empty():
        raise DataError(f"no images left in split {split!r}", column="split")
    targets = apply_policy(rows.select(PATHOLOGIES), policy).to_numpy().astype(np.float32)  # null -> NaN
    return SplitTable(split, rows["image_id"].to_list(), targets, removed)
