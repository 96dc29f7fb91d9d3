"""Pure table shaping for the pages (polars in, polars out; no Streamlit): run labels, overview rows, published
values, pathology gaps and cohort composition. Chart builders (dashboard/charts.py) draw what these return.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import polars as pl

from dashboard.style import MODEL_ORDER
from engine.data.schema import PATHOLOGIES
from engine.metrics.analysis import select_runs
from engine.metrics.store_schema import INTERSECTION_SEPARATOR

REFERENCE_CSV = Path(__file__).resolve().parents[1] / "data" / "paper_reference.csv"
UNDEFINED = "undefined"
ONE_CLASS = "one-class subgroup (no positives or no negatives)"
GROUPINGS = {"domain": "domain", "architecture family": "architecture_family", "pre-training type": "pretraining_type",
             "pre-training method": "pretraining_method"}
ENSEMBLE_GROUP = "ensemble"
GROUP_ORDER = ("natural", "medical", "ViT", "ResNet", "supervised", "masked", "contrastive", ENSEMBLE_GROUP)
AUC_PANEL = "Mean AUC"
DISTINGUISHING = ("balancing", "finetune_mode", "seed")  # what tells runs of one display name apart
DEFAULTS = {"balancing": "standard", "finetune_mode": "finetune"}  # left out of labels
PUBLISHED_TABLES = ("Table 3", "Table 6")  # the paper's tables whose rows can match Overview runs


def score_panel(attribute: str) -> str:
    """Overview panel title of an attribute's fairness score ("sex x race" -> "Sex × race fairness score")."""
    return f"{attribute.replace(INTERSECTION_SEPARATOR, ' × ')} fairness score".capitalize()


def in_order(frame: pl.DataFrame, column: str, order: Sequence[str]) -> pl.DataFrame:
    """Rows sorted by ``column`` in the given order (others last), keeping the order within a value."""
    rank = {value: i for i, value in enumerate(order)}
    return frame.sort(pl.col(column).replace_strict(rank, default=len(rank), return_dtype=pl.Int64),
                      maintain_order=True)


def run_labels(runs: pl.DataFrame, run_ids: Sequence[str]) -> dict[str, str]:
    """A unique, short label per run: its display name (run id when absent); runs sharing a name get what tells
    them apart ("MAE", "MAE · balanced", "MAE · linear-probe", "MAE · seed 1"), the run id as a last resort.
    Names that are not store runs (ensembles) label themselves."""
    info = {row["run_id"]: row for row in runs.iter_rows(named=True)}
    labels = {r: (info[r].get("display_name") or r) if r in info else r for r in run_ids}
    for label, count in Counter(labels.values()).items():
        members = [r for r in run_ids if labels[r] == label and r in info]
        if count < 2 or len(members) < 2:
            continue
        for r in members:
            parts = [label]
            for field in DISTINGUISHING:
                value = info[r].get(field)
                if len({info[m].get(field) for m in members}) > 1 and value not in (None, DEFAULTS.get(field)):
                    parts.append(f"seed {value}" if field == "seed" else str(value))
            labels[r] = " · ".join(parts)
    repeated = {label for label, count in Counter(labels.values()).items() if count > 1}
    return {r: f"{label} · {r}" if label in repeated and label != r else label for r, label in labels.items()}


def run_facts(runs: pl.DataFrame, run_ids: Sequence[str]) -> pl.DataFrame:
    """run_id, label, colour_key, scratch, kind and the grouping columns of each shown run (ensembles included)."""
    labels = run_labels(runs, run_ids)
    known = runs.filter(pl.col("run_id").is_in(list(run_ids)))
    models = known["model"].to_list()
    rows = []
    for run_id in run_ids:
        match = known.filter(pl.col("run_id") == run_id)
        if match.height:
            info = match.row(0, named=True)
            scratch = "none" in (info["pretraining_method"], info["domain"])
            colour = info["model"] if models.count(info["model"]) == 1 else run_id
            groups = {col: info[col] or "unknown" for col in GROUPINGS.values()}
            rows.append({"run_id": run_id, "label": labels[run_id], "colour_key": colour, "scratch": scratch,
                         "kind": "run", **groups})
        else:
            rows.append({"run_id": run_id, "label": labels[run_id], "colour_key": run_id, "scratch": False,
                         "kind": "ensemble", **dict.fromkeys(GROUPINGS.values(), ENSEMBLE_GROUP)})
    schema = {"run_id": pl.String, "label": pl.String, "colour_key": pl.String, "scratch": pl.Boolean,
              "kind": pl.String, **dict.fromkeys(GROUPINGS.values(), pl.String)}
    return pl.DataFrame(rows, schema=schema)


