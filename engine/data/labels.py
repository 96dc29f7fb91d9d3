"""Label policies: how raw CheXpert labels (1 / 0 / -1 uncertain / null blank) become training or scoring targets.

Policies (names used in configs and run.json):

- ``u-zeros``: uncertain -> 0, blank -> 0 (chexploration's evaluation: target = label == 1).
- ``u-ones``: uncertain -> 1, blank -> 0 (Irvin et al. 2019 U-Ones).
- ``medical-mae``: U-Ones for Edema and Atelectasis, U-Zeros for every other pathology, blank -> 0
  (Medical MAE's CheXpert loader, shared/notes/peers.md section 6a, extended from its 5 labels to all 14).
- ``ignore``: uncertain -> null (masked out of the loss or the metric), blank -> 0.

The evaluation policy must be one fixed choice for all runs; the default is ``u-zeros`` as upstream.
"""

from __future__ import annotations

import polars as pl

from engine.data.schema import PATHOLOGIES

LABEL_POLICIES: tuple[str, ...] = ("u-zeros", "u-ones", "medical-mae", "ignore")
DEFAULT_EVALUATION_POLICY = "u-zeros"
DEFAULT_TRAINING_POLICY = "medical-mae"
MEDICAL_MAE_U_ONES: frozenset[str] = frozenset({"Edema", "Atelectasis"})


def uncertain_value(policy: str, pathology: str) -> float | None:
    """The target an uncertain (-1) label gets under ``policy`` for ``pathology`` (None = masked)."""
    if policy == "u-zeros":
        return 0.0
    if policy == "u-ones":
        return 1.0
    if policy == "medical-mae":
        return 1.0 if pathology in MEDICAL_MAE_U_ONES else 0.0
    if policy == "ignore":
        return None
    raise ValueError(f"unknown label policy {policy!r}; choose one of {', '.join(LABEL_POLICIES)}")


def target_expr(raw: pl.Expr, policy: str, pathology: str) -> pl.Expr:
    """Polars expression turning a raw label column into a 0/1 (or null) target under ``policy``."""
    uncertain = uncertain_value(policy, pathology)
    return (
        pl.when(raw == 1.0)
        .then(pl.lit(1.0))
        .when(raw == -1.0)
        .then(pl.lit(uncertain, dtype=pl.Float64))
        .otherwise(pl.lit(0.0))  # 0 and blank
        .cast(pl.Float64)
    )


def apply_policy(cohort: pl.DataFrame, policy: str, pathologies: tuple[str, ...] = PATHOLOGIES) -> pl.DataFrame:
    """Return ``cohort`` with each raw pathology column replaced by its target under ``policy``."""
    uncertain_value(policy, pathologies[0])  # validates the name early
    return cohort.with_columns(target_expr(pl.col(p), policy, p).alias(p) for p in pathologies)
