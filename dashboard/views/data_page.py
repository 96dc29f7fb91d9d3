"""Data: which results store is open (chosen in the sidebar), its runs, and importing another model's predictions
(engine.metrics.importer) from an uploaded CSV or parquet file. Errors are shown as the importer words them, with
patient identifiers masked; the report shown holds counts only."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import polars as pl
import streamlit as st

from dashboard import data, widgets
from dashboard.context import current_filters
from engine.data.errors import DataError, OutputExistsError
from engine.data.labels import LABEL_POLICIES
from engine.metrics.importer import import_predictions
from engine.metrics.store_schema import SCORE_KINDS

LAST_IMPORT = "data.last_import"
AS_GIVEN = "as given (0 / 1)"
# CheXpert ("patient00001") and MIMIC-CXR ("p10000032") patient ids inside image paths
PATIENT_ID = re.compile(r"\b(patient)\d+|\b(p)\d{8}\b")


def mask_patients(text: str) -> str:
    """Hide patient identifiers that image paths carry."""
    return PATIENT_ID.sub(lambda m: f"{m.group(1) or m.group(2)}•••", text)


def run_import(upload, options: dict) -> None:
    """Write the upload to a temporary file, import it, keep the outcome for the next run (the sidebar then lists
    the new run)."""
    name = Path(upload.name).name
    suffix = ".parquet" if name.lower().endswith(".parquet") else ".csv"
    with tempfile.TemporaryDirectory(prefix="fmfair-upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(upload.getvalue())
        try:
            report = import_predictions(predictions=path, tags={"uploaded_file": name}, **options)
        except (DataError, OutputExistsError, FileExistsError, ValueError) as exc:
            message = mask_patients(str(exc).replace(str(path), name).replace(folder, ""))
            st.session_state[LAST_IMPORT] = {"error": message}
            return
    st.session_state[LAST_IMPORT] = {"report": {key: report[key] for key in (
        "run_id", "format", "rows_read", "rows_written", "distinct_image_ids", "label_policy", "score_kind",
        "rows_per_pathology", "removed", "duplicates", "cohort")}}
    st.rerun()


def show_outcome() -> None:
    outcome = st.session_state.get(LAST_IMPORT)
    if not outcome:
        return
    if "error" in outcome:
        st.error(f"Import failed:\n\n```\n{outcome['error']}\n```")
        return
    report = outcome["report"]
    st.success(f"Imported run **{report['run_id']}**: {report['rows_written']:,} rows, "
               f"{report['distinct_image_ids']:,} images ({report['format']} format, {report['score_kind']} scores, "
               f"labels {report['label_policy']}). It is now in the sidebar's Models list.")
    per = pl.DataFrame([{"pathology": p, **counts} for p, counts in report["rows_per_pathology"].items()])
    widgets.show_table(per, precision=0)
    removed = [f"{r['rule']}: {r['rows']} rows ({r['why']})" for r in report["removed"]]
    duplicates = report["duplicates"]
    st.caption("Removed: " + ("; ".join(removed) or "nothing") + f". Duplicates: {duplicates['duplicate_rows']} rows "
               f"({duplicates['mode']}), {duplicates['rows_merged']} merged. Cohort: "
               f"{mask_patients(str(report['cohort'].get('source', '')))}.")


f = current_filters()
st.title("Data: results store and imports")
st.markdown(f"Open store: `{f.store}` (change it in the sidebar's *Results store* field; the URL keeps it).")
if data.is_store(f.store):
    runs = data.runs_table(f.store, f.fingerprint)
    st.caption(f"{runs.height} run(s); cohort of {data.cohort(f.store, f.fingerprint).height:,} images.")
    widgets.show_table(runs.select("run_id", "display_name", "model", "finetune_mode", "balancing", "score_kind",
                                   "evaluation_label_policy", "synthetic"))
else:
    widgets.empty_state(f.store)

st.header("Import predictions")
st.markdown("Long files have columns `split, image_id, pathology, y_true, y_score[, weight]`; wide files one score "
            "and one label column per pathology, named by patterns such as `Logit - {pathology}`. Image ids must be "
            "in the store's cohort, or give attribute columns to build the cohort from the file. Files up to the "
            "upload limit of `.streamlit/config.toml` (`maxUploadSize`, 200 MB); larger ones: `python "
            "run_experiments.py import`.")
upload = st.file_uploader("Predictions file", type=["csv", "parquet"], key="data.upload")
left, right = st.columns(2)
run_id = left.text_input("Run id (folder name)", key="data.run_id", placeholder="e.g. my-model-s0")
display_name = right.text_input("Display name (optional)", key="data.display_name")
wide = left.radio("Format", ["long", "wide"], horizontal=True, key="data.format") == "wide"
score_pattern = right.text_input("Score column pattern (wide)", placeholder="Logit - {pathology}",
                                 key="data.score_pattern", disabled=not wide)
label_pattern = right.text_input("Label column pattern (wide)", placeholder="Label - {pathology}",
                                 key="data.label_pattern", disabled=not wide)
id_column = left.text_input("Image id column", value="image_id", key="data.id_column")
split_column = left.text_input("Split column (blank: every row is the default split)", value="split",
                               key="data.split_column")
default_split = left.selectbox("Default split", ["test", "validate"], key="data.default_split")
score_kind = right.selectbox("Score kind", SCORE_KINDS, index=SCORE_KINDS.index("score"), key="data.score_kind",
                             help="Say 'probability' only for scores on a 0-1 probability scale.")
policy = right.selectbox("Label policy", [AS_GIVEN, *LABEL_POLICIES], key="data.label_policy",
                         help="Raw CheXpert labels (1 / 0 / -1 / blank) need a policy; 0 / 1 labels do not.")
attributes = left.text_input("Attribute columns (only when the store has no cohort for these images)",
                             placeholder="sex,race", key="data.attributes")
duplicates = right.radio("Duplicate rows", ["error", "weight"], horizontal=True, key="data.duplicates")
force = right.checkbox("Replace a run with this id", key="data.force")

if st.button("Import", type="primary", key="data.import"):
    if upload is None or not run_id.strip():
        st.session_state[LAST_IMPORT] = {"error": "Choose a predictions file and a run id first."}
    else:
        run_import(upload, {
            "store": f.store, "run_id": run_id.strip(), "wide": wide,
            "score_pattern": (score_pattern.strip() or None) if wide else None,
            "label_pattern": (label_pattern.strip() or None) if wide else None,
            "id_column": id_column.strip() or "image_id", "split_column": split_column.strip() or None,
            "default_split": default_split, "score_kind": score_kind,
            "label_policy": None if policy == AS_GIVEN else policy,
            "attribute_columns": [a.strip() for a in attributes.split(",") if a.strip()] or None,
            "duplicates": duplicates, "force": force,
            "run_info": {"display_name": display_name.strip()} if display_name.strip() else None})
show_outcome()
