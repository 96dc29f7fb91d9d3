"""Fine-tuning on the tiny synthetic cohort: predictions land in a store that the metrics layer reads, the
checkpoint is selected on validation, the recipe's optimizer and schedule are the paper's, bad configs fail early."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch
from engine_fixtures import tiny_cohort, tiny_config  # noqa: F401 (fixture)
from sklearn.metrics import roc_auc_score

from engine.config import config_hash
from engine.data.errors import DataError
from engine.models.registry import RegistryError
from engine.recipes import resolve_recipe
from engine.train.finetune import SUMMARY, finetune
from engine.train.loop import NonFiniteLossError
from engine.train.predict import predict


@pytest.fixture(scope="module")
def finished(tiny_cohort, tmp_path_factory):  # noqa: F811
    config = tiny_config(tiny_cohort, tmp_path_factory.mktemp("ft"), train={"epochs": 3})
    finetune(config, log=lambda _: None)
    predict(config, log=lambda _: None)
    return config


def test_predictions_cover_both_splits_and_match_sklearn(finished):
    from engine.metrics.analysis import open_store, subgroup_auc

    run = f"{finished.store}/runs/{finished.run_id}"
    frame = pl.read_parquet(f"{run}/predictions.parquet")
    assert sorted(frame["split"].unique()) == ["test", "validate"]
    assert frame.height == (24 + 64) * 14  # the tiny cohort's 24 validation images + max_images test images
    assert frame["y_score"].is_between(0.0, 1.0).all()
    info = json.loads(open(f"{run}/run.json").read())
    assert info["model"] == "scratch-vit" and info["finetune_mode"] == "finetune"
    assert info["config_hash"] == config_hash(finished) and info["synthetic"] is True
    assert info["training_label_policy"] == "medical-mae" and info["evaluation_label_policy"] == "u-zeros"
    store = open_store(finished.store)
    aucs = subgroup_auc(store, run_ids=[finished.run_id], eval_set="test", attributes=["sex"])
    overall = aucs.filter((pl.col("attribute") == "all") & (pl.col("pathology") == "Edema"))
    test = frame.filter((pl.col("split") == "test") & (pl.col("pathology") == "Edema"))
    assert overall["auc"][0] == pytest.approx(roc_auc_score(test["y_true"], test["y_score"]), abs=1e-12)


def test_checkpoint_is_the_best_validation_epoch(finished):
    history = [json.loads(line) for line in open(f"{finished.out_dir}/log.jsonl")]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    best = max(history, key=lambda h: h["val_mean_auc"])
    saved = torch.load(f"{finished.out_dir}/best.pt", weights_only=True)
    assert saved["epoch"] == best["epoch"]
    summary = json.loads(open(f"{finished.out_dir}/{SUMMARY}").read())
    assert summary["selected"]["epoch"] == best["epoch"] and "test" not in json.dumps(summary["selected"])


def test_finished_run_is_not_trained_again(finished):
    before = open(f"{finished.out_dir}/log.jsonl").read()
    finetune(finished, log=lambda _: None)
    assert open(f"{finished.out_dir}/log.jsonl").read() == before


def test_vit_optimizer_has_layer_decay_and_no_decay_on_norms(tiny_cohort, tmp_path):  # noqa: F811
    from engine.train.distributed import Dist
    from engine.train.setup import make_model, make_optimizer

    config = tiny_config(tiny_cohort, tmp_path)
    recipe = resolve_recipe(config)
    _, model, _ = make_model(config, recipe, None, Dist(0, 1, 0, torch.device("cpu")))
    optimizer = make_optimizer(model, recipe, probe=False)
    names = {id(p): n for n, p in model.named_parameters()}
    depth = len(model.blocks)
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            if name.startswith("blocks."):
                assert group["lr_scale"] == pytest.approx(0.55 ** (depth - int(name.split(".")[1])))
            if name.startswith(("head", "fc_norm")):
                assert group["lr_scale"] == pytest.approx(1.0)
            if name in ("cls_token", "pos_embed") or p.ndim == 1:
                assert group["weight_decay"] == 0.0
            else:
                assert group["weight_decay"] == pytest.approx(0.05)
    assert optimizer.defaults["betas"] == (0.9, 0.95)


def test_schedule_is_linear_warmup_then_half_cosine(tiny_cohort, tmp_path):  # noqa: F811
    from engine.train.setup import make_scheduler

    config = tiny_config(tiny_cohort, tmp_path, train={"epochs": 10, "warmup_epochs": 2.0, "blr": 2.56e-2})
    recipe = resolve_recipe(config)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=recipe.lr)
    scheduler = make_scheduler(optimizer, recipe, steps_per_epoch=5)
    lr, min_lr = recipe.lr, recipe.min_lr
    for step in range(50):
        scheduler.step_update(step)
        epoch = step / 5  # MAE util/lr_sched.py, written out independently
        cosine = min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (epoch - 2) / 8))
        expected = lr * epoch / 2 if epoch < 2 else cosine
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_balanced_training_uses_the_balanced_set(tiny_cohort, tmp_path):  # noqa: F811
    from engine.train.setup import load_data

    config = tiny_config(tiny_cohort, tmp_path, data={"balancing": "balanced", "max_images": None})
    data = load_data(config)
    sets = pl.read_parquet(tiny_cohort["subsets"]).filter(pl.col("set") == "balanced-train")
    assert sorted(data.train.image_ids) == sorted(sets["image_id"].to_list() * 1)
    cohort = pl.read_parquet(tiny_cohort["cohort"]).filter(pl.col("image_id").is_in(data.train.image_ids))
    assert cohort["race"].value_counts()["count"].n_unique() == 1  # equal race counts
    assert data.train.removed["not in the balanced-train set"] == pl.read_parquet(tiny_cohort["cohort"]).filter(
        pl.col("split") == "train").height - len(data.train)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_cohort, tmp_path, monkeypatch):  # noqa: F811
    import engine.train.setup as stage

    calls = {"n": 0}
    real = stage.masked_bce

    def poisoned(model, inputs, targets):
        calls["n"] += 1
        loss = real(model, inputs, targets)
        return loss * float("nan") if calls["n"] > 3 else loss  # epoch 0 has 3 good steps

    monkeypatch.setattr(stage, "masked_bce", poisoned)
    config = tiny_config(tiny_cohort, tmp_path)
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 1"):
        finetune(config, log=lambda _: None)
    saved = torch.load(f"{config.out_dir}/last.pt", weights_only=False)
    assert saved["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("change, error, words", [
    ({"model": {"name": "not-a-model"}}, RegistryError, "unknown model 'not-a-model'"),
    ({"model": {"name": "bit"}}, RegistryError, "is a ResNet"),
    ({"data": {"training_label_policy": "u-twos"}}, ValueError, "data.training_label_policy"),
])
def test_bad_configs_fail_before_training(tiny_cohort, tmp_path, change, error, words):  # noqa: F811
    config = tiny_config(tiny_cohort, tmp_path, **change)
    with pytest.raises(error, match=words):
        finetune(config, log=lambda _: None)
    assert not (tmp_path / "tiny" / "last.pt").exists()


def test_cohort_without_label_columns_is_named(tiny_cohort, tmp_path):  # noqa: F811
    bad = tmp_path / "cohort.parquet"
    pl.read_parquet(tiny_cohort["cohort"]).drop("Edema").write_parquet(bad)
    config = tiny_config({**tiny_cohort, "cohort": bad}, tmp_path)
    with pytest.raises(DataError, match="Edema"):
        finetune(config, log=lambda _: None)


def test_targets_follow_the_training_label_policy(tiny_cohort):  # noqa: F811
    from engine.train.split_table import read_cohort_for_training, split_table

    cohort = read_cohort_for_training(tiny_cohort["cohort"])
    raw = cohort.filter(pl.col("split") == "train").select("Edema", "Cardiomegaly").to_numpy()
    table = split_table(cohort, "train", "medical-mae")
    edema, cardio = table.targets[:, 5], table.targets[:, 2]
    assert np.array_equal(edema, np.where(raw[:, 0] == -1, 1.0, np.nan_to_num(raw[:, 0]) == 1).astype(np.float32))
    assert np.array_equal(cardio, (raw[:, 1] == 1).astype(np.float32))
    assert np.isnan(split_table(cohort, "train", "ignore").targets[raw[:, 0] == -1, 5]).all()
