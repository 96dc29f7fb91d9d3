"""Ensembles: combined scores of several runs, registered as rows every other query can use."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import polars as pl

from engine.data.errors import DataError
from engine.metrics.queries._core import (
    ENSEMBLE_DECIMALS,
    ENSEMBLE_RULES,
    LOGIT_EPSILON,
    _run,
    runs,
)

# ---------------------------------------------------------------------------------------------------- ensembles


@dataclass(frozen=True)
class EnsembleRegistration:
    """What ``register_ensemble`` added: rows kept, and the keys dropped because not every member scored them."""

    name: str
    members: tuple[str, ...]
    rule: str
    n_rows: int
    n_dropped: int
    coverage: pl.DataFrame  # n_members_scoring, n_keys, kept


def check_ensemble_members(run_infos: Sequence[Mapping[str, Any]], rule: str) -> None:
    """Raise ValueError unless runs (run.json dicts) can be ensembled by ``rule``.

    Members must share cohort_hash and evaluation_label_policy; "mean-probability" needs score_kind
    "probability" everywhere, "mean-logit" needs "probability" or "logit"; "rank-average" takes any score.
    """
    if rule not in ENSEMBLE_RULES:
        raise ValueError(f"rule must be one of {ENSEMBLE_RULES}, not {rule!r}")
    if len(run_infos) < 2:
        raise ValueError(f"an ensemble needs at least two members, got {len(run_infos)}")
    for field in ("cohort_hash", "evaluation_label_policy"):
        values = {info.get("run_id", "?"): info.get(field) for info in run_infos}
        if len(set(values.values())) > 1:
            raise ValueError(f"ensemble members differ in {field}: {values}")
    allowed = {"mean-probability": {"probability"}, "mean-logit": {"probability", "logit"}}.get(rule)
    if allowed is not None:
        wrong = {info.get("run_id", "?"): info.get("score_kind") for info in run_infos
                 if info.get("score_kind") not in allowed}
        if wrong:
            raise ValueError(f"rule {rule!r} needs score_kind in {sorted(allowed)}; members with others: {wrong}")


def _register_checks(con: duckdb.DuckDBPyConnection, name: str, members: list[str], rule: str,
                     score_kinds: Mapping[str, str] | None) -> list[str]:
    """Check names and rule; return the members whose scores are probabilities (converted by mean-logit)."""
    if rule not in ENSEMBLE_RULES:
        raise ValueError(f"rule must be one of {ENSEMBLE_RULES}, not {rule!r}")
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two distinct members, got {members}")
    known = set(runs(con)["run_id"].to_list())
    if name in known:
        raise ValueError(f"run_id {name!r} exists already; pick another ensemble name")
    unknown = [member for member in members if member not in known]
    if unknown:
        raise ValueError(f"unknown ensemble member(s) {unknown}")
    if rule == "mean-logit" and score_kinds is None:
        raise ValueError("rule 'mean-logit' needs score_kinds (run_id -> score_kind from run.json)")
    if score_kinds is not None:
        check_ensemble_members([{"run_id": m, "score_kind": score_kinds.get(m)} for m in members], rule)
    return [m for m in members if score_kinds is not None and score_kinds.get(m) == "probability"]


def register_ensemble(con: duckdb.DuckDBPyConnection, *, name: str, members: Sequence[str],
                      rule: str = "mean-probability",
                      score_kinds: Mapping[str, str] | None = None) -> EnsembleRegistration:
    """Add an ensemble's rows under ``run_id=name``; every query then accepts ``name`` as a run.

    Only keys (split, image_id, pathology) scored by EVERY member are kept; y_true (and weight) must agree across
    members, else DataError. ``score_kinds`` (run_id -> run.json score_kind) is required by "mean-logit", which
    converts the probability members with logit(p). Cohort hash and label policy: ``check_ensemble_members``.
    """
    member_list = list(dict.fromkeys(members))
    probability_members = _register_checks(con, name, member_list, rule, score_kinds)
    params = {"name": name, "members": member_list, "rule": rule, "probability_members": probability_members,
              "logit_epsilon": LOGIT_EPSILON, "decimals": ENSEMBLE_DECIMALS}
    rows = _run(con, "ensemble_scores", params)
    for flag, what in (("labels_agree", "y_true"), ("weights_agree", "weight")):
        bad = rows.filter(~pl.col(flag))
        if bad.height:
            examples = [f"{r['split']}/{r['pathology']}/{r['image_id']}" for r in bad.head(5).iter_rows(named=True)]
            raise DataError(f"ensemble members {member_list} disagree on {what}", column=what, rows=examples,
                            n_bad=bad.height, hint="members must be evaluated on the same labels")
    coverage = _run(con, "ensemble_coverage", {"members": member_list})
    kept = rows.drop("labels_agree", "weights_agree")
    con.from_arrow(kept.to_arrow()).insert_into("ensemble_predictions")
    n_dropped = int(coverage.filter(~pl.col("kept"))["n_keys"].sum())
    return EnsembleRegistration(name, tuple(member_list), rule, kept.height, n_dropped, coverage)
