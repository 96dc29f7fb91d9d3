"""The only module that runs SQL: one function per file in ``engine/metrics/sql/`` (function name = file name).

``connect`` opens an in-memory DuckDB with views over a results store (or in-memory frames) and runs
``views.sql``. Every other function binds its values as parameters ($name) and returns a polars DataFrame whose
columns are those of docs/metrics-contract.md. Queries that read another query's result (``subgroup_mean_auc``
reads ``subgroup_auc``, ...) get it as a frame registered under that query's name on a fresh cursor, the way a
dbt model selects from ``ref()``. Definitions, units and null rules: docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from engine.data.errors import DataError
from engine.data.schema import PATHOLOGIES
from engine.metrics.store_schema import (
    ALL_ATTRIBUTE,
    COHORT_FILE,
    INTERSECTION_SEPARATOR,
    NON_ATTRIBUTE_COLUMNS,
    PREDICTIONS_FILE,
    RUNS_DIR,
    SUBSETS_FILE,
)

SQL_DIR = Path(__file__).resolve().parent / "sql"

ENSEMBLE_RULES = ("mean-probability", "mean-logit", "rank-average")
# Combined scores are rounded before ranking: averages of equal numbers taken in a different order can differ in
# the last bit and break ties that exist exactly (shared/notes/stack.md section 4, "Tie caveat").
ENSEMBLE_DECIMALS = 12
# mean-logit converts probabilities with logit(p), p clipped to [eps, 1 - eps] so 0 and 1 stay finite.
LOGIT_EPSILON = 1e-12
REFERENCES = ("population", "subgroup-mean")
UNITS = ("pts", "pct")
VALIDATION_SPLIT = "validate"

# The paper's Table 3 ensembles, as registry model names (docs/metrics.md "Ensembles").
PAPER_ENSEMBLES: dict[str, list[str]] = {
    "ViT (masked)": ["mae", "medical-mae"],
    "ViT (contrastive)": ["moco-v3", "medical-moco-v3"],
    "ResNet": ["bit", "remedis"],  # the paper's "ResNet (Contrastive)"; BiT is supervised
    "Natural imaging": ["mae", "moco-v3", "bit"],
    "Medical imaging": ["medical-mae", "medical-moco-v3", "remedis"],
    "All foundation models": ["mae", "medical-mae", "moco-v3", "medical-moco-v3", "bit", "remedis"],
}

_PREDICTION_SCHEMA = {"run_id": pl.String, "split": pl.String, "image_id": pl.String, "pathology": pl.String,
                      "y_true": pl.Float64, "y_score": pl.Float64, "weight": pl.Float64}
_SUBSET_SCHEMA = {"set": pl.String, "pathology": pl.String, "image_id": pl.String, "weight": pl.Float64}


@cache
def _sql(name: str) -> str:
    return (SQL_DIR / f"{name}.sql").read_text()


def _run(con: duckdb.DuckDBPyConnection, name: str, params: Mapping[str, Any],
         inputs: Mapping[str, pl.DataFrame] | None = None) -> pl.DataFrame:
    """Run ``sql/<name>.sql`` on a fresh cursor with ``inputs`` registered under their names; fetch it all."""
    cursor = con.cursor()
    try:
        for input_name, frame in (inputs or {}).items():
            cursor.register(input_name, frame)
        return cursor.sql(_sql(name), params=dict(params)).pl()
    finally:
        cursor.close()


# ---------------------------------------------------------------------------------------------------- connection


def _frame_relation(con: duckdb.DuckDBPyConnection, frame: pl.DataFrame) -> duckdb.DuckDBPyRelation:
    return con.from_arrow(frame.to_arrow())


def _prediction_relation(con: duckdb.DuckDBPyConnection, store: Path | None,
                         predictions: pl.DataFrame | None) -> duckdb.DuckDBPyRelation:
    if predictions is not None:
        return _frame_relation(con, predictions)
    runs_dir = store / RUNS_DIR if store is not None else None
    if runs_dir is not None and any(runs_dir.glob(f"*/{PREDICTIONS_FILE}")):
        # a glob, not a file list: runs written after connect() are seen by the next query
        return con.read_parquet(str(runs_dir / "*" / PREDICTIONS_FILE), filename=True, union_by_name=True)
    return _frame_relation(con, pl.DataFrame(schema=_PREDICTION_SCHEMA))


def _cohort_relations(con: duckdb.DuckDBPyConnection, store: Path | None,
                      cohort: pl.DataFrame | None) -> tuple[duckdb.DuckDBPyRelation, duckdb.DuckDBPyRelation]:
    """(image_id, patient_id, split) and (image_id, attribute columns as varchar, all) relations of the cohort."""
    if cohort is not None:
        relation = _frame_relation(con, cohort)
    elif store is not None and (store / COHORT_FILE).is_file():
        relation = con.read_parquet(str(store / COHORT_FILE))
    else:
        raise DataError("no cohort: pass cohort= or a store holding cohort.parquet", file=store)
    missing = {"image_id", "patient_id", "split"} - set(relation.columns)
    if missing:
        raise DataError(f"cohort lacks column(s) {sorted(missing)}", file=store)
    if ALL_ATTRIBUTE in relation.columns:
        raise DataError(f"cohort column {ALL_ATTRIBUTE!r} is reserved for the whole population", file=store)
    attributes = [column for column, kind in zip(relation.columns, relation.types, strict=True)
                  if kind.id in ("varchar", "enum") and column not in NON_ATTRIBUTE_COLUMNS]
    varchar = duckdb.sqltypes.VARCHAR
    ids = relation.select(duckdb.ColumnExpression("image_id").cast(varchar).alias("image_id"),
                          duckdb.ColumnExpression("patient_id").cast(varchar).alias("patient_id"),
                          duckdb.ColumnExpression("split").cast(varchar).alias("split"))
    attribute_columns = relation.select(
        duckdb.ColumnExpression("image_id").cast(varchar).alias("image_id"),
        *(duckdb.ColumnExpression(column).cast(varchar).alias(column) for column in attributes),
        duckdb.ConstantExpression(ALL_ATTRIBUTE).alias(ALL_ATTRIBUTE),
    )
    return ids, attribute_columns


def _subset_relation(con: duckdb.DuckDBPyConnection, store: Path | None,
                     eval_sets: pl.DataFrame | None) -> duckdb.DuckDBPyRelation:
    if eval_sets is not None:
        return _frame_relation(con, eval_sets)
    if store is not None and (store / SUBSETS_FILE).is_file():
        return con.read_parquet(str(store / SUBSETS_FILE))
    return _frame_relation(con, pl.DataFrame(schema=_SUBSET_SCHEMA))


def connect(store: Path | None = None, *, predictions: pl.DataFrame | None = None,
            cohort: pl.DataFrame | None = None, eval_sets: pl.DataFrame | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the views of ``views.sql`` over a store's parquet files or in-memory frames.

    A frame given replaces the store's file of the same role (``predictions`` must then carry ``run_id``;
    ``eval_sets`` has the columns of subsets.parquet). Attributes are the cohort's string columns outside
    ``store_schema.NON_ATTRIBUTE_COLUMNS``. Use ``con.cursor()`` per thread; every query here opens its own.
    """
    store = Path(store) if store is not None else None
    con = duckdb.connect()
    ids, attribute_columns = _cohort_relations(con, store, cohort)
    # views made from relations are visible to every cursor (con.register'ed frames would not be)
    _prediction_relation(con, store, predictions).create_view("source_predictions")
    ids.create_view("source_cohort")
    attribute_columns.create_view("source_attributes")
    _subset_relation(con, store, eval_sets).create_view("source_subsets")
    con.execute(_sql("views"))
    clashes = _run(con, "eval_sets", {}).group_by("eval_set").len().filter(pl.col("len") > 1)
    if clashes.height:
        raise DataError(f"subsets.parquet set names equal split names: {clashes['eval_set'].to_list()}", file=store)
    return con


