"""Pool readers (NIH, MIMIC, CheXpert) and the pool builder: real NIH counts, hand-worked synthetic files."""

from __future__ import annotations

import csv
import gzip
import os
import zipfile
from pathlib import Path

import polars as pl
import pytest

from engine.data.errors import DataError, OutputExistsError
from engine.data.mimic import read_mimic
from engine.data.nih import NIH_FINDINGS, read_nih
from engine.data.pools import (
    POOL_COLUMNS,
    POOL_OUTPUT_COLUMNS,
    build_pool,
    exclude_eval_patients,
    pool_report_path,
    read_chexpert_pool,
    write_pool,
)
from engine.data.schema import CHEXPERT_TRAIN_COLUMNS, DEMOGRAPHICS_COLUMNS

# ---------------------------------------------------------------- NIH

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
NIH_ROWS = (
    "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,0,2,80,M,AP,2500,2048,0.171,0.171",
    "00000003_000.png,Hernia|Pleural_Thickening|Effusion,0,3,74,F,PA,2500,2048,0.168,0.168",
)


def write_text(path: Path, lines: tuple[str, ...] | list[str]) -> Path:
    """Write lines to ``path``, gzipped when the name ends in .gz."""
    text = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def nih_file(tmp_path: Path, rows=NIH_ROWS, header: str = NIH_HEADER) -> Path:
    return write_text(tmp_path / "Data_Entry_2017_v2020.csv", [header, *rows])


def test_nih_real_file_counts(realdata: Path) -> None:
    """Counts published in shared/realdata/nih-cxr14/SOURCE.md."""
    frame, report = read_nih(realdata / "nih-cxr14" / "Data_Entry_2017_v2020.csv.gz")
    assert frame.height == 112_120 and report["images"] == 112_120
    assert frame["patient_id"].n_unique() == 30_805
    assert report["sex"] == {"Male": 63_340, "Female": 48_780}
    assert report["position"] == {"PA": 67_310, "AP": 44_810}
    expected = {"No Finding": 60_361, "Infiltration": 19_894, "Effusion": 13_317, "Atelectasis": 11_559,
                "Nodule": 6_331, "Mass": 5_782, "Pneumothorax": 5_302, "Consolidation": 4_667,
                "Pleural_Thickening": 3_385, "Cardiomegaly": 2_776, "Emphysema": 2_516, "Edema": 2_303,
                "Fibrosis": 1_686, "Pneumonia": 1_431, "Hernia": 227}
    assert report["findings"] == expected
    assert {f: int(frame[f].sum()) for f in NIH_FINDINGS} == {f: expected[f] for f in NIH_FINDINGS}
    assert frame["age"].max() == 95 and frame["age"].null_count() == 0  # v2020 ages are 0-95 (formats.md 8)
    first = frame.row(0, named=True)  # 00000001_000.png: patient 1, 57, M, PA, Cardiomegaly (SOURCE.md)
    assert (first["image_id"], first["patient_id"], first["sex"], first["age"], first["position"]) == (
        "images/00000001_000.png", "nih:00000001", "Male", 57, "PA")
    assert first["Cardiomegaly"] == 1 and sum(first[f] for f in NIH_FINDINGS) == 1
    assert frame.filter(pl.col("image_id") == "images/00027426_000.png").select(NIH_FINDINGS).sum_horizontal()[0] == 0
    pool, report = build_pool([frame], fraction=0.1, fraction_unit="patients")
    assert report["sampling"]["nih"]["units_out"] == 3_081  # 0.1 * 30,805 = 3,080.5, half up (round() gives 3,080)
    assert pool["patient_id"].n_unique() == 3_081
    assert pool.height == frame.filter(pl.col("patient_id").is_in(pool["patient_id"].implode())).height


