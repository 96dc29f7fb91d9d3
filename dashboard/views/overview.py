"""Overview (paper Figures 1, 2, 4): mean AUC and fairness scores per model, scratch baselines as dashed lines,
bootstrap intervals drawn after the points, published values where a paper table row matches, and Table 1."""

from __future__ import annotations

import polars as pl
import streamlit as st

from dashboard import charts, data, tables, widgets
from dashboard.context import current_filters

N_BOOT, SEED = 200, 0

f = current_filters()
st.title("Overview: performance and fairness")
widgets.require_store(f)
run_ids = widgets.require_runs(f)
runs = data.runs_table(f.store, f.fingerprint)
group_by = st.selectbox("Group models by", list(tables.GROUPINGS), key="overview.group", bind="query-params")
st.caption("FS = C − FG (section 3.4): FG is the gap between the best and worst subgroup's mean AUC, C the largest "
           "gap among the models shown plus 1 point, so higher is better in every panel. Dashed lines: models "
           "trained from scratch.")

facts = tables.run_facts(runs, run_ids)
query = dict(run_ids=run_ids, eval_set=f.eval_set, attributes=f.attributes, pathologies=f.pathologies,
             ensembles=widgets.ensembles_arg(f))
slot = st.empty()


def render(summary: pl.DataFrame):
    """Draw the chart into the slot; return its rows, the matched published values and the figure."""
    rows = tables.overview_rows(summary, facts, group_by=group_by, attributes=f.attributes)
    published = tables.published_rows(tables.paper_reference(), runs, summary) if f.pathology == "mean" else None
    what = "mean over pathologies" if f.pathology == "mean" else f.pathology
    fig = charts.overview_figure(rows, published=published, title=f"{what} · evaluation set {f.eval_set}")
    with slot.container():
        widgets.chart(fig)
    return rows, published, fig


summary = data.fairness(f.store, f.fingerprint, **query)
rows, published, fig = render(summary)  # points first: intervals never block the first render
if f.show_ci:
    with st.spinner("computing intervals..."):
        summary = data.fairness(f.store, f.fingerprint, n_boot=N_BOOT, seed=SEED, **query)
    rows, published, fig = render(summary)
    st.caption(f"Bars: 95 % percentile intervals from {N_BOOT} patient-level bootstrap resamples (seed {SEED}); "
               "C is held at its point estimate.")

summary = tables.in_order(summary, "attribute", f.attributes)
c_values = summary.unique("attribute", maintain_order=True).select("attribute", "c_pts").iter_rows()
st.markdown("C per attribute: " + ", ".join(f"{a} **{c:.2f}**" for a, c in c_values if c is not None))
widgets.export_block("overview", fig, rows.drop("colour_key"), key="overview.fig",
                     caption="Mean AUC and fairness scores (AUC points)")

st.subheader("Values")
labels = facts.select("run_id", "label")
columns = ["mean_auc_pts", "fairness_gap_pts", "fairness_score_pts", "c_pts", "worst_subgroup", "best_subgroup",
           "n_subgroups_undefined"]
columns += [c for c in summary.columns if c.endswith(("_ci_low", "_ci_high"))]
values = summary.join(labels, on="run_id", how="left").select("label", "run_id", "attribute", *columns)
widgets.show_table(values)

st.subheader("Published values")
if published is None:
    st.caption("The paper publishes means over all pathologies only: choose 'mean' as pathology to compare.")
elif published.height:
    widgets.show_table(published.join(labels, on="run_id", how="left").select(
        "table", "row", "label", "metric", "published", "reproduced"))
    st.caption("Open diamonds mark the paper's printed values. Figures 1 and 2 print no numbers, so markers appear "
               "only where a row of Table 3 (ensembles; turn on Ensembles) or Table 6 (MAE and MoCo v3 fine-tuned) "
               "matches a model shown, with standard fine-tuning; a published gap is drawn as C − gap.")
else:
    st.caption("No shown model matches a printed table row (Figures 1 and 2 print no numbers; Table 3 covers the "
               "ensembles, Table 6 MAE and MoCo v3 with standard fine-tuning).")

st.subheader("Models in the store (Table 1)")
widgets.show_table(tables.models_table(runs))
widgets.view_zip({"overview": (fig, rows.drop("colour_key"))}, key="overview", view="overview")
