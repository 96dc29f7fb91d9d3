"""Subgroup AUCs, their means, and the fairness aggregates (gaps, FS, relative change)."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import polars as pl

from engine.data.schema import PATHOLOGIES
from engine.metrics.queries._core import (
    REFERENCES,
    UNITS,
    _known_runs_only,
    _names,
    _pathology_list,
    _run,
    _scope,
)

# ---------------------------------------------------------------------------------------------------- AUC


def subgroup_auc(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str], eval_set: str = "test",
                 attributes: str | Sequence[str] = ("sex", "race"), pathologies: str | Sequence[str] | None = None,
                 min_count: int = 10) -> pl.DataFrame:
    """Weighted Mann-Whitney AUC (ties 1/2) per run, pathology, attribute and subgroup; attribute "all" included.

    Columns: run_id, eval_set, pathology, attribute, subgroup, n, n_pos, n_neg, w_pos, w_neg, auc (null when the
    subgroup has no positives or no negatives), auc_reason, small (n_pos or n_neg below ``min_count``).
    """
    params = _scope(con, run_ids, eval_set, attributes, pathologies, with_all=True)
    return _known_runs_only(con, params["run_ids"], _run(con, "subgroup_auc", {**params, "min_count": min_count}))


def scored_rows(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str], eval_set: str,
                attributes: str | Sequence[str], pathologies: str | Sequence[str] | None = None) -> pl.DataFrame:
    """The rows every AUC is computed from: run_id, pathology, image_id, patient_id, y_true, y_score, weight and
    one column per requested attribute (an intersection "sex x race" holds "Female x Black"; null = no value)."""
    params = _scope(con, run_ids, eval_set, attributes, pathologies, with_all=False)
    row_params = {k: params[k] for k in ("run_ids", "eval_set", "pathologies")}
    rows = _known_runs_only(con, params["run_ids"], _run(con, "scored_rows", row_params))
    images = _run(con, "image_attributes", {k: params[k] for k in ("attributes", "separator")})
    columns = [pl.col("subgroups").list.get(k, null_on_oob=True).alias(name)
               for k, name in enumerate(params["attributes"])]
    images = images.with_columns(columns).drop("subgroups")
    return rows.join(images, on="image_id", how="left", maintain_order="left")


def _mean_auc_of(con: duckdb.DuckDBPyConnection, auc: pl.DataFrame, pathologies: list[str]) -> pl.DataFrame:
    return _run(con, "subgroup_mean_auc", {"pathologies": pathologies}, {"subgroup_auc": auc})


def _auc_for_means(con: duckdb.DuckDBPyConnection, run_ids: list[str], eval_set: str,
                   attribute_names: str | Sequence[str], pathologies: str | Sequence[str] | None,
                   min_count: int, auc: pl.DataFrame | None = None) -> tuple[pl.DataFrame, list[str]]:
    """Subgroup AUCs of the pathologies a mean is over, and that list (default: the 14 that occur).

    ``auc``: a subgroup_auc table computed already (e.g. by the numpy fast path, tested equal to the SQL); it is
    restricted to ``run_ids`` and the chosen pathologies, and the aggregates below still run in SQL.
    """
    chosen = _pathology_list(pathologies)
    if auc is None:
        auc = subgroup_auc(con, run_ids=run_ids, eval_set=eval_set, attributes=attribute_names,
                           pathologies=chosen or list(PATHOLOGIES), min_count=min_count)
    else:
        auc = auc.filter(pl.col("run_id").is_in(run_ids) & pl.col("pathology").is_in(chosen or list(PATHOLOGIES)))
    if chosen is None:
        present = set(auc["pathology"].to_list())
        chosen = [pathology for pathology in PATHOLOGIES if pathology in present]
    if not chosen:
        raise ValueError(f"no scored rows of runs {run_ids} in eval set {eval_set!r}")
    return auc, chosen


def subgroup_mean_auc(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str], eval_set: str = "test",
                      attributes: str | Sequence[str] = ("sex", "race"),
                      pathologies: str | Sequence[str] | None = None, min_count: int = 10,
                      auc: pl.DataFrame | None = None) -> pl.DataFrame:
    """Mean AUC over the chosen pathologies (default: the 14 CheXpert ones that occur) per subgroup.

    Columns: run_id, eval_set, attribute, subgroup, mean_auc (null when any chosen pathology's AUC is undefined
    or has no rows in the subgroup), mean_auc_reason, n_pathologies (pathologies with a defined AUC).
    """
    auc, chosen = _auc_for_means(con, _names(run_ids, "run_ids"), eval_set, attributes, pathologies, min_count, auc)
    return _mean_auc_of(con, auc, chosen)


# ---------------------------------------------------------------------------------------------------- fairness


def pathology_gap(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str], eval_set: str = "test",
                  attributes: str | Sequence[str] = ("sex", "race"), pathologies: str | Sequence[str] | None = None,
                  min_count: int = 10, auc: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per pathology: best minus worst subgroup AUC and largest |subgroup - population| AUC, in points.

    ``auc`` may pass a subgroup_auc table computed already (then the other scope arguments are not used).
    Columns: run_id, eval_set, attribute, pathology, auc, gap_pts, worst_subgroup, best_subgroup,
    diff_to_overall_pts, n_subgroups, n_subgroups_undefined.
    """
    if auc is None:
        auc = subgroup_auc(con, run_ids=run_ids, eval_set=eval_set, attributes=attributes, pathologies=pathologies,
                           min_count=min_count)
    return _run(con, "pathology_gap", {}, {"subgroup_auc": auc})


