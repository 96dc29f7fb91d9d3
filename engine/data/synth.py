"""Synthetic CheXpert-v1.0-small and NIH ChestX-ray14 folders, file for file in the real formats, seeded.

The tables follow shared/notes/formats.md sections 8-9 and the split file peers.md section 5a. Findings come from a
latent Gaussian model (a per-study severity factor shared by most findings, a cardiac factor shared by Edema,
Pleural Effusion, Cardiomegaly and Enlarged Cardiomediastinum); the images (synth_images.py) carry each finding's
pattern with a planted, weaker signal for Female and Black patients. Every parameter lands in synthetic.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from statistics import NormalDist

import numpy as np
import polars as pl

from engine.data import synth_images as img
from engine.data.io import atomic_path, write_csv, write_json
from engine.data.schema import (
    CHEXPERT_TRAIN_COLUMNS,
    DEMOGRAPHICS_COLUMNS,
    ETHNICITIES_KEPT,
    FRONTAL,
    PATHOLOGIES,
    POSITIONS_KEPT,
    map_race,
)
from engine.data.staging import staging_dir
from engine.data.synth_model import (  # noqa: F401  (re-exported: the model constants are part of this API)
    AGE_SEVERITY_SLOPE,
    DROPPED_RACE_SHARE,
    DROPPED_RACES,
    ETHNICITY_MIX,
    EXTRA_DEMO_SHARE,
    FINDING_MODELS,
    LATERAL_ONLY_SHARE,
    LATERAL_SHARE,
    MALE_SHARE,
    PATIENT_SEVERITY_SHARE,
    POSITION_MIX,
    RACE_MIX,
    RACE_VARIANTS,
    SPLIT_FRACTIONS,
    STUDIES_EXTRA_MEAN,
    VALID_PATIENT_SHARE,
)

CHEXPERT_DIR = "CheXpert-v1.0-small"
DEMOGRAPHICS_FILE = "CHEXPERT DEMO.xlsx"
SPLIT_FILE = "chexpert_split.csv"
MANIFEST_FILE = "synthetic.json"
FINDINGS: tuple[str, ...] = PATHOLOGIES[1:]  # No Finding is derived from the other 13


LABEL_TEXT = {1.0: "1.0", 0.0: "0.0", -1.0: "-1.0"}


def write_synthetic_chexpert(
    out_dir: Path, *, n_patients: int = 1500, seed: int = 0, image_size: tuple[int, int] = (112, 96),
    force: bool = False,
) -> dict[str, Path]:
    """Write a CheXpert-v1.0-small look-alike (CSVs, JPEGs, demographics, split file) and return its paths."""
    if not 20 <= n_patients <= 90_000:  # 5-digit patient numbers must hold train, valid and extra patients
        raise ValueError(f"n_patients must be in 20..90000, got {n_patients}")
    width, height = (int(v) for v in image_size)
    if min(width, height) < 16:
        raise ValueError(f"image_size (W, H) must be at least 16 pixels each, got {image_size}")
    out_dir = Path(out_dir)
    with staging_dir(out_dir, force=force, marker=MANIFEST_FILE) as tmp:
        rng = np.random.default_rng([seed, 0])  # tables; images use their own stream
        patients = _draw_patients(rng, n_patients)
        studies = _draw_studies(rng, patients)
        state = _draw_findings(rng, studies)
        images = _draw_views(rng, studies)
        root = tmp / CHEXPERT_DIR
        for file in ("train", "valid"):
            rows = images.filter(pl.col("file") == file)
            write_csv(_csv_table(rows, _report_labels(rng, state, file == "valid")), root / f"{file}.csv")
        _write_demographics(patients, tmp / DEMOGRAPHICS_FILE, rng)
        split = _split_table(images.filter(pl.col("file") == "train"), patients, seed)
        with atomic_path(tmp / SPLIT_FILE) as path:
            split.write_csv(path, quote_style="never")  # header ",index,split" as upstream
        _render(images, state, root, (width, height), seed)
        manifest = _manifest(seed, n_patients, (width, height), patients, images, split)
        write_json(manifest, tmp / MANIFEST_FILE)
    root = out_dir / CHEXPERT_DIR
    return {
        "train_csv": root / "train.csv", "valid_csv": root / "valid.csv", "demographics": out_dir / DEMOGRAPHICS_FILE,
        "split": out_dir / SPLIT_FILE, "image_root": root, "manifest": out_dir / MANIFEST_FILE,
    }


def _choice(rng: np.random.Generator, mix: Mapping[str, float], size: int) -> np.ndarray:
    """Draw ``size`` keys of ``mix`` with its (normalised) weights."""
    keys = list(mix)
    weights = np.array([mix[k] for k in keys], dtype=np.float64)
    return np.array(keys, dtype=object)[rng.choice(len(keys), size=size, p=weights / weights.sum())]


def _draw_patients(rng: np.random.Generator, n_train: int) -> pl.DataFrame:
    """One row per patient: number, file (train / valid / none), sex, first age, race, raw race and ethnicity."""
    n_valid = max(8, round(VALID_PATIENT_SHARE * n_train))
    n_extra = max(2, round(EXTRA_DEMO_SHARE * n_train))
    n = n_train + n_valid + n_extra
    race = _choice(rng, RACE_MIX, n)
    primary = np.empty(n, dtype=object)
    for name, variants in RACE_VARIANTS.items():
        primary[race == name] = _choice(rng, variants, int((race == name).sum()))
    dropped = rng.random(n) < DROPPED_RACE_SHARE
    primary[dropped] = _choice(rng, dict.fromkeys(DROPPED_RACES, 1.0), int(dropped.sum()))
    ethnicity = _choice(rng, ETHNICITY_MIX, n)
    forced = np.char.find(primary.astype(str), "non-Hispanic") >= 0  # keep raw race and ethnicity consistent
    ethnicity[forced] = "Non-Hispanic/Non-Latino"
    return pl.DataFrame(
        {
            "patient_no": np.arange(1, n + 1),
            "file": ["train"] * n_train + ["valid"] * n_valid + ["none"] * n_extra,
            "sex": np.where(rng.random(n) < MALE_SHARE, "Male", "Female"),
            "first_age": np.clip(np.rint(rng.normal(60.0, 17.0, n)), 18, 90).astype(np.int64),
            "race": [None if d else r for d, r in zip(dropped, race, strict=False)],
            "primary_race": primary.astype(str),
            "ethnicity": ethnicity.astype(str),
            "severity": rng.standard_normal(n) * np.sqrt(PATIENT_SEVERITY_SHARE),
        }
    ).with_columns(patient_id=pl.format("patient{}", pl.col("patient_no").cast(pl.String).str.zfill(5)))


def _draw_studies(rng: np.random.Generator, patients: pl.DataFrame) -> pl.DataFrame:
    """One row per study (patients in train.csv or valid.csv); age grows by 0 or 1 year per later study."""
    imaged = patients.filter(pl.col("file") != "none")
    is_train = (imaged["file"] == "train").to_numpy()
    counts = np.where(is_train, 1 + rng.poisson(STUDIES_EXTRA_MEAN, len(imaged)), 1)
    owner = np.repeat(np.arange(len(imaged)), counts)
    study_no = np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    step = np.where(study_no > 1, rng.integers(0, 2, len(owner)), 0)
    studies = imaged[owner].with_columns(study_no=pl.Series(study_no), step=pl.Series(step))
    return studies.with_columns(
        age=pl.min_horizontal(pl.col("first_age") + pl.col("step").cum_sum().over("patient_no"), pl.lit(90)),
        study_row=pl.int_range(pl.len()),
    )


def _draw_findings(rng: np.random.Generator, studies: pl.DataFrame) -> np.ndarray:
    """Latent state per study and finding, (S, 13) int8: 2 present, 1 borderline (reported -1), 0 absent."""
    n = len(studies)
    own = np.sqrt(1.0 - PATIENT_SEVERITY_SHARE) * rng.standard_normal(n)
    severity = studies["severity"].to_numpy() + own + AGE_SEVERITY_SLOPE * (studies["age"].to_numpy() - 60)
    cardiac = rng.standard_normal(n)
    black = (studies["race"] == "Black").fill_null(False).to_numpy()
    state = np.zeros((n, len(FINDINGS)), dtype=np.int8)
    for j, name in enumerate(FINDINGS):
        m = FINDING_MODELS[name]
        rest = np.sqrt(1.0 - m.severity**2 - m.cardiac**2)
        z = m.severity * severity + m.cardiac * cardiac + rest * rng.standard_normal(n) + m.black_shift * black
        present = NormalDist().inv_cdf(1.0 - m.prevalence)
        borderline = NormalDist().inv_cdf(1.0 - m.prevalence - m.uncertain)
        state[:, j] = np.where(z > present, 2, np.where(z > borderline, 1, 0))
    return state


def _report_labels(rng: np.random.Generator, state: np.ndarray, expert: bool) -> np.ndarray:
    """Raw labels (S, 14) with NaN = blank, No Finding first, as CheXpert reports them.

    train.csv (report labeler): present 1, borderline -1, absent 0 or blank. valid.csv (radiologist consensus):
    only 1 / 0, no uncertain and no blanks. No Finding is 1 only when no finding but Support Devices is present
    or borderline, and blank otherwise (0 in valid.csv).
    """
    others = [j for j, name in enumerate(FINDINGS) if name != "Support Devices"]
    if expert:
        labels = np.where(state == 2, 1.0, 0.0)
        no_finding = np.where((state[:, others] == 2).any(axis=1), 0.0, 1.0)
    else:
        said_no = rng.random(state.shape) < np.array([FINDING_MODELS[f].negative for f in FINDINGS])
        labels = np.where(state == 2, 1.0, np.where(state == 1, -1.0, np.where(said_no, 0.0, np.nan)))
        no_finding = np.where((state[:, others] > 0).any(axis=1), np.nan, 1.0)
    return np.column_stack([no_finding, labels])


def _draw_views(rng: np.random.Generator, studies: pl.DataFrame) -> pl.DataFrame:
    """One row per image: frontal (view1) unless lateral-only, plus a lateral view for some studies."""
    is_train = (studies["file"] == "train").to_numpy()
    lateral_only = is_train & (rng.random(len(studies)) < LATERAL_ONLY_SHARE)
    has_lateral = lateral_only | (rng.random(len(studies)) < np.where(is_train, LATERAL_SHARE, LATERAL_SHARE / 2))
    frontal = studies.filter(pl.Series(~lateral_only)).with_columns(view=pl.lit("view1_frontal"))
    in_train = (frontal["file"] == "train").to_numpy()
    position = _choice(rng, POSITION_MIX, len(frontal))
    other = np.isin(position, ["LL", "RL"])
    position[other & ~in_train] = "AP"  # valid.csv holds AP / PA frontal views only
    if not (other & in_train).any():  # at least one frontal view in train.csv that the cohort must remove
        position[rng.choice(np.flatnonzero(in_train))] = "LL"
    frontal = frontal.with_columns(lateral=pl.lit(False), position=pl.Series(position.astype(str)))
    name = np.where(lateral_only[has_lateral], "view1_lateral", "view2_lateral")
    lateral = studies.filter(pl.Series(has_lateral)).with_columns(
        view=pl.Series(name), lateral=pl.lit(True), position=pl.lit(None, dtype=pl.String)
    )
    images = pl.concat([frontal, lateral]).sort("patient_no", "study_no", "view")
    return images.with_columns(
        path=pl.format("{}/{}/{}/study{}/{}.jpg", pl.lit(CHEXPERT_DIR), "file", "patient_id", "study_no", "view")
    )


def _csv_table(images: pl.DataFrame, labels: np.ndarray) -> pl.DataFrame:
    """train.csv / valid.csv in the real column order; labels as the text the real file holds."""
    rows = images["study_row"].to_numpy()
    columns: dict[str, object] = {
        "Path": images["path"], "Sex": images["sex"], "Age": images["age"],
        "Frontal/Lateral": np.where(images["lateral"].to_numpy(), "Lateral", FRONTAL),
        "AP/PA": images["position"],
    }
    for j, name in enumerate(PATHOLOGIES):
        columns[name] = [LABEL_TEXT.get(v) for v in labels[rows, j].tolist()]  # NaN -> None -> blank
    frame = pl.DataFrame(columns, schema_overrides={p: pl.String for p in PATHOLOGIES})
    assert tuple(frame.columns) == CHEXPERT_TRAIN_COLUMNS
    return frame


def _write_demographics(patients: pl.DataFrame, path: Path, rng: np.random.Generator) -> None:
    """CHEXPERT DEMO.xlsx: one row per patient, in no particular order, raw race and ethnicity spellings."""
    import openpyxl

    workbook = openpyxl.Workbook(write_only=True)
    sheet = workbook.create_sheet("Sheet1")
    sheet.append(list(DEMOGRAPHICS_COLUMNS))
    shuffled = patients[rng.permutation(len(patients))]
    for row in shuffled.select("patient_id", "sex", "first_age", "primary_race", "ethnicity").iter_rows():
        sheet.append(list(row))
    with atomic_path(path) as tmp:
        workbook.save(tmp)


def _split_table(train: pl.DataFrame, patients: pl.DataFrame, seed: int) -> pl.DataFrame:
    """The split file as upstream made it (peers.md 5a): filter, split patients 60/10/30, then keep AP/PA."""
    raw = patients.select("patient_id", "primary_race", "ethnicity")
    rows = train.with_row_index("index").join(raw, on="patient_id", how="left")
    kept = rows.filter(
        pl.col("primary_race").map_elements(map_race, return_dtype=pl.String).is_not_null(),
        pl.col("ethnicity").is_in(list(ETHNICITIES_KEPT)),
        ~pl.col("lateral"),
    )
    ids = np.array(sorted(kept["patient_id"].unique().to_list()), dtype=object)
    ids = ids[np.random.default_rng([seed, 2]).permutation(len(ids))]
    n_train, n_val = round(SPLIT_FRACTIONS["train"] * len(ids)), round(SPLIT_FRACTIONS["validate"] * len(ids))
    names = ["train"] * n_train + ["validate"] * n_val + ["test"] * (len(ids) - n_train - n_val)
    assignment = pl.DataFrame({"patient_id": ids.astype(str), "split": names})
    split = kept.join(assignment, on="patient_id").filter(pl.col("position").is_in(list(POSITIONS_KEPT)))
    split = split.sort("index").select(pl.col("index").cast(pl.Int64), "split")
    return split.select(pl.int_range(pl.len(), dtype=pl.Int64).alias(""), "index", "split")


def _render(images: pl.DataFrame, state: np.ndarray, root: Path, size: tuple[int, int], seed: int) -> None:
    """Render every JPEG with its study's findings and the patient's planted subgroup signal scale."""
    scale = img.subgroup_scale(images["sex"].to_list(), images["race"].to_list())
    coeffs = img.signal_coefficients(state[images["study_row"].to_numpy()], scale)
    patterns = img.pattern_stack(FINDINGS, *size)
    paths = [root.parent / p for p in images["path"].to_list()]
    img.write_images(paths, coeffs, images["lateral"].to_numpy(), patterns, np.random.default_rng([seed, 1]))


def _manifest(
    seed: int, n_patients: int, size: tuple[int, int], patients: pl.DataFrame, images: pl.DataFrame,
    split: pl.DataFrame,
) -> dict[str, object]:
    """synthetic.json: the marker, every generation parameter, the planted effects and the counts written."""
    race_kept = patients["primary_race"].map_elements(map_race, return_dtype=pl.String).is_not_null()
    return {
        "synthetic": True, "format": CHEXPERT_DIR, "generator": f"{__name__}.write_synthetic_chexpert",
        "seed": seed, "n_patients": n_patients, "image_size": list(size),
        "planted_effects": img.planted_effects(),
        "findings": {name: asdict(m) for name, m in FINDING_MODELS.items()},
        "demography": {"male_share": MALE_SHARE, "race_mix": dict(RACE_MIX), "dropped_race_share": DROPPED_RACE_SHARE,
                       "race_variants": {k: dict(v) for k, v in RACE_VARIANTS.items()},
                       "dropped_races": list(DROPPED_RACES), "ethnicity_mix": dict(ETHNICITY_MIX)},
        "views": {"lateral_share": LATERAL_SHARE, "lateral_only_share": LATERAL_ONLY_SHARE,
                  "position_mix": dict(POSITION_MIX), "studies_extra_mean": STUDIES_EXTRA_MEAN},
        "split_fractions": dict(SPLIT_FRACTIONS),
        "counts": {
            "patients": patients.group_by("file").len().sort("file").rows(),
            "patients_race_dropped": int((~race_kept).sum()),
            "patients_ethnicity_dropped": int((~patients["ethnicity"].is_in(list(ETHNICITIES_KEPT))).sum()),
            "images": images.group_by("file").len().sort("file").rows(),
            "lateral_images": int(images["lateral"].sum()),
            "frontal_other_position": int(images["position"].is_in(["LL", "RL"]).sum()),
            "split_rows": split.group_by("split").len().sort("split").rows(),
        },
    }
