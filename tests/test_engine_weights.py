"""Checkpoint loaders (engine/models/weights*.py, remedis.py) on files written here in each real layout.

The layouts follow shared/notes/formats.md sections 1-5; tiny timm models stand in for the ViT-B and R152x2 of the
paper, except the REMEDIS test, which uses the real R152x2 variable names and shapes.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.resnetv2 import ResNetV2
from torch import nn

from engine.models import remedis
from engine.models.registry import get_spec
from engine.models.weights import (
    LoadReport,
    WeightsError,
    detect_format,
    load_pretrained,
    read_state_dict,
    require_weights_file,
)
from engine.models.weights_bit import npz_name

HEAD = {"head.weight", "head.bias"}
FC_NORM = {"fc_norm.weight", "fc_norm.bias"}
NORM = ("norm.bias", "norm.weight")
CHECKED = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.2.mlp.fc2.bias")


def vit(img_size: int = 32, global_pool: str = "avg", num_classes: int = 14, name: str = "vit_tiny_patch16_224"):
    """A timm ViT cut to 3 blocks for speed; names and loading are those of the 12-block model."""
    return timm.create_model(name, pretrained=False, img_size=img_size, global_pool=global_pool,
                             num_classes=num_classes, depth=3)


@pytest.fixture(scope="module")
def encoder() -> dict[str, torch.Tensor]:
    """A pre-training encoder in MAE naming: ViT without head (token pooling keeps the final norm)."""
    torch.manual_seed(0)
    state = vit(global_pool="token", num_classes=0).state_dict()
    return {key: value + torch.randn_like(value) for key, value in state.items()}  # norms no longer all ones


def decoder() -> dict[str, torch.Tensor]:
    """A few MAE decoder tensors (models_mae.py names) and the mask token."""
    return {"mask_token": torch.randn(1, 1, 64), "decoder_embed.weight": torch.randn(64, 192),
            "decoder_pos_embed": torch.randn(1, 5, 64), "decoder_blocks.0.norm1.weight": torch.randn(64),
            "decoder_norm.weight": torch.randn(64), "decoder_pred.weight": torch.randn(768, 64)}


def adam_state() -> dict:
    weight = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight])
    weight.sum().backward()
    optimizer.step()
    return optimizer.state_dict()


def moco_file(path: Path, encoder: dict, *, ddp: bool = True) -> Path:
    """MoCo v3 main_moco.py checkpoint: base/momentum encoders with a 3-layer BN projector, and a predictor."""
    projector = nn.Sequential(nn.Linear(192, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
                              nn.Linear(64, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
                              nn.Linear(64, 16, bias=False), nn.BatchNorm1d(16, affine=False)).state_dict()
    predictor = nn.Sequential(nn.Linear(16, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
                              nn.Linear(64, 16, bias=False), nn.BatchNorm1d(16, affine=False)).state_dict()
    lead = "module." if ddp else ""
    state = {}
    for part, shift in (("base_encoder", 0.0), ("momentum_encoder", 1.0)):
        state |= {f"{lead}{part}.{key}": value + shift for key, value in encoder.items()}
        state |= {f"{lead}{part}.head.{key}": value for key, value in projector.items()}
    state |= {f"{lead}predictor.{key}": value for key, value in predictor.items()}
    torch.save({"epoch": 300, "arch": "vit_base", "state_dict": state, "optimizer": adam_state(),
                "scaler": {"scale": 65536.0}}, path)
    return path


def medical_mae_file(path: Path, encoder: dict) -> Path:
    """Medical MAE's raw training checkpoint: model with decoder, optimizer, epoch, scaler and pickled args."""
    args = argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.9, dataset="chexpert chestxray_nih")
    torch.save({"model": encoder | decoder(), "optimizer": adam_state(), "epoch": 799, "scaler": {"scale": 1.0},
                "args": args}, path)
    return path


