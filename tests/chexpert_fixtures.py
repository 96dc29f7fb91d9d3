"""Tiny hand-written CheXpert-format inputs for rule tests (each row chosen to exercise one rule)."""

from __future__ import annotations

import csv
from pathlib import Path

from engine.data.schema import CHEXPERT_TRAIN_COLUMNS, PATHOLOGIES

PREFIX = "CheXpert-v1.0-small/train"


def train_row(patient: int, study: int = 1, view: int = 1, *, lateral: bool = False, position: str = "AP",
              sex: str = "Male", age: str = "50", labels: dict[str, str] | None = None,
              prefix: str = PREFIX) -> dict[str, str]:
    """One train.csv row; labels default to blank, given as the CSV text ('1.0', '-1.0', ...)."""
    kind = "lateral" if lateral else "frontal"
    row = {
        "Path": f"{prefix}/patient{patient:05d}/study{study}/view{view}_{kind}.jpg",
        "Sex": sex,
        "Age": age,
        "Frontal/Lateral": "Lateral" if lateral else "Frontal",
        "AP/PA": "" if lateral else position,
    }
    row |= {p: "" for p in PATHOLOGIES}
    row |= labels or {}
    return row


def write_train_csv(path: Path, rows: list[dict[str, str]], columns: tuple[str, ...] = CHEXPERT_TRAIN_COLUMNS) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_demographics(path: Path, patients: dict[int, tuple[str, str]]) -> Path:
    """patients: number -> (PRIMARY_RACE, ETHNICITY); written as the CSV form of CHEXPERT DEMO.xlsx."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["PATIENT", "GENDER", "AGE_AT_CXR", "PRIMARY_RACE", "ETHNICITY"])
        for number, (race, ethnicity) in patients.items():
            writer.writerow([f"patient{number:05d}", "Male", "50", race, ethnicity])
    return path


def write_split(path: Path, assignment: dict[int, str]) -> Path:
    """Upstream split format: unnamed running number, index (0-based train.csv row), split."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", "index", "split"])
        for i, (index, split) in enumerate(sorted(assignment.items())):
            writer.writerow([i, index, split])
    return path
