"""The synthetic CheXpert population model: demographic mixes and per-finding latent models.

Shares follow the paper (sex 59/41, race 78/15/7) and CheXpert's label statistics; the raw PRIMARY_RACE and
ETHNICITY spellings follow shared/notes/peers.md section 5a. Everything here is recorded in synthetic.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class FindingModel:
    """One finding's latent model: rates are shares of all studies; loadings weight the shared factors."""

    prevalence: float  # reported 1.0
    uncertain: float  # reported -1.0 (latent value just below the positive threshold)
    negative: float  # share of the remaining studies reported 0.0 rather than blank ("not mentioned")
    severity: float
    cardiac: float
    black_shift: float  # threshold lowered by this many SDs for Black patients (higher prevalence)


FINDING_MODELS: Mapping[str, FindingModel] = MappingProxyType(
    {
        "Enlarged Cardiomediastinum": FindingModel(0.05, 0.05, 0.08, 0.2, 0.5, 0.2),
        "Cardiomegaly": FindingModel(0.12, 0.035, 0.05, 0.1, 0.6, 0.3),
        "Lung Opacity": FindingModel(0.45, 0.025, 0.03, 0.35, 0.0, 0.0),
        "Lung Lesion": FindingModel(0.04, 0.01, 0.02, 0.05, 0.0, 0.15),
        "Edema": FindingModel(0.25, 0.06, 0.12, 0.3, 0.5, 0.2),
        "Consolidation": FindingModel(0.07, 0.12, 0.15, 0.3, 0.0, 0.0),
        "Pneumonia": FindingModel(0.03, 0.08, 0.02, 0.25, 0.0, 0.1),
        "Atelectasis": FindingModel(0.15, 0.15, 0.01, 0.3, 0.0, 0.0),
        "Pneumothorax": FindingModel(0.09, 0.015, 0.35, 0.1, 0.0, 0.0),
        "Pleural Effusion": FindingModel(0.38, 0.05, 0.2, 0.3, 0.4, 0.0),
        "Pleural Other": FindingModel(0.015, 0.01, 0.01, 0.05, 0.0, 0.15),
        "Fracture": FindingModel(0.04, 0.005, 0.02, 0.05, 0.0, 0.0),
        "Support Devices": FindingModel(0.50, 0.005, 0.03, 0.35, 0.0, 0.0),
    }
)
AGE_SEVERITY_SLOPE = 0.012  # SDs of severity per year of age above 60
PATIENT_SEVERITY_SHARE = 0.3  # share of severity variance that is the patient's (chronic findings persist)

MALE_SHARE = 0.59  # paper: CheXpert sex split 59/41
RACE_MIX: Mapping[str, float] = MappingProxyType({"White": 0.78, "Asian": 0.15, "Black": 0.07})  # paper 78/15/7
RACE_VARIANTS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {  # raw PRIMARY_RACE spellings (peers.md 5a step 3)
        "White": {"White": 0.5, "White, non-Hispanic": 0.2, "White or Caucasian": 0.3},
        "Asian": {"Asian": 0.6, "Asian, non-Hispanic": 0.25, "Asian - Historical Conv": 0.15},
        "Black": {"Black or African American": 0.75, "Black, non-Hispanic": 0.25},
    }
)
DROPPED_RACE_SHARE = 0.04
DROPPED_RACES: tuple[str, ...] = (
    "Other", "Unknown", "Race and Ethnicity Unknown", "Native Hawaiian or Other Pacific Islander",
    "American Indian or Alaska Native", "Patient Refused",
)
ETHNICITY_MIX: Mapping[str, float] = MappingProxyType(
    {"Non-Hispanic/Non-Latino": 0.66, "Not Hispanic": 0.28, "Hispanic/Latino": 0.035, "Unknown": 0.018,
     "Patient Refused": 0.007}
)
VALID_PATIENT_SHARE = 0.02  # valid.csv patients, on top of n_patients (real: 200 patients, 234 images)
EXTRA_DEMO_SHARE = 0.01  # demographics rows of patients absent from both CSVs (the real sheet has such rows)
STUDIES_EXTRA_MEAN = 0.6  # studies per patient = 1 + Poisson(this)
LATERAL_SHARE, LATERAL_ONLY_SHARE = 0.3, 0.03
POSITION_MIX: Mapping[str, float] = MappingProxyType({"AP": 0.797, "PA": 0.2, "LL": 0.0015, "RL": 0.0015})
SPLIT_FRACTIONS: Mapping[str, float] = MappingProxyType({"train": 0.6, "validate": 0.1, "test": 0.3})
