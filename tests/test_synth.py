"""Synthetic CheXpert and NIH writers: real formats (checked against real files), demography, determinism,
overwrite safety, and measured learnability with the planted subgroup gaps (logistic regression, scikit-learn)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from engine.data import synth, synth_images
from engine.data.errors import DataError, OutputExistsError
from engine.data.io import read_table
from engine.data.schema import (
    CHEXPERT_TRAIN_COLUMNS,
    DEMOGRAPHICS_COLUMNS,
    ETHNICITIES_KEPT,
    PATHOLOGIES,
    POSITIONS_KEPT,
    SPLITS,
    map_race,
)
from engine.data.synth import write_synthetic_chexpert
from engine.data.synth_nih import write_synthetic_nih

LABEL_TEXT = {"1.0", "0.0", "-1.0", ""}
PATH_RE = re.compile(r"^CheXpert-v1\.0-small/(train|valid)/(patient\d{5})/study\d+/view\d_(frontal|lateral)\.jpg$")
SMALL_SIZE = (40, 32)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """A small folder for format checks (non-square small images)."""
    return write_synthetic_chexpert(tmp_path_factory.mktemp("s") / "cx", n_patients=80, seed=3, image_size=SMALL_SIZE)


@pytest.fixture(scope="module")
def large(tmp_path_factory) -> dict[str, Path]:
    """A larger folder at the default image size, for shares, prevalences and learnability."""
    return write_synthetic_chexpert(tmp_path_factory.mktemp("l") / "cx", n_patients=2500, seed=0)


def read_raw(path: Path) -> list[list[str]]:
    """CSV rows as the exact cell text (csv module: blanks stay "")."""
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def subset(paths: dict[str, Path]) -> pl.DataFrame:
    """The paper subset rebuilt independently, as chexploration does: split index -> train.csv row, demo join."""
    train = pl.read_csv(paths["train_csv"], infer_schema=False).with_row_index("index")
    split = pl.read_csv(paths["split"]).select(pl.col("index").cast(pl.UInt32), "split")
    demo = read_table(paths["demographics"], what="demographics")
    frame = train.join(split, on="index").with_columns(patient_id=pl.col("Path").str.split("/").list.get(2))
    frame = frame.join(demo.rename({"PATIENT": "patient_id"}), on="patient_id", how="left").sort("index")
    return frame.with_columns(race=pl.col("PRIMARY_RACE").map_elements(map_race, return_dtype=pl.String))


# ---------------------------------------------------------------- format


def test_csv_headers_are_the_real_columns(small):
    expected = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(PATHOLOGIES)  # formats.md section 9
    for key in ("train_csv", "valid_csv"):
        assert small[key].read_text().splitlines()[0] == expected
        assert tuple(read_raw(small[key])[0]) == CHEXPERT_TRAIN_COLUMNS


def test_columns_and_label_text_match_a_real_chexpert_file(small, realdata):
    real = read_raw(realdata / "cxr-foundation-bias-samples" / "chexpert-model.embeddings.csv")
    start = real[0].index("Frontal/Lateral")
    assert tuple(real[0][start : start + 16]) == CHEXPERT_TRAIN_COLUMNS[3:]
    real_cells = {cell for row in real[1:] for cell in row[start + 2 : start + 16]}
    ours = {cell for row in read_raw(small["train_csv"])[1:] for cell in row[5:]}
    assert real_cells == ours == LABEL_TEXT


def test_label_cells_are_the_label_text(small):
    train, valid = read_raw(small["train_csv"])[1:], read_raw(small["valid_csv"])[1:]
    assert {cell for row in train for cell in row[5:]} == LABEL_TEXT
    assert {cell for row in valid for cell in row[5:]} <= {"1.0", "0.0"}  # valid.csv: expert labels, no blanks


def test_paths_views_and_images(small):
    rows = read_raw(small["train_csv"])[1:] + read_raw(small["valid_csv"])[1:]
    for path, sex, age, view, position, *_ in rows:
        match = PATH_RE.match(path)
        assert match, path
        assert view == ("Lateral" if match.group(3) == "lateral" else "Frontal")
        assert (position == "") == (view == "Lateral")
        assert sex in {"Male", "Female"} and 18 <= int(age) <= 90
        with Image.open(small["image_root"].parent / path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "L", SMALL_SIZE)
    views = [row[3] for row in rows]
    assert views.count("Lateral") > 0 and any(row[4] in {"LL", "RL"} for row in rows)
    assert any("/study2/" in row[0] for row in rows)  # several studies for some patients


def test_demographics_sheet(small, large):
    demo = read_table(small["demographics"], what="demographics")
    assert tuple(demo.columns) == DEMOGRAPHICS_COLUMNS
    assert demo["PATIENT"].is_unique().all()
    patients = {PATH_RE.match(row[0]).group(2) for row in read_raw(small["train_csv"])[1:]}
    assert patients < set(demo["PATIENT"])  # every imaged patient, plus a few with no images
    big = read_table(large["demographics"], what="demographics")
    raw = set(big["PRIMARY_RACE"])
    assert {"Other", "Unknown", "White, non-Hispanic", "Asian - Historical Conv", "Black or African American"} <= raw
    assert {r for r in raw if map_race(r) is None} <= set(synth.DROPPED_RACES)
    assert set(big["ETHNICITY"]) == set(synth.ETHNICITY_MIX)


def test_split_header_matches_the_real_split_file(small, realdata):
    with open(realdata / "chexploration-split" / "chexpert_split_2021_08_20.csv") as handle:
        assert small["split"].read_text().splitlines()[0] == handle.readline().rstrip("\n")


def test_split_file_format_and_rows(small):
    assert small["split"].read_text().splitlines()[0] == ",index,split"  # peers.md 5a step 8
    split = pl.read_csv(small["split"])
    assert split[""].to_list() == list(range(len(split)))
    assert split["index"].is_sorted() and split["index"].is_unique().all()
    assert set(split["split"]) == set(SPLITS)
    # survivors recomputed independently from the three raw files
    train = pl.read_csv(small["train_csv"], infer_schema=False).with_row_index("index")
    demo = read_table(small["demographics"], what="demographics")
    rows = train.with_columns(patient=pl.col("Path").str.split("/").list.get(2)).join(
        demo, left_on="patient", right_on="PATIENT"
    )
    keep = rows.filter(
        pl.col("PRIMARY_RACE").map_elements(map_race, return_dtype=pl.String).is_not_null(),
        pl.col("ETHNICITY").is_in(list(ETHNICITIES_KEPT)),
        pl.col("Frontal/Lateral") == "Frontal",
        pl.col("AP/PA").is_in(list(POSITIONS_KEPT)),
    )
    assert split["index"].to_list() == sorted(keep["index"].to_list())
    assert len(keep) < len(train)  # the filters removed something


def test_no_patient_in_two_splits_and_fractions(large):
    frame = subset(large)
    per_patient = frame.group_by("patient_id").agg(pl.col("split").n_unique())
    assert per_patient["split"].max() == 1
    shares = frame.group_by("split").agg(pl.col("patient_id").n_unique()).with_columns(
        share=pl.col("patient_id") / pl.col("patient_id").sum()
    )
    for name, share in shares.select("split", "share").iter_rows():
        assert abs(share - synth.SPLIT_FRACTIONS[name]) < 0.02, (name, share)


def test_manifest_records_parameters_and_counts(small):
    manifest = json.loads(small["manifest"].read_text())
    assert manifest["synthetic"] is True and manifest["seed"] == 3 and manifest["image_size"] == list(SMALL_SIZE)
    effects = manifest["planted_effects"]
    assert effects["signal_scale_by_race"] == dict(synth_images.SIGNAL_SCALE_BY_RACE)
    assert effects["signal_scale_by_sex"] == dict(synth_images.SIGNAL_SCALE_BY_SEX)
    counts = manifest["counts"]
    assert dict(counts["images"])["train"] == len(read_raw(small["train_csv"])) - 1
    split = pl.read_csv(small["split"])
    assert dict(counts["split_rows"]) == dict(split.group_by("split").len().iter_rows())


# ---------------------------------------------------------------- demography and labels


def test_sex_and_race_shares(large):
    train = pl.read_csv(large["train_csv"], infer_schema=False)
    patients = train.with_columns(p=pl.col("Path").str.split("/").list.get(2)).unique("p")
    assert abs((patients["Sex"] == "Male").mean() - 0.59) < 0.03
    demo = read_table(large["demographics"], what="demographics")
    race = demo["PRIMARY_RACE"].map_elements(map_race, return_dtype=pl.String)
    assert 0.01 < race.null_count() / len(race) < 0.08  # a few percent dropped
    shares = race.drop_nulls().value_counts(normalize=True)
    for name, target in (("White", 0.78), ("Asian", 0.15), ("Black", 0.07)):
        share = shares.filter(pl.col("PRIMARY_RACE") == name)["proportion"].item()
        assert abs(share - target) < 0.03, (name, share)


def test_label_prevalence_and_rules(large):
    frame = pl.read_csv(large["train_csv"], schema_overrides={p: pl.Float64 for p in PATHOLOGIES})
    labels = frame.select(PATHOLOGIES).fill_null(0.0)
    for name, model in synth.FINDING_MODELS.items():
        positive = (labels[name] == 1.0).mean()
        assert abs(positive - model.prevalence) < max(0.02, 0.25 * model.prevalence), (name, positive)
    assert 0.06 < (labels["No Finding"] == 1.0).mean() < 0.15
    assert 0.10 < (labels["Atelectasis"] == -1.0).mean() < 0.20
    assert frame["Lung Lesion"].null_count() > 0.8 * len(frame)  # blank = not mentioned, mostly
    others = [p for p in PATHOLOGIES if p not in ("No Finding", "Support Devices")]
    normal = labels.filter(pl.col("No Finding") == 1.0).select(others)
    assert normal.to_numpy().max() == 0.0 and normal.to_numpy().min() == 0.0  # only 0 / blank beside No Finding
    positive = labels.select(pl.all() == 1.0).to_numpy().astype(float)
    corr = np.corrcoef(positive.T)
    edema = PATHOLOGIES.index("Edema")
    assert corr[edema, PATHOLOGIES.index("Pleural Effusion")] > 0.1
    assert corr[edema, PATHOLOGIES.index("Cardiomegaly")] > 0.1


# ---------------------------------------------------------------- determinism and overwrite safety


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kwargs = {"n_patients": 40, "image_size": (24, 20)}
    a = write_synthetic_chexpert(tmp_path / "a", seed=7, **kwargs)
    b = write_synthetic_chexpert(tmp_path / "b", seed=7, **kwargs)
    c = write_synthetic_chexpert(tmp_path / "c", seed=8, **kwargs)
    for key in ("train_csv", "valid_csv", "split", "manifest"):
        assert a[key].read_bytes() == b[key].read_bytes(), key
    assert read_table(a["demographics"], what="d").equals(read_table(b["demographics"], what="d"))
    images = sorted(a["image_root"].rglob("*.jpg"))
    assert images and all(p.read_bytes() == (b["image_root"] / p.relative_to(a["image_root"])).read_bytes()
                          for p in images[:20])
    assert a["train_csv"].read_bytes() != c["train_csv"].read_bytes()


def test_refuses_to_overwrite_unless_force(tmp_path):
    out = tmp_path / "cx"
    write_synthetic_chexpert(out, n_patients=20, seed=1, image_size=(16, 16))
    with pytest.raises(OutputExistsError):
        write_synthetic_chexpert(out, n_patients=20, seed=2, image_size=(16, 16))
    write_synthetic_chexpert(out, n_patients=20, seed=2, image_size=(16, 16), force=True)
    assert json.loads((out / synth.MANIFEST_FILE).read_text())["seed"] == 2
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("not synthetic")
    with pytest.raises(DataError, match="not synthetic"):
        write_synthetic_chexpert(real, n_patients=20, image_size=(16, 16), force=True)
    assert (real / "keep.txt").read_text() == "not synthetic"
    (tmp_path / "empty").mkdir()
    write_synthetic_chexpert(tmp_path / "empty", n_patients=20, image_size=(16, 16))  # an empty folder is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cx", "empty", "real"]  # no staging folders left


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(synth_images, "write_images", broken)
    with pytest.raises(OSError, match="disk full"):
        write_synthetic_chexpert(tmp_path / "cx", n_patients=20, image_size=(16, 16))
    assert list(tmp_path.iterdir()) == []


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_patients"):
        write_synthetic_chexpert(tmp_path / "a", n_patients=5)
    with pytest.raises(ValueError, match="image_size"):
        write_synthetic_chexpert(tmp_path / "b", image_size=(8, 8))


# ---------------------------------------------------------------- learnability, measured


def _features(frame: pl.DataFrame, image_root: Path) -> np.ndarray:
    """Centre-crop each image to a square, box-downsample to 16x16, scale to 0..1."""
    rows = []
    for path in frame["Path"]:
        with Image.open(image_root.parent / path) as image:
            w, h = image.size
            s = min(w, h)
            box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
            rows.append(np.asarray(image.crop(box).resize((16, 16), Image.Resampling.BOX), dtype=np.float32).ravel())
    return np.stack(rows) / 255.0


def _subgroup_aucs(frame: pl.DataFrame, features: np.ndarray) -> dict[str, dict[str, float]]:
    """Per pathology (U-Zeros targets): test AUC overall and per sex / race group with >= 10 of each class."""
    train, test = (frame["split"] == "train").to_numpy(), (frame["split"] == "test").to_numpy()
    scaler = StandardScaler().fit(features[train])
    x_train, x_test = scaler.transform(features[train]), scaler.transform(features[test])
    groups = {g: (frame[c] == g).fill_null(False).to_numpy()[test]
              for c, g in (("Sex", "Male"), ("Sex", "Female"), ("race", "White"), ("race", "Asian"), ("race", "Black"))}
    result: dict[str, dict[str, float]] = {}
    for name in PATHOLOGIES:
        y = (frame[name] == "1.0").fill_null(False).to_numpy()
        if y[train].sum() < 20 or y[test].sum() < 10:
            continue
        model = LogisticRegression(C=0.05, solver="newton-cholesky").fit(x_train, y[train])
        score, truth = model.decision_function(x_test), y[test]
        result[name] = {"all": roc_auc_score(truth, score)}
        for group, mask in groups.items():
            if 10 <= truth[mask].sum() <= mask.sum() - 10:
                result[name][group] = roc_auc_score(truth[mask], score[mask])
    return result


def _mean_gap(aucs: dict[str, dict[str, float]], a: str, b: str) -> float:
    """Mean AUC difference a - b over pathologies scored in both groups."""
    gaps = [r[a] - r[b] for r in aucs.values() if a in r and b in r]
    assert len(gaps) >= 3, (a, b, gaps)
    return float(np.mean(gaps))


def _learn(paths: dict[str, Path]) -> dict[str, dict[str, float]]:
    frame = subset(paths)
    return _subgroup_aucs(frame, _features(frame, paths["image_root"]))


def test_signal_is_learnable_with_planted_gaps(large):
    # Measured over seeds 0-11 (n_patients=2500, default size): mean AUC 0.870-0.892, White-Black 0.032-0.088,
    # Male-Female 0.035-0.073, White-Asian -0.010..0.020. The margins sit outside that spread.
    aucs = _learn(large)
    assert len(aucs) >= 10
    assert np.mean([r["all"] for r in aucs.values()]) > 0.8
    white_black, male_female = _mean_gap(aucs, "White", "Black"), _mean_gap(aucs, "Male", "Female")
    assert 0.015 < white_black < 0.2
    assert 0.015 < male_female < 0.15
    assert _mean_gap(aucs, "White", "Asian") < white_black  # Asian's planted factor (0.95) is far milder


def test_gaps_vanish_without_planted_effects(tmp_path, monkeypatch):
    # Control: same seed with every subgroup factor 1. Over seeds 0-9 the gaps were -0.017..0.011, so the gaps
    # above come from the planted factors, not from the race-dependent prevalences or sample sizes.
    monkeypatch.setattr(synth_images, "SIGNAL_SCALE_BY_SEX", {})
    monkeypatch.setattr(synth_images, "SIGNAL_SCALE_BY_RACE", {})
    aucs = _learn(write_synthetic_chexpert(tmp_path / "cx", n_patients=2500, seed=0))
    assert abs(_mean_gap(aucs, "White", "Black")) < 0.025
    assert abs(_mean_gap(aucs, "Male", "Female")) < 0.025


# ---------------------------------------------------------------- NIH ChestX-ray14


@pytest.fixture(scope="module")
def nih(tmp_path_factory) -> dict[str, Path]:
    return write_synthetic_nih(tmp_path_factory.mktemp("n") / "nih", n_images=300, seed=5, image_size=32)


NIH_HEADER = (  # the brief's and formats.md section 8's header, typed out independently of the module
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


NIH_NAMES = {  # formats.md section 8
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
}


def test_nih_header_is_the_documented_header(nih):
    assert nih["data_entry"].read_text().splitlines()[0] == NIH_HEADER


def test_nih_header_identical_to_real_file(nih, realdata):
    with gzip.open(realdata / "nih-cxr14" / "Data_Entry_2017_v2020.csv.gz", "rt") as handle:
        real_header = handle.readline().rstrip("\n")
    assert nih["data_entry"].read_text().splitlines()[0] == real_header
    # pandas splits the bracketed names into 11 columns, exactly as for the real file (formats.md section 8)
    ours = pd.read_csv(nih["data_entry"])
    assert list(ours.columns) == list(pd.read_csv(io.StringIO(real_header + "\n")).columns)
    assert len(ours.columns) == 11


def test_nih_finding_names_are_the_real_names(realdata):
    real = pd.read_csv(realdata / "nih-cxr14" / "Data_Entry_2017_v2020.csv.gz", usecols=["Finding Labels"])
    assert {f for labels in real["Finding Labels"] for f in labels.split("|")} == NIH_NAMES | {"No Finding"}


def test_nih_rows_names_and_findings(nih):
    rows = read_raw(nih["data_entry"])[1:]
    assert len(rows) == 300 and {len(r) for r in rows} == {11}
    for name, labels, followup, patient, age, gender, view, *_ in rows:
        assert name == f"{int(patient):08d}_{int(followup):03d}.png"
        assert set(labels.split("|")) <= NIH_NAMES or labels == "No Finding"
        assert gender in {"M", "F"} and view in {"PA", "AP"} and 0 <= int(age) <= 95
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert any("|" in r[1] for r in rows) and any(r[1] == "No Finding" for r in rows)


def test_nih_lists_patient_disjoint_and_images(nih):
    names = [r[0] for r in read_raw(nih["data_entry"])[1:]]
    train_val = nih["train_val_list"].read_text().splitlines()
    test = nih["test_list"].read_text().splitlines()
    assert sorted(train_val + test) == sorted(names)
    assert {n[:8] for n in train_val}.isdisjoint({n[:8] for n in test}) and test
    for name in names[:50]:
        with Image.open(nih["image_dir"] / name) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (32, 32))
    assert json.loads(nih["manifest"].read_text())["synthetic"] is True
