"""The shared sidebar filters, drawn by the frame on every page. Each widget's key is its URL query parameter
(dashboard/state.py, ``bind="query-params"``), so a copied URL reopens the same view; pages read the values through
``dashboard.context.current_filters()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import polars as pl
import streamlit as st

from dashboard import data, state, tables
from engine.data.schema import PATHOLOGIES
from engine.metrics import analysis
from engine.metrics.queries import ENSEMBLE_RULES
from engine.metrics.store_schema import ALL_ATTRIBUTE, BALANCING, INTERSECTION_SEPARATOR

PAPER_ENSEMBLES_KEY = "_paper_ensembles"  # read by dashboard.context
SEEN_KEY = "_frame.seen"  # (store, balancing) of the previous run: a change resets the model selection
DEFAULT_ATTRIBUTES = ("sex", "race")
DEFAULT_EVAL_SETS = ("resampled", "test")
BOUND = dict(bind="query-params", persist_state="session")


@dataclass(frozen=True)
class FrameStatus:
    store: str
    is_store: bool
    synthetic: bool = False


def _keep_valid(key: str, allowed: list[str], fallback: str) -> None:
    """Reset a single-choice widget whose stored value the (new) store does not offer."""
    if key in st.session_state and st.session_state[key] not in allowed:
        st.session_state[key] = fallback


def _sync_runs(store: str, balancing: str, matrix: list[str], run_ids: list[str]) -> None:
    """Switching store or balancing selects that setting's model matrix; unknown runs are dropped."""
    ss = st.session_state
    seen, now = ss.get(SEEN_KEY), (store, balancing)
    if seen is not None and seen != now:
        ss[state.RUNS] = matrix
    elif state.RUNS in ss:
        valid = [r for r in ss[state.RUNS] if r in run_ids]
        if valid != ss[state.RUNS]:
            ss[state.RUNS] = valid
    ss[SEEN_KEY] = now


def ensemble_rule(runs: pl.DataFrame, members: list[str]) -> str:
    """The paper averages probabilities; members with other score kinds are rank-averaged instead."""
    kinds = set(runs.filter(pl.col("run_id").is_in(members))["score_kind"].to_list())
    return "mean-probability" if kinds == {"probability"} else "rank-average"


