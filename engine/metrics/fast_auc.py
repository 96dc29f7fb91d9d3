"""Fast subgroup AUCs: one score sort per (run, eval set, pathology) group, shared by every subgroup.

The metric is the contract's weighted Mann-Whitney AUC (docs/metrics-contract.md, ``subgroup_auc``):
``sum_{i pos, j neg} w_i w_j ([s_i > s_j] + 0.5 [s_i = s_j]) / (W_pos W_neg)``, which equals
``sklearn.metrics.roc_auc_score(y, s, sample_weight=w)``. Recipe (shared/notes/stack.md section 4): sort a group's
scores once, positives first within a tie; for each attribute, stably partition the sorted rows by subgroup code (a
radix sort of small integers that keeps the score order). Then the negative weight of a positive's subgroup strictly
below it is a difference of ONE cumulative sum of negative weights, read at indices fixed by the ranking, and each
tie block adds W_pos W_neg / 2 per subgroup (only rows in tie blocks are visited for that). The indices do not depend
on the weights, so the bootstrap (bootstrap.py) reuses a :class:`Ranking` with a matrix of replicate weights. Rows
whose attribute value is null are in no subgroup of that attribute (they still count for "all"). Sums are exact for
integer weights; fractional weights round like sklearn's own cumulative sums (agreement to ~1e-15).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

from engine.metrics.store_schema import ALL_ATTRIBUTE, DEFAULT_ATTRIBUTES, INTERSECTION_SEPARATOR

GROUP_KEYS = ("run_id", "eval_set", "pathology")
NO_POSITIVES, NO_NEGATIVES = "no positives", "no negatives"
SUBGROUP_AUC_SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(), "eval_set": pl.String(), "pathology": pl.String(), "attribute": pl.String(),
    "subgroup": pl.String(), "n": pl.Int64(), "n_pos": pl.Int64(), "n_neg": pl.Int64(), "w_pos": pl.Float64(),
    "w_neg": pl.Float64(), "auc": pl.Float64(), "auc_reason": pl.String(), "small": pl.Boolean(),
}


@dataclass(frozen=True)
class Ranking:
    """One attribute's subgroups (segments) within one group whose rows are sorted by score, positives first
    within a tie.

    ``neg_rows`` / ``pos_rows`` index the sorted rows, ordered by (subgroup, score). With the cumulative negative
    weight ``C = [0, cumsum(weights of neg_rows)]``, positive k has ``C[lo[k]] - C[neg_bounds[s]]`` negative weight
    of its subgroup s strictly below its score. Ties: rows in tie blocks (``tie_rows``) fall into cells (tie block x
    subgroup); each cell adds W_pos(cell) W_neg(cell) / 2 to the numerator of its segment ``cell_seg``.
    """

    codes: np.ndarray  # (S,) subgroup code of each segment
    neg_rows: np.ndarray
    pos_rows: np.ndarray
    lo: np.ndarray
    pos_bounds: np.ndarray  # (S + 1,) segment s owns positives pos_bounds[s]:pos_bounds[s + 1]
    neg_bounds: np.ndarray  # (S + 1,) segment s owns C[neg_bounds[s]]..C[neg_bounds[s + 1]]
    tie_rows: np.ndarray
    tie_positive: np.ndarray
    tie_cell: np.ndarray
    cell_seg: np.ndarray


def _stable_order(key: np.ndarray) -> np.ndarray:
    """Stable argsort of small non-negative integer keys (numpy's radix sort for 8- and 16-bit integers)."""
    top = int(key.max()) if key.size else 0
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int64
    return np.argsort(key.astype(dtype, copy=False), kind="stable")


def rank_group(code: np.ndarray, positive: np.ndarray, tied: tuple[np.ndarray, np.ndarray] | None) -> Ranking:
    """The :class:`Ranking` of one attribute in one group, from per sorted row its subgroup ``code`` (-1 = null) and
    ``positive`` flag; ``tied`` = (positions, tie-block numbers) of the rows in tie blocks, or None."""
    counts = np.bincount(code + 1, minlength=2)  # counts[0]: rows with a null value
    if counts[0] == 0 and counts.size == 2:
        perm = np.arange(code.size)
    else:
        perm = _stable_order(code + 1)[counts[0]:]
    present = np.flatnonzero(counts[1:])
    bounds = np.concatenate(([0], np.cumsum(counts[1:][present])))
    pos = positive[perm]
    at = np.flatnonzero(pos)
    neg_bounds = bounds - np.searchsorted(at, bounds)
    tie_rows, tie_cell, cell_seg = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, np.int64)
    if tied is not None:
        keep = code[tied[0]] >= 0
        tie_rows, n_codes = tied[0][keep], counts.size - 1
        cells, tie_cell = np.unique(tied[1][keep] * n_codes + code[tie_rows], return_inverse=True)
        cell_seg = np.searchsorted(present, cells % n_codes)
    return Ranking(codes=present, neg_rows=perm[~pos], pos_rows=perm[at], lo=at - np.arange(at.size),
                   pos_bounds=bounds - neg_bounds, neg_bounds=neg_bounds, tie_rows=tie_rows,
                   tie_positive=positive[tie_rows], tie_cell=tie_cell.ravel(), cell_seg=cell_seg)


