"""The results-store contract (docs/results-store.md): layout, columns, run.json fields and allowed values.

    <store>/cohort.parquet                      one row per image: image_id, patient_id, split, attributes...
    <store>/subsets.parquet                     optional evaluation sets: (set, pathology, image_id, weight)
    <store>/runs/<run_id>/predictions.parquet   long: split, image_id, pathology, y_true, y_score[, weight]
    <store>/runs/<run_id>/run.json              run-level facts (RUN_FIELDS)
"""

from __future__ import annotations

from engine.data.schema import PATHOLOGIES

COHORT_FILE = "cohort.parquet"
SUBSETS_FILE = "subsets.parquet"
RUNS_DIR = "runs"
PREDICTIONS_FILE = "predictions.parquet"
RUN_FILE = "run.json"

# Cohort columns that are never attributes (ids, provenance, raw labels are numeric and skipped by type).
COHORT_REQUIRED = ("image_id", "patient_id", "split")
NON_ATTRIBUTE_COLUMNS = frozenset({
    "image_id", "patient_id", "study_id", "split", "dataset", "source_row", "view", "position", "excluded_reason",
    "age", "ethnicity",
})
DEFAULT_ATTRIBUTES = ("sex", "race", "age_bin")
ALL_ATTRIBUTE = "all"  # attribute and subgroup name of the whole population
INTERSECTION_SEPARATOR = " x "  # "sex x race" attribute, "Female x Black" subgroup

# predictions.parquet (long format). y_true: 0/1 under the evaluation label policy, null = not scored.
PREDICTION_COLUMNS = ("split", "image_id", "pathology", "y_true", "y_score")
OPTIONAL_PREDICTION_COLUMNS = ("weight",)
DEFAULT_PATHOLOGIES = PATHOLOGIES

SCORE_KINDS = ("probability", "logit", "score")
FINETUNE_MODES = ("finetune", "linear-probe")
BALANCING = ("standard", "balanced")
DOMAINS = ("natural", "medical", "none")

# run.json: every field, in order; the value type is noted. Unknown extra keys are kept under "extra".
RUN_FIELDS: dict[str, str] = {
    "run_id": "str",
    "model": "str (registry name, e.g. medical-mae)",
    "display_name": "str (e.g. 'MAE (M)')",
    "architecture": "str (e.g. vit_base_patch16_224, resnetv2_152x2_bit)",
    "architecture_family": "str (ViT / ResNet)",
    "pretraining_method": "str (mae, moco-v3, supervised, simclr, none)",
    "pretraining_type": "str (masked, contrastive, supervised, none)",
    "pretraining_data": "str (e.g. 'ImageNet-1K', 'ChestXray14 + CheXpert')",
    "domain": "natural | medical | none",
    "pretraining_epochs": "int | null",
    "pretraining_fraction": "float | null",
    "finetune_mode": "finetune | linear-probe",
    "balancing": "standard | balanced",
    "seed": "int | null",
    "score_kind": "probability | logit | score",
    "training_label_policy": "str | null",
    "evaluation_label_policy": "str",
    "input_size": "int | null",
    "normalisation": "str | null",
    "cohort_hash": "str | null",
    "config_hash": "str | null",
    "code_version": "str | null",
    "synthetic": "bool",
    "tags": "dict[str, str]",
}
