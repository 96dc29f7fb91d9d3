"""The manifest of a finished job (``<work>/jobs/<name>/manifest.json``): what ran, with which code, packages and
hardware, how long, how fast. A job whose manifest holds its current config hash is up to date and skipped."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path

from engine.data.io import write_json
from engine.study.jobs import Job, job_dir

PACKAGES = ("torch", "timm", "numpy", "polars", "duckdb", "scikit-learn", "pillow", "submitit")


def manifest_path(work_dir: str | Path, name: str) -> Path:
    return job_dir(work_dir, name) / "manifest.json"


def up_to_date(work_dir: str | Path, job: Job) -> bool:
    path = manifest_path(work_dir, job.name)
    if not path.is_file():
        return False
    manifest = json.loads(path.read_text())
    return manifest.get("config_hash") == job.hash and manifest.get("status") == "done"


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "gpus": []}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def throughput(job: Job) -> float | None:
    """Mean training images/s over the job's epochs, from its own summary (finetune.json / pretrain.json)."""
    if job.out_dir is None:
        return None
    for name in ("finetune.json", "pretrain.json"):
        path = Path(job.out_dir) / name
        if path.is_file():
            rates = [h.get("images_per_s") for h in json.loads(path.read_text()).get("history", [])]
            rates = [r for r in rates if r]
            return sum(rates) / len(rates) if rates else None
    return None


def write_manifest(work_dir: str | Path, job: Job, *, started: float, code_version: str | None, launcher: str) -> Path:
    config = job.config or {}
    seed = (config.get("train") or {}).get("seed")
    return write_json({
        "job": job.name, "stage": job.stage, "status": "done", "config_hash": job.hash, "argv": job.argv,
        "deps": list(job.deps), "config": config, "seed": seed, "launcher": launcher, "code_version": code_version,
        "packages": package_versions(), "hardware": hardware(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "wall_s": time.time() - started,
        "images_per_s": throughput(job), "estimated_images": job.images, "estimated_gpu_hours": job.gpu_hours,
    }, manifest_path(work_dir, job.name))
