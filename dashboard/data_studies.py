"""Cached queries and table shaping for the study pages (Ensembles, Pre-training, Fine-tuning, Thresholds).

Same rules as dashboard/data.py: arguments are the store path, its fingerprint and hashable keywords; figures and
styled tables (dashboard/charts_studies.py) are never cached. Ensembles are registered under a content id
(``ensemble_id``: name + hash of rule and members), so two sessions that reuse a name for different members never
read each other's rows from the shared store view; tables come back labelled with the ensemble's name. Published
values (data/paper_reference.csv) are matched to runs with ``analysis.select_runs`` over the page's candidates.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import replace
from functools import cache
from pathlib import Path

import polars as pl
import streamlit as st

from dashboard import data
from engine.metrics import analysis, bootstrap, queries
from engine.metrics.store_schema import ALL_ATTRIBUTE, INTERSECTION_SEPARATOR

REFERENCE_CSV = Path(__file__).resolve().parents[1] / "data" / "paper_reference.csv"
N_BOOT = 200  # replicates behind the CIs of the study pages (the shared "intervals" toggle)
EPSILON_PTS = 1.0  # paper eq. 1: C = max gap + 1 point
PAPER_ATTRIBUTES = ("sex", "race")  # the attributes of the paper's Tables 2-6
_register_lock = threading.Lock()

Ensemble = tuple[str, str, tuple[str, ...]]  # (name, rule, members)


@cache
def paper_reference() -> pl.DataFrame:
    """data/paper_reference.csv: the numbers the paper prints (Tables 2-6), gaps and AUC in points."""
    return pl.read_csv(REFERENCE_CSV, schema_overrides={"value": pl.Float64})


def ensemble_id(name: str, rule: str, members: Sequence[str]) -> str:
    """The run id an ensemble is registered under: its name plus a hash of its rule and sorted members."""
    digest = hashlib.sha1("\n".join((rule, *sorted(members))).encode()).hexdigest()[:8]
    return f"{name} #{digest}"


def default_rule(runs: pl.DataFrame, members: Sequence[str]) -> str:
    """Mean probability (the paper's ensembles) when every member scores probabilities, else rank average (the
    rule the sidebar uses too)."""
    kinds = set(runs.filter(pl.col("run_id").is_in(list(members)))["score_kind"].to_list())
    return "mean-probability" if kinds == {"probability"} else "rank-average"


def _register(view: analysis.StoreView, ensembles: Sequence[Ensemble]) -> dict[str, str]:
    """Register the ensembles not registered yet (one at a time across sessions); return id -> name."""
    ids = {ensemble_id(n, r, m): (n, r, m) for n, r, m in ensembles}
    with _register_lock:
        known = set(queries.runs(view.con)["run_id"].to_list())
        pending = {i: (list(m), r) for i, (_, r, m) in ids.items() if i not in known}
        if pending:
            analysis.register_ensembles(view, pending)
    return {i: spec[0] for i, spec in ids.items()}


def _labelled(frame: pl.DataFrame, names: dict[str, str]) -> pl.DataFrame:
    return frame.with_columns(pl.col("run_id").alias("ensemble_id"),
                              pl.col("run_id").replace(names).alias("run_id"))


@st.cache_data(max_entries=32, show_spinner=False)
def ensemble_summary(store: str, fingerprint: str, *, ensembles: tuple[Ensemble, ...], eval_set: str,
                     attributes: tuple[str, ...], pathologies: tuple[str, ...] | None = None, n_boot: int = 0,
                     seed: int = 0) -> pl.DataFrame:
    """fairness_summary of the ensembles, C over the ensembles shown (Table 3); run_id is the ensemble's name."""
    view = data.store_view(store, fingerprint)
    names = _register(view, ensembles)
    summary = analysis.fairness_summary(view, run_ids=list(names), eval_set=eval_set, attributes=attributes,
                                        pathologies=pathologies, n_boot=n_boot, seed=seed)
    return _labelled(summary, names)


def _keep(rep: bootstrap.Replicates, predicate: pl.Expr, *, name: str, scale: float = 1.0) -> bootstrap.Replicates:
    rows = rep.keys.with_row_index("_k").filter(predicate)["_k"].to_numpy()
    return replace(rep, name=name, keys=rep.keys[rows], point=rep.point[rows] * scale,
                   values=rep.values[:, rows] * scale)


