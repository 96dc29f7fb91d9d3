"""Ensembles (paper Table 3): the paper's six ensembles beside the published values, an ensemble builder whose
ensembles live in the URL, and one ensemble against its members on a paired patient bootstrap."""

from __future__ import annotations

import re

import polars as pl
import streamlit as st

from dashboard import charts_studies as charts
from dashboard import data, state, widgets
from dashboard import data_studies as ds
from engine.metrics import analysis, queries

KEY = "ensembles"
RULE_LABELS = {"mean-probability": "mean probability", "mean-logit": "mean logit", "rank-average": "rank average"}
BOOT_CHOICES = (100, 200, 500, 1000)
ALPHA = 0.05


def custom_ensembles() -> list[tuple[str, str, tuple[str, ...]]]:
    """The user's ensembles from the URL-bound state (malformed values are skipped; the frame reports them)."""
    out = []
    for text in st.session_state.get(state.CUSTOM_ENSEMBLES, []) or []:
        try:
            name, rule, members = state.decode_ensemble(text)
        except ValueError:
            continue
        out.append((name, rule, tuple(members)))
    return out


def add_ensemble(infos: dict[str, dict], taken: tuple[str, ...]) -> None:
    """Form callback (runs before the script, so the URL-bound list may change): check, then append."""
    ss = st.session_state
    name, members, rule = (ss.get(f"{KEY}.name") or "").strip(), list(ss.get(f"{KEY}.members") or []), \
        ss.get(f"{KEY}.rule") or queries.ENSEMBLE_RULES[0]
    try:
        if not name:
            raise ValueError("give the ensemble a name")
        if name in taken:
            raise ValueError(f"the name {name!r} is taken by a run or another ensemble")
        queries.check_ensemble_members([infos[m] for m in members], rule)
        encoded = state.encode_ensemble(name, rule, members)
    except ValueError as error:
        ss[f"{KEY}.message"] = ("error", f"Not added: {error}.")
        return
    ss[state.CUSTOM_ENSEMBLES] = [*(ss.get(state.CUSTOM_ENSEMBLES) or []), encoded]
    ss[f"{KEY}.compare"] = name
    ss[f"{KEY}.message"] = ("success", f"Added **{name}** ({RULE_LABELS[rule]} of {', '.join(members)}); "
                                       "it is part of this page's URL now.")


def remove_ensemble(encoded: str) -> None:
    ss = st.session_state
    ss[state.CUSTOM_ENSEMBLES] = [e for e in ss.get(state.CUSTOM_ENSEMBLES) or [] if e != encoded]


filters, runs = widgets.open_page(
    "Foundation model ensembles",
    "Paper Table 3 and section 4.5: ensembles of fine-tuned foundation models. Members' scores are combined "
    "per image and pathology (mean probability unless chosen otherwise; the paper does not say which rule "
    "it used), and the ensemble is then scored like any run.",
)
store, fp = filters.store, filters.fingerprint
attributes = ds.analysis_attributes(filters.attributes, data.attributes(store, fp))
n_boot = ds.N_BOOT if filters.show_ci else 0

balancings = ("standard", "balanced") if filters.balancing == "both" else (filters.balancing,)
paper, placement = [], []
for balancing in balancings:
    for name, members in analysis.paper_ensembles(runs, balancing=balancing).items():
        label = name if balancing == "standard" else f"{name} · {balancing}"
        paper.append((label, ds.default_rule(runs, members), tuple(members)))
        placement.append((label, name, f"{balancing} fine-tuning"))
mine = custom_ensembles()
placement += [(name, name, "your ensembles") for name, _, _ in mine]
shown = paper + mine

figures = {}  # every figure of the page, for the zip at the end
st.header("The paper's ensembles (Table 3)")
if filters.pathology != "mean":
    st.warning(f"Pathology filter: **{filters.pathology}** only. The published values are means over all 14 "
               "pathologies, so they are not comparable with these.")
if not paper:
    missing = [m for models in queries.PAPER_ENSEMBLES.values() for m in models
               if m not in set(analysis.model_matrix(runs, balancing=balancings[0])["model"].to_list())]
    st.info(f"No paper ensemble can be built from this store ({balancings[0]} fine-tuning): it has no fine-tuned "
            f"run of {', '.join(sorted(set(missing)))}. Build your own below.")
if shown:
    with st.spinner("Scoring ensembles (first time per store: combining every member's predictions)"):
        summary = ds.ensemble_summary(store, fp, ensembles=tuple(shown), eval_set=filters.eval_set,
                                      attributes=attributes, pathologies=filters.pathologies, n_boot=n_boot)
    where = pl.DataFrame(placement, schema=["run_id", "x", "group"], orient="row")
    reference = ds.paper_reference().filter(pl.col("table") == "Table 3")
    table = ds.published_vs_reproduced(ds.run_metrics(summary), where, reference, runs.head(0),
                                       default_group="standard fine-tuning")
    gap_metrics = [f"fairness_gap_{a}" for a in attributes]
    fig = charts.metric_panels(ds.chart_rows(table, ["mean_auc", *gap_metrics]),
                               title=f"Ensembles on {filters.eval_set} (AUC points; hatched: published)")
    widgets.chart(fig)
    st.caption("Fairness gap = best minus worst subgroup mean AUC (points, lower is better). Fairness scores "
               "(C − gap, C over the ensembles shown) are in the table. A reproduced value is undefined when a "
               "subgroup has no positives or no negatives for a pathology.")
    scores = [f"fairness_score_{a}" for a in attributes]
    table = ds.side_by_side(table, ["mean_auc", *gap_metrics, *scores]).rename({"x": "ensemble", "group": "set"})
    st.table(charts.styled(table, blank=charts.blank_columns(table)))
    widgets.export_block("table3_ensembles", fig, table, key=f"{KEY}.table3",
                         caption="Foundation model ensembles: reproduced and published (paper Table 3).")
    figures["table3_ensembles"] = (fig, table)

