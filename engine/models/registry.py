"""Registry of the foundation models the paper compares (Table 1) and the scratch baselines.

Each entry names the timm architecture, the pre-training facts that flow into ``run.json`` (issue B), how its
weights are stored on disk, and the input statistics its fine-tuning uses. Formats and normalisation follow
shared/notes/formats.md sections 1-6; the paper's fine-tuning epochs are section 3.2 of the paper.

Small variants (``vit_tiny_patch16_224``, ``resnet18``-sized BiT layouts) go through the same paths: a config may
override ``architecture`` as long as it stays in the entry's family (checked by ``check_architecture``).
"""

from __future__ import annotations

from dataclasses import dataclass

VIT, RESNET = "ViT", "ResNet"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
MEDICAL_MAE_STATS = ((0.5056,) * 3, (0.252,) * 3)  # formats.md section 2, Medical MAE fine-tuning statistics
BIT_STATS = ((0.5,) * 3, (0.5,) * 3)  # inputs in [-1, 1] (big_transfer train.py; REMEDIS bit.py 2x - 1)
NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": IMAGENET, "medical-mae": MEDICAL_MAE_STATS, "bit": BIT_STATS,
}
# Checkpoint formats a loader exists for (engine/models/weights.py); "none" = random initialisation.
WEIGHT_FORMATS = ("mae", "moco-v3", "timm", "safetensors", "bit-npz", "none")


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry; every field but the checkpoint path is fixed by the model's publication."""

    name: str  # registry key, also run.json "model"
    display_name: str  # label in the paper's tables and figures
    architecture: str  # timm model name of the paper's size
    family: str  # ViT | ResNet: recipe defaults (batch 128 / 32, layer decay only for ViTs)
    pretraining_method: str  # mae | moco-v3 | supervised | simclr | none
    pretraining_type: str  # masked | contrastive | supervised | none
    pretraining_data: str  # as printed in the paper's Table 1
    domain: str  # natural | medical | none
    weight_format: str  # one of WEIGHT_FORMATS
    normalisation: str  # key of NORMALISATIONS used at fine-tuning
    input_size: int  # native input size of the pre-training
    finetune_epochs: int  # paper section 3.2 (scratch baselines: our choice, docs/engine.md)
    published_at: str  # where the public weights are (the engine never downloads them)
    files: str = ""  # file name(s) of the public release


_MAE_URL = "github.com/facebookresearch/mae (README, 'Pre-trained checkpoints': ViT-Base)"
REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("mae", "MAE", "vit_base_patch16_224", VIT, "mae", "masked", "ImageNet-1K", "natural", "mae",
              "imagenet", 224, 200, _MAE_URL, "mae_pretrain_vit_base.pth"),
    ModelSpec("medical-mae", "MAE (M)", "vit_base_patch16_224", VIT, "mae", "masked",
              "ChestXray14, CheXpert, MIMIC-CXR", "medical", "mae", "medical-mae", 224, 100,
              "github.com/lambert-x/medical_mae (README, pre-trained ViT-B/16 on 0.5M X-rays)",
              "vit-b_CXR_0.5M_mae.pth"),
    ModelSpec("moco-v3", "MoCov3", "vit_base_patch16_224", VIT, "moco-v3", "contrastive", "ImageNet-1K", "natural",
              "moco-v3", "imagenet", 224, 200, "github.com/facebookresearch/moco-v3 (CONFIG.md, ViT-Base 300 epochs)",
              "vit-b-300ep.pth.tar"),
    ModelSpec("medical-moco-v3", "MoCov3 (M)", "vit_base_patch16_224", VIT, "moco-v3", "contrastive",
              "ChestXray14 + CheXpert", "medical", "moco-v3", "imagenet", 224, 100,
              "this project: run_experiments.py pretrain with a MoCo v3 config (issue E)", "encoder.pth"),
    ModelSpec("bit", "BiT", "resnetv2_152x2_bit", RESNET, "supervised", "supervised", "ImageNet-21K", "natural",
              "bit-npz", "bit", 224, 30, "github.com/google-research/big_transfer (README, BiT-M R152x2)",
              "BiT-M-R152x2.npz"),
    ModelSpec("remedis", "REMEDIS", "resnetv2_152x2_bit", RESNET, "simclr", "contrastive", "CheXpert, MIMIC-CXR",
              "medical", "bit-npz", "bit", 448, 20,
              "physionet.org/content/medical-ai-research-foundation/1.0.0/ (credentialed; convert with "
              "run_experiments.py convert-remedis)", "cxr-152x2-remedis-m"),
    ModelSpec("scratch-vit", "Scratch (ViT)", "vit_base_patch16_224", VIT, "none", "none", "none", "none", "none",
              "imagenet", 224, 100, "no weights: random initialisation"),
    ModelSpec("scratch-resnet", "Scratch (ResNet)", "resnetv2_152x2_bit", RESNET, "none", "none", "none", "none",
              "none", "bit", 224, 30, "no weights: random initialisation"),
)}


class RegistryError(ValueError):
    """A model name, architecture or normalisation the registry does not know."""


def get_spec(name: str) -> ModelSpec:
    """The registry entry called ``name``; RegistryError listing the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise RegistryError(f"unknown model {name!r}; registered: {', '.join(REGISTRY)}") from None


def family_of(architecture: str) -> str:
    """ViT or ResNet from a timm model name (the two families the recipe distinguishes)."""
    if architecture.startswith(("vit_", "deit_")):
        return VIT
    if architecture.startswith(("resnetv2_", "resnet")):
        return RESNET
    raise RegistryError(f"architecture {architecture!r} is neither a timm ViT (vit_*) nor a ResNet (resnet*)")


def check_architecture(spec: ModelSpec, architecture: str) -> str:
    """``architecture`` if it belongs to ``spec``'s family (so 'pre-training vs scratch' keeps one architecture)."""
    family = family_of(architecture)
    if family != spec.family:
        raise RegistryError(f"model {spec.name!r} is a {spec.family}; architecture {architecture!r} is a {family}")
    if spec.weight_format == "bit-npz" and not architecture.startswith("resnetv2_"):
        raise RegistryError(f"model {spec.name!r} loads BiT .npz weights, which need a timm resnetv2_* architecture, "
                            f"not {architecture!r}")
    return architecture


def normalisation_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of a normalisation name."""
    try:
        return NORMALISATIONS[name]
    except KeyError:
        raise RegistryError(f"unknown normalisation {name!r}; choose one of {', '.join(NORMALISATIONS)}") from None


def run_facts(spec: ModelSpec) -> dict[str, object]:
    """The run.json fields that come from the registry entry."""
    return {
        "model": spec.name, "display_name": spec.display_name, "architecture_family": spec.family,
        "pretraining_method": spec.pretraining_method, "pretraining_type": spec.pretraining_type,
        "pretraining_data": spec.pretraining_data, "domain": spec.domain,
    }
