"""Batched, device-agnostic equivalent of timm's RandAugment training transform for grey uint8 images.

Reproduces `timm.data.create_transform(input_size, is_training=True, scale, ratio, hflip, vflip=0,
auto_augment='rand-m6-mstd0.5-inc1', interpolation='bicubic', re_prob=0, mean, std)` applied to a grey image
converted to PIL RGB: RandomResizedCropAndInterpolation -> RandomHorizontalFlip -> RandAugment -> ToTensor ->
Normalize (timm/data/transforms_factory.py transforms_imagenet_train). All random draws are made on the CPU from a
torch.Generator into an AugmentPlan; `apply` runs the plan on the images' device with the pixel-exact operations of
gpu_augment_ops, so for a given plan the output equals timm's op for op, bit for bit (tests/test_gpu_augment.py
replays plans through timm's own functions). The draws follow timm's distributions, not its random stream (timm
mixes python random, numpy and torch generators per image). Known differences: PosterizeIncreasing at magnitude
exactly 10 (bits 0) gives black where Pillow 13 raises; 't' (weighted) RandAugment variants are not supported.

    aug = BatchAugment(224, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    x = aug(images_u8.cuda(non_blocking=True), generator)  # [N, H, W] uint8 -> [N, 3, 224, 224] float32
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from engine.train import gpu_augment_colour as colour
from engine.train import gpu_augment_ops as ops
from engine.train.transfer import to_device

LEVEL_DENOM = 10.0  # timm auto_augment._LEVEL_DENOM
# timm auto_augment._RAND_INCREASING_TRANSFORMS and _RAND_TRANSFORMS, in timm's order.
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
)
RAND_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
PIXEL_OPS = {  # timm auto_augment.NAME_TO_OP -> batched op taking (images, argument)
    "AutoContrast": lambda x, _: colour.auto_contrast(x), "Equalize": lambda x, _: colour.equalize(x),
    "Invert": lambda x, _: colour.invert(x), "Posterize": colour.posterize, "PosterizeIncreasing": colour.posterize,
    "Solarize": colour.solarize, "SolarizeIncreasing": colour.solarize, "SolarizeAdd": colour.solarize_add,
    "Color": colour.color, "ColorIncreasing": colour.color, "Contrast": colour.contrast,
    "ContrastIncreasing": colour.contrast,
    "Brightness": colour.brightness, "BrightnessIncreasing": colour.brightness, "Sharpness": colour.sharpness,
    "SharpnessIncreasing": colour.sharpness,
}


@dataclass(frozen=True)
class RandConfig:
    """A parsed 'rand-...' string (timm auto_augment.rand_augment_transform); defaults are timm's."""

    magnitude: float = 10.0  # 'm'
    num_layers: int = 2  # 'n'
    prob: float = 0.5  # 'p'
    magnitude_std: float = 0.0  # 'mstd'; > 100 means uniform in [0, magnitude]
    magnitude_max: float | None = None  # 'mmax'; None means _LEVEL_DENOM
    increasing: bool = False  # 'inc'


def parse_rand_config(config_str: str) -> RandConfig:
    """Parse timm's RandAugment string, e.g. 'rand-m6-mstd0.5-inc1' (weighted 't' variants are not supported)."""
    parts = config_str.split("-")
    if parts[0] != "rand":
        raise ValueError(f"only RandAugment ('rand-...') is supported, got {config_str!r}")
    values: dict = {}
    for part in parts[1:]:
        key, *rest = re.split(r"(\d.*)", part)
        if key.startswith("t"):
            raise ValueError(f"transform set {part!r} is not supported")
        if not rest:
            continue
        val = rest[0]
        if key == "mstd":
            values["magnitude_std"] = math.inf if float(val) > 100 else float(val)
        elif key in ("mmax", "m", "n", "inc"):
            name = {"mmax": "magnitude_max", "m": "magnitude", "n": "num_layers", "inc": "increasing"}[key]
            values[name] = bool(int(val)) if key == "inc" else int(val)
        elif key == "p":
            values["prob"] = float(val)
        else:
            raise ValueError(f"unknown RandAugment config section {part!r}")
    return RandConfig(**values)


