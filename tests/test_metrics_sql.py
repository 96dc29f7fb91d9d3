"""queries.py and sql/*.sql: hand-worked examples and behaviour (library references: test_metrics_reference.py)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from engine.data.errors import DataError
from engine.metrics import queries as q

PATHOLOGY = "Edema"


def cohort_of(rows: list[tuple[str, str, str]], split: str = "test") -> pl.DataFrame:
    """(image_id, sex, race) rows -> a cohort frame (one patient per image)."""
    return pl.DataFrame({
        "image_id": [r[0] for r in rows], "patient_id": [f"p-{r[0]}" for r in rows], "split": split,
        "sex": [r[1] for r in rows], "race": [r[2] for r in rows], "age": [50.0] * len(rows),
    })


def predictions_of(run_id: str, image_ids: list[str], y_true: list[float | None], y_score: list[float],
                   pathology: str = PATHOLOGY, split: str = "test", weight: list[float] | None = None) -> pl.DataFrame:
    frame = pl.DataFrame({"run_id": run_id, "split": split, "image_id": image_ids, "pathology": pathology,
                          "y_true": y_true, "y_score": y_score},
                         schema_overrides={"y_true": pl.Float64, "y_score": pl.Float64})
    return frame.with_columns(weight=pl.Series(weight, dtype=pl.Float64) if weight else pl.lit(1.0))


def one(frame: pl.DataFrame, **keys: str) -> dict:
    rows = frame.filter(*(pl.col(k) == v for k, v in keys.items())).to_dicts()
    assert len(rows) == 1, (keys, rows)
    return rows[0]


# --------------------------------------------------------------------------------------------- hand-worked example
# Run A, one pathology: Female: positive 0.9, negative 0.1 -> AUC 1; Male: positive 0.5, negative 0.5 (a tie) -> 0.5.
# Population: 0.9 > 0.1, 0.9 > 0.5, 0.5 > 0.1, 0.5 = 0.5 -> (1 + 1 + 1 + 0.5) / 4 = 0.875.
# Run B: Female as in A -> 1; Male: positive 0.6, negatives 0.4, 0.5, 0.7 -> 2/3.
# Population B: positives 0.9, 0.6; negatives 0.1, 0.4, 0.5, 0.7 -> (4 + 3) / 8 = 0.875.

HAND_COHORT = cohort_of([("f1", "Female", "White"), ("f2", "Female", "Black"), ("m1", "Male", "White"),
                         ("m2", "Male", "Black"), ("m3", "Male", "White"), ("m4", "Male", "Black")])


@pytest.fixture()
def hand():
    a = predictions_of("A", ["f1", "f2", "m1", "m2"], [1, 0, 1, 0], [0.9, 0.1, 0.5, 0.5])
    b = predictions_of("B", ["f1", "f2", "m1", "m2", "m3", "m4"], [1, 0, 1, 0, 0, 0], [0.9, 0.1, 0.6, 0.4, 0.5, 0.7])
    return q.connect(predictions=pl.concat([a, b]), cohort=HAND_COHORT)


def test_hand_worked_auc_with_a_tie(hand):
    auc = q.subgroup_auc(hand, run_ids=["A", "B"], attributes=["sex"], min_count=1)
    assert one(auc, run_id="A", subgroup="Female")["auc"] == 1.0
    assert one(auc, run_id="A", subgroup="Male")["auc"] == 0.5
    assert one(auc, run_id="A", attribute="all")["auc"] == 0.875
    assert one(auc, run_id="B", subgroup="Male")["auc"] == pytest.approx(2 / 3, abs=1e-15)
    assert one(auc, run_id="B", attribute="all")["auc"] == 0.875
    row = one(auc, run_id="B", subgroup="Male")
    assert (row["n"], row["n_pos"], row["n_neg"], row["w_pos"], row["w_neg"]) == (4, 1, 3, 1.0, 3.0)
    assert auc.columns == ["run_id", "eval_set", "pathology", "attribute", "subgroup", "n", "n_pos", "n_neg",
                           "w_pos", "w_neg", "auc", "auc_reason", "small"]


def test_hand_worked_weighted_auc():
    # positives 0.8, 0.4; negatives 0.4 (weight 2), 0.3, 0.1, 0.9: (2 + 1 + 1 + 0) + (2 / 2 + 1 + 1 + 0) = 7 of 2 x 5
    cohort = cohort_of([(f"i{k}", "Female", "White") for k in range(6)])
    pred = predictions_of("A", [f"i{k}" for k in range(6)], [1, 1, 0, 0, 0, 0], [0.8, 0.4, 0.4, 0.3, 0.1, 0.9],
                          weight=[1, 1, 2, 1, 1, 1])
    auc = q.subgroup_auc(q.connect(predictions=pred, cohort=cohort), run_ids="A", attributes=[])
    assert one(auc, attribute="all")["auc"] == 0.7


def test_hand_worked_gap_and_fairness_score(hand):
    summary = q.fairness_summary(hand, run_ids=["A", "B"], attributes=["sex"], pathologies=[PATHOLOGY], min_count=1)
    a, b = one(summary, run_id="A"), one(summary, run_id="B")
    assert a["fairness_gap_pts"] == pytest.approx(50.0, abs=1e-12)
    assert (a["worst_subgroup"], a["best_subgroup"]) == ("Male", "Female")
    assert a["diff_to_overall_pts"] == pytest.approx(37.5, abs=1e-12)
    assert b["fairness_gap_pts"] == pytest.approx(100 / 3, abs=1e-12)
    # C = max gap over the compared runs + 1 point = 51; FS = C - FG
    assert a["c_pts"] == b["c_pts"] == pytest.approx(51.0, abs=1e-12)
    assert a["fairness_score_pts"] == pytest.approx(1.0, abs=1e-12)
    assert b["fairness_score_pts"] == pytest.approx(51 - 100 / 3, abs=1e-12)
    assert a["mean_auc"] == 0.875 and a["mean_auc_pts"] == 87.5
    assert a[f"gap_pts__{PATHOLOGY}"] == pytest.approx(50.0, abs=1e-12)
    assert (a["n_subgroups"], a["n_subgroups_undefined"]) == (2, 0)


def test_fairness_score_constant_comes_from_the_compared_runs(hand):
    summary = q.fairness_summary(hand, run_ids=["B"], compared_runs=["A", "B"], attributes=["sex"], min_count=1)
    assert summary["run_id"].to_list() == ["B"]
    assert summary["c_pts"][0] == pytest.approx(51.0, abs=1e-12)
    alone = q.fairness_summary(hand, run_ids=["B"], attributes=["sex"], min_count=1)
    assert alone["fairness_score_pts"][0] == pytest.approx(1.0, abs=1e-12)  # its own gap is the largest


def test_hand_worked_relative_change_both_references(hand):
    population = q.relative_change(hand, run_ids="A", attributes=["sex"], min_count=1)
    female = one(population, subgroup="Female", pathology="mean")
    assert female["reference_auc"] == 0.875
    assert female["change_pts"] == pytest.approx(12.5, abs=1e-12)
    assert female["change_pct"] == pytest.approx(12.5 / 0.875, abs=1e-12)
    assert one(population, subgroup="Male", pathology=PATHOLOGY)["change_pts"] == pytest.approx(-37.5, abs=1e-12)
    assert female["change"] == female["change_pts"] and female["unit"] == "pts"
    means = q.relative_change(hand, run_ids="A", attributes=["sex"], reference="subgroup-mean", unit="pct",
                              min_count=1)
    female = one(means, subgroup="Female", pathology="mean")
    assert female["reference_auc"] == 0.75
    assert female["change_pts"] == pytest.approx(25.0, abs=1e-12)
    assert female["change"] == pytest.approx(100 / 3, abs=1e-12) and female["reference"] == "subgroup-mean"
    assert "all" not in population["attribute"].to_list()


# --------------------------------------------------------------------------------------------- null rules


def test_one_class_subgroups_are_null_with_a_reason_never_zero():
    cohort = cohort_of([("f1", "Female", "White"), ("f2", "Female", "White"), ("m1", "Male", "Black"),
                        ("m2", "Male", "Black"), ("x1", "Male", "Asian"), ("x2", "Female", "Asian")])
    pred = predictions_of("A", ["f1", "f2", "m1", "m2", "x1", "x2"], [1, 1, 0, 0, 1, 0], [.9, .8, .1, .2, .5, .4])
    auc = q.subgroup_auc(q.connect(predictions=pred, cohort=cohort), run_ids="A", attributes=["sex", "race"])
    white, black = one(auc, subgroup="White"), one(auc, subgroup="Black")
    assert white["auc"] is None and white["auc_reason"] == "no negatives"
    assert black["auc"] is None and black["auc_reason"] == "no positives"
    assert one(auc, subgroup="Asian")["auc"] == 1.0 and one(auc, subgroup="Asian")["auc_reason"] is None
    assert auc["small"].all()  # every subgroup has fewer than 10 positives


def test_small_flag_uses_min_count_on_row_counts():
    ids = [f"i{k}" for k in range(30)]
    cohort = cohort_of([(i, "Female" if k < 20 else "Male", "White") for k, i in enumerate(ids)])
    y = [k % 2 for k in range(30)]
    pred = predictions_of("A", ids, y, [k / 30 for k in range(30)])
    auc = q.subgroup_auc(q.connect(predictions=pred, cohort=cohort), run_ids="A", attributes=["sex"], min_count=10)
    assert one(auc, subgroup="Female")["small"] is False  # 10 positives, 10 negatives
    assert one(auc, subgroup="Male")["small"] is True  # 5 and 5


def test_rows_with_null_y_true_are_not_scored():
    pred = predictions_of("A", ["f1", "f2", "m1", "m2"], [1, 0, None, 0], [0.9, 0.1, 0.0, 0.5])
    auc = q.subgroup_auc(q.connect(predictions=pred, cohort=HAND_COHORT), run_ids="A", attributes=["sex"])
    male = one(auc, subgroup="Male")
    assert (male["n"], male["auc"], male["auc_reason"]) == (1, None, "no positives")
    assert one(auc, attribute="all")["n"] == 3


def test_mean_auc_is_null_with_reason_when_a_pathology_is_undefined(hand):
    other = predictions_of("A", ["f1", "f2", "m1", "m2"], [1, 0, 0, 0], [0.9, 0.1, 0.5, 0.5], pathology="Fracture")
    a = predictions_of("A", ["f1", "f2", "m1", "m2"], [1, 0, 1, 0], [0.9, 0.1, 0.5, 0.5])
    con = q.connect(predictions=pl.concat([a, other]), cohort=HAND_COHORT)
    means = q.subgroup_mean_auc(con, run_ids="A", attributes=["sex"])
    male, female = one(means, subgroup="Male"), one(means, subgroup="Female")
    assert male["mean_auc"] is None and male["mean_auc_reason"] == "undefined for Fracture (no positives)"
    assert male["n_pathologies"] == 1
    assert female["mean_auc"] == 1.0 and female["n_pathologies"] == 2
    summary = q.fairness_summary(con, run_ids="A", attributes=["sex"])
    assert summary["n_subgroups_undefined"][0] == 1


def test_default_mean_is_over_the_chexpert_pathologies_that_occur(hand):
    extra = predictions_of("A", ["f1", "f2", "m1", "m2"], [1, 0, 1, 0], [0.1, 0.9, 0.1, 0.9], pathology="Custom")
    a = predictions_of("A", ["f1", "f2", "m1", "m2"], [1, 0, 1, 0], [0.9, 0.1, 0.5, 0.5])
    con = q.connect(predictions=pl.concat([a, extra]), cohort=HAND_COHORT)
    assert one(q.subgroup_mean_auc(con, run_ids="A", attributes=[]), attribute="all")["mean_auc"] == 0.875
    chosen = q.subgroup_mean_auc(con, run_ids="A", attributes=[], pathologies=[PATHOLOGY, "Custom"])
    assert one(chosen, attribute="all")["mean_auc"] == pytest.approx((0.875 + 0.0) / 2)


# --------------------------------------------------------------------------------------------- eval sets and store


def test_weighted_eval_set_equals_physically_duplicated_rows():
    rng = np.random.default_rng(3)
    n = 60
    ids = [f"i{k}" for k in range(n)]
    cohort = cohort_of([(i, rng.choice(["Female", "Male"]), rng.choice(["White", "Black"])) for i in ids])
    y, s = rng.integers(0, 2, n).astype(float), np.round(rng.random(n), 1)
    draws = rng.integers(0, 4, n)
    pred = predictions_of("A", ids, list(y), list(s))
    sets = pl.DataFrame({"set": "resampled", "pathology": PATHOLOGY, "image_id": ids, "weight": draws.astype(float)})
    sets = sets.filter(pl.col("weight") > 0)
    weighted = q.subgroup_auc(q.connect(predictions=pred, cohort=cohort, eval_sets=sets), run_ids="A",
                              eval_set="resampled", attributes=["sex", "race"])
    copies = [(f"{i}#{c}", k) for k, i in enumerate(ids) for c in range(draws[k])]
    dup_cohort = cohort_of([(name, cohort["sex"][k], cohort["race"][k]) for name, k in copies])
    dup_pred = predictions_of("A", [name for name, _ in copies], [y[k] for _, k in copies], [s[k] for _, k in copies])
    duplicated = q.subgroup_auc(q.connect(predictions=dup_pred, cohort=dup_cohort), run_ids="A",
                                attributes=["sex", "race"])
    joined = weighted.join(duplicated, on=["attribute", "subgroup"], suffix="_dup")
    assert joined.height == 5
    assert (joined["auc"] - joined["auc_dup"]).abs().max() < 1e-12
    assert (joined["w_pos"] == joined["w_pos_dup"]).all()
    assert (joined["n"] <= joined["n_dup"]).all()  # n counts rows (images), not draws


def test_subset_rows_come_from_the_test_split_and_match_the_pathology():
    cohort = pl.concat([cohort_of([("t1", "Female", "White"), ("t2", "Male", "White")]),
                        cohort_of([("v1", "Female", "White")], split="validate")])
    pred = pl.concat([
        predictions_of("A", ["t1", "t2"], [1, 0], [0.7, 0.2]),
        predictions_of("A", ["t1", "t2"], [1, 0], [0.1, 0.9], pathology="Fracture"),
        predictions_of("A", ["v1"], [1], [0.5], split="validate"),
    ])
    sets = pl.DataFrame({"set": ["s", "s", "s", "all-paths"], "pathology": [PATHOLOGY, PATHOLOGY, PATHOLOGY, None],
                         "image_id": ["t1", "t2", "v1", "t1"], "weight": [1.0, 3.0, 5.0, 2.0]})
    con = q.connect(predictions=pred, cohort=cohort, eval_sets=sets)
    auc = q.subgroup_auc(con, run_ids="A", eval_set="s", attributes=[])
    assert auc["pathology"].to_list() == [PATHOLOGY]
    assert (auc["n"][0], auc["w_neg"][0], auc["auc"][0]) == (2, 3.0, 1.0)  # v1 (validate) is not scored
    both = q.subgroup_auc(con, run_ids="A", eval_set="all-paths", attributes=[])
    assert sorted(both["pathology"].to_list()) == ["Edema", "Fracture"] and both["w_pos"].to_list() == [2.0, 2.0]
    assert set(q.eval_sets(con)["eval_set"].to_list()) == {"test", "validate", "s", "all-paths"}


def test_set_names_may_not_equal_split_names():
    sets = pl.DataFrame({"set": "test", "pathology": None, "image_id": "f1", "weight": 1.0})
    with pytest.raises(DataError, match="equal split names"):
        q.connect(predictions=predictions_of("A", ["f1"], [1], [0.5]), cohort=HAND_COHORT, eval_sets=sets)


def test_store_on_disk_takes_run_id_from_the_folder_and_weight_is_optional(tmp_path):
    HAND_COHORT.write_parquet(tmp_path / "cohort.parquet")
    for run, weight in (("A", None), ("B", [1.0, 1.0, 2.0, 1.0])):
        folder = tmp_path / "runs" / run
        folder.mkdir(parents=True)
        frame = predictions_of("ignored", ["f1", "f2", "m1", "m2"], [1, 0, 1, 0], [0.9, 0.1, 0.5, 0.5], weight=weight)
        frame = frame.drop("run_id") if weight else frame.drop("run_id", "weight")
        frame.write_parquet(folder / "predictions.parquet")
        (folder / "run.json").write_text(json.dumps({"run_id": run}))
    con = q.connect(tmp_path)
    auc = q.subgroup_auc(con, run_ids=["A", "B"], attributes=["sex"], min_count=1)
    assert one(auc, run_id="A", attribute="all")["w_neg"] == 2.0
    assert one(auc, run_id="B", attribute="all")["w_pos"] == 3.0
    assert q.attributes(con) == ["sex", "race", "all"]  # age is numeric, ids are not attributes
    late = tmp_path / "runs" / "C"
    late.mkdir()
    pl.read_parquet(tmp_path / "runs" / "A" / "predictions.parquet").write_parquet(late / "predictions.parquet")
    assert "C" in q.runs(con)["run_id"].to_list()  # a glob: runs written after connect are seen


def test_store_without_runs_connects_and_has_no_runs(tmp_path):
    HAND_COHORT.write_parquet(tmp_path / "cohort.parquet")
    con = q.connect(tmp_path)
    assert q.runs(con).height == 0
    with pytest.raises(ValueError, match="unknown run_id"):
        q.subgroup_auc(con, run_ids="A")


def test_unknown_run_is_an_error_a_run_without_rows_is_empty(hand):
    with pytest.raises(ValueError, match=r"unknown run_id\(s\) \['typo'\]"):
        q.subgroup_auc(hand, run_ids=["A", "typo"])
    con = q.connect(predictions=predictions_of("A", ["f1", "f2"], [1, 0], [0.9, 0.1]),
                    cohort=pl.concat([HAND_COHORT, cohort_of([("v", "Female", "White")], split="validate")]))
    assert q.subgroup_auc(con, run_ids="A", eval_set="validate").height == 0


def test_unknown_attribute_or_eval_set_is_an_error(hand):
    with pytest.raises(ValueError, match="unknown attribute"):
        q.subgroup_auc(hand, run_ids="A", attributes=["sex", "ethnicity"])
    with pytest.raises(ValueError, match="unknown eval set 'tset'"):
        q.subgroup_auc(hand, run_ids="A", eval_set="tset")


def test_intersections_combine_subgroup_names(hand):
    auc = q.subgroup_auc(hand, run_ids="B", attributes=["sex x race"], min_count=1)
    assert sorted(auc.filter(pl.col("attribute") == "sex x race")["subgroup"].to_list()) == [
        "Female x Black", "Female x White", "Male x Black", "Male x White"]
    rows = q.scored_rows(hand, run_ids="B", eval_set="test", attributes=["sex x race", "sex"])
    assert rows.columns == ["run_id", "pathology", "image_id", "patient_id", "y_true", "y_score", "weight",
                            "sex x race", "sex"]
    assert one(rows, image_id="m4")["sex x race"] == "Male x Black"


def test_images_without_a_value_are_in_no_subgroup_but_in_all():
    cohort = cohort_of([("a", "Female", "White"), ("b", "Male", "White"), ("c", None, "White")])
    pred = predictions_of("A", ["a", "b", "c"], [1, 0, 0], [0.9, 0.1, 0.95])
    con = q.connect(predictions=pred, cohort=cohort)
    auc = q.subgroup_auc(con, run_ids="A", attributes=["sex", "sex x race"])
    assert one(auc, attribute="all")["n"] == 3
    assert auc.filter(pl.col("attribute") == "sex")["n"].sum() == 2
    assert auc.filter(pl.col("attribute") == "sex x race")["n"].sum() == 2
    assert one(q.scored_rows(con, run_ids="A", eval_set="test", attributes=["sex"]), image_id="c")["sex"] is None


# --------------------------------------------------------------------------------------------- ensembles


def shared_label_runs(n: int = 80, runs: tuple[str, ...] = ("a", "b"), seed: int = 1):
    rng = np.random.default_rng(seed)
    ids = [f"i{k}" for k in range(n)]
    cohort = cohort_of([(i, rng.choice(["Female", "Male"]), rng.choice(["White", "Black"])) for i in ids])
    y = rng.integers(0, 2, n).astype(float)
    frames = [predictions_of(r, ids, list(y), list(np.round(np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1), 2)))
              for r in runs]
    return cohort, pl.concat(frames)


def test_ensemble_of_two_identical_runs_equals_the_run():
    cohort, pred = shared_label_runs(runs=("a",))
    twin = pred.with_columns(run_id=pl.lit("twin"))
    con = q.connect(predictions=pl.concat([pred, twin]), cohort=cohort)
    for rule in ("mean-probability", "rank-average"):
        q.register_ensemble(con, name=rule, members=["a", "twin"], rule=rule)
    q.register_ensemble(con, name="logit", members=["a", "twin"], rule="mean-logit",
                        score_kinds={"a": "probability", "twin": "probability"})
    auc = q.subgroup_auc(con, run_ids=["a", "mean-probability", "rank-average", "logit"],
                         attributes=["sex", "race"])
    wide = auc.pivot(on="run_id", index=["attribute", "subgroup"], values="auc")
    for name in ("mean-probability", "rank-average", "logit"):
        assert (wide[name] - wide["a"]).abs().max() < 1e-15, name


def test_ensemble_keeps_only_images_scored_by_every_member():
    cohort, pred = shared_label_runs()
    pred = pred.filter(~((pl.col("run_id") == "b") & pl.col("image_id").is_in(["i0", "i1", "i2"])))
    con = q.connect(predictions=pred, cohort=cohort)
    reg = q.register_ensemble(con, name="ens", members=["a", "b"])
    assert (reg.n_rows, reg.n_dropped) == (77, 3)
    assert reg.coverage.to_dicts() == [{"n_members_scoring": 1, "n_keys": 3, "kept": False},
                                       {"n_members_scoring": 2, "n_keys": 77, "kept": True}]
    auc = q.subgroup_auc(con, run_ids="ens", attributes=[])
    assert auc["n"][0] == 77
    scored = q.scored_rows(con, run_ids="ens", eval_set="test", attributes=["sex"])
    assert not set(scored["image_id"].to_list()) & {"i0", "i1", "i2"}


def test_ensemble_scores_follow_the_rule():
    cohort = cohort_of([("x", "Female", "White"), ("y", "Male", "White")])
    pred = pl.concat([predictions_of("a", ["x", "y"], [1, 0], [0.2, 0.5]),
                      predictions_of("b", ["x", "y"], [1, 0], [0.8, 0.9])])
    con = q.connect(predictions=pred, cohort=cohort)
    q.register_ensemble(con, name="p", members=["a", "b"], rule="mean-probability")
    q.register_ensemble(con, name="r", members=["a", "b"], rule="rank-average")
    q.register_ensemble(con, name="l", members=["a", "b"], rule="mean-logit",
                        score_kinds={"a": "probability", "b": "logit"})
    rows = q.scored_rows(con, run_ids=["p", "r", "l"], eval_set="test", attributes=[])
    score = {(r["run_id"], r["image_id"]): r["y_score"] for r in rows.iter_rows(named=True)}
    assert score[("p", "x")] == 0.5 and score[("p", "y")] == 0.7
    assert score[("r", "x")] == 0.5 and score[("r", "y")] == 1.0  # mid-ranks / n: (1/2 + 1/2) / 2, (2/2 + 2/2) / 2
    assert score[("l", "x")] == pytest.approx((np.log(0.2 / 0.8) + 0.8) / 2, abs=1e-12)  # b's scores are logits


def test_ensemble_members_must_agree_on_labels():
    cohort, pred = shared_label_runs()
    flipped = pred.with_columns(y_true=pl.when((pl.col("run_id") == "b") & (pl.col("image_id") == "i5"))
                                .then(1 - pl.col("y_true")).otherwise(pl.col("y_true")))
    con = q.connect(predictions=flipped, cohort=cohort)
    with pytest.raises(DataError, match="disagree on y_true"):
        q.register_ensemble(con, name="ens", members=["a", "b"])
    assert "ens" not in q.runs(con)["run_id"].to_list()


def test_register_ensemble_rejects_bad_names_and_rules():
    cohort, pred = shared_label_runs()
    con = q.connect(predictions=pred, cohort=cohort)
    with pytest.raises(ValueError, match="exists already"):
        q.register_ensemble(con, name="a", members=["a", "b"])
    with pytest.raises(ValueError, match="unknown ensemble member"):
        q.register_ensemble(con, name="e", members=["a", "zzz"])
    with pytest.raises(ValueError, match="at least two"):
        q.register_ensemble(con, name="e", members=["a", "a"])
    with pytest.raises(ValueError, match="needs score_kinds"):
        q.register_ensemble(con, name="e", members=["a", "b"], rule="mean-logit")
    with pytest.raises(ValueError, match="rule must be"):
        q.register_ensemble(con, name="e", members=["a", "b"], rule="max")


def test_check_ensemble_members():
    base = {"cohort_hash": "h1", "evaluation_label_policy": "u-zeros", "score_kind": "probability"}
    runs = [{**base, "run_id": "a"}, {**base, "run_id": "b"}]
    q.check_ensemble_members(runs, "mean-probability")
    with pytest.raises(ValueError, match="cohort_hash"):
        q.check_ensemble_members([runs[0], {**runs[1], "cohort_hash": "h2"}], "rank-average")
    with pytest.raises(ValueError, match="evaluation_label_policy"):
        q.check_ensemble_members([runs[0], {**runs[1], "evaluation_label_policy": "u-ones"}], "rank-average")
    with pytest.raises(ValueError, match="needs score_kind"):
        q.check_ensemble_members([runs[0], {**runs[1], "score_kind": "logit"}], "mean-probability")
    q.check_ensemble_members([runs[0], {**runs[1], "score_kind": "logit"}], "mean-logit")
    with pytest.raises(ValueError, match="needs score_kind"):
        q.check_ensemble_members([runs[0], {**runs[1], "score_kind": "score"}], "mean-logit")
    q.check_ensemble_members([runs[0], {**runs[1], "score_kind": "score"}], "rank-average")


def test_paper_ensembles():
    assert q.PAPER_ENSEMBLES["ResNet"] == ["bit", "remedis"]
    assert sorted(q.PAPER_ENSEMBLES["All foundation models"]) == sorted(
        q.PAPER_ENSEMBLES["Natural imaging"] + q.PAPER_ENSEMBLES["Medical imaging"])
    assert len(q.PAPER_ENSEMBLES) == 6


# --------------------------------------------------------------------------------------------- thresholds


@pytest.fixture()
def split_runs():
    """Run A scored on validate and test; validation scores are shifted so its operating point differs from test's."""
    rng = np.random.default_rng(7)
    n = 200
    ids = [f"i{k}" for k in range(n)]
    split = ["validate" if k < 100 else "test" for k in range(n)]
    cohort = pl.DataFrame({"image_id": ids, "patient_id": ids, "split": split,
                           "sex": rng.choice(["Female", "Male"], n), "race": rng.choice(["White", "Black"], n)})
    y = rng.integers(0, 2, n).astype(float)
    s = np.round(0.4 * y + 0.6 * rng.random(n) + np.where(np.array(split) == "validate", 0.2, 0.0), 2)
    pred = pl.DataFrame({"run_id": "A", "split": split, "image_id": ids, "pathology": PATHOLOGY, "y_true": y,
                         "y_score": s, "weight": rng.integers(1, 3, n).astype(float)})
    return q.connect(predictions=pred, cohort=cohort), pred, cohort


