"""Synthetic chest-X-ray-like images with learnable, subgroup-dependent pathology signal (numpy; PIL only encodes).

Each image is a smooth "chest" (body, two lungs, mediastinum, diaphragm) with per-image jitter, a smooth random
texture and pixel noise. Every pathology owns a fixed spatial pattern (one or two Gaussian blobs at a
pathology-specific place) that is added when the finding is present, with an amplitude multiplied by a planted
subgroup factor (SIGNAL_SCALE_BY_SEX, SIGNAL_SCALE_BY_RACE). Weaker signal for a subgroup means a lower AUC for that
subgroup, so a fairness pipeline run on these images has a known gap to find (docs/protocol.md, synthetic data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
from PIL import Image

# Planted effects: signal amplitude multipliers per subgroup. Female and Black patients get weaker signal, the
# direction of the paper's findings (female underperformance; medical pre-training favours White and Asian).
SIGNAL_SCALE_BY_SEX: Mapping[str, float] = MappingProxyType({"Male": 1.0, "Female": 0.7, "Unknown": 1.0})
SIGNAL_SCALE_BY_RACE: Mapping[str, float] = MappingProxyType({"White": 1.0, "Asian": 0.95, "Black": 0.6})
DEFAULT_SIGNAL_SCALE = 1.0  # patients whose race is dropped by the cohort filters
UNCERTAIN_SIGNAL = 0.5  # borderline findings (reported as -1) show half the signal
LATERAL_SIGNAL = 0.6  # a lateral view shows the same study's findings, less clearly
SIGNAL_AMPLITUDE = 0.05  # of the 0..1 intensity range, before the subgroup factor
PIXEL_NOISE = 0.045  # standard deviation of white pixel noise, same units
TEXTURE_NOISE = 0.06  # amplitude of the smooth random texture (a confounder for the linear signal)
JPEG_QUALITY = 90

# (x, y, sx, sy, sign) in coordinates of the centred square of side min(W, H): x to the image's right, y down.
Blob = tuple[float, float, float, float, float]
PATTERNS: Mapping[str, tuple[Blob, ...]] = MappingProxyType(
    {
        "Enlarged Cardiomediastinum": ((0.5, 0.36, 0.09, 0.07, 1.0),),
        "Cardiomegaly": ((0.56, 0.64, 0.13, 0.09, 1.0),),
        "Lung Opacity": ((0.3, 0.5, 0.09, 0.09, 1.0),),
        "Lung Lesion": ((0.68, 0.36, 0.04, 0.04, 1.0),),
        "Edema": ((0.38, 0.46, 0.06, 0.06, 1.0), (0.62, 0.46, 0.06, 0.06, 1.0)),
        "Consolidation": ((0.72, 0.6, 0.07, 0.07, 1.0),),
        "Pneumonia": ((0.27, 0.68, 0.07, 0.06, 1.0),),
        "Atelectasis": ((0.7, 0.76, 0.1, 0.035, 1.0),),
        "Pneumothorax": ((0.24, 0.22, 0.07, 0.07, -1.0),),
        "Pleural Effusion": ((0.18, 0.86, 0.06, 0.05, 1.0), (0.82, 0.86, 0.06, 0.05, 1.0)),
        "Pleural Other": ((0.11, 0.5, 0.025, 0.12, 1.0),),
        "Fracture": ((0.82, 0.28, 0.07, 0.02, 1.0),),
        "Support Devices": ((0.47, 0.32, 0.015, 0.25, 1.5),),
        # NIH ChestX-ray14 findings without a CheXpert counterpart of the same name
        "Mass": ((0.34, 0.3, 0.07, 0.07, 1.0),),
        "Emphysema": ((0.3, 0.45, 0.12, 0.2, -0.6), (0.7, 0.45, 0.12, 0.2, -0.6)),
        "Fibrosis": ((0.3, 0.3, 0.05, 0.1, 0.8), (0.7, 0.3, 0.05, 0.1, 0.8)),
        "Hernia": ((0.5, 0.82, 0.06, 0.05, 1.0),),
    }
)
# NIH names that share a CheXpert pattern (shared/notes/formats.md section 8 lists the 14 NIH findings).
NIH_PATTERN_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "Effusion": "Pleural Effusion",
        "Infiltration": "Lung Opacity",
        "Nodule": "Lung Lesion",
        "Pleural_Thickening": "Pleural Other",
    }
)


def pixel_grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (1, 1, W) and (1, H, 1), the centred square of side min(W, H) spanning [0, 1]."""
    side = min(width, height)
    xs = (np.arange(width, dtype=np.float32) + 0.5 - width / 2) / side + 0.5
    ys = (np.arange(height, dtype=np.float32) + 0.5 - height / 2) / side + 0.5
    return xs[None, None, :], ys[None, :, None]