def paper_ensembles(runs: pl.DataFrame, balancing: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """Table 3's ensembles of this balancing's runs; balanced ones carry the suffix " (balanced)" so the two never
    share a name (an ensemble is registered once per name)."""
    suffix = "" if balancing == "standard" else f" ({balancing})"
    return tuple((name + suffix, ensemble_rule(runs, members), tuple(members))
                 for name, members in analysis.paper_ensembles(runs, balancing=balancing).items())


def ensemble_problem(text: str, runs: pl.DataFrame) -> str | None:
    """Why a user ensemble (encoded by state.encode_ensemble) cannot be computed on this store, or None."""
    try:
        name, rule, members = state.decode_ensemble(text)
    except ValueError as exc:
        return str(exc)
    known = runs.filter(pl.col("run_id").is_in(members))
    if rule not in ENSEMBLE_RULES:
        return f"unknown rule {rule!r} (choose {', '.join(ENSEMBLE_RULES)})"
    if name in runs["run_id"].to_list():
        return f"name {name!r} is already a run id"
    if known.height != len(set(members)):
        return f"runs not in this store: {sorted(set(members) - set(known['run_id'].to_list()))}"
    for column in ("cohort_hash", "evaluation_label_policy"):
        if known[column].n_unique() > 1:
            return f"members differ in {column}"
    allowed = {"mean-probability": {"probability"}, "mean-logit": {"probability", "logit"}}.get(rule)
    if allowed and not set(known["score_kind"].to_list()) <= allowed:
        return f"rule {rule} needs scores of kind {' or '.join(sorted(allowed))}"
    return None


def _custom_ensembles(runs: pl.DataFrame) -> None:
    """User-built ensembles (added by the Ensembles page): URL-bound, removable here; invalid ones are dropped."""
    ss = st.session_state
    if state.CUSTOM_ENSEMBLES in ss:
        current = list(ss[state.CUSTOM_ENSEMBLES] or [])
        valid = [t for t in current if ensemble_problem(t, runs) is None]
        if valid != current:
            ss[state.CUSTOM_ENSEMBLES] = valid
            ss["_frame.dropped"] = [f"{t}: {ensemble_problem(t, runs)}" for t in current if t not in valid]
    chosen = st.multiselect("My ensembles", list(ss.get(state.CUSTOM_ENSEMBLES) or []), key=state.CUSTOM_ENSEMBLES,
                            accept_new_options=True, help="Built on the Ensembles page; written name~rule~run1+run2. "
                            "Remove one here.", **BOUND)
    if any(ensemble_problem(t, runs) for t in chosen):
        st.rerun()  # dropped before the widget is drawn on the next run
    for message in ss.pop("_frame.dropped", []):
        st.warning(f"Ignored ensemble {message}")


def _attribute_options(store: str, fingerprint: str) -> list[str]:
    single = [a for a in data.attributes(store, fingerprint) if a != ALL_ATTRIBUTE]
    return single + [f"{a}{INTERSECTION_SEPARATOR}{b}" for a, b in combinations(single, 2)]


def draw_sidebar() -> FrameStatus:
    """Draw the shared filters; returns which store is open and whether it is synthetic."""
    ss = st.session_state
    with st.sidebar:
        store = st.text_input("Results store", value=data.default_store(), key=state.STORE,
                              help="Folder with cohort.parquet and runs/ (see the Data page).", **BOUND)
        if not data.is_store(store):
            ss[PAPER_ENSEMBLES_KEY] = ()
            st.caption("No results store in this folder yet.")
            return FrameStatus(store, False)
        fingerprint = data.store_fingerprint(store)
        runs = data.runs_table(store, fingerprint)
        # URL-bound choices show their values as labels: the URL holds the label text
        balancing = st.radio("Fine-tuning set", BALANCING, key=state.BALANCING, horizontal=True,
                             help="balanced: fine-tuned on the race- and sex-balanced set (Figure 2).", **BOUND)
        run_ids = runs["run_id"].to_list()
        matrix = analysis.model_matrix(runs, balancing=balancing)["run_id"].to_list()
        _sync_runs(store, balancing, matrix, run_ids)
        labels = tables.run_labels(runs, run_ids)
        st.multiselect("Models", run_ids, default=matrix, format_func=labels.get, key=state.RUNS,
                       help="Default: the paper's model matrix (Figures 1, 2, 4) for this fine-tuning set.", **BOUND)
        options = _attribute_options(store, fingerprint)
        default = [a for a in DEFAULT_ATTRIBUTES if a in options] or options[:1]
        if state.ATTRIBUTES in ss and any(a not in options for a in ss[state.ATTRIBUTES]):
            ss[state.ATTRIBUTES] = [a for a in ss[state.ATTRIBUTES] if a in options]
        st.multiselect("Attributes", options, default=default, key=state.ATTRIBUTES,
                       help="Protected attributes; 'a x b' is an intersection.", **BOUND)
        st.selectbox("Pathology", ["mean", *PATHOLOGIES], key=state.PATHOLOGY,
                     help="'mean': the mean over all pathologies (the paper's headline numbers).", **BOUND)
        sets = data.eval_sets(store, fingerprint)
        fallback = next((s for s in DEFAULT_EVAL_SETS if s in sets), sets[0])
        _keep_valid(state.EVAL_SET, sets, fallback)
        st.selectbox("Evaluation set", sets, index=sets.index(fallback), key=state.EVAL_SET,
                     help="A split, or a resampled set of subsets.parquet (the paper: resampled test sets).", **BOUND)
        st.toggle("95 % bootstrap intervals", key=state.SHOW_CI, help="200 patient-level resamples, seed 0.", **BOUND)
        show = st.toggle("Ensembles (Table 3)", key=state.SHOW_ENSEMBLES,
                         help="Adds the paper's ensembles and yours as rows beside the models.", **BOUND)
        ss[PAPER_ENSEMBLES_KEY] = paper_ensembles(runs, balancing) if show else ()
        _custom_ensembles(runs)
    return FrameStatus(store, True, tables.is_synthetic(store, runs))
