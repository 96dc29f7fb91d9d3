"""Fine-tuning strategies (paper Table 6, Appendix D): linear probing against end-to-end fine-tuning of the same
foundation model, mean AUC and sex / race fairness gaps, beside the published values.

A model is shown when the store has a linear-probe run of it (run.json ``finetune_mode``); its fine-tuned runs are
those of the paper's main comparison (``analysis.model_matrix``) with the same balancing."""

from __future__ import annotations

import polars as pl
import streamlit as st

from dashboard import charts_studies as charts
from dashboard import data, widgets
from dashboard import data_studies as ds
from engine.metrics import analysis

KEY = "finetuning"
MODES = {"linear-probe": "linear probe", "finetune": "end-to-end fine-tuning"}

filters, runs = widgets.open_page(
    "Linear probing and end-to-end fine-tuning",
    "Paper Appendix D, Table 6: the same foundation model adapted with a linear head on frozen features "
    "(linear probe) or fully fine-tuned. The paper reports that fine-tuning improves both AUC and fairness. "
    "Hatched bars: the paper's printed values (data/paper_reference.csv).",
)
store, fp = filters.store, filters.fingerprint
attributes = ds.analysis_attributes(filters.attributes, data.attributes(store, fp))
balancings = ("standard", "balanced") if filters.balancing == "both" else (filters.balancing,)
if filters.pathology != "mean":
    st.warning(f"Pathology filter: **{filters.pathology}** only. The published values are means over all 14 "
               "pathologies, so they are not comparable with these.")

probes = runs.filter((pl.col("finetune_mode") == "linear-probe")
                     & pl.col("balancing").fill_null("standard").is_in(list(balancings)))
models = probes["model"].unique(maintain_order=True).to_list()
tuned = pl.concat([analysis.model_matrix(runs, balancing=b, finetune_mode="finetune") for b in balancings])
candidates = pl.concat([probes, tuned.filter(pl.col("model").is_in(models))])
names = dict(candidates.group_by("model", maintain_order=True).agg(
    pl.coalesce("display_name", "model").first()).iter_rows())


def group_of(run: dict) -> str:
    mode = MODES.get(run["finetune_mode"], run["finetune_mode"])
    return mode if len(balancings) == 1 else f"{mode} · {run['balancing']}"


reference = ds.paper_reference().filter(pl.col("table") == "Table 6")
standard = candidates.filter(pl.col("balancing").fill_null("standard") == "standard")
if candidates.height:
    placement = pl.DataFrame([{"run_id": r["run_id"], "x": names[r["model"]], "group": group_of(r)}
                              for r in candidates.to_dicts()], schema=["run_id", "x", "group"], orient="row")
    with st.spinner(f"Scoring {candidates.height} run(s)"):
        summary = data.fairness(store, fp, run_ids=tuple(placement["run_id"].to_list()), eval_set=filters.eval_set,
                                attributes=attributes, pathologies=filters.pathologies,
                                n_boot=ds.N_BOOT if filters.show_ci else 0)
    metrics = ds.run_metrics(summary)
else:
    st.info("No linear-probe run in this store (run.json `finetune_mode = linear-probe`"
            f"{'' if len(balancings) == 2 else f', balancing {balancings[0]}'}), so only the published values are "
            "shown. Import a linear probe of a model that also has a fine-tuned run to compare.")
    placement = pl.DataFrame(schema={"run_id": pl.String, "x": pl.String, "group": pl.String})
    metrics = pl.DataFrame(schema={"run_id": pl.String, "metric": pl.String, "value": pl.Float64,
                                   "ci_low": pl.Float64, "ci_high": pl.Float64})

table = ds.published_vs_reproduced(metrics, placement, reference, standard, default_group=MODES["linear-probe"])
chart_metrics = ["mean_auc", *(f"fairness_gap_{a}" for a in attributes)]
fig = charts.metric_panels(ds.chart_rows(table, chart_metrics),
                           title=f"Linear probe vs fine-tuning on {filters.eval_set} (Table 6; points)")
widgets.chart(fig)
st.caption("Fairness gap = best minus worst subgroup mean AUC (points, lower is better); fairness scores in the "
           "table use C over the runs shown. Published values are matched to standard-balancing runs. Several runs "
           "of one model and mode (seeds) are averaged and then have no interval.")

scores = [f"fairness_score_{a}" for a in attributes]
paper = ds.side_by_side(table, [*chart_metrics, *scores]).rename({"x": "model", "group": "mode"})
st.table(charts.styled(paper, blank=charts.blank_columns(paper)))
widgets.export_block("table6_finetuning", fig, paper, key=f"{KEY}.table6",
                     caption="Linear probing and fine-tuning: reproduced and published (paper Table 6).")

if placement.height:
    wide = table.filter(pl.col("runs").is_not_null()).pivot(on="group", index=["x", "metric"], values="reproduced")
    if {MODES["linear-probe"], MODES["finetune"]} <= set(wide.columns):
        change = wide.filter(~pl.col("metric").str.starts_with("fairness_score")).select(
            pl.col("x").alias("model"), pl.col("metric").map_elements(ds.metric_label, return_dtype=pl.String),
            MODES["linear-probe"], MODES["finetune"],
            (pl.col(MODES["finetune"]) - pl.col(MODES["linear-probe"])).alias("fine-tuning minus linear probe"))
        st.subheader("What fine-tuning changes")
        st.caption("Reproduced values. A positive AUC change and a negative gap change mean fine-tuning is better.")
        st.table(charts.styled(change))