def _intervals(rep: bootstrap.Replicates, metric: str, level: float) -> pl.DataFrame:
    ci = bootstrap.confidence_intervals(rep, level=level)
    return ci.select("run_id", pl.lit(metric).alias("metric"), pl.col("attribute"),
                     pl.col(rep.name).alias("value"), "ci_low", "ci_high", "n_boot")


@st.cache_data(max_entries=16, show_spinner=False)
def ensemble_comparison(store: str, fingerprint: str, *, ensemble: Ensemble, eval_set: str,
                        attributes: tuple[str, ...], pathologies: tuple[str, ...] | None = None, n_boot: int = N_BOOT,
                        seed: int = 0, level: float = 0.95) -> dict[str, pl.DataFrame]:
    """An ensemble against its members on one paired patient bootstrap (the same draws for every run).

    Returns ``stats`` (run_id, metric, attribute, value, ci_low, ci_high, n_boot; metrics mean_auc, fairness_gap,
    fairness_score in points, FS with C = max gap over these runs + 1) and ``tests`` (per member and metric: the
    ensemble minus the member with its CI, and the one-sided p-value that the ensemble is better: higher AUC,
    smaller gap).
    """
    name, _, members = ensemble
    view = data.store_view(store, fingerprint)
    names = _register(view, [ensemble])
    eid = next(iter(names))
    rows = analysis.scored(view, run_ids=[eid, *members], eval_set=eval_set, attributes=attributes,
                           pathologies=pathologies)
    rep = bootstrap.bootstrap_auc(rows, attributes=list(attributes), n_boot=n_boot, seed=seed, eval_set=eval_set)
    means = bootstrap.subgroup_means(rep, list(pathologies) if pathologies else None)
    auc = _keep(means, pl.col("attribute") == ALL_ATTRIBUTE, name="mean_auc", scale=100.0)
    gaps = bootstrap.fairness_gaps(means)
    defined = pl.DataFrame({"attribute": gaps.keys["attribute"], "gap": gaps.point}).fill_nan(None)
    c_pts = {a: (g if g is not None else 0.0) + EPSILON_PTS
             for a, g in defined.group_by("attribute").agg(pl.col("gap").max()).iter_rows()}
    scores = bootstrap.fairness_scores(gaps, c_pts)
    stats = pl.concat([_intervals(auc, "mean_auc", level), _intervals(gaps, "fairness_gap", level),
                       _intervals(scores, "fairness_score", level)])
    tests = []
    for member in members:
        for rep_, metric, better_if_smaller in ((auc, "mean_auc", False), (gaps, "fairness_gap", True)):
            diff = bootstrap.confidence_intervals(bootstrap.differences(rep_, [(eid, member)]), level=level)
            x, y = (eid, member) if better_if_smaller else (member, eid)
            p = bootstrap.p_value_smaller(rep_, x, y).select("attribute", "p_value")
            tests.append(diff.join(p, on="attribute", how="left").select(
                pl.col("reference_run_id").alias("member"), pl.lit(metric).alias("metric"), "attribute",
                pl.col(f"{rep_.name}_difference").alias("difference"), "ci_low", "ci_high", "p_value"))
    return {"stats": _labelled(stats, names), "tests": pl.concat(tests)}


@st.cache_data(max_entries=32, show_spinner=False)
def threshold_tables(store: str, fingerprint: str, *, run_ids: tuple[str, ...], eval_set: str,
                     attributes: tuple[str, ...], threshold: float | None = None,
                     operating_fpr: float | None = None, youden: bool = False,
                     select_on: str = "validate") -> dict[str, pl.DataFrame]:
    """Threshold metrics of every pathology, their equalized-odds differences and the underdiagnosis rates."""
    metrics = data.threshold_metrics(store, fingerprint, run_ids=run_ids, eval_set=eval_set, attributes=attributes,
                                     threshold=threshold, operating_fpr=operating_fpr, youden=youden,
                                     select_on=select_on)
    con = data.store_view(store, fingerprint).con
    return {"metrics": metrics, "eod": queries.equalized_odds_difference(con, metrics=metrics),
            "underdiagnosis": queries.underdiagnosis(con, metrics=metrics)}


# ------------------------------------------------------------------------------------------- table shaping (pure)


