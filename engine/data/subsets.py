"""Evaluation and training subsets of a cohort (``run_experiments.py subsets``) and their composition report.

Writes ONE parquet of ``(set, pathology, image_id, weight)`` rows beside the cohort (weights are draw counts,
never copied rows; shared/design/ARCHITECTURE.md "evaluation sets") and a JSON summary of every set:

- ``resampled`` x 14 pathologies: Glocker's resampling of the test split per pathology (paper 3.3);
- ``glocker-original``: Glocker's resampling with the 3-class disease label (peers.md 5c);
- ``balanced-train`` / ``balanced-validate``: race-balanced undersampling (paper 4.3).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import polars as pl

from engine.data.balance import SEX_BALANCED_RACE, BalancedSet, balanced_set
from engine.data.cohort_report import add_subsets_to_report
from engine.data.errors import DataError, keyed_examples
from engine.data.io import check_output, read_table, require_columns, write_json, write_parquet
from engine.data.labels import DEFAULT_EVALUATION_POLICY, apply_policy, uncertain_value
from engine.data.resample import (
    DISEASE_COLUMN,
    GLOCKER_ORIGINAL_SET,
    RESAMPLED_SET,
    SET_SCHEMA,
    UNKNOWN_AGE_BIN,
    disease_3class_expr,
    glocker_original_set,
    per_pathology_test_sets,
)
from engine.data.schema import AGE_BIN_LABELS, COHORT_SPLITS, PATHOLOGIES, RACES, RAW_LABEL_VALUES, SEX_VALUES_ALLOWED

REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", "split", "race", "sex", "age_bin", *PATHOLOGIES)
BALANCED_SPLITS: tuple[str, ...] = ("train", "validate")
SAMPLER_NOTE = (
    "numpy Generator.choice(p=normalised weights, replace=True); upstream used torch WeightedRandomSampler "
    "seeded 42: same distribution, different draws, so set compositions match upstream only statistically"
)
DOES_NOT_BALANCE: tuple[str, ...] = (
    "resampled and glocker-original: sex is not balanced (neither overall nor within race)",
    "resampled: only the named pathology's prevalence is matched within race; the other 13 keep whatever "
    "prevalence the draw gives",
    "glocker-original: only the 3-class No Finding / Pleural Effusion / Other prevalence is matched",
    "resampled sets match age_bin within each (race, y) cell only; age within sex is not controlled",
    "resampled weights are draw counts: minority-race images repeat (about 14x for Black on the real split); "
    "a bootstrap must resample images, not draws",
    "balanced sets: race counts are equal and White is sex-balanced; sex of Asian and Black, age and every "
    "pathology's prevalence are left as drawn",
)


def _check_values(cohort: pl.DataFrame, column: str, allowed: Collection[object], *, file: Path | None,
                  nullable: bool = False) -> None:
    """Every value of ``column`` is in ``allowed`` (or null where ``nullable``)."""
    ok = pl.col(column).is_in(list(allowed)).fill_null(False)
    if nullable:
        ok = ok | pl.col(column).is_null()
    bad = cohort.filter(~ok)
    if bad.height:
        raise DataError(f"unexpected values; allowed: {sorted(map(str, allowed))}" + (" or null" if nullable else ""),
                        file=file, column=column, rows=keyed_examples(bad, column), n_bad=bad.height)


def _cast_labels(cohort: pl.DataFrame, *, file: Path | None) -> pl.DataFrame:
    """Cast the pathology columns to Float64, naming the first column with non-numeric values."""
    for pathology in PATHOLOGIES:
        cast = pl.col(pathology).cast(pl.Float64, strict=False)
        bad = cohort.filter(cast.is_null() & pl.col(pathology).is_not_null())
        if bad.height:
            raise DataError("label is not a number", file=file, column=pathology,
                            rows=keyed_examples(bad, pathology), n_bad=bad.height)
    return cohort.with_columns(pl.col(p).cast(pl.Float64, strict=False) for p in PATHOLOGIES)


def validate_cohort(cohort: pl.DataFrame, *, file: Path | None = None) -> pl.DataFrame:
    """Check the columns and values the subsets need; return the cohort with Float64 labels."""
    require_columns(cohort, REQUIRED_COLUMNS, file=file or "<in-memory cohort>", what="cohort")
    cohort = _cast_labels(cohort, file=file)
    null_ids = cohort.filter(pl.col("image_id").is_null()).height
    if null_ids:
        raise DataError("null image_id", file=file, column="image_id", n_bad=null_ids)
    dup = cohort.filter(pl.col("image_id").is_duplicated())
    if dup.height:
        raise DataError("duplicate image_id", file=file, column="image_id",
                        rows=dup["image_id"].unique(maintain_order=True).head(5).to_list(), n_bad=dup.height)
    _check_values(cohort, "split", COHORT_SPLITS, file=file)
    _check_values(cohort, "race", RACES, file=file)
    _check_values(cohort, "sex", SEX_VALUES_ALLOWED, file=file)
    _check_values(cohort, "age_bin", AGE_BIN_LABELS, file=file, nullable=True)
    for pathology in PATHOLOGIES:
        _check_values(cohort, pathology, RAW_LABEL_VALUES, file=file, nullable=True)
    return cohort


def drop_excluded(cohort: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """Remove rows with a non-null ``excluded_reason`` (image cache: bad images); return counts per reason."""
    if "excluded_reason" not in cohort.columns:
        return cohort, {}
    excluded = cohort.filter(pl.col("excluded_reason").is_not_null())
    counts = excluded.group_by("excluded_reason").len().sort("excluded_reason")
    return cohort.filter(pl.col("excluded_reason").is_null()), dict(counts.iter_rows())


def _by(frame: pl.DataFrame, *keys: str) -> dict:
    """Summed weight per value of ``keys`` (nested one level per key), values as strings, sorted."""
    grouped = frame.group_by(keys).agg(pl.col("weight").sum()).sort(keys, nulls_last=True)
    out: dict = {}
    for *names, total in grouped.iter_rows():
        node = out
        for name in names[:-1]:
            node = node.setdefault(str(name), {})
        node[str(names[-1])] = int(total)
    return out


def _shares(counts: dict[str, int]) -> dict[str, float]:
    """Counts as shares of their sum, rounded for the report."""
    total = sum(counts.values())
    return {key: round(value / total, 6) if total else 0.0 for key, value in counts.items()}


def _composition(joined: pl.DataFrame) -> dict:
    """Size, total weight, weighted counts per race and per sex, and distinct images per race."""
    return {
        "n_rows": joined.height,
        "total_weight": int(joined["weight"].sum()),
        "weight_max": int(joined["weight"].max() or 0),
        "by_race": _by(joined, "race"),
        "images_by_race": _by(joined.with_columns(weight=pl.lit(1)), "race"),  # distinct images, not draws
        "by_sex": _by(joined, "sex"),
    }


def _unmatched(by_race_y: dict[str, dict[str, int]], target: dict[str, float]) -> list[dict]:
    """Races whose y-distribution could not be matched to the test split's (degenerate cases)."""
    out = []
    for race in RACES:
        got = by_race_y.get(race, {})
        if not got:
            out.append({"race": race, "problem": "race absent from the resampling input"})
            continue
        missing = [y for y, share in target.items() if share > 0 and got.get(y, 0) == 0]
        if missing:
            out.append({"race": race, "missing_y": missing, "problem": (
                "no test image of this class in this race: its share cannot be matched; the race's draws go to "
                "the classes it has, in proportion to their test shares")})
    return out


