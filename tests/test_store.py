"""Results store: cohort and run writers and readers, run.json fields, prediction validation, atomic run folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest

from engine.data.errors import DataError, OutputExistsError
from engine.metrics import store as st
from engine.metrics.store_schema import RUN_FIELDS

IDS = [f"train/patient{i:05d}/study1/view1_frontal.jpg" for i in range(6)]


def make_cohort() -> pl.DataFrame:
    return pl.DataFrame({
        "image_id": IDS,
        "patient_id": [f"patient{i:05d}" for i in range(6)],
        "split": ["test", "test", "test", "test", "validate", "validate"],
        "sex": ["Male", "Female", "Male", "Female", "Male", "Female"],
        "race": ["White", "Asian", "Black", "White", "Asian", "Black"],
        "age_bin": ["21-30", "31-40", "41-50", "51-60", "61-70", "71-80"],
        "age": pl.Series([25, 35, 45, 55, 65, 75], dtype=pl.Int16),
        "Edema": [1.0, 0.0, -1.0, None, 1.0, 0.0],
    })


def make_predictions(*, weight: bool = False) -> pl.DataFrame:
    cohort = make_cohort()
    frame = pl.DataFrame({
        "split": cohort["split"].to_list() * 2,
        "image_id": IDS * 2,
        "pathology": ["Edema"] * 6 + ["Cardiomegaly"] * 6,
        "y_true": [1.0, 0.0, 1.0, 0.0, 1.0, None] + [0.0, 1.0, 0.0, 1.0, 0.0, 1.0],
        "y_score": [0.9, 0.1, 0.7, 0.4, 0.8, 0.2] + [0.3, 0.6, 0.2, 0.9, 0.1, 0.5],
    })
    return frame.with_columns(weight=pl.lit(2.0)) if weight else frame


INFO = {"model": "toy", "score_kind": "probability", "evaluation_label_policy": "u-zeros"}


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    st.write_cohort(tmp_path / "store", make_cohort())
    return tmp_path / "store"


def test_cohort_round_trip_and_attributes(store: Path):
    cohort = st.read_cohort(store)
    assert cohort.equals(make_cohort())
    assert st.attribute_columns(cohort) == ["sex", "race", "age_bin"]  # age is Int16 and reserved; labels numeric
    with pytest.raises(OutputExistsError):
        st.write_cohort(store, cohort)
    st.write_cohort(store, cohort.head(5), force=True)
    assert st.read_cohort(store).height == 5


@pytest.mark.parametrize("change, column", [
    (lambda c: c.with_columns(image_id=pl.lit(IDS[0])), "image_id"),
    (lambda c: c.drop("patient_id"), "patient_id"),
    (lambda c: c.drop("split"), "split"),
    (lambda c: c.with_columns(split=pl.when(pl.col("sex") == "Male").then(None).otherwise(pl.col("split"))), "split"),
    (lambda c: c.with_columns(patient_id=pl.lit(1)), "patient_id"),
    (lambda c: c.rename({"sex": "sex x race"}), "sex x race"),
])
def test_write_cohort_refuses_bad_cohorts(tmp_path: Path, change, column):
    with pytest.raises(DataError) as err:
        st.write_cohort(tmp_path, change(make_cohort()))
    assert err.value.column == column and "cohort.parquet" in str(err.value)
    assert not (tmp_path / "cohort.parquet").exists()


def test_run_round_trip_fills_defaults(store: Path):
    info = {**INFO, "seed": 3, "domain": "medical", "tags": {"a": "b"}, "notes": "kept"}
    folder = st.write_run(store, "toy-1", make_predictions(), info)
    assert sorted(p.name for p in folder.iterdir()) == ["predictions.parquet", "run.json"]
    read = st.read_run_info(store, "toy-1")
    assert list(read)[: len(RUN_FIELDS)] == list(RUN_FIELDS)
    assert read["seed"] == 3 and read["finetune_mode"] is None and read["synthetic"] is False
    assert read["extra"] == {"notes": "kept"}
    runs = st.list_runs(store)
    assert runs.columns == list(RUN_FIELDS) and runs.height == 1
    assert runs.schema["seed"] == pl.Int64 and runs.schema["synthetic"] == pl.Boolean
    assert json.loads(runs["tags"][0]) == {"a": "b"}
    assert st.list_runs(store.parent / "empty").columns == list(RUN_FIELDS)


@pytest.mark.parametrize("field, value", [
    ("score_kind", "probabilities"), ("finetune_mode", "full"), ("balancing", "yes"), ("domain", "xray"),
    ("seed", "1"), ("seed", True), ("pretraining_fraction", math.inf), ("synthetic", None), ("tags", {"a": 1}),
    ("model", None), ("evaluation_label_policy", None), ("run_id", "other"),
])
def test_run_info_refuses_unknown_values(store: Path, field, value):
    with pytest.raises(DataError) as err:
        st.write_run(store, "toy", make_predictions(), {**INFO, field: value})
    assert err.value.column == field
    assert not (store / "runs" / "toy").exists()


@pytest.mark.parametrize("run_id", ["", ".", "..", "../x", "a/b", ".hidden", "a b", "é"])
def test_unsafe_run_ids(store: Path, run_id):
    with pytest.raises(DataError, match="unsafe run_id"):
        st.write_run(store, run_id, make_predictions(), INFO)


BAD_PREDICTIONS = [
    ("missing column", lambda f: f.drop("y_score"), "y_score", "lacks required column"),
    ("mistyped score", lambda f: f.with_columns(pl.col("y_score").cast(pl.String)), "y_score", "expected Float64"),
    ("mistyped id", lambda f: f.with_columns(image_id=pl.lit(1)), "image_id", "expected String"),
    ("label 2", lambda f: f.with_columns(y_true=pl.lit(2.0)), "y_true", "outside {0, 1, null}"),
    ("label NaN", lambda f: f.with_columns(y_true=pl.lit(float("nan"))), "y_true", "outside {0, 1, null}"),
    ("score NaN", lambda f: f.with_columns(y_score=pl.lit(float("nan"))), "y_score", "NaN"),
    ("score inf", lambda f: f.with_columns(y_score=pl.lit(float("inf"))), "y_score", "infinite"),
    ("score null", lambda f: f.with_columns(y_score=pl.lit(None, dtype=pl.Float64)), "y_score", "null"),
    ("negative weight", lambda f: f.with_columns(weight=pl.lit(-1.0)), "weight", "negative"),
    ("null weight", lambda f: f.with_columns(weight=pl.lit(None, dtype=pl.Float64)), "weight", "null"),
    ("inf weight", lambda f: f.with_columns(weight=pl.lit(float("inf"))), "weight", "infinite"),
    ("unknown image", lambda f: f.with_columns(image_id=pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("x.jpg"))
                                               .otherwise("image_id")), "image_id", "not in the store cohort"),
    ("duplicate", lambda f: pl.concat([f, f.head(1)]), "image_id", "duplicate"),
    ("split mismatch", lambda f: f.with_columns(split=pl.lit("test")), "split", "split differs"),
    ("null pathology", lambda f: f.with_columns(pathology=pl.lit(None, dtype=pl.String)), "pathology", "null"),
]


@pytest.mark.parametrize("name, change, column, problem", BAD_PREDICTIONS, ids=[b[0] for b in BAD_PREDICTIONS])
def test_bad_predictions_name_file_column_and_rows(store: Path, name, change, column, problem):
    with pytest.raises(DataError) as err:
        st.write_run(store, "bad", change(make_predictions()), INFO)
    message = str(err.value)
    assert err.value.column == column and problem in message
    assert "predictions.parquet" in message
    if name != "missing column" and not name.startswith("mistyped"):
        assert "offending row" in message and err.value.rows
    assert not (store / "runs" / "bad").exists()


def test_existing_run_needs_force_and_is_replaced_whole(store: Path):
    st.write_run(store, "toy", make_predictions(), INFO)
    with pytest.raises(OutputExistsError):
        st.write_run(store, "toy", make_predictions(weight=True), INFO)
    st.write_run(store, "toy", make_predictions(weight=True), {**INFO, "model": "toy-2"}, force=True)
    assert st.read_run_info(store, "toy")["model"] == "toy-2"
    assert st.read_predictions(store)["weight"].to_list() == [2.0] * 12
    assert list((store / st.STAGING_DIR).iterdir()) == []


def test_failed_write_leaves_nothing_half_written(store: Path, monkeypatch):
    st.write_run(store, "toy", make_predictions(), INFO)

    def broken_dumps(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(st.json, "dumps", broken_dumps)  # predictions.parquet is written, run.json fails
    with pytest.raises(OSError, match="disk full"):
        st.write_run(store, "new", make_predictions(), INFO)
    with pytest.raises(OSError, match="disk full"):
        st.write_run(store, "toy", make_predictions(weight=True), {**INFO, "model": "changed"}, force=True)
    monkeypatch.undo()
    assert st.list_run_ids(store) == ["toy"]
    assert st.read_run_info(store, "toy")["model"] == "toy"
    assert st.read_predictions(store)["weight"].to_list() == [1.0] * 12
    assert list((store / st.STAGING_DIR).iterdir()) == []


def test_read_predictions_adds_run_id_and_float_columns(store: Path):
    st.write_run(store, "a", make_predictions(), INFO)
    st.write_run(store, "b", make_predictions(weight=True).with_columns(pl.col("y_true").cast(pl.Int8)), INFO)
    both = st.read_predictions(store)
    assert both.schema == pl.Schema(st.PREDICTION_SCHEMA)
    assert both.group_by("run_id").agg(pl.col("weight").sum()).sort("run_id").rows() == [("a", 12.0), ("b", 24.0)]
    assert st.read_predictions(store, ["b"])["run_id"].unique().to_list() == ["b"]
    assert st.read_predictions(store, ["a"], validate=False).height == 12
    assert st.read_predictions(store, []).schema == pl.Schema(st.PREDICTION_SCHEMA)
    with pytest.raises(DataError, match="unknown run"):
        st.read_predictions(store, ["c"])


def test_read_eval_sets(store: Path):
    assert st.read_eval_sets(store) is None
    sets = pl.DataFrame({"set": ["resampled"] * 2, "pathology": ["Edema", None], "image_id": IDS[:2], "weight": [3, 1]})
    sets.write_parquet(store / "subsets.parquet")
    read = st.read_eval_sets(store)
    assert read.schema["weight"] == pl.Float64 and read["weight"].to_list() == [3.0, 1.0]
    sets.with_columns(weight=pl.lit(-1)).write_parquet(store / "subsets.parquet")
    with pytest.raises(DataError, match="negative"):
        st.read_eval_sets(store)


def test_require_probabilities():
    st.require_probabilities({"run_id": "p", "score_kind": "probability"}, "ECE")
    with pytest.raises(DataError, match="run chexpert has score_kind logit; ECE needs probabilities"):
        st.require_probabilities({"run_id": "chexpert", "score_kind": "logit"}, "ECE")


def test_merge_cohort_adds_rows_and_columns_but_never_changes_them():
    existing = make_cohort()
    new = pl.DataFrame({"image_id": [IDS[0], "new.jpg"], "patient_id": ["patient00000", "p9"], "split": ["test"] * 2,
                        "sex": ["Male", "Female"], "site": ["A", "B"]})
    merged, report = st.merge_cohort(existing, new, file="cohort.parquet")
    assert merged.height == 7 and report["rows_added"] == 1 and report["columns_added"] == ["site"]
    assert merged.filter(pl.col("image_id") == IDS[0])["site"].item() == "A"
    assert merged.filter(pl.col("image_id") == IDS[1])["site"].item() is None
    same, report = st.merge_cohort(existing, existing.head(2), file="cohort.parquet")
    assert same.equals(existing) and report["rows_written"] == 0
    with pytest.raises(DataError, match="would change existing rows") as err:
        st.merge_cohort(existing, new.with_columns(sex=pl.lit("Female")), file="cohort.parquet")
    assert err.value.column == "sex" and "store 'Male', new 'Female'" in str(err.value)


def test_bad_run_json_and_hidden_folders(store: Path):
    st.write_run(store, "toy", make_predictions(), {**INFO, "extra": {"source": Path("/x")}})
    assert st.read_run_info(store, "toy")["extra"] == {"source": "/x"}
    (store / "runs" / ".partial").mkdir()
    assert st.list_run_ids(store) == ["toy"]
    (store / "runs" / "toy" / "run.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        st.read_run_info(store, "toy")
    (store / "runs" / "toy" / "run.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="must be a JSON object"):
        st.list_runs(store)
