"""Turn a loader batch into model input on the device: centre crop + normalisation for evaluation, or the batched
augmentation (engine/train/gpu_augment.py) for training, or just a copy when the loader already transformed it."""

from __future__ import annotations

from collections.abc import Callable

import torch

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def centre_crop_normalise(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """uint8 [N, H, W] grey -> float [N, 3, size, size]: the centre crop of the cached square, /255, normalised.

    Equal to timm's eval transform (resize to the cache size, centre crop, ToTensor, Normalize) on a cache whose
    side is ``size / crop_pct``: Medical MAE's resize-256 + centre-crop-224 on a 256 px cache.
    """
    height, width = images.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"cached images are {height}x{width}, smaller than the input size {size}")
    top, left = (height - size) // 2, (width - size) // 2
    crop = images[:, top:top + size, left:left + size].float().div_(255.0)
    mean_t = torch.tensor(mean, device=images.device, dtype=crop.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=crop.dtype).view(1, 3, 1, 1)
    return (crop.unsqueeze(1) - mean_t) / std_t  # [N, 3, S, S] (grey replicated by broadcasting)


class BatchPreparer:
    """Callable ``(batch, step_seed) -> (inputs, targets, indices)`` on ``device``."""

    def __init__(self, device: torch.device, *, size: int, mean, std, augment: Callable | None = None,
                 channels_last: bool = False):
        self.device, self.size, self.mean, self.std = device, size, mean, std
        self.augment, self.channels_last = augment, channels_last

    def __call__(self, batch: Batch, step_seed: int | None = None) -> Batch:
        images, targets, indices = batch
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            if self.augment is not None and step_seed is not None:
                generator = torch.Generator().manual_seed(step_seed)
                images = self.augment(images, generator)
            else:
                images = centre_crop_normalise(images, self.size, self.mean, self.std)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(self.device, non_blocking=True), indices
