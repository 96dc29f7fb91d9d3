"""Counted filtering: every row a filter removes is recorded with the reason (nothing is dropped silently)."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl


@dataclass
class FilterLog:
    """Ordered record of filter steps: rows in, removed (with a breakdown by value), rows remaining."""

    rows_in: int
    steps: list[dict] = field(default_factory=list)

    def apply(self, frame: pl.DataFrame, keep: pl.Expr, *, step: str, reason: str,
              breakdown: str | None = None) -> pl.DataFrame:
        """Keep the rows where ``keep`` is true; record how many were removed and, optionally, by which values."""
        mask = frame.select(keep.fill_null(False).alias("_keep"))["_keep"]
        removed = frame.filter(~mask)
        entry = {"step": step, "reason": reason, "removed": removed.height, "remaining": frame.height - removed.height}
        if breakdown is not None and removed.height:
            counts = removed[breakdown].fill_null("(blank)").value_counts(sort=True)
            entry["removed_by_value"] = {str(v): int(n) for v, n in counts.iter_rows()}
        self.steps.append(entry)
        return frame.filter(mask)

    def record(self, *, step: str, reason: str, removed: int, remaining: int, **extra: object) -> None:
        """Record a removal computed elsewhere (e.g. rows absent from a join)."""
        self.steps.append({"step": step, "reason": reason, "removed": removed, "remaining": remaining, **extra})

    def as_dict(self, rows_out: int) -> dict:
        """The report form: rows in, each step, rows out."""
        return {"rows_in": self.rows_in, "filters": self.steps, "rows_out": rows_out}
