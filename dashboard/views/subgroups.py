"""Subgroups (paper Figure 3): each subgroup's AUC relative to the population (or the mean over subgroups), per
model, for any attribute or intersection; subgroup AUCs with bootstrap intervals when intervals are on."""

from __future__ import annotations

import polars as pl
import streamlit as st

from dashboard import charts, data, tables, widgets
from dashboard.context import current_filters

N_BOOT, SEED = 200, 0
REFERENCES = {"population": "the population", "subgroup-mean": "the mean over subgroups"}
UNITS = {"pts": "AUC points", "pct": "percent"}

f = current_filters()
st.title("Subgroups: who is advantaged")
widgets.require_store(f)
run_ids = widgets.require_runs(f)
runs = data.runs_table(f.store, f.fingerprint)
left, right = st.columns(2)
reference = left.radio("Compared with", list(REFERENCES), format_func=REFERENCES.get, horizontal=True,
                       key="subgroups.ref", bind="query-params")
unit = right.radio("Unit", list(UNITS), format_func=UNITS.get, horizontal=True, key="subgroups.unit",
                   bind="query-params")

facts = tables.run_facts(runs, run_ids)
change = data.relative_change(f.store, f.fingerprint, run_ids=run_ids, eval_set=f.eval_set,
                              attributes=f.attributes, pathologies=f.pathologies, reference=reference, unit=unit,
                              ensembles=widgets.ensembles_arg(f))
pick = "mean" if f.pathology == "mean" else f.pathology
change = tables.change_notes(tables.with_labels(change.filter(pl.col("pathology") == pick), facts))
change = tables.in_order(change, "attribute", f.attributes)
what = "mean AUC over pathologies" if pick == "mean" else f"{pick} AUC"
fig = charts.relative_change_figure(change, unit=unit, title=f"{what} vs {REFERENCES[reference]} · {f.eval_set}")
widgets.chart(fig)
st.caption(f"y = 0 is {REFERENCES[reference]}; positive values: the model does better on that subgroup. "
           "Hover a bar for the subgroup's AUC and size n; 'undefined' marks a subgroup whose AUC has no value "
           "(only positives or only negatives).")
table = change.select("label", "run_id", "attribute", "subgroup", "n", "auc", "reference_auc", "change", "unit",
                      "note")
widgets.export_block("subgroups", fig, table, key="subgroups.fig", caption=f"Change of {what} per subgroup")
widgets.show_table(table, precision=3)
items = {"subgroups": (fig, table)}

st.subheader("Subgroup AUC with 95 % intervals")
if not f.show_ci:
    st.caption("Turn on intervals in the sidebar to see each subgroup's AUC with its bootstrap interval.")
elif f.pathology == "mean":
    st.info("Intervals are computed per pathology: choose one pathology in the sidebar to see each subgroup's AUC "
            "with its 95 % interval. Intervals of the differences above are not computed.")
else:
    with st.spinner("computing intervals..."):
        auc = data.subgroup_auc(f.store, f.fingerprint, run_ids=run_ids, eval_set=f.eval_set,
                                attributes=f.attributes, pathologies=f.pathologies, n_boot=N_BOOT, seed=SEED,
                                ensembles=widgets.ensembles_arg(f))
    auc = tables.in_order(tables.with_labels(auc.filter(pl.col("attribute") != "all"), facts), "attribute",
                          f.attributes)
    ci_fig = charts.subgroup_auc_figure(auc, title=f"{pick} AUC per subgroup · {N_BOOT} patient resamples")
    widgets.chart(ci_fig)
    ci_table = auc.select("label", "run_id", "attribute", "subgroup", "n", "n_pos", "n_neg", "auc", "ci_low",
                          "ci_high", "auc_reason", "small")
    widgets.export_block("subgroup_auc_ci", ci_fig, ci_table, key="subgroups.ci", caption=f"{pick} AUC per subgroup")
    widgets.show_table(ci_table, precision=3)
    items["subgroup_auc_ci"] = (ci_fig, ci_table)
widgets.view_zip(items, key="subgroups", view="subgroups")
