"""Benchmark of the image cache: decode speed with and without JPEG draft, cache build, cache reads.

Usage: python benchmarks/cache_bench.py [--n 200] [--full-size] [--size 256] [--repeats 1]

Generates N grayscale JPEGs (quality 95) of CheXpert size in a temporary folder: the small release's 320 x 390, or
with --full-size the full release's 2320 x 2828. Each is a smooth field plus Gaussian noise, so files come out at
roughly the real sizes (about 2 MB full-size). Then times, in this one process:
(a) plain PIL full decode, (b) full decode + resize + crop without draft, (c) build_cache with workers=1 and with
all cores, (d) random batches of 128 from the finished cache; and prints ratios of (c) to (a).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.data.cache import RESAMPLE, center_crop_box, pixel_rule, resized_size  # noqa: E402
from engine.data.cache_build import build_cache  # noqa: E402
from engine.data.cache_read import ImageCache  # noqa: E402

SMALL, FULL = (320, 390), (2320, 2828)  # (width, height) of a CheXpert frontal image, small and full release
READ_BATCH = 128


def make_images(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[str]:
    """Write n radiograph-like grayscale JPEGs (smooth field + noise, quality 95); return their ids.

    The field is a sum of separable terms (outer products of 1-D waves), so a 2320 x 2828 image costs milliseconds.
    """
    rng = np.random.default_rng(seed)
    x = np.arange(width, dtype=np.float32)[None, :]
    y = np.arange(height, dtype=np.float32)[:, None]
    ids = []
    for i in range(n):
        fx, fy, fd = rng.uniform(4, 9, size=3)
        ax, ay = x / (width / fd), y / (width / fd)  # sin(a + b) = sin a cos b + cos a sin b
        diagonal = np.sin(ax) * np.cos(ay) + np.cos(ax) * np.sin(ay)
        base = 128 + 60 * np.sin(x / (width / fx) + i) * np.cos(y / (height / fy)) + 25 * diagonal
        noise = rng.standard_normal((height, width), dtype=np.float32) * 4
        image_id = f"train/patient{i:05d}/study1/view1_frontal.jpg"
        (folder / image_id).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / image_id, quality=95)
        ids.append(image_id)
    return ids


def rate(fn: Callable[[], int], repeats: int) -> float:
    """Median items per second of ``fn`` (which returns how many items it handled)."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = fn()
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def decode_all(root: Path, ids: list[str]) -> int:
    """(a) full decode to grayscale."""
    for image_id in ids:
        Image.open(root / image_id).convert("L")
    return len(ids)


def decode_resize_all(root: Path, ids: list[str], size: int) -> int:
    """(b) full decode + the cache geometry (short side resize + centre crop), no draft."""
    for image_id in ids:
        img = Image.open(root / image_id).convert("L")
        target = resized_size(*img.size, size)
        img.resize(target, RESAMPLE).crop(center_crop_box(*target, size))
    return len(ids)


def draft_decode_all(root: Path, ids: list[str], size: int) -> int:
    """Draft-mode decode only (no resize), to show where the build's time goes."""
    for image_id in ids:
        img = Image.open(root / image_id)
        img.draft("L", resized_size(*img.size, size))
        img.load()
    return len(ids)


def read_rate(cache_dir: Path, n_batches: int, seed: int = 0) -> tuple[float, float]:
    """(d) images/s and MB/s for random batches of 128 ids read through ImageCache.get."""
    cache = ImageCache.open(cache_dir)
    rng = np.random.default_rng(seed)
    ids = list(cache.image_ids)
    batches = [[ids[i] for i in rng.integers(0, len(ids), READ_BATCH)] for _ in range(n_batches)]
    start = time.perf_counter()
    n_bytes = sum(cache.get(batch).nbytes for batch in batches)
    seconds = time.perf_counter() - start
    return n_batches * READ_BATCH / seconds, n_bytes / seconds / 1e6


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else the platform string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_rate(root: Path, ids: list[str], out: Path, size: int, workers: int) -> float:
    """(c) images/s of a fresh build_cache call (wall time of the whole call, pool start included)."""
    report = build_cache(ids, image_root=root, out_dir=out, size=size, workers=workers, force=True, progress=False)
    assert report.n_ok == len(ids), report.bad
    return report.images_per_s


def measure(root: Path, work: Path, ids: list[str], size: int, repeats: int, cores: int) -> dict[str, float]:
    """Images/s of (a), (b), the draft-only decode and (c1), (c2); ``work`` receives the two caches."""
    return {
        "(a) PIL full decode": rate(lambda: decode_all(root, ids), repeats),
        f"(b) full decode + resize/crop to {size}, no draft": rate(lambda: decode_resize_all(root, ids, size), repeats),
        "draft decode only (no resize)": rate(lambda: draft_decode_all(root, ids, size), repeats),
        "(c1) build_cache workers=1": build_rate(root, ids, work / "c1", size, 1),
        f"(c2) build_cache workers={cores} (all cores)": build_rate(root, ids, work / "c2", size, cores),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of generated images (default 200)")
    parser.add_argument("--full-size", action="store_true", help="2320 x 2828 images instead of 320 x 390")
    parser.add_argument("--size", type=int, default=256, help="cache size in pixels (default 256)")
    parser.add_argument("--repeats", type=int, default=1, help="repeats of (a), (b) and the draft decode (median)")
    args = parser.parse_args(argv)
    width, height = FULL if args.full_size else SMALL
    cores = len(os.sched_getaffinity(0))
    print(f"machine: {cores} cores, {cpu_model()}; {pixel_rule()['decoder']}; Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="cache_bench_") as tmp:
        root, start = Path(tmp) / "images", time.perf_counter()
        ids = make_images(root, args.n, width, height)
        mean_kb = np.mean([(root / i).stat().st_size for i in ids]) / 1e3
        print(
            f"generated {args.n} JPEGs {width}x{height} q95, mean {mean_kb:.0f} kB, "
            f"in {time.perf_counter() - start:.1f} s"
        )
        results = measure(root, Path(tmp), ids, args.size, args.repeats, cores)
        read_ips, read_mbs = read_rate(Path(tmp) / "c2", n_batches=max(20, 4 * args.n // READ_BATCH))
    report(results, read_ips, read_mbs, args, cores)


def report(results: dict[str, float], read_ips: float, read_mbs: float, args: argparse.Namespace, cores: int) -> None:
    """Print the figures as a Markdown table, ready for docs/performance.md."""
    decode = next(iter(results.values()))
    print("\n| measurement | images/s | per core | ratio to (a), per core |\n|---|---|---|---|")
    for name, value in results.items():
        per_core = value / cores if "all cores" in name else value
        print(f"| {name} | {value:.1f} | {per_core:.1f} | {per_core / decode:.2f} |")
    print(
        f"| (d) cache read, random batches of {READ_BATCH}, warm page cache | {read_ips:,.0f} "
        f"({read_mbs:,.0f} MB/s) | | |"
    )
    print(
        f"\ncommand: python benchmarks/cache_bench.py --n {args.n}{' --full-size' if args.full_size else ''} "
        f"--size {args.size} --repeats {args.repeats}  ({cores} cores)"
    )


if __name__ == "__main__":
    main()