def small_bit(channels=(128, 128, 256, 256), num_classes: int = 14) -> ResNetV2:
    """A BiT-style ResNetV2 small enough for CPU tests (one unit per block)."""
    return ResNetV2(layers=[1, 1, 1, 1], channels=channels, stem_chs=32, stem_type="fixed", num_classes=num_classes)


def bit_npz(path: Path, model: ResNetV2, *, head: bool = True) -> Path:
    """The model's weights in BiT .npz layout: resnet/... names, HWIO kernels (the inverse of timm's _load_weights)."""
    arrays = {}
    for key, value in model.state_dict().items():
        if key.startswith("head.") and not head:
            continue
        array = value.numpy()
        arrays[npz_name(key)] = array.transpose(2, 3, 1, 0) if array.ndim == 4 else array
    np.savez(path, **arrays)
    return path


def assert_loaded(model: nn.Module, source: dict, keys=CHECKED) -> None:
    state = model.state_dict()
    for key in keys:
        assert torch.equal(state[key], source[key]), key


def test_mae_encoder_only_into_avg_pooling_vit(tmp_path, encoder):
    torch.save({"model": encoder}, tmp_path / "mae_pretrain_vit_base.pth")
    model = vit()
    report = load_pretrained(model, tmp_path / "mae_pretrain_vit_base.pth", "mae")
    assert set(report.missing) == FC_NORM | HEAD and report.unexpected == NORM
    assert report.format == "mae" and report.dropped == () and report.resized == ()
    assert_loaded(model, encoder)


def test_mae_into_token_pooling_vit_uses_the_final_norm(tmp_path, encoder):
    torch.save({"model": encoder}, tmp_path / "mae.pth")
    model = vit(global_pool="token")
    report = load_pretrained(model, tmp_path / "mae.pth", "mae")
    assert set(report.missing) == HEAD and report.unexpected == ()
    assert_loaded(model, encoder, CHECKED + NORM)


def test_linear_probe_backbone_without_head(tmp_path, encoder):
    torch.save({"model": encoder}, tmp_path / "mae.pth")
    assert set(load_pretrained(vit(num_classes=0), tmp_path / "mae.pth", "mae").missing) == FC_NORM
    assert load_pretrained(vit(global_pool="token", num_classes=0), tmp_path / "mae.pth", "mae").missing == ()


def test_mae_full_file_drops_decoder_and_mask_token(tmp_path, encoder):
    torch.save({"model": encoder | decoder()}, tmp_path / "mae_pretrain_vit_base_full.pth")
    model = vit()
    report = load_pretrained(model, tmp_path / "mae_pretrain_vit_base_full.pth", "mae")
    assert set(report.dropped) == set(decoder()) and report.unexpected == NORM
    assert_loaded(model, encoder)


def test_medical_mae_checkpoint_with_pickled_args(tmp_path, encoder):
    path = medical_mae_file(tmp_path / "vit-b_CXR_0.5M_mae.pth", encoder)
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only loading refuses it (formats.md section 0.1)
        torch.load(path, weights_only=True)
    model = vit()
    report = load_pretrained(model, path, "mae", model_name="medical-mae")
    assert set(report.missing) == FC_NORM | HEAD and "mask_token" in report.dropped
    assert_loaded(model, encoder)
    assert json.loads(json.dumps(report.as_dict()))["missing"] == list(report.missing)


@pytest.mark.parametrize("ddp", [True, False])
def test_moco_v3_keeps_the_base_encoder_only(tmp_path, encoder, ddp):
    path = moco_file(tmp_path / "vit-b-300ep.pth.tar", encoder, ddp=ddp)
    model = vit()
    report = load_pretrained(model, path, "moco-v3")
    assert set(report.missing) == FC_NORM | HEAD and report.unexpected == NORM
    # dropped keys are named after 'module.' is stripped
    assert {"base_encoder.head.1.running_var", "base_encoder.head.7.num_batches_tracked", "predictor.0.weight",
            "momentum_encoder.blocks.0.attn.qkv.weight"} <= set(report.dropped)
    assert not any(key.startswith("base_encoder.blocks") for key in report.dropped)
    assert read_state_dict(path)[1] == "moco-v3" and load_pretrained(vit(), path, "auto").format == "moco-v3"
    assert_loaded(model, encoder)  # the momentum encoder differs by +1 everywhere


