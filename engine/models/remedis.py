"""REMEDIS's TensorFlow release -> a BiT ``.npz`` the engine loads like BiT-M (formats.md section 5).

A one-off offline step: ``read_tf_variables`` needs tensorflow-cpu (not a project dependency, so imported only
there); ``convert_remedis`` is numpy only. The backbone keeps BiT's variable names after an outer prefix such as
``base_model/resnet/``; everything else (optimizer slots, EMA copies, global_step, projection or supervised heads)
is ignored. The result holds HWIO float32 kernels under ``resnet/`` and no head, so the classifier starts fresh.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from engine.models.weights_error import WeightsError, describe_keys

# BiT backbone suffixes of section 5 step 2; search() takes the leftmost, so a unit's group_norm is never read as the
# final one. Names with anything after the suffix (.../Momentum, .../ExponentialMovingAverage) do not match.
_BACKBONE = re.compile(r"(?:^|/)(root_block/standardized_conv2d/kernel|block(\d+)/unit(\d+)/[abc]/(?:proj/)?"
                       r"(?:standardized_conv2d/kernel|group_norm/(?:gamma|beta))|group_norm/(?:gamma|beta))$")
UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}  # big_transfer KNOWN_MODELS
_R152X2 = (457, (7, 7, 3, 128), 4096)  # backbone tensors, stem kernel, final norm channels (section 4/5)
_CONV, _GN = "standardized_conv2d/kernel", "group_norm"


def bit_layout(units: Sequence[int], width: int) -> dict[str, tuple[int, ...]]:
    """Name (without 'resnet/') -> HWIO shape of every backbone tensor of a BiT ResNet-v2 (pre-activation
    bottlenecks: block b outputs 256 * 2**(b-1) * width channels through a bottleneck of a quarter of that)."""
    stem = 64 * width
    layout: dict[str, tuple[int, ...]] = {f"root_block/{_CONV}": (7, 7, 3, stem)}
    in_chs = stem
    for block, count in enumerate(units, start=1):
        out = 256 * 2 ** (block - 1) * width
        mid = out // 4
        for unit in range(1, count + 1):
            name = f"block{block}/unit{unit:02d}/"
            unit_in = in_chs if unit == 1 else out
            for letter, channels, kernel in (("a", unit_in, (1, 1, unit_in, mid)), ("b", mid, (3, 3, mid, mid)),
                                             ("c", mid, (1, 1, mid, out))):
                layout[f"{name}{letter}/{_CONV}"] = kernel
                layout[f"{name}{letter}/{_GN}/gamma"] = layout[f"{name}{letter}/{_GN}/beta"] = (channels,)
            if unit == 1:
                layout[f"{name}a/proj/{_CONV}"] = (1, 1, unit_in, out)
        in_chs = out
    layout[f"{_GN}/gamma"] = layout[f"{_GN}/beta"] = (in_chs,)
    return layout


def convert_remedis(variables: Mapping[str, np.ndarray], out: Path, *, expect: str | None = "R152x2",
                    prefix: str | None = None) -> dict:
    """Write the BiT backbone among ``variables`` (TF name -> array) to ``out`` as a BiT .npz, atomically.

    ``expect`` ("R152x2", the paper's REMEDIS; None to accept any BiT depth and width) is checked against the
    block/unit structure found; ``prefix`` picks one outer prefix when several copies of the backbone exist.
    Returns a JSON-able summary (architecture, tensor count, shapes, source prefix, ignored variables).
    """
    backbone, ignored, outer = _backbone(variables, prefix)
    units, width = _structure(backbone)
    layout = bit_layout(units, width)
    missing, extra = set(layout) - set(backbone), set(backbone) - set(layout)
    if missing or extra:
        raise WeightsError(f"the backbone under {outer!r} is not a complete BiT R{_depth(units)}x{width} "
                           f"(units {list(units)}): {len(missing)} variable(s) missing, {len(extra)} unexpected",
                           keys=[outer + name for name in missing | extra],
                           hint=f"missing: {describe_keys(missing)}; unexpected: {describe_keys(extra)}")
    wrong = [f"{outer}{name}: {tuple(backbone[name].shape)}, BiT needs {shape}" for name, shape in
             layout.items() if tuple(backbone[name].shape) != shape]
    if wrong:
        raise WeightsError(f"{len(wrong)} backbone variable(s) have the wrong shape", hint="; ".join(wrong[:5]))
    arch = f"R{_depth(units)}x{width}"
    if expect is not None and arch != expect:
        raise WeightsError(f"found a BiT {arch} (units {list(units)}), expected {expect}",
                           hint="pass expect=None to convert another size")
    found = (len(backbone), layout[f"root_block/{_CONV}"], layout[f"{_GN}/gamma"][0])
    if arch == "R152x2" and found != _R152X2:  # the acceptance numbers of section 5 step 6, spelt out
        raise WeightsError(f"R152x2 must have {_R152X2[0]} tensors, stem {_R152X2[1]} and a {_R152X2[2]}-channel "
                           f"final norm; found {found}")
    _save_npz_atomic({f"resnet/{name}": np.asarray(backbone[name], dtype=np.float32) for name in layout}, Path(out))
    return {"architecture": arch, "units": list(units), "width": width, "tensors": found[0], "stem": list(found[1]),
            "final_norm": found[2], "source_prefix": outer, "ignored": len(ignored),
            "ignored_examples": sorted(ignored)[:5], "out": str(out)}


def read_tf_variables(saved_model_dir: Path) -> dict[str, np.ndarray]:
    """Every variable of a TF SavedModel's checkpoint (``<dir>/variables/variables``), as numpy arrays."""
    checkpoint = Path(saved_model_dir) / "variables" / "variables"
    if not checkpoint.with_name("variables.index").is_file():
        raise WeightsError("not a TensorFlow SavedModel folder: no variables/variables.index", file=saved_model_dir,
                           hint="expected saved_model.pb and variables/variables.{index,data-*} (REMEDIS release)")
    try:
        import tensorflow as tf
    except ImportError as err:
        raise ImportError("reading REMEDIS's TensorFlow checkpoint needs tensorflow, which the project does not "
                          "install: run `pip install tensorflow-cpu` once on a machine with internet, convert, and "
                          "copy the .npz; training only reads the .npz") from err
    reader = tf.train.load_checkpoint(str(checkpoint))
    return {name: np.asarray(reader.get_tensor(name)) for name in sorted(reader.get_variable_to_shape_map())}


def convert_remedis_dir(saved_model_dir: Path, out: Path, *, expect: str | None = "R152x2",
                        prefix: str | None = None) -> dict:
    """read_tf_variables + convert_remedis: the REMEDIS SavedModel folder to a BiT .npz."""
    summary = convert_remedis(read_tf_variables(saved_model_dir), out, expect=expect, prefix=prefix)
    return {"source": str(saved_model_dir), **summary}


def _backbone(variables: Mapping[str, np.ndarray], prefix: str | None
              ) -> tuple[dict[str, np.ndarray], list[str], str]:
    """(BiT-relative name -> array, ignored names, the outer prefix); exactly one outer prefix must remain."""
    by_prefix: dict[str, dict[str, np.ndarray]] = {}
    ignored = []
    for name, value in variables.items():
        match = _BACKBONE.search(name)
        if match is None:
            ignored.append(name)
            continue
        by_prefix.setdefault(name[:match.start(1)], {})[match.group(1)] = value
    if prefix is not None:
        ignored += [name for outer, found in by_prefix.items() if outer != prefix for name in found]
        by_prefix = {prefix: by_prefix[prefix]} if prefix in by_prefix else {}
    if not by_prefix:
        raise WeightsError("no BiT backbone variables (root_block/standardized_conv2d/kernel, block*/unit*/...) "
                           + (f"under prefix {prefix!r}" if prefix is not None else "found"),
                           hint=f"variables seen: {describe_keys(variables.keys())}")
    if len(by_prefix) > 1:
        raise WeightsError("BiT backbone variables under several prefixes; choose one with prefix=...",
                           keys=list(by_prefix))
    (outer, backbone), = by_prefix.items()
    return backbone, ignored, outer


def _structure(backbone: Mapping[str, np.ndarray]) -> tuple[tuple[int, ...], int]:
    """(units per block, width factor) read off the names found and the stem kernel (7, 7, 3, 64 * width)."""
    stem = backbone.get(f"root_block/{_CONV}")
    if stem is None or stem.ndim != 4 or stem.shape[:3] != (7, 7, 3) or stem.shape[3] % 64:
        raise WeightsError(f"the stem kernel root_block/{_CONV} is {None if stem is None else stem.shape}; "
                           "BiT's is (7, 7, 3, 64 * width)")
    units: dict[int, int] = {}
    for name in backbone:
        match = _BACKBONE.search(name)
        if match and match.group(2):
            block, unit = int(match.group(2)), int(match.group(3))
            units[block] = max(units.get(block, 0), unit)
    blocks = tuple(units.get(block, 0) for block in range(1, max(units, default=0) + 1))
    if len(blocks) != 4 or 0 in blocks:
        raise WeightsError(f"BiT has four blocks of units; found units per block {list(blocks)}")
    return blocks, int(stem.shape[3]) // 64


def _depth(units: Sequence[int]) -> int:
    """ResNet depth of bottleneck units: 3 layers each plus stem and head (3-4-6-3 -> 50)."""
    return 3 * sum(units) + 2


def _save_npz_atomic(arrays: Mapping[str, np.ndarray], out: Path) -> None:
    """np.savez into a temporary file of the same folder, then os.replace: a crash never leaves half an .npz."""
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
