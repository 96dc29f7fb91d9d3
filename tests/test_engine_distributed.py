"""Reliability of the fine-tuning stage, through the command line: a run killed with SIGKILL resumes and ends
exactly where an uninterrupted run ends (deterministic mode), and 2 gloo processes under torchrun train like one
process at the same global batch."""

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
import torch
import yaml
from engine_fixtures import tiny_cohort, tiny_config  # noqa: F401 (fixture)

from engine.config import to_dict

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def write_config(config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(to_dict(config)))
    return path


def cli(*args: str, launcher: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, *launcher, str(ROOT / "run_experiments.py"), *args]


def run(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def epochs_logged(out: Path) -> int:
    log = out / "log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def kill_after_epochs(command: list[str], out: Path, epochs: int, timeout: float = 240) -> None:
    """Start ``command`` and SIGKILL it as soon as ``epochs`` epochs are logged (it must not have finished)."""
    process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while epochs_logged(out) < epochs:
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the run did not reach the epoch in time"
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "finetune.json").exists(), "the run finished before it could be killed"


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_to_identical_predictions(tiny_cohort, tmp_path):  # noqa: F811
    train = {"epochs": 5, "steps_per_epoch": None, "deterministic": True}
    straight = tiny_config(tiny_cohort, tmp_path / "a", run_id="straight", train=train)
    killed = tiny_config(tiny_cohort, tmp_path / "b", run_id="straight", train=train)
    for config in (straight, killed):
        Path(config.out_dir).parent.mkdir(parents=True, exist_ok=True)
    straight_yaml = write_config(straight, tmp_path / "a.yaml")
    killed_yaml = write_config(killed, tmp_path / "b.yaml")
    run(cli("finetune", str(straight_yaml)))
    kill_after_epochs(cli("finetune", str(killed_yaml)), Path(killed.out_dir), epochs=2)
    saved = torch.load(Path(killed.out_dir) / "last.pt", weights_only=False)
    assert 1 <= saved["epoch"] < 4
    resumed = run(cli("finetune", str(killed_yaml)))
    assert f"resuming after epoch {saved['epoch']}" in resumed.stdout
    for config_yaml in (straight_yaml, killed_yaml):
        run(cli("predict", str(config_yaml)))
    a = pl.read_parquet(Path(straight.store) / "runs/straight/predictions.parquet")
    b = pl.read_parquet(Path(killed.store) / "runs/straight/predictions.parquet")
    assert a.height == b.height > 0
    assert a["y_score"].to_list() == b["y_score"].to_list()  # bit for bit
    history = [json.loads(x) for x in (Path(killed.out_dir) / "log.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history][-5:] == [0, 1, 2, 3, 4][-5:]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_at_the_same_global_batch(tiny_cohort, tmp_path):  # noqa: F811
    train = {"epochs": 2, "steps_per_epoch": 4, "batch_size": 8}
    one = tiny_config(tiny_cohort, tmp_path / "one", run_id="ddp", train=train, model={"drop_path": 0.0})
    two = tiny_config(tiny_cohort, tmp_path / "two", run_id="ddp", train=train, model={"drop_path": 0.0})
    run(cli("finetune", str(write_config(one, tmp_path / "one.yaml"))))
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    run(cli("finetune", str(write_config(two, tmp_path / "two.yaml")), launcher=torchrun))
    single = torch.load(Path(one.out_dir) / "last.pt", weights_only=False)
    double = torch.load(Path(two.out_dir) / "last.pt", weights_only=False)
    for key, value in single["model"].items():
        torch.testing.assert_close(double["model"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    moved = max((single["model"][k] - torch.load(Path(one.out_dir) / "best.pt", weights_only=True)["model"][k])
                .abs().max().item() for k in single["model"] if single["model"][k].is_floating_point())
    assert single["history"][0]["val_loss"] == pytest.approx(double["history"][0]["val_loss"], rel=1e-5)
    assert moved >= 0.0
    run(cli("predict", str(tmp_path / "two.yaml")), timeout=300)
    frame = pl.read_parquet(Path(two.store) / "runs/ddp/predictions.parquet")
    assert frame.filter(pl.col("split") == "validate")["image_id"].n_unique() == 24  # every image once, no padding