st.header("Build an ensemble")
infos = {row["run_id"]: row for row in runs.to_dicts()}
taken = tuple(infos) + tuple(name for name, _, _ in shown)
if f"{KEY}.members" in st.session_state:  # after a store change, keep only this store's runs
    st.session_state[f"{KEY}.members"] = [m for m in st.session_state[f"{KEY}.members"] if m in infos]
with st.form(f"{KEY}.builder"):
    st.text_input("Name", key=f"{KEY}.name", placeholder="e.g. MAE + BiT")
    st.multiselect("Members (two or more runs)", list(infos), key=f"{KEY}.members")
    st.selectbox("Combination rule", queries.ENSEMBLE_RULES, key=f"{KEY}.rule", format_func=RULE_LABELS.get,
                 help="mean probability: needs probabilities; mean logit: averages logit(p); rank average: mean "
                      "normalised rank per pathology, for scores on different scales.")
    st.form_submit_button("Add ensemble", on_click=add_ensemble, args=(infos, taken))
kind, message = st.session_state.pop(f"{KEY}.message", (None, None))
if kind:
    (st.success if kind == "success" else st.error)(message)
for name, rule, members in mine:
    left, right = st.columns([5, 1])
    left.markdown(f"**{name}**: {RULE_LABELS.get(rule, rule)} of {', '.join(members)}")
    right.button("Remove", key=f"{KEY}.remove.{name}", on_click=remove_ensemble,
                 args=(state.encode_ensemble(name, rule, list(members)),))

st.header("Ensemble against its members")
choices = {name: (name, rule, members) for name, rule, members in shown}
if not choices:
    st.info("No ensemble yet: add one above.")
    st.stop()
if st.session_state.get(f"{KEY}.compare") not in choices:
    st.session_state.pop(f"{KEY}.compare", None)
left, right = st.columns([3, 2])
pick = left.selectbox("Ensemble", list(choices), key=f"{KEY}.compare")
replicates = right.select_slider("Bootstrap replicates", BOOT_CHOICES, value=200, key=f"{KEY}.n_boot")
chosen = choices[pick]
with st.spinner(f"Paired bootstrap ({replicates} replicates) of {pick} and its members"):
    result = ds.ensemble_comparison(store, fp, ensemble=chosen, eval_set=filters.eval_set, attributes=attributes,
                                    pathologies=filters.pathologies, n_boot=replicates)
stats = result["stats"].with_columns(
    pl.when(pl.col("metric") == "mean_auc").then(pl.col("metric"))
    .otherwise(pl.col("metric") + "_" + pl.col("attribute")).alias("metric"))
order = ["mean_auc", *(f"fairness_gap_{a}" for a in attributes)]  # scores (C - gap) are in the exported table
rows = stats.filter(pl.col("metric").is_in(order)).sort(
    pl.col("metric").replace_strict({m: i for i, m in enumerate(order)}), maintain_order=True).select(
    pl.col("metric").map_elements(ds.metric_label, return_dtype=pl.String).alias("panel"), pl.col("run_id").alias("x"),
    pl.when(pl.col("run_id") == pick).then(pl.lit("ensemble")).otherwise(pl.lit("member")).alias("group"),
    "value", "ci_low", "ci_high")
fig = charts.metric_panels(rows, title=f"{pick} against its members ({replicates} paired replicates, 95 % CI)")
widgets.chart(fig)
st.caption("Mean AUC, fairness gaps and fairness scores (C − gap, C = largest gap of these runs + 1 point) with "
           "95 % percentile intervals:")
st.table(charts.styled(stats.select("run_id", pl.col("metric").map_elements(ds.metric_label, return_dtype=pl.String),
                                "value", "ci_low", "ci_high", "n_boot")))
tests = result["tests"].with_columns(
    pl.when(pl.col("metric") == "mean_auc").then(pl.lit("mean AUC (higher)"))
    .otherwise(pl.col("attribute") + " fairness gap (smaller)").alias("ensemble better in"),
    pl.when(pl.col("p_value").is_null()).then(None).otherwise(
        pl.when(pl.col("p_value") < ALPHA).then(pl.lit("yes")).otherwise(pl.lit("no"))).alias("significant"))
tests = tests.select("member", "ensemble better in", "difference", "ci_low", "ci_high", "p_value", "significant")
st.caption(f"Ensemble minus member, in AUC points, with 95 % percentile intervals. p: one-sided paired bootstrap "
           f"p-value that the ensemble is better (patients drawn with replacement within subgroups; the same draws "
           f"for the ensemble and its members), (k + 1) / (B + 1); significant: p < {ALPHA}, not corrected for "
           "multiple comparisons. Gap intervals are skewed: a max − min over subgroups is biased upward under "
           "resampling, so an interval need not contain the point estimate.")
st.table(charts.styled(tests, precision=3, blank=()))
export = stats.select("run_id", "metric", "value", "ci_low", "ci_high", "n_boot")
export_name = re.sub(r"[^A-Za-z0-9_-]+", "_", f"ensemble_vs_members_{pick}")
widgets.export_block(export_name, fig, export, key=f"{KEY}.members",
                     caption=f"{pick} against its members (paired bootstrap).")
figures[export_name] = (fig, export)
widgets.view_zip(figures, key=f"{KEY}.zip", view="ensembles")
