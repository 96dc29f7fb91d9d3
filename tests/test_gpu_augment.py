"""BatchAugment against timm's PIL training transform: every op pixel for pixel, the whole plan, the distributions.

The reference is timm's own code: auto_augment.NAME_TO_OP / LEVEL_TO_ARG on PIL RGB images,
RandomResizedCropAndInterpolation, torchvision's hflip / to_tensor / normalize. Equality is exact (0 grey levels):
each torch op rounds where Pillow 13 rounds, so any drift in either side shows up as a failure here.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm_data = pytest.importorskip("timm.data")

import torchvision.transforms.functional as TF  # noqa: E402
from PIL import Image  # noqa: E402
from timm.data import auto_augment as aa  # noqa: E402
from timm.data.transforms import RandomResizedCropAndInterpolation  # noqa: E402
from torchvision.transforms import InterpolationMode  # noqa: E402

from engine.train import gpu_augment_colour as colour  # noqa: E402
from engine.train import gpu_augment_ops as ops  # noqa: E402
from engine.train.gpu_augment import (  # noqa: E402
    GEOMETRIC,
    RAND_INCREASING_TRANSFORMS,
    BatchAugment,
    RandConfig,
    affine_matrix,
    draw_crop,
    op_argument,
    parse_rand_config,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FILL = (124, 116, 104)  # timm img_mean for the ImageNet mean
RESAMPLE = {True: Image.BICUBIC, False: Image.BILINEAR}


def grey_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth radiograph-like fields plus Gaussian noise, uint8 [n, size, size]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0.5, 4.0, 3)
        field = 128 + 90 * np.sin(3 * a * xx + 2 * b * yy) * np.cos(2 * c * yy) + rng.normal(0, 12, (size, size))
        out.append(np.clip(field, 0, 255).astype(np.uint8))
    return np.stack(out)


def to_batch(pils: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(p) for p in pils])).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def colour_batch() -> tuple[list[Image.Image], torch.Tensor]:
    """RGB images whose channels differ (timm rotate with the RGB fill), as PIL images and as [B, 3, H, W] uint8."""
    pils = [aa.rotate(Image.fromarray(a).convert("RGB"), 17.3, fillcolor=FILL, resample=Image.BICUBIC)
            for a in grey_images(6, 64)]
    return pils, to_batch(pils)


def assert_same(mine: torch.Tensor, ref: torch.Tensor) -> None:
    diff = (mine.long() - ref.long()).abs()
    assert mine.shape == ref.shape
    assert diff.max().item() == 0, f"max {diff.max().item()}, {(diff > 0).sum().item()} pixels differ"


PIXEL_CASES = [
    ("auto_contrast", None), ("equalize", None), ("invert", None),
    *[("posterize", b) for b in (1, 2, 3, 4)],
    *[("solarize", t) for t in (0, 77, 128, 256)],
    *[("solarize_add", a) for a in (0, 66, 110)],
    *[(name, f) for name in ("color", "contrast", "brightness", "sharpness") for f in (0.1, 0.46, 1.0, 1.54, 1.9)],
]


@pytest.mark.parametrize(("name", "arg"), PIXEL_CASES)
def test_pixel_op_matches_timm(colour_batch, name, arg):
    pils, batch = colour_batch
    ref = to_batch([getattr(aa, name)(p, *(() if arg is None else (arg,))) for p in pils])
    fn = getattr(colour, name)
    args = () if arg is None else (torch.full((len(pils),), arg, dtype=torch.float64),)
    assert_same(fn(batch, *args), ref)


GEOMETRIC_CASES = [("rotate", "Rotate", d) for d in (-29.9, -7.25, 0.0, 13.0, 24.6)] + [
    (fn, name, v) for fn, name in (("shear_x", "ShearX"), ("shear_y", "ShearY"))
    for v in (-0.29, -0.05, 0.17, 0.3)] + [
    (fn, name, v) for fn, name in (("translate_x_rel", "TranslateXRel"), ("translate_y_rel", "TranslateYRel"))
    for v in (-0.45, -0.13, 0.25, 0.4)]


@pytest.mark.parametrize("bicubic", [True, False])
@pytest.mark.parametrize(("timm_fn", "name", "arg"), GEOMETRIC_CASES)
def test_geometric_op_matches_timm(colour_batch, timm_fn, name, arg, bicubic):
    pils, batch = colour_batch
    ref = to_batch([getattr(aa, timm_fn)(p, arg, fillcolor=FILL, resample=RESAMPLE[bicubic]) for p in pils])
    matrix = affine_matrix(name, torch.full((len(pils),), arg, dtype=torch.float64), batch.shape[-1])
    assert_same(ops.affine(batch, matrix, torch.tensor(FILL), bicubic), ref)


# (top, left, height, width) on a 96 x 96 source, output 64: up- and downscales, and both sides of Pillow 13's
# vertical-first rule (h > 64 and h - 64 > 2 (w - 64)), including its boundary (80, 72) / (81, 72).
BOXES = [(10, 3, 66, 61), (0, 0, 61, 66), (5, 5, 90, 70), (5, 5, 70, 90), (0, 0, 96, 96), (20, 30, 40, 50),
         (3, 3, 80, 72), (3, 3, 81, 72), (7, 1, 64, 64), (40, 50, 9, 12)]


@pytest.mark.parametrize("box", BOXES)
def test_resized_crop_and_flip_match_timm(box, monkeypatch):
    images = grey_images(4, 96, seed=1)
    monkeypatch.setattr(RandomResizedCropAndInterpolation, "get_params", staticmethod(lambda *_: box))
    for interpolation, bicubic in (("bicubic", True), ("bilinear", False)):
        rrc = RandomResizedCropAndInterpolation(64, interpolation=interpolation)
        for flip in (False, True):
            refs = [rrc(Image.fromarray(a).convert("RGB")) for a in images]
            refs = [np.asarray(TF.hflip(r) if flip else r)[..., 0] for r in refs]
            n = len(images)
            mine = ops.resized_crop(torch.from_numpy(images), torch.tensor([box] * n), 64, torch.full((n,), flip),
                                    torch.full((n,), bicubic))
            assert_same(mine, torch.from_numpy(np.stack(refs)))


def replay_with_timm(image: np.ndarray, plan, k: int, aug: BatchAugment, monkeypatch) -> torch.Tensor:
    """Image k's draws through timm's functions: RRC, hflip, NAME_TO_OP(LEVEL_TO_ARG(m)), ToTensor, Normalize."""
    top, left, h, w = plan.crop[k].tolist()
    mode = InterpolationMode.BICUBIC if plan.crop_bicubic[k] else InterpolationMode.BILINEAR
    img = TF.resized_crop(Image.fromarray(image).convert("RGB"), top, left, h, w, [aug.input_size] * 2, mode)
    img = TF.hflip(img) if plan.flip[k] else img
    hparams = dict(translate_const=int(aug.input_size * 0.45), img_mean=aug.fill)
    for layer in range(plan.op.shape[1]):
        if not plan.applied[k, layer]:
            continue
        name = aug.op_names[plan.op[k, layer]]
        negate = bool(plan.negate[k, layer])
        monkeypatch.setattr(aa, "_randomly_negate", (lambda v: -v) if negate else (lambda v: v))
        level_fn = aa.LEVEL_TO_ARG[name]
        args = level_fn(float(plan.magnitude[k, layer]), hparams) if level_fn else ()
        resample = RESAMPLE[bool(plan.op_bicubic[k, layer])]
        img = aa.NAME_TO_OP[name](img, *args, fillcolor=aug.fill, resample=resample)
    return TF.normalize(TF.to_tensor(img), MEAN, STD)


@pytest.mark.parametrize("interpolation", ["bicubic", "random"])
def test_whole_plan_matches_timm_replay(interpolation, monkeypatch):
    images = grey_images(90, 80, seed=2)
    aug = BatchAugment(56, mean=MEAN, std=STD, interpolation=interpolation)
    plan = aug.draw(len(images), 80, torch.Generator().manual_seed(5))
    used = {aug.op_names[i] for i in plan.op[plan.applied].tolist()}
    assert used == set(RAND_INCREASING_TRANSFORMS)  # every op is exercised at least once
    geometric = plan.applied & torch.isin(plan.op, aug._geometric_ids)
    assert geometric.all(1).any()  # a geometric op on an image no longer grey (3 distinct channels)
    out = aug.apply(torch.from_numpy(images), plan)
    ref = torch.stack([replay_with_timm(a, plan, k, aug, monkeypatch) for k, a in enumerate(images)])
    assert out.dtype == torch.float32 and out.shape == (90, 3, 56, 56)
    assert torch.equal(out, ref), f"max abs diff {(out - ref).abs().max().item()}"


def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max())


def ks_limit(n: int, m: int, c: float = 1.95) -> float:
    """KS critical value at alpha = 0.001."""
    return c * np.sqrt((n + m) / (n * m))


def record_timm_randaugment(n: int, seed: int) -> tuple[dict, list]:
    """Run timm's RandAugment (from create_transform) n times with ops that only record their level args."""
    transform = timm_data.create_transform(56, is_training=True, auto_augment="rand-m6-mstd0.5-inc1",
                                           interpolation="bicubic", mean=MEAN, std=STD)
    randaugment = next(t for t in transform.transforms if isinstance(t, aa.RandAugment))
    calls: dict = {op.name: [] for op in randaugment.ops}
    magnitudes: list = []
    for op in randaugment.ops:
        op.aug_fn = lambda img, *args, _name=op.name, **_: calls[_name].append(args[0] if args else 0.0) or img
        if op.level_fn is not None:
            op.level_fn = lambda m, hp, _fn=op.level_fn: magnitudes.append(m) or _fn(m, hp)
    random.seed(seed)
    np.random.seed(seed)
    img = Image.new("RGB", (4, 4))
    for _ in range(n):
        randaugment(img)
    return calls, magnitudes


