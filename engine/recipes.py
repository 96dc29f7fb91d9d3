"""Fine-tuning and linear-probing configs, and their resolution into one concrete recipe (torch-free).

Defaults are the paper's (section 3.2), after Medical MAE's fine-tuning recipe; where the paper and Medical MAE's
code disagree, the paper wins and the other value is one config key away (formats.md section 7, docs/engine.md):

- AdamW betas (0.9, 0.95) as the paper's text; Medical MAE's code uses torch's default (0.9, 0.999).
- layer-wise lr decay 0.55 for ViTs only (Medical MAE applies it to ``vit`` models only; on a BiT ResNet timm's
  52 layer groups would freeze the stem at a scale of 5.7e-14).
- DropPath 0.2 for every model (the paper states 0.2 without naming models; Medical MAE's CNN example uses 0).
- Linear probing follows MAE's recipe: BatchNorm without affine before the head, LARS, base lr 0.1, weight
  decay 0, 90 epochs with 10 warm-up epochs, global batch 16384, crop + flip without RandAugment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.data.labels import DEFAULT_EVALUATION_POLICY, DEFAULT_TRAINING_POLICY, LABEL_POLICIES
from engine.models.registry import (
    VIT,
    ModelSpec,
    check_architecture,
    get_spec,
    normalisation_stats,
)

PAPER_RANDAUGMENT = "rand-m6-mstd0.5-inc1"  # Medical MAE --aa (formats.md section 7)
AUGMENTATIONS = ("timm", "batched", "none")  # timm = PIL in the loader; batched = engine.train.gpu_augment


@dataclass(frozen=True)
class DataConfig:
    cohort: str  # cohort.parquet written by `prepare`
    cache: str  # image cache folder written by `cache`
    subsets: str | None = None  # subsets.parquet written by `subsets`; needed for balanced training
    balancing: Literal["standard", "balanced"] = "standard"  # balanced = the 'balanced-train' set (paper 4.3)
    validation_set: Literal["validate", "balanced-validate"] = "validate"  # checkpoint selection, never test
    training_label_policy: str = DEFAULT_TRAINING_POLICY
    evaluation_label_policy: str = DEFAULT_EVALUATION_POLICY
    predict_splits: tuple[str, ...] = ("validate", "test")
    workers: int = 4  # DataLoader worker processes per rank
    max_images: int | None = None  # first N images of each split (tests and the demo only; recorded in run.json)


@dataclass(frozen=True)
class ModelConfig:
    name: str  # registry entry (engine/models/registry.py)
    architecture: str | None = None  # timm name; None = the registry's (a smaller one of the same family for demos)
    checkpoint: str | None = None  # pre-trained weights file; required unless the entry is a scratch baseline
    checkpoint_format: str = "auto"  # mae | moco-v3 | timm | safetensors | bit-npz | auto (from the file)
    global_pool: Literal["avg", "token"] = "avg"  # ViTs: Medical MAE's global pooling + fc_norm (formats.md 1)
    normalisation: str | None = None  # imagenet | medical-mae | bit; None = the registry's
    input_size: int = 224
    drop_path: float = 0.2


@dataclass(frozen=True)
class TrainConfig:
    mode: Literal["finetune", "linear-probe"] = "finetune"
    epochs: int | None = None  # None: paper per model (registry) or 90 for a linear probe
    batch_size: int | None = None  # GLOBAL batch, split across ranks; None: 128 ViT / 32 ResNet / 16384 probe
    blr: float | None = None  # base lr per 256 images; None: 2.5e-4 fine-tuning / 0.1 probe
    min_lr: float | None = None  # None: 1e-5 fine-tuning / 0 probe
    warmup_epochs: float | None = None  # None: 5 fine-tuning / 10 probe
    weight_decay: float | None = None  # None: 0.05 fine-tuning / 0 probe
    betas: tuple[float, float] = (0.9, 0.95)
    layer_decay: float | None = None  # None: 0.55 for ViTs, off for ResNets; 1.0 = off
    optimizer: str | None = None  # timm optimizer name; None: adamw fine-tuning / lars probe
    randaugment: str | None = PAPER_RANDAUGMENT  # fine-tuning only; the probe uses none (MAE)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    augmentation: Literal["timm", "batched", "none"] = "timm"  # "none" = centre crop only (a named test variant)
    precision: Literal["bf16", "fp32"] = "bf16"  # bf16 autocast on GPU; CPU always runs fp32
    channels_last: bool = True  # CNNs on GPU
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # torch.use_deterministic_algorithms + no cudnn benchmark
    seed: int = 0
    steps_per_epoch: int | None = None  # cap (tests and the demo; recorded)
    eval_batch_size: int = 256
    log_every: int = 50


@dataclass(frozen=True)
class FinetuneConfig:
    run_id: str  # name of the run in the results store
    out_dir: str  # checkpoints, log.jsonl, resolved config
    data: DataConfig
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    store: str | None = None  # results store the predict stage writes into
    tags: dict[str, str] = field(default_factory=dict)  # free-form run.json tags (study names ...)
    display_name: str | None = None  # run.json display_name; None = the registry's (e.g. 'MAE (M, CX14)')


@dataclass(frozen=True)
class Recipe:
    """Every value of a run made concrete; saved beside the outputs and in run.json."""

    architecture: str
    family: str
    epochs: int
    batch_size: int
    lr: float  # effective lr = blr x batch / 256 (MAE convention; both are logged)
    blr: float
    min_lr: float
    warmup_epochs: float
    weight_decay: float
    betas: tuple[float, float]
    layer_decay: float | None
    optimizer: str
    randaugment: str | None
    normalisation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _finetune_defaults(spec: ModelSpec, family: str) -> dict:
    return {"epochs": spec.finetune_epochs, "batch_size": 128 if family == VIT else 32, "blr": 2.5e-4,
            "min_lr": 1e-5, "warmup_epochs": 5.0, "weight_decay": 0.05, "optimizer": "adamw",
            "layer_decay": 0.55 if family == VIT else None}


def _probe_defaults() -> dict:
    return {"epochs": 90, "batch_size": 16384, "blr": 0.1, "min_lr": 0.0, "warmup_epochs": 10.0,
            "weight_decay": 0.0, "optimizer": "lars", "layer_decay": None}


def resolve_recipe(config: FinetuneConfig) -> Recipe:
    """The concrete recipe of ``config``: registry and paper defaults filled in, derived values computed."""
    spec = get_spec(config.model.name)
    architecture = check_architecture(spec, config.model.architecture or spec.architecture)
    probe = config.train.mode == "linear-probe"
    defaults = _probe_defaults() if probe else _finetune_defaults(spec, spec.family)
    train = config.train
    chosen = {key: getattr(train, key) if getattr(train, key) is not None else value for key, value in defaults.items()}
    if chosen["layer_decay"] == 1.0:
        chosen["layer_decay"] = None
    normalisation = config.model.normalisation or spec.normalisation
    mean, std = normalisation_stats(normalisation)
    return Recipe(
        architecture=architecture, family=spec.family, epochs=int(chosen["epochs"]),
        batch_size=int(chosen["batch_size"]), lr=chosen["blr"] * chosen["batch_size"] / 256, blr=chosen["blr"],
        min_lr=chosen["min_lr"], warmup_epochs=chosen["warmup_epochs"], weight_decay=chosen["weight_decay"],
        betas=train.betas, layer_decay=chosen["layer_decay"], optimizer=chosen["optimizer"],
        randaugment=None if probe else train.randaugment, normalisation=normalisation, mean=mean, std=std,
    )


def check_policies(config: FinetuneConfig) -> None:
    """Label policy names are known (ValueError naming the key otherwise)."""
    for key in ("training_label_policy", "evaluation_label_policy"):
        value = getattr(config.data, key)
        if value not in LABEL_POLICIES:
            raise ValueError(f"data.{key}: unknown label policy {value!r}; choose one of {', '.join(LABEL_POLICIES)}")
