"""Benchmark of the pre-training stage: the raw training step against the engine's whole loop, and DDP scaling.

Usage: python benchmarks/pretrain_bench.py [--arch vit_tiny_patch16_224] [--input-size 32] [--batch 64]
       [--methods mae,moco-v3] [--steps 10] [--epochs 2] [--device cpu|cuda] [--precision fp32|bf16] [--workers 0]
       [--threads N] [--scaling]
GPU, ViT-B: python benchmarks/pretrain_bench.py --arch vit_base_patch16_224 --input-size 224 --batch 256
       --device cuda --precision bf16 --workers 8 (MoCo v3 at --batch 128)

In one process, per method: (a) the raw step, i.e. forward, backward, optimizer step, lr update and MoCo's momentum
update on one prepared batch held in memory; (b) the engine's loop, ``train_one_epoch`` over the real loader
(cache rows, per-image seeded draws, batched affine warp, normalisation) with the same step; (c) the input
pipeline alone (loader + warp, no model). Images per second and the ratio b / a are printed. With ``--scaling``
(CPU, gloo), the engine loop also runs on 1 and on 2 processes under ``torch.distributed.run`` at the same global
batch, one thread per process, and the speed-up is printed.
The pool is a synthetic CheXpert look-alike cached at ``input_size * 8 / 7`` px (256 for 224) in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.data.cache_stage import cache_images  # noqa: E402
from engine.data.pools import build_pool, read_chexpert_pool, write_pool  # noqa: E402
from engine.data.synth import write_synthetic_chexpert  # noqa: E402
from engine.pretrain_config import (  # noqa: E402
    MaeConfig,
    MocoConfig,
    PoolDataConfig,
    PretrainConfig,
    PretrainTrainConfig,
    resolve_pretrain,
)
from engine.train import distributed  # noqa: E402
from engine.train.loop import train_one_epoch  # noqa: E402
from engine.train.pretrain import make_training  # noqa: E402
from engine.train.pretrain_data import load_pool  # noqa: E402


def make_pool(folder: Path, images: int, cache_size: int) -> dict:
    """A synthetic CheXpert pool of about ``images`` frontal images and its cache."""
    synth = write_synthetic_chexpert(folder / "synth", n_patients=max(20, images * 2 // 3), seed=0, force=True)
    source, _ = read_chexpert_pool(synth["train_csv"])
    pool, report = build_pool([source])
    write_pool(pool, report, folder / "pool.parquet", force=True)
    cache_images(table=folder / "pool.parquet", image_root=synth["image_root"], out_dir=folder / "cache",
                 size=cache_size, force=True, progress=False)
    return {"pool": str(folder / "pool.parquet"), "caches": {"chexpert": str(folder / "cache")}, "n": pool.height}


def bench_config(args, pool: dict, method: str, out: Path) -> PretrainConfig:
    tiny = args.input_size <= 64
    return PretrainConfig(
        run_id=f"bench-{method}", method=method, out_dir=str(out), architecture=args.arch, input_size=args.input_size,
        data=PoolDataConfig(pool=pool["pool"], caches=pool["caches"], workers=args.workers),
        mae=MaeConfig(decoder_dim=128, decoder_depth=2, decoder_heads=4) if tiny else MaeConfig(),
        moco=MocoConfig(dim=64, mlp_dim=256) if tiny else MocoConfig(),
        train=PretrainTrainConfig(epochs=1000, batch_size=args.batch, warmup_epochs=1.0, precision=args.precision,
                                  log_every=0, steps_per_epoch=args.steps))


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def raw_rate(run, steps: int, device: torch.device) -> float:
    """Images/s of the step alone on one prepared batch (lr update, forward, backward, AdamW, EMA update)."""
    ctx = run.ctx
    inputs, targets, _ = ctx.prepare(next(iter(run.loader)), 0)
    run.model.train()

    def loop(n: int) -> None:
        for step in range(n):
            ctx.scheduler.step_update(step)
            with ctx.autocast():
                loss = ctx.loss_fn(run.model, inputs, targets)
            loss.item()  # the engine's loop reads the loss every step (non-finite check)
            ctx.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            ctx.optimizer.step()
            if ctx.after_step is not None:
                ctx.after_step(step)

    loop(3)  # warm-up
    return inputs.shape[0] * steps / timed(lambda: loop(steps), device)


def data_rate(run, epochs: int, device: torch.device) -> float:
    """Images/s of the input pipeline alone: loader (cache rows, seeded draws) + batched warp, no model."""
    def loop() -> int:
        images = 0
        for epoch in range(1, epochs + 1):
            run.loader.sampler.set_epoch(epoch)
            for step, batch in enumerate(run.loader):
                if step >= run.steps:
                    break
                images += run.ctx.prepare(batch, step)[0].shape[0]
        return images

    counted: list[int] = []
    seconds = timed(lambda: counted.append(loop()), device)
    return counted[0] / seconds


def engine_rate(run, epochs: int, device: torch.device) -> float:
    """Global images/s of ``train_one_epoch`` over the loader (first epoch = warm-up, not timed)."""
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    train_one_epoch(run.model, run.loader, 0, run.ctx)
    seconds = 0.0
    for epoch in range(1, epochs + 1):
        run.loader.sampler.set_epoch(epoch)
        seconds += timed(lambda e=epoch: train_one_epoch(run.model, run.loader, e, run.ctx), device)
    per_rank_batch = run.loader.batch_size
    return per_rank_batch * world * run.steps * epochs / seconds


def measure(args, pool: dict, method: str, folder: Path, *, raw: bool) -> dict:
    config = bench_config(args, pool, method, folder / method)
    dist = distributed.setup()
    if args.device == "cpu":
        dist = distributed.Dist(dist.rank, dist.world, dist.local_rank, torch.device("cpu"))
    torch.manual_seed(0)
    run = make_training(config, resolve_pretrain(config), load_pool(config), dist, lambda _: None)
    result = {"method": method, "engine": engine_rate(run, args.epochs, dist.device)}
    if raw:
        result["raw"] = raw_rate(run, args.steps * args.epochs, dist.device)
        result["ratio"] = result["engine"] / result["raw"]
        result["data"] = data_rate(run, args.epochs, dist.device)
    return result


def scaling(args, pool: dict, method: str, folder: Path) -> dict:
    """Engine images/s on 1 and 2 gloo processes (one thread each) at the same global batch."""
    rates = {}
    for procs in (1, 2):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
                   __file__, "--child", json.dumps({"pool": pool, "method": method, "folder": str(folder)}),
                   *_forwarded(args)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
        rates[procs] = json.loads(out.strip().splitlines()[-1])["engine"]
    return {"method": method, "1 process": rates[1], "2 processes": rates[2], "speed-up": rates[2] / rates[1]}


def _forwarded(args) -> list[str]:
    return ["--arch", args.arch, "--input-size", str(args.input_size), "--batch", str(args.batch), "--steps",
            str(args.steps), "--epochs", str(args.epochs), "--device", "cpu", "--precision", args.precision,
            "--workers", str(args.workers)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vit_tiny_patch16_224")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--methods", default="mae,moco-v3")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed epoch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--scaling", action="store_true", help="also measure 1 vs 2 gloo processes (CPU)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:  # one rank of the scaling measurement
        spec = json.loads(args.child)
        result = measure(args, spec["pool"], spec["method"], Path(spec["folder"]) / f"r{os.environ['RANK']}",
                         raw=False)
        if os.environ.get("RANK", "0") == "0":
            print(json.dumps(result))
        distributed.teardown()
        return
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}; {args.arch} at "
          f"{args.input_size} px, global batch {args.batch}, {args.device}, {args.precision}, {args.workers} workers")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pool = make_pool(folder, args.batch * args.steps + args.batch, round(args.input_size * 8 / 7))
        for method in args.methods.split(","):
            r = measure(args, pool, method, folder, raw=True)
            print(f"{method:8s} raw step {r['raw']:8.1f} img/s   engine loop {r['engine']:8.1f} img/s   "
                  f"engine / raw {r['ratio']:.1%}   (input pipeline alone {r['data']:8.1f} img/s)")
        if args.scaling:
            for method in args.methods.split(","):
                s = scaling(args, pool, method, folder)
                print(f"{method:8s} gloo, 1 thread each: 1 process {s['1 process']:8.1f} img/s   2 processes "
                      f"{s['2 processes']:8.1f} img/s   speed-up {s['speed-up']:.2f}x")


if __name__ == "__main__":
    main()
