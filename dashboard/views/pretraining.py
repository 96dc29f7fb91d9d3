"""Pre-training (paper Tables 2, 4, 5; section 4.2 and Appendix C): mean AUC and sex / race fairness gaps against
the amount of medical pre-training (data, epochs, data fraction), beside the published values.

Runs are chosen by their run.json tag ``study`` (pretraining-data, pretraining-epochs, pretraining-fraction), so a
study's runs need not be selected in the sidebar; Table 5's 100 % row is the full-data run of the data study."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import streamlit as st

from dashboard import charts_studies as charts
from dashboard import data, widgets
from dashboard import data_studies as ds

KEY = "pretraining"


@dataclass(frozen=True)
class Study:
    title: str
    table: str
    studies: tuple[str, ...]
    same_data_from: tuple[str, ...]
    what: str  # what varies, for captions


STUDIES = {
    "data": Study("Pre-training data", "Table 2", ("pretraining-data",), (), "the pre-training dataset"),
    "epochs": Study("Pre-training epochs", "Table 4", ("pretraining-epochs",), (), "the number of pre-training epochs"),
    "fraction": Study("Pre-training data fraction", "Table 5", ("pretraining-fraction",), ("pretraining-data",),
                      "the fraction of the pre-training dataset used"),
}


def x_label(study: str, run: dict) -> str:
    """The category a run stands for in this study."""
    if study == "epochs":
        return f"{run['pretraining_epochs']} epochs" if run["pretraining_epochs"] is not None else "epochs unknown"
    data_name = run["pretraining_data"] or "unknown data"
    if study == "fraction":
        fraction = run["pretraining_fraction"]
        return f"{data_name} ({fraction:.0%})" if fraction is not None else f"{data_name} (fraction unknown)"
    return data_name


def sort_key(study: str, run: dict) -> float | None:
    return {"epochs": run["pretraining_epochs"], "fraction": run["pretraining_fraction"]}.get(study)


filters, runs = widgets.open_page(
    "Amount of medical pre-training",
    "Paper section 4.2 and Appendix C: MAE pre-trained on chest X-rays with more data, more epochs or a "
    "larger fraction of the data, then fine-tuned. The paper reports higher AUC and smaller gaps with more "
    "pre-training. Hatched bars: the paper's printed values (data/paper_reference.csv).",
)
store, fp = filters.store, filters.fingerprint
attributes = ds.analysis_attributes(filters.attributes, data.attributes(store, fp))

choice = st.radio("Study", list(STUDIES), key=f"{KEY}.study", horizontal=True,
                  format_func=lambda k: f"{STUDIES[k].title} ({STUDIES[k].table})")
study = STUDIES[choice]
reference = ds.paper_reference().filter(pl.col("table") == study.table)
candidates = ds.study_runs(runs, study.studies, same_data_from=study.same_data_from)
if filters.pathology != "mean":
    st.warning(f"Pathology filter: **{filters.pathology}** only. The published values are means over all 14 "
               "pathologies, so they are not comparable with these.")

if candidates.height:
    placement = ds.reference_order(pl.DataFrame(
        [{"run_id": r["run_id"], "x": x_label(choice, r), "group": r["pretraining_method"] or "unknown method",
          "sort": sort_key(choice, r)} for r in candidates.to_dicts()],
        schema={"run_id": pl.String, "x": pl.String, "group": pl.String, "sort": pl.Float64}), reference, candidates)
    with st.spinner(f"Scoring {candidates.height} run(s)"):
        summary = data.fairness(store, fp, run_ids=tuple(placement["run_id"].to_list()), eval_set=filters.eval_set,
                                attributes=attributes, pathologies=filters.pathologies,
                                n_boot=ds.N_BOOT if filters.show_ci else 0)
    metrics = ds.run_metrics(summary)
    default_group = placement["group"][0]
else:
    st.info(f"No run of this store is tagged `study={' / '.join(study.studies)}` (run.json `tags.study`), so only "
            f"the published values are shown. Import your {study.title.lower()} runs with that tag, e.g. "
            f"`run_experiments.py import ... --tag study={study.studies[0]}`, to compare.")
    placement = pl.DataFrame(schema={"run_id": pl.String, "x": pl.String, "group": pl.String})
    metrics = pl.DataFrame(schema={"run_id": pl.String, "metric": pl.String, "value": pl.Float64,
                                   "ci_low": pl.Float64, "ci_high": pl.Float64})
    default_group = "mae"

table = ds.published_vs_reproduced(metrics, placement, reference, candidates, default_group=default_group)
chart_metrics = ["mean_auc", *(f"fairness_gap_{a}" for a in attributes)]
fig = charts.metric_panels(ds.chart_rows(table, chart_metrics),
                           title=f"{study.title} ({study.table}) on {filters.eval_set}: AUC and gaps in points")
widgets.chart(fig)
st.caption(f"Rows: {study.what}. Fairness gap = best minus worst subgroup mean AUC (points, lower is better); the "
           "table adds fairness scores (C − gap, C over this study's runs). Where several runs share a category "
           "(seeds), the reproduced value is their mean and has no interval. Undefined values (a subgroup with no "
           "positives or no negatives) are written as undefined.")
scores = [f"fairness_score_{a}" for a in attributes]
table = ds.side_by_side(table, [*chart_metrics, *scores]).rename({"x": study.title.lower(), "group": "method"})
st.table(charts.styled(table, blank=charts.blank_columns(table)))
widgets.export_block(f"{study.table.lower().replace(' ', '')}_{choice}", fig, table, key=f"{KEY}.{choice}",
                     caption=f"{study.title}: reproduced and published (paper {study.table}).")