def run_metrics(summary: pl.DataFrame) -> pl.DataFrame:
    """fairness_summary rows as (run_id, metric, value, ci_low, ci_high): mean_auc and, per attribute,
    fairness_gap_<attribute> and fairness_score_<attribute>, all in AUC points; null = undefined."""
    def ci(column: str, end: str) -> pl.Expr:
        name = f"{column}_ci_{end}"
        return (pl.col(name) if name in summary.columns else pl.lit(None, pl.Float64)).alias(f"ci_{end}")

    auc = summary.unique("run_id", keep="first", maintain_order=True).select(
        "run_id", pl.lit("mean_auc").alias("metric"), pl.col("mean_auc_pts").alias("value"),
        ci("mean_auc_pts", "low"), ci("mean_auc_pts", "high"))
    parts = [auc]
    for column, prefix in (("fairness_gap_pts", "fairness_gap_"), ("fairness_score_pts", "fairness_score_")):
        parts.append(summary.select("run_id", (pl.lit(prefix) + pl.col("attribute")).alias("metric"),
                                    pl.col(column).alias("value"), ci(column, "low"), ci(column, "high")))
    return pl.concat(parts)


def analysis_attributes(chosen: Sequence[str], known: Sequence[str]) -> tuple[str, ...]:
    """The paper's attributes (sex, race) first, then the sidebar's, keeping those the cohort has."""
    return tuple(a for a in dict.fromkeys((*PAPER_ATTRIBUTES, *chosen))
                 if all(part in known for part in a.split(INTERSECTION_SEPARATOR)))


def reference_order(placement: pl.DataFrame, reference: pl.DataFrame, candidates: pl.DataFrame) -> pl.DataFrame:
    """``placement`` (run_id, x, group, sort) sorted like the paper's rows, then the other runs by ``sort``."""
    rank: dict[str, int] = {}
    for i, selector in enumerate(reference["selector"].to_list()):
        for run_id in analysis.select_runs(candidates, selector) if candidates.height else []:
            rank.setdefault(run_id, i)
    ranked = placement.with_columns(pl.col("run_id").replace_strict(rank, default=len(rank) + 1,
                                                                    return_dtype=pl.Int64).alias("_rank"))
    return ranked.sort("_rank", "sort", "x", nulls_last=True).drop("_rank", "sort")


def study_runs(runs: pl.DataFrame, studies: Sequence[str], *, same_data_from: Sequence[str] = ()) -> pl.DataFrame:
    """Runs whose tags.study is in ``studies``, plus runs of ``same_data_from`` studies pre-trained on the same data
    with the same method (e.g. Table 5's 100 % row is Table 2's CheXpert run)."""
    study = analysis.tag(runs, "study")
    chosen = runs.filter(study.is_in(list(studies)))
    if not same_data_from or not chosen.height:
        return chosen
    extra = runs.filter(study.is_in(list(same_data_from))
                        & pl.col("pretraining_data").is_in(chosen["pretraining_data"].to_list())
                        & pl.col("pretraining_method").is_in(chosen["pretraining_method"].to_list()))
    return pl.concat([chosen, extra]).unique("run_id", maintain_order=True)


def _published_rows(reference: pl.DataFrame, candidates: pl.DataFrame, placement: pl.DataFrame,
                    default_group: str) -> pl.DataFrame:
    """Published rows placed on the chart: x/group of the runs the selector matches (paper row name otherwise)."""
    out = []
    for row in reference.iter_rows(named=True):
        key, _, wanted = row["selector"].partition("=")
        matched = ([r for r in placement["run_id"].to_list() if r == wanted] if key == "ensemble"
                   else analysis.select_runs(candidates, row["selector"]) if candidates.height else [])
        spots = placement.filter(pl.col("run_id").is_in(matched)).unique(["x", "group"], maintain_order=True)
        places = spots.select("x", "group").rows() or [(row["row"], default_group)]
        out += [{"x": x, "group": g, "metric": row["metric"], "published": row["value"], "paper_row": row["row"],
                 "table": row["table"]} for x, g in places]
    return pl.DataFrame(out, schema={"x": pl.String, "group": pl.String, "metric": pl.String,
                                     "published": pl.Float64, "paper_row": pl.String, "table": pl.String})


