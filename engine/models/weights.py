"""Pre-trained weights into a timm model: format detection, reading, loading and the exact-key assertions.

Every real release of the paper's models goes through here (formats.md sections 0-5): MAE and Medical MAE
(``{'model': sd}``, maybe with decoder, optimizer and pickled args), MoCo v3 (``module.base_encoder.`` state dicts),
timm state dicts (``.pth``/``.bin``/``.safetensors``) and BiT ``.npz`` archives (BiT-M and converted REMEDIS).
The classifier is always a fresh head: checkpoint heads are dropped, and after ``load_state_dict(strict=False)`` the
missing and unexpected keys must be exactly what the fresh head and the pooling imply (section 0.4, the MAE
``main_finetune.py`` / MoCo v3 ``main_lincls.py`` pattern). Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import isqrt
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from engine.models.registry import ModelSpec
from engine.models.weights_bit import STEM_KEY, load_bit_npz, npz_shapes, read_bit_npz
from engine.models.weights_error import WeightsError, describe_keys
from engine.models.weights_read import (
    BIT_NPZ,
    FORMATS,
    NPZ_FILE,
    SAFETENSORS,
    SAFETENSORS_FILE,
    content_format,
    load_safetensors,
    load_torch,
    select_encoder,
    sniff_container,
    unwrap,
)

__all__ = ["LoadReport", "WeightsError", "detect_format", "load_pretrained", "read_state_dict",
           "require_weights_file"]
_UNUSED_NORM = frozenset({"norm.weight", "norm.bias"})  # a ViT pooling into fc_norm has norm = Identity (section 1)


@dataclass(frozen=True)
class LoadReport:
    """What loading a checkpoint did; goes into run.json and the fine-tuned checkpoint."""

    path: str
    format: str
    missing: tuple[str, ...]  # model keys the file did not fill: the fresh head (and fc_norm for avg pooling)
    unexpected: tuple[str, ...]  # file keys the model did not take: at most the unused final norm of a ViT
    dropped: tuple[str, ...]  # file keys dropped on purpose: decoder_*, mask_token, projector, momentum encoder, head
    resized: tuple[str, ...]  # tensors resampled to the model's grid, e.g. ("pos_embed",)

    def as_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


def detect_format(path: Path) -> str:
    """mae, moco-v3, timm, safetensors or bit-npz, from the magic bytes and, for torch files, the content."""
    path = _existing(Path(path))
    container = sniff_container(path)
    if container == NPZ_FILE:
        if STEM_KEY not in npz_shapes(path):
            raise WeightsError(f"a numpy .npz without the BiT stem kernel {STEM_KEY}: not a BiT checkpoint", file=path)
        return BIT_NPZ
    if container == SAFETENSORS_FILE:
        return SAFETENSORS
    checkpoint = load_torch(path)
    state, where = unwrap(checkpoint, path)
    return content_format(checkpoint, state, where)


def read_state_dict(path: Path, fmt: str = "auto") -> tuple[dict[str, torch.Tensor], str, tuple[str, ...]]:
    """The encoder's timm-named state dict, the format (``fmt`` unless auto) and the keys deliberately dropped."""
    path = _existing(Path(path))
    if fmt != "auto" and fmt not in FORMATS:
        raise WeightsError(f"unknown weight format {fmt!r}; known: auto, {', '.join(FORMATS)}", file=path)
    container = _container(path, fmt)
    if container == NPZ_FILE:
        return read_bit_npz(path), BIT_NPZ, ()
    if container == SAFETENSORS_FILE:
        checkpoint: object = {}
        state, where = load_safetensors(path), ""
    else:
        checkpoint = load_torch(path)
        state, where = unwrap(checkpoint, path)
    content = content_format(checkpoint, state, where)
    state, dropped = select_encoder(state, content, fmt, path)
    detected = SAFETENSORS if container == SAFETENSORS_FILE else content  # as detect_format says
    return state, (detected if fmt == "auto" else fmt), dropped


def load_pretrained(model: nn.Module, path: Path, fmt: str, *, model_name: str = "") -> LoadReport:
    """Load the checkpoint at ``path`` into ``model`` (built with its final head) and check the exact key sets.

    The ViT position table is resampled when the file's grid differs (another input size); every other shape
    difference is an error. WeightsError names the file, the model and the offending keys.
    """
    try:
        return _load(model, _existing(Path(path)), fmt)
    except WeightsError as err:
        if not model_name:
            raise
        raise WeightsError(f"model {model_name!r}: {err.problem}", file=err.file, keys=err.keys,
                           hint=err.hint) from err


def require_weights_file(spec: ModelSpec, path: str | None) -> Path | None:
    """The weights file of ``spec`` (None for a scratch baseline); a folder holding ``spec.files`` is accepted.

    The error says which model needs which file and where its public weights are published.
    """
    if spec.weight_format == "none":
        if path:
            raise WeightsError(f"model {spec.name!r} is a scratch baseline (random initialisation) and takes no "
                               "weights file; remove it from the config", file=path)
        return None
    needs = f"model {spec.name!r} ({spec.display_name}) needs its pre-trained weights " \
            f"{spec.files or 'file'} (format {spec.weight_format})"
    hint = f"public weights: {spec.published_at}. The engine never downloads: fetch the file once and give its path."
    if not path:
        raise WeightsError(f"{needs}, but no weights file was given", hint=hint)
    candidate = Path(path).expanduser()
    if candidate.is_dir() and spec.files and (candidate / spec.files).exists():
        candidate = candidate / spec.files
    if candidate.is_dir() and (candidate / "saved_model.pb").is_file():
        raise WeightsError(f"{needs}; this folder is a TensorFlow SavedModel, which must first be converted to a "
                           "BiT .npz", file=candidate, hint="run_experiments.py convert-remedis "
                                                            "(engine.models.remedis.convert_remedis_dir)")
    if not candidate.is_file():
        raise WeightsError(f"{needs}, but the file does not exist", file=candidate, hint=hint)
    return candidate


