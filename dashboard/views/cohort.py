"""Cohort: how big each subgroup is in every split and evaluation set, and how prevalent each pathology is per
subgroup, so AUC differences can be read against group sizes. Counts only: no patient or image identifier."""

from __future__ import annotations

import polars as pl
import streamlit as st

from dashboard import charts, data, tables, widgets
from dashboard.context import current_filters
from engine.data.schema import PAPER_FIGURE_PATHOLOGIES, PATHOLOGIES
from engine.metrics.store import read_eval_sets


@st.cache_data(max_entries=8, show_spinner=False)
def eval_set_rows(store: str, fingerprint: str) -> pl.DataFrame | None:
    """subsets.parquet of the store (None when it has none)."""
    return read_eval_sets(store)


f = current_filters()
st.title("Cohort: subgroup sizes and prevalence")
widgets.require_store(f)
cohort = data.cohort(f.store, f.fingerprint)
sets = eval_set_rows(f.store, f.fingerprint)
if st.session_state.get("cohort.attr", f.attributes[0]) not in f.attributes:
    st.session_state["cohort.attr"] = f.attributes[0]  # the sidebar's attributes changed
left, right = st.columns(2)
attribute = left.selectbox("Attribute", f.attributes, key="cohort.attr")
default = f.pathology if f.pathology != "mean" else PAPER_FIGURE_PATHOLOGIES[0]
pathology = right.selectbox("Pathology (for sets resampled per pathology)", PATHOLOGIES,
                            index=PATHOLOGIES.index(default), key="cohort.pathology")

composition = tables.cohort_composition(cohort, sets, attribute=attribute, pathology=pathology)
title = f"{attribute} composition of each split and evaluation set"
fig = charts.composition_figure(composition, title=title)
widgets.chart(fig)
st.caption("Share of weighted images (resampled sets draw images with replacement: weight = draws). Sets resampled "
           f"per pathology (e.g. Glocker's 'resampled') are shown for {pathology}. Hover for images and patients.")
widgets.export_block("cohort_composition", fig, composition, key="cohort.composition", caption=title)
widgets.show_table(composition, precision=1)
items = {"cohort_composition": (fig, composition)}

st.subheader(f"Prevalence per {attribute} subgroup · {f.eval_set}")
prevalence = tables.cohort_prevalence(cohort, sets, attribute=attribute, eval_set=f.eval_set)
if prevalence.height:
    prev_title = f"Prevalence by {attribute} · {f.eval_set} (raw label 1 = positive)"
    prev_fig = charts.prevalence_figure(prevalence, title=prev_title)
    widgets.chart(prev_fig)
    st.caption("A raw label of 1 counts as positive (the u-zeros policy); weighted like the evaluation set. The "
               "evaluation set is the sidebar's.")
    widgets.export_block("cohort_prevalence", prev_fig, prevalence, key="cohort.prevalence", caption=prev_title)
    wide = prevalence.pivot(on="subgroup", index="pathology", values="prevalence_pct")
    widgets.show_table(wide, precision=1)
    items["cohort_prevalence"] = (prev_fig, prevalence)
else:
    st.info("The cohort holds no raw pathology labels (e.g. it was built from an imported predictions file), so "
            "prevalence is not available.")
widgets.view_zip(items, key="cohort", view="cohort")