def test_moco_v3_converted_encoder_files(tmp_path, encoder):
    torch.save({"model": encoder}, tmp_path / "deit.pth")  # convert_to_deit.py output
    torch.save(encoder, tmp_path / "encoder.pth")  # a plain encoder dict (the project's own pre-training)
    for name in ("deit.pth", "encoder.pth"):
        model = vit()
        assert set(load_pretrained(model, tmp_path / name, "moco-v3").missing) == FC_NORM | HEAD
        assert_loaded(model, encoder)


def test_timm_state_dict_with_prefixes_and_another_head(tmp_path, encoder):
    source = vit(global_pool="token", num_classes=10).state_dict()
    torch.save({f"module._orig_mod.{key}": value for key, value in source.items()}, tmp_path / "model.pth")
    model = vit(global_pool="token")
    report = load_pretrained(model, tmp_path / "model.pth", "timm")
    assert set(report.missing) == HEAD and set(report.dropped) == HEAD and report.unexpected == ()
    assert_loaded(model, source)


def test_safetensors(tmp_path, encoder):
    save_file(encoder, tmp_path / "model.safetensors")
    model = vit()
    report = load_pretrained(model, tmp_path / "model.safetensors", "safetensors")
    assert report.format == "safetensors" and set(report.missing) == FC_NORM | HEAD
    assert_loaded(model, encoder)


def test_bit_npz_loads_through_timm_with_a_fresh_head(tmp_path):
    torch.manual_seed(1)
    source = small_bit(num_classes=21)
    for parameter in source.parameters():
        nn.init.normal_(parameter)
    path = bit_npz(tmp_path / "BiT-M-R152x2.npz", source)
    model = small_bit()
    head_before = model.head.fc.weight.clone()
    report = load_pretrained(model, path, "bit-npz")
    assert report.missing == ("head.fc.bias", "head.fc.weight") and report.unexpected == ()
    assert report.dropped == ("resnet/head/conv2d/bias", "resnet/head/conv2d/kernel")
    assert torch.equal(model.head.fc.weight, head_before)
    backbone = [key for key in source.state_dict() if not key.startswith("head.")]
    assert_loaded(model, source.state_dict(), backbone)
    state, fmt, _ = read_state_dict(path)
    assert fmt == "bit-npz" and all(torch.equal(state[key], source.state_dict()[key]) for key in backbone)


def test_bit_npz_of_another_width_names_keys_and_shapes(tmp_path):
    path = bit_npz(tmp_path / "wide.npz", small_bit(channels=(256, 256, 256, 256)))
    with pytest.raises(WeightsError) as err:
        load_pretrained(small_bit(), path, "bit-npz", model_name="bit")
    message = str(err.value)
    assert "model 'bit'" in message and str(path) in message
    assert "resnet/block1/unit01/b/standardized_conv2d/kernel -> stages.0.blocks.0.conv2.weight: " \
           "file (3, 3, 64, 64), model needs (3, 3, 32, 32)" in message


def test_npz_without_the_bit_stem_is_refused(tmp_path):
    np.savez(tmp_path / "vit.npz", **{"Transformer/encoder_norm/scale": np.ones(3, np.float32)})
    with pytest.raises(WeightsError, match="root_block/standardized_conv2d/kernel"):
        detect_format(tmp_path / "vit.npz")
    with pytest.raises(WeightsError, match="no stem kernel"):
        load_pretrained(small_bit(), tmp_path / "vit.npz", "bit-npz")