def op_argument(name: str, magnitude: torch.Tensor, negate: torch.Tensor, translate_pct: float = 0.45) -> torch.Tensor:
    """timm auto_augment.LEVEL_TO_ARG[name] for a batch of clipped magnitudes (float64) and sign draws (bool)."""
    level = magnitude.double() / LEVEL_DENOM
    sign = torch.where(negate, -1.0, 1.0).double()
    if name == "Rotate":  # _rotate_level_to_arg: [-30, 30]
        return sign * (level * 30.0)
    if name in ("ShearX", "ShearY"):  # _shear_level_to_arg: [-0.3, 0.3]
        return sign * (level * 0.3)
    if name in ("TranslateXRel", "TranslateYRel"):  # _translate_rel_level_to_arg: [-0.45, 0.45] of the size
        return sign * (level * translate_pct)
    if name in ("Posterize", "PosterizeIncreasing"):  # int(level * 4) bits, or 4 - that
        bits = (level * 4).trunc()
        return 4 - bits if name == "PosterizeIncreasing" else bits
    if name in ("Solarize", "SolarizeIncreasing"):  # min(256, int(level * 256)), or 256 - that
        thresh = (level * 256).trunc().clamp(max=256)
        return 256 - thresh if name == "SolarizeIncreasing" else thresh
    if name == "SolarizeAdd":  # _solarize_add_level_to_arg: min(128, int(level * 110))
        return (level * 110).trunc().clamp(max=128)
    if name.endswith("Increasing"):  # _enhance_increasing_level_to_arg: max(0.1, 1 +- level * 0.9)
        return (1.0 + sign * (level * 0.9)).clamp(min=0.1)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):  # _enhance_level_to_arg: [0.1, 1.9]
        return level * 1.8 + 0.1
    return torch.zeros_like(level)  # AutoContrast, Equalize, Invert take no argument


def affine_matrix(name: str, arg: torch.Tensor, size: int) -> torch.Tensor:
    """PIL affine matrices [B, 6] of timm's rotate / shear_x / shear_y / translate_{x,y}_rel for square images."""
    if name == "Rotate":
        return ops.rotate_matrix(arg.tolist(), size, size)
    one, zero = torch.ones_like(arg), torch.zeros_like(arg)
    rows = {
        "ShearX": (one, arg, zero, zero, one, zero),
        "ShearY": (one, zero, zero, arg, one, zero),
        "TranslateXRel": (one, zero, arg * size, zero, one, zero),  # pixels = pct * img.size[0]
        "TranslateYRel": (one, zero, zero, zero, one, arg * size),
    }[name]
    return torch.stack(rows, dim=1)


@dataclass(frozen=True)
class AugmentPlan:
    """All random draws for a batch of N images with L RandAugment layers (CPU tensors, whatever the device)."""

    source_size: int
    crop: torch.Tensor  # [N, 4] int64: top, left, height, width (RandomResizedCropAndInterpolation.get_params)
    crop_bicubic: torch.Tensor  # [N] bool: bicubic (else bilinear) resize of the crop
    flip: torch.Tensor  # [N] bool: horizontal flip
    op: torch.Tensor  # [N, L] int64: index into BatchAugment.op_names (RandAugment: choice with replacement)
    applied: torch.Tensor  # [N, L] bool: the op passed its probability test
    magnitude: torch.Tensor  # [N, L] float64: sampled and clipped magnitude
    negate: torch.Tensor  # [N, L] bool: _randomly_negate outcome
    op_bicubic: torch.Tensor  # [N, L] bool: bicubic (else bilinear) resampling of geometric ops


def _fallback_crop(size: int, ratio) -> tuple[int, int]:
    """get_params' fallback (height, width) for a square image, whose aspect ratio is 1."""
    if 1 < min(ratio):
        return round(size / min(ratio)), size
    if 1 > max(ratio):
        return size, round(size * max(ratio))
    return size, size