def test_randaugment_distribution_matches_timm():
    n = 12000
    calls, timm_magnitudes = record_timm_randaugment(n, seed=0)
    aug = BatchAugment(56, mean=MEAN, std=STD)
    plan = aug.draw(n, 64, torch.Generator().manual_seed(0))
    layers = plan.op.shape[1]
    expected = n * layers * 0.5 / len(aug.op_names)
    for k, name in enumerate(aug.op_names):
        chosen = plan.applied & (plan.op == k)
        ours, theirs = int(chosen.sum()), len(calls[name])
        assert abs(ours - theirs) < 5 * np.sqrt(ours + theirs), (name, ours, theirs)
        assert abs(ours - expected) < 5 * np.sqrt(expected), (name, ours, expected)
        if aa.LEVEL_TO_ARG[name] is not None:
            arg = op_argument(name, plan.magnitude[chosen], plan.negate[chosen]).numpy()
            assert ks_statistic(arg, calls[name]) < ks_limit(len(arg), len(calls[name])), name
    applied_ours, applied_theirs = int(plan.applied.sum()), sum(len(v) for v in calls.values())
    assert abs(applied_ours - applied_theirs) < 4 * np.sqrt(applied_ours + applied_theirs)
    assert abs(applied_ours / (n * layers) - 0.5) < 0.01  # p = 0.5 per layer
    with_level = [k for k, name in enumerate(aug.op_names) if aa.LEVEL_TO_ARG[name] is not None]
    ours_m = plan.magnitude[plan.applied & torch.isin(plan.op, torch.tensor(with_level))].numpy()
    assert ks_statistic(ours_m, timm_magnitudes) < ks_limit(len(ours_m), len(timm_magnitudes))
    assert abs(ours_m.mean() - 6.0) < 0.02 and abs(ours_m.std() - 0.5) < 0.02


