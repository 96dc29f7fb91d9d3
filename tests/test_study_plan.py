"""Study configs -> plans: validation names the key, the paper's config passes and its dry run prints the whole
matrix with GPU-hour estimates, hashes follow inputs, and the runner skips, selects and resumes jobs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.config import ConfigError
from engine.study.command import load_study, missing_inputs, plan_table
from engine.study.jobs import Job, assign_hashes
from engine.study.runner import run_plan

ROOT = Path(__file__).resolve().parents[1]
PAPER, DEMO = ROOT / "configs" / "paper.yaml", ROOT / "configs" / "demo.yaml"


def test_paper_config_plans_the_whole_matrix():
    study, jobs = load_study(PAPER)
    names = {job.name for job in jobs}
    for model in ("mae", "medical-mae", "moco-v3", "medical-moco-v3", "bit", "remedis", "scratch-vit",
                  "scratch-resnet"):
        expected = {f"finetune-{model}-standard-s0", f"finetune-{model}-balanced-s0", f"predict-{model}-standard-s0"}
        assert expected <= names
    assert {"finetune-mae-standard-lp-s0", "finetune-moco-v3-standard-lp-s0"} <= names  # Table 6
    assert {f"pretrain-{n}" for n in ("mae-cx14", "mae-cxpt", "mae-cx14-cxpt", "mae-cx14-200ep", "mae-cx14-400ep",
                                      "mae-cxpt-30pct", "moco-cx14-cxpt")} <= names  # Tables 1, 2, 4, 5
    by_name = {job.name: job for job in jobs}
    assert by_name["finetune-medical-moco-v3-standard-s0"].deps[-1] == "pretrain-moco-cx14-cxpt"
    assert by_name["pretrain-mae-cx14-200ep"].config["train"]["epochs"] == 200
    assert by_name["finetune-mae-standard-s0"].config["train"]["epochs"] is None  # registry default (200)
    assert by_name["finetune-mae-pt-cx14-standard-s0"].config["tags"] == {"study": "pretraining-data"}
    order = [job.name for job in jobs]
    assert all(order.index(d) < order.index(job.name) for job in jobs for d in job.deps)
    assert 100 < sum(job.gpu_hours or 0 for job in jobs) < 1000  # order of magnitude of the paper's compute
    assert len({job.hash for job in jobs}) == len(jobs)


def test_dry_run_prints_plan_and_missing_files_without_computing(tmp_path):
    result = subprocess.run([sys.executable, "run_experiments.py", "run", str(PAPER), "--dry-run", "--set",
                             f"work_dir={tmp_path}/w"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "GPU-hours on one H200" in result.stdout and "pretrain-mae-cx14-200ep" in result.stdout
    assert "missing before a real run: paths.checkpoints.mae" in result.stdout
    assert not (tmp_path / "w").exists()


def test_real_run_refuses_missing_inputs_naming_the_key(tmp_path):
    result = subprocess.run([sys.executable, "run_experiments.py", "run", str(PAPER), "--set",
                             f"work_dir={tmp_path}/w"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "paths.chexpert_train_csv" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()


def write_study(tmp_path: Path, change: dict) -> Path:
    data = yaml.safe_load(DEMO.read_text())
    for key, value in change.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("change, words", [
    ({"seedz": [0]}, "unknown key(s) seedz"),
    ({"seeds": "zero"}, "seeds: expected a list"),
    ({"finetune.0.model": "resnet-9000"}, "unknown model 'resnet-9000'"),
    ({"finetune.0.pretrained": "nope"}, "finetune[0] (mae).pretrained"),
    ({"finetune.0.overrides": {"train.epoks": 1}}, "train.epoks"),
    ({"finetune.0.overrides": {"train.epochs": "many"}}, "train.epochs: expected int"),
    ({"finetune.0.balancing": ["fair"]}, "finetune[0] (mae).balancing"),
    ({"pretrain.0.pool.sources": ["imagenet"]}, "pretrain[0].pool.sources"),
    ({"pretrain.0.pool.fraction": 1.5}, "pretrain[0].pool.fraction"),
    ({"pretrain.0.overrides": {"mae.mask_ratio": "high"}}, "mae.mask_ratio"),
    ({"finetune.1.modes": ["finetune"]}, "same job(s)"),
])
def test_bad_study_configs_name_the_key(tmp_path, change, words):
    with pytest.raises((ConfigError, ValueError)) as error:
        load_study(write_study(tmp_path, change))
    assert words in str(error.value)


def test_hash_follows_the_job_and_its_dependencies():
    def plan(epochs: int) -> dict[str, str]:
        jobs = [Job("a", "prepare", ["prepare"]), Job("b", "finetune", ["finetune"], ("a",), {"epochs": epochs}),
                Job("c", "predict", ["predict"], ("b",))]
        assign_hashes(jobs)
        return {job.name: job.hash for job in jobs}

    one, two = plan(1), plan(2)
    assert one["a"] == two["a"] and one["b"] != two["b"] and one["c"] != two["c"]


def fake_jobs(tmp_path: Path, fail: str | None = None) -> list[Job]:
    """Jobs that write marker files through `run_experiments.py synth weights` (cheap, real commands)."""
    jobs = []
    for i, name in enumerate(("one", "two", "three")):
        argv = ["synth", "weights", "--out", str(tmp_path / name), "--seed", str(i)]
        if name == fail:
            argv = ["synth", "nothing"]
        jobs.append(Job(name, "synth", argv, (jobs[-1].name,) if jobs else ()))
    assign_hashes(jobs)
    return jobs


def test_runner_skips_up_to_date_jobs_and_blocks_after_a_failure(tmp_path):
    work = str(tmp_path / "work")
    first = run_plan(fake_jobs(tmp_path, fail="two"), work_dir=work, echo=lambda _: None)
    assert [o.status for o in first] == ["done", "failed", "blocked"]
    assert "invalid choice" in first[1].reason or "log:" in first[1].reason
    second = run_plan(fake_jobs(tmp_path), work_dir=work, echo=lambda _: None)
    assert [o.status for o in second] == ["skipped", "done", "done"]
    manifest = json.loads((tmp_path / "work" / "jobs" / "two" / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["packages"]["numpy"] and manifest["hardware"]["cpus"]
    third = run_plan(fake_jobs(tmp_path), work_dir=work, only="thr*", force=True, echo=lambda _: None)
    assert [o.status for o in third] == ["skipped", "skipped", "done"]


def test_demo_config_plans_at_least_eight_runs_with_probe():
    study, jobs = load_study(DEMO)
    predicts = [job for job in jobs if job.stage == "predict"]
    assert len(predicts) >= 8 and any(job.config["train"]["mode"] == "linear-probe" for job in predicts)
    assert missing_inputs(study) == []
    assert "53 jobs" in plan_table(jobs) or "jobs," in plan_table(jobs)


def test_local_parallel_runs_independent_jobs_in_processes(tmp_path):
    jobs = [Job(name, "synth", ["synth", "weights", "--out", str(tmp_path / name), "--seed", str(i)])
            for i, name in enumerate(("left", "right"))]
    jobs.append(Job("after", "synth", ["synth", "weights", "--out", str(tmp_path / "after")], ("left", "right")))
    assign_hashes(jobs)
    lines: list[str] = []
    outcomes = run_plan(jobs, work_dir=str(tmp_path / "work"), parallel=2, echo=lines.append)
    assert [o.status for o in outcomes] == ["done", "done", "done"]
    starts = [line for line in lines if line.startswith("->")]
    assert starts[0].startswith("-> left") and starts[1].startswith("-> right")  # one wave, started together
    assert all((tmp_path / name / "demo_weights.json").is_file() for name in ("left", "right", "after"))
