"""Evaluation and training subsets: Glocker's resampling, per-pathology test sets, balanced fine-tuning sets."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from engine.data.balance import balanced_set, sex_targets
from engine.data.errors import DataError, OutputExistsError
from engine.data.labels import apply_policy
from engine.data.resample import (
    SET_SCHEMA,
    child_seed,
    conditional_shares,
    disease_3class_expr,
    glocker_original_set,
    glocker_resample,
    per_pathology_test_sets,
    race_balance_weights,
    ratio_weights,
    sampling_probabilities,
    shares,
)
from engine.data.schema import AGE_BIN_LABELS, AGE_BIN_UPPER_EDGES, PATHOLOGIES, RACES
from engine.data.subsets import build_subsets, drop_excluded, make_subsets, validate_cohort

RACE_MIX = {"White": 0.78, "Asian": 0.15, "Black": 0.07}
# Race-dependent prevalence (scaled per pathology below) and age: the resampling must undo both.
RACE_PREVALENCE = {"White": 0.12, "Asian": 0.22, "Black": 0.35}
RACE_AGE_MEAN = {"White": 62.0, "Asian": 56.0, "Black": 50.0}


def make_cohort(n: int, *, seed: int = 0, splits: tuple[float, float, float] = (0.6, 0.1, 0.3)) -> pl.DataFrame:
    """A cohort in the prepare contract with skewed race (78/15/7), race-dependent prevalence and age.

    Positives are older (age + 8 years), so P(age_bin | y) differs from P(age_bin) and step d has work to do.
    """
    rng = np.random.default_rng(seed)
    race = rng.choice(list(RACE_MIX), size=n, p=list(RACE_MIX.values()))
    sex = rng.choice(["Male", "Female"], size=n, p=[0.58, 0.42])
    split = rng.choice(["train", "validate", "test"], size=n, p=list(splits))
    base = np.vectorize(RACE_PREVALENCE.get)(race)
    labels = {}
    for k, pathology in enumerate(PATHOLOGIES):
        prevalence = base * (0.5 + 0.1 * k)
        u = rng.random(n)
        raw = np.where(u < prevalence, 1.0, np.where(u < prevalence + 0.05, -1.0, np.where(u < 0.7, 0.0, np.nan)))
        labels[pathology] = pl.Series(pathology, raw, dtype=pl.Float64).fill_nan(None)
    positive_any = labels["Cardiomegaly"].fill_null(0).to_numpy() == 1.0
    age = np.clip(np.vectorize(RACE_AGE_MEAN.get)(race) + 8.0 * positive_any + rng.normal(0, 17, n), 18, 95)
    age = age.round().astype(np.int16)
    ids = [f"train/patient{i:05d}/study1/view1_frontal.jpg" for i in range(n)]
    return pl.DataFrame({
        "dataset": "chexpert",
        "image_id": ids,
        "patient_id": [f"patient{i:05d}" for i in range(n)],
        "study_id": [f"patient{i:05d}/study1" for i in range(n)],
        "split": split,
        "sex": sex,
        "race": race,
        "ethnicity": "Non-Hispanic/Non-Latino",
        "age": pl.Series(age, dtype=pl.Int16),
        "age_bin": np.array(AGE_BIN_LABELS)[np.searchsorted(AGE_BIN_UPPER_EDGES, age, side="left")],
        "view": "Frontal",
        "position": "PA",
        "source_row": pl.Series(np.arange(n), dtype=pl.Int64),
    }).with_columns(labels.values())


@pytest.fixture(scope="module")
def cohort() -> pl.DataFrame:
    return make_cohort(30_000)


@pytest.fixture(scope="module")
def resampled(cohort: pl.DataFrame) -> pl.DataFrame:
    return per_pathology_test_sets(cohort, policy="u-zeros", seed=42, sample_size_factor=3)


def _weighted(rows: pl.DataFrame, attrs: pl.DataFrame) -> pl.DataFrame:
    """Set rows joined with the attributes of their images."""
    return rows.join(attrs, on="image_id", how="inner")


def _test_targets(cohort: pl.DataFrame) -> pl.DataFrame:
    return apply_policy(cohort.filter(pl.col("split") == "test"), "u-zeros")


# --- hand-worked weight computations (steps b, c, d) ---------------------------------------------------------


def test_race_balance_weights_by_hand() -> None:
    # 3 White (code 0), 1 Asian (code 1): P = 3/4, 1/4 -> weights 4/3, 4 -> probabilities 1/6 each, 1/2.
    weights = race_balance_weights(np.array([0, 0, 0, 1]))
    np.testing.assert_allclose(weights, [4 / 3, 4 / 3, 4 / 3, 4.0])
    np.testing.assert_allclose(sampling_probabilities(weights), [1 / 6, 1 / 6, 1 / 6, 1 / 2])


def test_prevalence_weights_by_hand() -> None:
    # Race subset with y = [0, 0, 0, 1] (P_race = 3/4, 1/4); test prevalence 10 %: w = 0.9/0.75, 0.1/0.25.
    weights = ratio_weights(np.array([0, 0, 0, 1]), np.array([0.9, 0.1]))
    np.testing.assert_allclose(weights, [1.2, 1.2, 1.2, 0.4])
    np.testing.assert_allclose(sampling_probabilities(weights), [0.3, 0.3, 0.3, 0.1])


def test_age_weights_by_hand() -> None:
    # Cell ages [a0, a1, a1, a2] (P_cell = 1/4, 1/2, 1/4), target P_test(age | y) = 1/2, 1/4, 1/4.
    weights = ratio_weights(np.array([0, 1, 1, 2]), np.array([0.5, 0.25, 0.25]))
    np.testing.assert_allclose(weights, [2.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(sampling_probabilities(weights), [0.5, 0.125, 0.125, 0.25])


def test_ratio_weights_renormalise_over_bins_the_cell_has() -> None:
    # Target bin 3 (mass 0.1) is absent from the cell: the other bins get 0.4, 0.3, 0.2 renormalised by 0.9.
    probabilities = sampling_probabilities(ratio_weights(np.array([0, 1, 1, 2]), np.array([0.4, 0.3, 0.2, 0.1])))
    np.testing.assert_allclose(probabilities, [4 / 9, 1 / 6, 1 / 6, 2 / 9])
    # A class with target share 0 is never drawn.
    np.testing.assert_allclose(ratio_weights(np.array([0, 1]), np.array([1.0, 0.0])), [2.0, 0.0])


def test_shares_and_conditional_shares_by_hand() -> None:
    np.testing.assert_allclose(shares(np.array([0, 2, 2, 2]), 4), [0.25, 0.0, 0.75, 0.0])
    matrix = conditional_shares(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 2]), 3, 3)
    np.testing.assert_allclose(matrix, [[0.5, 0.5, 0.0], [0.0, 2 / 3, 1 / 3], [0.0, 0.0, 0.0]])


def test_sampling_probabilities_reject_all_zero_weights() -> None:
    with pytest.raises(ValueError, match="sum to zero"):
        sampling_probabilities(np.zeros(3))


def test_glocker_resample_draw_shares_match_hand_computation() -> None:
    # image: race, y, age. Hand: race halves; P_test(y=1) = 1/3; P_test(age | y) = 1/2, 1/2 for both y.
    # w1 (only W,y=1 image; its missing a1 bin is renormalised away): 1/2 * 1/3 = 1/6
    # w2 (the W,y=0,a0 image): 1/2 * 2/3 * 1/2 = 1/6; w3, w4 (share the W,y=0,a1 bin): 1/2 * 2/3 * 1/4 = 1/12
    # b1 (only A,y=1): 1/2 * 1/3 = 1/6; b2 (only A,y=0): 1/2 * 2/3 = 1/3
    frame = pl.DataFrame({
        "image_id": ["w1", "w2", "w3", "w4", "b1", "b2"],
        "race": ["White"] * 4 + ["Asian"] * 2,
        "y": [1, 0, 0, 0, 1, 0],
        "age_bin": ["21-30", "21-30", "31-40", "31-40", "31-40", "21-30"],
    })
    out = glocker_resample(frame, "y", seed=0, sample_size_factor=20_000)
    assert out["weight"].sum() == 120_000
    got = dict(zip(out["image_id"], out["weight"] / 120_000, strict=False))
    expected = {"w1": 1 / 6, "w2": 1 / 6, "w3": 1 / 12, "w4": 1 / 12, "b1": 1 / 6, "b2": 1 / 3}
    for image_id, share in expected.items():
        assert got[image_id] == pytest.approx(share, abs=0.01), image_id


def test_child_seed_is_stable_and_distinct() -> None:
    assert child_seed(42, "Edema") == child_seed(42, "Edema")
    seeds = {child_seed(42, p) for p in PATHOLOGIES} | {child_seed(43, "Edema")}
    assert len(seeds) == len(PATHOLOGIES) + 1


# --- per-pathology resampled test sets -----------------------------------------------------------------------


def test_resampled_sets_have_exact_total_weight_and_schema(cohort: pl.DataFrame, resampled: pl.DataFrame) -> None:
    test_ids = set(cohort.filter(pl.col("split") == "test")["image_id"])
    assert dict(resampled.schema) == SET_SCHEMA
    assert set(resampled["set"]) == {"resampled"}
    assert set(resampled["pathology"]) == set(PATHOLOGIES)
    assert resampled["weight"].min() >= 1
    assert set(resampled["image_id"]) <= test_ids
    assert not resampled.select("pathology", "image_id").is_duplicated().any()
    totals = resampled.group_by("pathology").agg(pl.col("weight").sum())
    assert set(totals["weight"]) == {3 * len(test_ids)}


def test_resampled_race_shares_are_a_third(cohort: pl.DataFrame, resampled: pl.DataFrame) -> None:
    test = _test_targets(cohort)
    assert test.filter(pl.col("race") == "White").height / test.height > 0.7  # the input is skewed
    joined = _weighted(resampled, test.select("image_id", "race"))
    race_share = joined.group_by("pathology", "race").agg(pl.col("weight").sum()).with_columns(
        share=pl.col("weight") / pl.col("weight").sum().over("pathology"))
    assert race_share.height == 3 * len(PATHOLOGIES)
    assert (race_share["share"] - 1 / 3).abs().max() < 0.02


def test_resampled_prevalence_matches_test_split_within_each_race(cohort: pl.DataFrame,
                                                                  resampled: pl.DataFrame) -> None:
    test = _test_targets(cohort)
    raw_gaps = []
    for pathology in PATHOLOGIES:
        overall = test[pathology].mean()
        rows = resampled.filter(pl.col("pathology") == pathology)
        joined = _weighted(rows, test.select("image_id", "race", pathology))
        for race in RACES:
            cell = joined.filter(pl.col("race") == race)
            prevalence = (cell["weight"] * cell[pathology]).sum() / cell["weight"].sum()
            assert prevalence == pytest.approx(overall, abs=0.02), (pathology, race)
        raw_gaps.append(abs(test.filter(pl.col("race") == "Black")[pathology].mean() - overall))
    assert min(raw_gaps) > 0.05  # without resampling the Black prevalence is far off: the check has teeth


def _age_tv_by_cell(joined: pl.DataFrame, test: pl.DataFrame, y: str, weight: str | None) -> pl.DataFrame:
    """TV distance of each (race, y) cell's age mix to P_test(age_bin | y); ``weight`` None = raw counts."""
    target = test.group_by(y, "age_bin").len().select(
        y, "age_bin", p_test=pl.col("len") / pl.col("len").sum().over(y))
    w = pl.col(weight) if weight else pl.lit(1)
    observed = joined.group_by("race", y, "age_bin").agg(n=w.sum()).with_columns(
        p=pl.col("n") / pl.col("n").sum().over("race", y), cell_n=pl.col("n").sum().over("race", y))
    grid = observed.select("race", y, "cell_n").unique().join(target, on=y).join(
        observed.select("race", y, "age_bin", "p"), on=["race", y, "age_bin"], how="left")
    return grid.group_by("race", y, "cell_n").agg(tv=0.5 * (pl.col("p_test") - pl.col("p").fill_null(0)).abs().sum())