# ---------------------------------------------------------------------------------------------------- catalogue


def attributes(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The cohort's attributes (string columns outside NON_ATTRIBUTE_COLUMNS) and "all"."""
    return _run(con, "attributes", {})["attribute"].to_list()


def eval_sets(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """eval_set, kind ("split" | "subset"), n_images: the names ``eval_set=`` accepts."""
    return _run(con, "eval_sets", {})


def runs(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """run_id, kind ("run" | "ensemble"), splits, n_rows: the names ``run_ids=`` accepts."""
    return _run(con, "runs", {})


# ---------------------------------------------------------------------------------------------------- arguments


def _names(values: str | Sequence[str], what: str) -> list[str]:
    """A non-empty list of distinct names, in the order given (one string is a list of one)."""
    names = [values] if isinstance(values, str) else list(values)
    if not names:
        raise ValueError(f"no {what} given")
    return list(dict.fromkeys(names))


def _attribute_list(con: duckdb.DuckDBPyConnection, requested: str | Sequence[str], *, with_all: bool) -> list[str]:
    """Requested attributes (intersections "a x b" allowed), checked against the cohort; "all" first if asked."""
    names = _names(requested, "attributes") if requested else []
    known = set(attributes(con))
    unknown = sorted({part for name in names for part in name.split(INTERSECTION_SEPARATOR)} - known)
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown}; the cohort has {sorted(known)}")
    if with_all:
        names = [ALL_ATTRIBUTE, *(name for name in names if name != ALL_ATTRIBUTE)]
    return names


def _pathology_list(pathologies: str | Sequence[str] | None) -> list[str] | None:
    return None if pathologies is None else _names(pathologies, "pathologies")


def _eval_set_name(con: duckdb.DuckDBPyConnection, eval_set: str) -> str:
    known = eval_sets(con)["eval_set"].to_list()
    if eval_set not in known:
        raise ValueError(f"unknown eval set {eval_set!r}; the store has {known}")
    return eval_set


def _scope(con: duckdb.DuckDBPyConnection, run_ids: str | Sequence[str], eval_set: str,
           attribute_names: str | Sequence[str], pathologies: str | Sequence[str] | None, *,
           with_all: bool) -> dict[str, Any]:
    """The bound parameters that choose rows: runs, eval set, attributes, pathologies, separator."""
    return {
        "run_ids": _names(run_ids, "run_ids"),
        "eval_set": _eval_set_name(con, eval_set),
        "attributes": _attribute_list(con, attribute_names, with_all=with_all),
        "pathologies": _pathology_list(pathologies),
        "separator": INTERSECTION_SEPARATOR,
    }


def _known_runs_only(con: duckdb.DuckDBPyConnection, requested: list[str], result: pl.DataFrame) -> pl.DataFrame:
    """Return ``result``; raise ValueError when a requested run is missing from it because it does not exist."""
    missing = set(requested) - set(result["run_id"].unique().to_list())
    unknown = sorted(missing - set(runs(con)["run_id"].to_list())) if missing else []
    if unknown:
        raise ValueError(f"unknown run_id(s) {unknown}; see queries.runs()")
    return result


# ---------------------------------------------------------------------------------------------------- AUC


def subgroup_auc(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str], eval_set: str = "test",
                 attributes: str | Sequence[str] = ("sex", "race"), pathologies: str | Sequence[str] | None = None,
                 min_count: int = 10) -> pl.DataFrame:
    """Weighted Mann-Whitney AUC (ties 1/2) per run, pathology, attribute and subgroup; attribute "all" included.

    Columns: run_id, eval_set, pathology, attribute, subgroup, n, n_pos, n_neg, w_pos, w_neg, auc (null when the
    subgroup has no positives or no negatives), auc_reason, small (n_pos or n_neg below ``min_count``).
    """
    params = _scope(con, run_ids, eval_set, attributes, pathologies, with_all=True)
    return _known_runs_only(con, params["run_ids"], _run(con, "subgroup_auc", {**params, "min_count": min_count}))


def scored_rows(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str], eval_set: str,
                attributes: str | Sequence[str], pathologies: str | Sequence[str] | None = None) -> pl.DataFrame:
    """The rows every AUC is computed from: run_id, pathology, image_id, patient_id, y_true, y_score, weight and
    one column per requested attribute (an intersection "sex x race" holds "Female x Black"; null = no value)."""
    params = _scope(con, run_ids, eval_set, attributes, pathologies, with_all=False)
    row_params = {k: params[k] for k in ("run_ids", "eval_set", "pathologies")}
    rows = _known_runs_only(con, params["run_ids"], _run(con, "scored_rows", row_params))
    images = _run(con, "image_attributes", {k: params[k] for k in ("attributes", "separator")})
    columns = [pl.col("subgroups").list.get(k, null_on_oob=True).alias(name)
               for k, name in enumerate(params["attributes"])]
    images = images.with_columns(columns).drop("subgroups")
    return rows.join(images, on="image_id", how="left", maintain_order="left")