def test_nih_columns_and_findings(tmp_path: Path) -> None:
    frame, report = read_nih(nih_file(tmp_path), image_subdir="nih/images/")
    assert frame.columns == ["dataset", "image_id", "patient_id", "sex", "race", "age", "view", "position", "split",
                             *NIH_FINDINGS]
    assert frame["image_id"].to_list()[0] == "nih/images/00000001_000.png"
    assert frame["patient_id"].to_list() == ["nih:00000001", "nih:00000001", "nih:00000002", "nih:00000003"]
    assert frame["sex"].to_list() == ["Male", "Male", "Male", "Female"]
    assert frame["race"].null_count() == 4 and frame["split"].null_count() == 4
    assert frame["view"].unique().to_list() == ["Frontal"]
    assert frame.schema["age"] == pl.Int16 and frame.schema["Effusion"] == pl.Int8
    last = frame.row(3, named=True)
    assert {f for f in NIH_FINDINGS if last[f]} == {"Hernia", "Pleural_Thickening", "Effusion"}
    assert report["findings"]["No Finding"] == 1 and report["findings"]["Cardiomegaly"] == 2


def test_nih_official_split_lists(tmp_path: Path) -> None:
    # Medical MAE's list format (name + 14 labels) is read too: only the first word counts
    train_val = write_text(tmp_path / "train_val_list.txt", ["00000001_000.png", "00000001_001.png " + "0 " * 14])
    test = write_text(tmp_path / "test_list.txt", ["00000002_000.png"])
    frame, report = read_nih(nih_file(tmp_path), train_val_list=train_val, test_list=test)
    assert frame["split"].to_list() == ["train_val", "train_val", "test", None]
    assert report["split"]["images"] == {"train_val": 2, "test": 1, "(unlisted)": 1}
    bad = write_text(tmp_path / "bad_list.txt", ["00000009_000.png"])
    with pytest.raises(DataError, match="absent from the Data_Entry"):
        read_nih(nih_file(tmp_path), test_list=bad)
    with pytest.raises(DataError, match="listed twice"):
        read_nih(nih_file(tmp_path), train_val_list=train_val, test_list=train_val)


@pytest.mark.parametrize(
    ("row", "message", "column"),
    [
        ("00000004_000.png,Efusion|Mass,0,4,40,F,PA,1,1,1,1", "unknown finding", "Finding Labels"),
        ("00000004_000.png,No Finding|Mass,0,4,40,F,PA,1,1,1,1", "combined", "Finding Labels"),
        ("00000001_000.png,Mass,0,1,40,M,PA,1,1,1,1", "duplicate Image Index", "Image Index"),
        ("00000004_000.png,Mass,0,4,40,U,PA,1,1,1,1", "Patient Gender outside", "Patient Gender"),
        ("00000004_000.png,Mass,0,5,40,F,PA,1,1,1,1", "first 8 digits", "Patient ID"),
        ("4_000.png,Mass,0,4,40,F,PA,1,1,1,1", "NNNNNNNN_NNN.png", "Image Index"),
        ("00000004_000.png,Mass,0,4,forty,F,PA,1,1,1,1", "whole number", "Patient Age"),
        ("00000004_000.png,Mass,0,4,40,F,LL,1,1,1,1", "View Position outside", "View Position"),
    ],
)
def test_nih_bad_rows(tmp_path: Path, row: str, message: str, column: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        read_nih(nih_file(tmp_path, rows=(*NIH_ROWS, row)))
    assert info.value.column == column
    assert "line 6" in str(info.value)  # the added row is the 5th data row, line 6 of the file


def test_nih_misspelled_column(tmp_path: Path) -> None:
    header = NIH_HEADER.replace("Patient Gender", "Patient Gendre")
    with pytest.raises(DataError, match="did you mean 'Patient Gendre'"):
        read_nih(nih_file(tmp_path, header=header))


# ---------------------------------------------------------------- MIMIC (formats.md section 10 headers)

META_HEADER = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
               "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
               "PatientOrientationCodeSequence_CodeMeaning")
