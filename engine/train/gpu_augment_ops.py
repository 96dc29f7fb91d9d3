"""Batched torch re-implementations of the PIL geometry behind timm's training transform (resize, affine), op for op.

Each function takes uint8 images [B, C, H, W] (or [N, H, W] for the crop) on any device plus one argument per image,
and returns uint8 images, rounding exactly where PIL rounds (bit-exact against Pillow 13.0.0 and 12.3.0, see
tests/test_gpu_augment.py). Sources (Pillow 13, timm 1.0.31):
  resize        Pillow src/libImaging/Resample.c (precompute_coeffs, normalize_coeffs_8bpc, 22-bit fixed point)
  affine        Pillow src/libImaging/Geometry.c (affine_transform, bilinear_filter32RGB, bicubic_filter32RGB)
Point and colour ops (autocontrast ... sharpness) are in engine/train/gpu_augment_colour.py.
"""

from __future__ import annotations

import math

import PIL
import torch

from engine.train.transfer import to_device

PILLOW_VERSION = tuple(int(v) for v in PIL.__version__.split(".")[:2])
PRECISION_BITS = 22  # Resample.c: 32 - 8 - 2
BICUBIC_A = -0.5  # Resample.c bicubic_filter (the affine transform's cubic in Geometry.c uses a = -1)


# ----------------------------------------------------------------------------------------------------- resize
def _resample_filter(x: torch.Tensor, bicubic: torch.Tensor) -> torch.Tensor:
    """Resample.c bicubic_filter (a = -0.5, support 2) or bilinear_filter (support 1), same operation order."""
    x = x.abs()
    a = BICUBIC_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    cubic = torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))
    linear = torch.where(x < 1.0, 1.0 - x, torch.zeros_like(x))
    return torch.where(bicubic[:, None], cubic, linear)


