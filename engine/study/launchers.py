"""How a job's ``run_experiments.py`` command runs: in this process, under torchrun, or as a SLURM job (submitit).

- ``local``: in-process, sequentially (the import of torch and timm is paid once: the CPU demo depends on it);
  stdout and stderr go to the job's log.
- ``torchrun``: training jobs as ``python -m torch.distributed.run --nproc_per_node N`` subprocesses (N =
  ``gpus_per_job``); other jobs in-process.
- ``slurm``: every job through submitit (``cluster='local'`` in tests runs the same code path on this machine):
  independent jobs of one dependency level go out together (a job array); a training job asks for ``gpus_per_job``
  GPUs on one node and runs one task per GPU, whose rank comes from submitit's TorchDistributedEnvironment.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = ("local", "torchrun", "slurm")


class JobFailed(RuntimeError):
    """A job's command returned a non-zero status or raised."""


def run_in_process(argv: Sequence[str], log: Path) -> None:
    """``run_experiments.main(argv)`` with output appended to ``log``; JobFailed with the last lines on failure."""
    import run_experiments

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        try:
            status = run_experiments.main(list(argv))
        except SystemExit as exc:  # argparse errors and stage exit codes
            status = exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:  # noqa: BLE001 - any failure of a job is reported, the plan continues
            import traceback

            traceback.print_exc(file=handle)
            raise JobFailed(f"{type(exc).__name__}: {exc}") from exc
    if status:
        raise JobFailed(_tail(log))


def run_subprocess(command: Sequence[str], log: Path) -> None:
    """Run ``command`` from the project root with output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "a") as handle:
        status = subprocess.run(list(command), cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    if status:
        raise JobFailed(f"exit status {status}: {_tail(log)}")


def torchrun_command(argv: Sequence[str], processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            str(ROOT / "run_experiments.py"), *argv]


def _tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(text[-lines:]) or "no output"


def slurm_task(argv: list[str], log: str) -> None:
    """Body of one SLURM task: export the torch.distributed environment when the job has several tasks."""
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    run_in_process(argv, Path(log) if env.global_rank == 0 else Path(f"{log}.rank{env.global_rank}"))


def slurm_executor(folder: Path, *, kind: str, gpus: int, cluster: str | None = None, partition: str | None = None,
                   timeout_min: int = 24 * 60, pretrain_nodes: int = 1, cpus_per_task: int = 8):
    """A submitit executor for one kind of job: ``data`` (one task), ``train`` (one node, one task per GPU) or
    ``pretrain`` (``pretrain_nodes`` nodes of ``gpus`` GPUs). ``cluster='local'`` runs the same path on this machine
    (tests); None lets submitit detect SLURM."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    training = kind != "data"
    params = {"timeout_min": timeout_min, "nodes": pretrain_nodes if kind == "pretrain" else 1,
              "tasks_per_node": gpus if training else 1}
    if executor.cluster == "slurm":
        params |= {"cpus_per_task": cpus_per_task, **({"gpus_per_node": gpus} if training else {}),
                   **({"slurm_partition": partition} if partition else {})}
    elif executor.cluster == "local":
        params["nodes"] = 1  # the local executor runs one node
    executor.update_parameters(**params)
    return executor
