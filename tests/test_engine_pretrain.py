"""Self-supervised pre-training (MAE, MoCo v3) on a tiny synthetic pool: the methods learn, MoCo's momentum encoder
is trained by EMA only, MAE keeps exactly the visible fraction, the paper's selection rule, the written encoder
loads into fine-tuning, missing images stop the run before training, SIGKILL-resume and 2-process DDP."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import timm
import torch
import yaml
from engine_fixtures import tiny_cohort, tiny_pool  # noqa: F401 (fixtures)
from engine_fixtures import tiny_pretrain_config as tiny_config

from engine.config import to_dict
from engine.data.errors import DataError
from engine.models.classifier import build_classifier
from engine.models.mae import MaskedAutoencoder, build_mae
from engine.models.moco import build_moco, momentum_at
from engine.models.registry import get_spec
from engine.pretrain_config import PretrainConfig
from engine.pretrain_config import selection_epochs as window_size
from engine.train import pretrain as stage
from engine.train.loop import NonFiniteLossError
from engine.train.pretrain import pretrain, select_epoch
from engine.train.pretrain_data import PoolImages, ViewWarp, load_pool

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as the subprocesses (OMP_NUM_THREADS=1): on a shared 2-core machine two spinning OpenMP
    threads run these tiny models up to ten times slower, and one thread gives the same float sums everywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fixed_batch(pool: dict, views: int, n: int = 8) -> torch.Tensor:
    """n augmented pool images, [n, 3, 32, 32] (one view) or [n, 2, 3, 32, 32]."""
    config = tiny_config(pool, Path("unused"), "mae")
    dataset = PoolImages(load_pool(config), views=views, mask_tokens=0, scale=(0.2, 1.0), ratio=(0.75, 4 / 3),
                         hflip=0.5, rotation=7.0, seed=0)
    batch = torch.utils.data.default_collate([dataset[i] for i in range(n)])
    return ViewWarp(torch.device("cpu"), size=32, mean=IMAGENET[0], std=IMAGENET[1], interpolation="bicubic")(batch)[0]


def train_steps(model: torch.nn.Module, loss, steps: int, after=None) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    values = []
    for step in range(steps):
        value = loss()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        if after is not None:
            after(step)
        values.append(value.item())
    return values


def test_mae_keeps_exactly_the_visible_fraction_chosen_by_a_random_permutation():
    torch.manual_seed(0)
    encoder = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=4)  # 64 patches
    for ratio in (0.75, 0.6, 0.9):
        model = MaskedAutoencoder(encoder, decoder_dim=32, decoder_depth=1, decoder_heads=2, mask_ratio=ratio)
        tokens = torch.randn(5, 64, 8)
        kept, mask, restore = model.random_masking(tokens)
        keep = round(64 * (1 - ratio))
        assert kept.shape == (5, keep, 8) and model.keep == keep
        assert mask.sum(dim=1).tolist() == [64 - keep] * 5
        for row in range(5):  # the visible tokens are exactly the unmasked ones, none repeated
            visible = torch.nonzero(mask[row] == 0).flatten()
            order = torch.argsort(restore[row])[:keep]  # the permutation's first `keep` positions
            assert sorted(order.tolist()) == visible.tolist()
            torch.testing.assert_close(kept[row], tokens[row, order])
        assert len({tuple(torch.nonzero(m == 0).flatten().tolist()) for m in mask}) > 1  # a mask per image
    noise = torch.rand(2, 64)
    _, mask, _ = model.random_masking(torch.randn(2, 64, 8), noise)
    assert (mask == 0).nonzero()[:, 1].view(2, -1).sort().values.tolist() == \
        noise.argsort(dim=1)[:, :model.keep].sort().values.tolist()  # given noise fixes the mask
    with pytest.raises(ValueError, match="keeps 0 of 64"):
        MaskedAutoencoder(encoder, decoder_dim=32, decoder_depth=1, decoder_heads=2, mask_ratio=0.995)


def test_mae_steps_reduce_the_loss_on_a_fixed_batch(tiny_pool):  # noqa: F811
    images = fixed_batch(tiny_pool, views=1)
    torch.manual_seed(0)
    model = build_mae("vit_tiny_patch16_224", 32, decoder_dim=32, decoder_depth=1, decoder_heads=2, mask_ratio=0.75,
                      norm_pix_loss=True)
    noise = torch.rand(images.shape[0], model.num_patches)
    losses = train_steps(model, lambda: model(images, noise), 12)
    assert losses[-1] < 0.9 * losses[0]
    assert not model.decoder_pos_embed.requires_grad and not model.encoder.pos_embed.requires_grad


def test_moco_learns_while_its_momentum_encoder_gets_no_gradients_and_follows_the_ema(tiny_pool):  # noqa: F811
    views = fixed_batch(tiny_pool, views=2)
    torch.manual_seed(0)
    model = build_moco("vit_tiny_patch16_224", 32, dim=16, mlp_dim=32, temperature=0.2, frozen_patch_projection=True)
    momentum = 0.9

    def after(step):
        assert all(p.grad is None for p in model.momentum_encoder.parameters())
        assert model.base_encoder.patch_embed.proj.weight.grad is None  # frozen random patch projection
        before = [p.clone() for p in model.momentum_encoder.parameters()]
        model.update_momentum_encoder(momentum)
        for old, new, base in zip(before, model.momentum_encoder.parameters(), model.base_encoder.parameters(),
                                  strict=True):
            torch.testing.assert_close(new, momentum * old + (1 - momentum) * base)

    start = copy.deepcopy(model.momentum_encoder.state_dict())
    losses = train_steps(model, lambda: model(views[:, 0], views[:, 1]), 12, after)
    assert losses[-1] < 0.9 * losses[0]
    assert not torch.equal(start["blocks.0.attn.qkv.weight"], model.momentum_encoder.blocks[0].attn.qkv.weight)
    assert momentum_at(0, 100, 0.99) == 0.99 and momentum_at(100, 100, 0.99) == 1.0
    assert momentum_at(50, 100, 0.99) == pytest.approx(0.995)


def test_selection_rule_picks_the_lowest_loss_of_the_final_window():
    assert (window_size(800, 0.05), window_size(200, 0.05), window_size(10, 0.05), window_size(3, 1.0)) == \
        (40, 10, 1, 3)
    losses = [3.0 - 0.01 * e for e in range(100)]  # falling, but with a dip outside and a minimum inside the window
    losses[50], losses[96], losses[97], losses[98] = 0.1, 1.5, 1.2, 1.2
    losses[99] = float("nan")
    history = [{"epoch": e, "train_loss": loss} for e, loss in enumerate(losses)]
    assert select_epoch(history, 100, window_size(100, 0.05)) == {"epoch": 97, "train_loss": 1.2}  # earlier tie
    assert select_epoch(history[:95], 100, 5) is None  # the window has not started
    assert select_epoch(history[:97], 100, 5) == {"epoch": 96, "train_loss": 1.5}  # running choice on resume


@pytest.mark.parametrize("method, spec", [("mae", "medical-mae"), ("moco-v3", "medical-moco-v3")])
def test_pretrained_encoder_loads_into_fine_tuning_with_only_the_expected_missing_keys(
        tiny_pool, tmp_path, method, spec):  # noqa: F811
    config = tiny_config(tiny_pool, tmp_path / method, method)
    out = pretrain(config, log=lambda _: None)
    facts = json.loads((out / "pretraining.json").read_text())
    assert facts["method"] == method and facts["selected"]["epoch"] in (1, 2) and facts["epochs"] == 3
    assert facts["data"]["composition"]["total"]["images"] == tiny_pool["height"]
    assert set(facts["data"]["datasets"]) == {"chexpert", "nih"} and facts["data"]["fraction"]["fraction"] == 1.0
    assert facts["normalisation"]["mean"] == list(IMAGENET[0])
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [0, 1, 2]
    snapshots = sorted(p.name for p in (out / "snapshots").iterdir())
    assert snapshots == [f"encoder-epoch-{facts['selected']['epoch']:04d}.pth"]  # only the selectable one is kept
    assert (out / "encoder.pth").read_bytes() == (out / "snapshots" / snapshots[0]).read_bytes()
    saved = torch.load(out / "encoder.pth", weights_only=True)
    assert set(saved) == {"model"} and not any(k.startswith(("head", "decoder", "mask_token")) for k in saved["model"])
    for pool in ("avg", "token"):
        model, report = build_classifier(get_spec(spec), "vit_tiny_patch16_224", out / "encoder.pth",
                                         weights_format="auto", mode="finetune", input_size=32, drop_path=0.0,
                                         global_pool=pool)
        head = {"head.bias", "head.weight"}
        assert set(report.missing) == (head | {"fc_norm.bias", "fc_norm.weight"} if pool == "avg" else head)
        assert set(report.unexpected) == ({"norm.bias", "norm.weight"} if pool == "avg" else set())
        torch.testing.assert_close(model.blocks[0].attn.qkv.weight, saved["model"]["blocks.0.attn.qkv.weight"])
    last = torch.load(out / "last.pt", weights_only=False)["model"]
    assert any(k.startswith("decoder_" if method == "mae" else "momentum_encoder.") for k in last)
    start = time.perf_counter()
    assert pretrain(config, log=lambda _: None) == out and time.perf_counter() - start < 2  # finished: no rerun


def test_missing_pool_images_are_reported_before_training(tiny_pool, tmp_path):  # noqa: F811
    pool = pl.read_parquet(tiny_pool["pool"])
    extra = pool.head(3).with_columns(pl.format("train/ghost{}.jpg", pl.int_range(3)).alias("image_id"))
    broken = tmp_path / "pool.parquet"
    pl.concat([pool, extra]).write_parquet(broken)
    config = tiny_config({**tiny_pool, "pool": broken}, tmp_path / "out", "mae")
    with pytest.raises(DataError, match=r"3 pool image\(s\) cannot be read") as error:
        pretrain(config)
    assert "chexpert: 3 of" in str(error.value) and "chexpert:train/ghost0.jpg" in str(error.value)
    assert not (tmp_path / "out").exists()
    only_one = {"caches": {"chexpert": tiny_pool["caches"]["nih"]}}
    unmapped = tiny_config(tiny_pool, tmp_path / "out", "mae", data=only_one)
    with pytest.raises(DataError, match="no image cache configured for pool dataset"):
        pretrain(unmapped)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_pool, tmp_path, monkeypatch):  # noqa: F811
    real, calls = stage.loss_function, []

    def poisoned(method):
        def loss(model, inputs, targets):
            calls.append(1)
            value = real(method)(model, inputs, targets)
            return value * float("nan") if len(calls) > 4 else value  # epoch 0 has 3 steps: NaN in epoch 1

        return loss

    monkeypatch.setattr(stage, "loss_function", poisoned)
    config = tiny_config(tiny_pool, tmp_path / "out", "mae")
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1"):
        pretrain(config, log=lambda _: None)
    out = Path(config.out_dir)
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 0
    assert not (out / "encoder.pth").exists() and not (out / "pretrain.json").exists()


def test_views_are_drawn_per_image_and_warped_like_crop_flip_rotate(tiny_pool):  # noqa: F811
    pool = load_pool(tiny_config(tiny_pool, Path("unused"), "mae"))
    make = lambda: PoolImages(pool, views=2, mask_tokens=4, scale=(0.2, 1.0), ratio=(0.75, 4 / 3), hflip=0.5,  # noqa
                              rotation=7.0, seed=3)
    key = 5 * 2**32 + 7  # epoch 5, image 7
    first, again, other = make()[key], make()[key], make()[key + 2**32]
    assert torch.equal(first[1][0], again[1][0]) and torch.equal(first[1][1], again[1][1]) and first[2] == 7
    assert not torch.equal(first[1][0], other[1][0]) and not torch.equal(first[1][0][0], first[1][0][1])
    warp = ViewWarp(torch.device("cpu"), size=32, mean=(0.0,) * 3, std=(1.0,) * 3, interpolation="bilinear")
    image = first[0][None]
    identity = torch.tensor([[[[1.0, 0, 0], [0, 1.0, 0]], [[-1.0, 0, 0], [0, 1.0, 0]]]])  # plain, flipped
    out, _, _ = warp((image, (identity, torch.zeros(1, 0)), torch.tensor([7])))
    assert out.shape == (1, 2, 3, 32, 32)
    resized = torch.nn.functional.interpolate(image[:, None].float() / 255, size=32, mode="bilinear")
    torch.testing.assert_close(out[0, 0, :1], resized[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0, 1], out[0, 0].flip(-1), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- through the command line (subprocesses)

def write_config(config: PretrainConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(to_dict(config)))
    return path


def cli(config_yaml: Path, launcher: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, *launcher, "-m", "engine.train.pretrain_main", str(config_yaml)]


def run(command: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def kill_after_epochs(command: list[str], out: Path, epochs: int, timeout: float = 120) -> None:
    process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log, deadline = out / "log.jsonl", time.monotonic() + timeout
    while not log.exists() or len(log.read_text().splitlines()) < epochs:
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the run did not reach the epoch in time"
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "pretrain.json").exists(), "the run finished before it could be killed"


def null_gradient_free(key: str, value: torch.Tensor, method: str) -> torch.Tensor | None:
    """``value`` without the entries whose gradient is zero in exact arithmetic, or None to skip the tensor. AdamW
    turns the float noise of such a gradient into lr-sized steps of any sign, so 1 and 2 processes differ there:
    the attention key bias (softmax is shift invariant) and, for MoCo v3, the encoder's last norm bias and the
    projector's first BatchNorm mean (the BatchNorm after the projector's first layer removes constant shifts)."""
    if key.endswith("attn.qkv.bias"):
        query, _, value_bias = value.chunk(3)
        return torch.cat([query, value_bias])
    if method == "moco-v3" and key.endswith(("encoder.norm.bias", "encoder.head.1.running_mean")):
        return None
    return value


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_to_an_identical_encoder(tiny_pool, tmp_path):  # noqa: F811
    train = {"epochs": 6, "steps_per_epoch": 2, "deterministic": True}
    straight = tiny_config(tiny_pool, tmp_path / "a", "moco-v3", train=train)
    killed = tiny_config(tiny_pool, tmp_path / "b", "moco-v3", train=train)
    try:
        pretrain(straight, log=lambda _: None)  # in this process, one thread (fixture): as the subprocesses
    finally:
        torch.use_deterministic_algorithms(False)
    killed_yaml = write_config(killed, tmp_path / "b.yaml")
    kill_after_epochs(cli(killed_yaml), Path(killed.out_dir), epochs=2)
    saved = torch.load(Path(killed.out_dir) / "last.pt", weights_only=False)
    assert 1 <= saved["epoch"] < 5
    assert f"resuming after epoch {saved['epoch']}" in run(cli(killed_yaml)).stdout
    a, b = (Path(c.out_dir) for c in (straight, killed))
    assert (a / "encoder.pth").read_bytes() == (b / "encoder.pth").read_bytes()  # bit for bit
    resumed = torch.load(b / "last.pt", weights_only=False)["model"]
    for key, value in torch.load(a / "last.pt", weights_only=False)["model"].items():
        assert torch.equal(value, resumed[key]), key  # momentum encoder and predictor included


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mae", "moco-v3"])
def test_two_gloo_processes_match_one_process_at_the_same_global_batch(tiny_pool, tmp_path, method):  # noqa: F811
    one = tiny_config(tiny_pool, tmp_path / "one", method, train={"epochs": 2})
    two = tiny_config(tiny_pool, tmp_path / "two", method, train={"epochs": 2})
    pretrain(one, log=lambda _: None)
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    run(cli(write_config(two, tmp_path / "two.yaml"), launcher=torchrun))
    single = torch.load(Path(one.out_dir) / "last.pt", weights_only=False)
    double = torch.load(Path(two.out_dir) / "last.pt", weights_only=False)
    # MoCo v3 matches too: its keys are all-gathered and its BatchNorm statistics span both processes; without
    # either, each process would contrast 4 queries with 4 keys and the losses would differ at the first step
    for a, b in zip(single["history"], double["history"], strict=True):
        assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-5)
    for key, value in single["model"].items():
        expected, actual = (null_gradient_free(key, v, method) for v in (value, double["model"][key]))
        if expected is not None:
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