def _mean_auc_of(con: duckdb.DuckDBPyConnection, auc: pl.DataFrame, pathologies: list[str]) -> pl.DataFrame:
    return _run(con, "subgroup_mean_auc", {"pathologies": pathologies}, {"subgroup_auc": auc})


def _auc_for_means(con: duckdb.DuckDBPyConnection, run_ids: list[str], eval_set: str,
                   attribute_names: str | Sequence[str], pathologies: str | Sequence[str] | None,
                   min_count: int, auc: pl.DataFrame | None = None) -> tuple[pl.DataFrame, list[str]]:
    """Subgroup AUCs of the pathologies a mean is over, and that list (default: the 14 that occur).

    ``auc``: a subgroup_auc table computed already (e.g. by the numpy fast path, tested equal to the SQL); it is
    restricted to ``run_ids`` and the chosen pathologies, and the aggregates below still run in SQL.
    """
    chosen = _pathology_list(pathologies)
    if auc is None:
        auc = subgroup_auc(con, run_ids=run_ids, eval_set=eval_set, attributes=attribute_names,
                           pathologies=chosen or list(PATHOLOGIES), min_count=min_count)
    else:
        auc = auc.filter(pl.col("run_id").is_in(run_ids) & pl.col("pathology").is_in(chosen or list(PATHOLOGIES)))
    if chosen is None:
        present = set(auc["pathology"].to_list())
        chosen = [pathology for pathology in PATHOLOGIES if pathology in present]
    if not chosen:
        raise ValueError(f"no scored rows of runs {run_ids} in eval set {eval_set!r}")
    return auc, chosen


