"""The cohort report: composition and label prevalence per subgroup, plus a content hash of the cohort.

Prevalence is reported on the raw labels (share positive, uncertain, blank); label policies are applied later.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl

from engine.data.io import write_json
from engine.data.schema import PATHOLOGIES

REPORT_ATTRIBUTES: tuple[str, ...] = ("sex", "race", "age_bin")


def cohort_hash(cohort: pl.DataFrame) -> str:
    """SHA-256 of the cohort's content (rows sorted by image_id, CSV-serialised): stable across parquet writers."""
    text = cohort.sort("image_id").write_csv()
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def composition(cohort: pl.DataFrame) -> list[dict]:
    """Images and patients per split x sex x race."""
    table = (
        cohort.group_by("split", "sex", "race")
        .agg(pl.len().alias("images"), pl.col("patient_id").n_unique().alias("patients"))
        .sort("split", "sex", "race")
    )
    return table.to_dicts()


def split_totals(cohort: pl.DataFrame) -> dict[str, dict[str, int]]:
    """Images and patients per split."""
    table = cohort.group_by("split").agg(pl.len().alias("images"), pl.col("patient_id").n_unique().alias("patients"))
    rows = table.sort("split").to_dicts()
    return {row["split"]: {"images": row["images"], "patients": row["patients"]} for row in rows}


def prevalence(cohort: pl.DataFrame, attributes: tuple[str, ...] = REPORT_ATTRIBUTES) -> list[dict]:
    """Per split x attribute x subgroup x pathology: n, share positive (1), uncertain (-1) and blank (null).

    Rows with attribute ``all`` describe the whole split.
    """
    long = cohort.unpivot(index=["split", *attributes], on=list(PATHOLOGIES), variable_name="pathology",
                          value_name="label")
    frames = [long.with_columns(pl.lit("all").alias("attribute"), pl.lit("all").alias("subgroup"))]
    for attribute in attributes:
        frames.append(long.with_columns(pl.lit(attribute).alias("attribute"),
                                        pl.col(attribute).cast(pl.String).fill_null("(missing)").alias("subgroup")))
    stacked = pl.concat([f.select("split", "attribute", "subgroup", "pathology", "label") for f in frames])
    table = stacked.group_by("split", "attribute", "subgroup", "pathology").agg(
        pl.len().alias("n"),
        (pl.col("label") == 1.0).fill_null(False).mean().round(4).alias("positive"),
        (pl.col("label") == -1.0).fill_null(False).mean().round(4).alias("uncertain"),
        pl.col("label").is_null().mean().round(4).alias("blank"),
    )
    return table.sort("split", "attribute", "subgroup", "pathology").to_dicts()


def build_report(cohort: pl.DataFrame, provenance: dict) -> dict:
    """Assemble the whole report: provenance (sources, filters, checks) then composition and prevalence."""
    return {
        **provenance,
        "rows_out": cohort.height,
        "patients_out": cohort["patient_id"].n_unique(),
        "cohort_hash": cohort_hash(cohort),
        "label_values": "raw: 1 positive, 0 negative, -1 uncertain, null blank; policies are applied at "
                        "training and evaluation time (docs/protocol.md)",
        "splits": split_totals(cohort),
        "composition": composition(cohort),
        "prevalence": prevalence(cohort),
    }


def summary_lines(report: dict) -> list[str]:
    """A short human-readable summary for the terminal."""
    lines = []
    for name, block in report["filters"].items():
        lines.append(f"{name}: {block['rows_in']:,} rows in")
        for step in block["filters"]:
            lines.append(f"  - {step['step']:<12} removed {step['removed']:>8,}  ({step['reason']})")
        lines.append(f"  = {block['rows_out']:,} rows out")
    lines.append(f"cohort: {report['rows_out']:,} images, {report['patients_out']:,} patients")
    for split, totals in report["splits"].items():
        lines.append(f"  {split:<15} {totals['images']:>8,} images {totals['patients']:>7,} patients")
    by_group = pl.DataFrame(report["composition"]).group_by("sex", "race").agg(pl.col("images").sum())
    total = max(by_group["images"].sum(), 1)
    for attribute in ("sex", "race"):
        shares = by_group.group_by(attribute).agg(pl.col("images").sum()).sort(attribute)
        parts = ", ".join(f"{v} {100 * n / total:.1f}%" for v, n in shares.iter_rows())
        lines.append(f"  {attribute}: {parts}")
    return lines


def add_subsets_to_report(report_path: Path, summary: dict) -> None:
    """Record the subsets (parameters, balanced-set composition) in ``cohort_report.json``, when it exists."""
    if not report_path.is_file():
        return
    report = json.loads(report_path.read_text())
    balanced = [entry for entry in summary["sets"] if str(entry["set"]).startswith("balanced")]
    report["subsets"] = {"parameters": summary["parameters"], "does_not_balance": summary["does_not_balance"],
                         "balanced_sets": balanced, "outputs": summary["outputs"]}
    write_json(report, report_path)