def numpy_fpr_threshold(y: np.ndarray, s: np.ndarray, w: np.ndarray, target: float) -> float:
    """The smallest candidate score t with weighted FPR(y_score >= t) <= target."""
    candidates = np.append(np.unique(s), np.inf)
    fpr = np.array([w[(s >= t) & (y == 0)].sum() / w[y == 0].sum() for t in candidates])
    return float(candidates[fpr <= target].min())


def test_threshold_counts_match_numpy(split_runs):
    con, pred, cohort = split_runs
    metrics = q.threshold_metrics(con, run_ids="A", attributes=["sex"], threshold=0.55)
    test = pred.filter(pl.col("split") == "test").join(cohort.select("image_id", "sex"), on="image_id")
    for sub in ("all", "Female", "Male"):
        part = test if sub == "all" else test.filter(pl.col("sex") == sub)
        y, s, w = (part[c].to_numpy() for c in ("y_true", "y_score", "weight"))
        row = one(metrics, subgroup=sub)
        p = s >= 0.55
        tp, fp, tn, fn = (w[p & (y == 1)].sum(), w[p & (y == 0)].sum(), w[~p & (y == 0)].sum(),
                          w[~p & (y == 1)].sum())
        assert (row["tp"], row["fp"], row["tn"], row["fn"]) == (tp, fp, tn, fn)
        assert row["tpr"] == pytest.approx(tp / (tp + fn)) and row["fpr"] == pytest.approx(fp / (fp + tn))
        assert row["fnr"] == pytest.approx(fn / (tp + fn)) and row["tnr"] == pytest.approx(tn / (fp + tn))
        assert row["threshold_source"] == "given"


