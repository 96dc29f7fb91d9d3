"""Batched torch re-implementations of the PIL point and colour operations of timm's RandAugment, op for op.

uint8 images [B, C, H, W] on any device plus one argument per image; rounding exactly where PIL rounds (bit-exact
against Pillow 13.0.0 and 12.3.0, tests/test_gpu_augment.py). Sources (Pillow 13):
  blend         Pillow src/libImaging/Blend.c (ImagingBlend, float32 alpha, truncation), used by ImageEnhance.*
  smooth        Pillow src/libImaging/Filter.c (ImagingFilter3x3, float32 kernel k/13, border rows/columns kept)
  point ops     Pillow src/PIL/ImageOps.py (autocontrast, equalize, invert, posterize, solarize)
Geometry (resize, affine) lives in engine/train/gpu_augment_ops.py.
"""

from __future__ import annotations

import torch

from engine.train.transfer import to_device


# ------------------------------------------------------------------------------------------------ point ops
def auto_contrast(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast(cutoff=0): per channel, lut[i] = int(i * 255/(hi-lo) - lo * scale), identity if flat."""
    lo = x.amin(dim=(2, 3), keepdim=True).double()
    hi = x.amax(dim=(2, 3), keepdim=True).double()
    scale = torch.full_like(lo, 255.0) / (hi - lo).clamp(min=1)  # a true division, as Python's 255.0 / (hi - lo)
    offset = -lo * scale
    stretched = (x.double() * scale + offset).trunc().clamp(0, 255)
    return torch.where(hi > lo, stretched, x.double()).to(torch.uint8)


def _histogram(x: torch.Tensor) -> torch.Tensor:
    """Per image and channel histogram [B, C, 256] (int64). A scatter-add into fixed bins, not torch.bincount: CUDA's
    bincount reads the input's min and max back to the host to size its output, which stalls the training queue."""
    b, c = x.shape[:2]
    counts = torch.zeros(b, c, 256, dtype=torch.int64, device=x.device)
    return counts.scatter_add_(2, x.reshape(b, c, -1).long(), torch.ones(1, dtype=torch.int64, device=x.device)
                               .expand(b, c, x.shape[2] * x.shape[3]))


def _apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] uint8, lut [B, C, 256] -> lut applied per image and channel."""
    b, c, h, w = x.shape
    return torch.gather(lut.clamp(0, 255).to(torch.uint8), 2, x.reshape(b, c, -1).long()).view(b, c, h, w)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.equalize: step = (n - n_last_bin) // 255, lut[i] = (step // 2 + sum(h[:i])) // step, per channel."""
    hist = _histogram(x)
    nonzero = hist > 0
    last = 255 - nonzero.flip(-1).long().argmax(-1, keepdim=True)  # highest occupied bin
    step = (hist.sum(-1, keepdim=True) - hist.gather(-1, last)) // 255
    before = hist.cumsum(-1) - hist  # sum of h[:i]
    lut = (step // 2 + before) // step.clamp(min=1)
    identity = torch.arange(256, device=x.device).expand_as(hist)
    keep = (nonzero.sum(-1, keepdim=True) <= 1) | (step == 0)
    return _apply_lut(x, torch.where(keep, identity, lut))


def invert(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.invert."""
    return 255 - x


def _per_image(arg: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One argument per image [B] -> [B, 1, 1, 1] on x's device."""
    return to_device(arg, x.device).view(-1, 1, 1, 1)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """ImageOps.posterize: keep the top `bits` bits (timm's posterize returns the image for bits >= 8).

    bits = 0 (PosterizeIncreasing at magnitude 10) gives black, as Pillow < 13; Pillow 13 raises ValueError there.
    """
    bits = _per_image(bits.long(), x)
    mask = (~((1 << (8 - bits.clamp(max=8))) - 1)) & 255
    return torch.where(bits >= 8, x, x & mask.to(torch.uint8))


def solarize(x: torch.Tensor, thresh: torch.Tensor) -> torch.Tensor:
    """ImageOps.solarize: i if i < thresh else 255 - i."""
    return torch.where(x.long() < _per_image(thresh.long(), x), x, 255 - x)


def solarize_add(x: torch.Tensor, add: torch.Tensor, thresh: int = 128) -> torch.Tensor:
    """timm auto_augment.solarize_add: min(255, i + add) if i < thresh else i."""
    added = (x.long() + _per_image(add.long(), x)).clamp(max=255)
    return torch.where(x < thresh, added, x.long()).to(torch.uint8)


# -------------------------------------------------------------------------------------------------- enhance
def blend(degenerate: torch.Tensor, image: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Image.blend(degenerate, image, factor): trunc(in1 + alpha * (in2 - in1)) in float32, clamped (Blend.c)."""
    alpha = _per_image(factor.to(torch.float32), image)
    base = degenerate.to(torch.float32)
    step = alpha * (image.to(torch.float32) - base)
    return (base + step).clamp(0, 255).trunc().to(torch.uint8)


def grey(x: torch.Tensor) -> torch.Tensor:
    """RGB -> L as Pillow's Convert.c rgb2l: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16; [B, 1, H, W] int64."""
    v = x.long()
    return (v[:, 0:1] * 19595 + v[:, 1:2] * 38470 + v[:, 2:3] * 7471 + 0x8000) >> 16


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Color: blend with the image converted to L and back to RGB."""
    return blend(grey(x).expand_as(x), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Contrast: blend with a constant int(mean(L) + 0.5), here (2 sum + n) // (2 n) in integers.

    Equal to Python's float expression: sum / n + 0.5 is either an integer or at least 1 / (2 n) away from one.
    """
    lum = grey(x)
    count = lum[0].numel()
    mean = (2 * lum.sum(dim=(1, 2, 3), keepdim=True) + count) // (2 * count)
    return blend(mean.expand_as(x), x, factor)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Brightness: blend with black."""
    return blend(torch.zeros_like(x), x, factor)


def smooth(x: torch.Tensor) -> torch.Tensor:
    """ImageFilter.SMOOTH (3x3 kernel 1,1,1 / 1,5,1 / 1,1,1 over 13), float32 as Filter.c, border kept."""
    f = x.to(torch.float32)
    k1 = torch.tensor(1.0, dtype=torch.float32) / 13
    k5 = torch.tensor(5.0, dtype=torch.float32) / 13

    def row(r: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:  # KERNEL1x3, left to right
        return (r[..., :-2] * k1 + r[..., 1:-1] * centre) + r[..., 2:] * k1

    ss = torch.full_like(f[..., 1:-1, 1:-1], 0.5)  # Filter.c: offset + 0.5 for rounding
    ss = ss + row(f[..., 2:, :], k1)
    ss = ss + row(f[..., 1:-1, :], k5)
    ss = ss + row(f[..., :-2, :], k1)
    out = x.clone()
    out[..., 1:-1, 1:-1] = ss.clamp(0, 255).trunc().to(torch.uint8)
    return out


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """ImageEnhance.Sharpness: blend with the SMOOTH-filtered image."""
    return blend(smooth(x), x, factor)
