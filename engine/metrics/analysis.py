"""The questions users ask of a results store, shared by ``report`` and the dashboard.

Every metric is defined in SQL (``queries``); subgroup AUCs of many runs come from the numpy fast path
(``fast_auc``, tested equal to the SQL to 1e-12) and are handed to the SQL aggregates (means, gaps, scores,
relative change). Intervals come from the patient bootstrap (``bootstrap``), with draws shared across runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from engine.metrics import bootstrap, fast_auc, queries
from engine.metrics.store import list_runs, read_run_info, require_probabilities

DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class StoreView:
    """An open results store: its folder, a DuckDB connection with the views, and the runs table."""

    path: Path
    con: duckdb.DuckDBPyConnection
    runs: pl.DataFrame  # one row per run: run.json fields (tags as a JSON string)

    def info(self, run_id: str) -> dict:
        return read_run_info(self.path, run_id)


def open_store(store: str | Path) -> StoreView:
    """Connect to ``store`` (views over its parquet files) and list its runs."""
    path = Path(store)
    return StoreView(path=path, con=queries.connect(path), runs=list_runs(path))


def tag(runs: pl.DataFrame, key: str) -> pl.Series:
    """One tag of every run (null when absent)."""
    return pl.Series(key, [json.loads(t or "{}").get(key) for t in runs["tags"].to_list()], dtype=pl.String)


def select_runs(runs: pl.DataFrame, selector: str) -> list[str]:
    """Run ids matching ``key=value[;key=value]`` over run.json fields (``tag.NAME`` for tags); numbers compare
    numerically (``pretraining_fraction=0.3`` matches 0.3)."""
    mask = pl.Series([True] * runs.height)
    for clause in filter(None, (c.strip() for c in selector.split(";"))):
        key, _, wanted = clause.partition("=")
        values = tag(runs, key[4:]) if key.startswith("tag.") else runs[key].cast(pl.String)
        mask &= pl.Series([_same(v, wanted) for v in values.to_list()])
    return runs.filter(mask)["run_id"].to_list()


def _same(value: str | None, wanted: str) -> bool:
    if value is None:
        return False
    try:
        return float(value) == float(wanted)
    except ValueError:
        return value == wanted


def model_matrix(runs: pl.DataFrame, *, balancing: str = "standard", finetune_mode: str = "finetune") -> pl.DataFrame:
    """The runs of the paper's main comparison (Figures 1, 2, 4): not part of a pre-training study (tag ``study``
    absent or ``foundation``), with the given fine-tuning mode and balancing."""
    study = tag(runs, "study")
    keep = (study.is_null() | (study == "foundation")) & (runs["finetune_mode"] == finetune_mode)
    return runs.filter(keep & (runs["balancing"] == balancing))


def paper_ensembles(runs: pl.DataFrame, *, balancing: str = "standard") -> dict[str, list[str]]:
    """The paper's Table 3 ensembles as run ids of canonical runs (fine-tuned, same balancing, lowest seed); an
    ensemble is left out when one of its models has no such run."""
    matrix = model_matrix(runs, balancing=balancing).sort("seed", nulls_last=True)
    first = dict(matrix.group_by("model", maintain_order=True).agg(pl.col("run_id").first()).iter_rows())
    return {name: [first[m] for m in models] for name, models in queries.PAPER_ENSEMBLES.items()
            if all(m in first for m in models)}


def register_ensembles(view: StoreView, ensembles: Mapping[str, tuple[Sequence[str], str]]) -> list:
    """Register each ensemble (name -> (member run ids, rule)) after checking its members are compatible."""
    done = []
    for name, (members, rule) in ensembles.items():
        infos = [view.info(m) for m in members]
        queries.check_ensemble_members(infos, rule)
        kinds = {i["run_id"]: i["score_kind"] for i in infos}
        done.append(queries.register_ensemble(view.con, name=name, members=list(members), rule=rule,
                                              score_kinds=kinds))
    return done


def scored(view: StoreView, *, run_ids: Sequence[str], eval_set: str, attributes: Sequence[str],
           pathologies: Sequence[str] | None = None) -> pl.DataFrame:
    """The rows every AUC is computed from (``queries.scored_rows``)."""
    return queries.scored_rows(view.con, run_ids=list(run_ids), eval_set=eval_set, attributes=list(attributes),
                               pathologies=pathologies)


@dataclass(frozen=True)
class Computed:
    """Scored rows and their subgroup AUCs for a set of runs, computed once and reused by several tables."""

    eval_set: str
    attributes: tuple[str, ...]
    rows: pl.DataFrame
    auc: pl.DataFrame

    def covers(self, run_ids: Sequence[str], eval_set: str, attributes: Sequence[str]) -> bool:
        present = set(self.auc["run_id"].unique().to_list())
        return eval_set == self.eval_set and set(attributes) <= set(self.attributes) and set(run_ids) <= present


def compute(view: StoreView, *, run_ids: Sequence[str], eval_set: str, attributes: Sequence[str],
            pathologies: Sequence[str] | None = None, min_count: int = 10) -> Computed:
    """Scored rows (one DuckDB query) and every subgroup AUC (numpy fast path) of ``run_ids``."""
    rows = scored(view, run_ids=run_ids, eval_set=eval_set, attributes=attributes, pathologies=pathologies)
    auc = fast_auc.subgroup_auc(rows, attributes=list(attributes), eval_set=eval_set, min_count=min_count)
    return Computed(eval_set, tuple(attributes), rows, auc)


def _reuse(computed: Computed | None, view: StoreView, run_ids: Sequence[str], eval_set: str,
           attributes: Sequence[str], pathologies: Sequence[str] | None) -> Computed:
    if computed is not None and pathologies is None and computed.covers(run_ids, eval_set, attributes):
        keep = pl.col("run_id").is_in(list(run_ids))
        auc = computed.auc.filter(keep & pl.col("attribute").is_in(["all", *attributes]))
        return Computed(eval_set, tuple(attributes), computed.rows.filter(keep), auc)
    return compute(view, run_ids=run_ids, eval_set=eval_set, attributes=attributes, pathologies=pathologies)


def subgroup_auc(view: StoreView, *, run_ids: Sequence[str], eval_set: str, attributes: Sequence[str],
                 pathologies: Sequence[str] | None = None, n_boot: int = 0, seed: int = 0,
                 level: float = DEFAULT_LEVEL, computed: Computed | None = None) -> pl.DataFrame:
    """Subgroup AUCs (fast path) with percentile CIs from a patient bootstrap when ``n_boot`` > 0."""
    done = _reuse(computed, view, run_ids, eval_set, attributes, pathologies)
    rows, auc = done.rows, done.auc
    if not n_boot:
        return auc.with_columns(ci_low=pl.lit(None, pl.Float64), ci_high=pl.lit(None, pl.Float64))
    rep = bootstrap.bootstrap_auc(rows, attributes=list(attributes), n_boot=n_boot, seed=seed, eval_set=eval_set)
    ci = bootstrap.confidence_intervals(rep, level=level).drop("auc", "n_boot")
    keys = ["run_id", "eval_set", "pathology", "attribute", "subgroup"]
    return auc.join(ci, on=keys, how="left", maintain_order="left")


def fairness_summary(view: StoreView, *, run_ids: Sequence[str], eval_set: str, attributes: Sequence[str],
                     pathologies: Sequence[str] | None = None, compared_runs: Sequence[str] | None = None,
                     n_boot: int = 0, seed: int = 0, level: float = DEFAULT_LEVEL,
                     computed: Computed | None = None) -> pl.DataFrame:
    """Per run and attribute: mean AUC, fairness gap, worst subgroup, FS with C over ``compared_runs`` (default the
    runs reported), difference to overall, per-pathology gaps; with ``n_boot``, CIs of mean AUC, gap and FS (C held
    at its point estimate)."""
    everything = list(dict.fromkeys([*run_ids, *(compared_runs or [])]))
    done = _reuse(computed, view, everything, eval_set, attributes, pathologies)
    rows, auc = done.rows, done.auc
    summary = queries.fairness_summary(view.con, run_ids=list(run_ids), eval_set=eval_set, attributes=attributes,
                                       pathologies=pathologies, compared_runs=compared_runs, auc=auc)
    if not n_boot:
        return summary
    chosen = sorted(set(auc["pathology"].to_list())) if pathologies is None else list(pathologies)
    reported = rows.filter(pl.col("run_id").is_in(list(run_ids)))
    rep = bootstrap.bootstrap_auc(reported, attributes=list(attributes), n_boot=n_boot, seed=seed, eval_set=eval_set)
    return _with_summary_intervals(summary, rep, chosen, level)


def _with_summary_intervals(summary: pl.DataFrame, rep, pathologies: list[str], level: float) -> pl.DataFrame:
    """Join percentile CIs of the population mean AUC (points), the gap and FS onto the summary."""
    means = bootstrap.subgroup_means(rep, pathologies)
    gaps = bootstrap.fairness_gaps(means)
    c_pts = dict(summary.select("attribute", "c_pts").unique("attribute").iter_rows())
    scores = bootstrap.fairness_scores(gaps, c_pts)
    keys = ["run_id", "eval_set", "attribute"]
    population = bootstrap.confidence_intervals(means, level=level).filter(pl.col("attribute") == "all")
    population = population.select("run_id", "eval_set", mean_auc_pts_ci_low=pl.col("ci_low") * 100,
                                   mean_auc_pts_ci_high=pl.col("ci_high") * 100)
    out = summary.join(population, on=["run_id", "eval_set"], how="left", maintain_order="left")
    for name, rep_ in (("fairness_gap_pts", gaps), ("fairness_score_pts", scores)):
        ci = bootstrap.confidence_intervals(rep_, level=level).select(
            *keys, pl.col("ci_low").alias(f"{name}_ci_low"), pl.col("ci_high").alias(f"{name}_ci_high"))
        out = out.join(ci, on=keys, how="left", maintain_order="left")
    return out.with_columns(n_boot=pl.lit(rep.values.shape[0], pl.Int64))


def relative_change(view: StoreView, *, run_ids: Sequence[str], eval_set: str, attributes: Sequence[str],
                    pathologies: Sequence[str] | None = None, reference: str = "population",
                    unit: str = "pts", computed: Computed | None = None) -> pl.DataFrame:
    """Figures 3, 5, 6: each subgroup against the population (default) or the mean over subgroups."""
    auc = _reuse(computed, view, run_ids, eval_set, attributes, pathologies).auc
    return queries.relative_change(view.con, run_ids=list(run_ids), eval_set=eval_set, attributes=attributes,
                                   pathologies=pathologies, reference=reference, unit=unit, auc=auc)


def threshold_metrics(view: StoreView, *, run_ids: Sequence[str], eval_set: str, attributes: Sequence[str],
                      pathologies: Sequence[str] | None = None, threshold: float | None = None,
                      operating_fpr: float | None = None, youden: bool = False,
                      select_on: str = "validate") -> pl.DataFrame:
    """TP/FP/TN/FN and rates per subgroup at a threshold or an operating point chosen on ``select_on``."""
    probabilities = threshold is None and operating_fpr is None and not youden
    if probabilities:
        for run_id in run_ids:
            require_probabilities(view.info(run_id), "a default threshold of 0.5")
    return queries.threshold_metrics(view.con, run_ids=list(run_ids), eval_set=eval_set, attributes=attributes,
                                     pathologies=pathologies, threshold=threshold, operating_fpr=operating_fpr,
                                     youden=youden, select_on=select_on, scores_are_probabilities=probabilities)