def _age_tv(joined: pl.DataFrame, source: pl.DataFrame) -> dict:
    """Total variation distance between each (race, y) cell's weighted age_bin mix and P_test(age_bin | y)."""
    age = pl.col("age_bin").fill_null(UNKNOWN_AGE_BIN).alias("age_bin")
    target = source.group_by("y", age).len().select(
        "y", "age_bin", p_test=pl.col("len") / pl.col("len").sum().over("y"))
    observed = joined.group_by("race", "y", age).agg(pl.col("weight").sum()).select(
        "race", "y", "age_bin", p_set=pl.col("weight") / pl.col("weight").sum().over("race", "y"))
    grid = observed.select("race", "y").unique().join(target, on="y").join(
        observed, on=["race", "y", "age_bin"], how="left")
    tv = grid.group_by("race", "y").agg(
        tv=0.5 * (pl.col("p_test") - pl.col("p_set").fill_null(0.0)).abs().sum()).sort("race", "y")
    by_cell: dict[str, dict[str, float]] = {}
    for race, y, value in tv.iter_rows():
        by_cell.setdefault(race, {})[y] = round(value, 6)
    # A bin the cell has no image in cannot be drawn: its P_test mass goes to the cell's other bins.
    missing = grid.filter(pl.col("p_set").is_null()).group_by("race", "y").agg(
        pl.col("age_bin").sort().alias("age_bins"), p_test_missing=pl.col("p_test").sum().round(6)).sort("race", "y")
    return {"age_tv_max": round(float(tv["tv"].max() or 0.0), 6), "age_tv_by_race_y": by_cell,
            "age_bins_unmatched": missing.to_dicts()}