def test_operating_point_is_chosen_on_validation_not_test(split_runs):
    con, pred, _ = split_runs
    metrics = q.threshold_metrics(con, run_ids="A", attributes=["sex"], operating_fpr=0.2)
    arrays = {split: [part[c].to_numpy() for c in ("y_true", "y_score", "weight")]
              for split, part in ((sp, pred.filter(pl.col("split") == sp)) for sp in ("validate", "test"))}
    on_validation = numpy_fpr_threshold(*arrays["validate"], 0.2)
    on_test = numpy_fpr_threshold(*arrays["test"], 0.2)
    assert on_validation != on_test
    row = one(metrics, attribute="all")
    assert row["threshold"] == on_validation and row["threshold_source"] == "validation-fpr-0.2"
    from_test = q.threshold_metrics(con, run_ids="A", attributes=[], operating_fpr=0.2, select_on="test")
    assert from_test["threshold"][0] == on_test and from_test["threshold_source"][0] == "test-fpr-0.2"
    assert from_test["fpr"][0] <= 0.2


def test_youden_threshold_maximises_j_on_validation(split_runs):
    con, pred, _ = split_runs
    y, s, w = (pred.filter(pl.col("split") == "validate")[c].to_numpy() for c in ("y_true", "y_score", "weight"))
    candidates = np.append(np.unique(s), np.inf)
    j = [w[(s >= t) & (y == 1)].sum() / w[y == 1].sum() - w[(s >= t) & (y == 0)].sum() / w[y == 0].sum()
         for t in candidates]
    best = candidates[np.flatnonzero(np.isclose(j, max(j))).max()]
    chosen = q.operating_threshold(con, run_ids="A", youden=True)
    assert chosen["threshold"][0] == best and chosen["threshold_source"][0] == "validation-youden"


