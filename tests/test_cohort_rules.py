"""Cohort builder rules on hand-written inputs: filters counted, race/ethnicity mapping, splits, report."""

from __future__ import annotations

import polars as pl
import pytest
from chexpert_fixtures import train_row, write_demographics, write_split, write_train_csv

from engine.data.cohort import age_bin_expr, build_chexpert_cohort, race_expr
from engine.data.cohort_report import build_report
from engine.data.errors import DataError
from engine.data.schema import AGE_BIN_LABELS, PATHOLOGIES, age_bin, map_race

NH = "Non-Hispanic/Non-Latino"


@pytest.fixture
def inputs(tmp_path):
    """Ten rows; the comment on each says which rule removes it (or none)."""
    rows = [
        train_row(1, labels={"Edema": "1.0", "Atelectasis": "-1.0"}),  # 0 kept (White)
        train_row(1, view=2, lateral=True),  # 1 lateral -> frontal filter
        train_row(2, sex="Female", position="PA", labels={"Edema": "1.0"}),  # 2 kept (Black)
        train_row(3, position="LL"),  # 3 frontal LL -> AP/PA filter
        train_row(4),  # 4 race "Other" -> race filter
        train_row(5),  # 5 Hispanic ethnicity -> ethnicity filter
        train_row(6, age="81"),  # 6 kept (Asian - Historical Conv)
        train_row(7),  # 7 not in split file
        train_row(8, study=2, age="20", labels={"Edema": "0.0"}),  # 8 kept (White or Caucasian)
        train_row(8, study=1, age="21"),  # 9 kept
    ]
    demo = {1: ("White", NH), 2: ("Black or African American", "Not Hispanic"), 3: ("White", NH),
            4: ("Other", NH), 5: ("White, Hispanic", "Hispanic/Latino"), 6: ("Asian - Historical Conv", NH),
            7: ("White", NH), 8: ("White or Caucasian", NH)}
    split = {0: "train", 1: "train", 2: "test", 3: "test", 4: "train", 5: "validate", 6: "validate", 8: "test",
             9: "test"}
    return (write_train_csv(tmp_path / "train.csv", rows), write_demographics(tmp_path / "demo.csv", demo),
            write_split(tmp_path / "split.csv", split))


def test_each_filter_removes_its_rows_and_counts_them(inputs):
    train, demo, split = inputs
    cohort, report = build_chexpert_cohort(train, demo, split=split)
    assert sorted(cohort["source_row"].to_list()) == [0, 2, 6, 8, 9]
    steps = {s["step"]: s for s in report["filters"]["train.csv"]["filters"]}
    assert {k: v["removed"] for k, v in steps.items()} == {
        "split file": 1, "demographics": 0, "race": 1, "ethnicity": 1, "frontal": 1, "AP/PA": 1}
    assert steps["race"]["removed_by_value"] == {"Other": 1}
    assert steps["ethnicity"]["removed_by_value"] == {"Hispanic/Latino": 1}
    assert steps["AP/PA"]["removed_by_value"] == {"LL": 1}
    assert report["filters"]["train.csv"]["rows_in"] == 10
    assert report["filters"]["train.csv"]["rows_out"] == 5


def test_cohort_columns_values_and_ids(inputs):
    train, demo, split = inputs
    cohort, _ = build_chexpert_cohort(train, demo, split=split)
    row = cohort.filter(pl.col("source_row") == 0).to_dicts()[0]
    assert row["image_id"] == "train/patient00001/study1/view1_frontal.jpg"
    assert (row["patient_id"], row["study_id"]) == ("patient00001", "patient00001/study1")
    demographics = (row["race"], row["sex"], row["split"], row["age"], row["age_bin"])
    assert demographics == ("White", "Male", "train", 50, "41-50")
    assert (row["Edema"], row["Atelectasis"], row["Cardiomegaly"]) == (1.0, -1.0, None)
    races = dict(cohort.select("patient_id", "race").unique().iter_rows())
    assert races == {"patient00001": "White", "patient00002": "Black", "patient00006": "Asian",
                     "patient00008": "White"}
    assert cohort.schema["age"] == pl.Int16 and all(cohort.schema[p] == pl.Float64 for p in PATHOLOGIES)


def test_both_release_prefixes_give_the_same_image_ids(tmp_path):
    small = write_train_csv(tmp_path / "small.csv", [train_row(1)])
    full = write_train_csv(tmp_path / "full.csv", [train_row(1, prefix="CheXpert-v1.0/train")])
    demo = write_demographics(tmp_path / "demo.csv", {1: ("White", NH)})
    split = write_split(tmp_path / "split.csv", {0: "train"})
    ids = [build_chexpert_cohort(f, demo, split=split)[0]["image_id"].to_list() for f in (small, full)]
    assert ids[0] == ids[1] == ["train/patient00001/study1/view1_frontal.jpg"]


