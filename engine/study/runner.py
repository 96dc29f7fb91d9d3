"""Run a plan: skip up-to-date jobs, run the rest in dependency order, keep going past failures where possible, and
end with a summary table (done / skipped / failed with the reason / blocked).

Idempotent and resumable: a job is skipped when its manifest holds its current config hash; an interrupted plan
continues where it stopped (training jobs also resume inside, from their last epoch). ``force`` reruns the
selected jobs (a training job's output folder is removed first); ``only`` selects jobs by name pattern.
"""

from __future__ import annotations

import fnmatch
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from engine.study import launchers
from engine.study.jobs import Job, config_path, job_dir
from engine.study.manifest import up_to_date, write_manifest


@dataclass
class Outcome:
    job: str
    stage: str
    status: str  # done | skipped | failed | blocked | not selected
    seconds: float = 0.0
    reason: str = ""


def select(jobs: list[Job], only: str | None) -> set[str]:
    """Names matching any comma-separated glob of ``only`` (every job when None)."""
    if not only:
        return {job.name for job in jobs}
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    chosen = {job.name for job in jobs if any(fnmatch.fnmatch(job.name, p) for p in patterns)}
    if not chosen:
        raise ValueError(f"--only {only!r} matches no job")
    return chosen


def prepare_job(work_dir: str, job: Job, force: bool) -> Path:
    """Write the job's resolved config; with ``force`` remove a training job's old outputs first."""
    if force and job.out_dir and job.stage in ("pretrain", "finetune"):
        shutil.rmtree(job.out_dir, ignore_errors=True)
    if job.config is not None:
        path = config_path(work_dir, job.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(job.config, sort_keys=False))
    return job_dir(work_dir, job.name) / "log.txt"


def launch(job: Job, log: Path, *, launcher: str, gpus: int, in_process: bool = True) -> None:
    if launcher == "torchrun" and job.distributed:
        launchers.run_subprocess(launchers.torchrun_command(job.argv, gpus), log)
    elif in_process:
        launchers.run_in_process(job.argv, log)
    else:
        launchers.run_subprocess([sys.executable, str(launchers.ROOT / "run_experiments.py"), *job.argv], log)


@dataclass(frozen=True)
class Settings:
    work_dir: str
    launcher: str = "local"
    force: bool = False
    gpus: int = 1  # processes per training job (torchrun / SLURM tasks)
    parallel: int = 1  # local: jobs at a time (> 1: each in its own process)
    code_version: str | None = None
    slurm: dict | None = None  # submitit parameters: cluster ('local' in tests), partition, timeout_min, nodes


def run_plan(jobs: list[Job], *, work_dir: str, launcher: str = "local", only: str | None = None,
             force: bool = False, gpus: int = 1, code_version: str | None = None,
             echo: Callable[[str], None] = print, slurm_cluster: str | None = None, parallel: int = 1,
             slurm: dict | None = None) -> list[Outcome]:
    """Run ``jobs`` (in dependency order) in waves of jobs whose dependencies are done; one Outcome per job."""
    settings = Settings(work_dir, launcher, force, gpus, parallel, code_version,
                        {**(slurm or {}), **({"cluster": slurm_cluster} if slurm_cluster else {})})
    chosen = select(jobs, only)
    outcomes: dict[str, Outcome] = {}
    pending = []
    for job in jobs:
        if job.name in chosen and (force or not up_to_date(work_dir, job)):
            pending.append(job)
        else:
            status = "skipped" if up_to_date(work_dir, job) else "not selected"
            reason = "up to date" if status == "skipped" else ""
            outcomes[job.name] = Outcome(job.name, job.stage, status, reason=reason)
    total, started = len(pending), time.time()
    while pending:
        ready, waiting = [], []
        for job in pending:
            if any(d not in outcomes for d in job.deps):
                waiting.append(job)
                continue
            bad = [d for d in job.deps if outcomes[d].status in ("failed", "blocked", "not selected")]
            if bad:
                outcomes[job.name] = Outcome(job.name, job.stage, "blocked", reason=f"needs {', '.join(bad)}")
            else:
                ready.append(job)
        for job in ready:
            estimate = f", about {job.images:,} images" if job.images else ""
            echo(f"-> {job.name} ({job.stage}{estimate}; log {job_dir(work_dir, job.name) / 'log.txt'})")
        for outcome in _run_wave(ready, settings):
            outcomes[outcome.job] = outcome
            done = sum(o.status in ("done", "failed") for o in outcomes.values() if o.job in {j.name for j in jobs})
            echo(_progress_line(outcome, min(done, total), total, time.time() - started))
        pending = waiting
    result = [outcomes[job.name] for job in jobs]
    echo(summary_table(result))
    return result


