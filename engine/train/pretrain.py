"""Stage ``pretrain``: MAE or MoCo v3 self-supervised pre-training of a timm ViT on a pool (paper section 3.1).

``pretrain(config) -> out_dir``. Writes into ``config.out_dir``: ``config.yaml`` / ``config.json`` (resolved),
``last.pt`` every epoch (full training state: the whole MAE or MoCo v3 model, optimizer, scheduler, RNG; atomic),
``log.jsonl`` (one line per epoch), ``snapshots/encoder-epoch-NNNN.pth`` (encoders of the selection window; an
epoch that can no longer be selected is deleted), and when finished ``encoder.pth`` (``{'model': timm encoder
state dict}``, the selected epoch's), ``pretraining.json`` (what fine-tuning records about this encoder) and
``pretrain.json`` (summary, the done marker). A run whose ``last.pt`` exists resumes after its last finished epoch.

Selection (paper): the epoch with the lowest mean training loss among the final ``selection_window`` of epochs.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2
from torch.nn.parallel import DistributedDataParallel

from engine.config import config_hash, save_resolved, to_dict
from engine.data.io import atomic_path, write_json
from engine.models.mae import build_mae
from engine.models.moco import build_moco, momentum_at, sync_batchnorm
from engine.pretrain_config import PretrainConfig, PretrainRecipe, resolve_pretrain
from engine.train import distributed
from engine.train.checkpoint import (
    LAST,
    atomic_save,
    configure_determinism,
    report_if_done,
    restore_training_state,
    save_training_state,
    write_epoch_log,
)
from engine.train.data import make_loader, per_rank_batch
from engine.train.loop import StepContext, autocast_for, check_interval, epoch_seed, train_one_epoch
from engine.train.pretrain_data import PoolData, PoolImages, ViewWarp, load_pool, pool_facts
from engine.train.setup import make_scheduler

SUMMARY, ENCODER, FACTS, SNAPSHOTS = "pretrain.json", "encoder.pth", "pretraining.json", "snapshots"


def pretrain(config: PretrainConfig, *, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) the pre-training job described by ``config``; return its output folder."""
    if report_if_done(config.out_dir, SUMMARY, config_hash(config), config.run_id, log):
        return Path(config.out_dir)
    recipe = resolve_pretrain(config)
    pool = load_pool(config)  # every pool image is checked against the caches before any compute
    configure_determinism(config.train.deterministic)
    torch.manual_seed(config.train.seed)  # model initialisation
    dist = distributed.setup()
    try:
        return _run(config, recipe, pool, dist, log if dist.is_main else (lambda _: None))
    finally:
        distributed.teardown()


def build_model(config: PretrainConfig) -> torch.nn.Module:
    """MaskedAutoencoder or MoCoV3 around a fresh timm ViT of ``config.architecture``."""
    if config.method == "mae":
        mae = config.mae
        return build_mae(config.architecture, config.input_size, decoder_dim=mae.decoder_dim,
                         decoder_depth=mae.decoder_depth, decoder_heads=mae.decoder_heads, mask_ratio=mae.mask_ratio,
                         norm_pix_loss=mae.norm_pix_loss)
    moco = config.moco
    return build_moco(config.architecture, config.input_size, dim=moco.dim, mlp_dim=moco.mlp_dim,
                      temperature=moco.temperature, frozen_patch_projection=moco.frozen_patch_projection)


def loss_function(method: str) -> Callable:
    """``loss_fn(model, inputs, targets)`` of the shared loop: MAE takes the mask noise, MoCo v3 two views."""
    if method == "mae":
        return lambda model, images, noise: model(images, noise)
    return lambda model, views, _: model(views[:, 0], views[:, 1])


def make_optimizer(model: torch.nn.Module, recipe: PretrainRecipe) -> torch.optim.Optimizer:
    """AdamW; MAE exempts biases and norms from weight decay, MoCo v3 decays every trained parameter."""
    if recipe.decay_norm_and_bias:
        params = [p for p in model.parameters() if p.requires_grad]
        return create_optimizer_v2(params, opt="adamw", lr=recipe.lr, weight_decay=recipe.weight_decay,
                                   betas=recipe.betas)
    return create_optimizer_v2(model, opt="adamw", lr=recipe.lr, weight_decay=recipe.weight_decay,
                               betas=recipe.betas, filter_bias_and_bn=True)