def draw_crop(n: int, size: int, scale, ratio, generator: torch.Generator) -> torch.Tensor:
    """timm RandomResizedCropAndInterpolation.get_params for n square images: 10 attempts, then a central crop."""
    area = size * size
    target_area = (scale[0] + (scale[1] - scale[0]) * torch.rand(n, 10, generator=generator, dtype=torch.float64))
    target_area = target_area * area
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    u = torch.rand(n, 10, generator=generator, dtype=torch.float64)
    aspect = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u)
    w = torch.sqrt(target_area * aspect).round().long()  # int(round(.)): half to even, as Python
    h = torch.sqrt(target_area / aspect).round().long()
    ok = (w <= size) & (h <= size)
    first = ok.long().argmax(1, keepdim=True)
    found = ok.any(1)
    fb_h, fb_w = _fallback_crop(size, ratio)
    w = torch.where(found, w.gather(1, first)[:, 0], fb_w)
    h = torch.where(found, h.gather(1, first)[:, 0], fb_h)
    pos = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.where(found, (pos[:, 0] * (size - h + 1)).floor().long(), (size - h) // 2)  # random.randint
    left = torch.where(found, (pos[:, 1] * (size - w + 1)).floor().long(), (size - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


class BatchAugment:
    """timm's training transform (RRC -> flip -> RandAugment -> ToTensor -> Normalize) on batches of grey images.

    Args:
        input_size: output side S.
        scale, ratio: RandomResizedCropAndInterpolation ranges.
        hflip: horizontal flip probability.
        randaugment: timm RandAugment string, or None for no RandAugment.
        mean, std: Normalize statistics (3 values); the geometric ops fill with round(255 * mean) as timm's img_mean.
        interpolation: 'bicubic', 'bilinear' or 'random' (per-call choice of the two), for the crop resize and,
            as timm's aa_params['interpolation'], for the geometric RandAugment ops.
    """

    def __init__(self, input_size: int, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5,
                 randaugment: str | None = "rand-m6-mstd0.5-inc1", mean, std, interpolation: str = "bicubic"):
        if interpolation not in ("bicubic", "bilinear", "random"):
            raise ValueError(f"interpolation must be bicubic, bilinear or random, got {interpolation!r}")
        self.input_size = input_size
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip
        self.interpolation = interpolation
        self.config = parse_rand_config(randaugment) if randaugment else RandConfig(num_layers=0)
        self.op_names = RAND_INCREASING_TRANSFORMS if self.config.increasing else RAND_TRANSFORMS
        self.fill = tuple(min(255, round(255 * m)) for m in mean)  # transforms_factory: aa_params['img_mean']
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._device_constants: dict[torch.device, dict[str, torch.Tensor]] = {}
        self._geometric_ids = torch.tensor([k for k, name in enumerate(self.op_names) if name in GEOMETRIC])

    def _bicubic(self, shape, generator: torch.Generator) -> torch.Tensor:
        if self.interpolation == "random":  # random.choice(_RANDOM_INTERPOLATION) = (BILINEAR, BICUBIC)
            return torch.rand(shape, generator=generator, dtype=torch.float64) >= 0.5
        return torch.full(shape, self.interpolation == "bicubic")

    def _magnitude(self, shape, generator: torch.Generator) -> torch.Tensor:
        """timm AugmentOp.__call__: gauss(m, mstd) (uniform(0, m) if mstd is inf), clipped to [0, mmax or 10]."""
        cfg = self.config
        if cfg.magnitude_std == math.inf:
            m = cfg.magnitude * torch.rand(shape, generator=generator, dtype=torch.float64)
        elif cfg.magnitude_std > 0:
            m = cfg.magnitude + cfg.magnitude_std * torch.randn(shape, generator=generator, dtype=torch.float64)
        else:
            m = torch.full(shape, float(cfg.magnitude), dtype=torch.float64)
        return m.clamp(0.0, cfg.magnitude_max or LEVEL_DENOM)

    def draw(self, n: int, source_size: int, generator: torch.Generator) -> AugmentPlan:
        """Draw every random choice for n images of side source_size on the CPU."""
        layers = (n, self.config.num_layers)
        crop = draw_crop(n, source_size, self.scale, self.ratio, generator)
        crop_bicubic = self._bicubic((n,), generator)
        flip = torch.rand(n, generator=generator) < self.hflip  # RandomHorizontalFlip: torch.rand(1) < p
        op = torch.randint(len(self.op_names), layers, generator=generator)  # np.random.choice, replace=True
        applied = ~(torch.rand(layers, generator=generator, dtype=torch.float64) > self.config.prob)
        magnitude = self._magnitude(layers, generator)
        negate = torch.rand(layers, generator=generator, dtype=torch.float64) > 0.5  # _randomly_negate
        op_bicubic = self._bicubic(layers, generator)
        return AugmentPlan(source_size, crop, crop_bicubic, flip, op, applied, magnitude, negate, op_bicubic)

    def _constants(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Fill colour and ToTensor / Normalize constants on device, made once (a tensor divisor: CUDA turns a
        Python-number divisor into a reciprocal multiply, one ulp away from torchvision's CPU division)."""
        if device not in self._device_constants:
            cpu = {"fill": torch.tensor(self.fill, dtype=torch.float64), "scale": torch.tensor([255.0]).view(1, 1, 1),
                   "mean": self.mean, "std": self.std}
            self._device_constants[device] = {k: to_device(v, device) for k, v in cpu.items()}
        return self._device_constants[device]

    def _apply_layer(self, x: torch.Tensor, plan: AugmentPlan, layer: int) -> torch.Tensor:
        """One RandAugment layer. Each image gets at most one op, so op groups are independent; the geometric ops of
        the layer run together (_geometric)."""
        device = x.device
        geometric = []  # (indices, matrices, bicubic) per geometric op
        for k, name in enumerate(self.op_names):
            chosen = (plan.applied[:, layer] & (plan.op[:, layer] == k)).nonzero()[:, 0]
            if chosen.numel() == 0:
                continue
            arg = op_argument(name, plan.magnitude[chosen, layer], plan.negate[chosen, layer])
            if name in GEOMETRIC:
                geometric.append((chosen, affine_matrix(name, arg, x.shape[-1]), plan.op_bicubic[chosen, layer]))
            else:
                idx = to_device(chosen, device)
                x[idx] = PIXEL_OPS[name](x[idx], to_device(arg, device))
        if geometric:
            self._geometric(x, plan, layer, *(torch.cat(parts) for parts in zip(*geometric, strict=True)))
        return x

    def _geometric(self, x: torch.Tensor, plan: AugmentPlan, layer: int, chosen: torch.Tensor, matrix: torch.Tensor,
                   bicubic: torch.Tensor) -> None:
        """All geometric ops of a layer in place, one affine call per (filter, grey) group. An image is still grey
        (3 equal channels) until its first geometric op: colour ops keep equal channels equal."""
        earlier = plan.applied[:, :layer] & torch.isin(plan.op[:, :layer], self._geometric_ids)
        grey = ~earlier.any(1)[chosen]
        fill = self._constants(x.device)["fill"]
        for use_bicubic in (True, False):
            for is_grey in (True, False):
                part = (bicubic == use_bicubic) & (grey == is_grey)
                if bool(part.any()):
                    idx = to_device(chosen[part], x.device)
                    src = x[idx, :1] if is_grey else x[idx]
                    x[idx] = ops.affine(src, to_device(matrix[part], x.device), fill, use_bicubic)

    def apply(self, images_u8: torch.Tensor, plan: AugmentPlan) -> torch.Tensor:
        """images [N, H, W] uint8 (grey, H = W = plan.source_size) -> float32 [N, 3, S, S], normalised."""
        side = plan.source_size
        if images_u8.dtype != torch.uint8 or images_u8.dim() != 3 or tuple(images_u8.shape[1:]) != (side, side):
            raise ValueError(f"expected uint8 images [N, {side}, {side}], got {images_u8.dtype} "
                             f"{tuple(images_u8.shape)}")
        x = ops.resized_crop(images_u8, plan.crop, self.input_size, plan.flip, plan.crop_bicubic)  # [N, S, S]
        x = x[:, None].expand(-1, 3, -1, -1).contiguous()  # PIL convert('RGB') of a grey image
        for layer in range(plan.op.shape[1]):
            x = self._apply_layer(x, plan, layer)
        c = self._constants(x.device)
        return x.to(torch.float32).div(c["scale"]).sub(c["mean"]).div(c["std"])  # ToTensor, then Normalize

    def __call__(self, images_u8: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        plan = self.draw(images_u8.shape[0], images_u8.shape[-1], generator)
        return self.apply(images_u8, plan)
