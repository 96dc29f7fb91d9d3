"""Validation: logits gathered from every rank, the 14-label loss, and the per-pathology AUC used for selection.

Checkpoints are selected on the validation split's mean AUC over the pathologies whose AUC is defined (both
classes present), with targets under the evaluation label policy; the test split is never looked at here.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from engine.data.schema import PATHOLOGIES
from engine.train import distributed
from engine.train.loop import predict_batches


def masked_bce(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over the labelled entries (NaN targets, the 'ignore' policy, are left out)."""
    logits = model(inputs).float()  # [N, 14]
    known = ~torch.isnan(targets)
    losses = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(targets), reduction="none")
    return (losses * known).sum() / known.sum().clamp(min=1)


def gather_logits(model, loader, prepare, autocast, n: int) -> np.ndarray:
    """Logits [n, 14] of the whole dataset in dataset order, assembled from every rank's share."""
    logits, indices = predict_batches(model, loader, prepare, autocast)
    parts = distributed.gather_objects((logits.numpy(), indices.numpy()))
    out = np.full((n, len(PATHOLOGIES)), np.nan, dtype=np.float32)
    for part_logits, part_indices in parts:
        out[part_indices] = part_logits  # the sampler's padding repeats indices: same values, written twice
    if np.isnan(out).any():
        raise RuntimeError("some images received no prediction (sampler did not cover the dataset)")
    return out


def auc_per_pathology(targets: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """sklearn ROC AUC of each pathology; None when a class is missing among the labelled images."""
    result: dict[str, float | None] = {}
    for j, name in enumerate(PATHOLOGIES):
        known = ~np.isnan(targets[:, j])
        y = targets[known, j]
        result[name] = float(roc_auc_score(y, scores[known, j])) if 0 < y.sum() < len(y) else None
    return result


def validation_metrics(targets: np.ndarray, logits: np.ndarray) -> dict:
    """Mean AUC (over defined pathologies), per-pathology AUC and loss of the validation split."""
    aucs = auc_per_pathology(targets, logits)
    defined = [v for v in aucs.values() if v is not None]
    known = ~np.isnan(targets)
    logits_t, targets_t = torch.from_numpy(logits), torch.from_numpy(np.nan_to_num(targets))
    losses = F.binary_cross_entropy_with_logits(logits_t, targets_t, reduction="none").numpy()
    return {"val_mean_auc": float(np.mean(defined)) if defined else None, "val_auc": aucs,
            "val_loss": float(losses[known].mean()), "val_n_defined": len(defined)}