def _run_wave(ready: list[Job], settings: Settings) -> list[Outcome]:
    """Jobs that can run now: one by one in this process, in parallel processes, or as SLURM (array) jobs."""
    if settings.launcher == "slurm":
        return _slurm_wave(ready, settings)
    if settings.parallel > 1 and len(ready) > 1:
        with ThreadPoolExecutor(settings.parallel) as pool:  # threads only wait on their subprocess
            return list(pool.map(lambda job: _run_one(job, settings, in_process=False), ready))
    return [_run_one(job, settings) for job in ready]


def _run_one(job: Job, settings: Settings, in_process: bool = True) -> Outcome:
    log = prepare_job(settings.work_dir, job, settings.force)
    start = time.time()
    try:
        launch(job, log, launcher=settings.launcher, gpus=settings.gpus, in_process=in_process)
    except launchers.JobFailed as exc:
        return Outcome(job.name, job.stage, "failed", time.time() - start, f"{exc} (log: {log})")
    write_manifest(settings.work_dir, job, started=start, code_version=settings.code_version,
                   launcher=settings.launcher)
    return Outcome(job.name, job.stage, "done", time.time() - start)


def _slurm_wave(ready: list[Job], settings: Settings) -> list[Outcome]:
    """Submit the wave as one SLURM array per job kind (data / fine-tuning / pre-training), then wait for all."""
    groups: dict[str, list[Job]] = {}
    for job in ready:
        groups.setdefault("pretrain" if job.stage == "pretrain" else "train" if job.distributed else "data",
                          []).append(job)
    submitted, start = [], time.time()
    for kind, group in groups.items():
        executor = launchers.slurm_executor(Path(settings.work_dir) / "slurm", kind=kind, gpus=settings.gpus,
                                            **(settings.slurm or {}))
        logs = [prepare_job(settings.work_dir, job, settings.force) for job in group]
        with executor.batch():  # one array job for the group (submitit)
            futures = [executor.submit(launchers.slurm_task, job.argv, str(log)) for job, log in zip(group, logs,
                                                                                                    strict=True)]
        submitted += list(zip(group, logs, futures, strict=True))
    outcomes = []
    for job, log, future in submitted:
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - submitit wraps the job's exception
            lines = str(exc).strip().splitlines()
            outcomes.append(Outcome(job.name, job.stage, "failed", time.time() - start,
                                    f"{type(exc).__name__}: {lines[-1] if lines else ''} (log: {log})"))
            continue
        write_manifest(settings.work_dir, job, started=start, code_version=settings.code_version, launcher="slurm")
        outcomes.append(Outcome(job.name, job.stage, "done", time.time() - start))
    return outcomes


def _progress_line(outcome: Outcome, done: int, total: int, elapsed: float) -> str:
    eta = elapsed / done * (total - done) if done else 0.0
    bar = "#" * round(20 * done / total) + "." * (20 - round(20 * done / total)) if total else ""
    reason = f"  {outcome.reason}" if outcome.reason else ""
    return (f"[{bar}] {done}/{total} {outcome.status:<7} {outcome.job} ({outcome.seconds:.1f} s; "
            f"plan ETA {eta / 60:.1f} min){reason}")


def summary_table(outcomes: list[Outcome]) -> str:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed", "blocked", "not selected")}
    lines = [f"{'job':<44} {'stage':<9} {'status':<12} {'s':>8}  reason", "-" * 100]
    lines += [f"{o.job:<44} {o.stage:<9} {o.status:<12} {o.seconds:>8.1f}  {o.reason[:200]}" for o in outcomes]
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines)
