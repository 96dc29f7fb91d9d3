"""Reader for MIMIC-CXR-JPG 2.0.0 (metadata, CheXpert labels, official split) with optional MIMIC-IV demographics.

Formats: shared/notes/formats.md section 10. Sex and age come from MIMIC-IV ``hosp/patients.csv``, race from
``hosp/admissions.csv``; without them the columns are null (the pre-training pool needs no demographics).
Race rule (differs from chexploration on MIMIC-IV 2.x, see docs/protocol.md): upper-case the admission's race
value, map it by substring to White / Black / Asian, then give no race to a subject whose admissions map to
more than one of these three (counted); values that map to none (UNKNOWN, OTHER, HISPANIC/LATINO...) are ignored.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from engine.data.chexpert import parse_raw_labels
from engine.data.errors import DataError, example_rows
from engine.data.filter_log import FilterLog
from engine.data.io import read_table, require_columns
from engine.data.schema import PATHOLOGIES, SPLITS

METADATA_COLUMNS: tuple[str, ...] = ("dicom_id", "subject_id", "study_id", "ViewPosition")
LABEL_KEYS: tuple[str, ...] = ("subject_id", "study_id")
SPLIT_COLUMNS: tuple[str, ...] = ("dicom_id", "study_id", "subject_id", "split")
PATIENT_COLUMNS: tuple[str, ...] = ("subject_id", "gender", "anchor_age", "anchor_year")
# ViewPosition -> view; every other position (e.g. blank, AP AXIAL, LAO, SWIMMERS) gets a null view.
VIEWS: dict[str, str] = {"PA": "Frontal", "AP": "Frontal", "LATERAL": "Lateral", "LL": "Lateral"}
MIMIC_SEXES: dict[str, str] = {"M": "Male", "F": "Female"}
# Substrings of the upper-cased race value, in the order of schema.RACE_SUBSTRINGS (a later match wins).
MIMIC_RACE_SUBSTRINGS: tuple[tuple[str, str], ...] = (("BLACK", "Black"), ("WHITE", "White"), ("ASIAN", "Asian"))
# MIMIC-IV 2.x names the column race, 1.0 (used by chexploration) ethnicity.
RACE_COLUMNS: tuple[str, ...] = ("race", "ethnicity")
MAX_PLAUSIBLE_AGE = 120
_DIGITS = r"^\d{2,}$"
_DICOM_ID = r"^[A-Za-z0-9.-]+$"  # real ids are dash-separated hex; anything else could escape the image root


def mimic_image_id(subject: pl.Expr, study: pl.Expr, dicom: pl.Expr) -> pl.Expr:
    """``files/p{first 2 digits of subject}/p{subject}/s{study}/{dicom}.jpg`` (chexploration mimic.sample)."""
    return pl.format("files/p{}/p{}/s{}/{}.jpg", subject.str.slice(0, 2), subject, study, dicom)


def read_mimic(
    metadata: str | Path,
    chexpert_labels: str | Path,
    split: str | Path | None = None,
    *,
    patients: str | Path | None = None,
    admissions: str | Path | None = None,
) -> tuple[pl.DataFrame, dict]:
    """Read MIMIC-CXR-JPG (+ optional MIMIC-IV) CSVs (.csv or .csv.gz); return ``(images, report)``.

    Columns: dataset ("mimic"), image_id, patient_id (``mimic:<subject_id>``), sex, race, age (Int16), view,
    position (= ViewPosition), split (official split file, else null) and the 14 CheXpert labels (raw Float64).
    Images whose study has no CheXpert-label row are removed and counted (an inner join, as chexploration and
    torchxrayvision do).
    """
    frame = _read_metadata(metadata, need_date=patients is not None)
    log = FilterLog(frame.height)
    frame, label_report = _join_labels(frame, _read_labels(chexpert_labels), log)
    frame, split_report = _join_split(frame, split)
    frame, demo_report = _join_demographics(frame, patients, admissions)
    frame = frame.select(
        pl.lit("mimic").alias("dataset"),
        mimic_image_id(pl.col("subject_id"), pl.col("study_id"), pl.col("dicom_id")).alias("image_id"),
        ("mimic:" + pl.col("subject_id")).alias("patient_id"),
        "sex", "race", "age",
        pl.col("position").replace_strict(VIEWS, default=None, return_dtype=pl.String).alias("view"),
        "position", "split", *PATHOLOGIES,
    )
    report = {
        "sources": {"metadata": str(metadata), "chexpert_labels": str(chexpert_labels),
                    "split": str(split) if split else None, "patients": str(patients) if patients else None,
                    "admissions": str(admissions) if admissions else None},
        "filters": log.as_dict(frame.height),
        "images": frame.height, "patients": frame["patient_id"].n_unique(),
        "view": _value_counts(frame, "view"), "position": _value_counts(frame, "position"),
        "labels": label_report, "split": split_report, "demographics": demo_report,
    }
    return frame, report


def _read_metadata(path: str | Path, *, need_date: bool) -> pl.DataFrame:
    """One row per dicom; ids validated; a study belongs to one subject; dicom_id unique."""
    raw = read_table(path, what="MIMIC-CXR metadata")
    require_columns(raw, METADATA_COLUMNS + (("StudyDate",) if need_date else ()), file=path,
                    what="MIMIC-CXR metadata")
    frame = raw.with_row_index("_row").select(
        "_row", *[pl.col(c).str.strip_chars() for c in ("dicom_id", "subject_id", "study_id")],
        pl.col("ViewPosition").str.strip_chars().alias("position"),
        (pl.col("StudyDate").str.strip_chars() if need_date else pl.lit(None, dtype=pl.String)).alias("study_date"),
    )
    _check_ids(frame, path)
    _check_pattern(frame, "dicom_id", _DICOM_ID, path, "dicom_id has characters outside letters, digits, '.', '-'")
    dup = frame.filter(pl.col("dicom_id").is_duplicated())
    if dup.height:
        raise DataError("duplicate dicom_id", file=path, column="dicom_id", rows=example_rows(dup, "dicom_id"),
                        n_bad=dup.height)
    owners = frame.group_by("study_id").agg(pl.col("subject_id").n_unique().alias("n")).filter(pl.col("n") > 1)
    if owners.height:
        raise DataError("a study_id belongs to more than one subject_id", file=path, column="study_id",
                        rows=owners["study_id"].head(5).to_list(), n_bad=owners.height)
    if need_date:
        _check_pattern(frame, "study_date", r"^\d{8}$", path, "StudyDate is not a YYYYMMDD integer")
    return frame


def _check_ids(frame: pl.DataFrame, file: str | Path, columns: tuple[str, ...] = ("subject_id", "study_id")) -> None:
    for column in columns:
        _check_pattern(frame, column, _DIGITS, file, f"{column} is not an integer of at least 2 digits")


def _check_pattern(frame: pl.DataFrame, column: str, pattern: str, file: str | Path, problem: str) -> None:
    bad = frame.filter(pl.col(column).is_null() | ~pl.col(column).str.contains(pattern))
    if bad.height:
        raise DataError(problem, file=file, column=column, rows=example_rows(bad, column), n_bad=bad.height)


def _read_labels(path: str | Path) -> pl.DataFrame:
    """One row per study: subject_id, study_id and the 14 labels as Float64 in {1, 0, -1, null}."""
    raw = read_table(path, what="MIMIC-CXR CheXpert labels")
    require_columns(raw, LABEL_KEYS + PATHOLOGIES, file=path, what="MIMIC-CXR CheXpert labels")
    frame = raw.with_row_index("_row").with_columns(pl.col(c).str.strip_chars() for c in (*LABEL_KEYS, *PATHOLOGIES))
    _check_ids(frame, path)
    frame = parse_raw_labels(frame, path)
    dup = frame.filter(pl.struct(LABEL_KEYS).is_duplicated())
    if dup.height:
        raise DataError("a (subject_id, study_id) pair has more than one label row", file=path, column="study_id",
                        rows=example_rows(dup, "study_id"), n_bad=dup.height)
    return frame.select(*LABEL_KEYS, *PATHOLOGIES)


def _join_labels(frame: pl.DataFrame, labels: pl.DataFrame, log: FilterLog) -> tuple[pl.DataFrame, dict]:
    """Inner join on (subject_id, study_id); images of unlabelled studies are removed and counted."""
    studies = frame.select(LABEL_KEYS).unique()
    unlabelled = studies.join(labels, on=list(LABEL_KEYS), how="anti").height
    unused = labels.join(studies, on=list(LABEL_KEYS), how="anti").height
    frame = frame.join(labels.with_columns(_labelled=pl.lit(True)), on=list(LABEL_KEYS), how="left")
    frame = log.apply(frame, pl.col("_labelled"), step="chexpert labels", breakdown="position",
                      reason="study has no row in the CheXpert-label file").drop("_labelled")
    return frame, {"studies_without_labels": unlabelled, "label_rows_without_images": unused}


def _join_split(frame: pl.DataFrame, path: str | Path | None) -> tuple[pl.DataFrame, dict | None]:
    """Official split joined on dicom_id; its subject/study ids must agree with the metadata."""
    if path is None:
        return frame.with_columns(split=pl.lit(None, dtype=pl.String)), None
    raw = read_table(path, what="MIMIC-CXR split file")
    require_columns(raw, SPLIT_COLUMNS, file=path, what="MIMIC-CXR split file")
    split = raw.with_row_index("_row").with_columns(pl.col(c).str.strip_chars() for c in SPLIT_COLUMNS)
    _check_ids(split, path)
    for bad, problem, column in (
        (split.filter(pl.col("dicom_id").is_duplicated()), "duplicate dicom_id", "dicom_id"),
        (split.filter(pl.col("split").is_null() | ~pl.col("split").is_in(SPLITS)),
         f"split outside {', '.join(SPLITS)}", "split"),
    ):
        if bad.height:
            raise DataError(problem, file=path, column=column, rows=example_rows(bad, column), n_bad=bad.height)
    joined = frame.join(split.select("dicom_id", pl.col("subject_id").alias("_s"), pl.col("study_id").alias("_t"),
                                     "split"), on="dicom_id", how="left")
    bad = joined.filter(pl.col("split").is_not_null()
                        & ((pl.col("_s") != pl.col("subject_id")) | (pl.col("_t") != pl.col("study_id"))))
    if bad.height:
        raise DataError("split file gives a dicom_id another subject_id or study_id than the metadata", file=path,
                        column="dicom_id", rows=bad["dicom_id"].head(5).to_list(), n_bad=bad.height)
    report = {"images": _value_counts(joined, "split", blank="(not in split file)"),
              "split_rows_without_images": split.join(frame, on="dicom_id", how="anti").height}
    return joined.drop("_s", "_t"), report


def _join_demographics(frame: pl.DataFrame, patients: str | Path | None,
                       admissions: str | Path | None) -> tuple[pl.DataFrame, dict]:
    """Sex and age from patients.csv, race from admissions.csv; absent files or subjects give nulls (counted)."""
    report: dict = {}
    if patients is None:
        frame = frame.with_columns(sex=pl.lit(None, dtype=pl.String), age=pl.lit(None, dtype=pl.Int16))
    else:
        frame, report["patients"] = _join_patients(frame, patients)
    if admissions is None:
        frame = frame.with_columns(race=pl.lit(None, dtype=pl.String))
    else:
        race, report["admissions"] = read_mimic_race(admissions)
        frame = frame.join(race, on="subject_id", how="left")
        report["admissions"]["images"] = _value_counts(frame, "race_status", blank="(no admission)")
    report["sex"] = _value_counts(frame, "sex")
    report["race"] = _value_counts(frame, "race")
    return frame, report


def _join_patients(frame: pl.DataFrame, path: str | Path) -> tuple[pl.DataFrame, dict]:
    """sex = gender F/M; age = anchor_age + StudyDate year - anchor_year (age at the study, chexploration)."""
    raw = read_table(path, what="MIMIC-IV patients file")
    require_columns(raw, PATIENT_COLUMNS, file=path, what="MIMIC-IV patients file")
    table = raw.with_row_index("_row").with_columns(pl.col(c).str.strip_chars() for c in PATIENT_COLUMNS)
    _check_ids(table, path, ("subject_id",))
    for column in ("anchor_age", "anchor_year"):
        _check_pattern(table, column, r"^\d+$", path, f"{column} is not a whole number")
    bad = table.filter(pl.col("gender").is_null() | ~pl.col("gender").is_in(list(MIMIC_SEXES)))
    if bad.height:
        raise DataError("gender outside F, M", file=path, column="gender", rows=example_rows(bad, "gender"),
                        n_bad=bad.height)
    dup = table.filter(pl.col("subject_id").is_duplicated())
    if dup.height:
        raise DataError("duplicate subject_id", file=path, column="subject_id",
                        rows=example_rows(dup, "subject_id"), n_bad=dup.height)
    table = table.select("subject_id", pl.col("gender").replace_strict(MIMIC_SEXES).alias("sex"),
                         pl.col("anchor_age").cast(pl.Int64), pl.col("anchor_year").cast(pl.Int64))
    frame = frame.join(table, on="subject_id", how="left")
    age = pl.col("anchor_age") + pl.col("study_date").str.slice(0, 4).cast(pl.Int64) - pl.col("anchor_year")
    frame = frame.with_columns(age.alias("_age"))
    implausible = frame.filter((pl.col("_age") < 0) | (pl.col("_age") > MAX_PLAUSIBLE_AGE)).height
    frame = frame.with_columns(
        pl.when(pl.col("_age").is_between(0, MAX_PLAUSIBLE_AGE)).then(pl.col("_age")).cast(pl.Int16).alias("age"))
    missing = frame.filter(pl.col("sex").is_null())
    report = {"subjects_without_patients_row": missing["subject_id"].n_unique(),
              "images_without_sex_age": missing.height, "ages_outside_0_120_set_null": implausible}
    return frame.drop("anchor_age", "anchor_year", "_age"), report


def read_mimic_race(path: str | Path) -> tuple[pl.DataFrame, dict]:
    """Race per subject from ``admissions.csv``: ``(subject_id, race, race_status)``, one row per subject.

    Column ``race`` (MIMIC-IV 2.x) or ``ethnicity`` (1.0). race_status is ``mapped``, ``unmapped`` (no admission
    value contains WHITE / BLACK / ASIAN) or ``inconsistent`` (values map to two or more of them: race dropped);
    unmapped values such as UNKNOWN do not count as a second race.
    """
    raw = read_table(path, what="MIMIC-IV admissions file")
    column = next((c for c in RACE_COLUMNS if c in raw.columns), RACE_COLUMNS[0])
    require_columns(raw, ("subject_id", column), file=path, what="MIMIC-IV admissions file")
    table = raw.with_row_index("_row").select("_row", pl.col("subject_id").str.strip_chars(),
                                              pl.col(column).str.strip_chars().str.to_uppercase().alias("raw"))
    _check_ids(table, path, ("subject_id",))
    mapped = pl.lit(None, dtype=pl.String)
    for needle, value in MIMIC_RACE_SUBSTRINGS:  # in order, so the last match wins
        mapped = pl.when(pl.col("raw").str.contains(needle, literal=True)).then(pl.lit(value)).otherwise(mapped)
    races = pl.col("race").drop_nulls().unique().sort()
    per_subject = table.with_columns(mapped.alias("race")).group_by("subject_id").agg(races.alias("races"))
    n = pl.col("races").list.len()
    race = per_subject.select(
        "subject_id",
        pl.when(n == 1).then(pl.col("races").list.first()).alias("race"),
        pl.when(n == 0).then(pl.lit("unmapped")).when(n == 1).then(pl.lit("mapped"))
        .otherwise(pl.lit("inconsistent")).alias("race_status"),
    ).sort("subject_id")
    inconsistent = per_subject.filter(n > 1).sort("subject_id")
    report = {
        "race_column": column,
        "admission_values": _value_counts(table, "raw"),
        "subjects": _value_counts(race, "race_status"),
        "inconsistent_race_examples": [f"{s}: {', '.join(r)}" for s, r in inconsistent.head(5).iter_rows()],
    }
    return race, report


def _value_counts(frame: pl.DataFrame, column: str, *, blank: str = "(blank)") -> dict[str, int]:
    counts = frame[column].fill_null(blank).value_counts(sort=True)
    return {str(v): int(n) for v, n in counts.iter_rows()}