def test_pos_embed_is_resampled_to_the_model_grid(tmp_path, encoder):
    torch.save({"model": encoder}, tmp_path / "mae.pth")  # 32 px: a 2x2 grid
    model = vit(img_size=64)  # 4x4 grid
    report = load_pretrained(model, tmp_path / "mae.pth", "mae")
    assert report.resized == ("pos_embed",) and model.pos_embed.shape == (1, 17, 192)
    assert torch.equal(model.pos_embed[:, :1], encoder["pos_embed"][:, :1])  # the class token's entry is kept
    expected = timm.layers.resample_abs_pos_embed(encoder["pos_embed"], new_size=[4, 4], num_prefix_tokens=1)
    assert torch.equal(model.pos_embed, expected)
    assert_loaded(model, encoder, CHECKED[2:])


def test_wrong_size_checkpoint_names_key_and_both_shapes(tmp_path):
    torch.save({"model": vit(global_pool="token", num_classes=0, name="vit_small_patch16_224").state_dict()},
               tmp_path / "small.pth")
    with pytest.raises(WeightsError) as err:
        load_pretrained(vit(), tmp_path / "small.pth", "mae")
    assert "blocks.0.attn.qkv.weight: file (1152, 384), model (576, 192)" in str(err.value)


def test_extra_and_missing_keys_are_errors(tmp_path, encoder):
    torch.save({"model": encoder | {"blocks.0.extra_scale": torch.ones(3)}}, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"no place for[\s\S]*blocks.0.extra_scale"):
        load_pretrained(vit(), tmp_path / "extra.pth", "mae")
    torch.save({"model": {k: v for k, v in encoder.items() if k != "blocks.1.norm1.weight"}}, tmp_path / "less.pth")
    with pytest.raises(WeightsError, match=r"lacks 1 tensor[\s\S]*blocks.1.norm1.weight"):
        load_pretrained(vit(), tmp_path / "less.pth", "mae")


def test_fine_tuned_mae_file_is_refused(tmp_path, encoder):
    tuned = encoder | {"fc_norm.weight": torch.ones(192), "fc_norm.bias": torch.zeros(192),
                       "head.weight": torch.zeros(1000, 192), "head.bias": torch.zeros(1000)}
    torch.save({"model": tuned}, tmp_path / "mae_finetuned_vit_base.pth")
    with pytest.raises(WeightsError, match="fine-tuned classifier.*1000-class head"):
        load_pretrained(vit(), tmp_path / "mae_finetuned_vit_base.pth", "mae")


def test_format_and_file_mismatches_are_refused(tmp_path, encoder):
    path = moco_file(tmp_path / "moco.pth.tar", encoder)
    with pytest.raises(WeightsError, match="MoCo v3 training checkpoint.*'mae'"):
        load_pretrained(vit(), path, "mae")
    with pytest.raises(WeightsError, match="does not match the file"):
        read_state_dict(path, "bit-npz")
    with pytest.raises(WeightsError, match="'bit-npz' does not match the file, which is a torch file"):
        load_pretrained(small_bit(), path, "bit-npz")
    bit_npz(tmp_path / "bit.npz", small_bit())
    with pytest.raises(WeightsError, match="'timm' does not match the file, which is a numpy .npz"):
        load_pretrained(small_bit(), tmp_path / "bit.npz", "timm")


def test_unsafe_pickle_is_refused_without_fallback(tmp_path, encoder):
    torch.save({"model": encoder, "args": {"output_dir": Path("/tmp/out")}}, tmp_path / "unsafe.pth")
    with pytest.raises(WeightsError, match="refused to unpickle"):
        read_state_dict(tmp_path / "unsafe.pth")


def test_detect_format_of_every_layout(tmp_path, encoder):
    torch.save({"model": encoder}, tmp_path / "mae.pth")
    medical_mae_file(tmp_path / "medical.pth", encoder)
    moco_file(tmp_path / "moco.pth.tar", encoder)
    torch.save(encoder, tmp_path / "plain.bin")
    save_file(encoder, tmp_path / "weights.safetensors")
    bit_npz(tmp_path / "bit.npz", small_bit())
    found = {name: detect_format(tmp_path / name) for name in
             ("mae.pth", "medical.pth", "moco.pth.tar", "plain.bin", "weights.safetensors", "bit.npz")}
    assert found == {"mae.pth": "mae", "medical.pth": "mae", "moco.pth.tar": "moco-v3", "plain.bin": "timm",
                     "weights.safetensors": "safetensors", "bit.npz": "bit-npz"}
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(WeightsError, match="not a checkpoint"):
        detect_format(tmp_path / "notes.txt")


