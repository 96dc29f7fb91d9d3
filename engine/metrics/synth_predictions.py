"""A synthetic results store for demos, tests and benchmarks: a CheXpert-like cohort and the paper's model matrix.

Cohort: patients with 1-4 images, sex 59/41 (Male/Female), race 78/15/7 (White/Asian/Black), ages binned as in
engine/data/schema.py, splits validate and test in the paper's 12,673 : 38,240 proportion, the 14 raw CheXpert
labels (1 / 0 / -1 / blank) with the prevalences of engine/data/synth_model.py, higher for Black patients by that
model's ``black_shift``; No Finding is 1 when no other finding but Support Devices is present or uncertain.

Scores (y = the u-zeros target): ``sigmoid(logit(prevalence) + d (y - 0.5) + noise)`` with unit-variance noise, so
a subgroup's AUC is about Phi(d / sqrt 2). Noise is 70 % shared by all runs (hard images are hard for every model,
so run-to-run differences show the planted effects) and 30 % run-specific, each with a patient component. The
separation d = d(pathology) x quality(run) x race factor x sex factor. PLANTED EFFECTS, NOT RESULTS (they mirror the
directions reported by the paper so the demo looks like it): medical pre-training gives a higher mean AUC but a
weaker Black separation (larger race gaps), natural pre-training a slightly better Black subgroup, Female slightly
worse everywhere, balanced fine-tuning halves the race and sex effects at a small AUC cost, linear probing is worse
and less fair, and more pre-training data or epochs give higher AUC and smaller gaps. Which data the paper's epoch
study (Table 4) pre-trained on is unsaid; here ChestXray14.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from statistics import NormalDist

import numpy as np
import polars as pl

from engine.data.io import write_json, write_parquet
from engine.data.resample import glocker_original_set, per_pathology_test_sets
from engine.data.schema import AGE_BIN_LABELS, AGE_BIN_UPPER_EDGES, PATHOLOGIES
from engine.data.staging import staging_dir
from engine.data.synth_model import FINDING_MODELS, MALE_SHARE, RACE_MIX
from engine.metrics import store_schema as schema

STORE_MARKER = "store.json"
GENERATOR = "engine.metrics.synth_predictions.write_synthetic_store"
VALIDATE_PER_TEST = 12_673 / 38_240  # paper 3.3: validation and test split sizes
IMAGES_PER_PATIENT = {1: 0.15, 2: 0.2, 3: 0.25, 4: 0.4}  # mean 2.9 (paper: 127,118 images / 42,884 patients)
SHARED_NOISE, PATIENT_NOISE = 0.7, 0.3  # variance shares of the score noise
BASE_AUC = dict(zip(PATHOLOGIES, (0.87, 0.70, 0.85, 0.76, 0.77, 0.85, 0.72, 0.75, 0.70, 0.85, 0.88, 0.80, 0.75, 0.88),
                    strict=True))  # roughly CheXpert-like per-pathology AUCs of a good model
VIT, RESNET = ("vit_base_patch16_224", "ViT"), ("resnetv2_152x2_bit", "ResNet")


@dataclass(frozen=True)
class Spec:
    """One run: its run.json facts and its planted effects (separation multipliers)."""

    run_id: str
    model: str
    display_name: str
    arch: tuple[str, str]
    method: str
    ptype: str
    data: str
    domain: str
    epochs: int | None
    fraction: float | None
    study: str
    quality: float  # x d(pathology)
    black: float  # x d for Black patients
    female: float  # x d for Female patients
    asian: float = 1.0
    mode: str = "finetune"
    balancing: str = "standard"


_MEDICAL_MAE = "ChestXray14, CheXpert, MIMIC-CXR"
_BASE = (  # the paper's Table 1 models and the two scratch baselines
    Spec("mae", "mae", "MAE", VIT, "mae", "masked", "ImageNet-1K", "natural", None, 1.0, "foundation", 1.0, 1.03, 0.98),
    Spec("medical-mae", "medical-mae", "MAE (M)", VIT, "mae", "masked", _MEDICAL_MAE, "medical", None, 1.0,
         "foundation", 1.10, 0.84, 0.955),
    Spec("moco-v3", "moco-v3", "MoCov3", VIT, "moco-v3", "contrastive", "ImageNet-1K", "natural", None, 1.0,
         "foundation", 0.97, 1.02, 0.975),
    Spec("medical-moco-v3", "medical-moco-v3", "MoCov3 (M)", VIT, "moco-v3", "contrastive", "ChestXray14 + CheXpert",
         "medical", 800, 1.0, "foundation", 1.06, 0.89, 0.96),
    Spec("bit", "bit", "BiT", RESNET, "supervised", "supervised", "ImageNet-21K", "natural", None, 1.0, "foundation",
         0.99, 1.02, 0.975),
    Spec("remedis", "remedis", "REMEDIS", RESNET, "simclr", "contrastive", "CheXpert, MIMIC-CXR", "medical", None, 1.0,
         "foundation", 1.08, 0.87, 0.96, asian=1.01),
    Spec("scratch-vit", "scratch-vit", "Scratch (ViT)", VIT, "none", "none", "none", "none", None, None, "foundation",
         0.80, 0.92, 0.97),
    Spec("scratch-resnet", "scratch-resnet", "Scratch (ResNet)", RESNET, "none", "none", "none", "none", None, None,
         "foundation", 0.83, 0.92, 0.97),
)
_PRETRAINING = (  # MAE pre-trained on chest X-rays (paper Tables 2, 4, 5): (suffix, name, data, epochs, fraction, ...)
    ("cx14", "CX14", "ChestXray14", 800, 1.0, "pretraining-data", 1.02, 0.82, 0.952),
    ("cxpt", "CXPT", "CheXpert", 800, 1.0, "pretraining-data", 1.05, 0.85, 0.958),
    ("cx14-cxpt", "CX14 + CXPT", "ChestXray14 + CheXpert", 800, 1.0, "pretraining-data", 1.07, 0.88, 0.965),
    ("200ep", "200 epochs", "ChestXray14", 200, 1.0, "pretraining-epochs", 0.98, 0.78, 0.945),
    ("400ep", "400 epochs", "ChestXray14", 400, 1.0, "pretraining-epochs", 1.00, 0.81, 0.95),
    ("800ep", "800 epochs", "ChestXray14", 800, 1.0, "pretraining-epochs", 1.02, 0.84, 0.952),
    ("cxpt-30pct", "CXPT 30%", "CheXpert", 800, 0.3, "pretraining-fraction", 1.03, 0.81, 0.954),
)


def _shrink(factor: float, by: float) -> float:
    """Move a multiplier toward 1 (by < 1: smaller effect) or away from it (by > 1)."""
    return 1.0 + (factor - 1.0) * by


def run_specs() -> list[Spec]:
    """Every synthetic run, in a stable order: 16 fine-tuned (standard, balanced), 2 linear probes, 7 MAE studies."""
    specs = []
    for base in _BASE:
        specs.append(replace(base, run_id=f"{base.model}-standard"))
        specs.append(replace(base, run_id=f"{base.model}-balanced", balancing="balanced", quality=base.quality * 0.97,
                             black=_shrink(base.black, 0.5), asian=_shrink(base.asian, 0.5),
                             female=_shrink(base.female, 0.7)))
    for base in (_BASE[0], _BASE[2]):
        specs.append(replace(base, run_id=f"{base.model}-linear-probe", mode="linear-probe", study="linear-probe",
                             quality=base.quality * 0.85, black=base.black - 0.06, female=_shrink(base.female, 1.5)))
    for suffix, name, data, epochs, fraction, study, quality, black, female in _PRETRAINING:
        specs.append(Spec(f"mae-pt-{suffix}", "mae", f"MAE (M, {name})", VIT, "mae", "masked", data, "medical", epochs,
                          fraction, study, quality, black, female))
    return specs


RUN_IDS: tuple[str, ...] = tuple(s.run_id for s in run_specs())


def _patients(rng: np.random.Generator, n_images: int) -> np.ndarray:
    """Images per patient (1-4) summing to exactly ``n_images`` (the last patient is trimmed)."""
    counts = rng.choice(list(IMAGES_PER_PATIENT), size=n_images, p=list(IMAGES_PER_PATIENT.values()))
    total = np.cumsum(counts)
    last = int(np.searchsorted(total, n_images))
    counts = counts[:last + 1].copy()
    counts[-1] -= total[last] - n_images
    return counts


def _labels(rng: np.random.Generator, owner: np.ndarray, black: np.ndarray) -> np.ndarray:
    """Raw labels (N, 14): latent = patient + image normal (half each) against race-specific thresholds."""
    n, n_patients = owner.size, int(owner.max()) + 1
    raw = np.full((n, len(PATHOLOGIES)), np.nan)
    for j, name in enumerate(PATHOLOGIES[1:], start=1):
        m = FINDING_MODELS[name]
        z = math.sqrt(0.5) * rng.standard_normal(n_patients)[owner] + math.sqrt(0.5) * rng.standard_normal(n)
        present = NormalDist().inv_cdf(1 - m.prevalence) - m.black_shift * black
        uncertain = NormalDist().inv_cdf(1 - m.prevalence - m.uncertain) - m.black_shift * black
        said_no = rng.random(n) < m.negative  # the rest: reported 0.0 or left blank (synth.py)
        raw[:, j] = np.where(z > present, 1.0, np.where(z > uncertain, -1.0, np.where(said_no, 0.0, np.nan)))
    others = [j for j, p in enumerate(PATHOLOGIES) if p not in ("No Finding", "Support Devices")]
    raw[:, 0] = np.where(np.isin(raw[:, others], (1.0, -1.0)).any(axis=1), np.nan, 1.0)
    return raw


def synthetic_cohort(n_images: int, seed: int) -> pl.DataFrame:
    """The cohort: ``n_images`` test images and the proportional number of validate images."""
    rng = np.random.default_rng([seed, 0])
    n_validate = round(n_images * VALIDATE_PER_TEST)
    validate = _patients(rng, n_validate)
    counts = np.concatenate([validate, _patients(rng, n_images)])
    owner = np.repeat(np.arange(counts.size), counts)
    study = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    sex = np.where(rng.random(counts.size) < MALE_SHARE, "Male", "Female")
    race = np.array(list(RACE_MIX))[rng.choice(len(RACE_MIX), counts.size, p=list(RACE_MIX.values()))]
    age = np.minimum(np.clip(np.rint(rng.normal(60, 17, counts.size)), 18, 90)[owner] + (study - 1) // 2, 90)
    pid = np.char.add("patient", np.char.zfill((owner + 1).astype(str), 5))
    study_id = np.char.add(np.char.add(pid, "/study"), study.astype(str))
    frame = pl.DataFrame({
        "image_id": np.char.add(np.char.add("train/", study_id), "/view1_frontal.jpg"), "patient_id": pid,
        "study_id": study_id, "split": np.where(owner < validate.size, "validate", "test"), "sex": sex[owner],
        "race": race[owner], "age": age.astype(np.int64),
        "age_bin": np.array(AGE_BIN_LABELS)[np.searchsorted(AGE_BIN_UPPER_EDGES, age)],
    })
    raw = _labels(rng, owner, race[owner] == "Black")
    return frame.with_columns(pl.Series(p, raw[:, j]).fill_nan(None) for j, p in enumerate(PATHOLOGIES))


def _noise(rng: np.random.Generator, owner: np.ndarray) -> np.ndarray:
    """(N, 14) unit-variance normals with a patient component (PATIENT_NOISE of the variance)."""
    shape = (int(owner.max()) + 1, len(PATHOLOGIES))
    return (math.sqrt(PATIENT_NOISE) * rng.standard_normal(shape)[owner]
            + math.sqrt(1 - PATIENT_NOISE) * rng.standard_normal((owner.size, len(PATHOLOGIES))))


def _scores(spec: Spec, y: np.ndarray, cohort: pl.DataFrame, shared: np.ndarray, owner: np.ndarray,
            seed: int) -> np.ndarray:
    """(N, 14) probabilities of one run (float32 precision, as a model would write them)."""
    rng = np.random.default_rng([seed, zlib.crc32(spec.run_id.encode())])
    d = np.array([math.sqrt(2) * NormalDist().inv_cdf(BASE_AUC[p]) for p in PATHOLOGIES]) * spec.quality
    race, sex = cohort["race"].to_numpy(), cohort["sex"].to_numpy()
    factor = np.select([race == "Black", race == "Asian"], [spec.black, spec.asian], 1.0)
    factor = factor * np.where(sex == "Female", spec.female, 1.0)
    prevalence = np.clip(y.mean(axis=0), 1e-3, 1 - 1e-3)
    noise = math.sqrt(SHARED_NOISE) * shared + math.sqrt(1 - SHARED_NOISE) * _noise(rng, owner)
    logit = np.log(prevalence / (1 - prevalence)) + d[None, :] * factor[:, None] * (y - 0.5) + noise
    return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32).astype(np.float64)


def run_info(spec: Spec, cohort_hash: str) -> dict:
    """run.json: every RUN_FIELD of store_schema, in order."""
    info = {
        "run_id": spec.run_id, "model": spec.model, "display_name": spec.display_name, "architecture": spec.arch[0],
        "architecture_family": spec.arch[1], "pretraining_method": spec.method, "pretraining_type": spec.ptype,
        "pretraining_data": spec.data, "domain": spec.domain, "pretraining_epochs": spec.epochs,
        "pretraining_fraction": spec.fraction, "finetune_mode": spec.mode, "balancing": spec.balancing, "seed": 0,
        "score_kind": "probability", "training_label_policy": "medical-mae", "evaluation_label_policy": "u-zeros",
        "input_size": 448 if spec.model == "remedis" else 224, "normalisation": "imagenet", "cohort_hash": cohort_hash,
        "config_hash": hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:16],
        "code_version": "synthetic", "synthetic": True, "tags": {"synthetic": "true", "study": spec.study},
    }
    return info


def _subsets(cohort: pl.DataFrame, seed: int) -> pl.DataFrame:
    """subsets.parquet: Glocker's per-pathology "resampled" test sets and "glocker-original"."""
    return pl.concat([per_pathology_test_sets(cohort, seed=seed), glocker_original_set(cohort, seed=seed)])