DICOM_1 = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"
META_ROWS = (
    f"{DICOM_1},10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531,CHEST (PA AND LAT),"
    "postero-anterior,Erect",
    "d2,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,21800506,213014.531,CHEST (PA AND LAT),lateral,Erect",
    "d3,10000032,53189527,CHEST (PORTABLE AP),AP,3056,2544,21800626,165500.312,CHEST (PORTABLE AP),antero-posterior,",
    "d4,10000764,57375967,CHEST (PORTABLE AP),AP,2544,3056,21321015,080000,CHEST (PORTABLE AP),antero-posterior,",
    "d5,10000764,57375967,CHEST (PA AND LAT),LL,2544,3056,21321015,080000,CHEST (PA AND LAT),left lateral,",
    "d6,11000011,50000001,CHEST (PA AND LAT),PA,2544,3056,21500101,080000,CHEST (PA AND LAT),postero-anterior,",
    "d7,12000022,50000002,CHEST (PA AND LAT),,2544,3056,21100301,080000,CHEST (PA AND LAT),,",
    "d8,12000022,50000002,CHEST (PA AND LAT),PA,2544,3056,21100301,080000,CHEST (PA AND LAT),postero-anterior,",
)
LABEL_HEADER = ("subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,"
                "Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,"
                "Support Devices")
LABEL_ROWS = (  # alphabetical order; study 50000001 has no row; 59999999 has no image
    "10000032,50414267,,,,,,,,,1.0,,,,,",
    "10000032,53189527,-1.0,,,0.0,,,,,,1.0,,,,",
    "10000764,57375967,1.0,1.0,,,,,,,,,,,,1.0",
    "12000022,50000002,,,,,,,,1.0,,,,-1.0,,",
    "13000033,59999999,,,,,,,,,1.0,,,,,",
)
SPLIT_ROWS = ("dicom_id,study_id,subject_id,split", f"{DICOM_1},50414267,10000032,train",
              "d2,50414267,10000032,train", "d3,53189527,10000032,train", "d4,57375967,10000764,test",
              "d5,57375967,10000764,test", "d6,50000001,11000011,validate", "d7,50000002,12000022,train",
              "dX,59999999,13000033,train")  # d8 missing; dX has no image
PATIENT_ROWS = ("subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod",
                "10000032,F,52,2178,2014 - 2016,2180-09-09", "10000764,M,86,2130,2008 - 2010,",
                "11000011,M,40,2150,2017 - 2019,")  # 12000022 absent
ADMISSION_HEADER_2 = ("subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admit_provider_id,"
                      "admission_location,discharge_location,insurance,language,marital_status,race,"
                      "edregistrationtime,edouttime,hospital_expire_flag")


def admission(subject: str, hadm: int, race: str) -> str:
    return (f"{subject},{hadm},2180-05-06 22:23:00,2180-05-07 17:15:00,,URGENT,P874LG,TRANSFER FROM HOSPITAL,HOME,"
            f"Other,ENGLISH,WIDOWED,{race},2180-05-06 19:17:00,2180-05-06 23:30:00,0")


ADMISSION_ROWS = (  # 10000032: WHITE + white - other european + UNKNOWN -> White (unmapped values ignored);
    # 10000764: BLACK + ASIAN -> inconsistent; 12000022: HISPANIC only -> unmapped
    admission("10000032", 1, "WHITE"), admission("10000032", 2, "white - other european"),
    admission("10000032", 3, "UNKNOWN"), admission("10000764", 4, "BLACK/AFRICAN AMERICAN"),
    admission("10000764", 5, "ASIAN - CHINESE"), admission("12000022", 6, "HISPANIC/LATINO - PUERTO RICAN"),
)


