"""Race-balanced fine-tuning set (paper section 4.3), undersampled without replacement.

Paper 4.3: "we construct a balanced set by resampling [the training set] so that each of the racial subgroups
have the same number of instances as the minority subgroup. Since the majority subgroup (White) is the most
unbalanced in terms of sex, via undersampling from this group, we also ensure that the resulting dataset is more
balanced across sex." Our reading: the unit is an image; every race keeps exactly the minority race's image
count; White is drawn half Male, half Female (as far as available); Asian and Black are drawn without regard to
sex. White images of "Unknown" sex cannot be placed in either half and are left out (and counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from engine.data.errors import DataError
from engine.data.resample import check_no_excluded, child_seed
from engine.data.schema import RACES, SEXES

SEX_BALANCED_RACE = "White"


@dataclass(frozen=True)
class BalancedSet:
    """The chosen images of one split and the facts the summary reports about them."""

    rows: pl.DataFrame  # image_id, race, sex; sorted by image_id; one row per image
    split: str
    per_race: int  # images kept per race = the minority race's eligible image count
    minority_race: str
    n_unknown_sex_white: int  # White images of Unknown sex, left out before sampling

    def as_set(self, name: str) -> pl.DataFrame:
        """Rows in the subsets.parquet schema (weight 1: each image once)."""
        return self.rows.select(
            pl.lit(name, dtype=pl.String).alias("set"),
            pl.lit(None, dtype=pl.String).alias("pathology"),
            "image_id",
            pl.lit(1, dtype=pl.Int64).alias("weight"),
        )


def sex_targets(n_male: int, n_female: int, total: int) -> tuple[int, int]:
    """(male, female) counts summing to ``total``: half each (Male gets an odd one), topped up from the
    other sex when one runs short. Requires ``n_male + n_female >= total``."""
    if n_male + n_female < total:
        raise ValueError(f"cannot draw {total} images from {n_male} male + {n_female} female")
    female = min(n_female, total // 2)
    male = min(n_male, total - female)
    female = min(n_female, total - male)
    return male, female


def _pick(rng: np.random.Generator, group: pl.DataFrame, k: int) -> pl.DataFrame:
    """``k`` rows of ``group`` without replacement (``group`` sorted by image_id, so order-independent)."""
    index = np.sort(rng.choice(group.height, size=k, replace=False))
    return group[index]


def _sex_balanced(rng: np.random.Generator, group: pl.DataFrame, k: int) -> pl.DataFrame:
    """``k`` rows of ``group`` split between Male and Female by ``sex_targets``."""
    male = group.filter(pl.col("sex") == "Male")
    female = group.filter(pl.col("sex") == "Female")
    n_male, n_female = sex_targets(male.height, female.height, k)
    return pl.concat([_pick(rng, male, n_male), _pick(rng, female, n_female)])


def _split_rows(cohort: pl.DataFrame, split: str) -> pl.DataFrame:
    """The split's ``image_id, race, sex`` rows sorted by image_id; no rows or an unknown race is an error."""
    check_no_excluded(cohort)
    rows = cohort.filter(pl.col("split") == split).select("image_id", "race", "sex").sort("image_id")
    if rows.height == 0:
        raise DataError(f"cohort has no {split!r} rows: nothing to balance", column="split")
    bad = rows.filter(~pl.col("race").is_in(RACES) | pl.col("race").is_null())
    if bad.height:
        raise DataError(f"race outside {', '.join(RACES)}", column="race", n_bad=bad.height,
                        rows=[f"{i}: {r}" for i, r in bad.select("image_id", "race").head(5).iter_rows()])
    return rows


def balanced_set(cohort: pl.DataFrame, *, split: str = "train", seed: int = 42) -> BalancedSet:
    """Undersample ``split`` so every race has the minority race's image count; White sex-balanced."""
    rows = _split_rows(cohort, split)
    unknown_white = (pl.col("race") == SEX_BALANCED_RACE) & ~pl.col("sex").is_in(SEXES).fill_null(False)
    n_unknown = rows.filter(unknown_white).height
    eligible = rows.filter(~unknown_white)
    counts = {race: eligible.filter(pl.col("race") == race).height for race in RACES}
    empty = [race for race, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"race(s) {', '.join(empty)} have no eligible {split!r} images: cannot balance",
                        column="race")
    minority = min(RACES, key=lambda race: counts[race])  # first in RACES order on a tie
    rng = np.random.default_rng(child_seed(seed, f"balanced-{split}"))
    chosen = []
    for race in RACES:
        group = eligible.filter(pl.col("race") == race)
        draw = _sex_balanced if race == SEX_BALANCED_RACE else _pick
        chosen.append(draw(rng, group, counts[minority]))
    return BalancedSet(pl.concat(chosen).sort("image_id"), split, counts[minority], minority, n_unknown)
