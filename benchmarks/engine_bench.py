"""Fine-tuning speed: the raw timm step on in-memory tensors vs the engine's whole loop, side by side in one process.

The raw step is what the hardware allows: forward, the 14-label BCE, backward and AdamW with layer decay, on a
batch that already sits on the device. The engine's loop adds everything a real run does: the image cache, the
loader, the paper's augmentation (RandomResizedCrop + flip + RandAugment m6, per-image seeded), the host-to-device
copy, the per-iteration lr schedule and logging. Both use the same model, optimizer and batch; the script prints
images/s of each, the ratio, and peak memory.

  python benchmarks/engine_bench.py                                    # CPU: ViT-Tiny, 224 px, batch 32
  python benchmarks/engine_bench.py --arch vit_base_patch16_224 --batch 128 --device cuda --workers 14 \\
      --precision bf16 --compile --augmentation batched                # GPU
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.data.cache_read import IMAGES_FILE, OK, STATUS_FILE, create_store, open_array, write_manifest  # noqa: E402
from engine.data.schema import PATHOLOGIES  # noqa: E402
from engine.recipes import DataConfig, FinetuneConfig, ModelConfig, TrainConfig, resolve_recipe  # noqa: E402
from engine.train.distributed import Dist  # noqa: E402
from engine.train.evaluate import masked_bce  # noqa: E402
from engine.train.loop import autocast_for, train_one_epoch  # noqa: E402
from engine.train.setup import (  # noqa: E402
    load_data,
    make_loaders,
    make_model,
    make_optimizer,
    make_scheduler,
    make_step_context,
)


def write_synthetic_inputs(root: Path, n: int, size: int, seed: int = 0) -> dict[str, Path]:
    """A cohort of ``n`` training images (+ a few validation ones) and a finished uint8 cache of smooth noise."""
    rng = np.random.default_rng(seed)
    ids = [f"img{i:06d}.jpg" for i in range(n + 64)]
    cache = root / "cache"
    manifest = create_store(cache, ids, size, root, {"rule": "benchmark noise", "decoder": "none"})
    images = open_array(cache, IMAGES_FILE, (len(ids), size, size), "r+")
    base = rng.integers(0, 256, (len(ids), size // 8, size // 8), dtype=np.uint8)
    images[:] = base.repeat(8, axis=1).repeat(8, axis=2)  # blocky images: cheap to make, not constant
    images.flush()
    status = open_array(cache, STATUS_FILE, (len(ids),), "r+")
    status[:] = OK
    status.flush()
    write_manifest(cache, manifest, {"ok": len(ids), "bad": 0, "todo": 0}, "benchmark")
    labels = {p: rng.choice([0.0, 1.0], len(ids)).tolist() for p in PATHOLOGIES}
    cohort = pl.DataFrame({"image_id": ids, "patient_id": [f"p{i}" for i in range(len(ids))],
                           "split": ["train"] * n + ["validate"] * 64, **labels})
    cohort.write_parquet(root / "cohort.parquet")
    return {"cohort": root / "cohort.parquet", "cache": cache}


def bench_config(args, paths: dict[str, Path], out: Path) -> FinetuneConfig:
    name = "scratch-vit" if args.arch.startswith("vit") else "scratch-resnet"
    return FinetuneConfig(
        run_id="bench", out_dir=str(out), data=DataConfig(cohort=str(paths["cohort"]), cache=str(paths["cache"]),
                                                          workers=args.workers),
        model=ModelConfig(name=name, architecture=args.arch, input_size=args.input_size),
        train=TrainConfig(epochs=2, batch_size=args.batch, steps_per_epoch=args.steps, precision=args.precision,
                          compile=args.compile, augmentation=args.augmentation, log_every=0))


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB (GPU, peak allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process max RSS so far)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raw_rate(config: FinetuneConfig, dist: Dist, steps: int, warmup: int) -> float:
    """Images/s of the bare step on a batch already on the device."""
    recipe = resolve_recipe(config)
    model, bare, _ = make_model(config, recipe, None, dist)
    optimizer = make_optimizer(bare, recipe, probe=False)
    size, batch = config.model.input_size, recipe.batch_size
    inputs = torch.randn(batch, 3, size, size, device=dist.device)
    if recipe.family == "ResNet" and dist.device.type == "cuda":
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 2, (batch, len(PATHOLOGIES)), device=dist.device).float()
    autocast = autocast_for(dist.device, config.train.precision)
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            sync(dist.device)
            start = time.perf_counter()
        with autocast():
            loss = masked_bce(model, inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(dist.device)
    return steps * batch / (time.perf_counter() - start)


def engine_rate(config: FinetuneConfig, dist: Dist) -> tuple[float, list[str]]:
    """Images/s of the engine's loop (epoch 0 warms up: workers, compile; epoch 1 is measured) and, on CUDA, the
    host syncs of the measured epoch as CUDA's sync debug mode reports them (expected: the loss checks at step 0
    and at the end of the epoch; tests/test_host_sync.py predicts this on the meta device)."""
    recipe = resolve_recipe(config)
    data = load_data(config)
    model, bare, _ = make_model(config, recipe, None, dist)
    train_loader, _, steps = make_loaders(config, recipe, data, dist)
    optimizer = make_optimizer(bare, recipe, probe=False)
    ctx = make_step_context(config, recipe, dist, optimizer, make_scheduler(optimizer, recipe, steps), steps, log=None)
    rate, syncs = 0.0, []
    for epoch in range(2):
        train_loader.sampler.set_epoch(epoch)
        sync(dist.device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if dist.device.type == "cuda" and epoch == 1:
                torch.cuda.set_sync_debug_mode("warn")
            start = time.perf_counter()
            stats = train_one_epoch(model, train_loader, epoch, ctx)
            if dist.device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
        sync(dist.device)
        rate = stats["steps"] * recipe.batch_size / (time.perf_counter() - start)
        syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
    return rate, syncs


@torch.no_grad()
def predict_rates(config: FinetuneConfig, dist: Dist, n_batches: int = 10) -> tuple[float, float]:
    """Images/s of a bare eval forward on device tensors vs the engine's scoring path (loader, crop, gather)."""
    from engine.train.predict import score_table

    recipe = resolve_recipe(config)
    _, model, _ = make_model(config, recipe, None, dist)
    model.eval()
    batch, size = config.train.eval_batch_size, config.model.input_size
    inputs = torch.randn(batch, 3, size, size, device=dist.device)
    autocast = autocast_for(dist.device, config.train.precision)
    for step in range(3 + n_batches):
        if step == 3:
            sync(dist.device)
            start = time.perf_counter()
        with autocast():
            model(inputs)
    sync(dist.device)
    raw = n_batches * batch / (time.perf_counter() - start)
    data = load_data(config)
    score_table(model, data.cache, data.train, config, recipe, dist)  # warm-up (workers, device copy)
    start = time.perf_counter()
    score_table(model, data.cache, data.train, config, recipe, dist)
    return raw, len(data.train) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_tiny_patch16_224")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--cache-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--augmentation", default="timm", choices=("timm", "batched", "none"))
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--predict", action="store_true", help="also time prediction (eval batch 256)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dist = Dist(0, 1, 0, device)
    torch.backends.cuda.matmul.allow_tf32 = True
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_synthetic_inputs(Path(tmp), args.batch * args.steps, args.cache_size)
        config = bench_config(args, paths, Path(tmp) / "out")
        raw = raw_rate(config, dist, args.steps, warmup=3 if not args.compile else 10)
        raw_memory = peak_memory(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        engine, syncs = engine_rate(config, dist)
        engine_memory = peak_memory(device)
        predict = predict_rates(config, dist) if args.predict else None
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), torch "
          f"{torch.__version__}, timm {__import__('timm').__version__}, {torch.get_num_threads()} threads")
    print(f"{args.arch} @ {args.input_size} px, batch {args.batch}, {args.precision}, compile={args.compile}, "
          f"augmentation={args.augmentation}, workers={args.workers}")
    print(f"raw timm step   {raw:9.1f} images/s   peak {raw_memory}")
    print(f"engine loop     {engine:9.1f} images/s   peak {engine_memory}")
    print(f"ratio engine / raw = {engine / raw:.3f}")
    if device.type == "cuda":
        print(f"host syncs in the measured epoch of {args.steps} steps: {len(syncs)} (expected 2: the loss checks at "
              f"step 0 and at the end)" + "".join(f"\n  {line}" for line in syncs[:5]))
    if predict is not None:
        print(f"prediction: raw forward {predict[0]:.1f} images/s, engine scoring {predict[1]:.1f} images/s, "
              f"ratio {predict[1] / predict[0]:.3f}")


if __name__ == "__main__":
    main()