def overview_rows(summary: pl.DataFrame, facts: pl.DataFrame, *, group_by: str,
                  attributes: Sequence[str] = ()) -> pl.DataFrame:
    """Tidy rows for the Overview chart: one per (run, panel) with value, CI and why a value is undefined; panels
    in the order of ``attributes``, bars grouped (natural before medical, ensembles last) in the paper's order."""
    ci = "mean_auc_pts_ci_low" in summary.columns
    auc = summary.unique("run_id", keep="first", maintain_order=True).select(
        "run_id", pl.lit(AUC_PANEL).alias("panel"), pl.lit("all").alias("attribute"),
        pl.col("mean_auc_pts").alias("value"),
        (pl.col("mean_auc_pts_ci_low") if ci else pl.lit(None, pl.Float64)).alias("ci_low"),
        (pl.col("mean_auc_pts_ci_high") if ci else pl.lit(None, pl.Float64)).alias("ci_high"),
        pl.when(pl.col("mean_auc_pts").is_null()).then(pl.lit(f"a pathology has a {ONE_CLASS}")).alias("reason"))
    scores = summary.select(
        "run_id", pl.col("attribute").map_elements(score_panel, return_dtype=pl.String).alias("panel"), "attribute",
        pl.col("fairness_score_pts").alias("value"),
        (pl.col("fairness_score_pts_ci_low") if ci else pl.lit(None, pl.Float64)).alias("ci_low"),
        (pl.col("fairness_score_pts_ci_high") if ci else pl.lit(None, pl.Float64)).alias("ci_high"),
        pl.when(pl.col("fairness_score_pts").is_null()).then(pl.lit(f"fewer than two defined subgroups ({ONE_CLASS})"))
        .when(pl.col("n_subgroups_undefined") > 0)
        .then(pl.format("{} undefined subgroup(s) left out of the gap", "n_subgroups_undefined")).alias("reason"))
    rows = pl.concat([auc, in_order(scores, "attribute", attributes)])
    panels = rows["panel"].unique(maintain_order=True).to_list()
    rows = rows.join(facts, on="run_id", how="left", maintain_order="left")
    rows = rows.with_columns(pl.col(GROUPINGS[group_by]).alias("group"))
    groups = sorted(set(rows["group"].drop_nulls().to_list()),
                    key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER) - 1, g))
    rows = in_order(in_order(rows, "colour_key", MODEL_ORDER), "group", groups)
    return in_order(rows, "panel", panels).select(
        "run_id", "label", "group", "colour_key", "scratch", "panel", "attribute", "value", "ci_low", "ci_high",
        "reason")


@cache
def paper_reference() -> pl.DataFrame:
    """data/paper_reference.csv: the numbers the paper prints (Tables 2-6)."""
    return pl.read_csv(REFERENCE_CSV, schema_overrides={"value": pl.Float64})


def published_rows(reference: pl.DataFrame, runs: pl.DataFrame, summary: pl.DataFrame) -> pl.DataFrame:
    """Published values of Tables 3 and 6 beside the reproduced ones, for the runs of ``summary``.

    Table 3 rows match an ensemble of that name (standard fine-tuning), Table 6 rows a run whose run.json fields
    match the selector with standard balancing. Gaps become markers on the fairness-score axis as C - gap.
    """
    shown = summary["run_id"].unique(maintain_order=True).to_list()
    standard = runs.filter(pl.col("balancing").fill_null("standard") == "standard")
    out = []
    for row in reference.filter(pl.col("table").is_in(PUBLISHED_TABLES)).iter_rows(named=True):
        key, _, value = row["selector"].partition("=")
        matched = [value] if key == "ensemble" else select_runs(standard, row["selector"])
        attribute = row["metric"].removeprefix("fairness_gap_") if row["metric"] != "mean_auc" else "all"
        for run_id in (r for r in matched if r in shown):
            mine = summary.filter((pl.col("run_id") == run_id)
                                  & ((pl.col("attribute") == attribute) | pl.lit(attribute == "all")))
            if not mine.height:
                continue
            info = mine.row(0, named=True)
            reproduced = info["mean_auc_pts"] if attribute == "all" else info["fairness_gap_pts"]
            if attribute == "all":
                marker = row["value"]
            else:  # C is undefined when no compared run has a defined gap: no place for the marker on that axis
                marker = None if info["c_pts"] is None else info["c_pts"] - row["value"]
            out.append({"table": row["table"], "row": row["row"], "run_id": run_id, "metric": row["metric"],
                        "published": row["value"], "reproduced": reproduced,
                        "panel": AUC_PANEL if attribute == "all" else score_panel(attribute), "marker": marker})
    schema = {"table": pl.String, "row": pl.String, "run_id": pl.String, "metric": pl.String,
              "published": pl.Float64, "reproduced": pl.Float64, "panel": pl.String, "marker": pl.Float64}
    return pl.DataFrame(out, schema=schema)


