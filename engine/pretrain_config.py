"""Self-supervised pre-training configs (MAE, MoCo v3) and their resolution into one concrete recipe (torch-free).

Defaults are the paper's (section 3.1: ViT-B/16, 800 epochs, the augmentations of Hosseinzadeh Taher et al. 2021,
"the same pre-training configurations specified in the official papers", the lowest-loss checkpoint of the final
5 % of epochs) and, for what the paper defers to the official papers, those papers' published settings:

- MAE (He et al. 2022, appendix A.1, Table 8): AdamW betas (0.9, 0.95), base lr 1.5e-4 x batch / 256, weight
  decay 0.05 (not on biases and norms), global batch 4096, 40 warm-up epochs then a half cosine to 0, mask ratio
  0.75, a 512-d 8-block decoder, normalised-pixel target.
- MoCo v3 (Chen et al. 2021, section 4 and appendix; ViT-B settings of the official CONFIG.md): AdamW with
  torch's betas (0.9, 0.999), base lr 1.5e-4 x batch / 256, weight decay 0.1 on every parameter, global batch
  4096, 40 warm-up epochs then a half cosine to 0, temperature 0.2, momentum 0.99 rising to 1 on a cosine, 3-layer
  projector / 2-layer predictor of 4096 hidden and 256 output units, frozen random patch projection.

Choices the papers leave open are documented in docs/engine-pretraining.md and recorded in pretraining.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from engine.models.registry import family_of, normalisation_stats

METHODS = ("mae", "moco-v3")
# RandomResizedCrop area range when augment.crop_scale is None: each method's official pre-training transform
# (MAE main_pretrain.py: 0.2-1; MoCo v3 main_moco.py: 0.08-1). The paper only says "cropping and resizing".
CROP_SCALE = {"mae": (0.2, 1.0), "moco-v3": (0.08, 1.0)}
METHOD_DEFAULTS = {
    "mae": {"batch_size": 4096, "weight_decay": 0.05, "betas": (0.9, 0.95), "decay_norm_and_bias": False},
    "moco-v3": {"batch_size": 4096, "weight_decay": 0.1, "betas": (0.9, 0.999), "decay_norm_and_bias": True},
}


@dataclass(frozen=True)
class PoolDataConfig:
    pool: str  # pool.parquet written by `prepare pool` (dataset, image_id, patient_id, sex, race, ...)
    caches: dict[str, str]  # pool dataset name -> image cache folder built from that dataset's image root
    report: str | None = None  # pool report json; None = <pool stem>_report.json beside the pool when present
    workers: int = 4  # DataLoader worker processes per rank (the loader only reads rows and draws a few numbers)
    max_images: int | None = None  # first N pool images (tests and the demo only; recorded)


@dataclass(frozen=True)
class AugmentConfig:
    """The paper's augmentation (after Hosseinzadeh Taher et al. 2021), drawn per image, applied as one affine warp."""

    crop_scale: tuple[float, float] | None = None  # area range of the random crop; None = the method's (CROP_SCALE)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect-ratio range (torchvision / timm default)
    hflip: float = 0.5  # probability of a horizontal flip (paper)
    rotation: float = 7.0  # rotation angle drawn uniformly from [-rotation, +rotation] degrees (paper)
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"  # MAE's RandomResizedCrop(interpolation=3)
    normalisation: str = "imagenet"  # both official codes normalise with ImageNet statistics


@dataclass(frozen=True)
class MaeConfig:
    mask_ratio: float = 0.75  # MAE paper; Medical MAE used 0.9
    decoder_dim: int = 512  # MAE "dec512d8b"
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True  # per-patch normalised pixel target (MAE section 3, Table 1d)


@dataclass(frozen=True)
class MocoConfig:
    dim: int = 256  # output of projector and predictor
    mlp_dim: int = 4096  # hidden width of projector and predictor
    temperature: float = 0.2  # ViT setting of MoCo v3
    momentum: float = 0.99  # start value; rises to 1 on a half cosine over training when momentum_cosine
    momentum_cosine: bool = True
    frozen_patch_projection: bool = True  # MoCo v3 section 5 "random patch projection" (stability trick)


@dataclass(frozen=True)
class PretrainTrainConfig:
    epochs: int = 800  # paper section 3.1 (Table 4 studies 200 / 400 / 800)
    batch_size: int | None = None  # GLOBAL batch, split across ranks; None: 4096 (both official papers)
    blr: float = 1.5e-4  # base lr per 256 images (both papers)
    min_lr: float = 0.0  # end of the cosine (both official codes)
    warmup_epochs: float = 40.0  # both papers
    weight_decay: float | None = None  # None: 0.05 MAE / 0.1 MoCo v3
    betas: tuple[float, float] | None = None  # None: (0.9, 0.95) MAE / (0.9, 0.999) MoCo v3
    decay_norm_and_bias: bool | None = None  # None: False for MAE (its param groups), True for MoCo v3 (plain AdamW)
    selection_window: float = 0.05  # the lowest-loss epoch among the final 5 % of epochs is selected (paper)
    precision: Literal["bf16", "fp32"] = "bf16"  # bf16 autocast on GPU; CPU always runs fp32
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # torch.use_deterministic_algorithms
    seed: int = 0
    steps_per_epoch: int | None = None  # cap (tests and the demo; recorded)
    log_every: int = 50