def resample_taps(start: torch.Tensor, length: torch.Tensor, src_len: int, out_len: int, bicubic: torch.Tensor,
                  ksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-point taps of PIL's resize of the crop [start, start + length) to out_len: (columns, weights) [N, S, K].

    Follows Resample.c precompute_coeffs (support scaled by the downscale factor, bounds rounded, weights normalised
    to sum 1) and normalize_coeffs_8bpc (round half away from zero to 22 bits). Unused taps point past src_len.
    Runs on the inputs' device; ksize (>= 2 ceil(max support) + 1) comes from the caller, so nothing syncs.
    """
    n, dev = start.shape[0], start.device
    scale = length.double() / out_len  # [N]
    filterscale = scale.clamp(min=1.0)
    support = torch.where(bicubic, 2.0, 1.0).double() * filterscale
    center = (torch.arange(out_len, dtype=torch.float64, device=dev)[None] + 0.5) * scale[:, None]  # [N, out]
    xmin = (center - support[:, None] + 0.5).trunc().clamp(min=0).long()
    xmax = torch.minimum((center + support[:, None] + 0.5).trunc().long(), length[:, None])
    taps = xmin[..., None] + torch.arange(ksize, device=dev)  # [N, out, K], crop-local input index
    valid = taps < xmax[..., None]
    ss = torch.ones_like(filterscale) / filterscale  # not 1.0 / t: Tensor.__rtruediv__ is reciprocal() * 1.0
    k = _resample_filter(((taps.double() - center[..., None]) + 0.5).flatten(1) * ss[:, None], bicubic)
    k = torch.where(valid, k.view(n, out_len, ksize), 0.0)
    ww = k[..., 0]
    for t in range(1, ksize):  # sequential sum, as the C loop
        ww = ww + k[..., t]
    k = torch.where(ww[..., None] != 0, k / ww[..., None], k)
    fixed = torch.where(k < 0, -0.5 + k * (1 << PRECISION_BITS), 0.5 + k * (1 << PRECISION_BITS)).trunc()
    cols = torch.where(valid, start[:, None, None] + taps, src_len + torch.arange(ksize, device=dev))
    return cols, torch.where(valid, fixed, 0.0)


def _dense(cols: torch.Tensor, weights: torch.Tensor, src_len: int) -> torch.Tensor:
    """Compact taps [N, S, K] -> dense weight matrix [N, S, src_len] on the taps' device."""
    n, out_len, ksize = cols.shape
    dense = torch.zeros(n, out_len, src_len + ksize, dtype=torch.float64, device=cols.device)
    return dense.scatter_(2, cols, weights)[..., :src_len]


def _fixed_point_to_u8(acc: torch.Tensor) -> torch.Tensor:
    """Resample.c clip8: (2^21 + sum) >> 22, clamped to [0, 255]; exact because the float64 sums are integers."""
    return torch.floor((acc + (1 << (PRECISION_BITS - 1))) / (1 << PRECISION_BITS)).clamp(0, 255)


def vertical_first(height: torch.Tensor, width: torch.Tensor, out_size: int) -> torch.Tensor:
    """Pass order of Pillow >= 13 (PR #9549): vertical first if the height shrinks much more than the width.

    Measured on Pillow 13.0.0 (square output S): vertical first iff h > S and h - S > 2 (w - S). Pillow < 13 always
    resizes horizontally first. The order matters because each pass rounds and clips to uint8.
    """
    if PILLOW_VERSION < (13, 0):
        return torch.zeros_like(height, dtype=torch.bool)
    return (height > out_size) & ((height - out_size) > 2 * (width - out_size))


def _two_pass(src: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor, vertical: bool) -> torch.Tensor:
    """src [n, H, W] float64, wx [n, S, W], wy [n, S, H] -> [n, S, S], a uint8 rounding after each pass."""
    if vertical:
        cols = _fixed_point_to_u8(torch.bmm(wy, src))  # [n, S, W]
        return _fixed_point_to_u8(torch.bmm(cols, wx.transpose(1, 2)))
    rows = _fixed_point_to_u8(torch.bmm(src, wx.transpose(1, 2)))  # [n, H, S]
    return _fixed_point_to_u8(torch.bmm(wy, rows))


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, out_size: int, flip: torch.Tensor,
                 bicubic: torch.Tensor) -> torch.Tensor:
    """torchvision F.resized_crop on PIL (crop, then Image.resize) and an optional horizontal flip, batched.

    images [N, H, W] uint8 on any device; boxes [N, 4] (top, left, height, width), flip [N], bicubic [N] on the CPU;
    returns [N, S, S] uint8. PIL resizes in two separable passes, each rounded to uint8 (Resample.c).
    """
    n, height, width = images.shape
    device = images.device
    order = vertical_first(boxes[:, 2], boxes[:, 3], out_size)
    perm = torch.argsort(order.long(), stable=True)  # horizontal-first images, then vertical-first ones
    n_horizontal = int((~order).sum())
    ksize = int(math.ceil(2.0 * max(1.0, float(boxes[:, 2:].max()) / out_size))) * 2 + 1
    perm_d, boxes_d, flip_d, bicubic_d = (to_device(t[perm], device) for t in (torch.arange(n), boxes, flip, bicubic))
    cx, kx = resample_taps(boxes_d[:, 1], boxes_d[:, 3], width, out_size, bicubic_d, ksize)
    cx, kx = (torch.where(flip_d[:, None, None], t.flip(1), t) for t in (cx, kx))  # hflip == mirrored columns
    cy, ky = resample_taps(boxes_d[:, 0], boxes_d[:, 2], height, out_size, bicubic_d, ksize)
    wx, wy = _dense(cx, kx, width), _dense(cy, ky, height)  # [N, S, W], [N, S, H]
    src = images[perm_d].to(torch.float64)
    parts = [_two_pass(src[part], wx[part], wy[part], vertical)
             for part, vertical in ((slice(0, n_horizontal), False), (slice(n_horizontal, n), True))
             if part.stop > part.start]
    out = torch.empty(n, out_size, out_size, dtype=torch.uint8, device=device)
    out[perm_d] = torch.cat(parts).to(torch.uint8)
    return out


# ----------------------------------------------------------------------------------------------------- affine
def _horner(p1, p2, p3, p4, d: torch.Tensor) -> torch.Tensor:
    """p1 + d * (p2 + d * (p3 + d * p4)) in float64, in place (IEEE + and * commute, so the bits are Geometry.c's)."""
    return p4.to(torch.float64).mul_(d).add_(p3).mul_(d).add_(p2).mul_(d).add_(p1)


def _cubic_int(v1, v2, v3, v4, d: torch.Tensor) -> torch.Tensor:
    """Geometry.c BICUBIC (a = -1) on integer pixels: the p terms are exact in int16."""
    return _horner(v2, v3 - v1, 2 * (v1 - v2) + v3 - v4, v2 - v1 - v3 + v4, d)