def published_vs_reproduced(metrics: pl.DataFrame, placement: pl.DataFrame, reference: pl.DataFrame,
                            candidates: pl.DataFrame, *, default_group: str = "") -> pl.DataFrame:
    """One row per (x, group, metric): reproduced value (mean over the runs placed there, e.g. seeds; the CI only
    when one run is) beside the published one. ``placement``: run_id, x, group in display order."""
    per_run = metrics.join(placement, on="run_id", how="inner")
    reproduced = per_run.group_by("x", "group", "metric", maintain_order=True).agg(
        pl.col("value").mean(), pl.col("ci_low").first(), pl.col("ci_high").first(),
        pl.col("run_id").str.join(", ").alias("runs"), pl.len().alias("n_runs"),
        pl.col("value").is_null().any().alias("undefined"))
    reproduced = reproduced.with_columns(
        pl.when(pl.col("undefined")).then(None).otherwise("value").alias("value"),
        *(pl.when(pl.col("n_runs") == 1).then(pl.col(c)).otherwise(None).alias(c) for c in ("ci_low", "ci_high")))
    published = _published_rows(reference, candidates, placement, default_group)
    table = reproduced.drop("undefined").join(published, on=["x", "group", "metric"], how="full", coalesce=True,
                                              maintain_order="left")
    order = {x: i for i, x in enumerate(dict.fromkeys(placement["x"].to_list() + published["x"].to_list()))}
    table = table.with_columns(pl.col("x").replace_strict(order, default=len(order)).alias("_order"))
    return table.sort("_order", maintain_order=True).select(
        "x", "group", "metric", pl.col("value").alias("reproduced"), "ci_low", "ci_high", "published",
        (pl.col("value") - pl.col("published")).alias("difference"), "runs", "paper_row")


METRIC_LABELS = {"mean_auc": "Mean AUC ↑", "fairness_gap": "fairness gap ↓", "fairness_score": "fairness score ↑"}


def metric_label(metric: str) -> str:
    """'fairness_gap_sex' -> 'Sex fairness gap ↓' (points)."""
    for prefix, label in METRIC_LABELS.items():
        if metric == prefix:
            return label
        if metric.startswith(prefix + "_"):
            return f"{metric.removeprefix(prefix + '_').replace(' x ', ' × ').capitalize()} {label}"
    return metric


def side_by_side(table: pl.DataFrame, metrics: Sequence[str]) -> pl.DataFrame:
    """published_vs_reproduced as the paper prints it: one row per (x, group); per metric the reproduced value, its
    interval (when computed) and the published value ("(paper)"); columns that are empty everywhere are left out."""
    keys = ["x", "group"]
    out = table.select(keys).unique(maintain_order=True)
    for metric in metrics:
        label = metric_label(metric)
        part = table.filter(pl.col("metric") == metric).select(
            *keys, pl.col("reproduced").alias(label), pl.col("ci_low").alias(f"{label} CI low"),
            pl.col("ci_high").alias(f"{label} CI high"), pl.col("published").alias(f"{label} (paper)"))
        out = out.join(part, on=keys, how="left", maintain_order="left")
    sources = table.group_by(keys, maintain_order=True).agg(
        pl.col("runs").drop_nulls().first(), pl.col("paper_row").drop_nulls().first().alias("paper row"))
    out = out.join(sources, on=keys, how="left", maintain_order="left")
    optional = [c for c in out.columns if c.endswith(("CI low", "CI high", "(paper)")) or c == "paper row"]
    return out.drop([c for c in optional if out[c].is_null().all()])


def chart_rows(table: pl.DataFrame, metrics: Sequence[str]) -> pl.DataFrame:
    """published_vs_reproduced rows as chart rows (panel, x, group, source, value, ci_low, ci_high)."""
    chosen = table.filter(pl.col("metric").is_in(list(metrics)))
    order = pl.col("metric").replace_strict({m: i for i, m in enumerate(metrics)}, return_dtype=pl.Int64)
    chosen = chosen.sort(order, maintain_order=True).with_columns(
        pl.col("metric").map_elements(metric_label, return_dtype=pl.String).alias("panel"))
    mine = chosen.filter(pl.col("runs").is_not_null()).select(
        "panel", "x", "group", pl.lit("reproduced").alias("source"), pl.col("reproduced").alias("value"),
        "ci_low", "ci_high")
    paper = chosen.filter(pl.col("published").is_not_null()).select(
        "panel", "x", "group", pl.lit("published").alias("source"), pl.col("published").alias("value"),
        pl.lit(None, pl.Float64).alias("ci_low"), pl.lit(None, pl.Float64).alias("ci_high"))
    return pl.concat([mine, paper])

