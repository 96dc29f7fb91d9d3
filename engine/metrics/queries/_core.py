"""The only place SQL runs (``_run``): connection, catalogue and argument checks of the queries package.

Each public query runs one file of ``engine/metrics/sql/`` (function name = file name).

``connect`` opens an in-memory DuckDB with views over a results store (or in-memory frames) and runs
``views.sql``. Every other function binds its values as parameters ($name) and returns a polars DataFrame whose
columns are those of docs/metrics-contract.md. Queries that read another query's result (``subgroup_mean_auc``
reads ``subgroup_auc``, ...) get it as a frame registered under that query's name on a fresh cursor, the way a
dbt model selects from ``ref()``. Definitions, units and null rules: docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from engine.data.errors import DataError
from engine.metrics.store_schema import (
    ALL_ATTRIBUTE,
    COHORT_FILE,
    INTERSECTION_SEPARATOR,
    NON_ATTRIBUTE_COLUMNS,
    PREDICTIONS_FILE,
    RUNS_DIR,
    SUBSETS_FILE,
)

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"

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
