"""Threshold metrics: TPR, FPR, FNR and TNR per subgroup at a threshold, the underdiagnosis rate (FPR of "No
Finding", Seyyed-Kalantari et al. 2021) and the equalized-odds difference (fairlearn's definition).

The paper reports AUC only; these follow docs/metrics.md section 7. The threshold is chosen per run and pathology
on the validation split by default (FPR <= target, or Youden's J); a threshold chosen on the test data is offered as
a labelled, optimistic option. Rates are computed on the unresampled test split by default."""

from __future__ import annotations

import polars as pl
import streamlit as st

from dashboard import charts_studies as charts
from dashboard import data, widgets
from dashboard import data_studies as ds
from engine.data.schema import PATHOLOGIES
from engine.metrics import analysis

KEY = "thresholds"
RULES = {"fpr": "operating point: FPR ≤ target", "youden": "operating point: Youden's J (max TPR − FPR)",
         "fixed": "fixed threshold"}
SELECTION = {"validate": "validation split (default)", "test": "test split — optimistic: the threshold sees the test "
                                                                "labels"}
NO_FINDING = "No Finding"

filters, runs = widgets.open_page(
    "Threshold metrics",
    "Rates at a decision threshold (a score ≥ threshold is positive), per subgroup. Undefined rates (no "
    "positives or no negatives in a subgroup, or no threshold on the selection set) are written as "
    "undefined, never 0.",
)
store, fp = filters.store, filters.fingerprint
store_runs = runs["run_id"].to_list()
attributes = tuple(filters.attributes)
eval_sets = data.eval_sets(store, fp)

if st.session_state.get(f"{KEY}.eval") not in (None, *eval_sets):  # left over from another store
    del st.session_state[f"{KEY}.eval"]
if f"{KEY}.runs" in st.session_state:
    st.session_state[f"{KEY}.runs"] = [r for r in st.session_state[f"{KEY}.runs"] if r in store_runs]
default_runs = [r for r in filters.run_ids if r in store_runs] or \
    analysis.model_matrix(runs)["run_id"].to_list()[:3] or store_runs[:3]
chosen = st.multiselect("Runs", store_runs, default=default_runs, key=f"{KEY}.runs")
left, middle, right = st.columns(3)
eval_set = left.selectbox("Evaluation set", eval_sets, index=eval_sets.index("test") if "test" in eval_sets else 0,
                          key=f"{KEY}.eval")
rule = middle.radio("Threshold", list(RULES), format_func=RULES.get, key=f"{KEY}.rule")
threshold = operating_fpr = None
select_on = "validate"
if rule == "fixed":
    threshold = right.number_input("Threshold", value=0.5, step=0.05, format="%.3f", key=f"{KEY}.t",
                                   help="The same threshold for every run and pathology (on the score's own scale).")
else:
    if rule == "fpr":
        operating_fpr = right.number_input("Target FPR", min_value=0.0, max_value=1.0, value=0.2, step=0.05,
                                           key=f"{KEY}.fpr")
    options = [s for s in SELECTION if s in eval_sets]
    select_on = right.radio("Choose the threshold on", options, format_func=SELECTION.get, key=f"{KEY}.select")
st.caption(f"Rates default to the **unresampled test split**: they describe the patients as they come. The "
           "resampled sets re-weight images per pathology to equal prevalence across subgroups, which suits AUC "
           f"comparisons but not rates of a deployed threshold. Shown: **{eval_set}**"
           + (f"; thresholds chosen on **{select_on}**." if rule != "fixed" else "; one fixed threshold."))
if rule != "fixed" and select_on == "test":
    st.warning("The threshold is chosen on the test data: the rates below are optimistic (threshold source "
               "`test-…`).")
if not chosen:
    st.info("Pick at least one run.")
    st.stop()
if not attributes:
    st.info("Pick at least one attribute in the sidebar.")
    st.stop()

