"""Images processed and GPU-hours of each job, for ``run --dry-run``, from the throughputs of docs/performance.md.

Rates are images/s on one H200 (bf16) for ViT-B/16 and BiT R152x2 at 224 px, as measured for this project
(docs/performance.md "Engine"): the engine's fine-tuning loop 1,470 (ViT-B, compiled, batched augmentation) and 233
(R152x2); prediction 3,150 (ViT-B) and 700 (R152x2: 3 x its training step, not measured); pre-training raw steps
3,081 (MAE, ViT-B) and 1,016 (MoCo v3, ViT-B; issue E). Other sizes are scaled by a rough compute ratio
(tiny 12x, small 4x faster than base) and by (224 / input)^2; treat those as order-of-magnitude figures.
Counts are the paper's cohort (76,205 / 12,673 / 38,240) and pools (NIH 112,120; CheXpert 191,027 frontal) for
real data, and the generator's expected sizes for synthetic data.
"""

from __future__ import annotations

from engine.study.jobs import Job

H200_RATES = {  # (stage, family) -> images/s of the base size at 224 px
    ("finetune", "vit"): 1470.0, ("finetune", "resnet"): 233.0,
    ("predict", "vit"): 3150.0, ("predict", "resnet"): 700.0,
    ("pretrain-mae", "vit"): 3081.0, ("pretrain-moco-v3", "vit"): 1016.0,
}
SIZE_SPEEDUP = {"tiny": 12.0, "small": 4.0, "base": 1.0, "large": 1 / 3.3, "50x1": 4.0, "152x2": 1.0}
PAPER_SPLIT = {"train": 76_205, "validate": 12_673, "test": 38_240}
POOL_SIZES = {"nih": 112_120, "chexpert": 191_027}
SYNTH_IMAGES_PER_PATIENT = 1.5  # frontal images per synthetic CheXpert patient (engine/data/synth.py)
SYNTH_SPLIT = {"train": 0.58, "validate": 0.10, "test": 0.29}


def _rate(stage: str, architecture: str, input_size: int) -> float | None:
    family = "vit" if architecture.startswith("vit") else "resnet"
    base = H200_RATES.get((stage, family))
    if base is None:
        return None
    speedup = next((v for k, v in SIZE_SPEEDUP.items() if k in architecture), 1.0)
    return base * speedup * (224 / input_size) ** 2


def _split_sizes(study) -> dict[str, int]:
    if study.synthetic is None:
        return PAPER_SPLIT
    images = study.synthetic.chexpert_patients * SYNTH_IMAGES_PER_PATIENT
    return {split: int(images * share) for split, share in SYNTH_SPLIT.items()}


def _finetune_images(config: dict, study) -> tuple[int, int]:
    """(training images over all epochs incl. validation passes, images scored by predict)."""
    sizes = _split_sizes(study)
    data, train = config["data"], config["train"]
    cap = data.get("max_images") or 10**12
    n_train, n_val = min(sizes["train"], cap), min(sizes["validate"], cap)
    if data["balancing"] == "balanced":
        n_train = n_train // 3  # race-balanced undersampling keeps about 3 x the smallest race group
    batch = train.get("batch_size") or (16384 if train["mode"] == "linear-probe" else 128)
    if train.get("steps_per_epoch"):
        n_train = min(n_train, train["steps_per_epoch"] * batch)
    epochs = train.get("epochs") or 100
    return epochs * (n_train + n_val), n_val + min(sizes["test"], cap)


def _pretrain_images(config: dict, study) -> int:
    sources = config["data"]["caches"].keys()
    if study.synthetic is None:
        pool = sum(POOL_SIZES[s] for s in sources)
    else:
        sizes = {"nih": study.synthetic.nih_images, "chexpert": study.synthetic.chexpert_patients * 1.5}
        pool = int(sum(sizes[s] for s in sources))
    cap = config["data"].get("max_images") or pool
    epochs = config["train"]["epochs"]
    per_epoch = min(pool, cap)
    steps = config["train"].get("steps_per_epoch")
    if steps and config["train"].get("batch_size"):
        per_epoch = min(per_epoch, steps * config["train"]["batch_size"])
    return epochs * per_epoch


def estimate(job: Job, study) -> tuple[int | None, float | None]:
    """(images processed, GPU-hours on one H200) of ``job``; (None, None) for CPU-only jobs."""
    if job.stage == "finetune":
        images, _ = _finetune_images(job.config, study)
        rate = _rate("finetune", _architecture(job.config), job.config["model"]["input_size"])
    elif job.stage == "predict":
        _, images = _finetune_images(job.config, study)
        rate = _rate("predict", _architecture(job.config), job.config["model"]["input_size"])
    elif job.stage == "pretrain":
        images = _pretrain_images(job.config, study)
        rate = _rate(f"pretrain-{job.config['method']}", job.config["architecture"], job.config["input_size"])
    else:
        return None, None
    return images, (images / rate / 3600 if rate else None)


def _architecture(config: dict) -> str:
    from engine.models.registry import get_spec

    return config["model"]["architecture"] or get_spec(config["model"]["name"]).architecture