def _resampled_summary(rows: pl.DataFrame, source: pl.DataFrame) -> dict:
    """Composition of one resampled set; ``source`` = test rows with columns race, sex, age_bin, y."""
    n_null = source["y"].null_count()
    source = source.drop_nulls("y")
    joined = rows.select("image_id", "weight").join(source, on="image_id", how="left")
    target = _shares({str(y): n for y, n in source.group_by("y").len().sort("y").iter_rows()})
    by_race_y = _by(joined, "race", "y")
    unmatched = _unmatched(by_race_y, target)
    return {
        **_composition(joined),
        "n_source_rows": source.height,
        "n_null_target_removed": n_null,
        "by_race_y": by_race_y,
        "y_share_test": target,
        "y_share_by_race": {race: _shares(counts) for race, counts in by_race_y.items()},
        "n_unmatched": len(unmatched),
        "unmatched": unmatched,
        **_age_tv(joined, source),
    }


def _resampled_entries(cohort: pl.DataFrame, sets: pl.DataFrame, policy: str) -> list[dict]:
    """Summary entries of the 14 per-pathology sets and of glocker-original."""
    test = cohort.filter(pl.col("split") == "test")
    targets = apply_policy(test, policy)
    base = ("image_id", "race", "sex", "age_bin")
    entries = []
    for pathology in PATHOLOGIES:
        source = targets.select(*base, y=pl.col(pathology).cast(pl.Int8).cast(pl.String))
        rows = sets.filter((pl.col("set") == RESAMPLED_SET) & (pl.col("pathology") == pathology))
        entry = _resampled_summary(rows, source)
        entry["prevalence_by_race"] = {race: shares.get("1", 0.0) for race, shares in entry["y_share_by_race"].items()}
        entries.append({"set": RESAMPLED_SET, "pathology": pathology, **entry})
    source = test.select(*base, disease_3class_expr().alias("y"))
    rows = sets.filter(pl.col("set") == GLOCKER_ORIGINAL_SET)
    entries.append({"set": GLOCKER_ORIGINAL_SET, "pathology": None, "y": DISEASE_COLUMN,
                    **_resampled_summary(rows, source)})
    return entries


def _balanced_summary(balanced: BalancedSet, cohort: pl.DataFrame, policy: str) -> dict:
    """Composition of one balanced set, with each pathology's prevalence per race under ``policy``."""
    targets = apply_policy(cohort.filter(pl.col("split") == balanced.split), policy)
    joined = balanced.rows.select("image_id", weight=pl.lit(1, dtype=pl.Int64)).join(
        targets, on="image_id", how="left")
    means = joined.group_by("race").agg(pl.col(p).mean() for p in PATHOLOGIES).sort("race")
    prevalence = {p: {race: round(value, 6) for race, value in means.select("race", p).iter_rows()
                      if value is not None} for p in PATHOLOGIES}
    return {
        **_composition(joined),
        "split": balanced.split,
        "n_source_rows": targets.height,
        "per_race": balanced.per_race,
        "minority_race": balanced.minority_race,
        "sex_balanced_race": SEX_BALANCED_RACE,
        "n_unknown_sex_white_excluded": balanced.n_unknown_sex_white,
        "by_race_sex": _by(joined, "race", "sex"),
        "prevalence_policy": policy,
        "prevalence_by_race": prevalence,
    }


