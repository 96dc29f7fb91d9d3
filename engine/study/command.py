"""``run_experiments.py run CONFIG``: load and validate a study, print its plan (``--dry-run``) or run it."""

from __future__ import annotations

from pathlib import Path

from engine.config import ConfigError, load_config, to_dict
from engine.models.registry import get_spec
from engine.provenance import code_version
from engine.study.config import Study
from engine.study.jobs import Job
from engine.study.plan import build_plan
from engine.study.plan_data import DEMO_WEIGHTS, DataLayout


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Study, list[Job]]:
    """The study and its plan; ConfigError naming the key for anything invalid."""
    study = load_config(Study, path, overrides)
    return study, build_plan(study)


def missing_inputs(study: Study) -> list[str]:
    """'key: path' of every input file the plan needs that does not exist (synthetic data is generated)."""
    missing = []
    if study.synthetic is None:
        layout = DataLayout.of(study)
        needed = {"paths.chexpert_train_csv": layout.chexpert_train_csv,
                  "paths.chexpert_demographics": layout.chexpert_demographics,
                  "paths.chexpert_root": layout.chexpert_root, "paths.chexpert_valid_csv": layout.chexpert_valid_csv,
                  "paths.chexpert_split": layout.chexpert_split}
        if any("nih" in p.pool.sources for p in study.pretrain):
            needed |= {"paths.nih_data_entry": layout.nih_data_entry, "paths.nih_root": layout.nih_root,
                       "paths.nih_train_val_list": layout.nih_train_val_list}
        missing += [f"{key}: {path}" for key, path in needed.items() if path and not Path(path).exists()]
    for spec in study.finetune:
        stand_in = study.synthetic is not None and spec.model in DEMO_WEIGHTS
        if spec.pretrained is None and get_spec(spec.model).weight_format != "none" and not stand_in:
            path = study.paths.checkpoints.get(spec.model)
            if path is None or not Path(path).exists():
                missing.append(f"paths.checkpoints.{spec.model}: {path or 'not set'} (public weights: "
                               f"{get_spec(spec.model).published_at})")
    return sorted(set(missing))


def plan_table(jobs: list[Job]) -> str:
    """One line per job (stage, dependencies, estimated images and H200 GPU-hours) and the totals."""
    lines = [f"{'job':<46} {'stage':<9} {'deps':>4} {'images':>16} {'GPU-h (H200)':>13}", "-" * 92]
    for job in jobs:
        images = f"{job.images:,}" if job.images is not None else "-"
        hours = f"{job.gpu_hours:.2f}" if job.gpu_hours is not None else "-"
        lines.append(f"{job.name:<46} {job.stage:<9} {len(job.deps):>4} {images:>16} {hours:>13}")
    total_images = sum(j.images or 0 for j in jobs)
    total_hours = sum(j.gpu_hours or 0 for j in jobs)
    by_stage: dict[str, float] = {}
    for job in jobs:
        by_stage[job.stage] = by_stage.get(job.stage, 0.0) + (job.gpu_hours or 0.0)
    lines.append("-" * 92)
    lines.append(f"{len(jobs)} jobs, {total_images:,} images processed, {total_hours:,.1f} GPU-hours on one H200 "
                 f"({', '.join(f'{s} {h:,.1f}' for s, h in by_stage.items() if h)})")
    return "\n".join(lines)


def run_study(path: str | Path, *, overrides: list[str] = (), dry_run: bool = False, force: bool = False,
              only: str | None = None, launcher: str = "local", slurm_cluster: str | None = None,
              parallel: int | None = None) -> int:
    """Exit status 0 when every selected job is done or skipped, 1 when any failed or was blocked."""
    from engine.study.runner import run_plan, select

    study, jobs = load_study(path, overrides)
    missing = missing_inputs(study)
    if dry_run:
        chosen = select(jobs, only)
        print(plan_table([j for j in jobs if j.name in chosen]))
        for line in missing:
            print(f"missing before a real run: {line}")
        return 0
    if missing:
        raise ConfigError("input files missing:\n  " + "\n  ".join(missing), file=path)
    outcomes = run_plan(jobs, work_dir=study.work_dir, launcher=launcher, only=only, force=force,
                        gpus=study.gpus_per_job, code_version=code_version(), slurm_cluster=slurm_cluster,
                        parallel=parallel or study.parallel, slurm=to_dict(study.slurm))
    return 1 if any(o.status in ("failed", "blocked") for o in outcomes) else 0