def write_synthetic_store(store: Path, *, n_images: int = 38240, seed: int = 0, runs: list[str] | None = None,
                          force: bool = False) -> dict:
    """Write a synthetic results store (cohort, subsets, runs, store.json) at ``store`` as one unit.

    ``n_images`` test images (plus validate images in the paper's proportion); ``runs`` picks run ids of
    :data:`RUN_IDS` (default all). An existing non-empty folder is replaced only with ``force`` and only when it
    holds store.json (a synthetic store). Returns the paths and counts written.
    """
    if n_images < 200:
        raise ValueError(f"n_images must be at least 200, got {n_images}")
    specs = {s.run_id: s for s in run_specs()}
    chosen = list(RUN_IDS) if runs is None else list(runs)
    unknown = [r for r in chosen if r not in specs]
    if unknown:
        raise ValueError(f"unknown synthetic run(s) {unknown}; choose from {', '.join(RUN_IDS)}")
    store = Path(store)
    cohort = synthetic_cohort(n_images, seed)
    owner = cohort["patient_id"].rle_id().to_numpy()
    y = (cohort.select(PATHOLOGIES).to_numpy() == 1.0).astype(np.float64)  # u-zeros: raw 1 -> 1, else 0
    lines = cohort.select(pl.concat_str("image_id", "patient_id", "split", separator="\t")).to_series()
    cohort_hash = hashlib.sha256("\n".join(lines.sort()).encode()).hexdigest()[:16]
    n = cohort.height
    long = pl.DataFrame({  # (pathology-major) template shared by every run
        "split": np.tile(cohort["split"].to_numpy(), len(PATHOLOGIES)),
        "image_id": np.tile(cohort["image_id"].to_numpy(), len(PATHOLOGIES)),
        "pathology": np.repeat(np.array(PATHOLOGIES), n), "y_true": y.T.ravel(),
    })
    shared = _noise(np.random.default_rng([seed, 1]), owner)
    with staging_dir(store, force=force, marker=STORE_MARKER) as tmp:
        write_parquet(cohort, tmp / schema.COHORT_FILE)
        write_parquet(_subsets(cohort, seed), tmp / schema.SUBSETS_FILE)
        for run_id in chosen:
            scores = _scores(specs[run_id], y, cohort, shared, owner, seed)
            folder = tmp / schema.RUNS_DIR / run_id
            write_parquet(long.with_columns(y_score=pl.Series(scores.T.ravel())), folder / schema.PREDICTIONS_FILE)
            write_json(run_info(specs[run_id], cohort_hash), folder / schema.RUN_FILE)
        write_json({"synthetic": True, "generator": GENERATOR, "seed": seed, "n_images": n_images,
                    "n_validate": int((cohort["split"] == "validate").sum()), "runs": chosen,
                    "note": "planted effects, not results (engine/metrics/synth_predictions.py)"},
                   tmp / STORE_MARKER)
    return {"store": store, "cohort": store / schema.COHORT_FILE, "subsets": store / schema.SUBSETS_FILE,
            "runs": chosen, "n_images": n, "n_test": n_images, "cohort_hash": cohort_hash}