def models_table(runs: pl.DataFrame) -> pl.DataFrame:
    """Table 1 of the paper for the store: one row per model with its pre-training facts and number of runs."""
    columns = {"display_name": "Model", "architecture": "Architecture", "pretraining_method": "Pre-training method",
               "pretraining_type": "Type", "pretraining_data": "Pre-training data", "domain": "Domain"}
    named = runs.with_columns(pl.coalesce("display_name", "model").alias("display_name"))
    grouped = named.group_by("model", "display_name", maintain_order=True).agg(
        *(pl.col(c).first() for c in columns if c != "display_name"), pl.len().alias("Runs"))
    return grouped.select(*(pl.col(c).alias(name) for c, name in columns.items()), "Runs")


def with_labels(frame: pl.DataFrame, facts: pl.DataFrame) -> pl.DataFrame:
    """Add label and colour_key to a metrics frame keyed by run_id."""
    return frame.join(facts.select("run_id", "label", "colour_key"), on="run_id", how="left", maintain_order="left")


def change_notes(change: pl.DataFrame) -> pl.DataFrame:
    """relative_change rows with a note saying why a change is undefined (a null AUC), never a 0."""
    return change.with_columns(
        pl.when(pl.col("change").is_null() & (pl.col("pathology") == "mean"))
        .then(pl.lit(f"{UNDEFINED}: a pathology has a {ONE_CLASS}"))
        .when(pl.col("change").is_null()).then(pl.lit(f"{UNDEFINED}: {ONE_CLASS}")).alias("note"))


def pathology_gaps(change: pl.DataFrame) -> pl.DataFrame:
    """Per pathology: the gap (max - min subgroup AUC, points) of each run averaged over runs; undefined when a
    subgroup's AUC is. Sorted from fairest (smallest gap) to least fair."""
    per_run = change.filter(pl.col("pathology") != "mean").group_by("run_id", "pathology").agg(
        ((pl.col("auc").max() - pl.col("auc").min()) * 100).alias("gap_pts"),
        pl.col("auc").is_null().any().alias("undefined"))
    per_run = per_run.with_columns(pl.when(pl.col("undefined")).then(None).otherwise("gap_pts").alias("gap_pts"))
    gaps = per_run.group_by("pathology").agg(pl.col("gap_pts").mean(), pl.col("gap_pts").null_count().alias(
        "runs_undefined"), pl.len().alias("runs"))
    return gaps.sort("gap_pts", "pathology", nulls_last=True)


def fairest_and_least_fair(gaps: pl.DataFrame) -> tuple[str | None, str | None]:
    """The pathologies with the smallest and the largest defined gap."""
    defined = gaps.filter(pl.col("gap_pts").is_not_null()).sort("gap_pts")
    if not defined.height:
        return None, None
    return defined["pathology"][0], defined["pathology"][-1]


def subgroup_of(attribute: str) -> pl.Expr:
    """The subgroup of each cohort row for an attribute or an intersection ("sex x race" -> "Female x Black")."""
    parts = attribute.split(INTERSECTION_SEPARATOR)
    if len(parts) == 1:
        return pl.col(attribute).cast(pl.String).alias("subgroup")
    return pl.concat_str([pl.col(p).cast(pl.String) for p in parts], separator=INTERSECTION_SEPARATOR).alias("subgroup")