def subgroup_mean_auc(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str], eval_set: str = "test",
                      attributes: str | Sequence[str] = ("sex", "race"),
                      pathologies: str | Sequence[str] | None = None, min_count: int = 10,
                      auc: pl.DataFrame | None = None) -> pl.DataFrame:
    """Mean AUC over the chosen pathologies (default: the 14 CheXpert ones that occur) per subgroup.

    Columns: run_id, eval_set, attribute, subgroup, mean_auc (null when any chosen pathology's AUC is undefined
    or has no rows in the subgroup), mean_auc_reason, n_pathologies (pathologies with a defined AUC).
    """
    auc, chosen = _auc_for_means(con, _names(run_ids, "run_ids"), eval_set, attributes, pathologies, min_count, auc)
    return _mean_auc_of(con, auc, chosen)


# ---------------------------------------------------------------------------------------------------- fairness


def pathology_gap(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str], eval_set: str = "test",
                  attributes: str | Sequence[str] = ("sex", "race"), pathologies: str | Sequence[str] | None = None,
                  min_count: int = 10, auc: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per pathology: best minus worst subgroup AUC and largest |subgroup - population| AUC, in points.

    ``auc`` may pass a subgroup_auc table computed already (then the other scope arguments are not used).
    Columns: run_id, eval_set, attribute, pathology, auc, gap_pts, worst_subgroup, best_subgroup,
    diff_to_overall_pts, n_subgroups, n_subgroups_undefined.
    """
    if auc is None:
        auc = subgroup_auc(con, run_ids=run_ids, eval_set=eval_set, attributes=attributes, pathologies=pathologies,
                           min_count=min_count)
    return _run(con, "pathology_gap", {}, {"subgroup_auc": auc})


def fairness_summary(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str], eval_set: str = "test",
                     attributes: str | Sequence[str] = ("sex", "race"),
                     pathologies: str | Sequence[str] | None = None,
                     compared_runs: str | Sequence[str] | None = None, min_count: int = 10,
                     epsilon_pts: float = 1.0, auc: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per run and attribute: fairness gap, worst/best subgroup, difference to overall and fairness score.

    FS = C - FG with C = max FG over ``compared_runs`` (default ``run_ids``) + ``epsilon_pts`` (paper eq. 1).
    Gaps and scores are in AUC points (x100); one extra column ``gap_pts__<pathology>`` per chosen pathology.
    """
    reported = _names(run_ids, "run_ids")
    compared = reported if compared_runs is None else _names(compared_runs, "compared_runs")
    auc, chosen = _auc_for_means(con, list(dict.fromkeys([*reported, *compared])), eval_set, attributes,
                                 pathologies, min_count, auc)
    means = _mean_auc_of(con, auc, chosen)
    params = {"run_ids": reported, "compared_runs": compared, "epsilon_pts": epsilon_pts}
    summary = _run(con, "fairness_summary", params, {"subgroup_mean_auc": means})
    keys = ["run_id", "eval_set", "attribute"]
    gaps = (pathology_gap(con, run_ids=reported, auc=auc.filter(pl.col("run_id").is_in(reported)))
            .pivot(on="pathology", index=keys, values="gap_pts"))
    gap_columns = [pl.col(p).alias(f"gap_pts__{p}") if p in gaps.columns else pl.lit(None, pl.Float64)
                   .alias(f"gap_pts__{p}") for p in chosen]
    return summary.join(gaps.select(*keys, *gap_columns), on=keys, how="left", maintain_order="left")