def segment_sums(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Sum ``values`` (B, n) over column ranges ``bounds[s]:bounds[s + 1]`` -> (B, S); empty ranges give 0."""
    out = np.zeros((values.shape[0], bounds.size - 1))
    filled = bounds[1:] > bounds[:-1]
    if filled.any():  # reduceat over the non-empty ranges only: an empty one would return a stray element
        out[:, filled] = np.add.reduceat(values, bounds[:-1][filled], axis=1)
    return out


def grouped_sums(values: np.ndarray, index: np.ndarray, size: int) -> np.ndarray:
    """Sum the columns of ``values`` (B, m) by ``index`` (m,) into (B, size) (one bincount, rows offset)."""
    flat = (index[None, :] + size * np.arange(values.shape[0])[:, None]).ravel()
    return np.bincount(flat, weights=values.ravel(), minlength=size * values.shape[0]).reshape(-1, size)


def ranked_sums(r: Ranking, weights: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, ...]:
    """Weighted Mann-Whitney sums per segment for B weightings at once.

    ``weights(rows)`` returns the (B, len(rows)) weights (any numeric dtype) of those sorted rows: B = 1 for a point
    estimate, one row per replicate for the bootstrap. Returns (numerator, W_pos, W_neg), each (B, S) float64;
    AUC = numerator / (W_pos W_neg).
    """
    neg_weight, pos_weight = weights(r.neg_rows), weights(r.pos_rows).astype(np.float64, copy=False)
    cum = np.zeros((neg_weight.shape[0], neg_weight.shape[1] + 1))
    np.cumsum(neg_weight, axis=1, dtype=np.float64, out=cum[:, 1:])
    w_pos = segment_sums(pos_weight, r.pos_bounds)
    base = cum[:, r.neg_bounds[:-1]]  # negatives of earlier segments
    numerator = segment_sums(pos_weight * cum[:, r.lo], r.pos_bounds) - base * w_pos
    if r.tie_rows.size:  # half of every tied (positive, negative) pair, cell by cell
        tie_weight, n_cells = weights(r.tie_rows).astype(np.float64, copy=False), r.cell_seg.size
        pos_cell = grouped_sums(tie_weight * r.tie_positive, r.tie_cell, n_cells)
        neg_cell = grouped_sums(tie_weight * ~r.tie_positive, r.tie_cell, n_cells)
        numerator += 0.5 * grouped_sums(pos_cell * neg_cell, r.cell_seg, r.codes.size)
    return numerator, w_pos, cum[:, r.neg_bounds[1:]] - base


def auc_from_sums(numerator: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
    """AUC = numerator / (W_pos W_neg); NaN where a class has no weight."""
    defined = (w_pos > 0) & (w_neg > 0)
    return np.divide(numerator, w_pos * w_neg, out=np.full(np.shape(numerator), np.nan), where=defined)


def _enum_codes(column: pl.Series) -> tuple[np.ndarray, list[str]]:
    """Codes in sorted-level order of an Enum column (already coded: no string work over the rows)."""
    levels = column.dtype.categories.to_list()
    if levels == sorted(levels) and not column.null_count():  # the physical codes are the codes
        return column.to_physical().to_numpy().astype(np.int32), levels
    lookup = np.full(len(levels) + 1, -1, dtype=np.int32)  # last slot: null
    lookup[np.argsort(levels)] = np.arange(len(levels))
    return lookup[column.to_physical().fill_null(len(levels)).to_numpy()], sorted(levels)


def encode(frame: pl.DataFrame, columns: Sequence[str]) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Per column: codes (int64, -1 for null) and sorted distinct values. Enum columns use their physical codes;
    other columns are cast to Categorical in one polars select (one hashing pass, columns in parallel) and their
    category ids are renumbered in sorted-value order."""
    out = {c: _enum_codes(frame[c]) for c in columns if isinstance(frame.schema[c], pl.Enum)}
    strings = [c for c in columns if c not in out]
    coded = frame.select(pl.col(c).cast(pl.String).cast(pl.Categorical) for c in strings)
    for c in strings:
        present = coded[c].unique().drop_nulls()
        ids, names = present.to_physical().to_numpy().astype(np.int64), present.cast(pl.String).to_list()
        lookup = np.full(int(ids.max(initial=0)) + 2, -1, dtype=np.int32)  # last slot: null
        lookup[ids[np.argsort(names)]] = np.arange(len(names))
        physical = coded[c].to_physical().fill_null(lookup.size - 1).to_numpy()
        out[c] = (lookup[physical], sorted(names))
    return out


def attribute_codes(frame: pl.DataFrame, attributes: Sequence[str]) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Per attribute: subgroup codes and names. An attribute is "all", a column, or an intersection "a x b" read
    from a column of that name (as ``scored_rows`` gives it) or else combined from columns a and b."""
    def parts(attribute: str) -> list[str]:
        return [attribute] if attribute in frame.columns else attribute.split(INTERSECTION_SEPARATOR)

    needed = {p for a in attributes if a != ALL_ATTRIBUTE for p in parts(a)}
    missing = sorted(needed - set(frame.columns))
    if missing:
        raise ValueError(f"attribute column(s) {missing} not in the scored rows; columns: {', '.join(frame.columns)}")
    encoded = encode(frame, sorted(needed))
    out = {}
    for attribute in attributes:
        if attribute == ALL_ATTRIBUTE:
            out[attribute] = (np.zeros(frame.height, dtype=np.int32), [ALL_ATTRIBUTE])
            continue
        first, *rest = parts(attribute)
        codes, names = encoded[first]
        for part in rest:  # intersection: combined code, null when any part is null
            part_codes, levels = encoded[part]
            codes = np.where((codes < 0) | (part_codes < 0), -1, codes * len(levels) + part_codes)
            names = [f"{a}{INTERSECTION_SEPARATOR}{b}" for a in names for b in levels]
        out[attribute] = (codes.astype(np.int32, copy=False), names)
    return out


@dataclass(frozen=True)
class Prepared:
    """Scored rows grouped by (run_id, eval_set, pathology), with per-row arrays and attribute codes."""

    frame: pl.DataFrame  # the scored rows (y_true not null); the arrays below are per row of it
    keys: pl.DataFrame  # one row per group
    rows: np.ndarray  # row numbers grouped: group g is rows[bounds[g]:bounds[g + 1]]
    bounds: np.ndarray  # (G + 1,)
    score: np.ndarray
    positive: np.ndarray
    weight: np.ndarray
    codes: dict[str, np.ndarray]
    levels: dict[str, list[str]]

    def sort_group(self, g: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """Rows of group g by ascending score (the one sort), positives first within a tie; and the tied rows as
        (positions in that order, tie-block numbers), None when no two scores are equal."""
        rows = self.rows[self.bounds[g]:self.bounds[g + 1]]
        order = rows[np.argsort(self.score[rows])]
        s = self.score[order]
        same = s[1:] == s[:-1]
        if not same.any():
            return order, None
        where = np.flatnonzero(np.concatenate((same, [False])) | np.concatenate(([False], same)))
        block = np.cumsum(np.concatenate(([True], ~same)))[where]
        rows = order[where]
        order[where] = rows[np.lexsort((~self.positive[rows], block))]
        return order, (where, block)


def prepare(scored: pl.DataFrame, attributes: Sequence[str], *, eval_set: str = "test") -> Prepared:
    """Drop rows with null y_true, group rows by (run_id, eval_set, pathology), code the attributes."""
    if scored["y_true"].null_count():
        scored = scored.filter(pl.col("y_true").is_not_null())
    for column in ("y_score", "weight"):
        values = scored[column].to_numpy()
        negative = column == "weight" and bool((values < 0).any())
        if scored[column].null_count() or not np.isfinite(values).all() or negative:
            raise ValueError(f"{column} has null, NaN, infinite or negative values in the scored rows")
    keys = [k for k in GROUP_KEYS if k in scored.columns or k != "eval_set"]  # no eval_set column: one eval set
    rows, starts = _group_rows_order(scored, keys)
    coded = attribute_codes(scored, attributes)
    group_keys = scored[rows[starts]].select(keys)
    if "eval_set" not in keys:
        group_keys = group_keys.with_columns(eval_set=pl.lit(eval_set, dtype=pl.String)).select(GROUP_KEYS)
    return Prepared(
        frame=scored, keys=group_keys, rows=rows, bounds=np.append(starts, scored.height),
        score=scored["y_score"].to_numpy(), positive=scored["y_true"].to_numpy() > 0.5,
        weight=scored["weight"].to_numpy(), codes={a: c for a, (c, _) in coded.items()},
        levels={a: names for a, (_, names) in coded.items()},
    )


def _group_rows_order(scored: pl.DataFrame, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers ordered by group and the position where each group starts (no copy of the frame)."""
    run = scored.select(pl.struct(keys).rle_id()).to_series().to_numpy()
    starts = np.flatnonzero(np.concatenate(([True], run[1:] != run[:-1])))
    if not scored[starts].select(keys).is_duplicated().any():  # each group contiguous already
        return np.arange(scored.height), starts
    group = np.zeros(scored.height, dtype=np.int64)
    for codes, levels in encode(scored, keys).values():
        group = group * len(levels) + codes
    rows = _stable_order(group)
    group = group[rows]
    return rows, np.flatnonzero(np.concatenate(([True], group[1:] != group[:-1])))


def _group_rows(prep: Prepared, g: int) -> list[tuple]:
    """One row per segment of group g: (group, attribute, subgroup, n_pos, n_neg, W_pos, W_neg, AUC)."""
    order, tied = prep.sort_group(g)
    positive, weight = prep.positive[order], prep.weight[order]
    out = []
    for attribute, codes in prep.codes.items():
        r = rank_group(codes[order], positive, tied)
        numerator, w_pos, w_neg = (s[0] for s in ranked_sums(r, lambda rows: weight[rows][None, :]))
        out += zip([g] * r.codes.size, [attribute] * r.codes.size, [prep.levels[attribute][c] for c in r.codes],
                   np.diff(r.pos_bounds).tolist(), np.diff(r.neg_bounds).tolist(), w_pos.tolist(), w_neg.tolist(),
                   auc_from_sums(numerator, w_pos, w_neg).tolist(), strict=True)
    return out


def subgroup_auc(scored: pl.DataFrame, *, attributes: Sequence[str] = DEFAULT_ATTRIBUTES, eval_set: str = "test",
                 min_count: int = 10, include_all: bool = True, threads: int | None = None) -> pl.DataFrame:
    """The contract's ``subgroup_auc`` table for every (run, eval set, pathology) group of ``scored``.

    ``scored`` has the columns of ``queries.scored_rows`` (run_id, pathology, y_true, y_score, weight and the
    attribute columns; an ``eval_set`` column, when present, overrides ``eval_set``). ``attributes`` may name
    intersections ("sex x race"); ``include_all`` adds attribute "all". Enum attribute columns skip all string work.
    Groups run on ``threads`` threads (numpy releases the GIL), default all cores; the result does not depend on it.
    """
    names = ([ALL_ATTRIBUTE] if include_all else []) + [a for a in attributes if a != ALL_ATTRIBUTE]
    prep = prepare(scored, names, eval_set=eval_set)
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        rows = [row for part in pool.map(lambda g: _group_rows(prep, g), range(prep.keys.height)) for row in part]
    if not rows:
        return pl.DataFrame(schema=SUBGROUP_AUC_SCHEMA)
    schema = {"group": pl.Int64, "attribute": pl.String, "subgroup": pl.String, "n_pos": pl.Int64, "n_neg": pl.Int64,
              "w_pos": pl.Float64, "w_neg": pl.Float64, "auc": pl.Float64}
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    return finish_table(prep.keys[frame["group"].to_numpy()].hstack(frame.drop("group")), min_count)


def finish_table(frame: pl.DataFrame, min_count: int) -> pl.DataFrame:
    """Add n, auc_reason and small; NaN AUC -> null; contract column order, sorted by the key columns."""
    return frame.with_columns(
        n=pl.col("n_pos") + pl.col("n_neg"),
        auc=pl.col("auc").fill_nan(None),
        auc_reason=pl.when(pl.col("w_pos") <= 0).then(pl.lit(NO_POSITIVES))
        .when(pl.col("w_neg") <= 0).then(pl.lit(NO_NEGATIVES)).otherwise(pl.lit(None, dtype=pl.String)),
        small=(pl.col("n_pos") < min_count) | (pl.col("n_neg") < min_count),
    ).select(list(SUBGROUP_AUC_SCHEMA)).sort("run_id", "eval_set", "pathology", "attribute", "subgroup")
