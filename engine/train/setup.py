"""Build what a fine-tuning or linear-probing run needs, checking every input before any compute.

Order of checks (all before the first step): model name and architecture (registry), weights file present,
label policies, cohort columns, the image cache covers every image, the global batch splits across ranks, then the
weights load with exactly the expected missing keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch.nn.parallel import DistributedDataParallel

from engine.data.cache_read import ImageCache
from engine.models.classifier import build_classifier
from engine.models.registry import RESNET, get_spec
from engine.models.weights import LoadReport, require_weights_file
from engine.recipes import FinetuneConfig, Recipe, check_policies, resolve_recipe
from engine.train.batches import BatchPreparer
from engine.train.data import CachedImages, make_loader, per_rank_batch, timm_train_transform
from engine.train.device_batches import DeviceBatches, fits_on_device, split_bytes
from engine.train.distributed import Dist
from engine.train.evaluate import masked_bce
from engine.train.loop import StepContext, autocast_for, check_interval
from engine.train.split_table import SplitTable, read_cohort_for_training, split_table


@dataclass(frozen=True)
class RunData:
    train: SplitTable
    validate: SplitTable
    cache: ImageCache


def check_inputs(config: FinetuneConfig) -> tuple[Recipe, Path | None]:
    """Registry, weights file and label policies: the checks that need no data (config validation uses them)."""
    recipe = resolve_recipe(config)
    check_policies(config)
    weights = require_weights_file(get_spec(config.model.name), config.model.checkpoint)
    return recipe, weights


def load_data(config: FinetuneConfig) -> RunData:
    """The training and validation tables, and the cache (errors name files, columns and image ids)."""
    data = config.data
    cohort = read_cohort_for_training(data.cohort)
    balanced = data.balancing == "balanced"
    train = split_table(cohort, "train", data.training_label_policy, balanced=balanced, subsets_path=data.subsets,
                        max_images=data.max_images)
    validate = split_table(cohort, "validate", data.evaluation_label_policy,
                           balanced=data.validation_set == "balanced-validate", subsets_path=data.subsets,
                           max_images=data.max_images)
    cache = ImageCache.open(data.cache)
    for table in (train, validate):
        cache.rows_of(table.image_ids)  # DataError naming missing ids before any compute
    if cache.size < config.model.input_size:
        raise ValueError(f"data.cache holds {cache.size} px images, smaller than model.input_size "
                         f"{config.model.input_size}")
    return RunData(train, validate, cache)


def training_transform(config: FinetuneConfig, recipe: Recipe):
    """The loader's per-image transform (timm's, ending in uint8: BatchPreparer normalises on the device), or None
    when the batch is augmented on the device (or not at all)."""
    train = config.train
    if train.augmentation == "timm":
        return timm_train_transform(config.model.input_size, recipe.mean, recipe.std, scale=train.crop_scale,
                                    hflip=train.hflip, randaugment=recipe.randaugment)
    return None


def batch_augment(config: FinetuneConfig, recipe: Recipe):
    """The device-side augmentation of the 'batched' variant (engine/train/gpu_augment.py)."""
    if config.train.augmentation != "batched":
        return None
    from engine.train.gpu_augment import BatchAugment

    train = config.train
    return BatchAugment(config.model.input_size, scale=train.crop_scale, hflip=train.hflip,
                        randaugment=recipe.randaugment, mean=recipe.mean, std=recipe.std)


def make_batches(cache, table, transform, *, batch_size: int, shuffle: bool, drop_last: bool, seed: int,
                 workers: int, dist: Dist):
    """Batches of one split for this rank: gathered on the GPU from a resident copy when no per-image CPU transform
    is needed and the split fits (engine/train/device_batches.py), else a DataLoader over the cache."""
    common = {"batch_size": batch_size, "rank": dist.rank, "world": dist.world, "shuffle": shuffle, "seed": seed,
              "drop_last": drop_last}
    if transform is None and fits_on_device(split_bytes(cache, table), dist.device):
        return DeviceBatches(cache, table, device=dist.device, **common)
    return make_loader(CachedImages(cache, table, transform=transform, seed=seed), workers=workers,
                       pin_memory=dist.device.type == "cuda", **common)


def make_loaders(config: FinetuneConfig, recipe: Recipe, data: RunData, dist: Dist):
    """(train batches, validation batches, train steps per epoch) for this rank."""
    common = {"seed": config.train.seed, "workers": config.data.workers, "dist": dist}
    train_loader = make_batches(data.cache, data.train, training_transform(config, recipe), shuffle=True,
                                drop_last=True, batch_size=per_rank_batch(recipe.batch_size, dist.world), **common)
    val_loader = make_batches(data.cache, data.validate, None, shuffle=False, drop_last=False,
                              batch_size=max(1, config.train.eval_batch_size // dist.world), **common)
    steps = len(train_loader)
    if steps == 0:
        raise ValueError(f"global batch {recipe.batch_size} is larger than the training set ({len(data.train)} "
                         "images); lower train.batch_size")
    if config.train.steps_per_epoch is not None:
        steps = min(steps, config.train.steps_per_epoch)
    return train_loader, val_loader, steps


def make_model(config: FinetuneConfig, recipe: Recipe, weights: Path | None,
               dist: Dist) -> tuple[torch.nn.Module, torch.nn.Module, LoadReport | None]:
    """(model to train, possibly DDP-wrapped; the bare model; the weight-loading report)."""
    spec = get_spec(config.model.name)
    model, report = build_classifier(spec, recipe.architecture, weights, weights_format=config.model.checkpoint_format,
                                     mode=config.train.mode, input_size=config.model.input_size,
                                     drop_path=config.model.drop_path, global_pool=config.model.global_pool)
    model = model.to(dist.device)
    if recipe.family == RESNET and config.train.channels_last and dist.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    trained = model
    if config.train.compile:
        trained = torch.compile(trained)
    if torch.distributed.is_initialized():
        trained = DistributedDataParallel(trained, device_ids=[dist.device] if dist.device.type == "cuda" else None)
    return trained, model, report


def make_optimizer(model: torch.nn.Module, recipe: Recipe, probe: bool):
    """timm's AdamW with layer decay (fine-tuning) or LARS on the head (linear probe, MAE's main_linprobe.py)."""
    if probe:
        head = model.head
        groups = [{"params": [p for p in head.parameters() if p.ndim > 1], "weight_decay": recipe.weight_decay,
                   "always_adapt": True},  # MAE's LARS adapts weights only; biases get plain momentum SGD
                  {"params": [p for p in head.parameters() if p.ndim <= 1], "weight_decay": 0.0,
                   "always_adapt": False}]
        return create_optimizer_v2(groups, opt=recipe.optimizer, lr=recipe.lr, momentum=0.9, trust_coeff=0.001)
    return create_optimizer_v2(model, opt=recipe.optimizer, lr=recipe.lr, weight_decay=recipe.weight_decay,
                               layer_decay=recipe.layer_decay, betas=recipe.betas)


def make_scheduler(optimizer, recipe: Recipe, steps_per_epoch: int) -> CosineLRScheduler:
    """Linear warm-up from 0, then a half cosine to min_lr over the remaining steps (MAE util/lr_sched.py)."""
    total = recipe.epochs * steps_per_epoch
    warmup = min(total - 1, math.floor(recipe.warmup_epochs * steps_per_epoch)) if total > 1 else 0
    return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=recipe.min_lr, warmup_t=warmup,
                             warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)


def make_preparer(config: FinetuneConfig, recipe: Recipe, dist: Dist, *, training: bool) -> BatchPreparer:
    channels_last = recipe.family == RESNET and config.train.channels_last and dist.device.type == "cuda"
    augment = batch_augment(config, recipe) if training else None
    return BatchPreparer(dist.device, size=config.model.input_size, mean=recipe.mean, std=recipe.std,
                         augment=augment, channels_last=channels_last)


def make_step_context(config: FinetuneConfig, recipe: Recipe, dist: Dist, optimizer, scheduler, steps: int,
                      log) -> StepContext:
    """The shared loop's context for fine-tuning: masked BCE, the training batch preparer, autocast, loss checks
    every check_interval steps (tests/test_host_sync.py audits the host syncs of an epoch built by this)."""
    return StepContext(optimizer, scheduler, masked_bce, make_preparer(config, recipe, dist, training=True),
                       autocast_for(dist.device, config.train.precision), steps, seed=config.train.seed,
                       rank=dist.rank, log=log, log_every=config.train.log_every,
                       check_every=check_interval(dist.device))
