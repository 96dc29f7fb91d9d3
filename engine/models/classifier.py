"""The 14-label classifier of a registry model: timm backbone + pre-trained weights + new head, or a linear probe.

Fine-tuning follows Medical MAE (formats.md sections 1-2 and 7): ViTs pool the patch tokens (``global_pool='avg'``)
into a fresh ``fc_norm``; the new head of a ViT starts from a truncated normal of std 2e-5 (MAE main_finetune.py).
Linear probing follows MAE's main_linprobe.py: a frozen backbone in eval mode, BatchNorm without affine, a linear
head; ``check_backbone_unchanged`` is MoCo v3's ``sanity_check``.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from engine.models.registry import VIT, ModelSpec
from engine.models.weights import LoadReport, load_pretrained

NUM_LABELS = 14


def create_backbone(spec: ModelSpec, architecture: str, *, num_classes: int, input_size: int, drop_path: float,
                    global_pool: str) -> nn.Module:
    """Randomly initialised timm model of ``architecture`` (no download: ``pretrained=False`` always)."""
    kwargs: dict = {"num_classes": num_classes, "drop_path_rate": drop_path}
    if spec.family == VIT:
        kwargs.update(global_pool=global_pool, img_size=input_size)
    return timm.create_model(architecture, pretrained=False, **kwargs)


class LinearProbe(nn.Module):
    """Frozen backbone -> BatchNorm1d(affine=False) -> Linear; the backbone stays in eval mode when training."""

    def __init__(self, backbone: nn.Module, num_classes: int = NUM_LABELS):
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        features = backbone.num_features
        self.head = nn.Sequential(nn.BatchNorm1d(features, affine=False, eps=1e-6), nn.Linear(features, num_classes))
        nn.init.trunc_normal_(self.head[1].weight, std=0.01)  # MAE main_linprobe.py
        nn.init.zeros_(self.head[1].bias)

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.backbone.eval()  # BatchNorm statistics and dropout of the backbone never change
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.backbone(images)  # [N, D]
        return self.head(features)  # [N, 14]


def build_classifier(spec: ModelSpec, architecture: str, weights: Path | None, *, weights_format: str, mode: str,
                     input_size: int, drop_path: float, global_pool: str) -> tuple[nn.Module, LoadReport | None]:
    """The model to train and the report of its weight loading (None for a scratch baseline)."""
    probe = mode == "linear-probe"
    model = create_backbone(spec, architecture, num_classes=0 if probe else NUM_LABELS, input_size=input_size,
                            drop_path=0.0 if probe else drop_path, global_pool=global_pool)
    report = load_pretrained(model, weights, weights_format, model_name=spec.name) if weights is not None else None
    if probe:
        return LinearProbe(model), report
    if spec.family == VIT:
        nn.init.trunc_normal_(model.head.weight, std=2e-5)
        nn.init.zeros_(model.head.bias)
    return model, report


def backbone_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of a linear probe's backbone state (parameters and buffers) for ``check_backbone_unchanged``."""
    return {k: v.detach().clone() for k, v in _unwrap(model).backbone.state_dict().items()}


def check_backbone_unchanged(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    """Raise when any backbone tensor differs bit for bit from ``snapshot`` (MoCo v3 main_lincls.py sanity_check)."""
    state = _unwrap(model).backbone.state_dict()
    changed = [k for k, v in state.items() if not torch.equal(v.cpu(), snapshot[k].cpu())]
    if changed:
        raise RuntimeError(f"linear probe changed {len(changed)} backbone tensor(s): {', '.join(changed[:5])}")


def _unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