def pattern_stack(names: Sequence[str], width: int, height: int) -> np.ndarray:
    """The fixed signal pattern of each named finding, stacked as a (P, H, W) float32 array."""
    xs, ys = pixel_grid(width, height)
    stack = np.zeros((len(names), height, width), dtype=np.float32)
    for i, name in enumerate(names):
        for bx, by, sx, sy, sign in PATTERNS[NIH_PATTERN_ALIASES.get(name, name)]:
            stack[i] += sign * np.exp(-0.5 * (((xs - bx) / sx) ** 2 + ((ys - by) / sy) ** 2))[0]
    return stack


def _soft_ellipse(
    xs: np.ndarray, ys: np.ndarray, cx: np.ndarray, cy: np.ndarray, rx: np.ndarray, ry: np.ndarray
) -> np.ndarray:
    """1 inside, 0 outside, soft edge (a logistic in the ellipse equation, via tanh: no overflow); (N, 1, 1) params."""
    e = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2
    return 0.5 - 0.5 * np.tanh(4.0 * (e - 1.0))


def _anatomy(rng: np.random.Generator, lateral: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Smooth chest background in 0..1 for N images; laterals get one wide lung field instead of two."""
    n = len(lateral)
    jit = lambda scale: rng.uniform(-scale, scale, (n, 1, 1)).astype(np.float32)  # noqa: E731
    lat = lateral[:, None, None]
    pick = lambda side_view, front_view: np.where(lat, side_view, front_view).astype(np.float32)  # noqa: E731
    body = _soft_ellipse(xs, ys, 0.5 + jit(0.02), 0.56 + jit(0.02), 0.47 + jit(0.03), 0.56 + jit(0.03))
    image = 0.12 + 0.5 * body
    for side in (-1.0, 1.0):
        cx = pick(0.45, 0.5 + side * 0.2) + jit(0.02)
        rx = pick(0.27, 0.14) + jit(0.015)
        image -= 0.28 * pick(0.5, 1.0) * _soft_ellipse(xs, ys, cx, 0.47 + jit(0.02), rx, 0.3 + jit(0.02))
    image += 0.18 * np.exp(-0.5 * ((xs - pick(0.78, 0.5) - jit(0.02)) / 0.06) ** 2) * body
    image += 0.15 * body / (1.0 + np.exp(-(ys - 0.8 - jit(0.03)) / 0.03))  # diaphragm
    return image


def _texture(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    """Smooth random texture: a coarse 6x6 Gaussian grid per image, bilinearly upsampled (two matrix products)."""
    coarse = rng.standard_normal((n, 6, 6)).astype(np.float32)
    rows = _interp_matrix(6, height)
    cols = _interp_matrix(6, width)
    return np.einsum("hi,nij,wj->nhw", rows, coarse, cols, optimize=True)


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Linear interpolation weights (n_out, n_in) from an n_in-point grid to n_out pixel centres."""
    pos = (np.arange(n_out, dtype=np.float32) + 0.5) / n_out * (n_in - 1)
    low = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    frac = pos - low
    weights = np.zeros((n_out, n_in), dtype=np.float32)
    weights[np.arange(n_out), low] = 1.0 - frac
    weights[np.arange(n_out), low + 1] = frac
    return weights


def render(rng: np.random.Generator, coeffs: np.ndarray, lateral: np.ndarray, patterns: np.ndarray) -> np.ndarray:
    """Render N uint8 images (N, H, W): anatomy + coeffs (N, P) times patterns (P, H, W) + texture + noise."""
    n = coeffs.shape[0]
    _, height, width = patterns.shape
    xs, ys = pixel_grid(width, height)
    image = _anatomy(rng, lateral, xs, ys)
    assert image.dtype == np.float32  # float64 would double the time and memory
    signal = (coeffs.astype(np.float32) @ patterns.reshape(len(patterns), -1)).reshape(n, height, width)
    image += SIGNAL_AMPLITUDE * signal * np.where(lateral, LATERAL_SIGNAL, 1.0).astype(np.float32)[:, None, None]
    image += TEXTURE_NOISE * _texture(rng, n, width, height)
    image *= rng.uniform(0.85, 1.15, (n, 1, 1)).astype(np.float32)  # exposure
    image += PIXEL_NOISE * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def write_images(
    paths: Sequence[Path],
    coeffs: np.ndarray,
    lateral: np.ndarray,
    patterns: np.ndarray,
    rng: np.random.Generator,
    *,
    chunk: int = 256,
) -> None:
    """Render and encode images in chunks (bounded memory); the format follows each path's suffix (.jpg / .png)."""
    for folder in sorted({path.parent for path in paths}):
        folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(paths), chunk):
        stop = min(start + chunk, len(paths))
        pixels = render(rng, coeffs[start:stop], lateral[start:stop], patterns)
        for path, array in zip(paths[start:stop], pixels, strict=False):
            image = Image.fromarray(array)
            if path.suffix == ".png":
                image.save(path, format="PNG")
            else:
                image.save(path, format="JPEG", quality=JPEG_QUALITY)