def test_require_weights_file_says_what_to_fetch(tmp_path):
    spec = get_spec("mae")
    with pytest.raises(WeightsError) as err:
        require_weights_file(spec, None)
    assert all(text in str(err.value) for text in ("'mae'", spec.files, spec.published_at))
    with pytest.raises(WeightsError, match="does not exist[\\s\\S]*nowhere.pth"):
        require_weights_file(spec, str(tmp_path / "nowhere.pth"))
    (tmp_path / spec.files).write_bytes(b"x")
    assert require_weights_file(spec, str(tmp_path)) == tmp_path / spec.files
    assert require_weights_file(get_spec("scratch-vit"), None) is None
    saved_model = tmp_path / "cxr-152x2-remedis-m"
    saved_model.mkdir()
    (saved_model / "saved_model.pb").write_bytes(b"")
    with pytest.raises(WeightsError, match="convert-remedis"):
        require_weights_file(get_spec("remedis"), str(tmp_path))


def test_load_report_is_json_able():
    report = LoadReport("w.pth", "mae", ("head.bias",), (), ("mask_token",), ("pos_embed",))
    assert json.loads(json.dumps(report.as_dict())) == {"path": "w.pth", "format": "mae", "missing": ["head.bias"],
                                                        "unexpected": [], "dropped": ["mask_token"],
                                                        "resized": ["pos_embed"]}


# REMEDIS (formats.md section 5) ------------------------------------------------------------------------------------

def tf_variables(units, width, outer="base_model/resnet/", rng=None) -> dict[str, np.ndarray]:
    """A REMEDIS-like variable map: the BiT backbone under ``outer`` plus optimizer slots, EMA, heads, global_step.
    Each backbone tensor is a distinct constant except a few random ones (checked after HWIO -> OIHW)."""
    rng = rng or np.random.default_rng(0)
    variables = {}
    for index, (name, shape) in enumerate(remedis.bit_layout(units, width).items()):
        random = name.startswith(("root_block", "block3/unit17/b/", "block2/unit01/a/proj", "group_norm/beta"))
        variables[outer + name] = rng.standard_normal(shape, dtype=np.float32) if random else \
            np.full(shape, index, np.float32)
        variables[f"{outer}{name}/Momentum"] = np.zeros(1, np.float32)  # shape irrelevant: ignored by name
    variables[f"{outer}block1/unit01/a/group_norm/gamma/ExponentialMovingAverage"] = np.zeros(1, np.float32)
    variables |= {"global_step": np.array(1000), "head_supervised/linear_layer/dense/kernel": np.zeros((4, 14)),
                  "projection_head/nl_0/dense/kernel": np.zeros(2), "resnet/head/conv2d/kernel": np.zeros(1)}
    return variables


@pytest.fixture(scope="module")
def r152x2() -> nn.Module:
    return timm.create_model("resnetv2_152x2_bit", pretrained=False, num_classes=14)