def fairness_summary(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str], eval_set: str = "test",
                     attributes: str | Sequence[str] = ("sex", "race"),
                     pathologies: str | Sequence[str] | None = None,
                     compared_runs: str | Sequence[str] | None = None, min_count: int = 10,
                     epsilon_pts: float = 1.0, auc: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per run and attribute: fairness gap, worst/best subgroup, difference to overall and fairness score.

    FS = C - FG with C = max FG over ``compared_runs`` (default ``run_ids``) + ``epsilon_pts`` (paper eq. 1).
    Gaps and scores are in AUC points (x100); one extra column ``gap_pts__<pathology>`` per chosen pathology.
    """
    reported = _names(run_ids, "run_ids")
    compared = reported if compared_runs is None else _names(compared_runs, "compared_runs")
    auc, chosen = _auc_for_means(con, list(dict.fromkeys([*reported, *compared])), eval_set, attributes,
                                 pathologies, min_count, auc)
    means = _mean_auc_of(con, auc, chosen)
    params = {"run_ids": reported, "compared_runs": compared, "epsilon_pts": epsilon_pts}
    summary = _run(con, "fairness_summary", params, {"subgroup_mean_auc": means})
    keys = ["run_id", "eval_set", "attribute"]
    gaps = (pathology_gap(con, run_ids=reported, auc=auc.filter(pl.col("run_id").is_in(reported)))
            .pivot(on="pathology", index=keys, values="gap_pts"))
    gap_columns = [pl.col(p).alias(f"gap_pts__{p}") if p in gaps.columns else pl.lit(None, pl.Float64)
                   .alias(f"gap_pts__{p}") for p in chosen]
    return summary.join(gaps.select(*keys, *gap_columns), on=keys, how="left", maintain_order="left")


def relative_change(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str], eval_set: str = "test",
                    attributes: str | Sequence[str] = ("sex", "race"),
                    pathologies: str | Sequence[str] | None = None, reference: str = "population",
                    unit: str = "pts", min_count: int = 10, auc: pl.DataFrame | None = None) -> pl.DataFrame:
    """Each subgroup's AUC relative to a reference, per pathology and for pathology "mean" (Figures 3, 5, 6).

    ``reference="population"``: the population's AUC on the same eval set (the figures' captions);
    ``"subgroup-mean"``: the mean over the attribute's subgroups (section 4.4's text). ``unit`` picks which of
    change_pts / change_pct is copied to the plotting column ``change`` (named in column ``unit``).
    """
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, not {reference!r}")
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, not {unit!r}")
    auc, chosen = _auc_for_means(con, _names(run_ids, "run_ids"), eval_set, attributes, pathologies, min_count, auc)
    auc = auc.filter(pl.col("pathology").is_in(chosen))
    inputs = {"subgroup_auc": auc, "subgroup_mean_auc": _mean_auc_of(con, auc, chosen)}
    change = _run(con, "relative_change", {"reference": reference}, inputs)
    return change.with_columns(pl.col(f"change_{unit}").alias("change"), pl.lit(unit).alias("unit"))
