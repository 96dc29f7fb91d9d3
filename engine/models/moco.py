"""MoCo v3 for a timm ViT: base and momentum encoders, projector and predictor MLPs, symmetric contrastive loss.

Reference: Chen, Xie and He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV 2021
(arXiv:2104.02057): Algorithm 1 (symmetric loss ``ctr(q1, k2) + ctr(q2, k1)``, each ``2 tau CE(q k^T / tau)``),
section 4 (3-layer projector and 2-layer predictor with BatchNorm, 4096 hidden / 256 out, the last BN without
affine; momentum 0.99 raised to 1 on a cosine; keys gathered across devices) and section 5 (frozen random patch
projection). Re-implemented on timm (Apache-2.0); the official code is CC BY-NC and was not copied.

The projector replaces the ViT's head (``base_encoder.head.0 ... head.7``, the official checkpoint layout of
formats.md section 3), so ``base_encoder`` minus ``head.*`` is a plain timm encoder that fine-tuning loads.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from engine.models.mae import create_encoder


def build_mlp(layers: int, in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear (no bias) -> BN -> ReLU, ``layers`` times; the last layer ends in a BN without affine parameters."""
    modules: list[nn.Module] = []
    for layer in range(layers):
        last = layer == layers - 1
        modules.append(nn.Linear(in_dim if layer == 0 else hidden, out_dim if last else hidden, bias=False))
        modules += [nn.BatchNorm1d(out_dim, affine=False)] if last else [nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
    return nn.Sequential(*modules)


def momentum_at(step: int, total_steps: int, base: float, cosine: bool = True) -> float:
    """EMA coefficient at ``step``: ``base`` at the start, rising to 1 at the end on a half cosine."""
    if not cosine:
        return base
    return 1.0 - 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1))) * (1.0 - base)


def gather_keys(keys: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Keys of every rank [world * n, d] in rank order (no gradient flows back) and this rank's offset in them."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return keys, 0
    with torch.no_grad():
        parts = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, keys.contiguous())
    return torch.cat(parts), dist.get_rank() * keys.shape[0]


class MoCoV3(nn.Module):
    """``forward(view1, view2) -> loss``; call ``update_momentum_encoder(m)`` after every optimizer step."""

    def __init__(self, encoder: nn.Module, *, dim: int = 256, mlp_dim: int = 4096, temperature: float = 0.2,
                 frozen_patch_projection: bool = True):
        super().__init__()
        self.temperature = temperature
        encoder.head = build_mlp(3, encoder.embed_dim, mlp_dim, dim)  # projector on the cls token
        if frozen_patch_projection:
            encoder.patch_embed.requires_grad_(False)  # the random patch projection stays as initialised
        self.base_encoder = encoder
        self.momentum_encoder = copy.deepcopy(encoder).requires_grad_(False)  # trained by EMA only, never by grads
        self.predictor = build_mlp(2, dim, mlp_dim, dim)

    def contrastive_loss(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """InfoNCE of each query [n, d] against all keys of the global batch; its own image's key is the positive."""
        queries = F.normalize(queries, dim=1)
        keys, offset = gather_keys(F.normalize(keys, dim=1))  # [N, d]
        logits = queries @ keys.t() / self.temperature  # [n, N]
        labels = torch.arange(queries.shape[0], device=queries.device) + offset
        return F.cross_entropy(logits, labels) * (2 * self.temperature)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        q1 = self.predictor(self.base_encoder(view1))  # [n, dim]
        q2 = self.predictor(self.base_encoder(view2))
        with torch.no_grad():
            k1 = self.momentum_encoder(view1)  # [n, dim]
            k2 = self.momentum_encoder(view2)
        return self.contrastive_loss(q1, k2) + self.contrastive_loss(q2, k1)

    @torch.no_grad()
    def update_momentum_encoder(self, momentum: float) -> None:
        """momentum_param = m * momentum_param + (1 - m) * base_param (parameters only; BN statistics are its own)."""
        for base, ema in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters(), strict=True):
            ema.mul_(momentum).add_(base.detach(), alpha=1.0 - momentum)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The base encoder without its projector (what MoCo v3's convert_to_deit keeps), detached on the CPU."""
        return {key: value.detach().cpu().clone() for key, value in self.base_encoder.state_dict().items()
                if not key.startswith("head.")}


class _SumAcrossRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the gradient: every rank's loss sees every rank's inputs."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class AllReduceBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch (sums all-reduced, differentiably), for
    process groups where ``nn.SyncBatchNorm`` is unavailable (CPU / gloo)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        count = torch.full((1,), float(x.shape[0]), dtype=x.dtype, device=x.device)
        total = _SumAcrossRanks.apply(torch.cat([x.sum(0), count]))  # [C + 1]
        n = total[-1]
        mean = total[:-1] / n
        var = _SumAcrossRanks.apply(((x - mean) ** 2).sum(0)) / n  # biased, as BatchNorm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1), self.momentum)
        y = (x - mean) / torch.sqrt(var + self.eps)
        return y * self.weight + self.bias if self.affine else y


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm1d made global-batch under DDP: torch's SyncBatchNorm on GPUs, AllReduceBatchNorm1d on CPU."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            swapped = AllReduceBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                           child.track_running_stats)
            swapped.load_state_dict(child.state_dict())
            if child.affine:  # keep the Parameter objects: the momentum encoder's stay frozen
                swapped.weight, swapped.bias = child.weight, child.bias
            setattr(module, name, swapped)
        else:
            sync_batchnorm(child, device)
    return module


def build_moco(architecture: str, input_size: int, *, dim: int, mlp_dim: int, temperature: float,
               frozen_patch_projection: bool) -> MoCoV3:
    """MoCo v3 around the same timm ViT as MAE: fixed 2-D sin-cos positions (MoCo v3 section 5), no head."""
    return MoCoV3(create_encoder(architecture, input_size), dim=dim, mlp_dim=mlp_dim, temperature=temperature,
                  frozen_patch_projection=frozen_patch_projection)
