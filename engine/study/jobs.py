"""A job of a study plan: one ``run_experiments.py`` command with its dependencies, outputs and a config hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

TRAINING_STAGES = frozenset({"pretrain", "finetune", "predict"})  # run under torchrun / SLURM tasks


@dataclass
class Job:
    name: str  # unique within the plan, e.g. finetune-mae-standard-s0
    stage: str  # synth | prepare | subsets | cache | pool | pretrain | finetune | predict | report
    argv: list[str]  # arguments of run_experiments.py
    deps: tuple[str, ...] = ()
    config: dict | None = None  # YAML written to <work>/jobs/<name>/config.yaml (engine stages)
    out_dir: str | None = None  # removed by `run --force` before a training job reruns
    images: int | None = None  # estimated images processed (dry-run)
    gpu_hours: float | None = None  # estimated (dry-run)
    hash: str = field(default="", compare=False)

    @property
    def distributed(self) -> bool:
        return self.stage in TRAINING_STAGES


def job_dir(work_dir: str | Path, name: str) -> Path:
    return Path(work_dir) / "jobs" / name


def config_path(work_dir: str | Path, name: str) -> Path:
    return job_dir(work_dir, name) / "config.yaml"


def assign_hashes(jobs: list[Job]) -> None:
    """Hash of each job's command, config and its dependencies' hashes (a changed input reruns everything after)."""
    by_name = {job.name: job for job in jobs}
    for job in topological(jobs):
        body = json.dumps({"argv": job.argv, "config": job.config, "deps": [by_name[d].hash for d in job.deps]},
                          sort_keys=True, default=str)
        job.hash = hashlib.sha256(body.encode()).hexdigest()[:16]


def topological(jobs: list[Job]) -> list[Job]:
    """Jobs ordered so that each comes after its dependencies (plan order kept otherwise)."""
    by_name = {job.name: job for job in jobs}
    done: set[str] = set()
    order: list[Job] = []

    def visit(job: Job, path: tuple[str, ...]) -> None:
        if job.name in done:
            return
        if job.name in path:
            raise ValueError(f"dependency cycle: {' -> '.join((*path, job.name))}")
        for dep in job.deps:
            if dep not in by_name:
                raise ValueError(f"job {job.name} depends on unknown job {dep}")
            visit(by_name[dep], (*path, job.name))
        done.add(job.name)
        order.append(job)

    for job in jobs:
        visit(job, ())
    return order