def test_remedis_r152x2_converts_and_loads_into_timm(tmp_path, r152x2):
    variables = tf_variables((3, 8, 36, 3), 2)
    summary = remedis.convert_remedis(variables, tmp_path / "remedis.npz")
    assert (summary["tensors"], summary["stem"], summary["final_norm"]) == (457, [7, 7, 3, 128], 4096)
    assert summary["architecture"] == "R152x2" and summary["source_prefix"] == "base_model/resnet/"
    assert summary["ignored"] == 457 + 5 and [p.name for p in tmp_path.iterdir()] == ["remedis.npz"]
    with np.load(tmp_path / "remedis.npz") as arrays:
        assert len(arrays.files) == 457 and all(name.startswith("resnet/") for name in arrays.files)
    report = load_pretrained(r152x2, tmp_path / "remedis.npz", "bit-npz", model_name="remedis")
    assert report.missing == ("head.fc.bias", "head.fc.weight") and report.dropped == ()
    state, source = r152x2.state_dict(), "base_model/resnet/"
    for key, name in (("stem.conv.weight", "root_block/standardized_conv2d/kernel"),
                      ("stages.2.blocks.16.conv2.weight", "block3/unit17/b/standardized_conv2d/kernel"),
                      ("stages.1.blocks.0.downsample.conv.weight", "block2/unit01/a/proj/standardized_conv2d/kernel")):
        assert torch.equal(state[key], torch.from_numpy(variables[source + name].transpose(3, 2, 0, 1))), key
    assert torch.equal(state["norm.bias"], torch.from_numpy(variables[source + "group_norm/beta"]))
    index = list(remedis.bit_layout((3, 8, 36, 3), 2)).index("block4/unit03/c/group_norm/gamma")  # its constant
    assert torch.equal(state["stages.3.blocks.2.norm3.weight"], torch.full((1024,), float(index)))


def test_remedis_structure_errors_name_the_variables(tmp_path):
    variables = tf_variables((1, 1, 1, 1), 1)
    with pytest.raises(WeightsError, match="found a BiT R14x1"):
        remedis.convert_remedis(variables, tmp_path / "out.npz")
    del variables["base_model/resnet/block2/unit01/b/group_norm/beta"]
    variables["base_model/resnet/block3/unit01/b/proj/standardized_conv2d/kernel"] = np.zeros((1, 1, 1, 1))
    with pytest.raises(WeightsError, match=r"1 variable\(s\) missing, 1 unexpected") as err:
        remedis.convert_remedis(variables, tmp_path / "out.npz", expect=None)
    assert "block2/unit01/b/group_norm/beta" in str(err.value) and "block3/unit01/b/proj" in str(err.value)
    assert not list(tmp_path.iterdir())


def test_remedis_several_prefixes_need_a_choice_and_writes_atomically(tmp_path, monkeypatch):
    variables = tf_variables((1, 1, 1, 1), 1) | tf_variables((1, 1, 1, 1), 1, outer="ema_model/resnet/")
    with pytest.raises(WeightsError, match="several prefixes"):
        remedis.convert_remedis(variables, tmp_path / "out.npz", expect=None)
    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="disk full"):
        remedis.convert_remedis(variables, tmp_path / "out.npz", expect=None, prefix="ema_model/resnet/")
    assert not list(tmp_path.iterdir())  # no half-written file, no temporary left


def test_read_tf_variables_needs_tensorflow_and_a_saved_model(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="variables.index"):
        remedis.read_tf_variables(tmp_path)
    (tmp_path / "variables").mkdir()
    (tmp_path / "variables" / "variables.index").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ImportError, match="pip install tensorflow-cpu"):
        remedis.read_tf_variables(tmp_path)
    variables = tf_variables((1, 1, 1, 1), 1)
    reader = types.SimpleNamespace(get_variable_to_shape_map=lambda: {name: None for name in variables},
                                   get_tensor=variables.__getitem__)
    opened = []
    fake_tf = types.SimpleNamespace(train=types.SimpleNamespace(load_checkpoint=lambda p: opened.append(p) or reader))
    monkeypatch.setitem(sys.modules, "tensorflow", fake_tf)
    summary = remedis.convert_remedis_dir(tmp_path, tmp_path / "r14.npz", expect=None)
    assert opened == [str(tmp_path / "variables" / "variables")] and summary["tensors"] == 3 + 9 * 4 + 4
    model = ResNetV2(layers=[1, 1, 1, 1], stem_type="fixed", num_classes=0)
    report = load_pretrained(model, tmp_path / "r14.npz", "bit-npz")
    index = list(remedis.bit_layout((1, 1, 1, 1), 1)).index("group_norm/gamma")
    assert report.missing == () and torch.equal(model.norm.weight, torch.full((2048,), float(index)))
