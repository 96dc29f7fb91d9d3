"""The SQL metrics against scikit-learn and fairlearn on random data with ties and weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pytest
from fairlearn.metrics import MetricFrame
from fairlearn.metrics import equalized_odds_difference as fairlearn_eod
from sklearn.metrics import roc_auc_score

from engine.metrics import queries as q

RUNS = ("r1", "r2", "r3")
PATHOLOGIES = ("Edema", "Cardiomegaly", "Pleural Effusion")
N = 500


@pytest.fixture(scope="module")
def data():
    """Three runs x three pathologies x 500 test images; scores rounded to 1-2 decimals (ties), weights 1-3."""
    rng = np.random.default_rng(2024)
    ids = [f"img{k:04d}" for k in range(N)]
    cohort = pl.DataFrame({
        "image_id": ids, "patient_id": [f"pat{k // 2}" for k in range(N)], "split": "test",
        "sex": rng.choice(["Female", "Male"], N), "race": rng.choice(["White", "Asian", "Black"], N, p=[.6, .25, .15]),
        "age_bin": rng.choice(["0-40", "41-60", "61+"], N),
    })
    frames = []
    for k, run in enumerate(RUNS):
        for j, pathology in enumerate(PATHOLOGIES):
            y = (rng.random(N) < 0.2 + 0.1 * j).astype(float)
            score = np.round(1 / (1 + np.exp(-(rng.normal(size=N) + 1.5 * y - 1))), 1 + (k + j) % 2)
            frames.append(pl.DataFrame({"run_id": run, "split": "test", "image_id": ids, "pathology": pathology,
                                        "y_true": y, "y_score": score, "weight": rng.integers(1, 4, N).astype(float)}))
    pred = pl.concat(frames)
    joined = pred.join(cohort, on="image_id").with_columns(
        (pl.col("sex") + " x " + pl.col("race")).alias("sex x race")).to_pandas()
    return q.connect(predictions=pred, cohort=cohort), joined


def test_subgroup_auc_equals_sklearn_with_ties_and_weights(data):
    con, joined = data
    attributes = ["sex", "race", "age_bin", "sex x race"]
    auc = q.subgroup_auc(con, run_ids=list(RUNS), attributes=attributes)
    assert auc.height == len(RUNS) * len(PATHOLOGIES) * (1 + 2 + 3 + 3 + 6)
    worst = 0.0
    for row in auc.iter_rows(named=True):
        part = joined[(joined.run_id == row["run_id"]) & (joined.pathology == row["pathology"])]
        if row["attribute"] != "all":
            part = part[part[row["attribute"]] == row["subgroup"]]
        expected = roc_auc_score(part.y_true, part.y_score, sample_weight=part.weight)
        worst = max(worst, abs(expected - row["auc"]))
        assert row["n"] == len(part) and row["w_pos"] == part.weight[part.y_true == 1].sum()
    assert worst < 1e-12


def metric_frame(joined: pd.DataFrame, run: str, pathology: str, features: list[str]) -> MetricFrame:
    part = joined[(joined.run_id == run) & (joined.pathology == pathology)]
    sensitive = part[features[0]] if len(features) == 1 else part[features]
    return MetricFrame(metrics=roc_auc_score, y_true=part.y_true, y_pred=part.y_score,
                       sensitive_features=sensitive, sample_params={"sample_weight": part.weight})


@pytest.mark.parametrize("attribute", ["sex", "race"])
def test_fairlearn_by_group_and_differences(data, attribute):
    con, joined = data
    auc = q.subgroup_auc(con, run_ids=list(RUNS), attributes=[attribute])
    gaps = q.pathology_gap(con, run_ids=list(RUNS), attributes=[attribute])
    for run in RUNS:
        for pathology in PATHOLOGIES:
            frame = metric_frame(joined, run, pathology, [attribute])
            ours = auc.filter(pl.col("run_id") == run, pl.col("pathology") == pathology)
            by_group = dict(ours.filter(pl.col("attribute") == attribute).select("subgroup", "auc").iter_rows())
            assert by_group.keys() == set(frame.by_group.index)
            for subgroup, value in frame.by_group.items():
                assert by_group[subgroup] == pytest.approx(value, abs=1e-12)
            assert ours.filter(pl.col("attribute") == "all")["auc"][0] == pytest.approx(frame.overall, abs=1e-12)
            gap = gaps.filter(pl.col("run_id") == run, pl.col("pathology") == pathology).to_dicts()[0]
            assert gap["gap_pts"] / 100 == pytest.approx(frame.difference(method="between_groups"), abs=1e-12)
            assert gap["diff_to_overall_pts"] / 100 == pytest.approx(frame.difference(method="to_overall"), abs=1e-12)
            assert gap["worst_subgroup"] == frame.by_group.idxmin()


def test_fairlearn_intersection_equals_sex_x_race(data):
    con, joined = data
    auc = q.subgroup_auc(con, run_ids="r2", attributes=["sex x race"], pathologies="Edema")
    frame = metric_frame(joined, "r2", "Edema", ["sex", "race"])
    ours = dict(auc.filter(pl.col("attribute") == "sex x race").select("subgroup", "auc").iter_rows())
    assert len(ours) == len(frame.by_group) == 6
    for (sex, race), value in frame.by_group.items():
        assert ours[f"{sex} x {race}"] == pytest.approx(value, abs=1e-12)


def test_single_pathology_summary_gap_equals_fairlearn(data):
    con, joined = data
    summary = q.fairness_summary(con, run_ids=list(RUNS), attributes=["race"], pathologies=["Cardiomegaly"])
    for row in summary.iter_rows(named=True):
        frame = metric_frame(joined, row["run_id"], "Cardiomegaly", ["race"])
        assert row["fairness_gap_pts"] / 100 == pytest.approx(frame.difference(method="between_groups"), abs=1e-12)
        assert row["diff_to_overall_pts"] / 100 == pytest.approx(frame.difference(method="to_overall"), abs=1e-12)
        assert row["gap_pts__Cardiomegaly"] == row["fairness_gap_pts"]


@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_equalized_odds_difference_equals_fairlearn(data, threshold):
    con, joined = data
    ours = q.equalized_odds_difference(con, run_ids=list(RUNS), attributes=["sex", "race"], threshold=threshold)
    assert ours.height == len(RUNS) * len(PATHOLOGIES) * 2
    for row in ours.iter_rows(named=True):
        part = joined[(joined.run_id == row["run_id"]) & (joined.pathology == row["pathology"])]
        expected = fairlearn_eod(part.y_true, (part.y_score >= threshold).astype(float),
                                 sensitive_features=part[row["attribute"]], sample_weight=part.weight)
        assert row["equalized_odds_difference"] == pytest.approx(expected, abs=1e-12)


def test_scored_rows_reproduce_the_sql_auc(data):
    """The rows of scored_rows are the ones subgroup_auc scores (the contract of the numpy fast path)."""
    con, _ = data
    rows = q.scored_rows(con, run_ids=list(RUNS), eval_set="test", attributes=["race"]).to_pandas()
    auc = q.subgroup_auc(con, run_ids=list(RUNS), attributes=["race"])
    for row in auc.filter(pl.col("attribute") == "race").iter_rows(named=True):
        part = rows[(rows.run_id == row["run_id"]) & (rows.pathology == row["pathology"])
                    & (rows.race == row["subgroup"])]
        assert roc_auc_score(part.y_true, part.y_score, sample_weight=part.weight) == pytest.approx(row["auc"],
                                                                                                     abs=1e-12)
