"""The config of a whole study (``run_experiments.py run CONFIG``): data paths, pools, pre-training and fine-tuning
matrices, seeds and the report; torch-free (validation and ``--dry-run`` need no GPU stack).

A user edits only ``paths`` (datasets and public checkpoints). Every protocol choice lives in the config file and is
copied into each job's resolved config, so it lands in ``run.json`` and the job manifests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from engine.config import ConfigError


@dataclass(frozen=True)
class Paths:
    chexpert_train_csv: str | None = None  # CheXpert-v1.0[-small]/train.csv
    chexpert_valid_csv: str | None = None  # official valid.csv (kept as split 'official_valid')
    chexpert_demographics: str | None = None  # CHEXPERT DEMO.xlsx
    chexpert_root: str | None = None  # folder the train.csv Path column is relative to
    chexpert_split: str | None = None  # None: the shipped Glocker / Gichoya split (data/splits/)
    nih_data_entry: str | None = None  # Data_Entry_2017_v2020.csv
    nih_root: str | None = None  # folder holding images/
    nih_train_val_list: str | None = None  # train_val_list.txt (pools keep NIH's train/val images)
    checkpoints: dict[str, str] = field(default_factory=dict)  # registry name -> public weights file


@dataclass(frozen=True)
class Synthetic:
    """Demo only: generate CheXpert- and NIH-format data instead of reading ``paths`` (engine/data/synth*.py)."""

    chexpert_patients: int = 400
    nih_images: int = 300
    seed: int = 0


@dataclass(frozen=True)
class Cohort:
    cache_size: int = 256  # uint8 cache side; fine-tuning crops model.input_size (224) from it
    subsets_seed: int = 42  # resampled test sets and balanced sets (upstream used 42)
    workers: int | None = None  # cache decoding processes (None: all cores)


@dataclass(frozen=True)
class Pool:
    sources: tuple[str, ...]  # any of nih, chexpert
    fraction: float = 1.0
    fraction_unit: Literal["images", "patients"] = "images"
    exclude_eval_patients: bool = False  # drop the fine-tuning validation / test patients (paper: unsaid)
    include_laterals: bool = False
    seed: int = 0


@dataclass(frozen=True)
class PretrainJob:
    name: str  # job name; fine-tuning entries refer to it with 'pretrained: NAME'
    method: Literal["mae", "moco-v3"]
    pool: Pool
    data_label: str  # run.json pretraining_data, e.g. 'ChestXray14 + CheXpert'
    domain: Literal["medical", "natural"] = "medical"
    overrides: dict[str, Any] = field(default_factory=dict)  # PretrainConfig fields, e.g. {epochs: 800}


@dataclass(frozen=True)
class FinetuneJob:
    name: str  # run id stem: <name>-<balancing>[-lp]-s<seed>
    model: str  # registry entry
    pretrained: str | None = None  # a PretrainJob name; None: paths.checkpoints[model] (or none for scratch)
    balancing: tuple[str, ...] = ("standard", "balanced")
    modes: tuple[str, ...] = ("finetune",)
    study: str = "foundation"  # run.json tags.study: foundation, pretraining-data, -epochs, -fraction, linear-probe
    display_name: str | None = None  # run.json display_name (default: the registry's)
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted FinetuneConfig keys, e.g. {train.epochs: 1}


@dataclass(frozen=True)
class Report:
    attributes: tuple[str, ...] = ("sex", "race")
    formats: tuple[str, ...] = ("csv", "latex", "md")
    bootstrap: int = 0
    paper: bool = True  # the paper's tables beside the reproduced numbers


@dataclass(frozen=True)
class Slurm:
    """submitit / SLURM parameters of ``--launcher slurm``."""

    partition: str | None = None
    timeout_min: int = 24 * 60  # per job
    pretrain_nodes: int = 1  # nodes per pre-training job (gpus_per_job GPUs each); fine-tunes use one node
    cpus_per_task: int = 8  # loader workers of one GPU process


@dataclass(frozen=True)
class Study:
    name: str
    work_dir: str  # every job's outputs, logs and manifests
    store: str  # the results store the dashboard opens
    paths: Paths = field(default_factory=Paths)
    synthetic: Synthetic | None = None
    cohort: Cohort = field(default_factory=Cohort)
    seeds: tuple[int, ...] = (0,)
    gpus_per_job: int = 1  # processes per training job under --launcher torchrun / slurm
    parallel: int = 1  # --launcher local: jobs at a time (each in its own process when > 1)
    slurm: Slurm = field(default_factory=Slurm)
    finetune_defaults: dict[str, Any] = field(default_factory=dict)  # dotted keys applied to every fine-tune
    pretrain_defaults: dict[str, Any] = field(default_factory=dict)  # applied to every pre-training
    pretrain: tuple[PretrainJob, ...] = ()
    finetune: tuple[FinetuneJob, ...] = ()
    report: Report = field(default_factory=Report)


POOL_SOURCES = ("nih", "chexpert")
MODES = ("finetune", "linear-probe")
BALANCING = ("standard", "balanced")


def check_study(study: Study) -> None:
    """Impossible combinations, each named by its key (files are checked by ``missing_inputs``)."""
    pretrain_names = [p.name for p in study.pretrain]
    _unique(pretrain_names, "pretrain[].name")
    for i, job in enumerate(study.pretrain):
        bad = [s for s in job.pool.sources if s not in POOL_SOURCES]
        if bad or not job.pool.sources:
            raise ConfigError(f"pool sources must be among {', '.join(POOL_SOURCES)}; got {list(job.pool.sources)}",
                              key=f"pretrain[{i}].pool.sources")
        if not 0 < job.pool.fraction <= 1:
            raise ConfigError(f"fraction must be in (0, 1]; got {job.pool.fraction}",
                              key=f"pretrain[{i}].pool.fraction")
    for i, job in enumerate(study.finetune):
        where = f"finetune[{i}] ({job.name})"
        if job.pretrained is not None and job.pretrained not in pretrain_names:
            raise ConfigError(f"pretrained names no pretrain job; known: {', '.join(pretrain_names) or 'none'}",
                              key=f"{where}.pretrained")
        for key, values, allowed in (("balancing", job.balancing, BALANCING), ("modes", job.modes, MODES)):
            if not values or any(v not in allowed for v in values):
                raise ConfigError(f"must be a non-empty subset of {', '.join(allowed)}", key=f"{where}.{key}")
    if not study.seeds:
        raise ConfigError("at least one seed", key="seeds")
    for key in ("gpus_per_job", "parallel"):
        if getattr(study, key) < 1:
            raise ConfigError("must be at least 1", key=key)


def _unique(names: list[str], key: str) -> None:
    seen = {n for n in names if names.count(n) > 1}
    if seen:
        raise ConfigError(f"duplicate name(s) {', '.join(sorted(seen))}", key=key)
