"""Host work of issuing one fine-tuning step: the engine vs the raw timm step, counted on the meta device.

A GPU step reaches the raw model's speed only if the host issues step k + 1 while the device runs step k: the host
time per step (Python, dispatcher, one launch per kernel) must stay under the device time, and no host sync may
drain the queue in between. Both are countable on a CPU: on the meta device every operation goes through the
dispatcher but runs no kernel (engine/train/host_sync.py records it), so this script counts, in one process and on
the same model and optimizer,

  raw step      forward, 14-label BCE, backward, AdamW with layer decay on a batch already on the device;
  engine step   the same through the engine's loop: batch gathered from the resident split (DeviceBatches), the
                paper's augmentation on the device (BatchAugment: crop, flip, RandAugment m6), lr schedule, checks;

and prints device operations (kernel launches, eager) and host syncs per step and the engine / raw ratio. Times on
meta are not a proxy for CUDA host time (many meta kernels are Python shape functions: ~170 us per op here), so
none are printed; docs/performance.md turns the counts into host time with a stated cost per launch.

  python benchmarks/launch_audit.py                       # the paper's ViT-B/16 at 224 px, batch 128
  python benchmarks/launch_audit.py --arch resnetv2_152x2_bit --batch 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_bench import bench_config, write_synthetic_inputs  # noqa: E402

from engine.data.schema import PATHOLOGIES  # noqa: E402
from engine.recipes import resolve_recipe  # noqa: E402
from engine.train.device_batches import DeviceBatches  # noqa: E402
from engine.train.distributed import Dist  # noqa: E402
from engine.train.evaluate import masked_bce  # noqa: E402
from engine.train.host_sync import META, SyncRecorder  # noqa: E402
from engine.train.loop import train_one_epoch  # noqa: E402
from engine.train.setup import load_data, make_model, make_optimizer, make_scheduler, make_step_context  # noqa: E402

ON_META = Dist(0, 1, 0, META)


def raw_steps(config, steps: int) -> SyncRecorder:
    """Device ops and syncs of ``steps`` bare steps on a batch already on the device."""
    recipe = resolve_recipe(config)
    model, bare, _ = make_model(config, recipe, None, ON_META)
    optimizer = make_optimizer(bare, recipe, probe=False)
    size, batch = config.model.input_size, recipe.batch_size
    inputs = torch.empty(batch, 3, size, size, device=META)
    targets = torch.empty(batch, len(PATHOLOGIES), device=META)
    model.train()

    def step() -> None:
        loss = masked_bce(model, inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    recorder = SyncRecorder()
    with recorder:
        for _ in range(steps):
            step()
    return recorder


def engine_steps(config, steps: int) -> SyncRecorder:
    """Device ops and syncs of one epoch of ``steps`` steps of the engine's loop on the resident split."""
    recipe = resolve_recipe(config)
    data = load_data(config)
    model, bare, _ = make_model(config, recipe, None, ON_META)
    batches = DeviceBatches(data.cache, data.train, device=META, batch_size=recipe.batch_size, rank=0, world=1,
                            shuffle=True, seed=0, drop_last=True)
    optimizer = make_optimizer(bare, recipe, probe=False)
    ctx = make_step_context(config, recipe, ON_META, optimizer, make_scheduler(optimizer, recipe, steps), steps,
                            log=None)
    ctx.prepare((batches.images[:1], batches.targets[:1], torch.zeros(1)), 0)  # one-time device constants
    recorder = SyncRecorder()
    with recorder:
        train_one_epoch(model, batches, 0, ctx)
    return recorder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--cache-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    args.workers, args.precision, args.compile, args.augmentation = 0, "fp32", False, "batched"
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_synthetic_inputs(Path(tmp), args.batch * args.steps, args.cache_size)
        config = bench_config(args, paths, Path(tmp) / "out")
        raw = raw_steps(config, args.steps)
        engine = engine_steps(config, args.steps)
    n = args.steps
    print(f"{args.arch} @ {args.input_size} px, batch {args.batch}, {n} steps on the meta device (eager), torch "
          f"{torch.__version__}")
    for label, rec in (("raw timm step", raw), ("engine step", engine)):
        print(f"{label:14s} {rec.launches / n:8.0f} device ops/step  {len(rec.events) / n:5.2f} host syncs/step")
    print(f"ratio engine / raw device ops: {engine.launches / raw.launches:.2f}")
    print("engine syncs: " + "; ".join(engine.events))


if __name__ == "__main__":
    main()
