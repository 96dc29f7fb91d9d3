"""The paper's tables and the numbers behind its figures, reproduced from a store beside the published values.

Published numbers: data/paper_reference.csv (Tables 2-6, AUC points). A reference row's ``selector`` names runs
(``key=value`` over run.json fields, ``tag.NAME`` for tags) or an ensemble (``ensemble=NAME``); several matching
runs (seeds) are averaged, and their count is reported.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from engine.data.schema import PAPER_FIGURE_PATHOLOGIES
from engine.metrics import analysis

REFERENCE_FILE = Path(__file__).resolve().parents[2] / "data" / "paper_reference.csv"
METRIC_COLUMNS = {  # paper metric -> (attribute, fairness_summary column)
    "mean_auc": ("sex", "mean_auc_pts"),
    "fairness_gap_sex": ("sex", "fairness_gap_pts"),
    "fairness_gap_race": ("race", "fairness_gap_pts"),
}
PAPER_FIGURE_ATTRIBUTES = ("sex", "race")


def read_reference(path: Path = REFERENCE_FILE) -> pl.DataFrame:
    """The published values (table, row, selector, metric, value, unit, note)."""
    return pl.read_csv(path)


def reference_runs(reference: pl.DataFrame, runs: pl.DataFrame, ensembles: dict[str, list[str]]) -> dict[str, list]:
    """Selector -> run ids (or the ensemble's registered name) present in the store."""
    matched = {}
    for selector in reference["selector"].unique().to_list():
        if selector.startswith("ensemble="):
            name = selector.partition("=")[2]
            matched[selector] = [name] if name in ensembles else []
        else:
            matched[selector] = analysis.select_runs(runs, selector)
    return matched


def published_vs_reproduced(reference: pl.DataFrame, matched: dict[str, list], summary: pl.DataFrame) -> pl.DataFrame:
    """One row per published number: the reproduced value (mean over matching runs), their count and ids."""
    rows = []
    for ref in reference.iter_rows(named=True):
        run_ids = matched.get(ref["selector"], [])
        attribute, column = METRIC_COLUMNS[ref["metric"]]
        values = summary.filter(pl.col("run_id").is_in(run_ids) & (pl.col("attribute") == attribute))[column]
        rows.append({
            "table": ref["table"], "row": ref["row"], "metric": ref["metric"], "published": ref["value"],
            "reproduced": values.mean() if values.len() else None,
            "difference": (values.mean() - ref["value"]) if values.len() else None,
            "n_runs": values.len(), "runs": ", ".join(run_ids), "unit": ref["unit"],
        })
    return pl.DataFrame(rows, schema_overrides={"reproduced": pl.Float64, "difference": pl.Float64})


def figure_scores(view: analysis.StoreView, run_ids: list[str], *, eval_set: str, n_boot: int, seed: int,
                  computed: analysis.Computed | None = None) -> pl.DataFrame:
    """Figures 1, 2, 4: mean AUC and sex / race fairness gaps and scores, C over exactly these runs."""
    if not run_ids:
        return pl.DataFrame()
    summary = analysis.fairness_summary(view, run_ids=run_ids, eval_set=eval_set,
                                        attributes=PAPER_FIGURE_ATTRIBUTES, n_boot=n_boot, seed=seed,
                                        computed=computed)
    names = view.runs.select("run_id", "model", "display_name", "architecture_family", "domain")
    keep = [c for c in summary.columns if not c.startswith("gap_pts__")]
    return names.join(summary.select(keep), on="run_id", how="inner").sort("attribute", "run_id")


def figure_tables(view: analysis.StoreView, *, eval_set: str, n_boot: int, seed: int,
                  computed: analysis.Computed | None = None) -> dict[str, pl.DataFrame]:
    """The numbers behind Figures 1-6 for the store's model matrix (runs not in a pre-training study)."""
    standard = analysis.model_matrix(view.runs, balancing="standard")
    balanced = analysis.model_matrix(view.runs, balancing="balanced")
    resnet = standard.filter(pl.col("architecture_family") == "ResNet")
    tables = {name: figure_scores(view, runs["run_id"].to_list(), eval_set=eval_set, n_boot=n_boot, seed=seed,
                                  computed=computed)
              for name, runs in (("figure1", standard), ("figure2", balanced), ("figure4", resnet))}
    run_ids = standard["run_id"].to_list()
    if run_ids:
        change = analysis.relative_change(view, run_ids=run_ids, eval_set=eval_set,
                                          attributes=PAPER_FIGURE_ATTRIBUTES, computed=computed)
        tables["figure3"] = change.filter(pl.col("pathology") == "mean")
        five = change.filter(pl.col("pathology").is_in(list(PAPER_FIGURE_PATHOLOGIES)))
        tables["figure5"] = five.filter(pl.col("attribute") == "sex")
        tables["figure6"] = five.filter(pl.col("attribute") == "race")
    return {name: table for name, table in tables.items() if table.height}
