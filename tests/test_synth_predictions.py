"""The synthetic results store: layout, contract, determinism, refusal to overwrite, and the planted effects."""

from __future__ import annotations

import json

import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from engine.data.errors import DataError, OutputExistsError
from engine.data.schema import PATHOLOGIES
from engine.metrics import store
from engine.metrics.store_schema import RUN_FIELDS
from engine.metrics.synth_predictions import RUN_IDS, VALIDATE_PER_TEST, write_synthetic_store

N_IMAGES = 12_000


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict:
    return write_synthetic_store(tmp_path_factory.mktemp("synth") / "store", n_images=N_IMAGES, seed=3)


@pytest.fixture(scope="module")
def summary(synthetic) -> pl.DataFrame:
    """sklearn mean AUC over the 14 pathologies per run and subgroup (test split)."""
    cohort = store.read_cohort(synthetic["store"]).filter(pl.col("split") == "test")
    rows = []
    for run_id in RUN_IDS:
        preds = pl.read_parquet(synthetic["store"] / "runs" / run_id / "predictions.parquet")
        preds = preds.filter(pl.col("split") == "test").join(cohort.select("image_id", "sex", "race"), on="image_id")
        for _, group in preds.group_by("pathology"):
            rows.append((run_id, "all", roc_auc_score(group["y_true"], group["y_score"])))
            for attribute in ("sex", "race"):
                for (subgroup,), sub in group.group_by(attribute):
                    rows.append((run_id, subgroup, roc_auc_score(sub["y_true"], sub["y_score"])))
    frame = pl.DataFrame(rows, schema=["run_id", "subgroup", "auc"], orient="row")
    return frame.group_by("run_id", "subgroup").agg(pl.col("auc").mean() * 100).pivot(
        on="subgroup", index="run_id", values="auc").with_columns(
        race_gap=pl.max_horizontal("White", "Asian", "Black") - pl.min_horizontal("White", "Asian", "Black"),
        female_deficit=pl.col("Male") - pl.col("Female"))


def test_layout_and_contract(synthetic):
    folder = synthetic["store"]
    marker = json.loads((folder / "store.json").read_text())
    assert marker["synthetic"] is True and marker["seed"] == 3 and marker["runs"] == list(RUN_IDS)
    cohort = store.read_cohort(folder)  # validates the cohort contract
    assert store.attribute_columns(cohort) == ["sex", "race", "age_bin"]
    splits = dict(cohort.group_by("split").len().iter_rows())
    assert splits == {"test": N_IMAGES, "validate": round(N_IMAGES * VALIDATE_PER_TEST)}
    per_patient = cohort.group_by("patient_id").len()["len"]
    assert per_patient.min() >= 1 and per_patient.max() <= 4
    assert cohort.group_by("patient_id").agg(pl.col("split").n_unique())["split"].max() == 1
    patients = cohort.unique("patient_id")
    assert (patients["sex"] == "Male").mean() == pytest.approx(0.59, abs=0.03)
    assert (patients["race"] == "Black").mean() == pytest.approx(0.07, abs=0.02)
    assert set(cohort.select(PATHOLOGIES).unpivot()["value"].drop_nulls().unique()) <= {1.0, 0.0, -1.0}
    preds = store.read_predictions(folder)  # validates every run against the cohort
    assert preds.height == len(RUN_IDS) * cohort.height * len(PATHOLOGIES)
    one = pl.read_parquet(folder / "runs" / "remedis-balanced" / "predictions.parquet")
    assert one.columns == ["split", "image_id", "pathology", "y_true", "y_score"]
    assert one.schema["y_true"] == pl.Float64 and one.schema["y_score"] == pl.Float64
    raw = one.join(cohort.unpivot(PATHOLOGIES, index="image_id", variable_name="pathology"), on=["image_id",
                                                                                                  "pathology"])
    assert (raw["y_true"] == (raw["value"] == 1.0).fill_null(False).cast(pl.Float64)).all()  # u-zeros targets
    sets = store.read_eval_sets(folder)
    assert set(sets["set"]) == {"resampled", "glocker-original"}
    assert set(sets.filter(pl.col("set") == "resampled")["pathology"]) == set(PATHOLOGIES)


