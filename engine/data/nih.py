"""Reader for NIH ChestX-ray14 ``Data_Entry_2017*.csv`` (a pre-training pool source; no race in this dataset).

Format: shared/notes/formats.md section 8. The two bracketed headers (``OriginalImage[Width,Height]``,
``OriginalImagePixelSpacing[x,y]``) hold unquoted commas, so the header splits into 11 names; every column used
here is addressed by name and the four split ones are never read.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from engine.data.errors import DataError, example_rows
from engine.data.io import read_table, require_columns

# The 14 findings in NIH spelling, in the order of Medical MAE's data_splits/chestxray label lists.
NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
NO_FINDING = "No Finding"
NIH_COLUMNS: tuple[str, ...] = (
    "Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position",
)
NIH_SEXES = {"M": "Male", "F": "Female"}
NIH_POSITIONS: tuple[str, ...] = ("PA", "AP")
# Official split list files -> split value (formats.md section 8: 86,524 / 25,596 lines, patient-disjoint).
NIH_SPLITS: dict[str, str] = {"train_val_list": "train_val", "test_list": "test"}
# The original 2017 file has a few ages above 100 (formats.md section 8); they become null, counted.
MAX_PLAUSIBLE_AGE = 120
_IMAGE_INDEX_PATTERN = r"^(\d{8})_\d{3}\.png$"


def nih_patient_id(patient: pl.Expr) -> pl.Expr:
    """``nih:`` + the 8-digit Patient ID, as in the image name (``nih:00000001``).

    The colon never occurs in CheXpert (``patientNNNNN``) or MIMIC (``mimic:<subject_id>``) ids, so the
    namespaces cannot collide in a pooled table.
    """
    return pl.lit("nih:") + patient.cast(pl.String).str.zfill(8)


def read_nih(
    data_entry: str | Path,
    *,
    image_subdir: str = "images",
    train_val_list: str | Path | None = None,
    test_list: str | Path | None = None,
) -> tuple[pl.DataFrame, dict]:
    """Read and validate ``Data_Entry_2017*.csv`` (plain or .gz); return ``(images, report)``.

    Columns: dataset, image_id (``<image_subdir>/<Image Index>``), patient_id, sex, race (null), age (Int16),
    view (Frontal), position (PA/AP), split (``train_val`` / ``test`` from the official lists when given, else
    null) and the 14 findings as 0/1 Int8 (all zero means "No Finding").
    """
    raw = read_table(data_entry, what="NIH Data_Entry file")
    require_columns(raw, NIH_COLUMNS, file=data_entry, what="NIH Data_Entry file")
    raw = raw.with_row_index("_row").with_columns(pl.col(c).str.strip_chars() for c in NIH_COLUMNS)
    _check_image_index(raw, data_entry)
    _check_values(raw, "Patient Gender", tuple(NIH_SEXES), data_entry)
    _check_values(raw, "View Position", NIH_POSITIONS, data_entry)
    findings = _parse_findings(raw, data_entry)
    age, n_implausible = _parse_age(raw, data_entry)
    subdir = image_subdir.strip("/")
    frame = raw.select(
        pl.lit("nih").alias("dataset"),
        ((pl.lit(subdir + "/") if subdir else pl.lit("")) + pl.col("Image Index")).alias("image_id"),
        nih_patient_id(pl.col("Patient ID").cast(pl.Int64)).alias("patient_id"),
        pl.col("Patient Gender").replace_strict(NIH_SEXES).alias("sex"),
        pl.lit(None, dtype=pl.String).alias("race"),
        age.alias("age"),
        pl.lit("Frontal").alias("view"),  # ChestX-ray14 holds frontal images only (PA/AP)
        pl.col("View Position").alias("position"),
        pl.col("Image Index").alias("_name"),
    ).hstack(findings)
    frame, split_report = _assign_split(frame, train_val_list, test_list)
    frame = frame.select("dataset", "image_id", "patient_id", "sex", "race", "age", "view", "position", "split",
                         *NIH_FINDINGS)
    report = _report(frame, data_entry, image_subdir=subdir, implausible_ages=n_implausible) | split_report
    return frame, report


def _check_image_index(raw: pl.DataFrame, file: str | Path) -> None:
    """Image Index is ``{Patient ID:08d}_{NNN}.png`` and unique (formats.md section 8).

    The three digits are not checked against ``Follow-up #``: in the real v2020 file 24,106 rows differ
    (e.g. 00000003_001.png has Follow-up # 0).
    """
    patient = pl.col("Patient ID").cast(pl.Int64, strict=False)
    checked = raw.with_columns(
        pl.col("Image Index").str.extract(_IMAGE_INDEX_PATTERN, 1).cast(pl.Int64).alias("_p"))
    bad = checked.filter(pl.col("_p").is_null())
    if bad.height:
        raise DataError("Image Index is not of the form NNNNNNNN_NNN.png", file=file, column="Image Index",
                        rows=example_rows(bad, "Image Index"), n_bad=bad.height)
    bad = checked.filter(patient.is_null() | (pl.col("_p") != patient))
    if bad.height:
        examples = [f"line {r + 2}: Image Index={name!r}, Patient ID={pid!r}"
                    for r, name, pid in bad.head(5).select("_row", "Image Index", "Patient ID").iter_rows()]
        raise DataError("Patient ID is not an integer equal to the first 8 digits of Image Index", file=file,
                        column="Patient ID", rows=examples, n_bad=bad.height)
    dup = raw.filter(pl.col("Image Index").is_duplicated())
    if dup.height:
        raise DataError("duplicate Image Index", file=file, column="Image Index",
                        rows=example_rows(dup, "Image Index"), n_bad=dup.height)


def _check_values(raw: pl.DataFrame, column: str, allowed: tuple[str, ...], file: str | Path) -> None:
    bad = raw.filter(~pl.col(column).is_in(allowed) | pl.col(column).is_null())
    if bad.height:
        raise DataError(f"{column} outside {', '.join(allowed)}", file=file, column=column,
                        rows=example_rows(bad, column), n_bad=bad.height)


def _parse_findings(raw: pl.DataFrame, file: str | Path) -> pl.DataFrame:
    """``Finding Labels`` ('|'-separated findings, or ``No Finding`` alone) -> 14 Int8 0/1 columns."""
    tokens = raw.select("_row", "Finding Labels",
                        pl.col("Finding Labels").str.split("|").list.eval(pl.element().str.strip_chars()).alias("t"))
    known = [*NIH_FINDINGS, NO_FINDING]
    unknown = tokens.filter(pl.col("Finding Labels").is_null()
                            | pl.col("t").list.eval(~pl.element().is_in(known)).list.any())
    if unknown.height:
        raise DataError(f"unknown finding name (allowed: {', '.join(known)}, '|'-separated)", file=file,
                        column="Finding Labels", rows=example_rows(unknown, "Finding Labels"), n_bad=unknown.height)
    mixed = tokens.filter(pl.col("t").list.contains(NO_FINDING) & (pl.col("t").list.len() > 1))
    if mixed.height:
        raise DataError(f"'{NO_FINDING}' combined with findings", file=file, column="Finding Labels",
                        rows=example_rows(mixed, "Finding Labels"), n_bad=mixed.height)
    return tokens.select(pl.col("t").list.contains(f).cast(pl.Int8).alias(f) for f in NIH_FINDINGS)


def _parse_age(raw: pl.DataFrame, file: str | Path) -> tuple[pl.Expr, int]:
    """Patient Age must be a whole number; ages above MAX_PLAUSIBLE_AGE become null and are counted."""
    parsed = pl.col("Patient Age").cast(pl.Int64, strict=False)
    bad = raw.filter(parsed.is_null() | (parsed < 0))
    if bad.height:
        raise DataError("Patient Age is not a whole number of years", file=file, column="Patient Age",
                        rows=example_rows(bad, "Patient Age"), n_bad=bad.height)
    n_implausible = raw.filter(parsed > MAX_PLAUSIBLE_AGE).height
    return pl.when(parsed <= MAX_PLAUSIBLE_AGE).then(parsed).cast(pl.Int16), n_implausible


def _read_list(path: str | Path) -> pl.Series:
    """The first word of each non-blank line: an image name.

    Official lists hold the name alone; Medical MAE's data_splits/chestxray/*_official.txt add 14 labels after it.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("NIH split list not found", file=path)
    names = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return pl.Series("_name", names, dtype=pl.String)


def _assign_split(frame: pl.DataFrame, train_val_list: str | Path | None,
                  test_list: str | Path | None) -> tuple[pl.DataFrame, dict]:
    """Join the official list files on the image name; names absent from Data_Entry or listed twice fail."""
    lists = {k: v for k, v in {"train_val_list": train_val_list, "test_list": test_list}.items() if v is not None}
    if not lists:
        return frame.with_columns(split=pl.lit(None, dtype=pl.String)), {"split": None}
    parts = []
    for key, path in lists.items():
        names = _read_list(path)
        unknown = names.filter(~names.is_in(frame["_name"].implode()))
        if unknown.len():
            raise DataError("split list names images absent from the Data_Entry file", file=path,
                            rows=unknown.head(5).to_list(), n_bad=unknown.len())
        parts.append(pl.DataFrame({"_name": names}).with_columns(split=pl.lit(NIH_SPLITS[key])))
    assignment = pl.concat(parts)
    twice = assignment.filter(pl.col("_name").is_duplicated())["_name"].unique(maintain_order=True)
    if twice.len():
        raise DataError("image listed twice in the split lists", file=", ".join(map(str, lists.values())),
                        rows=twice.head(5).to_list(), n_bad=twice.len())
    frame = frame.join(assignment, on="_name", how="left")
    per_patient = frame.drop_nulls("split").group_by("patient_id").agg(pl.col("split").n_unique().alias("n"))
    report = {"split": {
        "lists": {k: str(v) for k, v in lists.items()},
        "images": {str(k): int(v) for k, v in frame["split"].fill_null("(unlisted)").value_counts().iter_rows()},
        "patients_in_both_splits": per_patient.filter(pl.col("n") > 1).height,
    }}
    return frame, report


def _report(frame: pl.DataFrame, file: str | Path, *, image_subdir: str, implausible_ages: int) -> dict:
    """Counts to compare with SOURCE.md / formats.md: images, patients, sex, position, findings."""
    counts = {f: int(frame[f].sum()) for f in NIH_FINDINGS}
    counts[NO_FINDING] = frame.filter(pl.sum_horizontal(NIH_FINDINGS) == 0).height
    return {
        "source": str(file),
        "image_subdir": image_subdir,
        "images": frame.height,
        "patients": frame["patient_id"].n_unique(),
        "sex": _value_counts(frame, "sex"),
        "position": _value_counts(frame, "position"),
        "findings": counts,
        "ages_above_max_set_null": implausible_ages,
    }


def _value_counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    counts = frame[column].fill_null("(blank)").value_counts(sort=True)
    return {str(v): int(n) for v, n in counts.iter_rows()}
