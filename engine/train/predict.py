"""Stage ``predict``: score the validation and test splits with the selected checkpoint and write a store run.

``predict(config) -> run folder``. Loads ``best.pt`` (selected on validation by ``finetune``), scores every image
of ``data.predict_splits`` (the whole split: resampled and balanced test sets are weights in the store, issue A),
and writes ``predictions.parquet`` + ``run.json`` atomically through ``engine.metrics.store.write_run``; the store
gets the prepared cohort (and its subsets) when it has none, so ``report`` works on it without any conversion.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch

from engine.config import config_hash, to_dict
from engine.data.cohort_report import cohort_hash
from engine.data.schema import PATHOLOGIES
from engine.metrics import store as results_store
from engine.metrics.store_schema import COHORT_FILE, SUBSETS_FILE
from engine.models.classifier import build_classifier
from engine.models.registry import get_spec, run_facts
from engine.provenance import code_version
from engine.recipes import FinetuneConfig, Recipe, resolve_recipe
from engine.train import distributed
from engine.train.checkpoint import BEST
from engine.train.evaluate import gather_logits
from engine.train.finetune import SUMMARY, is_finished
from engine.train.loop import autocast_for
from engine.train.setup import make_batches, make_preparer
from engine.train.split_table import SplitTable, read_cohort_for_training, split_table


def predict(config: FinetuneConfig, *, force: bool = False, log: Callable[[str], None] = print) -> Path | None:
    """Score the splits and write run ``config.run_id`` into ``config.store``; the run folder (None off rank 0)."""
    if config.store is None:
        raise ValueError("store: the predict stage needs a results store folder (key 'store')")
    if not is_finished(config):
        raise FileNotFoundError(f"{Path(config.out_dir) / SUMMARY} missing or from another config: run finetune first")
    recipe = resolve_recipe(config)
    dist = distributed.setup()
    try:
        model = _load_selected(config, recipe, dist.device)
        cohort = read_cohort_for_training(config.data.cohort)
        cache = _open_cache(config)
        frames = []
        for split in config.data.predict_splits:
            table = split_table(cohort, split, config.data.evaluation_label_policy, max_images=config.data.max_images)
            logits = score_table(model, cache, table, config, recipe, dist)
            frames.append(_long_frame(split, table.image_ids, table.targets, logits))
            log(f"{config.run_id}: scored {len(table):,} {split} images")
        if not dist.is_main:
            return None
        _ensure_store_cohort(Path(config.store), cohort, config)
        info = run_info(config, recipe, cohort, cache.manifest)
        return results_store.write_run(config.store, config.run_id, pl.concat(frames), info, force=force)
    finally:
        distributed.teardown()


def score_table(model: torch.nn.Module, cache, table: SplitTable, config: FinetuneConfig, recipe: Recipe,
                dist: distributed.Dist) -> np.ndarray:
    """Logits [N, 14] of every image of ``table``, each rank scoring its share."""
    batches = make_batches(cache, table, None, batch_size=max(1, config.train.eval_batch_size // dist.world),
                           shuffle=False, drop_last=False, seed=0, workers=config.data.workers, dist=dist)
    prepare = make_preparer(config, recipe, dist, training=False)
    return gather_logits(model, batches, prepare, autocast_for(dist.device, config.train.precision), len(table))


def _open_cache(config: FinetuneConfig):
    from engine.data.cache_read import ImageCache

    return ImageCache.open(config.data.cache)


def _load_selected(config: FinetuneConfig, recipe: Recipe, device: torch.device) -> torch.nn.Module:
    """The classifier with the weights of the selected epoch (no pre-trained file needed any more)."""
    model, _ = build_classifier(get_spec(config.model.name), recipe.architecture, None, weights_format="none",
                                mode=config.train.mode, input_size=config.model.input_size, drop_path=0.0,
                                global_pool=config.model.global_pool)
    saved = torch.load(Path(config.out_dir) / BEST, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["model"])
    return model.to(device).eval()


def _long_frame(split: str, image_ids: list[str], targets: np.ndarray, logits: np.ndarray) -> pl.DataFrame:
    """Long rows (split, image_id, pathology, y_true, y_score); scores are sigmoid probabilities in float64."""
    probabilities = torch.sigmoid(torch.from_numpy(logits).double()).numpy()  # float64: no saturation ties near 1
    n = len(image_ids)
    return pl.DataFrame({
        "split": [split] * (n * len(PATHOLOGIES)),
        "image_id": np.repeat(np.asarray(image_ids, dtype=object), len(PATHOLOGIES)),
        "pathology": np.tile(np.asarray(PATHOLOGIES, dtype=object), n),
        "y_true": targets.reshape(-1).astype(np.float64),
        "y_score": probabilities.reshape(-1),
    }).with_columns(pl.col("y_true").fill_nan(None))


def _ensure_store_cohort(store: Path, cohort: pl.DataFrame, config: FinetuneConfig) -> None:
    """Write the prepared cohort (and subsets) into a store that has none; otherwise they must agree."""
    path = store / COHORT_FILE
    if not path.exists():
        results_store.write_cohort(store, cohort)
    else:
        merged, report = results_store.merge_cohort(results_store.read_cohort(store), cohort, file=path)
        if report["rows_written"]:
            results_store.write_cohort(store, merged, force=True)
    subsets = store / SUBSETS_FILE
    if config.data.subsets and not subsets.exists():
        tmp = subsets.with_name(f".{SUBSETS_FILE}.tmp")
        shutil.copyfile(config.data.subsets, tmp)
        tmp.replace(subsets)


def _is_synthetic(manifest: dict) -> bool:
    root = Path(str(manifest.get("image_root", "")))
    return any((folder / "synthetic.json").is_file() for folder in (root, *list(root.parents)[:2]))


def pretraining_fields(pretraining: dict) -> dict:
    """run.json fields from the ``pretraining.json`` of a self-pre-trained encoder (issue E); empty otherwise."""
    if not pretraining:
        return {"pretraining_epochs": None, "pretraining_fraction": None}
    tags = pretraining.get("tags") or {}
    fraction = ((pretraining.get("data") or {}).get("fraction") or {}).get("fraction")
    fields = {"pretraining_epochs": pretraining.get("epochs"),
              "pretraining_fraction": float(fraction) if fraction is not None else 1.0}
    fields |= {"pretraining_data": tags["data"]} if tags.get("data") else {}
    fields |= {"domain": tags["domain"]} if tags.get("domain") else {}
    return fields


def run_info(config: FinetuneConfig, recipe: Recipe, cohort: pl.DataFrame, manifest: dict) -> dict:
    """run.json of the run: registry facts, protocol choices, and where the numbers came from."""
    summary = json.loads((Path(config.out_dir) / SUMMARY).read_text())
    weights = summary.get("weights") or {}
    pretraining = weights.get("pretraining") or {}  # written by the pretrain stage into its encoder (issue E)
    synthetic = _is_synthetic(manifest)
    facts = {**run_facts(get_spec(config.model.name)), **pretraining_fields(pretraining)}
    if config.display_name:
        facts["display_name"] = config.display_name
    return {
        **facts, "run_id": config.run_id, "architecture": recipe.architecture,
        "finetune_mode": config.train.mode, "balancing": config.data.balancing, "seed": config.train.seed,
        "score_kind": "probability", "training_label_policy": config.data.training_label_policy,
        "evaluation_label_policy": config.data.evaluation_label_policy, "input_size": config.model.input_size,
        "normalisation": recipe.normalisation, "cohort_hash": cohort_hash(cohort), "config_hash": config_hash(config),
        "code_version": code_version(), "synthetic": synthetic,
        "tags": {**({"synthetic": "true"} if synthetic else {}), **config.tags},
        "recipe": to_dict(recipe), "selected": summary["selected"], "weights": weights,
        "max_images": config.data.max_images, "steps_per_epoch": config.train.steps_per_epoch,
        "augmentation": config.train.augmentation, "global_pool": config.model.global_pool,
    }