def make_pool_loader(config: PretrainConfig, recipe: PretrainRecipe, pool: PoolData, model, dist):
    """(loader for this rank, steps per epoch)."""
    mask_tokens = model.num_patches if config.method == "mae" else 0
    augment = config.augment
    dataset = PoolImages(pool, views=recipe.views, mask_tokens=mask_tokens, scale=recipe.crop_scale,
                         ratio=augment.crop_ratio, hflip=augment.hflip, rotation=augment.rotation,
                         seed=config.train.seed)
    loader = make_loader(dataset, batch_size=per_rank_batch(recipe.batch_size, dist.world), rank=dist.rank,
                         world=dist.world, shuffle=True, seed=config.train.seed, workers=config.data.workers,
                         drop_last=True, pin_memory=dist.device.type == "cuda")
    steps = len(loader)
    if steps == 0:
        raise ValueError(f"global batch {recipe.batch_size} is larger than the pool ({len(dataset)} images); lower "
                         "train.batch_size")
    cap = config.train.steps_per_epoch
    return loader, min(steps, cap) if cap is not None else steps


@dataclass
class Training:
    """Everything an epoch needs: the model as trained (maybe DDP / compiled), the bare model, loader and context."""

    model: torch.nn.Module
    bare: torch.nn.Module
    loader: torch.utils.data.DataLoader
    ctx: StepContext
    steps: int


def make_training(config: PretrainConfig, recipe: PretrainRecipe, pool: PoolData, dist, log) -> Training:
    """Model (SyncBatchNorm and DDP across processes), loader, AdamW, warm-up + cosine schedule, MoCo's EMA hook."""
    bare = build_model(config).to(dist.device)
    if dist.world > 1 and config.method == "moco-v3":
        bare = sync_batchnorm(bare, dist.device)  # projector / predictor BN over the global batch
    model = torch.compile(bare) if config.train.compile else bare
    if dist.world > 1:
        model = DistributedDataParallel(model, device_ids=[dist.device] if dist.device.type == "cuda" else None)
    loader, steps = make_pool_loader(config, recipe, pool, bare, dist)
    optimizer = make_optimizer(bare, recipe)
    scheduler = make_scheduler(optimizer, recipe, steps)
    after_step = None
    if config.method == "moco-v3":
        total, moco = recipe.epochs * steps, config.moco
        after_step = lambda step: bare.update_momentum_encoder(  # noqa: E731
            momentum_at(step + 1, total, moco.momentum, moco.momentum_cosine))
    warp = ViewWarp(dist.device, size=config.input_size, mean=recipe.mean, std=recipe.std,
                    interpolation=config.augment.interpolation)
    ctx = StepContext(optimizer, scheduler, loss_function(config.method), warp,
                      autocast_for(dist.device, config.train.precision), steps, seed=config.train.seed,
                      rank=dist.rank, after_step=after_step, log=log, log_every=config.train.log_every,
                      check_every=check_interval(dist.device))
    return Training(model, bare, loader, ctx, steps)


def _run(config: PretrainConfig, recipe: PretrainRecipe, pool: PoolData, dist, log) -> Path:
    out = Path(config.out_dir)
    run = make_training(config, recipe, pool, dist, log)
    state = _resume(out / LAST, run.bare, run.ctx.optimizer, run.ctx.scheduler, config, log)
    if dist.is_main:
        save_resolved(config, out)
    log(f"{config.run_id}: {config.method} {recipe.architecture} at {config.input_size} px on {len(pool.table):,} "
        f"pool images, {recipe.epochs} epochs x {run.steps} steps, global batch {recipe.batch_size} on "
        f"{dist.world} process(es), lr {recipe.lr:.3e} (blr {recipe.blr:g}), selection over the last "
        f"{recipe.selection_epochs}")
    for epoch in range(state["epoch"] + 1, recipe.epochs):
        run.loader.sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(config.train.seed, epoch, dist.rank))
        stats = train_one_epoch(run.model, run.loader, epoch, run.ctx)
        stats["train_loss"] = distributed.mean_across(stats["train_loss"], dist.device)  # every rank selects alike
        _end_epoch(out, stats, state, run, config, recipe, dist, log)
    if dist.is_main:
        _finish(out, config, recipe, pool, state, run.steps, dist.world)
    distributed.barrier()
    return out


def _resume(path: Path, model, optimizer, scheduler, config: PretrainConfig, log) -> dict:
    """State of the last finished epoch from ``last.pt``, or a fresh state (epoch -1)."""
    saved = restore_training_state(path, model, optimizer, scheduler, config_hash(config), log)
    if saved is None:
        return {"epoch": -1, "selected": None, "history": [], "started": time.time()}
    return {"epoch": saved["epoch"], "selected": saved["best"], "history": saved["history"],
            "started": saved["config"].get("started", time.time())}