def _balanced_sets(cohort: pl.DataFrame, *, seed: int, policy: str) -> tuple[list[pl.DataFrame], list[dict]]:
    """balanced-train and balanced-validate; a split with no rows is skipped and noted, not an error."""
    frames, entries = [], []
    for split in BALANCED_SPLITS:
        name = f"balanced-{split}"
        if cohort.filter(pl.col("split") == split).height == 0:
            entries.append({"set": name, "pathology": None, "skipped": f"cohort has no {split!r} rows"})
            continue
        balanced = balanced_set(cohort, split=split, seed=seed)
        frames.append(balanced.as_set(name))
        entries.append({"set": name, "pathology": None, **_balanced_summary(balanced, cohort, policy)})
    return frames, entries


def make_subsets(cohort: pl.DataFrame, *, seed: int = 42, sample_size_factor: int = 3,
                 evaluation_policy: str = DEFAULT_EVALUATION_POLICY) -> tuple[pl.DataFrame, dict]:
    """All sets of a validated cohort whose excluded rows are removed: (rows, summary), in memory."""
    resampled = per_pathology_test_sets(cohort, policy=evaluation_policy, seed=seed,
                                        sample_size_factor=sample_size_factor)
    original = glocker_original_set(cohort, seed=seed, sample_size_factor=sample_size_factor)
    balanced_frames, balanced_entries = _balanced_sets(cohort, seed=seed, policy=evaluation_policy)
    sets = pl.concat([resampled, original, *balanced_frames]).cast(SET_SCHEMA)
    summary = {
        "parameters": {"seed": seed, "sample_size_factor": sample_size_factor,
                       "evaluation_policy": evaluation_policy, "sampler": SAMPLER_NOTE},
        "does_not_balance": list(DOES_NOT_BALANCE),
        "sets": _resampled_entries(cohort, sets, evaluation_policy) + balanced_entries,
    }
    return sets, summary


def _with_file(error: DataError, file: Path) -> DataError:
    """The same DataError, naming the cohort file it came from."""
    return DataError(error.problem, file=file, column=error.column, rows=error.rows, n_bad=error.n_bad)


def build_subsets(cohort_path: Path, out_path: Path | None = None, *, seed: int = 42, sample_size_factor: int = 3,
                  evaluation_policy: str = DEFAULT_EVALUATION_POLICY, force: bool = False) -> dict:
    """Build every set of ``cohort_path``; write ``subsets.parquet`` and ``<stem>_report.json`` beside it.

    Refuses to overwrite either output without ``force``. Returns the summary written to the report.
    """
    cohort_path = Path(cohort_path)
    out_path = Path(out_path) if out_path is not None else cohort_path.parent / "subsets.parquet"
    report_path = out_path.with_name(f"{out_path.stem}_report.json")
    uncertain_value(evaluation_policy, PATHOLOGIES[0])  # unknown policy name: fail before any work
    cohort = validate_cohort(read_table(cohort_path, what="cohort"), file=cohort_path)
    check_output(out_path, force=force)
    check_output(report_path, force=force)
    usable, excluded = drop_excluded(cohort)
    try:
        sets, summary = make_subsets(usable, seed=seed, sample_size_factor=sample_size_factor,
                                     evaluation_policy=evaluation_policy)
    except DataError as error:
        raise _with_file(error, cohort_path) from error
    counts = dict(usable.group_by("split").len().sort("split").iter_rows())
    summary["cohort"] = {"path": str(cohort_path), "n_rows": cohort.height, "n_excluded": sum(excluded.values()),
                         "excluded_by_reason": excluded, "n_by_split_after_exclusion": counts}
    summary["outputs"] = {"subsets": str(out_path), "report": str(report_path)}
    write_parquet(sets, out_path)
    write_json(summary, report_path)
    add_subsets_to_report(cohort_path.with_name("cohort_report.json"), summary)
    return summary

