"""Throughput of BatchAugment (batched torch, on any device) against timm's per-image PIL training transform.

Usage: python benchmarks/augment_bench.py [--batch 128] [--size 256] [--input-size 224] [--device cuda] [--repeats 5]

Both sides get the same grey uint8 images (a smooth field plus Gaussian noise, like the image cache). timm's side is
`create_transform(is_training=True, auto_augment='rand-m6-mstd0.5-inc1', interpolation='bicubic', ...)` on
`Image.fromarray(grey).convert('RGB')`, one image at a time in this one process (a DataLoader scales it by its worker
count at best). BatchAugment's side is draw (CPU) + apply on `--device`, images already on the device. Each side
reports its best pass of --repeats (shared CPUs are noisy). With a device other than the CPU it also checks that
the device output equals the CPU output for the same plan.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.train.gpu_augment import BatchAugment  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RANDAUGMENT = "rand-m6-mstd0.5-inc1"


def make_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n radiograph-like grey images: a smooth separable field plus Gaussian noise, uint8 [n, size, size]."""
    rng = np.random.default_rng(seed)
    axis = np.linspace(0, 1, size)
    out = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        a, b = rng.uniform(1, 6, 2)
        field = 128 + 80 * np.outer(np.sin(a * axis), np.cos(b * axis)) + rng.normal(0, 10, (size, size))
        out[i] = np.clip(field, 0, 255)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batch_augment(aug: BatchAugment, images: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(images/s of draw + apply, ms of the draw alone), best batch of `repeats` after two warm-up batches."""
    n, size = images.shape[0], images.shape[-1]
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        aug(images, generator)
    best, best_draw = float("inf"), float("inf")
    for _ in range(repeats):
        _sync(images.device)
        start = time.perf_counter()
        plan = aug.draw(n, size, generator)
        best_draw = min(best_draw, time.perf_counter() - start)
        aug.apply(images, plan)
        _sync(images.device)
        best = min(best, time.perf_counter() - start)
    return n / best, 1000 * best_draw


def time_timm(images: np.ndarray, input_size: int, repeats: int) -> float:
    """images/s of timm's PIL transform, one image at a time in this process, best pass of `repeats`."""
    from timm.data import create_transform

    transform = create_transform(input_size, is_training=True, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5,
                                 vflip=0.0, auto_augment=RANDAUGMENT, interpolation="bicubic", re_prob=0.0,
                                 mean=MEAN, std=STD)
    transform(Image.fromarray(images[0]).convert("RGB"))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for grey in images:
            transform(Image.fromarray(grey).convert("RGB"))
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def check_against_cpu(aug: BatchAugment, images: torch.Tensor) -> float:
    """Max abs difference between the device output and the CPU output for one plan (0.0 means bit-identical)."""
    plan = aug.draw(images.shape[0], images.shape[-1], torch.Generator().manual_seed(1))
    return (aug.apply(images, plan).cpu() - aug.apply(images.cpu(), plan)).abs().max().item()


def benchmark(batch: int = 128, size: int = 256, input_size: int = 224, device: str | None = None,
              repeats: int = 5) -> dict:
    """Print BatchAugment's and timm's images/s side by side, with the ratio; return the numbers."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    grey = make_images(batch, size)
    images = torch.from_numpy(grey).to(device)
    aug = BatchAugment(input_size, randaugment=RANDAUGMENT, mean=MEAN, std=STD, interpolation="bicubic")
    ours, draw_ms = time_batch_augment(aug, images, repeats)
    theirs = time_timm(grey, input_size, repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"batch {batch} x {size}x{size} uint8 -> {input_size}x{input_size}, {RANDAUGMENT}")
    print(f"{'BatchAugment on ' + name:<52} {ours:10.1f} images/s  (draw {draw_ms:.1f} ms/batch)")
    print(f"{'timm PIL transform, 1 process':<52} {theirs:10.1f} images/s")
    print(f"{'ratio BatchAugment / timm':<52} {ours / theirs:10.2f} x")
    result = {"device": name, "batch_augment_images_per_s": ours, "timm_images_per_s": theirs,
              "ratio": ours / theirs, "draw_ms": draw_ms}
    if device.type != "cpu":
        result["max_abs_diff_vs_cpu"] = check_against_cpu(aug, images)
        print(f"{'max |device - cpu| for one plan':<52} {result['max_abs_diff_vs_cpu']:10.3g}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    benchmark(args.batch, args.size, args.input_size, args.device, args.repeats)


if __name__ == "__main__":
    main()
