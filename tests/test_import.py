"""Importing another tool's predictions: the real cxr-foundation-bias sample (AUCs checked against scikit-learn on
the raw CSV), long and wide files, label policies, cohorts, duplicates and every bad-input rule."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from engine.data.errors import DataError, OutputExistsError
from engine.metrics import store as st
from engine.metrics.importer import import_predictions

SAMPLE = Path("cxr-foundation-bias-samples")
REAL_FLAGS = {"wide": True, "score_pattern": "Logit - {pathology}", "label_pattern": "{pathology}",
              "id_column": "Path", "score_kind": "logit", "label_policy": "u-zeros",
              "attribute_columns": ["sex", "race"], "patient_column": "patient_id", "duplicates": "weight"}
SUBGROUPS = [("race", "White"), ("race", "Asian"), ("race", "Black"), ("sex", "Male"), ("sex", "Female")]


def weighted_auc(stored: pl.DataFrame) -> float:
    scored = stored.filter(pl.col("y_true").is_not_null())
    return roc_auc_score(scored["y_true"].to_numpy(), scored["y_score"].to_numpy(),
                         sample_weight=scored["weight"].to_numpy())


def test_real_sample_import_reproduces_sklearn_aucs(realdata: Path, tmp_path: Path):
    csv = realdata / SAMPLE / "chexpert-model.embeddings.csv"
    expected = json.loads((realdata / SAMPLE / "expected.json").read_text())["self_computed"]
    report = import_predictions(store=tmp_path, run_id="chexpert-model", predictions=csv, **REAL_FLAGS)
    assert report["rows_read"] == 3000 and report["distinct_image_ids"] == 2652
    assert report["duplicates"]["rows_merged"] == 2 * (3000 - 2652)  # long rows: input rows x 2 pathologies
    assert report["cohort"]["rows_written"] == 2652

    stored = st.read_predictions(tmp_path).join(st.read_cohort(tmp_path), on="image_id")
    assert stored["image_id"].n_unique() == 2652
    assert stored["split"].unique().to_list() == ["test"]
    raw = pd.read_csv(csv)
    for pathology in ("No Finding", "Pleural Effusion"):
        rows = stored.filter(pl.col("pathology") == pathology)
        assert rows["weight"].sum() == 3000
        target, logit = raw[pathology] == 1, raw[f"Logit - {pathology}"]
        assert rows.filter(pl.col("y_true") == 1)["weight"].sum() == target.sum() == expected[pathology]["n_pos"]
        reference = roc_auc_score(target, logit)  # independent: all 3,000 rows, repeats included
        assert abs(weighted_auc(rows) - reference) < 1e-12
        assert abs(reference - expected[pathology]["all"]) <= 5e-5 + 1e-12  # expected.json rounds to 4 decimals
        for attribute, group in SUBGROUPS:
            mask = raw[attribute] == group
            reference = roc_auc_score(target[mask], logit[mask])
            assert abs(weighted_auc(rows.filter(pl.col(attribute) == group)) - reference) < 1e-12
            assert abs(reference - expected[pathology][group]) <= 5e-5 + 1e-12

    info = st.read_run_info(tmp_path, "chexpert-model")
    assert info["score_kind"] == "logit" and info["evaluation_label_policy"] == "u-zeros"
    assert info["model"] == "chexpert-model"
    assert info["tags"]["imported_sha256"] == hashlib.sha256(csv.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="score_kind logit; ECE needs probabilities"):
        st.require_probabilities(info, "ECE")


def test_real_sample_duplicates_are_an_error_by_default(realdata: Path, tmp_path: Path):
    flags = {**REAL_FLAGS, "duplicates": "error"}
    with pytest.raises(DataError, match="duplicate") as err:
        import_predictions(store=tmp_path, run_id="m", predictions=realdata / SAMPLE / "chexpert-model.embeddings.csv",
                           **flags)
    assert err.value.n_bad == 2652 - 2348 and "--duplicates weight" in str(err.value)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cohort.parquet").exists()


PREFIX = "CheXpert-v1.0-small/"
IDS = [f"valid/patient{i:05d}/study1/view1_frontal.jpg" for i in range(4)]


def wide_frame() -> pl.DataFrame:
    return pl.DataFrame({
        "Path": [PREFIX + i for i in IDS], "sex": ["Male", "Female", "Male", "Female"],
        "race": ["White", "Black", "Asian", "White"], "split": ["test"] * 4,
        "Edema": ["1", "-1", "", "0"], "Atelectasis": ["-1", "1", "0", ""],
        "score Edema": ["0.9", "0.5", "0.1", "0.2"], "score Atelectasis": ["0.3", "0.8", "0.2", "0.4"],
    })


def write(frame: pl.DataFrame, path: Path) -> Path:
    frame.write_parquet(path) if path.suffix == ".parquet" else frame.write_csv(path)
    return path


WIDE = {"wide": True, "score_pattern": "score {pathology}", "label_pattern": "{pathology}", "id_column": "Path",
        "attribute_columns": ["sex", "race"]}


def targets(store: Path) -> dict[tuple[str, str], float | None]:
    frame = st.read_predictions(store)
    return {(i[-22:-21], p): y for i, p, y in frame.select("image_id", "pathology", "y_true").iter_rows()}


@pytest.mark.parametrize("policy, expected", [
    ("u-zeros", {"Edema": [1.0, 0.0, 0.0, 0.0], "Atelectasis": [0.0, 1.0, 0.0, 0.0]}),
    ("u-ones", {"Edema": [1.0, 1.0, 0.0, 0.0], "Atelectasis": [1.0, 1.0, 0.0, 0.0]}),
    ("medical-mae", {"Edema": [1.0, 1.0, 0.0, 0.0], "Atelectasis": [1.0, 1.0, 0.0, 0.0]}),
    ("ignore", {"Edema": [1.0, None, 0.0, 0.0], "Atelectasis": [None, 1.0, 0.0, 0.0]}),
])
def test_wide_import_applies_label_policy(tmp_path: Path, policy, expected):
    source = write(wide_frame(), tmp_path / "wide.csv")
    report = import_predictions(store=tmp_path / "s", run_id="r", predictions=source, label_policy=policy, **WIDE)
    stored = st.read_predictions(tmp_path / "s")
    for pathology, values in expected.items():
        assert stored.filter(pl.col("pathology") == pathology).sort("image_id")["y_true"].to_list() == values
    assert set(stored["image_id"]) == set(IDS)  # the release prefix is removed
    assert sorted(report["columns"]) == ["Atelectasis", "Edema"]
    cohort = st.read_cohort(tmp_path / "s")
    assert cohort["patient_id"].to_list() == [f"patient{i:05d}" for i in range(4)]
    assert "derived from the CheXpert path for 4 rows" in report["cohort"]["patient_id"]
    assert st.read_run_info(tmp_path / "s", "r")["evaluation_label_policy"] == policy


def test_long_parquet_import_into_existing_cohort(tmp_path: Path):
    cohort = pl.DataFrame({"image_id": IDS, "patient_id": ["a", "b", "c", "d"], "split": ["test"] * 4,
                           "sex": ["Male", "Female", "Male", "Female"]})
    st.write_cohort(tmp_path / "s", cohort)
    long = pl.DataFrame({"image_id": [PREFIX + i for i in IDS] * 2, "pathology": ["Edema"] * 4 + ["Fracture"] * 4,
                         "y_true": [1, 0, None, 1, 0, 0, 1, 1], "y_score": [0.1 * k for k in range(8)],
                         "weight": [1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3.0]})
    source = write(long, tmp_path / "long.parquet")
    report = import_predictions(store=tmp_path / "s", run_id="r", predictions=source, split_column=None,
                                pathologies=["Fracture"], score_kind="probability")
    assert report["removed"][0]["rows"] == 4 and report["rows_written"] == 4
    assert report["cohort"]["rows_written"] == 0 and "every row assigned split 'test'" in report["split"]
    stored = st.read_predictions(tmp_path / "s")
    assert stored["weight"].to_list() == [1.0, 1.0, 1.0, 3.0] and stored["pathology"].unique().to_list() == ["Fracture"]
    assert report["rows_per_pathology"]["Fracture"] == {"rows": 4, "weight": 6.0, "n_pos": 2, "n_neg": 2,
                                                       "not_scored": 0}
    assert st.read_run_info(tmp_path / "s", "r")["evaluation_label_policy"] == "as-given"


def test_duplicates_weight_merges_within_tolerance_only(tmp_path: Path):
    frame = pl.concat([wide_frame(), wide_frame().head(1).with_columns(pl.lit("0.9000001").alias("score Edema"))])
    source = write(frame, tmp_path / "dup.csv")
    report = import_predictions(store=tmp_path / "s", run_id="r", predictions=source, label_policy="u-zeros",
                                duplicates="weight", **WIDE)
    stored = st.read_predictions(tmp_path / "s").filter(pl.col("image_id") == IDS[0]).sort("pathology")
    assert stored["weight"].to_list() == [2.0, 2.0]
    # equal scores are kept bit for bit; scores within the tolerance become their mean
    assert stored["y_score"].to_list() == [0.3, pytest.approx(0.90000005, abs=1e-15)]
    assert report["duplicates"]["keys_with_score_spread"] == 1
    for column, value, problem in [("score Edema", "0.95", "disagree on the score"),
                                   ("Edema", "0", "disagree on the label"), ("sex", "Female", "disagree on sex")]:
        bad = pl.concat([wide_frame(), wide_frame().head(1).with_columns(pl.lit(value).alias(column))])
        with pytest.raises(DataError, match=problem):
            import_predictions(store=tmp_path / "t", run_id="r", predictions=write(bad, tmp_path / "bad.csv"),
                               label_policy="u-zeros", duplicates="weight", **WIDE)
    assert not (tmp_path / "t").exists()


def bad_case(tmp_path: Path, change, **options) -> DataError:
    """Import a changed wide file; return the DataError and check that nothing was written."""
    store = tmp_path / "s"
    with pytest.raises(DataError) as err:
        import_predictions(store=store, run_id="r", predictions=write(change(wide_frame()), tmp_path / "in.csv"),
                           **{**WIDE, "label_policy": "u-zeros", **options})
    assert not (store / "runs" / "r").exists()
    return err.value


@pytest.mark.parametrize("change, options, column, problem", [
    (lambda f: f.drop("Path"), {}, "Path", "lacks required column"),
    (lambda f: f.drop("Atelectasis"), {}, "Atelectasis", "lacks required column"),
    (lambda f: f.drop("sex"), {}, "sex", "lacks required column"),
    (lambda f: f, {"score_pattern": "Logit - {pathology}"}, "Logit - {pathology}", "matches no column"),
    (lambda f: f, {"pathologies": ["Edema", "Fracture"]}, "score Fracture", "lacks required column"),
    (lambda f: f.with_columns(Edema=pl.lit("2")), {}, "Edema", "label outside {1, 0, -1, blank}"),
    (lambda f: f.with_columns(Edema=pl.lit("yes")), {}, "Edema", "not a number"),
    (lambda f: f, {"label_policy": None}, "Edema", "label outside {0, 1, blank}"),
    (lambda f: f.with_columns(pl.lit("nan").alias("score Edema")), {}, "score Edema", "NaN"),
    (lambda f: f.with_columns(pl.lit("inf").alias("score Edema")), {}, "score Edema", "infinite"),
    (lambda f: f.with_columns(pl.lit(None, dtype=pl.String).alias("score Edema")), {}, "score Edema", "blank"),
    (lambda f: f.with_columns(split=pl.lit(None, dtype=pl.String)), {}, "split", "blank split"),
    (lambda f: f.with_columns(Path=pl.lit(" ")), {}, "Path", "blank image id"),
    (lambda f: pl.concat([f, f.head(1)]), {}, "image_id", "duplicate"),
    (lambda f: f.with_columns(age=pl.lit("50")), {"attribute_columns": ["sex", "age"]}, "age", "cannot be an attr"),
    (lambda f: f.rename({"race": "all"}), {"attribute_columns": ["sex", "all"]}, "all", "is reserved"),
    (lambda f: f.with_columns(pid=pl.lit(None, dtype=pl.String)), {"patient_column": "pid"}, "pid", "blank patient"),
])
def test_bad_wide_inputs(tmp_path: Path, change, options, column, problem):
    err = bad_case(tmp_path, change, **options)
    assert err.column == column and problem in str(err) and "in.csv" in str(err)


def test_bad_rows_are_named_by_csv_line(tmp_path: Path):
    err = bad_case(tmp_path, lambda f: f.with_columns(pl.when(pl.col("sex") == "Female").then(pl.lit("inf"))
                                                      .otherwise(pl.col("score Edema")).alias("score Edema")))
    assert err.n_bad == 2 and err.rows[0] == "line 3: score Edema='inf'"


def test_ids_missing_from_the_store_cohort(tmp_path: Path):
    cohort = pl.DataFrame({"image_id": IDS[:3], "patient_id": ["a", "b", "c"], "split": ["test"] * 3})
    st.write_cohort(tmp_path / "s", cohort)
    err = bad_case(tmp_path, lambda f: f, attribute_columns=None)
    assert err.column == "Path" and "image id not in the cohort (store cohort" in str(err)
    assert err.rows == [f"line 5: Path='{PREFIX}{IDS[3]}'"] and err.n_bad == 1
    err = bad_case(tmp_path, lambda f: f.head(3).with_columns(split=pl.lit("validate")), attribute_columns=None)
    assert err.column == "split" and err.rows[0] == f"line 2: {IDS[0]} split='validate (cohort: test)'"


def test_conflicting_cohort_rows_are_refused(tmp_path: Path):
    store = tmp_path / "s"
    import_predictions(store=store, run_id="first", predictions=write(wide_frame(), tmp_path / "a.csv"),
                       label_policy="u-zeros", **WIDE)
    before = st.read_cohort(store)
    err = bad_case(tmp_path, lambda f: f.with_columns(sex=pl.lit("Male")))
    assert err.column == "sex" and "would change existing rows" in str(err) and "store 'Female', new 'Male'" in str(err)
    assert st.read_cohort(store).equals(before) and st.list_run_ids(store) == ["first"]
    # new images and new attribute columns are added; existing rows keep their values
    more = pl.concat([wide_frame(), wide_frame().head(1).with_columns(Path=pl.lit("other/x.jpg"))]).with_columns(
        site=pl.lit("A"))
    report = import_predictions(store=store, run_id="second", predictions=write(more, tmp_path / "b.csv"),
                                label_policy="u-zeros", **{**WIDE, "attribute_columns": ["sex", "race", "site"]})
    assert report["cohort"]["rows_added"] == 1 and report["cohort"]["columns_added"] == ["site"]
    assert "the image id for 1" in report["cohort"]["patient_id"]
    after = st.read_cohort(store)
    assert after.height == 5 and after.filter(pl.col("image_id") == "other/x.jpg")["patient_id"].item() == "other/x.jpg"


def test_existing_run_needs_force(tmp_path: Path):
    source = write(wide_frame(), tmp_path / "a.csv")
    import_predictions(store=tmp_path / "s", run_id="r", predictions=source, label_policy="u-zeros", **WIDE)
    with pytest.raises(OutputExistsError):
        import_predictions(store=tmp_path / "s", run_id="r", predictions=source, label_policy="u-zeros", **WIDE)
    report = import_predictions(store=tmp_path / "s", run_id="r", predictions=source, label_policy="ignore",
                                force=True, tags={"note": "again"}, run_info={"model": "m", "seed": 1}, **WIDE)
    info = st.read_run_info(tmp_path / "s", "r")
    assert info["evaluation_label_policy"] == "ignore" and info["model"] == "m" and info["tags"]["note"] == "again"
    assert info["extra"]["import"]["rows_read"] == 4 and report["cohort"]["rows_written"] == 0


def test_cohort_file_option(tmp_path: Path):
    cohort = pl.DataFrame({"image_id": [PREFIX + i for i in IDS], "patient_id": list("abcd"), "split": ["test"] * 4,
                           "race": ["White"] * 4, "Edema": ["1", None, "-1", "0"]})
    source = write(wide_frame(), tmp_path / "a.csv")
    options = {**WIDE, "attribute_columns": None, "label_policy": "u-zeros"}
    report = import_predictions(store=tmp_path / "s", run_id="r", predictions=source,
                                cohort=write(cohort, tmp_path / "cohort.csv"), **options)
    stored = st.read_cohort(tmp_path / "s")
    assert report["cohort"]["rows_written"] == 4 and stored["image_id"].to_list() == IDS
    assert stored.schema["Edema"] == pl.Float64 and st.attribute_columns(stored) == ["race"]


@pytest.mark.parametrize("options, problem", [
    ({"score_kind": "logits"}, "unknown score_kind"),
    ({"label_policy": "zeros"}, "unknown label_policy"),
    ({"duplicates": "drop"}, "unknown duplicates"),
    ({"wide": False}, "wide format needs both"),
    ({"label_pattern": None}, "wide format needs both"),
    ({"label_pattern": "label"}, "must contain {pathology} exactly once"),
    ({"cohort": "c.parquet"}, "not both"),
    ({"attribute_columns": None}, "no cohort"),
    ({"run_info": {"score_kind": "probability"}}, "contradicts"),
    ({"run_info": {"domain": "xray"}}, "expected natural | medical | none"),
    ({"score_tolerance": float("nan")}, "score_tolerance"),
])
def test_bad_options(tmp_path: Path, options, problem):
    assert problem in str(bad_case(tmp_path, lambda f: f, **options))


def test_numeric_parquet_columns_and_unparsed_types(tmp_path: Path):
    frame = wide_frame().with_columns(pl.col("Edema", "Atelectasis", "score Edema", "score Atelectasis")
                                      .replace("", None).cast(pl.Float64))
    source = write(frame, tmp_path / "wide.parquet")
    import_predictions(store=tmp_path / "s", run_id="r", predictions=source, label_policy="u-ones", **WIDE)
    assert np.allclose(st.read_predictions(tmp_path / "s").sort("pathology", "image_id")["y_score"].to_numpy(),
                       [0.3, 0.8, 0.2, 0.4, 0.9, 0.5, 0.1, 0.2])
    bad = write(frame.with_columns(pl.col("score Edema").replace(0.5, np.nan)), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="NaN") as err:
        import_predictions(store=tmp_path / "t", run_id="r", predictions=bad, label_policy="u-ones", **WIDE)
    assert err.value.column == "score Edema" and err.value.rows == ["row 1: score Edema=nan"]
    struct = write(frame.with_columns(pl.struct("sex").alias("Edema")), tmp_path / "struct.parquet")
    with pytest.raises(DataError, match="expected numbers"):
        import_predictions(store=tmp_path / "t", run_id="r", predictions=struct, label_policy="u-ones", **WIDE)


def test_long_duplicates_sum_their_weights(tmp_path: Path):
    long = pl.DataFrame({"image_id": [IDS[0], IDS[0], IDS[1]], "split": ["test"] * 3, "pathology": ["Edema"] * 3,
                         "y_true": ["1", "1", "0"], "y_score": ["0.5", "0.5", "0.25"], "weight": ["2", "1", "1"]})
    cohort = pl.DataFrame({"image_id": IDS[:2], "patient_id": ["a", "b"], "split": ["test"] * 2})
    st.write_cohort(tmp_path / "s", cohort)
    report = import_predictions(store=tmp_path / "s", run_id="r", predictions=write(long, tmp_path / "long.csv"),
                                duplicates="weight")
    stored = st.read_predictions(tmp_path / "s").sort("image_id")
    assert stored["weight"].to_list() == [3.0, 1.0] and stored["y_score"].to_list() == [0.5, 0.25]
    assert report["duplicates"]["rows_merged"] == 1 and report["rows_per_pathology"]["Edema"]["weight"] == 4.0