@pytest.mark.parametrize("raw, expected", [
    ("White", "White"), ("White, non-Hispanic", "White"), ("White or Caucasian", "White"),
    ("Asian", "Asian"), ("Asian, Hispanic", "Asian"), ("Asian - Historical Conv", "Asian"),
    ("Black or African American", "Black"), ("Black, non-Hispanic", "Black"),
    ("Other", None), ("Unknown", None), ("Race and Ethnicity Unknown", None), ("Patient Refused", None),
    ("Native Hawaiian or Other Pacific Islander", None), ("American Indian or Alaska Native", None),
    ("White, Asian", "Asian"),  # a later rule overwrites an earlier one: Black, then White, then Asian
    ("Black, White", "White"),
])
def test_race_mapping_by_substring_in_upstream_order(raw, expected):
    assert map_race(raw) == expected
    assert pl.select(race_expr(pl.lit(raw))).item() == expected


def test_age_bins_match_upstream_edges():
    ages = [0, 20, 21, 30, 31, 55, 70, 71, 80, 81, 90]
    binned = pl.select(age_bin_expr(pl.Series(ages, dtype=pl.Int16))).to_series().to_list()
    assert binned == [age_bin(a) for a in ages]
    assert binned[:2] == ["0-20", "0-20"] and binned[-2:] == ["81+", "81+"] and binned[8] == "71-80"
    assert set(binned) <= set(AGE_BIN_LABELS)


def test_random_patient_split_is_seeded_patient_level_and_uses_fractions(tmp_path):
    rows = [train_row(p, study=s) for p in range(1, 101) for s in (1, 2)]
    train = write_train_csv(tmp_path / "train.csv", rows)
    demo = write_demographics(tmp_path / "demo.csv", {p: ("White", NH) for p in range(1, 101)})
    a, report = build_chexpert_cohort(train, demo, split="random", fractions=(0.5, 0.2, 0.3), seed=7)
    b, _ = build_chexpert_cohort(train, demo, split="random", fractions=(0.5, 0.2, 0.3), seed=7)
    c, _ = build_chexpert_cohort(train, demo, split="random", fractions=(0.5, 0.2, 0.3), seed=8)
    assert a.equals(b) and not a.equals(c)
    patients = a.group_by("split").agg(pl.col("patient_id").n_unique()).sort("split")
    assert dict(patients.iter_rows()) == {"test": 30, "train": 50, "validate": 20}
    assert a.group_by("patient_id").agg(pl.col("split").n_unique())["split"].max() == 1
    assert "random" in report["sources"]["split"] and report["checks"] == {}


def test_official_valid_csv_is_added_as_its_own_split(tmp_path, inputs):
    train, _, split = inputs
    demo = write_demographics(tmp_path / "demo2.csv", {1: ("White", NH), 2: ("Asian", NH), 9: ("Black", NH)})
    valid = write_train_csv(tmp_path / "valid.csv", [train_row(9, prefix="CheXpert-v1.0-small/valid"),
                                                      train_row(9, view=2, lateral=True,
                                                                prefix="CheXpert-v1.0-small/valid")])
    cohort, report = build_chexpert_cohort(train, demo, split=split, valid_csv=valid,
                                           allow_missing_demographics=True)
    extra = cohort.filter(pl.col("split") == "official_valid")
    assert extra["image_id"].to_list() == ["valid/patient00009/study1/view1_frontal.jpg"]
    assert report["filters"]["valid.csv"]["rows_out"] == 1
    assert report["filters"]["valid.csv"]["filters"][3]["removed"] == 1  # the lateral view
    leaking = write_train_csv(tmp_path / "valid2.csv", [train_row(1, study=9, prefix="CheXpert-v1.0-small/valid")])
    with pytest.raises(DataError, match="more than one split"):
        build_chexpert_cohort(train, demo, split=split, valid_csv=leaking, allow_missing_demographics=True)


def test_report_counts_add_up_and_prevalence_is_exact(inputs):
    train, demo, split = inputs
    cohort, provenance = build_chexpert_cohort(train, demo, split=split)
    report = build_report(cohort, provenance)
    assert sum(r["images"] for r in report["composition"]) == cohort.height == report["rows_out"]
    assert report["splits"]["test"] == {"images": 3, "patients": 2}
    edema_train = [r for r in report["prevalence"] if (r["split"], r["attribute"], r["pathology"]) ==
                   ("train", "all", "Edema")][0]
    assert (edema_train["n"], edema_train["positive"], edema_train["blank"]) == (1, 1.0, 0.0)
    atel_white = [r for r in report["prevalence"] if (r["split"], r["attribute"], r["subgroup"], r["pathology"]) ==
                  ("train", "race", "White", "Atelectasis")][0]
    assert atel_white["uncertain"] == 1.0
    # Shares are over all images of the subgroup, blanks included: test = 3 images, Edema 1 / 0 / blank.
    edema_test = [r for r in report["prevalence"] if (r["split"], r["attribute"], r["pathology"]) ==
                  ("test", "all", "Edema")][0]
    assert (edema_test["n"], edema_test["positive"], edema_test["blank"]) == (3, 0.3333, 0.3333)
    assert report["cohort_hash"].startswith("sha256:")