def relative_change(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str], eval_set: str = "test",
                    attributes: str | Sequence[str] = ("sex", "race"),
                    pathologies: str | Sequence[str] | None = None, reference: str = "population",
                    unit: str = "pts", min_count: int = 10, auc: pl.DataFrame | None = None) -> pl.DataFrame:
    """Each subgroup's AUC relative to a reference, per pathology and for pathology "mean" (Figures 3, 5, 6).

    ``reference="population"``: the population's AUC on the same eval set (the figures' captions);
    ``"subgroup-mean"``: the mean over the attribute's subgroups (section 4.4's text). ``unit`` picks which of
    change_pts / change_pct is copied to the plotting column ``change`` (named in column ``unit``).
    """
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, not {reference!r}")
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, not {unit!r}")
    auc, chosen = _auc_for_means(con, _names(run_ids, "run_ids"), eval_set, attributes, pathologies, min_count, auc)
    auc = auc.filter(pl.col("pathology").is_in(chosen))
    inputs = {"subgroup_auc": auc, "subgroup_mean_auc": _mean_auc_of(con, auc, chosen)}
    change = _run(con, "relative_change", {"reference": reference}, inputs)
    return change.with_columns(pl.col(f"change_{unit}").alias("change"), pl.lit(unit).alias("unit"))


# ---------------------------------------------------------------------------------------------------- ensembles


@dataclass(frozen=True)
class EnsembleRegistration:
    """What ``register_ensemble`` added: rows kept, and the keys dropped because not every member scored them."""

    name: str
    members: tuple[str, ...]
    rule: str
    n_rows: int
    n_dropped: int
    coverage: pl.DataFrame  # n_members_scoring, n_keys, kept


def check_ensemble_members(run_infos: Sequence[Mapping[str, Any]], rule: str) -> None:
    """Raise ValueError unless runs (run.json dicts) can be ensembled by ``rule``.

    Members must share cohort_hash and evaluation_label_policy; "mean-probability" needs score_kind
    "probability" everywhere, "mean-logit" needs "probability" or "logit"; "rank-average" takes any score.
    """
    if rule not in ENSEMBLE_RULES:
        raise ValueError(f"rule must be one of {ENSEMBLE_RULES}, not {rule!r}")
    if len(run_infos) < 2:
        raise ValueError(f"an ensemble needs at least two members, got {len(run_infos)}")
    for field in ("cohort_hash", "evaluation_label_policy"):
        values = {info.get("run_id", "?"): info.get(field) for info in run_infos}
        if len(set(values.values())) > 1:
            raise ValueError(f"ensemble members differ in {field}: {values}")
    allowed = {"mean-probability": {"probability"}, "mean-logit": {"probability", "logit"}}.get(rule)
    if allowed is not None:
        wrong = {info.get("run_id", "?"): info.get("score_kind") for info in run_infos
                 if info.get("score_kind") not in allowed}
        if wrong:
            raise ValueError(f"rule {rule!r} needs score_kind in {sorted(allowed)}; members with others: {wrong}")


def _register_checks(con: duckdb.DuckDBPyConnection, name: str, members: list[str], rule: str,
                     score_kinds: Mapping[str, str] | None) -> list[str]:
    """Check names and rule; return the members whose scores are probabilities (converted by mean-logit)."""
    if rule not in ENSEMBLE_RULES:
        raise ValueError(f"rule must be one of {ENSEMBLE_RULES}, not {rule!r}")
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two distinct members, got {members}")
    known = set(runs(con)["run_id"].to_list())
    if name in known:
        raise ValueError(f"run_id {name!r} exists already; pick another ensemble name")
    unknown = [member for member in members if member not in known]
    if unknown:
        raise ValueError(f"unknown ensemble member(s) {unknown}")
    if rule == "mean-logit" and score_kinds is None:
        raise ValueError("rule 'mean-logit' needs score_kinds (run_id -> score_kind from run.json)")
    if score_kinds is not None:
        check_ensemble_members([{"run_id": m, "score_kind": score_kinds.get(m)} for m in members], rule)
    return [m for m in members if score_kinds is not None and score_kinds.get(m) == "probability"]