def signal_coefficients(state: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Per-image pattern weights from the latent finding state (2 present, 1 borderline, 0 absent) and scale (N,)."""
    strength = np.where(state == 2, 1.0, np.where(state == 1, UNCERTAIN_SIGNAL, 0.0))
    return strength * scale[:, None]


def subgroup_scale(sex: Sequence[str], race: Sequence[str | None]) -> np.ndarray:
    """Planted signal multiplier per image: sex factor times race factor (DEFAULT_SIGNAL_SCALE when unknown)."""
    by_sex = np.array([SIGNAL_SCALE_BY_SEX.get(s, DEFAULT_SIGNAL_SCALE) for s in sex], dtype=np.float64)
    by_race = np.array([SIGNAL_SCALE_BY_RACE.get(r, DEFAULT_SIGNAL_SCALE) for r in race], dtype=np.float64)
    return by_sex * by_race


def planted_effects() -> dict[str, object]:
    """The planted subgroup effects and signal parameters, for synthetic.json."""
    return {
        "signal_scale_by_sex": dict(SIGNAL_SCALE_BY_SEX),
        "signal_scale_by_race": dict(SIGNAL_SCALE_BY_RACE),
        "default_signal_scale": DEFAULT_SIGNAL_SCALE,
        "uncertain_signal": UNCERTAIN_SIGNAL,
        "lateral_signal": LATERAL_SIGNAL,
        "signal_amplitude": SIGNAL_AMPLITUDE,
        "pixel_noise": PIXEL_NOISE,
        "texture_noise": TEXTURE_NOISE,
        "jpeg_quality": JPEG_QUALITY,
        "patterns": {name: [list(blob) for blob in blobs] for name, blobs in PATTERNS.items()},
        "nih_pattern_aliases": dict(NIH_PATTERN_ALIASES),
    }
