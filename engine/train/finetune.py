"""Stage ``finetune``: end-to-end fine-tuning or linear probing of one registry model (paper section 3.2).

``finetune(config) -> out_dir``. Writes into ``config.out_dir``: ``config.yaml`` / ``config.json`` (resolved),
``last.pt`` every epoch (full training state, atomic), ``best.pt`` (weights of the epoch with the best validation
mean AUC), ``log.jsonl`` (one line per epoch) and, when finished, ``finetune.json`` (summary). A run whose
``last.pt`` exists resumes after its last finished epoch; a finished run (``finetune.json`` with the same config
hash) is returned as is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from engine.config import config_hash, save_resolved, to_dict
from engine.data.io import write_json
from engine.models.classifier import backbone_snapshot, check_backbone_unchanged
from engine.recipes import FinetuneConfig
from engine.train import distributed
from engine.train.checkpoint import (
    BEST,
    LAST,
    atomic_save,
    configure_determinism,
    is_done,
    report_if_done,
    restore_training_state,
    save_training_state,
    write_epoch_log,
)
from engine.train.evaluate import gather_logits, validation_metrics
from engine.train.loop import epoch_seed, train_one_epoch
from engine.train.setup import (
    check_inputs,
    load_data,
    make_loaders,
    make_model,
    make_optimizer,
    make_preparer,
    make_scheduler,
    make_step_context,
)

SUMMARY = "finetune.json"


def is_finished(config: FinetuneConfig) -> bool:
    """True when ``out_dir`` holds a finished run of exactly this config."""
    return is_done(config.out_dir, SUMMARY, config_hash(config))


def finetune(config: FinetuneConfig, *, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) the fine-tuning job described by ``config``; return its output folder."""
    if report_if_done(config.out_dir, SUMMARY, config_hash(config), config.run_id, log):
        return Path(config.out_dir)
    recipe, weights = check_inputs(config)
    data = load_data(config)
    configure_determinism(config.train.deterministic)
    torch.manual_seed(config.train.seed)  # model initialisation (the new head) is seeded
    dist = distributed.setup()
    try:
        return _run(config, recipe, weights, data, dist, log if dist.is_main else (lambda _: None))
    finally:
        distributed.teardown()


def _run(config, recipe, weights, data, dist, log) -> Path:
    out = Path(config.out_dir)
    model, bare, report = make_model(config, recipe, weights, dist)
    train_loader, val_loader, steps = make_loaders(config, recipe, data, dist)
    optimizer = make_optimizer(bare, recipe, config.train.mode == "linear-probe")
    scheduler = make_scheduler(optimizer, recipe, steps)
    snapshot = backbone_snapshot(bare) if config.train.mode == "linear-probe" else None
    state = _resume(out / LAST, bare, optimizer, scheduler, config, log)
    if dist.is_main:
        save_resolved(config, out)
    ctx = make_step_context(config, recipe, dist, optimizer, scheduler, steps, log)
    val_prepare = make_preparer(config, recipe, dist, training=False)
    log(f"{config.run_id}: {recipe.architecture} {config.train.mode}, {len(data.train):,} train / "
        f"{len(data.validate):,} validation images, {recipe.epochs} epochs x {steps} steps, global batch "
        f"{recipe.batch_size} on {dist.world} process(es), lr {recipe.lr:.3e} (blr {recipe.blr:g})")
    for epoch in range(state["epoch"] + 1, recipe.epochs):
        train_loader.sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(config.train.seed, epoch, dist.rank))  # DropPath masks: same after a resume
        start = time.perf_counter()
        stats = train_one_epoch(model, train_loader, epoch, ctx)
        logits = gather_logits(model, val_loader, val_prepare, ctx.autocast, len(data.validate))
        stats.update(validation_metrics(data.validate.targets, logits), epoch_s=time.perf_counter() - start)
        _end_epoch(out, stats, state, bare, optimizer, scheduler, config, dist, log, recipe.epochs)
    if snapshot is not None:
        check_backbone_unchanged(bare, snapshot)
    if dist.is_main:
        _write_summary(out, config, recipe, data, report, state)
    distributed.barrier()
    return out