def test_resampled_age_matches_test_split_within_each_race_y_cell(cohort: pl.DataFrame,
                                                                  resampled: pl.DataFrame) -> None:
    test = _test_targets(cohort)
    checked, raw_max = 0, 0.0
    for pathology in PATHOLOGIES:
        rows = resampled.filter(pl.col("pathology") == pathology)
        joined = _weighted(rows, test.select("image_id", "race", "age_bin", pathology))
        tv = _age_tv_by_cell(joined, test, pathology, "weight").filter(pl.col("cell_n") >= 4000)
        assert tv["tv"].max() < 0.05, pathology
        checked += tv.height
        raw = _age_tv_by_cell(test.select("race", "age_bin", pathology), test, pathology, None)
        raw_max = max(raw_max, raw["tv"].max())
    assert checked >= 40
    assert raw_max > 0.1  # the raw test split is not age-matched: the check has teeth


def test_resampling_is_deterministic_and_order_independent(cohort: pl.DataFrame, resampled: pl.DataFrame) -> None:
    shuffled = cohort.sample(fraction=1.0, shuffle=True, seed=3)
    again = per_pathology_test_sets(shuffled, policy="u-zeros", seed=42, sample_size_factor=3)
    assert again.equals(resampled)
    other = per_pathology_test_sets(cohort, policy="u-zeros", seed=43, sample_size_factor=3)
    assert not other.equals(resampled)
    assert other["weight"].sum() == resampled["weight"].sum()