def _set_rows(cohort: pl.DataFrame, eval_sets: pl.DataFrame | None, name: str) -> pl.DataFrame:
    """(image_id, pathology [null = every pathology], weight) of one evaluation set: a split or a subsets set."""
    if name in set(cohort["split"].unique().to_list()):
        return cohort.filter(pl.col("split") == name).select(
            "image_id", pl.lit(None, pl.String).alias("pathology"), pl.lit(1.0).alias("weight"))
    if eval_sets is None:
        return pl.DataFrame(schema={"image_id": pl.String, "pathology": pl.String, "weight": pl.Float64})
    return eval_sets.filter(pl.col("set") == name).select("image_id", "pathology", "weight")


def set_names(cohort: pl.DataFrame, eval_sets: pl.DataFrame | None) -> list[str]:
    splits = sorted(cohort["split"].unique().to_list())
    return splits + ([] if eval_sets is None else sorted(eval_sets["set"].unique().to_list()))


def cohort_composition(cohort: pl.DataFrame, eval_sets: pl.DataFrame | None, *, attribute: str,
                       pathology: str) -> pl.DataFrame:
    """Per evaluation set and subgroup: distinct images, weighted images (draws), patients and share (%).

    Sets made per pathology (Glocker's resampled test sets) are read for ``pathology``. Counts only: no ids."""
    people = cohort.select("image_id", "patient_id", subgroup_of(attribute))
    parts = []
    for name in set_names(cohort, eval_sets):
        rows = _set_rows(cohort, eval_sets, name)
        rows = rows.filter(pl.col("pathology").is_null() | (pl.col("pathology") == pathology))
        joined = rows.join(people, on="image_id", how="inner")
        parts.append(joined.group_by("subgroup").agg(
            pl.col("image_id").n_unique().alias("images"), pl.col("weight").sum().alias("weighted_images"),
            pl.col("patient_id").n_unique().alias("patients")).with_columns(eval_set=pl.lit(name)))
    table = pl.concat(parts) if parts else pl.DataFrame(schema={"subgroup": pl.String})
    if not table.height:
        return table
    table = table.with_columns(
        (100 * pl.col("weighted_images") / pl.col("weighted_images").sum().over("eval_set")).alias("share_pct"))
    return table.select("eval_set", "subgroup", "images", "weighted_images", "patients", "share_pct").sort(
        "eval_set", "subgroup", nulls_last=True)


def cohort_prevalence(cohort: pl.DataFrame, eval_sets: pl.DataFrame | None, *, attribute: str,
                      eval_set: str) -> pl.DataFrame:
    """Weighted prevalence (%) of each pathology per subgroup and overall ("all") in one evaluation set; a raw
    label of 1 is positive (u-zeros). Empty when the cohort holds no raw labels."""
    labels = [p for p in PATHOLOGIES if p in cohort.columns]
    if not labels:
        return pl.DataFrame(schema={"pathology": pl.String, "subgroup": pl.String, "n": pl.Float64,
                                    "prevalence_pct": pl.Float64})
    long = cohort.select("image_id", subgroup_of(attribute), *labels).unpivot(
        index=["image_id", "subgroup"], on=labels, variable_name="pathology", value_name="raw")
    rows = _set_rows(cohort, eval_sets, eval_set)
    every = rows.filter(pl.col("pathology").is_null()).drop("pathology").join(long, on="image_id")
    specific = rows.filter(pl.col("pathology").is_not_null()).join(long, on=["image_id", "pathology"])
    scored = pl.concat([every.select(long.columns + ["weight"]), specific.select(long.columns + ["weight"])])
    both = pl.concat([scored, scored.with_columns(subgroup=pl.lit("all"))])
    table = both.group_by("pathology", "subgroup").agg(
        pl.col("weight").sum().alias("n"),
        (100 * (pl.col("weight") * (pl.col("raw") == 1).fill_null(False)).sum() / pl.col("weight").sum())
        .alias("prevalence_pct"))
    order = {p: i for i, p in enumerate(PATHOLOGIES)}
    return table.sort(pl.col("pathology").replace_strict(order, default=99), "subgroup", nulls_last=True)


def is_synthetic(store: str, runs: pl.DataFrame) -> bool:
    """store.json says synthetic, or any run.json does."""
    marker = Path(store) / "store.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("synthetic") is True:
                return True
        except (json.JSONDecodeError, OSError, AttributeError):
            pass
    return bool(runs.height and "synthetic" in runs.columns and runs["synthetic"].fill_null(False).any())
