"""Pathologies (paper Figures 5, 6): each pathology's change per subgroup against the population, as grouped bars
per model and as a heatmap; the fairest and least fair pathology (smallest / largest gap) are highlighted."""

from __future__ import annotations

import polars as pl
import streamlit as st

from dashboard import charts, data, tables, widgets
from dashboard.context import current_filters
from engine.data.schema import PAPER_FIGURE_PATHOLOGIES, PATHOLOGIES

UNITS = {"pts": "AUC points", "pct": "percent"}

f = current_filters()
st.title("Pathologies: where the gaps are")
widgets.require_store(f)
run_ids = widgets.require_runs(f)
runs = data.runs_table(f.store, f.fingerprint)
left, middle, right = st.columns([1, 3, 1])
if st.session_state.get("pathologies.attr", f.attributes[0]) not in f.attributes:
    st.session_state["pathologies.attr"] = f.attributes[0]  # the sidebar's attributes changed
attribute = left.selectbox("Attribute", f.attributes, key="pathologies.attr")
chosen = middle.multiselect("Pathologies", PATHOLOGIES, default=list(PAPER_FIGURE_PATHOLOGIES),
                            key="pathologies.list", bind="query-params",
                            help="Default: the five of the paper's Figures 5 and 6.")
unit = right.radio("Unit", list(UNITS), format_func=UNITS.get, key="pathologies.unit", bind="query-params")
if not chosen:
    st.info("Choose at least one pathology.")
    st.stop()
st.caption("This page picks its own pathologies; the sidebar's pathology applies to the other pages.")

facts = tables.run_facts(runs, run_ids)
change = data.relative_change(f.store, f.fingerprint, run_ids=run_ids, eval_set=f.eval_set, attributes=(attribute,),
                              pathologies=tuple(chosen), reference="population", unit=unit,
                              ensembles=widgets.ensembles_arg(f))
change = tables.change_notes(tables.with_labels(change.filter(pl.col("pathology") != "mean"), facts))
change = tables.in_order(change, "pathology", chosen)
gaps = tables.pathology_gaps(change)
fairest, least_fair = tables.fairest_and_least_fair(gaps)
gap_of = dict(zip(gaps["pathology"].to_list(), gaps["gap_pts"].to_list(), strict=True))
if fairest is not None:
    st.markdown(f"Fairest pathology: **{fairest}** (mean gap {gap_of[fairest]:.2f} AUC points); least fair: "
                f"**{least_fair}** ({gap_of[least_fair]:.2f}). Gap = best minus worst {attribute} subgroup AUC, "
                "averaged over the models shown.")
else:
    st.warning("No pathology has a defined gap: every one has a subgroup with a single class.")

title = f"Change per pathology and {attribute} subgroup vs the population · {f.eval_set}"
bars = charts.pathology_bars_figure(change, fairest=fairest, least_fair=least_fair, unit=unit, title=title)
widgets.chart(bars)
table = change.select("label", "run_id", "pathology", "subgroup", "n", "auc", "reference_auc", "change", "unit",
                      "note")
widgets.export_block("pathologies_bars", bars, table, key="pathologies.bars", caption=title)

heatmap = charts.pathology_heatmap(change, fairest=fairest, least_fair=least_fair, unit=unit, title=title)
widgets.chart(heatmap)
widgets.export_block("pathologies_heatmap", heatmap, table, key="pathologies.heatmap", caption=title)

st.subheader("Gap per pathology")
widgets.show_table(gaps.rename({"gap_pts": "mean_gap_pts"}))
st.subheader("Values")
widgets.show_table(table, precision=3)
widgets.view_zip({"pathologies_bars": (bars, table), "pathologies_heatmap": (heatmap, table)}, key="pathologies",
                 view="pathologies")