def test_run_json_has_every_field(synthetic):
    for run_id in RUN_IDS:
        info = json.loads((synthetic["store"] / "runs" / run_id / "run.json").read_text())
        assert list(info) == list(RUN_FIELDS)
        assert store.normalise_run_info(run_id, info, file=run_id) == info  # types and allowed values
        assert info["synthetic"] is True and info["tags"]["synthetic"] == "true"
        assert info["cohort_hash"] == synthetic["cohort_hash"] and info["score_kind"] == "probability"
        empty = [field for field, value in info.items() if value is None]
        assert set(empty) <= {"pretraining_epochs", "pretraining_fraction"}, (run_id, empty)
    medical = json.loads((synthetic["store"] / "runs" / "medical-mae-balanced" / "run.json").read_text())
    assert (medical["display_name"], medical["domain"], medical["balancing"]) == ("MAE (M)", "medical", "balanced")
    bit = json.loads((synthetic["store"] / "runs" / "bit-standard" / "run.json").read_text())
    assert (bit["architecture"], bit["architecture_family"]) == ("resnetv2_152x2_bit", "ResNet")


def test_deterministic_and_independent_of_the_runs_chosen(tmp_path):
    a = write_synthetic_store(tmp_path / "a", n_images=400, seed=1, runs=["mae-standard", "bit-balanced"])
    b = write_synthetic_store(tmp_path / "b", n_images=400, seed=1, runs=["bit-balanced"])
    c = write_synthetic_store(tmp_path / "c", n_images=400, seed=2, runs=["bit-balanced"])

    def read(result: dict, name: str) -> pl.DataFrame:
        return pl.read_parquet(result["store"] / name)

    for name in ("cohort.parquet", "subsets.parquet", "runs/bit-balanced/predictions.parquet"):
        assert read(a, name).equals(read(b, name))
    assert not read(a, "runs/bit-balanced/predictions.parquet").equals(read(c, "runs/bit-balanced/predictions.parquet"))


def test_refuses_to_overwrite_without_force_and_never_replaces_a_real_folder(tmp_path):
    write_synthetic_store(tmp_path / "s", n_images=300, runs=["mae-standard"])
    with pytest.raises(OutputExistsError):
        write_synthetic_store(tmp_path / "s", n_images=300, runs=["mae-standard"])
    write_synthetic_store(tmp_path / "s", n_images=300, runs=["bit-standard"], force=True)
    assert store.list_run_ids(tmp_path / "s") == ["bit-standard"]
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "cohort.parquet").write_text("not synthetic")
    with pytest.raises(DataError):
        write_synthetic_store(tmp_path / "real", n_images=300, runs=["mae-standard"], force=True)
    with pytest.raises(ValueError, match="unknown synthetic run"):
        write_synthetic_store(tmp_path / "x", n_images=300, runs=["nope"])


PAIRS = [("mae", "medical-mae"), ("moco-v3", "medical-moco-v3"), ("bit", "remedis")]  # (natural, medical)


def test_planted_effects_have_the_intended_sign(summary):
    """Planted (not found): medical pre-training higher AUC but larger race gaps with Black worst; Female worse."""
    row = {r["run_id"]: r for r in summary.iter_rows(named=True)}
    for natural, medical in PAIRS:
        nat, med = row[f"{natural}-standard"], row[f"{medical}-standard"]
        assert med["all"] > nat["all"], (natural, medical)
        assert med["race_gap"] > nat["race_gap"] + 0.5, (natural, medical)
        assert med["Black"] < min(med["White"], med["Asian"])
    assert summary.filter(pl.col("run_id").str.ends_with("-standard"))["female_deficit"].mean() > 0.2
    for model in ("medical-mae", "medical-moco-v3", "remedis"):  # balanced fine-tuning shrinks the race gap
        assert row[f"{model}-balanced"]["race_gap"] < row[f"{model}-standard"]["race_gap"]
    for model in ("mae", "moco-v3"):  # linear probing: lower AUC
        assert row[f"{model}-linear-probe"]["all"] < row[f"{model}-standard"]["all"]


def test_planted_pretraining_trends(summary):
    """More pre-training data, epochs or data fraction: higher AUC and a smaller race gap (planted)."""
    row = {r["run_id"]: r for r in summary.iter_rows(named=True)}
    for less, more in (("mae-pt-cx14", "mae-pt-cx14-cxpt"), ("mae-pt-200ep", "mae-pt-800ep"),
                       ("mae-pt-cxpt-30pct", "mae-pt-cxpt")):
        assert row[more]["all"] > row[less]["all"], (less, more)
        assert row[more]["race_gap"] < row[less]["race_gap"], (less, more)
