"""Torch datasets over the uint8 image cache, the paper's transforms, and loaders that split a global batch.

Reproducibility: the random draws of an image's augmentation are seeded by (seed, epoch, dataset index), not by a
worker's or rank's RNG stream. The same run therefore sees the same augmented images whatever the number of
DataLoader workers or GPUs, and a resumed run sees exactly what an uninterrupted one would have seen.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, get_worker_info

from engine.data.cache_read import ImageCache
from engine.train.split_table import SplitTable

EPOCH_STRIDE = 1 << 32  # sampler yields epoch * EPOCH_STRIDE + index, so workers know the epoch without state
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (images, targets [N, 14], dataset indices [N])


def timm_train_transform(input_size: int, mean, std, *, scale: tuple[float, float], hflip: float,
                         randaugment: str | None, normalise: bool = False) -> Callable:
    """timm's training transform as Medical MAE builds it (bicubic RandomResizedCrop, flip, RandAugment).

    It ends in a uint8 tensor [3, S, S] (timm's prefetcher form): a quarter of the bytes of float through shared
    memory, pinning and the host-to-device copy; BatchPreparer then applies ToTensor's /255 and Normalize on the
    device, bit-identically. ``normalise=True`` gives timm's float output (ToTensor + Normalize here), the reference
    the tests compare against. ``mean`` matters either way: RandAugment fills with it.
    """
    from timm.data import create_transform  # timm import kept local: this module is imported by workers

    return create_transform(input_size=input_size, is_training=True, scale=scale, hflip=hflip, vflip=0.0,
                            auto_augment=randaugment, interpolation="bicubic", re_prob=0.0, mean=mean, std=std,
                            use_prefetcher=not normalise)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's augmentation draw (stable across processes: no Python hash randomisation)."""
    return (seed * 1_000_003 + epoch) * 2_654_435_761 + index & 0x7FFF_FFFF_FFFF


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed the three RNGs timm's transforms draw from (RandomResizedCrop: ``random``; RandAugment: ``random`` for
    magnitudes and ``numpy.random`` for the op choice; torchvision ops: torch), and restore them afterwards so the
    training process's own streams (DropPath) are untouched when the loader runs in-process."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed & 0xFFFF_FFFF)
    torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed also seeds CUDA (0.15 ms a call)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def batch_buffer(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor for a whole batch; inside a DataLoader worker it lives in shared memory (as default_collate
    allocates it), so the batch reaches the main process without another copy."""
    if get_worker_info() is None:
        return torch.empty(tuple(shape), dtype=dtype)
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0, dtype=dtype).new(storage).view(tuple(shape))


class CachedImages(Dataset):
    """Images of a SplitTable from the cache: (image, targets [14], index).

    ``transform`` is None: the image is returned as a uint8 tensor [H, W], and the caller crops, augments and
    normalises the batch on its device (engine/train/batches.py). Otherwise it receives a PIL RGB image (the grey
    channel replicated, as Medical MAE's loader does) and returns a tensor [3, S, S] (uint8 from
    ``timm_train_transform``, normalised by BatchPreparer).

    The loader fetches whole batches (``__getitems__``, already collated: make_loader passes them through), so a
    batch costs one read of the memory-mapped cache rather than one per image.
    """

    def __init__(self, cache: ImageCache, table: SplitTable, *, transform: Callable | None = None, seed: int = 0):
        self.cache, self.transform, self.seed = cache, transform, seed
        self.rows = cache.rows_of(table.image_ids)
        self.targets = torch.from_numpy(table.targets)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        images, targets, indices = self.__getitems__([key])
        return images[0], targets[0], int(indices[0])

    def __getitems__(self, keys: Sequence[int]) -> Batch:
        """The collated batch of sampler ``keys``: what default_collate makes of the per-image samples."""
        epochs, indices = np.divmod(np.asarray(keys, dtype=np.int64), EPOCH_STRIDE)
        index = torch.from_numpy(indices)
        shape = (len(indices), *self.cache.array.shape[1:])
        if self.transform is None:
            images = batch_buffer(shape, torch.uint8)
            self._read(self.rows[indices], images.numpy())
            return images, self.targets[index], index
        pixels = self._read(self.rows[indices], np.empty(shape, dtype=np.uint8))
        first = self._transformed(pixels[0], int(epochs[0]), int(indices[0]))
        images = batch_buffer((len(indices), *first.shape), first.dtype)
        images[0] = first
        for j in range(1, len(indices)):
            images[j] = self._transformed(pixels[j], int(epochs[j]), int(indices[j]))
        return images, self.targets[index], index

    def _read(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Cache ``rows`` into ``out`` [N, H, W]: one read in ascending row order (sequential in the file), put
        back in batch order."""
        order = np.argsort(rows, kind="stable")
        out[order] = self.cache.array[rows[order]]
        return out

    def _transformed(self, pixels: np.ndarray, epoch: int, index: int) -> torch.Tensor:
        with seeded(sample_seed(self.seed, epoch, index)):
            image = self.transform(Image.fromarray(pixels, mode="L").convert("RGB"))
        return torch.as_tensor(image)


class EpochSampler(Sampler[int]):
    """DistributedSampler's order (seed + epoch permutation, rank r takes every world-th index), as keys that carry
    the epoch. With world size 1 the order equals a 1-rank DistributedSampler, so 1 and N ranks see the same
    global batches."""

    def __init__(self, n: int, *, rank: int, world: int, shuffle: bool, seed: int):
        self.inner = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __iter__(self):
        return (self.epoch * EPOCH_STRIDE + i for i in self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def per_rank_batch(global_batch: int, world: int) -> int:
    """The global batch split across ranks (ValueError when it does not divide)."""
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} does not split evenly across {world} processes")
    return global_batch // world


def make_loader(dataset: CachedImages, *, batch_size: int, rank: int, world: int, shuffle: bool, seed: int,
                workers: int, drop_last: bool, pin_memory: bool) -> DataLoader:
    """A loader over ``dataset`` for one rank; ``batch_size`` is already the per-rank batch."""
    sampler = EpochSampler(len(dataset), rank=rank, world=world, shuffle=shuffle, seed=seed)
    # CachedImages collates its own batches (__getitems__); other datasets (pre-training's) use default_collate
    collate = keep_batch if isinstance(dataset, CachedImages) else None
    # its own generator: creating an iterator must not consume the global RNG (DropPath's), or a resumed run
    # would draw different DropPath masks from an uninterrupted one
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
                      pin_memory=pin_memory, persistent_workers=workers > 0, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed))


def keep_batch(batch: Batch) -> Batch:
    """collate_fn for a dataset whose ``__getitems__`` already returns the batch (module level: workers pickle it)."""
    return batch
