"""The device paths never make the host wait between loss checks (tests/host_sync.py: meta stands in for CUDA).

On a GPU the engine keeps up with the raw model step only if the host queues step k + 1 while the device runs step
k (issue D's 90 % target): one host sync per step (a loss ``item()``, a blocking copy, a bincount reading its
size back) empties the queue every step. These tests run an epoch of each training stage and a prediction pass with
the engine's own construction on the meta device and check where the syncs fall: at the loss checks (step 0, then
every ``check_interval`` steps) and at the end of the epoch, nowhere else.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from engine_fixtures import tiny_cohort, tiny_config, tiny_pool, tiny_pretrain_config  # noqa: F401 (fixtures)
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from engine.pretrain_config import resolve_pretrain
from engine.recipes import resolve_recipe
from engine.train.device_batches import DeviceBatches
from engine.train.distributed import Dist
from engine.train.gpu_augment import RAND_INCREASING_TRANSFORMS, BatchAugment
from engine.train.host_sync import META, SyncRecorder
from engine.train.loop import check_interval, predict_batches, train_one_epoch
from engine.train.pretrain import make_training
from engine.train.pretrain_data import load_pool
from engine.train.setup import (
    load_data,
    make_loaders,
    make_model,
    make_optimizer,
    make_preparer,
    make_scheduler,
    make_step_context,
)
from engine.train.transfer import to_device

ON_META = Dist(rank=0, world=1, local_rank=0, device=META)
STEPS = 6


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_recorder_sees_every_kind_of_host_sync():
    x, factory = torch.ones(4, device=META), torch.tensor
    syncing = [
        ("item", lambda: x.sum().item()),
        ("to host", x.cpu),
        ("blocking", lambda: torch.ones(2).to(META)),
        ("factory", lambda: torch.tensor([1.0], device=META)),
        ("pageable", lambda: torch.ones(2).to(META, non_blocking=True)),  # the driver may sync the stream to stage it
    ]
    data_dependent = [("nonzero", x.nonzero), ("mask", lambda: x[x > 0]),
                      ("bincount", lambda: torch.bincount(x.long()))]
    recorder = SyncRecorder()
    with recorder:
        for tag, action in syncing:
            recorder.tag = tag
            action()
        for tag, action in data_dependent:
            recorder.tag = tag
            with pytest.raises((RuntimeError, NotImplementedError)):
                action()
        recorder.tag = "to_device"
        to_device(torch.ones(2), META)  # pinned first on CUDA: not a sync
        x.view(2, 2).add(1)
    assert [event.split(":")[0] for event in recorder.events] == [tag for tag, _ in syncing + data_dependent]
    assert torch.tensor is factory  # the wrapped factories are restored on exit


def test_batched_augmentation_queues_every_randaugment_op_without_waiting():
    augment = BatchAugment(32, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    images = torch.randint(0, 256, (64, 40, 40), dtype=torch.uint8).to(META, non_blocking=True)
    augment(images, torch.Generator().manual_seed(0))  # first call copies the constants to the device, once
    plans = [augment.draw(64, 40, torch.Generator().manual_seed(seed)) for seed in range(1, 6)]
    used = {RAND_INCREASING_TRANSFORMS[k] for plan in plans for k in plan.op[plan.applied].tolist()}
    assert used == set(RAND_INCREASING_TRANSFORMS)  # every op of the paper's RandAugment ran
    recorder = SyncRecorder()
    with recorder:
        outputs = [augment.apply(images, plan) for plan in plans]
    assert recorder.events == []
    assert outputs[0].shape == (64, 3, 32, 32) and outputs[0].device == META


def _epoch_with_tagged_steps(model, batches, ctx, recorder: SyncRecorder) -> None:
    """One epoch under ``recorder``; events are tagged 'step k' (k = STEPS for the end-of-epoch check)."""
    then = ctx.after_step

    def after_step(global_step: int) -> None:
        if then is not None:
            then(global_step)
        recorder.tag = f"step {global_step + 1}"

    recorder.tag = "step 0"
    with recorder:
        train_one_epoch(model, batches, 0, dataclasses.replace(ctx, after_step=after_step))


def _expected_sync_steps() -> set[str]:
    every = check_interval(META)
    return {f"step {k}" for k in range(0, STEPS, every)} | {f"step {STEPS}"}


@pytest.mark.parametrize("architecture, mode, augmentation, source", [
    ("vit_tiny_patch16_224", "finetune", "batched", "device"),
    ("resnetv2_50x1_bit", "finetune", "batched", "device"),
    ("vit_tiny_patch16_224", "finetune", "timm", "loader"),
    ("vit_tiny_patch16_224", "linear-probe", "none", "device"),
])
def test_fine_tuning_syncs_only_at_loss_checks_and_prediction_once(tiny_cohort, tmp_path, architecture, mode,  # noqa: F811
                                                                   augmentation, source):
    name = "scratch-resnet" if architecture.startswith("resnet") else "scratch-vit"
    config = tiny_config(tiny_cohort, tmp_path, name=name, architecture=architecture,
                         train={"augmentation": augmentation, "mode": mode, "steps_per_epoch": STEPS})
    recipe, data = resolve_recipe(config), load_data(config)
    model, bare, _ = make_model(config, recipe, None, ON_META)
    train, validate, steps = make_loaders(config, recipe, data, ON_META)
    if source == "device":  # the GPU path: batches gathered from the split's resident copy
        common = {"device": META, "rank": 0, "world": 1, "seed": 0}
        train = DeviceBatches(data.cache, data.train, batch_size=recipe.batch_size, shuffle=True, drop_last=True,
                              **common)
        validate = DeviceBatches(data.cache, data.validate, batch_size=8, shuffle=False, drop_last=False, **common)
    optimizer = make_optimizer(bare, recipe, mode == "linear-probe")
    ctx = make_step_context(config, recipe, ON_META, optimizer, make_scheduler(optimizer, recipe, steps), steps,
                            log=lambda _: None)
    assert steps == STEPS
    recorder = SyncRecorder()
    _epoch_with_tagged_steps(model, train, ctx, recorder)
    assert {event.split(":")[0] for event in recorder.events} == _expected_sync_steps(), recorder.events
    recorder.events.clear()
    recorder.tag = "predict"
    prepare = make_preparer(config, recipe, ON_META, training=False)
    with recorder:
        predict_batches(model, validate, prepare, ctx.autocast)
    assert recorder.events == [f"predict: device-to-host copy of ({len(data.validate)}, 14)"]


@pytest.mark.parametrize("method", ["mae", "moco-v3"])
def test_pretraining_syncs_only_at_loss_checks(tiny_pool, tmp_path, method):  # noqa: F811
    config = tiny_pretrain_config(tiny_pool, Path(tmp_path), method, train={"steps_per_epoch": STEPS,
                                                                             "batch_size": 4})
    run = make_training(config, resolve_pretrain(config), load_pool(config), ON_META, lambda _: None)
    assert run.steps == STEPS
    recorder = SyncRecorder()
    _epoch_with_tagged_steps(run.model, run.loader, run.ctx, recorder)
    assert {event.split(":")[0] for event in recorder.events} == _expected_sync_steps(), recorder.events
