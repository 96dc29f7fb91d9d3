"""Pool images for self-supervised pre-training: the pool checked against its caches, a dataset that draws each
image's augmentation (and MAE's mask noise) from a seed of (seed, epoch, index), and the device-side warp.

The paper's augmentation (section 3.1, after Hosseinzadeh Taher et al. 2021) is a random resized crop, a
horizontal flip with probability 0.5 and a rotation in [-7, +7] degrees. The three compose into one affine map
per view, so the loader only reads the uint8 cache row and draws a few numbers (torchvision's RandomResizedCrop
rule: up to 10 tries of area scale and log-uniform aspect ratio, then the whole image); the batch is warped in one
``grid_sample`` on the training device, areas rotated in from outside the image are black (torchvision's fill 0).
Draws depend on (seed, epoch, dataset index) only, so any number of workers or ranks, and a resumed run, see the
same views and masks as one uninterrupted process.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from engine.data.cache_read import ImageCache
from engine.data.errors import DataError
from engine.data.io import read_table, require_columns
from engine.data.pools import composition, pool_report_path
from engine.pretrain_config import PretrainConfig
from engine.train.data import EPOCH_STRIDE, sample_seed
from engine.train.transfer import to_device


@dataclass(frozen=True)
class PoolData:
    table: pl.DataFrame  # pool rows used, in pool order
    caches: tuple[ImageCache, ...]  # one per dataset, in ``names`` order
    names: tuple[str, ...]
    source: np.ndarray  # [N] which cache each pool row is in
    rows: np.ndarray  # [N] its row in that cache
    report: dict | None  # the pool report (prepare pool), when found
    report_path: str | None

    @property
    def size(self) -> int:
        return self.caches[0].size


def load_pool(config: PretrainConfig) -> PoolData:
    """The pool table, its report and caches; DataError listing every image that is not usable, before training."""
    path = Path(config.data.pool)
    table = read_table(path, what="pool table")
    require_columns(table, ("dataset", "image_id"), file=path, what="pool table")
    if config.data.max_images is not None:
        table = table.head(config.data.max_images)
    if table.height == 0:
        raise DataError("the pool is empty", file=path)
    names = tuple(sorted(table["dataset"].unique().to_list()))
    unmapped = [name for name in names if name not in config.data.caches]
    if unmapped:
        raise DataError(f"no image cache configured for pool dataset(s) {', '.join(unmapped)}", file=path,
                        column="dataset", hint=f"add them to data.caches (configured: {', '.join(config.data.caches)})")
    caches = tuple(ImageCache.open(config.data.caches[name]) for name in names)
    source, rows = locate_images(table, names, caches, path)
    sizes = {cache.size for cache in caches}
    if len(sizes) > 1 or min(sizes) < config.input_size:
        raise ValueError(f"data.caches hold {sorted(sizes)} px images; they need one size, at least input_size "
                         f"{config.input_size}")
    report, report_path = read_pool_report(config)
    return PoolData(table, caches, names, source, rows, report, report_path)


def locate_images(table: pl.DataFrame, names: tuple[str, ...], caches: tuple[ImageCache, ...],
                  path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(cache number, cache row) of every pool image; one DataError with per-dataset counts and example ids for
    images absent from their dataset's cache or marked bad there."""
    source = np.empty(table.height, dtype=np.int64)
    rows = np.empty(table.height, dtype=np.int64)
    problems, examples, n_bad = [], [], 0
    datasets = table["dataset"].to_numpy()
    for number, (name, cache) in enumerate(zip(names, caches, strict=True)):
        where = np.flatnonzero(datasets == name)
        ids = table["image_id"].gather(where).to_list()
        known, bad = set(cache.image_ids), set(cache.bad_ids)
        missing = [i for i in ids if i not in known]
        broken = [i for i in ids if i in bad]
        for kind, found in (("missing from", missing), ("marked bad in", broken)):
            if found:
                problems.append(f"{name}: {len(found):,} of {len(ids):,} {kind} {cache.out_dir}")
                examples += [f"{name}:{i}" for i in found[:5]]
                n_bad += len(found)
        if not missing:
            source[where], rows[where] = number, cache.rows_of(ids)
    if n_bad:
        raise DataError(f"{n_bad:,} pool image(s) cannot be read from the caches ({'; '.join(problems)})", file=path,
                        column="image_id", rows=examples, n_bad=n_bad,
                        hint="build or complete the cache of each dataset from the pool (run_experiments.py cache "
                             "--table POOL --image-root ROOT --out CACHE), or remove those images from the pool")
    return source, rows


def read_pool_report(config: PretrainConfig) -> tuple[dict | None, str | None]:
    """The pool report and its path: data.report, else ``<pool stem>_report.json`` beside the pool when present."""
    path = Path(config.data.report) if config.data.report else pool_report_path(config.data.pool)
    if not path.is_file():
        if config.data.report:
            raise DataError("pool report not found", file=path)
        return None, None
    return json.loads(path.read_text()), str(path)


