"""The shipped demo store (data/demo-engine-store) is the output of `run_experiments.py run configs/demo.yaml`:
every run in it carries the config hash the current demo config plans, and the metrics layer reads it."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from test_dashboard_app import PAGES, open_app

from engine.config import config_hash, from_dict
from engine.recipes import FinetuneConfig
from engine.study.command import load_study

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo.yaml"
STORE = ROOT / yaml.safe_load(CONFIG.read_text())["store"]


def test_shipped_demo_store_matches_the_demo_config():
    _, jobs = load_study(CONFIG)
    planned = {job.config["run_id"]: config_hash(from_dict(FinetuneConfig, job.config))
               for job in jobs if job.stage == "predict"}
    shipped = {path.parent.name: json.loads(path.read_text()) for path in (STORE / "runs").glob("*/run.json")}
    assert sorted(shipped) == sorted(planned), "regenerate: python benchmarks/demo_bench.py"
    for run_id, info in shipped.items():
        assert info["config_hash"] == planned[run_id], f"{run_id}: rerun the demo (its config changed)"
        assert info["synthetic"] is True
    assert len(shipped) >= 8
    modes = {info["finetune_mode"] for info in shipped.values()}
    assert modes == {"finetune", "linear-probe"}
    domains = {info["model"]: info["domain"] for info in shipped.values() if info["finetune_mode"] == "finetune"}
    assert domains["medical-mae"] == "medical" and domains["mae"] == "natural" and domains["scratch-vit"] == "none"


def test_shipped_demo_store_is_read_by_the_metrics_layer():
    from engine.metrics.analysis import fairness_summary, open_store, subgroup_auc

    view = open_store(STORE)
    run_ids = view.runs["run_id"].to_list()
    aucs = subgroup_auc(view, run_ids=run_ids, eval_set="test", attributes=["sex", "race"])
    overall = aucs.filter(pl.col("attribute") == "all")
    assert overall["run_id"].n_unique() == len(run_ids)
    assert overall["auc"].drop_nulls().is_between(0.0, 1.0).all()
    summary = fairness_summary(view, run_ids=run_ids, eval_set="test", attributes=["sex", "race"])
    assert summary.height > 0


@pytest.mark.parametrize("page", PAGES)
def test_dashboard_pages_render_on_the_shipped_demo_store(monkeypatch, page):
    at = open_app(STORE, monkeypatch, page)
    assert not at.error, [e.value for e in at.error]
    assert "SYNTHETIC" in " ".join(w.value for w in at.warning)
