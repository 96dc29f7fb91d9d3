"""Stand-in weights for the CPU demo's ResNet slots: a seeded, randomly initialised small ResNetV2 written in the
BiT ``.npz`` layout (formats.md section 4), so that the BiT and REMEDIS slots go through the real loader.

The demo cannot reproduce their pre-training (supervised ImageNet-21k for BiT, SimCLR on chest X-rays for REMEDIS);
its ViT slots are pre-trained by the engine itself (MAE / MoCo v3). These files say so in their name and in
``demo_weights.json``; they are never used outside the demo.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch

from engine.data.io import write_json
from engine.models.weights_bit import npz_name

DEMO_ARCHITECTURE = "resnetv2_50x1_bit"


def bit_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's backbone tensors under their BiT names; conv kernels OIHW -> HWIO (the inverse of timm's loader)."""
    arrays = {}
    for key, tensor in model.state_dict().items():
        name = npz_name(key)
        if name is None:
            continue
        value = tensor.detach().float().numpy()
        arrays[name] = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
    return arrays


def write_bit_npz(model: torch.nn.Module, path: Path) -> Path:
    """Write ``model``'s backbone as a BiT .npz, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **bit_arrays(model))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_demo_weights(out_dir: Path, *, seed: int = 0) -> dict[str, Path]:
    """``bit`` and ``remedis`` stand-in .npz files (different seeds) and a JSON note; returns the paths."""
    out_dir = Path(out_dir)
    paths = {}
    for offset, name in enumerate(("bit", "remedis")):
        torch.manual_seed(seed + offset)
        model = timm.create_model(DEMO_ARCHITECTURE, pretrained=False, num_classes=0)
        paths[name] = write_bit_npz(model, out_dir / f"{name}-demo-random-{DEMO_ARCHITECTURE}.npz")
    write_json({"synthetic": True, "architecture": DEMO_ARCHITECTURE, "seed": seed,
                "note": "random initialisation in the BiT .npz layout; stand-ins for the demo's ResNet slots",
                "files": {k: str(v) for k, v in paths.items()}}, out_dir / "demo_weights.json")
    return paths
