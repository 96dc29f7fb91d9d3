"""Patient-level stratified bootstrap: exact replicates, strata, determinism, pairing, intervals, p-values."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from engine.metrics import bootstrap as bs
from engine.metrics.fast_auc import subgroup_auc

ATTRIBUTES = ["sex", "race", "age_bin"]
KEYS = ["run_id", "eval_set", "pathology", "attribute", "subgroup"]


def scored_rows(n_patients: int = 150, runs: dict[str, float] | None = None, seed: int = 0,
                black_noise: float = 1.0) -> pl.DataFrame:
    """Rows of several runs (run id -> separation) x 2 pathologies; patients with 1-3 images, age_bin varying
    within a patient, tied scores (2 decimals), integer weights; Black patients' scores get ``black_noise`` x
    the noise, so the race gap grows with it."""
    rng = np.random.default_rng(seed)
    runs = runs or {"run-a": 1.2}
    per = rng.integers(1, 4, n_patients)
    owner = np.repeat(np.arange(n_patients), per)
    n = owner.size
    sex = rng.choice(["Female", "Male"], n_patients)[owner]
    race = rng.choice(["White", "Asian", "Black"], n_patients, p=[0.6, 0.25, 0.15])[owner]
    age = rng.choice(["41-50", "51-60", "61-70"], n)
    frames = []
    for pathology in ("Edema", "Pneumonia"):
        y = (rng.random(n) < 0.3).astype(float)
        noise = rng.standard_normal(n) * np.where(race == "Black", black_noise, 1.0)
        weight = rng.integers(1, 3, n).astype(float)
        for run_id, separation in runs.items():
            frames.append(pl.DataFrame({
                "run_id": run_id, "pathology": pathology, "image_id": [f"img{i:05d}" for i in range(n)],
                "patient_id": [f"pat{p:04d}" for p in owner], "y_true": y,
                "y_score": np.round(1 / (1 + np.exp(-(separation * y + noise))), 2),
                "weight": weight, "sex": sex, "race": race, "age_bin": age,
            }))
    return pl.concat(frames)


def test_unit_multiplicities_reproduce_the_point_estimate():
    frame = scored_rows(runs={"run-a": 1.0, "run-b": 0.5})
    _, patients = bs.patient_index(frame)
    ones = {a: np.ones((1, len(patients)), dtype=np.int64) for a in ["all", *ATTRIBUTES]}
    rep = bs.bootstrap_auc(frame, attributes=ATTRIBUTES, multiplicities=ones)
    point = subgroup_auc(frame, attributes=ATTRIBUTES)
    joined = rep.keys.with_columns(p=rep.point, r=rep.values[0]).join(point, on=KEYS)
    assert joined.height == rep.keys.height == point.height
    assert (joined["p"] - joined["auc"]).abs().max() < 1e-12
    assert (joined["r"] - joined["auc"]).abs().max() < 1e-12


def test_replicates_equal_sklearn_on_explicitly_resampled_rows():
    frame = scored_rows(n_patients=80, seed=1)
    patient, patients = bs.patient_index(frame)
    draws = {a: bs.draw_multiplicities(bs.patient_strata(frame, a), range(3), seed=11, label=a)
             for a in ["all", *ATTRIBUTES]}
    rep = bs.bootstrap_auc(frame, attributes=ATTRIBUTES, n_boot=3, seed=11)
    assert np.array_equal(rep.values, bs.bootstrap_auc(frame, attributes=ATTRIBUTES, multiplicities=draws).values,
                          equal_nan=True)  # the default draws are exactly draw_multiplicities'
    for b in range(3):
        for k, key in enumerate(rep.keys.iter_rows(named=True)):
            mask = (frame["pathology"] == key["pathology"]).to_numpy()
            if key["attribute"] != "all":
                mask &= (frame[key["attribute"]] == key["subgroup"]).to_numpy()
            rows = np.flatnonzero(mask)
            copies = draws[key["attribute"]][b][patient[rows]]  # each image once per draw of its patient
            resampled = frame[np.repeat(rows, copies)]
            y = resampled["y_true"].to_numpy()
            expected = (roc_auc_score(y, resampled["y_score"], sample_weight=resampled["weight"])
                        if 0 < y.sum() < y.size else np.nan)
            assert rep.values[b, k] == pytest.approx(expected, abs=1e-12, nan_ok=True)
    assert patient.max() == len(patients) - 1


def test_strata_sizes_are_preserved_and_age_bin_uses_the_first_row():
    frame = scored_rows(n_patients=120, seed=2)
    for attribute in ("sex", "race", "age_bin"):
        strata = bs.patient_strata(frame, attribute)
        draws = bs.draw_multiplicities(strata, range(25), seed=4, label=attribute)
        for stratum in np.unique(strata):
            in_stratum = strata == stratum
            assert (draws[:, in_stratum].sum(axis=1) == in_stratum.sum()).all()
        assert (draws.sum(axis=1) == strata.size).all()
    _, patients = bs.patient_index(frame)
    first = frame.sort("image_id").unique("patient_id", keep="first").sort("patient_id")
    levels = sorted(frame["age_bin"].unique())
    expected = np.array([levels.index(v) + 1 for v in first["age_bin"]])
    assert np.array_equal(bs.patient_strata(frame, "age_bin"), expected)
    assert first["patient_id"].to_list() == patients


def test_deterministic_by_seed_and_independent_of_chunks_and_threads():
    frame = scored_rows(seed=3)
    first = bs.bootstrap_auc(frame, attributes=ATTRIBUTES, n_boot=20, seed=5, chunk=6, threads=1)
    again = bs.bootstrap_auc(frame, attributes=ATTRIBUTES, n_boot=20, seed=5, chunk=50, threads=2)
    other = bs.bootstrap_auc(frame, attributes=ATTRIBUTES, n_boot=20, seed=6)
    assert np.array_equal(first.values, again.values, equal_nan=True) and first.keys.equals(again.keys)
    assert not np.allclose(first.values, other.values, equal_nan=True)
    longer = bs.bootstrap_auc(frame, attributes=ATTRIBUTES, n_boot=30, seed=5)
    assert np.array_equal(longer.values[:20], first.values, equal_nan=True)  # replicate b does not depend on B


def test_draws_are_shared_across_runs_so_differences_are_paired():
    frame = scored_rows(runs={"member": 1.0, "ensemble": 1.0, "weak": 0.3}, seed=4)
    rep = bs.bootstrap_auc(frame, attributes=ATTRIBUTES, n_boot=40, seed=1)
    same = bs.differences(rep, [("ensemble", "member")])
    assert np.nanmax(np.abs(same.values)) == 0.0  # identical scores, identical draws
    diff = bs.differences(rep, [("weak", "member")])
    assert set(diff.keys["reference_run_id"]) == {"member"} and diff.keys.height == rep.keys.height // 3
    assert (diff.point < 0).mean() > 0.9  # the weaker run is worse almost everywhere
    ci = bs.confidence_intervals(diff)
    assert (ci["ci_low"] <= ci["auc_difference"]).all() and (ci["auc_difference"] <= ci["ci_high"]).all()


def test_gaps_scores_and_intervals():
    frame = scored_rows(n_patients=400, black_noise=2.5, seed=5)
    rep = bs.bootstrap_auc(frame, attributes=ATTRIBUTES, n_boot=200, seed=2)
    means = bs.subgroup_means(rep)
    gaps = bs.fairness_gaps(means)
    race = gaps.keys.with_row_index("_k").filter(pl.col("attribute") == "race")["_k"][0]
    point = means.keys.with_columns(m=means.point).filter(pl.col("attribute") == "race")["m"]
    assert gaps.point[race] == pytest.approx(100 * (point.max() - point.min()))
    ci = bs.confidence_intervals(gaps).filter(pl.col("attribute") == "race").row(0, named=True)
    assert ci["ci_low"] < ci["fairness_gap_pts"] < ci["ci_high"] and ci["n_boot"] == 200
    scores = bs.fairness_scores(gaps, {"sex": 12.0, "race": 12.0, "age_bin": 12.0})
    assert np.allclose(scores.point, 12.0 - gaps.point) and np.allclose(scores.values, 12.0 - gaps.values,
                                                                          equal_nan=True)
    wide = bs.confidence_intervals(rep, level=0.99)
    narrow = bs.confidence_intervals(rep, level=0.8)
    assert ((wide["ci_high"] - wide["ci_low"]) >= (narrow["ci_high"] - narrow["ci_low"])).all()


def test_intervals_are_wider_for_smaller_data():
    widths = []
    for n_patients in (100, 800):
        rep = bs.bootstrap_auc(scored_rows(n_patients=n_patients, seed=6), attributes=["sex"], n_boot=150, seed=3)
        ci = bs.confidence_intervals(rep).filter(pl.col("attribute") == "all")
        assert ((ci["ci_low"] <= ci["auc"]) & (ci["auc"] <= ci["ci_high"])).all()
        widths.append((ci["ci_high"] - ci["ci_low"]).mean())
    assert widths[0] > 1.5 * widths[1]


def test_paired_p_value_for_a_smaller_gap():
    fair = scored_rows(n_patients=500, runs={"fair": 1.5}, black_noise=1.0, seed=7)
    unfair = scored_rows(n_patients=500, runs={"unfair": 1.5}, black_noise=3.0, seed=7)
    gaps = bs.fairness_gaps(bs.subgroup_means(bs.bootstrap_auc(pl.concat([fair, unfair]), attributes=["race"],
                                                               n_boot=199, seed=1)))
    smaller = bs.p_value_smaller(gaps, "fair", "unfair").row(0, named=True)
    assert smaller["difference"] < 0 and smaller["n_boot"] == 199
    assert 1 / 200 <= smaller["p_value"] < 0.05
    assert bs.p_value_smaller(gaps, "unfair", "fair")["p_value"][0] > 0.9


def test_subgroup_mean_is_null_when_a_pathology_is_undefined():
    frame = scored_rows(seed=8).with_columns(
        y_true=pl.when((pl.col("race") == "Black") & (pl.col("pathology") == "Edema")).then(0.0)
        .otherwise(pl.col("y_true")))
    rep = bs.bootstrap_auc(frame, attributes=["race"], n_boot=5, seed=1)
    means = bs.subgroup_means(rep)
    black = means.keys.with_row_index("_k").filter(pl.col("subgroup") == "Black")["_k"][0]
    assert np.isnan(means.point[black]) and np.isnan(means.values[:, black]).all()
    assert not np.isnan(bs.fairness_gaps(means).point).any()  # the gap is over the defined subgroups


def test_seed_summary():
    table = pl.DataFrame({"model": ["mae", "mae", "mae", "bit"], "seed": [0, 1, 2, 0],
                          "fairness_gap_pts": [1.0, 2.0, 3.0, 4.0], "mean_auc": [0.8, 0.82, 0.84, 0.7]})
    out = bs.seed_summary(table, by=["model"]).sort("model")
    mae = out.filter(pl.col("model") == "mae").row(0, named=True)
    assert (mae["fairness_gap_pts_mean"], mae["fairness_gap_pts_sd"], mae["n_seeds"]) == (2.0, 1.0, 3)
    assert (mae["mean_auc_min"], mae["mean_auc_max"]) == (0.8, 0.84)
    assert out.filter(pl.col("model") == "bit")["fairness_gap_pts_sd"][0] is None