def test_crop_distribution_matches_timm_get_params():
    n, size, scale, ratio = 20000, 256, (0.08, 1.0), (3 / 4, 4 / 3)
    random.seed(0)
    img = Image.new("L", (size, size))
    theirs = np.array([RandomResizedCropAndInterpolation.get_params(img, scale, ratio) for _ in range(n)])
    ours = draw_crop(n, size, scale, ratio, torch.Generator().manual_seed(0)).numpy()
    assert ((ours[:, 2:] >= 1) & (ours[:, :2] >= 0) & (ours[:, :2] + ours[:, 2:] <= size)).all()
    for name, f in {
        "area": lambda b: b[:, 2] * b[:, 3] / size**2,
        "aspect": lambda b: b[:, 3] / b[:, 2],
        "top": lambda b: (b[:, 0] + 0.5) / (size - b[:, 2] + 1),
        "left": lambda b: (b[:, 1] + 0.5) / (size - b[:, 3] + 1),
    }.items():
        assert ks_statistic(f(ours), f(theirs)) < ks_limit(n, n), name
    whole = [(b[:, 2] == size) & (b[:, 3] == size) for b in (ours, theirs)]
    assert abs(whole[0].mean() - whole[1].mean()) < 0.01


def test_draw_fallback_is_a_central_crop():
    crop = draw_crop(50, 32, (5.0, 6.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))  # never fits
    assert (crop == torch.tensor([0, 0, 32, 32])).all()
    crop = draw_crop(5, 32, (5.0, 6.0), (2.0, 3.0), torch.Generator().manual_seed(0))  # ratio range above 1
    assert (crop == torch.tensor([8, 0, 16, 32])).all()


