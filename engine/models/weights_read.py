"""Reading a checkpoint file into a plain timm-named state dict (formats.md sections 0-3).

Three containers exist on disk: ``torch.save`` pickles (MAE, Medical MAE, MoCo v3, timm ``.pth``), safetensors and
numpy ``.npz`` archives (BiT, converted REMEDIS; read by weights_bit.py). Inside a torch pickle the layout says which
training code wrote it; ``select_encoder`` keeps the encoder and drops what the classifier never uses.
"""

from __future__ import annotations

import argparse
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch
from timm.models import clean_state_dict

from engine.models.weights_error import WeightsError

MAE, MOCO, TIMM, SAFETENSORS, BIT_NPZ = "mae", "moco-v3", "timm", "safetensors", "bit-npz"
FORMATS = (MAE, MOCO, TIMM, SAFETENSORS, BIT_NPZ)
TORCH_FILE, SAFETENSORS_FILE, NPZ_FILE = "torch", "safetensors", "npz"  # containers
PRETRAINING = (MAE, MOCO)  # formats whose files must not be fine-tuned classifiers
_MOCO_PARTS = ("base_encoder.", "momentum_encoder.", "predictor.")  # moco-v3 builder.py MoCo_ViT (section 3)


def sniff_container(path: Path) -> str:
    """torch, safetensors or npz, from the first bytes (torch.save and np.savez both write zip archives)."""
    with path.open("rb") as handle:
        head = handle.read(16)
    # safetensors: an 8-byte little-endian header length, then the JSON header
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return SAFETENSORS_FILE
    if head.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if names and all(name.endswith(".npy") for name in names):
            return NPZ_FILE
        if any(name.endswith("data.pkl") for name in names):  # torch >= 1.6 zip serialisation
            return TORCH_FILE
    elif head.startswith(b"\x80"):  # a bare pickle: torch's legacy serialisation
        return TORCH_FILE
    raise WeightsError(f"not a checkpoint: neither a PyTorch file, safetensors nor a numpy .npz (starts {head[:8]!r})",
                       file=path)


def load_torch(path: Path) -> object:
    """``torch.load`` with weights_only=True; argparse.Namespace is allowed because MAE-code checkpoints pickle
    their arguments under 'args' (section 0.1). There is deliberately no weights_only=False fallback."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightsError("refused to unpickle: the file holds objects other than tensors, containers and "
                           "argparse.Namespace, and the engine only loads with weights_only=True", file=path,
                           hint=f"torch: {reason}. Re-save just the state dict (torch.save(model.state_dict(), ...)) "
                                "with the code that wrote it.") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise WeightsError(f"not a readable PyTorch checkpoint ({type(err).__name__}: {err})", file=path) from err


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A .safetensors file as a dict of CPU tensors."""
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own SafetensorError (a plain Exception subclass)
        raise WeightsError(f"not a readable safetensors file ({err})", file=path) from err


def unwrap(checkpoint: object, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside a loaded checkpoint, with 'module.' / '_orig_mod.' stripped, and the wrapper key it sat
    under ('' when bare). 'state_dict' is MoCo v3's and timm's wrapper, 'model' MAE's (sections 0.2, 1, 3)."""
    if not isinstance(checkpoint, Mapping):
        raise WeightsError(f"expected a dict at the top level, found {type(checkpoint).__name__}", file=path)
    where = next((key for key in ("state_dict", "model") if isinstance(checkpoint.get(key), Mapping)), "")
    state = checkpoint[where] if where else checkpoint
    not_tensors = [str(key) for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        place = f"under {where!r}" if where else "at the top level (no 'model' or 'state_dict' entry)"
        raise WeightsError(f"the state dict {place} holds entries that are not tensors", file=path, keys=not_tensors)
    return clean_state_dict({str(key): value for key, value in state.items()}), where


def content_format(checkpoint: Mapping, state: Mapping[str, torch.Tensor], where: str) -> str:
    """Which training code wrote a torch checkpoint: MoCo v3 by its encoder prefixes, MAE by its 'model' wrapper,
    pickled args or decoder; anything else is a plain timm state dict."""
    if any(key.startswith(_MOCO_PARTS[:2]) for key in state):
        return MOCO
    if where == "model" or "args" in checkpoint or any(_is_mae_decoder(key) for key in state):
        return MAE
    return TIMM


def select_encoder(state: dict[str, torch.Tensor], content: str, fmt: str, path: Path
                   ) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """The encoder's tensors under timm names, and the keys deliberately dropped.

    MoCo v3: keep base_encoder.* without the prefix, drop its head.N.* projector, the momentum encoder and the
    predictor (what convert_to_deit.py keeps, section 3). MAE: drop decoder_* and mask_token, which would otherwise
    reach the model as unexpected keys (section 0.3). Pre-training formats then refuse a fine-tuned classifier.
    """
    if content == MOCO and fmt not in (MOCO, "auto"):
        raise WeightsError(f"this is a MoCo v3 training checkpoint (base_encoder./momentum_encoder. keys), but the "
                           f"model's weight format is {fmt!r}", file=path, hint="use weight_format 'moco-v3'")
    dropped: list[str] = []
    kept: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if content == MOCO and key.startswith(_MOCO_PARTS):
            if not key.startswith("base_encoder.") or _is_projector(key.removeprefix("base_encoder.")):
                dropped.append(key)
                continue
            key = key.removeprefix("base_encoder.")
        elif _is_mae_decoder(key) or (content == MOCO and _is_projector(key)):
            dropped.append(key)
            continue
        kept[key] = value
    if fmt in PRETRAINING or (fmt == "auto" and content in PRETRAINING):
        dropped += _reject_fine_tuned(kept, path)
    return kept, tuple(dropped)


def _is_mae_decoder(key: str) -> bool:
    """MAE models_mae.py: decoder_embed/_blocks/_norm/_pred/_pos_embed and the decoder's mask_token (section 1)."""
    return key.startswith("decoder_") or key == "mask_token"


def _is_projector(key: str) -> bool:
    """MoCo v3's 3-layer projector lives at head.0 ... head.7 of the base encoder (section 3)."""
    return key.startswith("head.") and key.split(".")[1].isdigit()


def _reject_fine_tuned(state: dict[str, torch.Tensor], path: Path) -> list[str]:
    """Refuse a fine-tuned file (fc_norm or a classifier head); drop an empty 0-class head. Returns dropped keys."""
    head = state.get("head.weight")
    fc_norm = [key for key in state if key.startswith("fc_norm.")]
    if fc_norm or (head is not None and head.shape[0] > 0):
        what = f"a {head.shape[0]}-class head" if head is not None and head.shape[0] > 0 else "no head"
        keys = fc_norm + (["head.weight"] if head is not None else [])
        raise WeightsError(f"this is a fine-tuned classifier, not a pre-training checkpoint: it has {what} and "
                           f"{'an' if fc_norm else 'no'} fc_norm", file=path, keys=keys,
                           hint="use the pre-training release (e.g. mae_pretrain_vit_base.pth, not "
                                "mae_finetuned_vit_base.pth)")
    empty = [key for key in ("head.weight", "head.bias") if key in state]
    for key in empty:
        del state[key]
    return empty