def _cubic_float(v1, v2, v3, v4, d: torch.Tensor) -> torch.Tensor:
    """Geometry.c BICUBIC on float64 row results, keeping the macro's operation order."""
    return _horner(v2, v3 - v1, 2 * (v1 - v2) + v3 - v4, ((v2 - v1) - v3) + v4, d)


def _interpolate(flat, x0, y0, dx, dy, shape, bicubic: bool) -> torch.Tensor:
    """bicubic_filter32RGB / bilinear_filter32RGB (Geometry.c) after the bounds test: the 4 x 4 (2 x 2) neighbours,
    clamped to the image, in one gather; rows interpolated first, then the column, then truncated to [0, 255].

    flat [B, C, H*W] uint8; x0, y0 [B, P] int64 (floor of the sample position - 0.5); dx, dy [B, 1, P] float64.
    """
    (h, w), (b, c) = shape, flat.shape[:2]
    taps = 4 if bicubic else 2
    offsets = torch.arange(taps, device=flat.device) - (1 if bicubic else 0)
    cols = (x0[..., None] + offsets).clamp(0, w - 1)  # [B, P, T]
    rows = (y0[..., None] + offsets).clamp(0, h - 1)
    index = (rows[..., :, None] * w + cols[..., None, :]).flatten(1)  # [B, P * T * T], row-major neighbours
    v = torch.gather(flat, 2, index[:, None].expand(-1, c, -1)).view(b, c, -1, taps, taps).to(torch.int16)
    dx = dx[..., None]  # [B, 1, P, 1]: one horizontal weight for all rows
    if bicubic:
        lines = _cubic_int(*v.unbind(-1), dx)  # [B, C, P, 4] rows
        return _cubic_float(*lines.unbind(-1), dy).clamp_(0, 255).floor_()
    lines = (v[..., 1] - v[..., 0]).to(torch.float64).mul_(dx).add_(v[..., 0])  # BILINEAR: a + (b - a) * d
    return (lines[..., 1] - lines[..., 0]).mul_(dy).add_(lines[..., 0]).floor_()


def affine(x: torch.Tensor, matrix: torch.Tensor, fill: torch.Tensor, bicubic: bool) -> torch.Tensor:
    """PIL Image.transform(size, AFFINE, matrix, resample, fillcolor=fill) on a batch, output size = input size.

    matrix [B, 6] float64 (a, b, c, d, e, f): output pixel centre (x + .5, y + .5) samples input (a x + b y + c,
    d x + e y + f) (Geometry.c affine_transform). Samples outside [0, W) x [0, H) keep the fill colour [C].
    x may have 1 channel standing for C equal ones (a grey image in RGB): inside samples never read the fill, so
    the result is the same as on C channels, at a third of the work.
    """
    b, c, h, w = x.shape
    m = matrix.to(device=x.device, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float64) + 0.5,
                            torch.arange(w, device=x.device, dtype=torch.float64) + 0.5, indexing="ij")
    xs, ys = xs.reshape(1, -1), ys.reshape(1, -1)
    xin = m[:, 0:1] * xs + m[:, 1:2] * ys + m[:, 2:3]  # [B, P]
    yin = m[:, 3:4] * xs + m[:, 4:5] * ys + m[:, 5:6]
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    xin, yin = xin - 0.5, yin - 0.5
    x0, y0 = xin.floor(), yin.floor()
    dx, dy = (xin - x0)[:, None], (yin - y0)[:, None]
    v = _interpolate(x.reshape(b, c, h * w), x0.long(), y0.long(), dx, dy, (h, w), bicubic)
    fill = fill.to(device=x.device, dtype=torch.float64)[None, :, None]
    return torch.where(inside[:, None], v, fill).to(torch.uint8).view(b, fill.shape[1], h, w)


def rotate_matrix(degrees: list[float], width: int, height: int) -> torch.Tensor:
    """Image.rotate's inverse matrix about the centre (Pillow Image.py rotate, expand=False), in Python doubles."""
    rows = []
    for deg in degrees:
        angle = -math.radians(deg % 360.0)
        a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
        d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
        cx, cy = width / 2, height / 2
        rows.append([a, b, a * -cx + b * -cy + 0.0 + cx, d, e, d * -cx + e * -cy + 0.0 + cy])
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 6)
