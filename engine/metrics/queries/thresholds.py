"""Threshold metrics, operating points, equalized odds, underdiagnosis and calibration."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import polars as pl

from engine.metrics.queries._core import (
    VALIDATION_SPLIT,
    _eval_set_name,
    _known_runs_only,
    _names,
    _pathology_list,
    _run,
    _scope,
)
from engine.metrics.store_schema import ALL_ATTRIBUTE

# ---------------------------------------------------------------------------------------------------- thresholds


def _selection_label(select_on: str) -> str:
    return "validation" if select_on == VALIDATION_SPLIT else select_on


def operating_threshold(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str],
                        pathologies: str | Sequence[str] | None = None, operating_fpr: float | None = None,
                        youden: bool = False, select_on: str = VALIDATION_SPLIT) -> pl.DataFrame:
    """Per run and pathology, the threshold chosen on ``select_on``'s population (see operating_threshold.sql).

    Exactly one of ``operating_fpr`` (largest FPR not above it) and ``youden`` (max TPR - FPR).
    Columns: run_id, pathology, threshold, threshold_source, selection_tpr, selection_fpr.
    """
    if (operating_fpr is None) == (not youden):
        raise ValueError("give exactly one of operating_fpr and youden=True")
    rule = "youden" if youden else "fpr"
    source = f"{_selection_label(select_on)}-{'youden' if youden else f'fpr-{operating_fpr:g}'}"
    params = {"run_ids": _names(run_ids, "run_ids"), "select_on": _eval_set_name(con, select_on),
              "pathologies": _pathology_list(pathologies), "rule": rule,
              "target_fpr": operating_fpr, "source": source}
    return _run(con, "operating_threshold", params)


def _thresholds(con: duckdb.DuckDBPyConnection, run_ids: list[str], pathologies: list[str] | None,
                threshold: float | None, operating_fpr: float | None, youden: bool, select_on: str,
                scores_are_probabilities: bool) -> pl.DataFrame:
    """run_id, pathology (null = all), threshold, threshold_source: the thresholds threshold_metrics applies."""
    if threshold is not None and (operating_fpr is not None or youden):
        raise ValueError("give either threshold or an operating point (operating_fpr / youden), not both")
    if operating_fpr is not None or youden:
        chosen = operating_threshold(con, run_ids=run_ids, pathologies=pathologies, operating_fpr=operating_fpr,
                                     youden=youden, select_on=select_on)
        return chosen.select("run_id", "pathology", "threshold", "threshold_source")
    if threshold is None:
        if not scores_are_probabilities:
            raise ValueError("no threshold: pass threshold=, operating_fpr= or youden=True (0.5 is applied "
                             "only with scores_are_probabilities=True)")
        threshold, source = 0.5, "default-0.5"
    else:
        source = "given"
    return pl.DataFrame({"run_id": run_ids, "pathology": [None] * len(run_ids),
                         "threshold": [float(threshold)] * len(run_ids), "threshold_source": [source] * len(run_ids)},
                        schema={"run_id": pl.String, "pathology": pl.String, "threshold": pl.Float64,
                                "threshold_source": pl.String})


def threshold_metrics(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str], eval_set: str = "test",
                      attributes: str | Sequence[str] = ("sex", "race"),
                      pathologies: str | Sequence[str] | None = None, threshold: float | None = None,
                      operating_fpr: float | None = None, youden: bool = False, select_on: str = VALIDATION_SPLIT,
                      scores_are_probabilities: bool = False) -> pl.DataFrame:
    """Weighted tp, fp, tn, fn and tpr, fpr, fnr, tnr per subgroup at a threshold (``y_score >= t`` positive).

    The threshold is ``threshold`` ("given"), or chosen per run and pathology on ``select_on``'s population
    (the validation split by default): ``operating_fpr`` or ``youden``. With none of them the threshold is 0.5
    only when ``scores_are_probabilities`` (the caller read run.json); otherwise ValueError.
    """
    params = _scope(con, run_ids, eval_set, attributes, pathologies, with_all=True)
    thresholds = _thresholds(con, params["run_ids"], params["pathologies"], threshold, operating_fpr, youden,
                             select_on, scores_are_probabilities)
    table = _run(con, "threshold_metrics", params, {"thresholds": thresholds})
    return _known_runs_only(con, params["run_ids"], table)


def equalized_odds_difference(con: duckdb.DuckDBPyConnection, *, metrics: pl.DataFrame | None = None,
                              **threshold_args: Any) -> pl.DataFrame:
    """Per run, pathology and attribute: max(TPR difference, FPR difference) between subgroups (fairlearn).

    Reads a threshold_metrics table (``metrics``) or computes one from ``threshold_args``.
    """
    metrics = threshold_metrics(con, **threshold_args) if metrics is None else metrics
    return _run(con, "equalized_odds_difference", {}, {"threshold_metrics": metrics})


def underdiagnosis(con: duckdb.DuckDBPyConnection, *, metrics: pl.DataFrame | None = None,
                   **threshold_args: Any) -> pl.DataFrame:
    """Underdiagnosis rate per subgroup (Seyyed-Kalantari et al. 2021): the FPR of "No Finding".

    A false positive of "No Finding" is a patient with a finding predicted healthy. Columns: run_id, eval_set,
    attribute, subgroup, threshold, threshold_source, underdiagnosis_rate, fp, tn, n.
    """
    if metrics is None:
        metrics = threshold_metrics(con, **{**threshold_args, "pathologies": ["No Finding"]})
    return (metrics.filter(pl.col("pathology") == "No Finding")
            .select("run_id", "eval_set", "attribute", "subgroup", "threshold", "threshold_source",
                    pl.col("fpr").alias("underdiagnosis_rate"), "fp", "tn", "n"))


# ---------------------------------------------------------------------------------------------------- calibration


def ece(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str], eval_set: str = "test",
        attributes: str | Sequence[str] = ("sex", "race"), pathologies: str | Sequence[str] | None = None,
        n_bins: int = 10) -> pl.DataFrame:
    """Expected calibration error per subgroup: equal-width bins, sum_b (W_b / W) |mean p - mean y|.

    For probability runs only: ValueError when any scored row of the scope lies outside [0, 1].
    Columns: run_id, eval_set, pathology, attribute, subgroup, n, w, ece, n_bins.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be positive, not {n_bins}")
    params = _scope(con, run_ids, eval_set, attributes, pathologies, with_all=True)
    table = _known_runs_only(con, params["run_ids"], _run(con, "ece", {**params, "n_bins": n_bins}))
    outside = table.filter(pl.col("attribute") == ALL_ATTRIBUTE, pl.col("n_outside") > 0)
    if outside.height:
        raise ValueError(f"ECE needs probabilities; scores outside [0, 1] in runs "
                         f"{sorted(set(outside['run_id'].to_list()))}")
    return table.drop("n_outside")
