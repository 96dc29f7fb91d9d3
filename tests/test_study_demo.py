"""The demo pipeline end to end in CI size (synthetic data -> pre-training -> fine-tuning -> prediction -> report ->
a store the dashboard reads), a plan killed mid-way that resumes, and the SLURM launcher through submitit's local
executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from engine.study.jobs import Job, assign_hashes
from engine.study.runner import run_plan

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def reduced_demo(tmp_path: Path) -> Path:
    """configs/demo.yaml cut down: smaller synthetic data, 2 pre-trainings, 4 model slots, 1-2 epochs."""
    data = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    data |= {"work_dir": str(tmp_path / "work"), "store": str(tmp_path / "store"),
             "synthetic": {"chexpert_patients": 160, "nih_images": 80, "seed": 0}}
    data["finetune_defaults"] |= {"train.epochs": 1}
    data["pretrain_defaults"] |= {"train.epochs": 2, "train.steps_per_epoch": 2}
    data["pretrain"] = [p for p in data["pretrain"] if p["name"] in ("mae-medical", "moco-natural")]
    keep = {"medical-mae", "moco-v3", "bit", "scratch-vit"}
    data["finetune"] = [f for f in data["finetune"] if f["name"] in keep]
    data["finetune"][0]["modes"] = ["finetune", "linear-probe"]
    path = tmp_path / "demo-small.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_experiments.py", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def manifests(work: Path) -> int:
    return len(list((work / "jobs").glob("*/manifest.json"))) if (work / "jobs").exists() else 0


@pytest.mark.slow
def test_reduced_demo_runs_end_to_end_and_resumes_after_a_kill(tmp_path):
    config = reduced_demo(tmp_path)
    work = tmp_path / "work"
    process = subprocess.Popen([sys.executable, "run_experiments.py", "run", str(config)], cwd=ROOT, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while manifests(work) < 12:  # killed after the data jobs, during pre-training or fine-tuning
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = manifests(work)
    result = run_cli("run", str(config))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    summary = result.stdout
    assert summary.count(" skipped ") >= done_before - 1 and "failed" not in summary.split("\n")[-1]
    store = tmp_path / "store"
    runs = sorted(p.name for p in (store / "runs").iterdir())
    assert len(runs) == 10  # 4 slots x standard / balanced + linear probes of the first slot (both sets)
    info = json.loads((store / "runs" / "medical-mae-standard-s0" / "run.json").read_text())
    assert info["domain"] == "medical" and info["pretraining_data"] == "synthetic CheXpert"
    assert info["pretraining_epochs"] == 2 and info["synthetic"] is True
    assert json.loads((store / "runs" / "moco-v3-balanced-s0" / "run.json").read_text())["domain"] == "natural"
    report = pl.read_csv(work / "report" / "subgroup_auc.csv")
    assert set(report["run_id"].unique()) == set(runs)
    again = run_cli("run", str(config))  # idempotent: nothing left to do
    assert again.returncode == 0 and " done " not in again.stdout.split("-" * 100)[-1]


def test_slurm_launcher_through_submitit_local_executor(tmp_path):
    jobs = []
    for i, name in enumerate(("first", "second")):
        argv = ["synth", "weights", "--out", str(tmp_path / name), "--seed", str(i)]
        jobs.append(Job(name, "synth", argv, (jobs[-1].name,) if jobs else ()))
    assign_hashes(jobs)
    outcomes = run_plan(jobs, work_dir=str(tmp_path / "work"), launcher="slurm", slurm_cluster="local",
                        echo=lambda _: None)
    assert [o.status for o in outcomes] == ["done", "done"], [o.reason for o in outcomes]
    assert (tmp_path / "second" / "demo_weights.json").is_file()
    assert list((tmp_path / "work" / "slurm").glob("*_submission.sh")) or list((tmp_path / "work" / "slurm").iterdir())
    manifest = json.loads((tmp_path / "work" / "jobs" / "second" / "manifest.json").read_text())
    assert manifest["launcher"] == "slurm"


@pytest.mark.parametrize("kind, nodes, tasks, gpus", [("pretrain", 2, 8, 8), ("train", 1, 8, 8), ("data", 1, 1, None)])
def test_slurm_batch_script_asks_for_the_right_resources(tmp_path, monkeypatch, kind, nodes, tasks, gpus):
    from engine.study.launchers import slurm_executor

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit only checks that srun exists
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    executor = slurm_executor(tmp_path / "slurm", kind=kind, gpus=8, cluster="slurm", partition="gpu",
                              pretrain_nodes=2)
    script = executor._executor._make_submission_file_text("python job.py", "uid")
    assert f"#SBATCH --nodes={nodes}" in script and f"#SBATCH --ntasks-per-node={tasks}" in script
    assert "#SBATCH --partition=gpu" in script
    assert (f"#SBATCH --gpus-per-node={gpus}" in script) if gpus else "gpus-per-node" not in script
