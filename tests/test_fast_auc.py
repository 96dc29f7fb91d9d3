"""The numpy fast path for subgroup AUCs against sklearn (ties, weights, nulls) and against the DuckDB SQL."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from engine.metrics import queries, store
from engine.metrics.fast_auc import SUBGROUP_AUC_SCHEMA, subgroup_auc
from engine.metrics.synth_predictions import write_synthetic_store

KEYS = ["run_id", "eval_set", "pathology", "attribute", "subgroup"]
ATTRIBUTES = ["sex", "race"]


def scored_frame(seed: int = 0, n: int = 1500, decimals: int | None = 1, integer_weights: bool = False) -> pl.DataFrame:
    """Random scored rows: 2 runs x 3 pathologies in shuffled order, heavy ties when ``decimals`` is small."""
    rng = np.random.default_rng(seed)
    score = rng.random(n)
    weight = rng.integers(1, 5, n).astype(float) if integer_weights else rng.random(n) * 3
    return pl.DataFrame({
        "run_id": rng.choice(["run-a", "run-b"], n), "pathology": rng.choice(["Edema", "Fracture", "Pneumonia"], n),
        "image_id": [f"img{i}" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)],
        "y_true": rng.integers(0, 2, n).astype(float),
        "y_score": np.round(score, decimals) if decimals is not None else score, "weight": weight,
        "sex": rng.choice(["Female", "Male", None], n, p=[0.45, 0.45, 0.1]),
        "race": rng.choice(["White", "Asian", "Black"], n, p=[0.7, 0.2, 0.1]),
    })


def sklearn_table(frame: pl.DataFrame, attributes: list[str]) -> pl.DataFrame:
    """The reference: roc_auc_score(sample_weight) per run, pathology, attribute and subgroup."""
    rows = []
    for (run_id, pathology), group in frame.group_by("run_id", "pathology"):
        parts = [("all", "all", group)]
        for attribute in attributes:
            columns = attribute.split(" x ")
            labelled = group.drop_nulls(columns).with_columns(_s=pl.concat_str(columns, separator=" x "))
            parts += [(attribute, key[0], sub) for key, sub in labelled.group_by("_s")]
        for attribute, subgroup, sub in parts:
            y = sub["y_true"].to_numpy()
            auc = roc_auc_score(y, sub["y_score"], sample_weight=sub["weight"]) if 0 < y.sum() < y.size else None
            rows.append((run_id, pathology, attribute, subgroup, sub.height, auc))
    return pl.DataFrame(rows, schema=["run_id", "pathology", "attribute", "subgroup", "n_ref", "auc_ref"],
                        orient="row")


@pytest.mark.parametrize("decimals", [1, 3, None])
@pytest.mark.parametrize("integer_weights", [True, False])
def test_equals_sklearn_with_ties_and_weights(decimals, integer_weights):
    frame = scored_frame(seed=decimals or 7, decimals=decimals, integer_weights=integer_weights)
    attributes = ["sex", "race", "sex x race"]
    fast = subgroup_auc(frame, attributes=attributes)
    joined = fast.join(sklearn_table(frame, attributes), on=["run_id", "pathology", "attribute", "subgroup"],
                       how="full", coalesce=True)
    assert joined.height == fast.height  # the same subgroups on both sides (null sex is in no sex subgroup)
    assert (joined["n"] == joined["n_ref"]).all()
    assert (joined["auc"] - joined["auc_ref"]).abs().max() < 1e-12
    assert fast.schema == pl.Schema(SUBGROUP_AUC_SCHEMA)
    assert fast.filter(pl.col("attribute") == "sex x race")["subgroup"].str.contains(" x ").all()


def test_row_order_and_threads_do_not_matter():
    frame = scored_frame(seed=3)
    reference = subgroup_auc(frame, attributes=ATTRIBUTES, threads=1)
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=5)
    ordered = frame.sort("run_id", "pathology")
    for other in (subgroup_auc(shuffled, attributes=ATTRIBUTES, threads=2),
                  subgroup_auc(ordered, attributes=ATTRIBUTES, threads=2)):
        assert other.select(KEYS).equals(reference.select(KEYS))
        assert np.abs(other["auc"].to_numpy() - reference["auc"].to_numpy()).max() < 1e-12


def test_enum_attribute_columns_give_the_same_table():
    frame = scored_frame(seed=4)
    as_enum = frame.with_columns(pl.col("race").cast(pl.Enum(["White", "Black", "Asian"])))
    assert subgroup_auc(as_enum, attributes=ATTRIBUTES).equals(subgroup_auc(frame, attributes=ATTRIBUTES))


def test_one_class_subgroups_are_null_with_the_reason_and_small_is_flagged():
    frame = pl.DataFrame({
        "run_id": "r", "pathology": "Edema", "image_id": [f"i{k}" for k in range(8)],
        "patient_id": [f"p{k}" for k in range(8)], "y_true": [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0],
        "y_score": [0.9, 0.1, 0.8, 0.3, 0.2, 0.6, 0.4, 0.7], "weight": 1.0,
        "sex": ["Female", "Female", "Female", "Female", "Male", "Male", "Other", "Other"],
    })
    table = subgroup_auc(frame, attributes=["sex"], min_count=2).filter(pl.col("attribute") == "sex")
    by = {row["subgroup"]: row for row in table.iter_rows(named=True)}
    assert by["Female"]["auc"] == 1.0 and by["Female"]["auc_reason"] is None and not by["Female"]["small"]
    assert by["Male"]["auc"] is None and by["Male"]["auc_reason"] == "no positives" and by["Male"]["small"]
    assert by["Other"]["auc"] is None and by["Other"]["auc_reason"] == "no negatives"
    assert (by["Male"]["n_pos"], by["Male"]["n_neg"], by["Male"]["w_neg"]) == (0, 2, 2.0)


def test_null_y_true_rows_are_not_scored_and_bad_scores_are_refused():
    frame = scored_frame(seed=5, n=300)
    with_nulls = frame.with_columns(y_true=pl.when(pl.int_range(pl.len()) % 7 == 0).then(None)
                                    .otherwise(pl.col("y_true")))
    expected = subgroup_auc(with_nulls.drop_nulls("y_true"), attributes=ATTRIBUTES)
    assert subgroup_auc(with_nulls, attributes=ATTRIBUTES).equals(expected)
    with pytest.raises(ValueError, match="y_score"):
        subgroup_auc(frame.with_columns(y_score=pl.lit(float("nan"))), attributes=ATTRIBUTES)
    with pytest.raises(ValueError, match="not in the scored rows"):
        subgroup_auc(frame, attributes=["age_bin"])


def test_agrees_with_the_duckdb_sql_definition(tmp_path):
    """The contract: the fast path reproduces ``queries.subgroup_auc`` on the rows of ``queries.scored_rows``."""
    runs = ["medical-mae-standard", "bit-balanced"]
    folder = write_synthetic_store(tmp_path / "store", n_images=600, seed=2, runs=runs)["store"]
    con = queries.connect(predictions=store.read_predictions(folder), cohort=store.read_cohort(folder),
                          eval_sets=store.read_eval_sets(folder))
    attributes = ["sex", "race", "age_bin", "sex x race"]
    for eval_set in ("test", "resampled", "glocker-original"):
        rows = queries.scored_rows(con, run_ids=runs, eval_set=eval_set, attributes=attributes)
        fast = subgroup_auc(rows, attributes=attributes, eval_set=eval_set)
        sql = queries.subgroup_auc(con, run_ids=runs, eval_set=eval_set, attributes=attributes)
        joined = fast.join(sql, on=KEYS, how="full", suffix="_sql", nulls_equal=True)
        assert fast.height == sql.height == joined.height
        for column in ("n", "n_pos", "n_neg", "small", "auc_reason"):
            assert joined[column].equals(joined[f"{column}_sql"], check_names=False), column
        for column in ("w_pos", "w_neg", "auc"):
            assert (joined[column] - joined[f"{column}_sql"]).abs().max() < 1e-12, column
            assert joined[column].is_null().equals(joined[f"{column}_sql"].is_null(), check_names=False)
