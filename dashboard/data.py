"""Cached queries for the dashboard: thin wrappers over engine.metrics.analysis. Figures are never cached.

Every function takes the store path and its fingerprint (changes when runs are added or rewritten), so caches
invalidate themselves; arguments are hashable (tuples). The DuckDB connection is shared per store through
``st.cache_resource``; engine.metrics opens a cursor per query, which is what DuckDB requires across threads.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import polars as pl
import streamlit as st

from engine.metrics import analysis, queries
from engine.metrics.store import list_runs, read_cohort

DEFAULT_STORE_ENV = "FMFAIR_STORE"


def store_fingerprint(store: str) -> str:
    """Cheap change detector: newest modification time and number of files under the store (no hashing)."""
    root = Path(store)
    if not root.is_dir():
        return "missing"
    stamps = [p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and ".staging" not in p.parts]
    return f"{len(stamps)}:{max(stamps, default=0)}"


def is_store(store: str) -> bool:
    """A results store has cohort.parquet and a runs/ folder with at least one run."""
    root = Path(store)
    return (root / "cohort.parquet").is_file() and any((root / "runs").glob("*/run.json"))


@st.cache_resource(max_entries=4)
def store_view(store: str, fingerprint: str) -> analysis.StoreView:
    """One open store per (path, content version), shared by every session."""
    return analysis.open_store(store)


# Ensembles registered on each shared connection: name -> (rule, members). A name is registered once per store
# version; asking for the same name with other members or another rule is an error, never a silent reuse.
_REGISTERED: dict[int, dict[str, tuple[str, tuple[str, ...]]]] = {}
_REGISTER_LOCK = threading.Lock()


def _ensembles(view: analysis.StoreView, ensembles: tuple[tuple[str, str, tuple[str, ...]], ...]) -> None:
    with _REGISTER_LOCK:
        done = _REGISTERED.setdefault(id(view.con), {})
        pending = {}
        for name, rule, members in ensembles:
            if name in done and done[name] != (rule, tuple(members)):
                raise ValueError(f"an ensemble named {name!r} with other members or rule exists in this store "
                                 f"session ({done[name][0]}: {', '.join(done[name][1])}); choose another name")
            if name not in done:
                pending[name] = (list(members), rule)
        if pending:
            analysis.register_ensembles(view, pending)
            done.update({name: (rule, tuple(members)) for name, (members, rule) in pending.items()})


def _view(store: str, fingerprint: str, ensembles: tuple = ()) -> analysis.StoreView:
    """The shared store view with the requested ensembles registered on it."""
    view = store_view(store, fingerprint)
    _ensembles(view, ensembles)
    return view


@st.cache_data(max_entries=64, show_spinner=False)
def runs_table(store: str, fingerprint: str) -> pl.DataFrame:
    return list_runs(store)


@st.cache_data(max_entries=8, show_spinner=False)
def cohort(store: str, fingerprint: str) -> pl.DataFrame:
    return read_cohort(store)


@st.cache_data(max_entries=8, show_spinner=False)
def eval_sets(store: str, fingerprint: str) -> list[str]:
    return queries.eval_sets(store_view(store, fingerprint).con)["eval_set"].to_list()


@st.cache_data(max_entries=8, show_spinner=False)
def attributes(store: str, fingerprint: str) -> list[str]:
    return queries.attributes(store_view(store, fingerprint).con)


@st.cache_data(max_entries=128, show_spinner=False)
def fairness(store: str, fingerprint: str, *, run_ids: tuple[str, ...], eval_set: str, attributes: tuple[str, ...],
             pathologies: tuple[str, ...] | None = None, ensembles: tuple = (), n_boot: int = 0,
             seed: int = 0) -> pl.DataFrame:
    """fairness_summary of ``run_ids`` (C over exactly these runs: the current view)."""
    view = _view(store, fingerprint, ensembles)
    return analysis.fairness_summary(view, run_ids=run_ids, eval_set=eval_set, attributes=attributes,
                                     pathologies=pathologies, n_boot=n_boot, seed=seed)


@st.cache_data(max_entries=128, show_spinner=False)
def subgroup_auc(store: str, fingerprint: str, *, run_ids: tuple[str, ...], eval_set: str,
                 attributes: tuple[str, ...], pathologies: tuple[str, ...] | None = None, ensembles: tuple = (),
                 n_boot: int = 0, seed: int = 0) -> pl.DataFrame:
    view = _view(store, fingerprint, ensembles)
    return analysis.subgroup_auc(view, run_ids=run_ids, eval_set=eval_set, attributes=attributes,
                                 pathologies=pathologies, n_boot=n_boot, seed=seed)


@st.cache_data(max_entries=128, show_spinner=False)
def relative_change(store: str, fingerprint: str, *, run_ids: tuple[str, ...], eval_set: str,
                    attributes: tuple[str, ...], pathologies: tuple[str, ...] | None = None,
                    reference: str = "population", unit: str = "pts", ensembles: tuple = ()) -> pl.DataFrame:
    view = _view(store, fingerprint, ensembles)
    return analysis.relative_change(view, run_ids=run_ids, eval_set=eval_set, attributes=attributes,
                                    pathologies=pathologies, reference=reference, unit=unit)


@st.cache_data(max_entries=64, show_spinner=False)
def threshold_metrics(store: str, fingerprint: str, *, run_ids: tuple[str, ...], eval_set: str,
                      attributes: tuple[str, ...], pathologies: tuple[str, ...] | None = None,
                      threshold: float | None = None, operating_fpr: float | None = None, youden: bool = False,
                      select_on: str = "validate") -> pl.DataFrame:
    view = store_view(store, fingerprint)
    return analysis.threshold_metrics(view, run_ids=run_ids, eval_set=eval_set, attributes=attributes,
                                      pathologies=pathologies, threshold=threshold, operating_fpr=operating_fpr,
                                      youden=youden, select_on=select_on)


def default_store() -> str:
    """The store the dashboard opens first: $FMFAIR_STORE, else the demo store."""
    return os.environ.get(DEFAULT_STORE_ENV, "demo/store")