def _resume(path: Path, model, optimizer, scheduler, config: FinetuneConfig, log) -> dict:
    """State of the last finished epoch from ``last.pt``, or a fresh state (epoch -1)."""
    saved = restore_training_state(path, model, optimizer, scheduler, config_hash(config), log)
    if saved is None:
        return {"epoch": -1, "best": {"epoch": None, "val_mean_auc": None}, "history": [], "started": time.time()}
    return {"epoch": saved["epoch"], "best": saved["best"], "history": saved["history"],
            "started": saved["config"].get("started", time.time())}


def _end_epoch(out: Path, stats: dict, state: dict, model, optimizer, scheduler, config, dist, log,
               epochs: int) -> None:
    """Log the epoch, keep best.pt on a better validation mean AUC, and write last.pt (rank 0 only)."""
    state["epoch"] = stats["epoch"]
    state["history"].append(stats)
    auc, best = stats["val_mean_auc"], state["best"]["val_mean_auc"]
    improved = auc is not None and (best is None or auc > best)
    times = [h["epoch_s"] for h in state["history"] if "epoch_s" in h]
    eta = sum(times) / len(times) * (epochs - 1 - stats["epoch"]) / 60
    log(f"epoch {stats['epoch'] + 1}/{epochs} {progress_bar(stats['epoch'] + 1, epochs)}: train loss "
        f"{stats['train_loss']:.4f}, val loss {stats['val_loss']:.4f}, val mean AUC "
        f"{auc if auc is None else round(auc, 4)}{' (best)' if improved else ''}, {stats['images_per_s']:.1f} img/s, "
        f"ETA {eta:.1f} min")
    if dist.is_main:
        if improved:
            state["best"] = {"epoch": stats["epoch"], "val_mean_auc": auc}
            atomic_save({"model": model.state_dict(), "epoch": stats["epoch"], "val_mean_auc": auc,
                         "config_hash": config_hash(config)}, out / BEST)
        meta = {"config_hash": config_hash(config), "started": state["started"], **to_dict(config)}
        save_training_state(out / LAST, model=model, optimizer=optimizer, scheduler=scheduler, scaler=None,
                            epoch=stats["epoch"], best=state["best"], history=state["history"], config=meta)
        write_epoch_log(state["history"], out / "log.jsonl")
    distributed.barrier()


def progress_bar(done: int, total: int, width: int = 20) -> str:
    filled = round(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


def pretraining_facts(checkpoint: str | None) -> dict | None:
    """``pretraining.json`` written by the pretrain stage beside its encoder (method, pool, epochs, fraction)."""
    if checkpoint is None:
        return None
    sidecar = Path(checkpoint).with_name("pretraining.json")
    return json.loads(sidecar.read_text()) if sidecar.is_file() else None


def _write_summary(out: Path, config, recipe, data, report, state) -> None:
    if state["best"]["epoch"] is None:
        raise RuntimeError("no epoch had a defined validation mean AUC; nothing to select (is the validation split "
                           "large enough to hold both classes of a pathology?)")
    write_json({
        "run_id": config.run_id, "config_hash": config_hash(config), "recipe": to_dict(recipe),
        "selected": {**state["best"], "on": f"{config.data.validation_set} split, mean AUC over defined pathologies"},
        "weights": {**report.as_dict(), "pretraining": pretraining_facts(config.model.checkpoint)} if report else None,
        "images": {"train": len(data.train), "validate": len(data.validate)},
        "removed": {"train": data.train.removed, "validate": data.validate.removed},
        "wall_s": time.time() - state["started"], "history": state["history"],
    }, out / SUMMARY)