@dataclass(frozen=True)
class PretrainConfig:
    run_id: str  # name of the pre-training run (pretraining.json, logs)
    method: Literal["mae", "moco-v3"]
    out_dir: str  # encoder.pth, pretraining.json, last.pt, log.jsonl, resolved config, pretrain.json
    data: PoolDataConfig
    architecture: str = "vit_base_patch16_224"  # timm ViT (paper: ViT-B/16 for both methods)
    input_size: int = 224  # side of the crops fed to the encoder (paper)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mae: MaeConfig = field(default_factory=MaeConfig)
    moco: MocoConfig = field(default_factory=MocoConfig)
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)
    tags: dict[str, str] = field(default_factory=dict)  # free-form (study names: Table 2 / 4 / 5 ...)


@dataclass(frozen=True)
class PretrainRecipe:
    """Every value of a pre-training run made concrete; saved in pretrain.json and pretraining.json."""

    method: str
    architecture: str
    epochs: int
    batch_size: int
    lr: float  # effective lr = blr x batch / 256 (both are logged)
    blr: float
    min_lr: float
    warmup_epochs: float
    weight_decay: float
    betas: tuple[float, float]
    decay_norm_and_bias: bool
    crop_scale: tuple[float, float]
    normalisation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    views: int  # augmented views per image: 1 (MAE) or 2 (MoCo v3)
    selection_epochs: int  # how many final epochs the selection window holds


def selection_epochs(epochs: int, window: float) -> int:
    """Number of final epochs in the selection window: ceil(window x epochs), at least 1 (800 x 5 % = 40)."""
    return max(1, min(epochs, math.ceil(window * epochs - 1e-9)))


def resolve_pretrain(config: PretrainConfig) -> PretrainRecipe:
    """The concrete recipe of ``config`` (ValueError naming the key for values no run could use)."""
    _check(config)
    defaults = METHOD_DEFAULTS[config.method]
    train = config.train
    chosen = {key: getattr(train, key) if getattr(train, key) is not None else value
              for key, value in defaults.items()}
    mean, std = normalisation_stats(config.augment.normalisation)
    batch = int(chosen["batch_size"])
    return PretrainRecipe(
        method=config.method, architecture=config.architecture, epochs=train.epochs, batch_size=batch,
        lr=train.blr * batch / 256, blr=train.blr, min_lr=train.min_lr, warmup_epochs=train.warmup_epochs,
        weight_decay=chosen["weight_decay"], betas=tuple(chosen["betas"]),
        decay_norm_and_bias=chosen["decay_norm_and_bias"],
        crop_scale=tuple(config.augment.crop_scale or CROP_SCALE[config.method]),
        normalisation=config.augment.normalisation, mean=mean, std=std,
        views=2 if config.method == "moco-v3" else 1,
        selection_epochs=selection_epochs(train.epochs, train.selection_window),
    )


def _check(config: PretrainConfig) -> None:
    if config.method not in METHODS:
        raise ValueError(f"method: must be one of {', '.join(METHODS)}, got {config.method!r}")
    if family_of(config.architecture) != "ViT":
        raise ValueError(f"architecture: pre-training needs a timm ViT (vit_*), got {config.architecture!r}")
    train, mae = config.train, config.mae
    problems = {
        "train.epochs": train.epochs < 1,
        "train.selection_window": not 0.0 < train.selection_window <= 1.0,
        "train.batch_size": train.batch_size is not None and train.batch_size < 1,
        "mae.mask_ratio": not 0.0 < mae.mask_ratio < 1.0,
        "mae.decoder_heads": mae.decoder_dim % mae.decoder_heads != 0,
        "moco.momentum": not 0.0 <= config.moco.momentum <= 1.0,
        "moco.temperature": config.moco.temperature <= 0.0,
        "augment.hflip": not 0.0 <= config.augment.hflip <= 1.0,
        "augment.rotation": config.augment.rotation < 0.0,
        "data.caches": not config.data.caches,
    }
    bad = [key for key, wrong in problems.items() if wrong]
    if bad:
        raise ValueError(f"invalid pre-training config value(s): {', '.join(bad)} (see engine/pretrain_config.py)")