def test_sample_size_factor_scales_total_weight(cohort: pl.DataFrame) -> None:
    frame = cohort.filter(pl.col("split") == "test").select("image_id", "race", "age_bin", "Edema").fill_null(0.0)
    assert glocker_resample(frame, "Edema", seed=1, sample_size_factor=1)["weight"].sum() == frame.height
    with pytest.raises(ValueError, match="sample_size_factor"):
        glocker_resample(frame, "Edema", seed=1, sample_size_factor=0)


def test_ignore_policy_leaves_out_uncertain_rows(cohort: pl.DataFrame) -> None:
    test = cohort.filter(pl.col("split") == "test")
    sets = per_pathology_test_sets(cohort, policy="ignore", seed=42, sample_size_factor=3)
    for pathology in ("Edema", "Fracture"):
        uncertain = set(test.filter(pl.col(pathology) == -1.0)["image_id"])
        rows = sets.filter(pl.col("pathology") == pathology)
        assert uncertain and not uncertain & set(rows["image_id"])
        assert rows["weight"].sum() == 3 * (test.height - len(uncertain))


def test_race_without_positives_is_reported_not_hidden(cohort: pl.DataFrame) -> None:
    black = (pl.col("race") == "Black") & (pl.col("split") == "test")
    degenerate = cohort.with_columns(pl.when(black).then(0.0).otherwise(pl.col("Edema")).alias("Edema"))
    sets, summary = make_subsets(degenerate, seed=42)
    n_test = degenerate.filter(pl.col("split") == "test").height
    rows = sets.filter(pl.col("pathology") == "Edema")
    assert rows["weight"].sum() == 3 * n_test
    entry = next(e for e in summary["sets"] if e["pathology"] == "Edema")
    assert entry["n_unmatched"] == 1
    assert entry["unmatched"][0]["race"] == "Black" and entry["unmatched"][0]["missing_y"] == ["1"]
    assert entry["prevalence_by_race"]["Black"] == 0.0
    assert entry["prevalence_by_race"]["White"] == pytest.approx(entry["y_share_test"]["1"], abs=0.02)