def test_same_seed_same_output_and_cpu_draws():
    images = torch.from_numpy(grey_images(8, 48, seed=3))
    aug = BatchAugment(32, mean=MEAN, std=STD)
    a = aug(images, torch.Generator().manual_seed(11))
    b = aug(images, torch.Generator().manual_seed(11))
    c = aug(images, torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    plan = aug.draw(8, 48, torch.Generator().manual_seed(11))
    assert all(t.device.type == "cpu" for t in (plan.crop, plan.op, plan.magnitude))
    assert torch.equal(aug.apply(images, plan), a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_output_equals_cpu_output():
    images = torch.from_numpy(grey_images(64, 96, seed=4))
    aug = BatchAugment(64, mean=MEAN, std=STD, interpolation="random")
    plan = aug.draw(64, 96, torch.Generator().manual_seed(1))
    assert torch.equal(aug.apply(images.cuda(), plan).cpu(), aug.apply(images, plan))


def test_config_parsing_and_fill():
    assert parse_rand_config("rand-m6-mstd0.5-inc1") == RandConfig(magnitude=6, magnitude_std=0.5, increasing=True)
    assert parse_rand_config("rand-m9-n3-mstd101-mmax12-p0.7") == RandConfig(
        magnitude=9, num_layers=3, magnitude_std=float("inf"), magnitude_max=12, prob=0.7)
    for bad in ("augmix-m5", "rand-m9-tweights", "rand-x3"):
        with pytest.raises(ValueError):
            parse_rand_config(bad)
    aug = BatchAugment(32, mean=MEAN, std=STD)
    assert aug.fill == FILL and set(GEOMETRIC) < set(aug.op_names)
    assert BatchAugment(32, mean=MEAN, std=STD, randaugment=None).config.num_layers == 0
    with pytest.raises(ValueError):
        BatchAugment(32, mean=MEAN, std=STD, interpolation="nearest")


def test_affine_on_one_channel_equals_three_equal_channels():
    grey = torch.from_numpy(grey_images(3, 40, seed=6))[:, None]
    matrix = affine_matrix("Rotate", torch.tensor([11.0, -23.0, 29.0], dtype=torch.float64), 40)
    for bicubic in (True, False):
        one = ops.affine(grey, matrix, torch.tensor(FILL), bicubic)
        three = ops.affine(grey.expand(-1, 3, -1, -1), matrix, torch.tensor(FILL), bicubic)
        assert one.shape == (3, 3, 40, 40) and torch.equal(one, three)
        assert not torch.equal(one[:, 0], one[:, 1])  # the fill differs per channel
