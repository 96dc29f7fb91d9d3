"""A tiny synthetic CheXpert-format cohort, its subsets and a 32 px image cache, built once per test session,
helpers that write fine-tuning and pre-training configs for tiny timm models (ViT-Tiny at 32 px) on it, and the
cohort as a two-dataset pre-training pool."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from engine.data.cache_stage import cache_images
from engine.data.pools import POOL_COLUMNS, build_pool, write_pool
from engine.data.prepare import prepare_chexpert
from engine.data.subsets import build_subsets
from engine.data.synth import write_synthetic_chexpert
from engine.pretrain_config import MaeConfig, MocoConfig, PoolDataConfig, PretrainConfig, PretrainTrainConfig
from engine.recipes import DataConfig, FinetuneConfig, ModelConfig, TrainConfig

CACHE_SIZE = 40


def build_tiny_cohort(root: Path, *, patients: int = 160, seed: int = 0) -> dict[str, Path]:
    synth = write_synthetic_chexpert(root / "synthetic-chexpert", n_patients=patients, seed=seed, force=True)
    cohort = root / "cohort" / "cohort.parquet"
    prepare_chexpert(train_csv=synth["train_csv"], valid_csv=synth["valid_csv"], demographics=synth["demographics"],
                     split=synth["split"], out=cohort, force=True)
    build_subsets(cohort, seed=42, force=True)
    cache = root / f"cache-{CACHE_SIZE}"
    cache_images(table=cohort, image_root=synth["image_root"], out_dir=cache, size=CACHE_SIZE, workers=1,
                 force=True, progress=False)
    return {"cohort": cohort, "subsets": cohort.with_name("subsets.parquet"), "cache": cache}


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_cohort(tmp_path_factory.mktemp("tiny-cohort"))


def tiny_config(paths: dict[str, Path], out: Path, *, name: str = "scratch-vit", run_id: str = "tiny",
                architecture: str = "vit_tiny_patch16_224", data: dict | None = None, model: dict | None = None,
                train: dict | None = None) -> FinetuneConfig:
    """A few-step CPU config: 32 px input, global batch 8, 2 epochs of 3 steps, fp32, no workers."""
    data_kw = {"cohort": str(paths["cohort"]), "cache": str(paths["cache"]), "subsets": str(paths["subsets"]),
               "workers": 0, "max_images": 64, **(data or {})}
    model_kw = {"name": name, "architecture": architecture, "input_size": 32, **(model or {})}
    train_kw = {"epochs": 2, "batch_size": 8, "steps_per_epoch": 3, "warmup_epochs": 1.0, "eval_batch_size": 32,
                "precision": "fp32", "log_every": 0, **(train or {})}
    return FinetuneConfig(run_id=run_id, out_dir=str(out / run_id), store=str(out / "store"),
                          data=DataConfig(**data_kw), model=ModelConfig(**model_kw), train=TrainConfig(**train_kw))


@pytest.fixture(scope="session")
def tiny_pool(tiny_cohort, tmp_path_factory) -> dict:
    """The tiny cohort as a two-dataset pool (patients split by parity into 'chexpert' and 'nih', one cache)."""
    cohort = pl.read_parquet(tiny_cohort["cohort"]).select(POOL_COLUMNS)
    odd = pl.col("patient_id").str.slice(-1).cast(pl.Int32) % 2 == 1
    sources = [cohort.filter(~odd), cohort.filter(odd).with_columns(dataset=pl.lit("nih"))]
    pool, report = build_pool(sources)
    path = tmp_path_factory.mktemp("pool") / "pool.parquet"
    write_pool(pool, report, path)
    cache = str(tiny_cohort["cache"])
    return {"pool": path, "caches": {"chexpert": cache, "nih": cache}, "height": pool.height}


def tiny_pretrain_config(pool: dict, out: Path, method: str, *, train: dict | None = None,
                         data: dict | None = None) -> PretrainConfig:
    """ViT-Tiny at 32 px (4 patches), tiny decoder / heads, global batch 8, 3 epochs of 3 steps, window 2 epochs."""
    train_kw = {"epochs": 3, "batch_size": 8, "steps_per_epoch": 3, "warmup_epochs": 1.0, "blr": 1e-3,
                "precision": "fp32", "log_every": 0, "selection_window": 0.5, **(train or {})}
    data_kw = {"pool": str(pool["pool"]), "caches": pool["caches"], "workers": 0, **(data or {})}
    return PretrainConfig(run_id=f"tiny-{method}", method=method, out_dir=str(out), data=PoolDataConfig(**data_kw),
                          architecture="vit_tiny_patch16_224", input_size=32,
                          mae=MaeConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2),
                          moco=MocoConfig(dim=16, mlp_dim=32), train=PretrainTrainConfig(**train_kw))
