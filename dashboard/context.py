"""What every page needs from the frame: the store and the shared sidebar filters, read from session state.

The frame (dashboard/app.py) draws the sidebar widgets with the keys of dashboard/state.py; pages call
``current_filters()`` and never read widget keys themselves. Pages run standalone in tests: any key not set falls
back to the defaults below.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from dashboard import data, state
from dashboard.state import decode_ensemble


@dataclass(frozen=True)
class Filters:
    store: str
    fingerprint: str
    run_ids: tuple[str, ...]  # selected single runs
    attributes: tuple[str, ...]  # e.g. ("sex", "race") or ("sex x race",)
    pathology: str  # "mean" or one pathology
    balancing: str  # "standard", "balanced" or "both"
    eval_set: str
    show_ci: bool
    show_ensembles: bool
    ensembles: tuple[tuple[str, str, tuple[str, ...]], ...]  # (name, rule, members): paper + user ensembles

    @property
    def pathologies(self) -> tuple[str, ...] | None:
        """The pathologies a mean is over (None = all 14) or the single chosen one."""
        return None if self.pathology == "mean" else (self.pathology,)

    @property
    def all_run_ids(self) -> tuple[str, ...]:
        """Selected runs plus, when the ensembles toggle is on, every ensemble name (rows beside the models)."""
        extra = tuple(name for name, _, _ in self.ensembles) if self.show_ensembles else ()
        return self.run_ids + extra


def current_filters() -> Filters:
    """The shared filters of this script run (defaults when the frame has not drawn them, e.g. in tests)."""
    ss = st.session_state
    store = ss.get(state.STORE) or data.default_store()
    fingerprint = data.store_fingerprint(store)
    custom = []
    for text in ss.get(state.CUSTOM_ENSEMBLES, []) or []:
        try:
            name, rule, members = decode_ensemble(text)
        except ValueError:
            continue  # the frame reports malformed values
        custom.append((name, rule, tuple(members)))
    return Filters(
        store=store, fingerprint=fingerprint, run_ids=tuple(ss.get(state.RUNS, []) or []),
        attributes=tuple(ss.get(state.ATTRIBUTES, ["sex", "race"]) or ["sex", "race"]),
        pathology=ss.get(state.PATHOLOGY, "mean") or "mean", balancing=ss.get(state.BALANCING, "standard"),
        eval_set=ss.get(state.EVAL_SET, "resampled"), show_ci=bool(ss.get(state.SHOW_CI, False)),
        show_ensembles=bool(ss.get(state.SHOW_ENSEMBLES, False)),
        ensembles=tuple(ss.get("_paper_ensembles", ())) + tuple(custom),
    )
