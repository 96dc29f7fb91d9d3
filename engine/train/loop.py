"""The one training loop shared by pre-training, fine-tuning and linear probing (after MAE's engine_pretrain.py).

The learning rate is set every iteration from the global step (timm scheduler, ``t_in_epochs=False``); a
non-finite loss stops the run with ``NonFiniteLossError`` before the epoch's checkpoint is written, so the last
checkpoint on disk is the last good state (see ``StepContext.check_every``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

LossFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


@dataclass
class StepContext:
    """What one epoch of training needs besides the model and data."""

    optimizer: torch.optim.Optimizer
    scheduler: object  # timm scheduler: step_update(num_updates)
    loss_fn: LossFn
    prepare: Callable  # (batch, step_seed) -> (inputs, targets, indices)
    autocast: Callable[[], contextlib.AbstractContextManager]
    steps_per_epoch: int
    seed: int = 0
    rank: int = 0
    after_step: Callable[[int], None] | None = None  # e.g. MoCo's momentum update, given the global step
    log: Callable[[str], None] | None = None
    log_every: int = 50
    # Host syncs to check the loss: every step on CPU (the check then precedes the optimizer step); on a GPU a
    # per-step .item() stalls the queue, so losses stay on the device and are checked every check_every steps and
    # at the end of the epoch. A NaN then stops the run before the epoch's checkpoint is written: last.pt on disk
    # is the last good epoch either way.
    check_every: int = 1


def check_interval(device: torch.device) -> int:
    """Steps between loss checks: every step on CPU, every 50 on a GPU (a host sync each time)."""
    return 1 if device.type == "cpu" else 50


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast on CUDA when asked; full precision otherwise (CPU runs and tests are fp32)."""
    if device.type == "cuda" and precision == "bf16":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def train_one_epoch(model: torch.nn.Module, batches: Iterable, epoch: int, ctx: StepContext) -> dict:
    """Train for ``ctx.steps_per_epoch`` steps; return the epoch's mean loss, last lr and throughput."""
    model.train()
    losses, images, start = [], 0, time.perf_counter()
    for step, batch in enumerate(batches):
        if step >= ctx.steps_per_epoch:
            break
        global_step = epoch * ctx.steps_per_epoch + step
        ctx.scheduler.step_update(global_step)  # per-iteration lr from the fractional epoch (MAE lr_sched)
        inputs, targets, _ = ctx.prepare(batch, _step_seed(ctx.seed, global_step, ctx.rank))
        with ctx.autocast():
            loss = ctx.loss_fn(model, inputs, targets)
        if ctx.check_every and step % ctx.check_every == 0:
            _check_finite(losses + [loss.detach()], epoch, step)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ctx.optimizer.step()
        if ctx.after_step is not None:
            ctx.after_step(global_step)
        losses.append(loss.detach())  # kept on the device: no host sync per step (the GPU queue stays full)
        images += inputs.shape[0]
        if ctx.log is not None and ctx.log_every and step % ctx.log_every == 0:
            ctx.log(f"epoch {epoch} step {step}/{ctx.steps_per_epoch} loss {loss.item():.4f} "
                    f"lr {ctx.optimizer.param_groups[-1]['lr']:.3e}")
    values = _check_finite(losses, epoch, len(losses) - 1)
    seconds = time.perf_counter() - start
    return {"epoch": epoch, "train_loss": float(values.mean()) if len(values) else 0.0, "steps": len(values),
            "lr": ctx.optimizer.param_groups[-1]["lr"], "images_per_s": images / seconds if seconds else 0.0}


def _check_finite(losses: list[torch.Tensor], epoch: int, step: int):
    """The losses as float64 numpy (one host sync); NonFiniteLossError naming the first bad step."""
    if not losses:
        return torch.zeros(0, dtype=torch.float64).numpy()
    values = torch.stack(losses).double().cpu().numpy()
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise NonFiniteLossError(f"loss is {values[bad[0]]} at epoch {epoch}, step {bad[0]} (checked at step {step}); "
                                 "stopping: last.pt still holds the last good epoch")
    return values


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the global torch RNG at the start of an epoch (DropPath, dropout), so a resumed run matches."""
    return (seed * 1_000_003 + epoch) * 4_096 + rank + 1


def _step_seed(seed: int, global_step: int, rank: int) -> int:
    """Seed of the batched augmentation of one step on one rank (reproducible across resumes)."""
    return (seed * 1_000_003 + global_step) * 64 + rank


@torch.no_grad()
def predict_batches(model: torch.nn.Module, batches: Iterable, prepare: Callable,
                    autocast: Callable[[], contextlib.AbstractContextManager]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, 14] (float32, CPU) and dataset indices [N] of every batch, in loader order. The logits stay on the
    device until the end: one host sync in all, so the host queues batch k + 1 while the device runs batch k."""
    model.eval()
    logits, indices = [], []
    for batch in batches:
        inputs, _, index = prepare(batch, None)
        with autocast():
            logits.append(model(inputs).float())
        indices.append(torch.as_tensor(index))
    return torch.cat(logits).cpu(), torch.cat(indices)
