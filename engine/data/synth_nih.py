"""Synthetic NIH ChestX-ray14 folder in the real format (shared/notes/formats.md section 8), seeded.

``Data_Entry_2017_v2020.csv`` with the exact real header, ``images/*.png`` carrying the same planted sex effect as
the synthetic CheXpert images (NIH has no race), and patient-disjoint ``train_val_list.txt`` / ``test_list.txt``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import polars as pl

from engine.data import synth_images as img
from engine.data.io import atomic_path, write_json
from engine.data.staging import staging_dir
from engine.data.synth import MANIFEST_FILE

NIH_HEADER = (  # exactly as the real file: the bracketed names hold unquoted commas (formats.md section 8)
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
NIH_FINDINGS: Mapping[str, float] = MappingProxyType(
    {  # share of images with each finding in the real v2020 file (counts / 112,120; shared/realdata SOURCE.md)
        "Atelectasis": 0.103, "Cardiomegaly": 0.025, "Consolidation": 0.042, "Edema": 0.021, "Effusion": 0.119,
        "Emphysema": 0.022, "Fibrosis": 0.015, "Hernia": 0.002, "Infiltration": 0.177, "Mass": 0.052,
        "Nodule": 0.056, "Pleural_Thickening": 0.03, "Pneumonia": 0.013, "Pneumothorax": 0.047,
    }
)
NIH_GEOMETRY: tuple[tuple[str, str, str], ...] = (  # (width, height, pixel spacing) as printed in the real file
    ("2500", "2048", "0.168"), ("2992", "2991", "0.14300000000000002"), ("3056", "2544", "0.139"),
    ("2048", "2500", "0.171"), ("2021", "2021", "0.19431099999999998"),
)
NIH_MALE_SHARE, NIH_PA_SHARE, NIH_FOLLOWUP_MEAN, NIH_TEST_PATIENT_SHARE = 0.565, 0.6, 2.6, 0.25


def write_synthetic_nih(
    out_dir: Path, *, n_images: int = 500, seed: int = 0, image_size: int = 64, force: bool = False
) -> dict[str, Path]:
    """Write an NIH ChestX-ray14 look-alike: Data_Entry_2017_v2020.csv, images/*.png and the two split lists."""
    if not 10 <= n_images <= 1_000_000 or image_size < 16:
        raise ValueError(f"need 10 <= n_images <= 1000000 and image_size >= 16, got {n_images}, {image_size}")
    out_dir = Path(out_dir)
    with staging_dir(out_dir, force=force, marker=MANIFEST_FILE) as tmp:
        rng = np.random.default_rng([seed, 10])
        table, present = _nih_table(rng, n_images)
        with atomic_path(tmp / "Data_Entry_2017_v2020.csv") as path:
            path.write_text("\n".join([NIH_HEADER, *table["line"].to_list()]) + "\n")
        test_patients = _nih_test_patients(rng, table["patient"].unique().sort().to_numpy())
        is_test = table["patient"].is_in(test_patients.tolist())
        for name, rows in (("train_val_list.txt", table.filter(~is_test)), ("test_list.txt", table.filter(is_test))):
            with atomic_path(tmp / name) as path:
                path.write_text("".join(f"{image}\n" for image in rows["image"].to_list()))
        scale = img.subgroup_scale(["Male" if g == "M" else "Female" for g in table["gender"]], [None] * n_images)
        patterns = img.pattern_stack(list(NIH_FINDINGS), image_size, image_size)
        img.write_images([tmp / "images" / name for name in table["image"].to_list()], present * scale[:, None],
                         np.zeros(n_images, dtype=bool), patterns, np.random.default_rng([seed, 11]))
        write_json(_nih_manifest(seed, n_images, image_size, table, present, int(is_test.sum())), tmp / MANIFEST_FILE)
    return {
        "data_entry": out_dir / "Data_Entry_2017_v2020.csv", "image_dir": out_dir / "images",
        "train_val_list": out_dir / "train_val_list.txt", "test_list": out_dir / "test_list.txt",
        "manifest": out_dir / MANIFEST_FILE,
    }


def _nih_table(rng: np.random.Generator, n_images: int) -> tuple[pl.DataFrame, np.ndarray]:
    """Rows in image-name order with each row's CSV line, and the (N, 14) 0/1 finding matrix."""
    counts = 1 + rng.poisson(NIH_FOLLOWUP_MEAN, n_images)  # enough patients for n_images in every case
    patient = np.repeat(np.arange(1, n_images + 1), counts)[:n_images]
    followup = np.arange(n_images) - np.searchsorted(patient, patient)  # position within the patient's run
    base_age = np.clip(np.rint(rng.normal(47.0, 17.0, n_images + 1)), 1, 90).astype(np.int64)
    present = (rng.random((n_images, len(NIH_FINDINGS))) < np.array(list(NIH_FINDINGS.values()))).astype(np.float64)
    names = np.array(list(NIH_FINDINGS))  # alphabetical, as the real file lists co-occurring findings
    labels = ["|".join(names[row > 0]) or "No Finding" for row in present]
    geometry = [NIH_GEOMETRY[i] for i in rng.integers(0, len(NIH_GEOMETRY), n_images)]
    gender = np.where(rng.random(n_images + 1) < NIH_MALE_SHARE, "M", "F")[patient]
    table = pl.DataFrame({
        "image": [f"{p:08d}_{f:03d}.png" for p, f in zip(patient, followup, strict=False)], "labels": labels,
        "followup": followup, "patient": patient, "age": np.minimum(base_age[patient] + followup // 3, 95),
        "gender": gender, "view": np.where(rng.random(n_images) < NIH_PA_SHARE, "PA", "AP"),
        "geometry": [",".join((w, h, s, s)) for w, h, s in geometry],
    })
    line = pl.concat_str([pl.col(c).cast(pl.String) for c in table.columns], separator=",")
    return table.with_columns(line=line), present


def _nih_test_patients(rng: np.random.Generator, patients: np.ndarray) -> np.ndarray:
    """Patient-level test split (the official lists are patient-disjoint); at least one patient each side."""
    n_test = min(max(1, round(NIH_TEST_PATIENT_SHARE * len(patients))), len(patients) - 1)
    return np.sort(rng.permutation(patients)[:n_test])


def _nih_manifest(
    seed: int, n_images: int, image_size: int, table: pl.DataFrame, present: np.ndarray, n_test: int
) -> dict[str, object]:
    """synthetic.json for the NIH folder: marker, parameters, planted effects and counts."""
    return {
        "synthetic": True, "format": "NIH ChestX-ray14 (Data_Entry_2017_v2020)",
        "generator": f"{__name__}.write_synthetic_nih", "seed": seed, "n_images": n_images,
        "image_size": [image_size, image_size], "planted_effects": img.planted_effects(),
        "finding_shares": dict(NIH_FINDINGS), "male_share": NIH_MALE_SHARE, "pa_share": NIH_PA_SHARE,
        "followup_mean": NIH_FOLLOWUP_MEAN, "test_patient_share": NIH_TEST_PATIENT_SHARE,
        "counts": {"images": n_images, "patients": table["patient"].n_unique(), "test_images": n_test,
                   "no_finding": int((present.sum(axis=1) == 0).sum()),
                   "findings": dict(zip(NIH_FINDINGS, present.sum(axis=0).astype(int).tolist(), strict=False))},
    }
