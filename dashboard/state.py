"""Session-state and URL keys in one place. Every shared filter is bound to the URL query string
(``bind="query-params"``, Streamlit >= 1.67), so a copied URL reopens the same view.

A widget's key is its query-parameter name: keep them short, stable and documented here.
"""

from __future__ import annotations

# Shared sidebar filters (dashboard/app.py), all URL-bound.
STORE = "store"  # results-store folder
RUNS = "runs"  # selected run ids
ATTRIBUTES = "attr"  # attributes, e.g. sex, race, "sex x race"
PATHOLOGY = "path"  # "mean" (mean of the chosen pathologies) or one pathology
BALANCING = "bal"  # standard / balanced / both
EVAL_SET = "eval"  # test, validate, resampled, glocker-original, ...
SHOW_CI = "ci"  # bootstrap intervals on/off
SHOW_ENSEMBLES = "ens"  # add the paper's ensembles and the user's ensembles as rows
CUSTOM_ENSEMBLES = "myens"  # user-built ensembles, encoded by encode_ensemble

# Page-local keys are prefixed with the page name, e.g. "subgroups.unit".

ENSEMBLE_FIELD_SEPARATOR = "~"
ENSEMBLE_MEMBER_SEPARATOR = "+"


def encode_ensemble(name: str, rule: str, members: list[str]) -> str:
    """One URL-safe string per user ensemble: ``name~rule~run1+run2`` (names must not contain ~ or +)."""
    for part in (name, rule, *members):
        if ENSEMBLE_FIELD_SEPARATOR in part or ENSEMBLE_MEMBER_SEPARATOR in part:
            raise ValueError(f"ensemble names and run ids may not contain '~' or '+': {part!r}")
    return ENSEMBLE_FIELD_SEPARATOR.join((name, rule, ENSEMBLE_MEMBER_SEPARATOR.join(members)))


def decode_ensemble(text: str) -> tuple[str, str, list[str]]:
    """Inverse of encode_ensemble; ValueError on a malformed value (the app then ignores it and says so)."""
    parts = text.split(ENSEMBLE_FIELD_SEPARATOR)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"malformed ensemble {text!r}; expected name~rule~run1+run2")
    name, rule, members = parts
    return name, rule, members.split(ENSEMBLE_MEMBER_SEPARATOR)