def pool_facts(pool: PoolData, config: PretrainConfig) -> dict:
    """Composition (recomputed from the rows used), fraction and pool rule: what pretraining.json records."""
    table, report = pool.table, pool.report or {}
    columns = ("sex", "race", "view", "position", "patient_id")
    counts = composition(table) if all(c in table.columns for c in columns) else {
        name: {"images": int((table["dataset"] == name).sum())} for name in pool.names}
    rule = report.get("rule", {})
    return {"pool": str(config.data.pool), "report": pool.report_path, "images": table.height,
            "datasets": {name: {"images": int((table["dataset"] == name).sum()), "cache": config.data.caches[name]}
                         for name in pool.names},
            "max_images": config.data.max_images, "composition": counts,
            "fraction": ({"fraction": rule.get("fraction"), "unit": rule.get("fraction_unit"),
                          "seed": rule.get("seed")} if rule else None),
            "pool_rule": rule or None, "eval_patients": report.get("eval_patients")}


def draw_view(rng: np.random.Generator, size: int, *, scale: tuple[float, float], ratio: tuple[float, float],
              hflip: float, rotation: float) -> np.ndarray:
    """Affine map [2, 3] from output to input coordinates (both in [-1, 1]) of crop -> resize -> flip -> rotate.

    The crop follows torchvision's RandomResizedCrop rule on a square ``size`` image; rotation is about the centre
    of the resized crop, where normalised coordinates are isotropic.
    """
    top, left, height, width = 0, 0, size, size  # fallback: the whole (square) image
    area, log_ratio = size * size, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= size and 0 < h <= size:
            top, left = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            height, width = h, w
            break
    flip = -1.0 if rng.random() < hflip else 1.0
    angle = math.radians(rng.uniform(-rotation, rotation))
    cos, sin = math.cos(angle), math.sin(angle)
    sx, sy = width / size, height / size
    return np.array([[sx * flip * cos, -sx * flip * sin, (2 * left + width) / size - 1],
                     [sy * sin, sy * cos, (2 * top + height) / size - 1]], dtype=np.float32)


class PoolImages(Dataset):
    """(uint8 image [C, C], (views [V, 2, 3], mask noise [L]), index) for every pool image; keys carry the epoch
    (engine.train.data.EpochSampler). ``mask_tokens`` is 0 for MoCo v3 (no noise drawn)."""

    def __init__(self, pool: PoolData, *, views: int, mask_tokens: int, scale: tuple[float, float],
                 ratio: tuple[float, float], hflip: float, rotation: float, seed: int):
        self.pool, self.views, self.mask_tokens, self.seed = pool, views, mask_tokens, seed
        self.augment = {"scale": scale, "ratio": ratio, "hflip": hflip, "rotation": rotation}

    def __len__(self) -> int:
        return self.pool.table.height

    def __getitem__(self, key: int):
        epoch, index = divmod(int(key), EPOCH_STRIDE)
        cache = self.pool.caches[self.pool.source[index]]
        pixels = torch.from_numpy(np.array(cache.array[self.pool.rows[index]]))  # [C, C] uint8
        rng = np.random.default_rng(sample_seed(self.seed, epoch, index))
        views = np.stack([draw_view(rng, cache.size, **self.augment) for _ in range(self.views)])
        noise = rng.random(self.mask_tokens, dtype=np.float32)  # MAE: per-token noise whose order is the mask
        return pixels, (torch.from_numpy(views), torch.from_numpy(noise)), index


class ViewWarp:
    """Callable ``(batch, step_seed) -> (inputs, noise, indices)`` on ``device``: every view warped with its affine
    map in one ``grid_sample`` and normalised; inputs are [N, 3, S, S] for one view, [N, V, 3, S, S] for more."""

    def __init__(self, device: torch.device, *, size: int, mean, std, interpolation: str):
        self.device, self.size, self.interpolation = device, size, interpolation
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def __call__(self, batch, step_seed: int | None = None):
        images, (thetas, noise), indices = batch
        n, views = thetas.shape[:2]
        images = to_device(images, self.device)
        pixels = images.unsqueeze(1).float().div_(255.0)  # [N, 1, C, C]
        pixels = pixels.repeat_interleave(views, dim=0) if views > 1 else pixels  # [N*V, 1, C, C]
        thetas = to_device(thetas, self.device).view(n * views, 2, 3)
        grid = F.affine_grid(thetas, [n * views, 1, self.size, self.size], align_corners=False)
        warped = F.grid_sample(pixels, grid, mode=self.interpolation, padding_mode="zeros", align_corners=False)
        warped = (warped.clamp_(0.0, 1.0) - self.mean) / self.std  # [N*V, 3, S, S] (grey broadcast to RGB)
        inputs = warped if views == 1 else warped.view(n, views, 3, self.size, self.size)
        return inputs, to_device(noise, self.device), indices