def register_ensemble(con: duckdb.DuckDBPyConnection, *, name: str, members: Sequence[str],
                      rule: str = "mean-probability",
                      score_kinds: Mapping[str, str] | None = None) -> EnsembleRegistration:
    """Add an ensemble's rows under ``run_id=name``; every query then accepts ``name`` as a run.

    Only keys (split, image_id, pathology) scored by EVERY member are kept; y_true (and weight) must agree across
    members, else DataError. ``score_kinds`` (run_id -> run.json score_kind) is required by "mean-logit", which
    converts the probability members with logit(p). Cohort hash and label policy: ``check_ensemble_members``.
    """
    member_list = list(dict.fromkeys(members))
    probability_members = _register_checks(con, name, member_list, rule, score_kinds)
    params = {"name": name, "members": member_list, "rule": rule, "probability_members": probability_members,
              "logit_epsilon": LOGIT_EPSILON, "decimals": ENSEMBLE_DECIMALS}
    rows = _run(con, "ensemble_scores", params)
    for flag, what in (("labels_agree", "y_true"), ("weights_agree", "weight")):
        bad = rows.filter(~pl.col(flag))
        if bad.height:
            examples = [f"{r['split']}/{r['pathology']}/{r['image_id']}" for r in bad.head(5).iter_rows(named=True)]
            raise DataError(f"ensemble members {member_list} disagree on {what}", column=what, rows=examples,
                            n_bad=bad.height, hint="members must be evaluated on the same labels")
    coverage = _run(con, "ensemble_coverage", {"members": member_list})
    kept = rows.drop("labels_agree", "weights_agree")
    con.from_arrow(kept.to_arrow()).insert_into("ensemble_predictions")
    n_dropped = int(coverage.filter(~pl.col("kept"))["n_keys"].sum())
    return EnsembleRegistration(name, tuple(member_list), rule, kept.height, n_dropped, coverage)


# ---------------------------------------------------------------------------------------------------- thresholds


def _selection_label(select_on: str) -> str:
    return "validation" if select_on == VALIDATION_SPLIT else select_on


def operating_threshold(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str],
                        pathologies: str | Sequence[str] | None = None, operating_fpr: float | None = None,
                        youden: bool = False, select_on: str = VALIDATION_SPLIT) -> pl.DataFrame:
    """Per run and pathology, the threshold chosen on ``select_on``'s population (see operating_threshold.sql).

    Exactly one of ``operating_fpr`` (largest FPR not above it) and ``youden`` (max TPR - FPR).
    Columns: run_id, pathology, threshold, threshold_source, selection_tpr, selection_fpr.
    """
    if (operating_fpr is None) == (not youden):
        raise ValueError("give exactly one of operating_fpr and youden=True")
    rule = "youden" if youden else "fpr"
    source = f"{_selection_label(select_on)}-{'youden' if youden else f'fpr-{operating_fpr:g}'}"
    params = {"run_ids": _names(run_ids, "run_ids"), "select_on": _eval_set_name(con, select_on),
              "pathologies": _pathology_list(pathologies), "rule": rule,
              "target_fpr": operating_fpr, "source": source}
    return _run(con, "operating_threshold", params)


def _thresholds(con: duckdb.DuckDBPyConnection, run_ids: list[str], pathologies: list[str] | None,
                threshold: float | None, operating_fpr: float | None, youden: bool, select_on: str,
                scores_are_probabilities: bool) -> pl.DataFrame:
    """run_id, pathology (null = all), threshold, threshold_source: the thresholds threshold_metrics applies."""
    if threshold is not None and (operating_fpr is not None or youden):
        raise ValueError("give either threshold or an operating point (operating_fpr / youden), not both")
    if operating_fpr is not None or youden:
        chosen = operating_threshold(con, run_ids=run_ids, pathologies=pathologies, operating_fpr=operating_fpr,
                                     youden=youden, select_on=select_on)
        return chosen.select("run_id", "pathology", "threshold", "threshold_source")
    if threshold is None:
        if not scores_are_probabilities:
            raise ValueError("no threshold: pass threshold=, operating_fpr= or youden=True (0.5 is applied "
                             "only with scores_are_probabilities=True)")
        threshold, source = 0.5, "default-0.5"
    else:
        source = "given"
    return pl.DataFrame({"run_id": run_ids, "pathology": [None] * len(run_ids),
                         "threshold": [float(threshold)] * len(run_ids), "threshold_source": [source] * len(run_ids)},
                        schema={"run_id": pl.String, "pathology": pl.String, "threshold": pl.Float64,
                                "threshold_source": pl.String})


