"""The cohort schema, declared once: pathologies, label values, demographic mappings, age bins.

Sources: CheXpert ``train.csv`` column order (shared/notes/formats.md section 9); race and ethnicity rules of
Gichoya et al. 2022 as reused by Glocker et al. 2022 (shared/notes/peers.md section 5a); age bins of the
chexploration resampling notebook (peers.md section 5c).
"""

from __future__ import annotations

# The 14 CheXpert observations, in train.csv column order.
PATHOLOGIES: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

# The five pathologies the paper's Figures 5 and 6 focus on.
PAPER_FIGURE_PATHOLOGIES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)

# Raw label values in CheXpert CSVs: positive, negative, uncertain; blank is read as null.
RAW_LABEL_VALUES: frozenset[float] = frozenset({1.0, 0.0, -1.0})

CHEXPERT_VIEW_COLUMNS: tuple[str, ...] = ("Frontal/Lateral", "AP/PA")
CHEXPERT_TRAIN_COLUMNS: tuple[str, ...] = ("Path", "Sex", "Age", *CHEXPERT_VIEW_COLUMNS, *PATHOLOGIES)
DEMOGRAPHICS_COLUMNS: tuple[str, ...] = ("PATIENT", "GENDER", "AGE_AT_CXR", "PRIMARY_RACE", "ETHNICITY")

# Path prefixes of the two CheXpert releases; image_id is the path without them, so both layouts match.
CHEXPERT_PATH_PREFIXES: tuple[str, ...] = ("CheXpert-v1.0-small/", "CheXpert-v1.0/")

# Race from PRIMARY_RACE by substring, applied in this order, a later match overwriting an earlier one
# (Gichoya et al. notebook; peers.md 5a step 3). Every other value is dropped.
RACE_SUBSTRINGS: tuple[tuple[str, str], ...] = (("Black", "Black"), ("White", "White"), ("Asian", "Asian"))
RACES: tuple[str, ...] = ("White", "Asian", "Black")

# ETHNICITY values kept (peers.md 5a step 4): non-Hispanic only.
ETHNICITIES_KEPT: frozenset[str] = frozenset({"Non-Hispanic/Non-Latino", "Not Hispanic"})

# Sex values of train.csv; "Unknown" occurs once in the real file.
SEXES: tuple[str, ...] = ("Male", "Female")
SEX_VALUES_ALLOWED: frozenset[str] = frozenset({"Male", "Female", "Unknown"})

# Frontal views with these positions are kept (peers.md 5a step 7 removes the 12 other frontal positions).
FRONTAL = "Frontal"
POSITIONS_KEPT: frozenset[str] = frozenset({"AP", "PA"})

# Age bins with upper edges <=20, <=30, ..., <=80, >80 (chexploration resampling notebook).
AGE_BIN_UPPER_EDGES: tuple[int, ...] = (20, 30, 40, 50, 60, 70, 80)
AGE_BIN_LABELS: tuple[str, ...] = ("0-20", "21-30", "31-40", "41-50", "51-60", "61-70", "71-80", "81+")

SPLITS: tuple[str, ...] = ("train", "validate", "test")
# The official CheXpert valid.csv, when added by prepare --valid-csv: an external check set, never trained on.
OFFICIAL_VALID_SPLIT = "official_valid"
COHORT_SPLITS: tuple[str, ...] = (*SPLITS, OFFICIAL_VALID_SPLIT)

# Cohort output columns (labels follow as raw 1 / 0 / -1 / null floats, one column per pathology).
COHORT_ID_COLUMNS: tuple[str, ...] = (
    "image_id",
    "patient_id",
    "study_id",
    "split",
    "sex",
    "race",
    "ethnicity",
    "age",
    "age_bin",
    "view",
    "position",
)


def age_bin(age: int | float | None) -> str | None:
    """Return the age-bin label for an age in years (None stays None)."""
    if age is None or age != age:  # NaN check without numpy
        return None
    for edge, label in zip(AGE_BIN_UPPER_EDGES, AGE_BIN_LABELS, strict=False):
        if age <= edge:
            return label
    return AGE_BIN_LABELS[-1]


def map_race(primary_race: str | None) -> str | None:
    """Map a raw PRIMARY_RACE value to White / Asian / Black, or None when it is to be dropped."""
    if primary_race is None:
        return None
    race = None
    for needle, value in RACE_SUBSTRINGS:
        if needle in primary_race:
            race = value
    return race