# --- Glocker's original 3-class set --------------------------------------------------------------------------


def test_disease_3class_label_by_hand() -> None:
    frame = pl.DataFrame({"No Finding": [1.0, 1.0, 0.0, None, 1.0, -1.0],
                          "Pleural Effusion": [0.0, 1.0, 1.0, -1.0, None, None]})
    got = frame.select(disease_3class_expr())["disease"].to_list()
    assert got == ["No Finding", "Pleural Effusion", "Pleural Effusion", "Other", "No Finding", "Other"]


def test_glocker_original_matches_3class_shares_within_race(cohort: pl.DataFrame) -> None:
    test = cohort.filter(pl.col("split") == "test").select("image_id", "race", disease_3class_expr())
    rows = glocker_original_set(cohort, seed=42)
    assert rows["pathology"].null_count() == rows.height and set(rows["set"]) == {"glocker-original"}
    assert rows["weight"].sum() == 3 * test.height
    target = dict(test.group_by("disease").len().with_columns(pl.col("len") / test.height).iter_rows())
    joined = _weighted(rows, test)
    for race in RACES:
        cell = joined.filter(pl.col("race") == race)
        for disease, share in target.items():
            got = cell.filter(pl.col("disease") == disease)["weight"].sum() / cell["weight"].sum()
            assert got == pytest.approx(share, abs=0.02), (race, disease)
    assert rows.equals(glocker_original_set(cohort, seed=42))