def test_no_implicit_half_threshold(split_runs):
    con, _, _ = split_runs
    with pytest.raises(ValueError, match="no threshold"):
        q.threshold_metrics(con, run_ids="A")
    half = q.threshold_metrics(con, run_ids="A", attributes=[], scores_are_probabilities=True)
    assert half["threshold"][0] == 0.5 and half["threshold_source"][0] == "default-0.5"
    with pytest.raises(ValueError, match="not both"):
        q.threshold_metrics(con, run_ids="A", threshold=0.3, youden=True)


def test_underdiagnosis_is_the_no_finding_fpr(split_runs):
    con, pred, cohort = split_runs
    no_finding = pred.with_columns(pathology=pl.lit("No Finding"), run_id=pl.lit("N"))
    con = q.connect(predictions=pl.concat([pred, no_finding]), cohort=cohort)
    rates = q.underdiagnosis(con, run_ids="N", attributes=["sex"], threshold=0.5)
    metrics = q.threshold_metrics(con, run_ids="N", attributes=["sex"], threshold=0.5, pathologies="No Finding")
    assert rates["underdiagnosis_rate"].to_list() == metrics["fpr"].to_list()
    assert rates.height == 3


# --------------------------------------------------------------------------------------------- calibration


def test_ece_matches_numpy(split_runs):
    con, pred, cohort = split_runs
    table = q.ece(con, run_ids="A", attributes=["sex"], n_bins=5)
    test = pred.filter(pl.col("split") == "test").join(cohort.select("image_id", "sex"), on="image_id")
    for sub in ("all", "Female", "Male"):
        part = test if sub == "all" else test.filter(pl.col("sex") == sub)
        y, s, w = (part[c].to_numpy() for c in ("y_true", "y_score", "weight"))
        bins = np.minimum((s * 5).astype(int), 4)
        expected = sum(w[bins == b].sum() / w.sum() * abs(np.average(s[bins == b], weights=w[bins == b])
                                                           - np.average(y[bins == b], weights=w[bins == b]))
                       for b in np.unique(bins))
        assert one(table, subgroup=sub)["ece"] == pytest.approx(expected, abs=1e-12)


def test_ece_refuses_scores_outside_the_unit_interval():
    cohort = cohort_of([("x", "Female", "White"), ("y", "Male", "White")])
    con = q.connect(predictions=predictions_of("A", ["x", "y"], [1, 0], [2.5, -1.0]), cohort=cohort)
    with pytest.raises(ValueError, match="needs probabilities"):
        q.ece(con, run_ids="A")


def test_queries_run_on_cursors_and_see_registered_ensembles():
    cohort, pred = shared_label_runs()
    con = q.connect(predictions=pred, cohort=cohort)
    q.register_ensemble(con, name="ens", members=["a", "b"])
    cursor = con.cursor()  # one per thread or Streamlit session
    assert q.subgroup_auc(cursor, run_ids=["a", "ens"], attributes=["sex"]).height == 6
    assert q.runs(cursor).filter(pl.col("kind") == "ensemble")["run_id"].to_list() == ["ens"]
