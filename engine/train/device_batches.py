"""Batches gathered from a copy of a split's cached images in GPU memory: no loader process, no host copy.

For the paths that need no per-image CPU transform (evaluation, prediction, and the batched GPU augmentation), the
uint8 images of the split are copied to the device once (the paper's training split: 76,205 x 256 x 256 bytes =
5.0 GB) and every batch is one index gather there (the issue's measurement: a PIL loader fed 43 % of the compiled
step, the host copy being part of the cost). The order is EpochSampler's, so the batches equal the loader's exactly
(tests/test_engine_input_pipeline.py); ``sampler.set_epoch`` works as on a DataLoader.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from engine.data.cache_read import ImageCache
from engine.train.data import EPOCH_STRIDE, Batch, EpochSampler
from engine.train.split_table import SplitTable
from engine.train.transfer import to_device

DEVICE_SHARE = 0.4  # at most this share of the free device memory holds cached images (the model needs the rest)


def fits_on_device(n_bytes: int, device: torch.device) -> bool:
    """Whether ``n_bytes`` of images fit in DEVICE_SHARE of the device's free memory (never on CPU)."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return n_bytes <= DEVICE_SHARE * free


def split_bytes(cache: ImageCache, table: SplitTable) -> int:
    return len(table) * cache.size * cache.size


class DeviceBatches:
    """Iterable of (uint8 images [B, H, W], targets [B, 14], dataset indices [B]) on ``device`` for one rank."""

    def __init__(self, cache: ImageCache, table: SplitTable, *, device: torch.device, batch_size: int, rank: int,
                 world: int, shuffle: bool, seed: int, drop_last: bool):
        rows = cache.rows_of(table.image_ids)
        order = np.argsort(rows, kind="stable")
        pixels = np.empty((len(rows), cache.size, cache.size), dtype=np.uint8)
        pixels[order] = cache.array[rows[order]]  # one sorted read of the memmap, put back in table order
        self.device = device
        self.images = torch.from_numpy(pixels).to(device)  # [N, H, W] uint8, resident for the whole run
        self.targets = torch.from_numpy(table.targets).to(device)  # [N, 14]
        self.sampler = EpochSampler(len(rows), rank=rank, world=world, shuffle=shuffle, seed=seed)
        self.batch_size, self.drop_last = batch_size, drop_last

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        indices = torch.tensor(list(self.sampler), dtype=torch.int64) % EPOCH_STRIDE
        on_device = to_device(indices, self.device)  # the epoch's order in one copy; batches are slices of it
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = on_device[start:start + self.batch_size]
            yield (self.images.index_select(0, index), self.targets.index_select(0, index),
                   indices[start:start + self.batch_size])
