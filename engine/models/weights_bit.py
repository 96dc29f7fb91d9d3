"""BiT ``.npz`` checkpoints (formats.md section 4): the naming, a shape check against the model, and loading.

The file is a flat map of TF variable names (``resnet/block{b}/unit{uu}/{a,b,c}/...``) to HWIO arrays. Loading goes
through timm's own ``ResNetV2.load_pretrained`` (resnetv2.py ``_load_weights``); this module checks beforehand that
every tensor the model needs is there with the right shape, so that a wrong-size file fails with key names and shapes
instead of a numpy broadcast error half-way through the copy.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.models.weights_error import WeightsError, describe_keys

PREFIX = "resnet/"
STEM_KEY = f"{PREFIX}root_block/standardized_conv2d/kernel"  # the anchor timm's _load_npz_checkpoint requires
_CONV = "standardized_conv2d/kernel"
_FIXED = {"stem.conv.weight": "root_block/" + _CONV, "norm.weight": "group_norm/gamma", "norm.bias": "group_norm/beta",
          "head.fc.weight": "head/conv2d/kernel", "head.fc.bias": "head/conv2d/bias"}
_FIXED_BACK = {npz: key for key, npz in _FIXED.items()}
_TIMM_UNIT = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.(?:(conv|norm)([123])\.(weight|bias)|downsample\.conv\.weight)")
_NPZ_UNIT = re.compile(r"block(\d+)/unit(\d+)/([abc])/(proj/)?(standardized_conv2d/kernel|group_norm/(?:gamma|beta))")


def npz_name(key: str) -> str | None:
    """The BiT .npz name of a timm ResNetV2 tensor (None when BiT has no such tensor)."""
    if key in _FIXED:
        return PREFIX + _FIXED[key]
    match = _TIMM_UNIT.fullmatch(key)
    if match is None:
        return None
    stage, block, kind, index, attr = match.groups()
    unit = f"{PREFIX}block{int(stage) + 1}/unit{int(block) + 1:02d}/"
    if kind is None:
        return f"{unit}a/proj/{_CONV}"  # shortcut projection, unit01 of each block
    letter = "abc"[int(index) - 1]
    if kind == "conv":
        return f"{unit}{letter}/{_CONV}" if attr == "weight" else None  # StdConv2d has no bias in BiT
    return f"{unit}{letter}/group_norm/{'gamma' if attr == 'weight' else 'beta'}"


def timm_name(name: str) -> str | None:
    """The timm ResNetV2 name of a BiT .npz tensor (None for names outside the BiT layout)."""
    rel = name.removeprefix(PREFIX)
    if name == rel:
        return None
    if rel in _FIXED_BACK:
        return _FIXED_BACK[rel]
    match = _NPZ_UNIT.fullmatch(rel)
    if match is None:
        return None
    block, unit, letter, proj, what = match.groups()
    base = f"stages.{int(block) - 1}.blocks.{int(unit) - 1}."
    index = "abc".index(letter) + 1
    if proj:
        return base + "downsample.conv.weight" if letter == "a" and what == _CONV else None
    if what == _CONV:
        return f"{base}conv{index}.weight"
    return f"{base}norm{index}.{'weight' if what.endswith('gamma') else 'bias'}"


def npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every array in an .npz, from the .npy headers only (no tensor data is read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            with archive.open(member) as handle:
                version = np.lib.format.read_magic(handle)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shapes[member.removesuffix(".npy")] = tuple(read(handle)[0])
    return shapes


def read_bit_npz(path: Path) -> dict[str, torch.Tensor]:
    """A BiT .npz as a timm ResNetV2 state dict (HWIO -> OIHW), head included when the file has one."""
    with np.load(path, allow_pickle=False) as arrays:
        names = list(arrays.files)
        unknown = [name for name in names if timm_name(name) is None]
        if STEM_KEY not in names or unknown:
            raise WeightsError(f"not a BiT .npz: {'names outside the BiT layout' if unknown else 'no ' + STEM_KEY}",
                               file=path, keys=unknown)
        return {timm_name(name): _to_oihw(arrays[name]) for name in names}


def load_bit_npz(model: nn.Module, path: Path, head_keys: Collection[str]) -> tuple[str, ...]:
    """Load a BiT .npz into a timm ResNetV2 with timm's loader, the head left initialised; returns dropped names."""
    if not hasattr(model, "load_pretrained") or not hasattr(model, "stages"):
        raise WeightsError(f"a BiT .npz needs a timm ResNetV2 (resnetv2_*), not a {type(model).__name__}", file=path)
    shapes = npz_shapes(path)
    check_bit_npz(model, path, shapes, head_keys)
    with _head_hidden(model):
        model.load_pretrained(str(path))
    return tuple(sorted(name for name in shapes if name.startswith(f"{PREFIX}head/")))


