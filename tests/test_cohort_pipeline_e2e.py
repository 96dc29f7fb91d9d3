"""End to end through the CLI: synth -> prepare -> subsets -> cache on a synthetic CheXpert-format folder."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from PIL import Image

import run_experiments
from engine.data.cache_read import ImageCache
from engine.data.demo import run_demo
from engine.data.schema import PATHOLOGIES


def _cli(*args: str) -> None:
    assert run_experiments.main([str(a) for a in args]) == 0


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    synth, cohort, cache = root / "synth", root / "cohort" / "cohort.parquet", root / "cache"
    _cli("synth", "chexpert", "--out", synth, "--patients", 300, "--seed", 3)
    small = synth / "CheXpert-v1.0-small"
    _cli("prepare", "chexpert", "--train-csv", small / "train.csv", "--valid-csv", small / "valid.csv",
         "--demographics", synth / "CHEXPERT DEMO.xlsx", "--split", synth / "chexpert_split.csv", "--out", cohort)
    _cli("subsets", "--cohort", cohort)
    _cli("cache", "--table", cohort, "--image-root", small, "--out", cache, "--size", 64, "--workers", 2)
    return {"synth": synth, "small": small, "cohort": cohort, "cache": cache}


def test_cohort_matches_the_split_file_and_the_filters(pipeline):
    cohort = pl.read_parquet(pipeline["cohort"])
    split = pl.read_csv(pipeline["synth"] / "chexpert_split.csv")
    main = cohort.filter(pl.col("split") != "official_valid")
    # The split file lists exactly the surviving rows, so every later filter must agree with it.
    assert sorted(main["source_row"].to_list()) == sorted(split["index"].to_list())
    assert set(cohort["view"]) == {"Frontal"} and set(cohort["position"]) <= {"AP", "PA"}
    assert set(cohort["race"]) <= {"White", "Asian", "Black"}
    report = json.loads((pipeline["cohort"].parent / "cohort_report.json").read_text())
    removed = {s["step"]: s["removed"] for s in report["filters"]["train.csv"]["filters"]}
    assert removed["split file"] > 0  # laterals, dropped races, Hispanic patients are not in the split file
    assert report["rows_out"] == cohort.height


def test_subsets_cover_every_pathology_and_balanced_sets(pipeline):
    subsets = pl.read_parquet(pipeline["cohort"].with_name("subsets.parquet"))
    cohort = pl.read_parquet(pipeline["cohort"])
    resampled = subsets.filter(pl.col("set") == "resampled")
    assert set(resampled["pathology"]) == set(PATHOLOGIES)
    test_ids = set(cohort.filter(pl.col("split") == "test")["image_id"])
    assert set(resampled["image_id"]) <= test_ids
    n_test = len(test_ids)
    assert resampled.group_by("pathology").agg(pl.col("weight").sum())["weight"].to_list() == [3 * n_test] * 14
    balanced = subsets.filter(pl.col("set") == "balanced-train").join(cohort, on="image_id")
    assert balanced["race"].value_counts()["count"].n_unique() == 1  # every race the same size
    assert set(balanced["split"]) == {"train"}
    report = json.loads((pipeline["cohort"].parent / "cohort_report.json").read_text())
    composition = {entry["set"]: entry["by_race"] for entry in report["subsets"]["balanced_sets"]}
    assert composition["balanced-train"] == dict(balanced["race"].value_counts().iter_rows())


def test_cache_holds_every_cohort_image_with_the_fixed_geometry(pipeline):
    cohort = pl.read_parquet(pipeline["cohort"])
    cache = ImageCache.open(pipeline["cache"])
    assert cache.size == 64 and len(cache) == cohort.height
    image_id = cohort["image_id"][0]
    # 112 x 96 -> short side 64, long side int(64 * 112 / 96) = 74, centre crop from x = round(10 / 2) = 5.
    # 96 / 64 < 2, so no JPEG draft reduction applies and the result must equal a plain PIL resize + crop.
    with Image.open(pipeline["small"] / image_id) as img:
        reference = img.convert("L").resize((74, 64), Image.Resampling.BICUBIC)
    expected = np.asarray(reference)[:, 5:69].astype(int)
    got = cache.get([image_id])[0].astype(int)
    assert np.array_equal(got, expected)


def test_cache_rerun_resumes_without_decoding_again(pipeline, capsys):
    _cli("cache", "--table", pipeline["cohort"], "--image-root", pipeline["small"], "--out", pipeline["cache"],
         "--size", 64)
    assert "(0 decoded now" in capsys.readouterr().out


def test_demo_command_builds_everything(tmp_path):
    paths = run_demo(tmp_path / "demo", patients=120, seed=1, size=32, workers=1, progress=False)
    assert ImageCache.open(paths["cache"]).size == 32
    assert pl.read_parquet(paths["subsets"])["set"].n_unique() == 4
    manifest = json.loads((paths["synthetic"] / "synthetic.json").read_text())
    assert manifest["synthetic"] is True


def test_bad_image_fails_then_is_skipped_flagged_and_excluded_downstream(tmp_path, capsys):
    synth, cohort, cache = tmp_path / "synth", tmp_path / "cohort.parquet", tmp_path / "cache"
    _cli("synth", "chexpert", "--out", synth, "--patients", 150, "--seed", 4)
    small = synth / "CheXpert-v1.0-small"
    _cli("prepare", "chexpert", "--train-csv", small / "train.csv", "--demographics", synth / "CHEXPERT DEMO.xlsx",
         "--split", synth / "chexpert_split.csv", "--out", cohort)
    victim = pl.read_parquet(cohort).filter(pl.col("split") == "test")["image_id"][0]
    data = (small / victim).read_bytes()
    (small / victim).write_bytes(data[: len(data) // 2])  # a truncated JPEG
    cache_args = ["cache", "--table", cohort, "--image-root", small, "--out", cache, "--size", 32, "--no-progress"]
    assert run_experiments.main([str(a) for a in cache_args]) == 2
    assert victim in capsys.readouterr().err
    _cli(*cache_args, "--skip-bad")
    _cli(*cache_args, "--skip-bad")  # a rerun keeps the same id list and resumes
    flagged = pl.read_parquet(cohort).filter(pl.col("excluded_reason").is_not_null())
    assert flagged["image_id"].to_list() == [victim] and flagged["excluded_reason"][0].startswith("cache: corrupt")
    _cli("subsets", "--cohort", cohort)
    assert victim not in set(pl.read_parquet(tmp_path / "subsets.parquet")["image_id"])
    report = json.loads((tmp_path / "subsets_report.json").read_text())
    assert report["cohort"]["n_excluded"] == 1