with st.spinner("Thresholding every pathology"):
    tables = ds.threshold_tables(store, fp, run_ids=tuple(chosen), eval_set=eval_set, attributes=attributes,
                                 threshold=threshold, operating_fpr=operating_fpr, youden=rule == "youden",
                                 select_on=select_on)
metrics, eod, under = tables["metrics"], tables["eod"], tables["underdiagnosis"]
labels = {r: r for r in chosen}
present = [p for p in PATHOLOGIES if p in set(metrics["pathology"].to_list())]
if not present:
    st.info(f"No scored rows for these runs on {eval_set}.")
    st.stop()
preferred = filters.pathology if filters.pathology in present else (NO_FINDING if NO_FINDING in present
                                                                    else present[0])
if st.session_state.get(f"{KEY}.pathology") not in (None, *present):
    del st.session_state[f"{KEY}.pathology"]
pathology = st.selectbox("Pathology", present, index=present.index(preferred), key=f"{KEY}.pathology")

st.header(f"Rates per subgroup: {pathology}")
rates = st.multiselect("Rates to draw", list(charts.RATE_LABELS), default=["tpr", "fpr"], key=f"{KEY}.rates",
                       format_func=charts.RATE_LABELS.get, help="FNR = 1 − TPR and TNR = 1 − FPR; all four are in "
                       "the table.") or ["tpr", "fpr"]
fig = charts.metric_panels(charts.rate_rows(metrics, pathology=pathology, labels=labels, rates=tuple(rates)),
                           zero_based=True, title=f"{pathology} on {eval_set}: rates per subgroup", max_cols=4)
widgets.chart(fig)
shown = metrics.filter(pl.col("pathology") == pathology).select(
    "run_id", "attribute", "subgroup", "threshold", "threshold_source", "n", "tp", "fp", "tn", "fn",
    "tpr", "fpr", "fnr", "tnr")
st.table(charts.styled(shown, precision=3))
widgets.export_block(f"rates_{pathology.replace(' ', '_')}", fig, shown, key=f"{KEY}.rates",
                     caption=f"{pathology}: rates per subgroup at the chosen threshold.")
figures = {f"rates_{pathology.replace(' ', '_')}": (fig, shown)}

st.header("Underdiagnosis")
st.caption("Underdiagnosis rate = FPR of “No Finding”: patients with a finding whom the model calls healthy "
           "(Seyyed-Kalantari et al., Nature Medicine 2021). Higher is worse; compare subgroups.")
if under.height:
    fig = charts.metric_panels(charts.underdiagnosis_rows(under, labels=labels), zero_based=True,
                               title=f"Underdiagnosis rate (FPR of No Finding) on {eval_set}")
    widgets.chart(fig)
    st.table(charts.styled(under, precision=3))
    widgets.export_block("underdiagnosis", fig, under, key=f"{KEY}.under",
                         caption="Underdiagnosis rate (FPR of No Finding) per subgroup.")
    figures["underdiagnosis"] = (fig, under)
else:
    st.info("This store has no “No Finding” predictions, so there is no underdiagnosis rate.")

st.header("Equalized-odds difference")
st.caption("Per run, pathology and attribute: max(TPR gap, FPR gap) between subgroups (fairlearn's "
           "equalized_odds_difference, between groups, worst case); 0 is equal odds. Subgroups with an undefined "
           "rate are left out of that rate.")
cells = eod.with_columns((pl.col("run_id") + " · " + pl.col("attribute")).alias("row"))
fig = charts.heatmap(cells, row="row", column="pathology", value="equalized_odds_difference",
                     title=f"Equalized-odds difference on {eval_set}", colorbar="EOD")
widgets.chart(fig)
st.caption("Every cell's value is written in the heatmap; the table (with the TPR and FPR differences behind each "
           "value) is in the CSV and LaTeX exports.")
widgets.export_block("equalized_odds_difference", fig, eod, key=f"{KEY}.eod",
                     caption="Equalized-odds difference per run, pathology and attribute.")
figures["equalized_odds_difference"] = (fig, eod)
widgets.view_zip(figures, key=f"{KEY}.zip", view="thresholds")