def select_epoch(history: list[dict], epochs: int, window_epochs: int) -> dict | None:
    """The entry of ``history`` with the lowest ``train_loss`` among epochs ``>= epochs - window_epochs`` (the
    earlier epoch on a tie); None while no epoch of the window has finished."""
    first = epochs - window_epochs
    candidates = [h for h in history if h["epoch"] >= first and math.isfinite(h["train_loss"])]
    if not candidates:
        return None
    best = min(candidates, key=lambda h: (h["train_loss"], h["epoch"]))
    return {"epoch": best["epoch"], "train_loss": best["train_loss"]}


def snapshot_path(out: Path, epoch: int) -> Path:
    return out / SNAPSHOTS / f"encoder-epoch-{epoch:04d}.pth"


def _end_epoch(out: Path, stats: dict, state: dict, run: Training, config, recipe, dist, log) -> None:
    """Snapshot the encoder inside the window, write last.pt, drop snapshots that can no longer win, log."""
    model, epoch = run.bare, stats["epoch"]
    state["epoch"] = epoch
    state["history"].append(stats)
    state["selected"] = select_epoch(state["history"], recipe.epochs, recipe.selection_epochs)
    in_window = epoch >= recipe.epochs - recipe.selection_epochs
    chosen = state["selected"] is not None and state["selected"]["epoch"] == epoch
    log(f"epoch {epoch}: train loss {stats['train_loss']:.4f}, {stats['images_per_s']:.1f} img/s"
        f"{' (selected so far)' if chosen else ''}")
    if dist.is_main:
        if in_window:  # written before last.pt records the epoch, so the selected snapshot always exists
            atomic_save({"model": model.encoder_state_dict()}, snapshot_path(out, epoch))
        meta = {"config_hash": config_hash(config), "started": state["started"], **to_dict(config)}
        save_training_state(out / LAST, model=model, optimizer=run.ctx.optimizer, scheduler=run.ctx.scheduler,
                            scaler=None, epoch=epoch, best=state["selected"], history=state["history"], config=meta)
        keep = state["selected"]["epoch"] if state["selected"] else None
        for path in (out / SNAPSHOTS).glob("encoder-epoch-*.pth"):
            if path != snapshot_path(out, keep if keep is not None else -1):
                path.unlink()  # the minimum over a growing window never returns to an epoch it passed over
        write_epoch_log(state["history"], out / "log.jsonl")
    distributed.barrier()


def _finish(out: Path, config: PretrainConfig, recipe: PretrainRecipe, pool: PoolData, state: dict, steps: int,
            world: int) -> None:
    """encoder.pth (the selected epoch's encoder), pretraining.json, then pretrain.json (done marker)."""
    selected = state["selected"]
    if selected is None:
        raise RuntimeError("no epoch of the selection window has a finite training loss; nothing to select")
    with atomic_path(out / ENCODER) as tmp:
        shutil.copyfile(snapshot_path(out, selected["epoch"]), tmp)
    rule = (f"lowest mean training loss among the final {recipe.selection_epochs} of {recipe.epochs} epochs "
            f"(selection_window {config.train.selection_window:g})")
    facts = {
        "run_id": config.run_id, "method": config.method, "architecture": recipe.architecture,
        "input_size": config.input_size, "encoder": ENCODER, "layout": "{'model': timm ViT state dict, no head}",
        "epochs": recipe.epochs, "steps_per_epoch": steps, "global_batch": recipe.batch_size,
        "selected": {**selected, "rule": rule}, "config_hash": config_hash(config),
        "normalisation": {"name": recipe.normalisation, "mean": list(recipe.mean), "std": list(recipe.std)},
        "augmentation": {**to_dict(config.augment), "crop_scale": list(recipe.crop_scale), "views": recipe.views},
        "method_config": to_dict(config.mae if config.method == "mae" else config.moco),
        "data": pool_facts(pool, config), "tags": dict(config.tags),
    }
    write_json(facts, out / FACTS)
    write_json({"run_id": config.run_id, "config_hash": config_hash(config), "recipe": to_dict(recipe),
                "selected": facts["selected"], "world_size": world, "images": len(pool.table),
                "wall_s": time.time() - state["started"], "history": state["history"]}, out / SUMMARY)