# --- balanced fine-tuning sets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_male", "n_female", "total", "expected"),
    [(100, 100, 50, (25, 25)), (100, 100, 51, (26, 25)), (100, 10, 50, (40, 10)), (10, 100, 50, (10, 40)),
     (25, 25, 50, (25, 25))],
)
def test_sex_targets_by_hand(n_male: int, n_female: int, total: int, expected: tuple[int, int]) -> None:
    assert sex_targets(n_male, n_female, total) == expected


def test_sex_targets_reject_too_few_images() -> None:
    with pytest.raises(ValueError, match="cannot draw"):
        sex_targets(3, 3, 7)


@pytest.mark.parametrize("split", ["train", "validate"])
def test_balanced_set_equal_races_and_white_sex(cohort: pl.DataFrame, split: str) -> None:
    rows = cohort.filter(pl.col("split") == split)
    minority = min(rows.filter(pl.col("race") == race).height for race in RACES)  # independent of the code
    balanced = balanced_set(cohort, split=split, seed=42)
    chosen = balanced.rows
    assert balanced.per_race == minority and balanced.minority_race == "Black"
    assert chosen.height == 3 * minority and chosen["image_id"].n_unique() == chosen.height
    assert set(chosen["image_id"]) <= set(rows["image_id"])
    assert dict(chosen.group_by("race").len().iter_rows()) == {race: minority for race in RACES}
    white = dict(chosen.filter(pl.col("race") == "White").group_by("sex").len().iter_rows())
    assert set(white) == {"Male", "Female"} and abs(white["Male"] - white["Female"]) <= 1
    # Asian and Black keep their own (male-heavy) mix: sex is not balanced there.
    assert chosen.filter(pl.col("race") == "Asian", pl.col("sex") == "Male").height > minority / 2
    assert balanced_set(cohort, split=split, seed=42).rows.equals(chosen)
    assert not balanced_set(cohort, split=split, seed=7).rows.equals(chosen)


def test_balanced_set_leaves_out_white_unknown_sex_and_tops_up_short_sex() -> None:
    rows = [("w-f0", "White", "Female"), ("w-u", "White", "Unknown")]
    rows += [(f"w-m{i}", "White", "Male") for i in range(6)]
    rows += [(f"a{i}", "Asian", "Male") for i in range(4)] + [("b0", "Black", "Female"), ("b1", "Black", "Unknown"),
                                                             ("b2", "Black", "Male")]
    frame = pl.DataFrame(rows, schema=["image_id", "race", "sex"], orient="row").with_columns(split=pl.lit("train"))
    balanced = balanced_set(frame, split="train", seed=0)
    chosen = balanced.rows
    assert balanced.per_race == 3 and balanced.n_unknown_sex_white == 1
    white = chosen.filter(pl.col("race") == "White")
    assert "w-u" not in white["image_id"].to_list()
    assert white["sex"].sort().to_list() == ["Female", "Male", "Male"]  # 1 Female available, topped up by Male
    assert sorted(chosen.filter(pl.col("race") == "Black")["image_id"]) == ["b0", "b1", "b2"]  # Unknown kept


def test_balanced_set_errors() -> None:
    frame = pl.DataFrame({"image_id": ["a", "b"], "race": ["White", "Asian"], "sex": ["Male", "Male"],
                          "split": ["train", "train"]})
    with pytest.raises(DataError, match="Black") as info:
        balanced_set(frame, split="train", seed=0)
    assert info.value.column == "race"
    with pytest.raises(DataError, match="no 'validate' rows"):
        balanced_set(frame, split="validate", seed=0)


# --- build_subsets: files, report, exclusions, overwrite -----------------------------------------------------


def _write_cohort(tmp_path: Path, frame: pl.DataFrame) -> Path:
    path = tmp_path / "cohort" / "cohort.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    return path