def threshold_metrics(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str], eval_set: str = "test",
                      attributes: str | Sequence[str] = ("sex", "race"),
                      pathologies: str | Sequence[str] | None = None, threshold: float | None = None,
                      operating_fpr: float | None = None, youden: bool = False, select_on: str = VALIDATION_SPLIT,
                      scores_are_probabilities: bool = False) -> pl.DataFrame:
    """Weighted tp, fp, tn, fn and tpr, fpr, fnr, tnr per subgroup at a threshold (``y_score >= t`` positive).

    The threshold is ``threshold`` ("given"), or chosen per run and pathology on ``select_on``'s population
    (the validation split by default): ``operating_fpr`` or ``youden``. With none of them the threshold is 0.5
    only when ``scores_are_probabilities`` (the caller read run.json); otherwise ValueError.
    """
    params = _scope(con, run_ids, eval_set, attributes, pathologies, with_all=True)
    thresholds = _thresholds(con, params["run_ids"], params["pathologies"], threshold, operating_fpr, youden,
                             select_on, scores_are_probabilities)
    table = _run(con, "threshold_metrics", params, {"thresholds": thresholds})
    return _known_runs_only(con, params["run_ids"], table)


def equalized_odds_difference(con: duckdb.DuckDBPyConnection, *, metrics: pl.DataFrame | None = None,
                              **threshold_args: Any) -> pl.DataFrame:
    """Per run, pathology and attribute: max(TPR difference, FPR difference) between subgroups (fairlearn).

    Reads a threshold_metrics table (``metrics``) or computes one from ``threshold_args``.
    """
    metrics = threshold_metrics(con, **threshold_args) if metrics is None else metrics
    return _run(con, "equalized_odds_difference", {}, {"threshold_metrics": metrics})


def underdiagnosis(con: duckdb.DuckDBPyConnection, *, metrics: pl.DataFrame | None = None,
                   **threshold_args: Any) -> pl.DataFrame:
    """Underdiagnosis rate per subgroup (Seyyed-Kalantari et al. 2021): the FPR of "No Finding".

    A false positive of "No Finding" is a patient with a finding predicted healthy. Columns: run_id, eval_set,
    attribute, subgroup, threshold, threshold_source, underdiagnosis_rate, fp, tn, n.
    """
    if metrics is None:
        metrics = threshold_metrics(con, **{**threshold_args, "pathologies": ["No Finding"]})
    return (metrics.filter(pl.col("pathology") == "No Finding")
            .select("run_id", "eval_set", "attribute", "subgroup", "threshold", "threshold_source",
                    pl.col("fpr").alias("underdiagnosis_rate"), "fp", "tn", "n"))


# ---------------------------------------------------------------------------------------------------- calibration


def ece(con: duckdb.DuckDBPyConnection, *, run_ids: str | Sequence[str], eval_set: str = "test",
        attributes: str | Sequence[str] = ("sex", "race"), pathologies: str | Sequence[str] | None = None,
        n_bins: int = 10) -> pl.DataFrame:
    """Expected calibration error per subgroup: equal-width bins, sum_b (W_b / W) |mean p - mean y|.

    For probability runs only: ValueError when any scored row of the scope lies outside [0, 1].
    Columns: run_id, eval_set, pathology, attribute, subgroup, n, w, ece, n_bins.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be positive, not {n_bins}")
    params = _scope(con, run_ids, eval_set, attributes, pathologies, with_all=True)
    table = _known_runs_only(con, params["run_ids"], _run(con, "ece", {**params, "n_bins": n_bins}))
    outside = table.filter(pl.col("attribute") == ALL_ATTRIBUTE, pl.col("n_outside") > 0)
    if outside.height:
        raise ValueError(f"ECE needs probabilities; scores outside [0, 1] in runs "
                         f"{sorted(set(outside['run_id'].to_list()))}")
    return table.drop("n_outside")