def check_bit_npz(model: nn.Module, path: Path, shapes: dict[str, tuple[int, ...]], head_keys: Collection[str]
                  ) -> None:
    """Every non-head tensor of ``model`` must be in the file with its HWIO shape, and no backbone tensor spare."""
    if STEM_KEY not in shapes:
        raise WeightsError(f"not a BiT .npz: it has no stem kernel {STEM_KEY}", file=path,
                           hint=f"it holds {describe_keys(shapes)}")
    wanted: dict[str, tuple[str, tuple[int, ...]]] = {}
    for key, tensor in model.state_dict().items():
        if key in head_keys:
            continue
        name = npz_name(key)
        if name is None:
            raise WeightsError("the model has tensors a BiT .npz does not name (is it a BiT ResNetV2?)", file=path,
                               keys=[key])
        wanted[name] = (key, _hwio(tuple(tensor.shape)))
    missing = set(wanted) - set(shapes)
    if missing:
        raise WeightsError("the .npz lacks tensors the model needs (a smaller ResNet?)", file=path, keys=missing)
    spare = {name for name in shapes if not name.startswith(f"{PREFIX}head/")} - set(wanted)
    if spare:
        raise WeightsError("the .npz holds backbone tensors the model has no place for (a deeper ResNet?)",
                           file=path, keys=spare)
    wrong = [f"{name} -> {key}: file {shapes[name]}, model needs {shape}" for name, (key, shape) in sorted(
        wanted.items()) if not _same_shape(shapes[name], shape, stem=name == STEM_KEY)]
    if wrong:
        more = f" (and {len(wrong) - 5} more)" if len(wrong) > 5 else ""
        raise WeightsError(f"{len(wrong)} tensor(s) of the .npz have the wrong shape (another width?)", file=path,
                           hint="; ".join(wrong[:5]) + more)


def _same_shape(found: tuple[int, ...], needed: tuple[int, ...], *, stem: bool) -> bool:
    """Shapes agree; the stem's input channels may differ because timm adapts them (adapt_input_conv)."""
    if stem and len(found) == len(needed) == 4:
        return found[:2] + found[3:] == needed[:2] + needed[3:]
    return found == needed


def _hwio(shape: tuple[int, ...]) -> tuple[int, ...]:
    """OIHW -> HWIO for conv kernels; other shapes unchanged."""
    return (shape[2], shape[3], shape[1], shape[0]) if len(shape) == 4 else shape


def _to_oihw(array: np.ndarray) -> torch.Tensor:
    """HWIO numpy kernel -> OIHW tensor, as timm's _load_weights t2p; 1-D arrays unchanged."""
    array = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array
    return torch.from_numpy(np.ascontiguousarray(array))


@contextmanager
def _head_hidden(model: nn.Module) -> Iterator[None]:
    """Hide the classifier from timm's _load_weights: it reads resnet/head/conv2d/kernel whenever head.fc is a Conv2d
    (a KeyError for a converted REMEDIS file, which has no head) and copies it when the class counts agree. The
    engine always trains a fresh head, so the head is never loaded."""
    head = getattr(model, "head", None)
    fc = getattr(head, "fc", None)
    if not isinstance(fc, nn.Conv2d):
        yield
        return
    head.fc = nn.Identity()
    try:
        yield
    finally:
        head.fc = fc