def test_build_subsets_writes_parquet_and_report(tmp_path: Path) -> None:
    frame = make_cohort(6000, seed=5)
    reasons = ["unreadable", "unreadable", "too small"]
    excluded_ids = frame.filter(pl.col("split") == "test")["image_id"].head(2).to_list()
    excluded_ids.append(frame.filter(pl.col("split") == "train")["image_id"][0])
    frame = frame.with_columns(excluded_reason=pl.col("image_id").replace_strict(
        dict(zip(excluded_ids, reasons, strict=False)), default=None, return_dtype=pl.String))
    path = _write_cohort(tmp_path, frame)
    started = time.perf_counter()
    summary = build_subsets(path, seed=42)
    assert time.perf_counter() - started < 10
    sets = pl.read_parquet(path.parent / "subsets.parquet")
    assert dict(sets.schema) == SET_SCHEMA
    assert not set(excluded_ids) & set(sets["image_id"])
    report = json.loads((path.parent / "subsets_report.json").read_text())
    assert report == json.loads(json.dumps(summary))
    assert report["cohort"]["n_excluded"] == 3 and report["cohort"]["excluded_by_reason"] == {
        "too small": 1, "unreadable": 2}
    n_test = frame.filter(pl.col("split") == "test", pl.col("excluded_reason").is_null()).height
    names = [(e["set"], e["pathology"]) for e in report["sets"]]
    assert names == [("resampled", p) for p in PATHOLOGIES] + [
        ("glocker-original", None), ("balanced-train", None), ("balanced-validate", None)]
    for entry in report["sets"][:15]:
        assert entry["total_weight"] == 3 * n_test and entry["n_source_rows"] == n_test
        assert sum(entry["by_race"].values()) == entry["total_weight"]
    train = report["sets"][15]
    assert train["by_race"] == {race: train["per_race"] for race in sorted(RACES)}
    assert report["parameters"] == {"seed": 42, "sample_size_factor": 3, "evaluation_policy": "u-zeros",
                                    "sampler": report["parameters"]["sampler"]}
    assert any("sex is not balanced" in note for note in report["does_not_balance"])
    # Same inputs and seed: byte-identical set rows.
    again = build_subsets(path, tmp_path / "again" / "sets.parquet", seed=42)
    assert pl.read_parquet(again["outputs"]["subsets"]).equals(sets)
    assert Path(again["outputs"]["report"]).name == "sets_report.json"


def test_build_subsets_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = _write_cohort(tmp_path, make_cohort(3000, seed=2))
    build_subsets(path, seed=1)
    before = pl.read_parquet(path.parent / "subsets.parquet")
    with pytest.raises(OutputExistsError):
        build_subsets(path, seed=2)
    assert pl.read_parquet(path.parent / "subsets.parquet").equals(before)
    build_subsets(path, seed=2, force=True)
    assert not pl.read_parquet(path.parent / "subsets.parquet").equals(before)


def test_build_subsets_skips_an_empty_validate_split_and_says_so(tmp_path: Path) -> None:
    path = _write_cohort(tmp_path, make_cohort(3000, seed=2, splits=(0.7, 0.0, 0.3)))
    summary = build_subsets(path)
    assert summary["sets"][-1] == {"set": "balanced-validate", "pathology": None,
                                   "skipped": "cohort has no 'validate' rows"}
    sets = pl.read_parquet(path.parent / "subsets.parquet")
    assert "balanced-validate" not in set(sets["set"])


# --- bad input ----------------------------------------------------------------------------------------------


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    path = _write_cohort(tmp_path, make_cohort(500).drop("age_bin"))
    with pytest.raises(DataError) as info:
        build_subsets(path)
    assert info.value.column == "age_bin" and info.value.file == str(path)


