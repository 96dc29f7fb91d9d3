"""Turn a loader batch into model input on the device: centre crop + normalisation for evaluation, the batched
augmentation (engine/train/gpu_augment.py) for training, or just the normalisation when the loader already
cropped and augmented each image (timm's transform, uint8 [N, 3, S, S])."""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.train.transfer import to_device

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def centre_crop_normalise(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W] grey -> float [N, 3, size, size]: the centre crop of the cached square, /255, normalised by
    ``mean`` and ``std`` [1, 3, 1, 1] (float32, on the images' device: made once, as a per-batch host-to-device
    copy of them would make the host wait for the device).

    Equal to timm's eval transform (resize to the cache size, centre crop, ToTensor, Normalize) on a cache whose
    side is ``size / crop_pct``: Medical MAE's resize-256 + centre-crop-224 on a 256 px cache.
    """
    height, width = images.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"cached images are {height}x{width}, smaller than the input size {size}")
    top, left = (height - size) // 2, (width - size) // 2
    crop = images[:, top:top + size, left:left + size].float().div_(255.0)
    return (crop.unsqueeze(1) - mean) / std  # [N, 3, S, S] (grey replicated by broadcasting)


def normalisation_table(mean, std) -> torch.Tensor:
    """float32 [3, 256]: torchvision's ToTensor (/255) then Normalize of every uint8 value of each channel.

    Computed on the CPU in their exact arithmetic and looked up on the device, so the model input is bit-identical
    to normalising in the loader worker on any device. Doing the arithmetic on a GPU would not be: CUDA divides by
    a Python scalar as a multiplication by its reciprocal, which differs in the last bit for 126 of the 256 values
    of x / 255. (On a CPU the lookup costs ~2x the arithmetic, ~0.3 s per 128 x 224 px batch on one core: small
    next to a CPU training step.)
    """
    scaled = torch.arange(256, dtype=torch.uint8).float().div(255).expand(3, 256)  # ToTensor
    mean_t, std_t = (torch.tensor(v, dtype=torch.float32).view(3, 1) for v in (mean, std))
    return (scaled - mean_t) / std_t  # Normalize: sub_(mean).div_(std)


def normalise_rgb(images: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, S, S] -> float [N, 3, S, S] through ``table`` [3, 256] (on the images' device)."""
    offsets = torch.arange(0, 3 * 256, 256, dtype=torch.int32, device=images.device).view(1, 3, 1, 1)
    return table.view(-1)[images.int().add_(offsets)]  # one gather; int32 indices: half the bytes of int64


class BatchPreparer:
    """Callable ``(batch, step_seed) -> (inputs, targets, indices)`` on ``device``."""

    def __init__(self, device: torch.device, *, size: int, mean, std, augment: Callable | None = None,
                 channels_last: bool = False):
        self.device, self.size = device, size
        self.augment, self.channels_last = augment, channels_last
        self.table = normalisation_table(mean, std).to(device)
        self.mean, self.std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1).to(device) for v in (mean, std))

    def __call__(self, batch: Batch, step_seed: int | None = None) -> Batch:
        images, targets, indices = batch
        images = to_device(images, self.device)  # pinned by the loader on CUDA, or already on the device
        if images.dtype == torch.uint8:
            if images.ndim == 4:  # the loader's transform cropped and augmented each image: normalise only
                images = normalise_rgb(images, self.table)
            elif self.augment is not None and step_seed is not None:
                generator = torch.Generator().manual_seed(step_seed)
                images = self.augment(images, generator)
            else:
                images = centre_crop_normalise(images, self.size, self.mean, self.std)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, to_device(targets, self.device), indices