@pytest.fixture
def mimic_files(tmp_path: Path) -> dict[str, Path]:
    return {
        "metadata": write_text(tmp_path / "mimic-cxr-2.0.0-metadata.csv.gz", [META_HEADER, *META_ROWS]),
        "chexpert_labels": write_text(tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz", [LABEL_HEADER, *LABEL_ROWS]),
        "split": write_text(tmp_path / "mimic-cxr-2.0.0-split.csv.gz", SPLIT_ROWS),
        "patients": write_text(tmp_path / "patients.csv", PATIENT_ROWS),
        "admissions": write_text(tmp_path / "admissions.csv", [ADMISSION_HEADER_2, *ADMISSION_ROWS]),
    }


def test_mimic_join_paths_views_and_labels(mimic_files: dict[str, Path]) -> None:
    frame, report = read_mimic(mimic_files["metadata"], mimic_files["chexpert_labels"])
    assert frame.height == 7  # d6's study has no label row
    assert report["filters"]["filters"][0]["removed"] == 1 and report["filters"]["rows_out"] == 7
    assert report["labels"] == {"studies_without_labels": 1, "label_rows_without_images": 1}
    rows = {r["image_id"]: r for r in frame.iter_rows(named=True)}
    first = rows[f"files/p10/p10000032/s50414267/{DICOM_1}.jpg"]
    assert (first["dataset"], first["patient_id"], first["view"], first["position"]) == (
        "mimic", "mimic:10000032", "Frontal", "PA")
    assert first["No Finding"] == 1.0 and first["Atelectasis"] is None
    d3 = rows["files/p10/p10000032/s53189527/d3.jpg"]
    assert (d3["Atelectasis"], d3["Edema"], d3["Pleural Effusion"], d3["view"]) == (-1.0, 0.0, 1.0, "Frontal")
    assert rows["files/p10/p10000764/s57375967/d5.jpg"]["view"] == "Lateral"
    assert rows["files/p12/p12000022/s50000002/d7.jpg"]["view"] is None  # blank ViewPosition
    assert rows["files/p12/p12000022/s50000002/d8.jpg"]["Pneumonia"] == -1.0
    assert report["view"] == {"Frontal": 4, "Lateral": 2, "(blank)": 1}
    assert frame["sex"].null_count() == frame["age"].null_count() == frame["race"].null_count() == 7


def test_mimic_split_and_demographics(mimic_files: dict[str, Path]) -> None:
    frame, report = read_mimic(**mimic_files)
    by_dicom = {r["image_id"].rsplit("/", 1)[1][:-4]: r for r in frame.iter_rows(named=True)}
    assert by_dicom["d4"]["split"] == "test" and by_dicom["d8"]["split"] is None
    assert report["split"] == {"images": {"train": 4, "test": 2, "(not in split file)": 1},
                               "split_rows_without_images": 2}  # d6 (no labels) and dX
    # age = anchor_age + StudyDate year - anchor_year: 52 + 2180 - 2178 = 54; 86 + 2132 - 2130 = 88
    assert (by_dicom[DICOM_1]["sex"], by_dicom[DICOM_1]["age"]) == ("Female", 54)
    assert (by_dicom["d4"]["sex"], by_dicom["d4"]["age"]) == ("Male", 88)
    assert by_dicom["d7"]["sex"] is None and by_dicom["d7"]["age"] is None
    assert report["demographics"]["patients"]["subjects_without_patients_row"] == 1
    assert report["demographics"]["patients"]["images_without_sex_age"] == 2
    assert by_dicom["d3"]["race"] == "White"  # WHITE + lower-case white - ... + UNKNOWN
    assert by_dicom["d4"]["race"] is None and by_dicom["d8"]["race"] is None
    admissions = report["demographics"]["admissions"]
    assert admissions["race_column"] == "race"
    assert admissions["subjects"] == {"mapped": 1, "inconsistent": 1, "unmapped": 1}
    assert admissions["images"] == {"mapped": 3, "inconsistent": 2, "unmapped": 2}
    assert admissions["inconsistent_race_examples"] == ["10000764: Asian, Black"]


def test_mimic_iv_1_ethnicity_column(mimic_files: dict[str, Path], tmp_path: Path) -> None:
    header = ("subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,"
              "discharge_location,insurance,language,marital_status,ethnicity,edregtime,edouttime,"
              "hospital_expire_flag")
    rows = ["10000032,1,2180-05-06,2180-05-07,,URGENT,TRANSFER,HOME,Other,ENGLISH,WIDOWED,BLACK/AFRICAN AMERICAN,,,0"]
    admissions = write_text(tmp_path / "admissions_v1.csv", [header, *rows])
    frame, report = read_mimic(mimic_files["metadata"], mimic_files["chexpert_labels"], admissions=admissions)
    assert report["demographics"]["admissions"]["race_column"] == "ethnicity"
    assert frame.filter(pl.col("patient_id") == "mimic:10000032")["race"].unique().to_list() == ["Black"]


def test_mimic_bad_inputs(mimic_files: dict[str, Path], tmp_path: Path) -> None:
    dup = write_text(tmp_path / "meta_dup.csv", [META_HEADER, *META_ROWS, META_ROWS[2]])
    with pytest.raises(DataError, match="duplicate dicom_id"):
        read_mimic(dup, mimic_files["chexpert_labels"])
    misspelled = write_text(tmp_path / "meta_bad.csv", [META_HEADER.replace("ViewPosition", "View_Position"),
                                                       *META_ROWS])
    with pytest.raises(DataError, match="did you mean 'View_Position'"):
        read_mimic(misspelled, mimic_files["chexpert_labels"])
    labels = write_text(tmp_path / "labels_bad.csv", [LABEL_HEADER, LABEL_ROWS[0].replace("1.0", "2.0")])
    with pytest.raises(DataError, match="label outside") as info:
        read_mimic(mimic_files["metadata"], labels)
    assert info.value.column == "No Finding"
    moved = write_text(tmp_path / "split_bad.csv", [SPLIT_ROWS[0], f"{DICOM_1},50414267,10000764,train"])
    with pytest.raises(DataError, match="another subject_id"):
        read_mimic(mimic_files["metadata"], mimic_files["chexpert_labels"], moved)
    gender = write_text(tmp_path / "patients_bad.csv", [PATIENT_ROWS[0], "10000032,X,52,2178,2014 - 2016,"])
    with pytest.raises(DataError, match="gender outside"):
        read_mimic(mimic_files["metadata"], mimic_files["chexpert_labels"], patients=gender)


# ---------------------------------------------------------------- CheXpert source

def chexpert_files(tmp_path: Path) -> tuple[Path, Path]:
    blanks = "," * 13  # 14 label cells
    rows = [
        f"CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0{blanks}",
        f"CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg,Female,68,Lateral,,1.0{blanks}",
        f"CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Male,87,Frontal,PA,{blanks}",
        f"CheXpert-v1.0-small/train/patient00003/study2/view1_frontal.jpg,Unknown,50,Frontal,AP,{blanks}",
    ]
    train = write_text(tmp_path / "train.csv", [",".join(f'"{c}"' if "," in c else c
                                                         for c in CHEXPERT_TRAIN_COLUMNS), *rows])
    demo = write_text(tmp_path / "demo.csv", [",".join(DEMOGRAPHICS_COLUMNS),
                                              "patient00001,Female,68,White - Hispanic,Hispanic/Latino",
                                              "patient00002,Male,87,Other,Non-Hispanic/Non-Latino"])
    return train, demo


def test_chexpert_source(tmp_path: Path) -> None:
    train, demo = chexpert_files(tmp_path)
    frame, report = read_chexpert_pool(train, demo)
    assert frame["dataset"].unique().to_list() == ["chexpert"]
    assert frame["image_id"][0] == "train/patient00001/study1/view1_frontal.jpg"
    assert frame["patient_id"].to_list() == ["patient00001", "patient00001", "patient00002", "patient00003"]
    assert frame["race"].to_list() == ["White", "White", None, None]  # no ethnicity filter in a pool
    assert frame["sex"].to_list() == ["Female", "Female", "Male", None]
    assert report["sex_unknown_set_null"] == 1 and report["images_without_demographics"] == 1
    plain, _ = read_chexpert_pool(train)
    assert plain["race"].null_count() == 4


# ---------------------------------------------------------------- pool builder

def synthetic_source(dataset: str, n_patients: int, *, prefix: str, lateral_every: int = 0) -> pl.DataFrame:
    """Patient i has (i % 3) + 1 images; every ``lateral_every``-th image is lateral."""
    rows = []
    for patient in range(n_patients):
        for image in range(patient % 3 + 1):
            n = len(rows)
            view = "Lateral" if lateral_every and n % lateral_every == lateral_every - 1 else "Frontal"
            rows.append({"dataset": dataset, "image_id": f"{dataset}/{patient:05d}_{image}.png",
                         "patient_id": f"{prefix}{patient:05d}", "sex": ("Male", "Female")[patient % 2],
                         "race": None, "age": 40 + patient % 30, "view": view, "position": "PA"})
    return pl.DataFrame(rows, schema={c: (pl.Int16 if c == "age" else pl.String) for c in POOL_COLUMNS})


def test_union_of_readers_keeps_namespaces(tmp_path: Path, mimic_files: dict[str, Path]) -> None:
    nih, _ = read_nih(nih_file(tmp_path))
    mimic, _ = read_mimic(**mimic_files)
    chexpert, _ = read_chexpert_pool(*chexpert_files(tmp_path))
    pool, report = build_pool([nih, mimic, chexpert], frontal_only=False)
    assert pool.columns == list(POOL_OUTPUT_COLUMNS) and pool.height == 4 + 7 + 4
    assert report["composition"]["nih"]["patients"] == 3 and report["composition"]["mimic"]["patients"] == 3
    prefixes = pool.group_by("dataset").agg(pl.col("patient_id").str.extract(r"^(nih:|mimic:|patient)").unique())
    assert dict(prefixes.iter_rows()) == {"nih": ["nih:"], "mimic": ["mimic:"], "chexpert": ["patient"]}
    assert report["composition"]["total"]["race"] == {"(unknown)": 10, "White": 5}  # CheXpert 2 + MIMIC 3
    clash = nih.with_columns(dataset=pl.lit("nih2"))
    with pytest.raises(DataError, match="namespaces collide"):
        build_pool([nih, clash])
    with pytest.raises(DataError, match="twice within one dataset"):
        build_pool([nih, nih])


def test_laterals_dropped_and_counted() -> None:
    source = synthetic_source("a", 30, prefix="a:", lateral_every=4)
    n_lateral = source.filter(pl.col("view") == "Lateral").height
    assert n_lateral == source.height // 4
    pool, report = build_pool([source])
    assert pool.height == source.height - n_lateral and set(pool["view"]) == {"Frontal"}
    step = report["filters"]["filters"][0]
    assert (step["step"], step["removed"], step["removed_by_value"]) == ("frontal", n_lateral, {"a": n_lateral})
    assert report["composition_in"]["a"]["view"] == {"Frontal": source.height - n_lateral, "Lateral": n_lateral}
    kept, report = build_pool([source], frontal_only=False)
    assert kept.height == source.height and report["filters"]["filters"][0]["step"] == "fraction"


def test_fraction_of_images_per_dataset() -> None:
    a, b = synthetic_source("a", 51, prefix="a:"), synthetic_source("b", 20, prefix="b:")
    assert (a.height, b.height) == (102, 39)
    pool, report = build_pool([a, b], fraction=0.25, seed=7)
    # 0.25 * 102 = 25.5 -> 26 (half up), 0.25 * 39 = 9.75 -> 10
    assert report["sampling"]["a"]["images_out"] == 26 and report["sampling"]["b"]["images_out"] == 10
    assert pool.group_by("dataset").len().sort("dataset")["len"].to_list() == [26, 10]
    assert report["filters"]["filters"][-1]["removed"] == 141 - 36
    again, _ = build_pool([a, b], fraction=0.25, seed=7)
    assert again.equals(pool)
    other, _ = build_pool([a, b], fraction=0.25, seed=8)
    assert set(other["image_id"]) != set(pool["image_id"])
    alone, _ = build_pool([a], fraction=0.25, seed=7)  # a dataset's draw does not depend on the other sources
    assert alone["image_id"].to_list() == pool.filter(pl.col("dataset") == "a")["image_id"].to_list()
    shuffled, _ = build_pool([b, a.sample(fraction=1.0, shuffle=True, seed=3)], fraction=0.25, seed=7)
    assert shuffled.equals(pool)  # the draw depends on the set of images, not on row order
    smaller, _ = build_pool([a, b], fraction=0.1, seed=7)  # same seed: a smaller fraction is a subset
    assert set(smaller["image_id"]) < set(pool["image_id"])


def test_fraction_rounds_half_up() -> None:
    source = synthetic_source("a", 3, prefix="a:")  # 1 + 2 + 3 = 6 images, 3 patients
    pool, _ = build_pool([source.head(5)], fraction=0.5)  # 2.5 -> 3 (round() would give 2)
    assert pool.height == 3
    pool, report = build_pool([source], fraction=0.5, fraction_unit="patients")  # 1.5 -> 2 patients
    assert report["sampling"]["a"]["units_out"] == 2 and pool["patient_id"].n_unique() == 2


def test_fraction_of_patients_keeps_whole_patients() -> None:
    source = synthetic_source("a", 90, prefix="a:")
    pool, report = build_pool([source], fraction=0.3, fraction_unit="patients", seed=1)
    chosen = set(pool["patient_id"])
    assert len(chosen) == 27 and report["sampling"]["a"]["units_out"] == 27
    per_patient = source.group_by("patient_id").len()
    full = dict(per_patient.iter_rows())
    assert all(n == full[p] for p, n in pool.group_by("patient_id").len().iter_rows())
    assert pool.height == sum(full[p] for p in chosen) == report["sampling"]["a"]["images_out"]
    assert report["rule"]["fraction_unit"] == "patients"


def test_eval_patient_exclusion(tmp_path: Path) -> None:
    source = synthetic_source("chexpert", 12, prefix="patient", lateral_every=5)
    cohort = pl.DataFrame({"patient_id": ["patient00000", "patient00001", "patient00002", "patient00004",
                                          "patient00099"],
                           "split": ["train", "validate", "test", "test", "test"]})
    cohort.write_parquet(tmp_path / "cohort.parquet")
    evaluation = exclude_eval_patients(tmp_path / "cohort.parquet")
    assert evaluation.to_list() == ["patient00001", "patient00002", "patient00004", "patient00099"]
    frontal = source.filter(pl.col("view") == "Frontal")
    eval_images = frontal.filter(pl.col("patient_id").is_in(evaluation.implode())).height
    kept, report = build_pool([source], eval_patients=evaluation)  # default: not excluded, but counted
    assert report["eval_patients"]["excluded"] is False
    assert report["eval_patients"]["pool_images_from_eval_patients"]["images"] == eval_images > 0
    pool, report = build_pool([source], exclude_patients=evaluation, eval_patients=evaluation)
    assert set(kept["patient_id"]) - set(pool["patient_id"]) == {"patient00001", "patient00002", "patient00004"}
    assert pool.height == frontal.height - eval_images
    step = report["filters"]["filters"][1]
    assert (step["step"], step["removed"]) == ("exclude patients", eval_images)
    assert report["eval_patients"]["pool_images_from_eval_patients"]["images"] == 0
    assert report["eval_patients"]["frontal_pool_images_before_exclusion"]["images"] == eval_images


def test_keep_source_splits(tmp_path: Path, mimic_files: dict[str, Path]) -> None:
    """Medical MAE pre-trained on MIMIC's official train split only (main_pretrain_multi_datasets_xray.py)."""
    mimic, _ = read_mimic(**mimic_files)  # frontal: d1, d3 train; d4 test; d8 no split
    chexpert = synthetic_source("chexpert", 4, prefix="patient")
    pool, report = build_pool([mimic, chexpert], keep_splits={"mimic": ["train"]})
    assert pool.filter(pl.col("dataset") == "mimic")["image_id"].str.extract(r"/([^/]+)\.jpg$").to_list() == [
        DICOM_1, "d3"]
    assert pool.filter(pl.col("dataset") == "chexpert").height == chexpert.height  # other datasets untouched
    step = report["filters"]["filters"][0]
    assert step["step"] == "source split" and step["removed"] == 3
    assert step["removed_by_value"] == {"mimic:test": 2, "mimic:(none)": 1}
    assert set(pool.filter(pl.col("dataset") == "mimic")["source_split"]) == {"train"}
    assert report["rule"]["keep_splits"] == {"mimic": ["train"]}
    with pytest.raises(ValueError, match="no pool source of that dataset has a split"):
        build_pool([chexpert], keep_splits={"chexpert": ["train"]})


def test_write_pool(tmp_path: Path) -> None:
    pool, report = build_pool([synthetic_source("a", 5, prefix="a:")])
    out = tmp_path / "pools" / "pool.parquet"
    paths = write_pool(pool, report, out, force=False)
    assert paths == (out, tmp_path / "pools" / "pool_report.json") == (out, pool_report_path(out))
    assert pl.read_parquet(out).equals(pool)
    with pytest.raises(OutputExistsError):
        write_pool(pool, report, out, force=False)
    write_pool(pool.head(2), report, out, force=True)
    assert pl.read_parquet(out).height == 2


def test_bad_pool_arguments() -> None:
    source = synthetic_source("a", 5, prefix="a:")
    with pytest.raises(ValueError, match="fraction"):
        build_pool([source], fraction=0.0)
    with pytest.raises(ValueError, match="fraction_unit"):
        build_pool([source], fraction_unit="studies")
    with pytest.raises(DataError, match="lacks required column"):
        build_pool([source.drop("view")])
    with pytest.raises(DataError, match="sex outside"):
        build_pool([source.with_columns(sex=pl.lit("M"))])


# ---------------------------------------------------------------- real CheXpert train.csv (cached wheel only)

WHEEL_CACHE = Path(os.environ.get("FMFAIR_CACHE", Path.home() / ".cache" / "fmfair")) / "wheels"
SHIPPED_SPLIT = Path(__file__).resolve().parents[1] / "data" / "splits" / "chexpert_split_2021_08_20.csv"


def test_real_chexpert_pool_and_eval_patients(tmp_path: Path) -> None:
    """Frontal pool of the real train.csv and its Glocker validate/test patients, checked with the csv module.

    Uses the torchxrayvision wheel cached by tests/test_cohort_real_train_csv.py; never downloads.
    """
    wheels = sorted(WHEEL_CACHE.glob("torchxrayvision-1.5.7-*.whl"))
    if not wheels or not SHIPPED_SPLIT.is_file():
        pytest.skip("torchxrayvision 1.5.7 wheel not cached (tests/test_cohort_real_train_csv.py fetches it)")
    with zipfile.ZipFile(wheels[0]) as wheel:
        train = tmp_path / "train.csv.gz"
        train.write_bytes(wheel.read("torchxrayvision/data/chexpert_train.csv.gz"))
    with gzip.open(train, "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with SHIPPED_SPLIT.open(newline="") as handle:
        held_out = {int(r["index"]) for r in csv.DictReader(handle) if r["split"] in ("validate", "test")}
    eval_ids = {rows[i]["Path"].split("/")[2] for i in held_out}
    frontal = [r for r in rows if r["Frontal/Lateral"] == "Frontal"]
    from_eval = sum(r["Path"].split("/")[2] in eval_ids for r in frontal)
    assert len(eval_ids) == 4_288 + 12_866 and len(frontal) == 191_027 and len(held_out) == 12_673 + 38_240
    source, _ = read_chexpert_pool(train)
    evaluation = pl.Series("patient_id", sorted(eval_ids))
    kept, report = build_pool([source], eval_patients=evaluation)
    assert kept.height == len(frontal) and report["filters"]["filters"][0]["removed"] == len(rows) - len(frontal)
    assert report["eval_patients"]["pool_images_from_eval_patients"]["images"] == from_eval >= len(held_out)
    pool, _ = build_pool([source], exclude_patients=evaluation)
    assert pool.height == len(frontal) - from_eval and not set(pool["patient_id"]) & eval_ids
