"""Pre-trained weights through the fine-tuning stage: a MAE-format checkpoint fine-tuned end to end, and a linear
probe whose backbone stays bit-identical (MoCo v3's sanity_check) while only the BatchNorm + linear head learn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from engine_fixtures import tiny_cohort, tiny_config  # noqa: F401 (fixture)

from engine.config import to_dict
from engine.models.classifier import LinearProbe
from engine.train.finetune import SUMMARY, finetune
from engine.train.predict import predict

ROOT = Path(__file__).resolve().parents[1]


def write_mae_checkpoint(path: Path, *, seed: int = 1) -> dict[str, torch.Tensor]:
    """A ViT-Tiny encoder in the MAE release layout ({'model': ...} with decoder keys), at 32 px."""
    torch.manual_seed(seed)
    encoder = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0, global_pool="token")
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    full = {**state, "mask_token": torch.zeros(1, 1, 64), "decoder_embed.weight": torch.zeros(64, 192)}
    torch.save({"model": full, "epoch": 799}, path)
    return state


@pytest.fixture(scope="module")
def mae_file(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("weights") / "mae_pretrain_vit_tiny.pth"
    return path, write_mae_checkpoint(path)


def test_finetuning_starts_from_the_pretrained_encoder(tiny_cohort, tmp_path, mae_file, monkeypatch):  # noqa: F811
    path, state = mae_file
    seen = {}
    import engine.train.finetune as stage

    real = stage.make_optimizer

    def spy(model, recipe, probe):  # the model as it enters training, right after loading
        seen.update({k: v.clone() for k, v in model.state_dict().items()})
        return real(model, recipe, probe)

    monkeypatch.setattr(stage, "make_optimizer", spy)
    config = tiny_config(tiny_cohort, tmp_path, name="mae", model={"checkpoint": str(path)}, train={"epochs": 1})
    finetune(config, log=lambda _: None)
    for key in ("pos_embed", "blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "blocks.11.mlp.fc2.bias"):
        assert torch.equal(seen[key], state[key]), key
    assert seen["head.weight"].std() < 1e-4  # MAE's fresh head: trunc_normal std 2e-5
    summary = json.loads((Path(config.out_dir) / SUMMARY).read_text())
    assert sorted(summary["weights"]["missing"]) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert "decoder_embed.weight" in summary["weights"]["dropped"]


def test_linear_probe_changes_only_the_head(tiny_cohort, tmp_path, mae_file):  # noqa: F811
    path, state = mae_file
    config = tiny_config(tiny_cohort, tmp_path, name="mae", model={"checkpoint": str(path), "global_pool": "token"},
                         train={"mode": "linear-probe", "batch_size": 16, "epochs": 2, "blr": 1.0})
    finetune(config, log=lambda _: None)  # raises when any backbone tensor changed (post-run sanity check)
    saved = torch.load(Path(config.out_dir) / "last.pt", weights_only=False)
    backbone = {k.removeprefix("backbone."): v for k, v in saved["model"].items() if k.startswith("backbone.")}
    assert backbone.keys() == state.keys()
    assert all(torch.equal(backbone[k], state[k]) for k in state)
    first = torch.load(Path(config.out_dir) / "best.pt", weights_only=True)["model"]
    assert not torch.equal(saved["model"]["head.1.weight"], torch.zeros_like(first["head.1.weight"]))
    assert saved["optimizer"]["param_groups"][0]["always_adapt"] is True  # LARS adapts the weight matrix (MAE)
    predict(config, log=lambda _: None)
    info = json.loads((Path(config.store) / "runs" / config.run_id / "run.json").read_text())
    assert info["finetune_mode"] == "linear-probe" and info["model"] == "mae"


def test_linear_probe_keeps_backbone_batchnorm_in_eval_mode():
    backbone = timm.create_model("resnet18", num_classes=0)
    probe = LinearProbe(backbone).train()
    assert not backbone.training and probe.head.training
    before = backbone.bn1.running_mean.clone()
    probe(torch.randn(4, 3, 32, 32)).sum().backward()
    assert torch.equal(backbone.bn1.running_mean, before)
    assert all(p.grad is None for p in backbone.parameters())


@pytest.mark.parametrize("change, words", [
    ({"name": "mae"}, "mae"),  # no checkpoint given for a pre-trained model
    ({"name": "mae", "checkpoint": "/nonexistent/mae_pretrain_vit_base.pth"}, "facebookresearch/mae"),
])
def test_cli_names_the_missing_weights_and_exits_2(tiny_cohort, tmp_path, change, words):  # noqa: F811
    config = tiny_config(tiny_cohort, tmp_path, model=change)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    result = subprocess.run([sys.executable, "run_experiments.py", "finetune", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert words in result.stderr and "Traceback" not in result.stderr


def test_cli_rejects_an_unknown_config_key(tiny_cohort, tmp_path):  # noqa: F811
    config = tiny_config(tiny_cohort, tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    result = subprocess.run([sys.executable, "run_experiments.py", "finetune", str(path), "--set", "train.lr=1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "train.lr" in result.stderr and "Traceback" not in result.stderr