def test_empty_test_split_is_an_error(tmp_path: Path) -> None:
    path = _write_cohort(tmp_path, make_cohort(500, splits=(0.9, 0.1, 0.0)))
    with pytest.raises(DataError, match="no test rows") as info:
        build_subsets(path)
    assert info.value.file == str(path) and info.value.column == "split"


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [("race", "Other", "unexpected values"), ("sex", "M", "unexpected values"), ("split", "val", "unexpected values"),
     ("age_bin", "90+", "unexpected values"), ("Edema", 2.0, "unexpected values"), ("image_id", None, "null image_id")],
)
def test_bad_values_name_column_and_rows(column: str, value: object, message: str) -> None:
    frame = make_cohort(300)
    bad_id = frame["image_id"][7]
    frame = frame.with_columns(pl.when(pl.col("image_id") == bad_id).then(pl.lit(value)).otherwise(pl.col(column))
                               .cast(frame.schema[column]).alias(column))
    with pytest.raises(DataError, match=message) as info:
        validate_cohort(frame, file=Path("cohort.parquet"))
    assert info.value.column == column and info.value.n_bad == 1
    if value is not None:
        assert info.value.rows == [f"{bad_id}: {value!r}"]


def test_non_numeric_labels_and_duplicate_ids_are_errors() -> None:
    frame = make_cohort(300)
    as_text = frame.with_columns(pl.col("Edema").cast(pl.String).fill_null("").replace("1.0", "yes"))
    with pytest.raises(DataError, match="not a number") as info:
        validate_cohort(as_text)
    assert info.value.column == "Edema"
    duplicated = pl.concat([frame, frame.head(2)])
    with pytest.raises(DataError, match="duplicate image_id") as info:
        validate_cohort(duplicated)
    assert info.value.rows == frame["image_id"].head(2).to_list()


def test_sampling_functions_refuse_unremoved_exclusions() -> None:
    frame = make_cohort(600).with_columns(excluded_reason=pl.lit(None, dtype=pl.String))
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("unreadable"))
                               .otherwise(pl.col("excluded_reason")).alias("excluded_reason"))
    for build in (lambda f: per_pathology_test_sets(f), lambda f: balanced_set(f, split="train", seed=0)):
        with pytest.raises(DataError, match="excluded rows") as info:
            build(frame)
        assert info.value.column == "excluded_reason"
    kept, counts = drop_excluded(frame)
    assert kept.height == frame.height - 1 and counts == {"unreadable": 1}
    per_pathology_test_sets(kept)


def test_full_size_test_split_builds_in_seconds() -> None:
    n = 127_118
    frame = make_cohort(n, seed=9, splits=(76_205 / n, 12_673 / n, 38_240 / n))
    started = time.perf_counter()
    sets, summary = make_subsets(frame, seed=42)
    assert time.perf_counter() - started < 10
    n_test = frame.filter(pl.col("split") == "test").height
    assert sets.filter(pl.col("set") == "resampled")["weight"].sum() == 14 * 3 * n_test


def test_glocker_resample_input_errors() -> None:
    frame = pl.DataFrame({"image_id": ["a", "b", "c"], "race": ["White", "Asian", "Black"],
                          "age_bin": ["21-30", None, "81+"], "y": [1.0, None, 0.0]})
    with pytest.raises(DataError, match="null values") as info:
        glocker_resample(frame, "y", seed=0)
    assert info.value.column == "y" and info.value.rows == ["b"]
    with pytest.raises(DataError, match="lacks a required column") as info:
        glocker_resample(frame.drop("age_bin"), "y", seed=0)
    assert info.value.column == "age_bin"
    with pytest.raises(DataError, match="no rows to resample"):
        glocker_resample(frame.clear(), "y", seed=0)
    # A null age_bin is its own level, not an error: every row can still be drawn.
    assert glocker_resample(frame.with_columns(pl.col("y").fill_null(0.0)), "y", seed=0)["weight"].sum() == 9


def test_disease_3class_label_reproduces_upstream_on_real_rows(realdata: Path) -> None:
    # 3,000 real CheXpert test rows carrying upstream's own `disease` column (chexploration's derivation).
    path = realdata / "cxr-foundation-bias-samples" / "chexpert-model.embeddings.csv"
    if not path.exists():
        pytest.skip(f"absent: {path}")
    frame = pl.read_csv(path, columns=["No Finding", "Pleural Effusion", "disease"],
                        schema_overrides={"No Finding": pl.Float64, "Pleural Effusion": pl.Float64})
    ours = frame.select(disease_3class_expr().alias("ours"), "disease")
    assert ours.height == 3000
    assert (ours["ours"] == ours["disease"]).all()
    assert set(ours["disease"]) == {"No Finding", "Pleural Effusion", "Other"}