def _load(model: nn.Module, path: Path, fmt: str) -> LoadReport:
    """load_pretrained without the model name in its errors."""
    head_keys = classifier_keys(model)
    if fmt == "none":
        raise WeightsError("weight format 'none' means random initialisation; there is nothing to load", file=path)
    if _container(path, fmt) == NPZ_FILE:
        dropped = load_bit_npz(model, path, head_keys)
        return LoadReport(str(path), BIT_NPZ, tuple(sorted(head_keys)), (), dropped, ())
    state, used, dropped = read_state_dict(path, fmt)
    prefix = classifier_prefix(model)
    heads = sorted(key for key in state if prefix and key.startswith(prefix))  # the classifier is always fresh
    for key in heads:
        del state[key]
    resized = resize_pos_embed(model, state, path)
    check_shapes(model, state, path)
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = tuple(sorted(result.missing_keys)), tuple(sorted(result.unexpected_keys))
    check_key_sets(model, state, missing, unexpected, path, head_keys)
    return LoadReport(str(path), used, missing, unexpected, tuple(dropped) + tuple(heads), resized)


def classifier_prefix(model: nn.Module) -> str:
    """'head.' (ViT), 'head.fc.' (ResNetV2), 'fc.' (ResNet): the module ``get_classifier`` returns, as a prefix."""
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        return ""
    classifier = get_classifier()
    return next((f"{name}." for name, module in model.named_modules() if module is classifier and name), "")


def classifier_keys(model: nn.Module) -> set[str]:
    """The model's head tensors (none when built with num_classes=0)."""
    prefix = classifier_prefix(model)
    return {key for key in model.state_dict() if prefix and key.startswith(prefix)}


def resize_pos_embed(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> tuple[str, ...]:
    """Resample a ViT's pos_embed from the file's square grid to the model's (section 2: same as Medical MAE)."""
    table, own = state.get("pos_embed"), getattr(model, "pos_embed", None)
    if table is None or not isinstance(own, torch.Tensor) or table.shape == own.shape:
        return ()
    prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    side = isqrt(max(table.shape[1] - prefix, 0)) if table.ndim == 3 else 0
    if table.ndim != 3 or side * side != table.shape[1] - prefix or side == 0 or table.shape[2] != own.shape[2]:
        return ()  # not a square grid of the same width: check_shapes reports it with the other tensors
    grid = list(model.patch_embed.grid_size)
    state["pos_embed"] = resample_abs_pos_embed(table, new_size=grid, old_size=[side, side],
                                                num_prefix_tokens=prefix)
    return ("pos_embed",)


def check_shapes(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """load_state_dict raises on size mismatches even with strict=False; fail first, naming keys and shapes."""
    own = model.state_dict()
    wrong = {key: f"{key}: file {tuple(value.shape)}, model {tuple(own[key].shape)}" for key, value in
             state.items() if key in own and value.shape != own[key].shape}
    if wrong:
        shown = "; ".join(wrong[key] for key in sorted(wrong)[:5])
        raise WeightsError(f"{len(wrong)} tensor(s) differ in shape between the file and the model (another size?)",
                           file=path, keys=wrong, hint=shown)


def check_key_sets(model: nn.Module, state: dict[str, torch.Tensor], missing: tuple[str, ...],
                   unexpected: tuple[str, ...], path: Path, head_keys: set[str]) -> None:
    """Missing must be exactly the fresh head (+ fc_norm when the file has none); unexpected at most the final norm
    a ViT with avg pooling replaces by fc_norm (section 1 'Expected load result')."""
    fc_norm = {key for key in model.state_dict() if key.startswith("fc_norm.")}
    expected_missing = head_keys | (fc_norm - set(state))
    allowed_unexpected = _UNUSED_NORM if fc_norm and isinstance(getattr(model, "norm", None), nn.Identity) else set()
    lacking = set(missing) - expected_missing
    if lacking:
        raise WeightsError(f"the file lacks {len(lacking)} tensor(s) the model needs (another architecture?)",
                           file=path, keys=lacking)
    spare = set(unexpected) - allowed_unexpected
    if spare:
        raise WeightsError(f"the file has {len(spare)} tensor(s) the model has no place for", file=path, keys=spare)
    filled = expected_missing - set(missing)
    if filled:  # cannot happen while heads are dropped; keeps the assertion exact if that ever changes
        raise WeightsError(f"expected missing keys were loaded: {describe_keys(filled)}", file=path)


def _container(path: Path, fmt: str) -> str:
    """The file's container, checked against ``fmt``: bit-npz files are .npz archives and only they are."""
    container = sniff_container(path)
    if (container == NPZ_FILE) != (fmt == BIT_NPZ) and fmt != "auto":
        found = "a numpy .npz" if container == NPZ_FILE else f"a {container} file"
        raise WeightsError(f"weight format {fmt!r} does not match the file, which is {found}", file=path)
    return container


def _existing(path: Path) -> Path:
    """``path`` if it is a file; WeightsError otherwise."""
    if not path.is_file():
        raise WeightsError("checkpoint file not found" if not path.exists() else "checkpoint path is not a file",
                           file=path)
    return path
