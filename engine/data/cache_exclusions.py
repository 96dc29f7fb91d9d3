"""Cohort side of the image cache: which ids to cache, and flagging bad images in the cohort (``excluded_reason``).

Reasons are ``stage: text``, several joined by ``"; "``; this module owns the ``cache:`` ones.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from engine.data.errors import DataError
from engine.data.io import read_table, require_columns, write_parquet

EXCLUDED_COLUMN = "excluded_reason"
CACHE_REASON_PREFIX = "cache: "


def ids_to_cache(table: pl.DataFrame) -> tuple[pl.Series, int]:
    """Image ids a cache should hold, in table order, and how many rows were left out.

    Rows excluded by an earlier stage are left out; rows excluded only by the cache itself stay in, so the id list
    is the same on every rerun (no --force needed after mark_excluded) and a file fixed since is retried.
    """
    if EXCLUDED_COLUMN not in table.columns:
        return table["image_id"], 0
    reason = pl.col(EXCLUDED_COLUMN).cast(pl.String)
    keep = (
        reason.is_null()
        | reason.str.split("; ").list.eval(pl.element().str.starts_with(CACHE_REASON_PREFIX)).list.all()
    )
    kept = table.filter(keep)["image_id"]
    return kept, table.height - kept.len()


def mark_excluded(cohort_path: Path, bad: list[tuple[str, str]]) -> int:
    """Set ``excluded_reason`` = "cache: <reason>" for the bad image ids in the cohort parquet; return rows marked.

    Rewrites the file atomically. Reasons from other stages are kept (joined with "; "); reasons from an earlier
    cache run are replaced, so an image fixed since then is no longer excluded. DataError for ids not in the cohort.
    """
    cohort_path = Path(cohort_path)
    cohort = read_table(cohort_path, what="cohort")
    require_columns(cohort, ("image_id",), file=cohort_path, what="cohort")
    reasons = {image_id: _prefixed(reason) for image_id, reason in bad}
    unknown = sorted(set(reasons) - set(cohort["image_id"].to_list()))
    if unknown:
        raise DataError(
            "bad images are not in this cohort (was the cache built from another cohort?)",
            file=cohort_path,
            column="image_id",
            rows=unknown[:5],
            n_bad=len(unknown),
        )
    marks = pl.DataFrame(
        {"image_id": list(reasons), "_cache_reason": list(reasons.values())},
        schema={"image_id": pl.String, "_cache_reason": pl.String},
    )
    marked = cohort.join(marks, on="image_id", how="left", maintain_order="left", coalesce=True)
    marked = marked.with_columns(_merged_reason(cohort.columns).alias(EXCLUDED_COLUMN)).drop("_cache_reason")
    write_parquet(marked, cohort_path)  # column order kept; a new excluded_reason column goes last
    return int(marked["image_id"].is_in(list(reasons)).sum())


def _prefixed(reason: str) -> str:
    """The reason with the "cache: " prefix and ';' replaced, since '; ' separates reasons of different stages."""
    text = reason.replace(";", ",")
    return text if text.startswith(CACHE_REASON_PREFIX) else CACHE_REASON_PREFIX + text


def _merged_reason(columns: list[str]) -> pl.Expr:
    """Existing reasons minus earlier cache reasons, plus this run's cache reason; null when none remain."""
    if EXCLUDED_COLUMN not in columns:
        return pl.col("_cache_reason").cast(pl.String)
    others = (
        pl.col(EXCLUDED_COLUMN)
        .cast(pl.String)
        .str.split("; ")
        .list.eval(pl.element().filter(~pl.element().str.starts_with(CACHE_REASON_PREFIX)))
        .list.join("; ")
    )
    others = pl.when(others == "").then(None).otherwise(others)
    merged = pl.concat_str([others, pl.col("_cache_reason")], separator="; ", ignore_nulls=True)
    return pl.when(merged == "").then(None).otherwise(merged).cast(pl.String)
