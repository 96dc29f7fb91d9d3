"""Run a plan: skip up-to-date jobs, run the rest in dependency order, keep going past failures where possible, and
end with a summary table (done / skipped / failed with the reason / blocked).

Idempotent and resumable: a job is skipped when its manifest holds its current config hash; an interrupted plan
continues where it stopped (training jobs also resume inside, from their last epoch). ``force`` reruns the
selected jobs (a training job's output folder is removed first); ``only`` selects jobs by name pattern.
"""

from __future__ import annotations

import fnmatch
import shutil
import time
from collections.abc import Callable
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


def launch(job: Job, log: Path, *, launcher: str, gpus: int) -> None:
    if launcher == "torchrun" and job.distributed:
        launchers.run_subprocess(launchers.torchrun_command(job.argv, gpus), log)
    else:
        launchers.run_in_process(job.argv, log)


def run_plan(jobs: list[Job], *, work_dir: str, launcher: str = "local", only: str | None = None,
             force: bool = False, gpus: int = 1, code_version: str | None = None,
             echo: Callable[[str], None] = print, slurm_cluster: str | None = None) -> list[Outcome]:
    """Run ``jobs`` (already in dependency order); return one Outcome per job."""
    chosen = select(jobs, only)
    outcomes: dict[str, Outcome] = {}
    todo = [j for j in jobs if j.name in chosen and (force or not up_to_date(work_dir, j))]
    started_plan, n_done = time.time(), 0
    for job in jobs:
        if job.name not in chosen or (job.name not in {t.name for t in todo}):
            status = "skipped" if up_to_date(work_dir, job) else "not selected"
            reason = "up to date" if status == "skipped" else ""
            outcomes[job.name] = Outcome(job.name, job.stage, status, reason=reason)
            continue
        blocked = [d for d in job.deps if outcomes[d].status in ("failed", "blocked", "not selected")]
        if blocked:
            outcomes[job.name] = Outcome(job.name, job.stage, "blocked", reason=f"needs {', '.join(blocked)}")
            continue
        estimate = f", about {job.images:,} images" if job.images else ""
        echo(f"-> {job.name} ({job.stage}{estimate}; log {job_dir(work_dir, job.name) / 'log.txt'})")
        if launcher == "slurm":
            outcomes[job.name] = _slurm_one(job, work_dir, force, gpus, code_version, slurm_cluster)
        else:
            outcomes[job.name] = _run_one(job, work_dir, launcher, force, gpus, code_version)
        n_done += 1
        echo(_progress_line(outcomes[job.name], n_done, len(todo), time.time() - started_plan))
    result = list(outcomes.values())
    echo(summary_table(result))
    return result


def _run_one(job: Job, work_dir: str, launcher: str, force: bool, gpus: int, code_version: str | None) -> Outcome:
    log = prepare_job(work_dir, job, force)
    start = time.time()
    try:
        launch(job, log, launcher=launcher, gpus=gpus)
    except launchers.JobFailed as exc:
        return Outcome(job.name, job.stage, "failed", time.time() - start, f"{exc} (log: {log})")
    write_manifest(work_dir, job, started=start, code_version=code_version, launcher=launcher)
    return Outcome(job.name, job.stage, "done", time.time() - start)


def _slurm_one(job: Job, work_dir: str, force: bool, gpus: int, code_version: str | None,
               cluster: str | None) -> Outcome:
    log = prepare_job(work_dir, job, force)
    executor = launchers.slurm_executor(Path(work_dir) / "slurm", cluster=cluster, training=job.distributed,
                                        gpus=gpus, timeout_min=24 * 60)
    start = time.time()
    try:
        executor.submit(launchers.slurm_task, job.argv, str(log)).result()
    except Exception as exc:  # noqa: BLE001 - submitit wraps the job's exception
        return Outcome(job.name, job.stage, "failed", time.time() - start, f"{type(exc).__name__}: "
                       f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''} (log: {log})")
    write_manifest(work_dir, job, started=start, code_version=code_version, launcher="slurm")
    return Outcome(job.name, job.stage, "done", time.time() - start)


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
