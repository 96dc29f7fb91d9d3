"""Patient-level bootstrap: subgroup AUCs, subgroup mean AUCs, fairness gaps and scores, paired differences.

Recipe (shared/notes/stack.md section 4, numpy bootstrap): a replicate draws patients WITH REPLACEMENT WITHIN STRATA
and gives every image its patient's multiplicity times its evaluation weight; the AUC sums of fast_auc.py are then
recomputed for a chunk of replicates at once from a :class:`~engine.metrics.fast_auc.Ranking` built once per
(run, eval set, pathology, attribute). The stratum of a patient is their subgroup for the attribute analysed, so
subgroup sizes in patients stay fixed; an attribute that can vary within a patient (age_bin) is stratified by the
value on the patient's first row (smallest image_id), so its subgroup sizes in images may still vary. Attribute
"all" is drawn unstratified. Replicate b of attribute a uses ``numpy.random.default_rng([seed, crc32(a), b])``:
draws depend only on that and on the patients (with their strata), not on the chunk size, on B, on the other
attributes or on the runs; they are SHARED by every run and pathology in one call, so differences between runs
(ensemble minus member) are paired. Intervals are
percentile intervals (2.5 / 97.5 by default) over the replicates in which the statistic is defined.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from engine.metrics.fast_auc import (
    Prepared,
    attribute_codes,
    auc_from_sums,
    encode,
    prepare,
    rank_group,
    ranked_sums,
)
from engine.metrics.store_schema import ALL_ATTRIBUTE, DEFAULT_ATTRIBUTES

CHUNK = 50  # replicates per matrix pass (memory: CHUNK x rows of one group, float64)


@dataclass(frozen=True)
class Replicates:
    """Point estimates and B bootstrap replicates of K statistics; ``name`` is the statistic's column name."""

    name: str
    keys: pl.DataFrame  # K rows
    point: np.ndarray  # (K,)
    values: np.ndarray  # (B, K), NaN where undefined in a replicate


def patient_index(scored: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Per row the index of its patient among the sorted distinct patient_id values, and those values."""
    return encode(scored, ["patient_id"])["patient_id"]


def patient_strata(scored: pl.DataFrame, attribute: str) -> np.ndarray:
    """Stratum code per patient (patient_index order): the attribute's subgroup on the patient's first row by
    image_id (null values form their own stratum); one stratum for "all"."""
    patient, names = patient_index(scored)
    if attribute == ALL_ATTRIBUTE:
        return np.zeros(len(names), dtype=np.int64)
    codes = attribute_codes(scored, [attribute])[attribute][0]
    first = (pl.DataFrame({"p": patient, "image_id": scored["image_id"], "c": codes})
             .sort("p", "image_id").unique("p", keep="first", maintain_order=True))
    return first["c"].to_numpy().astype(np.int64) + 1


def draw_multiplicities(strata: np.ndarray, replicates: Sequence[int] | np.ndarray, *, seed: int,
                        label: str) -> np.ndarray:
    """(len(replicates), P) patient multiplicities (a multiplicity never exceeds P, so uint16 when P < 65536): per
    stratum of size n, n patients drawn with replacement.

    Replicate b uses ``default_rng([seed, crc32(label), b])``: one uniform per patient slot of the strata (patients
    ordered by stratum), mapped to a patient of the same stratum.
    """
    order = np.argsort(strata, kind="stable")
    sizes = np.bincount(strata[order])
    start = np.concatenate(([0], np.cumsum(sizes)[:-1]))[strata[order]]
    size = sizes[strata[order]]
    out = np.empty((len(replicates), strata.size), dtype=np.uint16 if strata.size < 65536 else np.int64)
    for i, b in enumerate(replicates):
        u = np.random.default_rng([seed, zlib.crc32(label.encode()), int(b)]).random(strata.size)
        slot = np.minimum((u * size).astype(np.int64), size - 1)  # uniform on 0..n-1 within the stratum
        out[i] = np.bincount(order[start + slot], minlength=strata.size)
    return out


def _group_replicates(prep: Prepared, g: int, patient: np.ndarray, mult: Mapping[str, np.ndarray],
                      chunk: int) -> list[tuple]:
    """Per attribute of group g: (attribute, segment codes, point AUCs (S,), replicate AUCs (B, S))."""
    order, tied = prep.sort_group(g)
    positive, weight, pat = prep.positive[order], prep.weight[order], patient[order]
    unit = bool(np.all(weight == 1.0))
    out = []
    for attribute, codes in prep.codes.items():
        r = rank_group(codes[order], positive, tied)
        point = auc_from_sums(*ranked_sums(r, lambda rows: weight[rows][None, :]))[0]
        m = mult[attribute]
        values = np.empty((m.shape[0], r.codes.size))
        for c0 in range(0, m.shape[0], chunk):
            block = m[c0:c0 + chunk]
            if unit:  # evaluation weights all 1: the multiplicities are the weights (no float multiply pass)
                sums = ranked_sums(r, lambda rows, b=block: b[:, pat[rows]])
            else:
                sums = ranked_sums(r, lambda rows, b=block: b[:, pat[rows]] * weight[rows])
            values[c0:c0 + chunk] = auc_from_sums(*sums)
        out.append((attribute, r.codes, point, values))
    return out


def bootstrap_auc(scored: pl.DataFrame, *, attributes: Sequence[str] = DEFAULT_ATTRIBUTES, n_boot: int = 1000,
                  seed: int = 0, eval_set: str = "test", include_all: bool = True,
                  multiplicities: Mapping[str, np.ndarray] | None = None, chunk: int = CHUNK,
                  threads: int | None = None) -> Replicates:
    """Point and replicate subgroup AUCs (keys: run_id, eval_set, pathology, attribute, subgroup) of ``scored``.

    ``scored``: the rows of ``queries.scored_rows`` for one or more runs (with patient_id and image_id); all of them
    share the replicate draws. ``multiplicities`` (attribute -> (B, P) array over :func:`patient_index` patients)
    replaces the draws, e.g. all ones to reproduce the point estimates.
    """
    names = ([ALL_ATTRIBUTE] if include_all else []) + [a for a in attributes if a != ALL_ATTRIBUTE]
    prep = prepare(scored, names, eval_set=eval_set)
    patient, _ = patient_index(prep.frame)
    if multiplicities is None:
        multiplicities = {a: draw_multiplicities(patient_strata(prep.frame, a), range(n_boot), seed=seed, label=a)
                          for a in names}
    mult = {a: _compact(multiplicities[a]) for a in names}
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        per_group = list(pool.map(lambda g: _group_replicates(prep, g, patient, mult, chunk), range(prep.keys.height)))
    keys, points, values = [], [], []
    for g, rows in enumerate(per_group):
        for attribute, codes, point, vals in rows:
            keys.append(prep.keys[[g] * codes.size].with_columns(
                attribute=pl.lit(attribute), subgroup=pl.Series([prep.levels[attribute][c] for c in codes],
                                                                dtype=pl.String)))
            points.append(point)
            values.append(vals)
    return Replicates("auc", pl.concat(keys), np.concatenate(points), np.concatenate(values, axis=1))


def _compact(m: np.ndarray) -> np.ndarray:
    """Multiplicities as the smallest unsigned integer type that holds them (faster gathers)."""
    return m.astype(np.uint8 if m.max(initial=0) < 256 else np.uint16 if m.max() < 65536 else np.int64)


def _pivot(rep: Replicates, by: Sequence[str], across: str, levels: Sequence[str]) -> tuple[pl.DataFrame, np.ndarray]:
    """Rows of ``by`` keys and, per (row, level of ``across``), the statistic's column index (-1 when absent)."""
    keyed = rep.keys.with_row_index("_k")
    rows = keyed.select(by).unique(maintain_order=True).sort(by).with_row_index("_r")
    cell = keyed.join(rows, on=list(by)).filter(pl.col(across).is_in(list(levels)))
    index = np.full((rows.height, len(levels)), -1, dtype=np.int64)
    level = {v: i for i, v in enumerate(levels)}
    index[cell["_r"].to_numpy(), [level[v] for v in cell[across]]] = cell["_k"].to_numpy()
    return rows.drop("_r"), index


def _take(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[..., index]`` with NaN where index is -1."""
    out = values[..., np.maximum(index, 0)]
    return np.where(index >= 0, out, np.nan)


def subgroup_means(rep: Replicates, pathologies: Sequence[str] | None = None) -> Replicates:
    """Mean AUC over ``pathologies`` (default: all present) per (run_id, eval_set, attribute, subgroup); NaN when
    any of them is undefined or missing for that subgroup (the contract's subgroup_mean_auc)."""
    chosen = sorted(rep.keys["pathology"].unique()) if pathologies is None else list(pathologies)
    rows, index = _pivot(rep, ["run_id", "eval_set", "attribute", "subgroup"], "pathology", chosen)
    return Replicates("mean_auc", rows, _take(rep.point, index).mean(axis=-1), _take(rep.values, index).mean(axis=-1))


def _nan_range(x: np.ndarray) -> np.ndarray:
    """max - min over the last axis ignoring NaN; NaN when fewer than two values are defined."""
    defined = (~np.isnan(x)).sum(axis=-1)
    top, bottom = np.where(np.isnan(x), -np.inf, x).max(axis=-1), np.where(np.isnan(x), np.inf, x).min(axis=-1)
    return np.where(defined >= 2, top - bottom, np.nan)


def fairness_gaps(means: Replicates) -> Replicates:
    """Fairness gap in AUC points (x100): max - min subgroup mean AUC over the defined subgroups, per
    (run_id, eval_set, attribute); attribute "all" is left out. A max - min is biased upwards when subgroups are
    close, so its replicates sit above the point estimate and a percentile interval can exclude it."""
    means = _select(means, pl.col("attribute") != ALL_ATTRIBUTE)
    subgroups = sorted(means.keys["subgroup"].unique())
    rows, index = _pivot(means, ["run_id", "eval_set", "attribute"], "subgroup", subgroups)
    return Replicates("fairness_gap_pts", rows, 100 * _nan_range(_take(means.point, index)),
                      100 * _nan_range(_take(means.values, index)))


def fairness_scores(gaps: Replicates, c_pts: Mapping[str, float]) -> Replicates:
    """FS = C - gap (points) per attribute, with C (``c_pts[attribute]``) held at its point estimate."""
    c = np.array([c_pts[a] for a in gaps.keys["attribute"]], dtype=np.float64)
    return Replicates("fairness_score_pts", gaps.keys, c - gaps.point, c[None, :] - gaps.values)


def _select(rep: Replicates, predicate: pl.Expr) -> Replicates:
    keep = rep.keys.with_row_index("_k").filter(predicate)["_k"].to_numpy()
    return replace(rep, keys=rep.keys[keep], point=rep.point[keep], values=rep.values[:, keep])


def differences(rep: Replicates, pairs: Sequence[tuple[str, str]]) -> Replicates:
    """Paired differences run_a - run_b for each (run_a, run_b) pair (e.g. ensemble minus member), on the shared
    replicates; keys gain ``reference_run_id`` (run_b)."""
    others = [c for c in rep.keys.columns if c != "run_id"]
    keyed = rep.keys.with_row_index("_k")
    parts, points, values = [], [], []
    for run_a, run_b in pairs:
        a = keyed.filter(pl.col("run_id") == run_a)
        both = a.join(keyed.filter(pl.col("run_id") == run_b).select(*others, _b="_k"), on=others, nulls_equal=True)
        ia, ib = both["_k"].to_numpy(), both["_b"].to_numpy()
        parts.append(both.select("run_id", pl.lit(run_b).alias("reference_run_id"), *others))
        points.append(rep.point[ia] - rep.point[ib])
        values.append(rep.values[:, ia] - rep.values[:, ib])
    return Replicates(f"{rep.name}_difference", pl.concat(parts), np.concatenate(points),
                      np.concatenate(values, axis=1))


def p_value_smaller(rep: Replicates, run_x: str, run_y: str) -> pl.DataFrame:
    """One-sided paired bootstrap p-value for "run_x's statistic is smaller than run_y's" (e.g. a smaller gap).

    p = (k + 1) / (B + 1), k = replicates with x >= y among the B where both are defined (the +1 correction keeps
    p > 0 with finitely many replicates, as for Monte Carlo p-values: Davison & Hinkley 1997; North et al. 2002).
    """
    diff = differences(rep, [(run_x, run_y)])
    defined = ~np.isnan(diff.values)
    k = ((diff.values >= 0) & defined).sum(axis=0)
    n = defined.sum(axis=0)
    return diff.keys.with_columns(difference=pl.Series(diff.point), n_boot=pl.Series(n, dtype=pl.Int64),
                                  p_value=pl.Series((k + 1) / (n + 1)))


def confidence_intervals(rep: Replicates, *, level: float = 0.95) -> pl.DataFrame:
    """Keys, the point estimate (column ``rep.name``), ci_low / ci_high (percentile interval at ``level``) and
    n_boot (replicates where the statistic is defined; the interval is null when none is)."""
    tail = 100 * (1 - level) / 2
    defined = ~np.isnan(rep.values)
    low, high = np.full(rep.point.size, np.nan), np.full(rep.point.size, np.nan)
    ok = defined.any(axis=0)
    if ok.any():
        low[ok], high[ok] = np.nanpercentile(rep.values[:, ok], [tail, 100 - tail], axis=0)
    return rep.keys.with_columns(
        pl.Series(rep.name, rep.point).fill_nan(None), ci_low=pl.Series(low).fill_nan(None),
        ci_high=pl.Series(high).fill_nan(None), n_boot=pl.Series(defined.sum(axis=0), dtype=pl.Int64))


def seed_summary(table: pl.DataFrame, *, by: Sequence[str], values: Sequence[str] | None = None) -> pl.DataFrame:
    """Mean, sd (ddof 1; null for one seed), min and max of each value column across the rows (seeds) of each
    ``by`` group, and n_seeds (distinct ``seed`` values when the table has that column, else rows)."""
    skip = set(by) | {"seed", "run_id"}
    values = list(values) if values is not None else [
        c for c, t in table.schema.items() if c not in skip and t.is_numeric()]
    n_seeds = pl.col("seed").n_unique() if "seed" in table.columns else pl.len()
    stats = [getattr(pl.col(v), f)().alias(f"{v}_{name}") for v in values
             for f, name in (("mean", "mean"), ("std", "sd"), ("min", "min"), ("max", "max"))]
    return table.group_by(list(by), maintain_order=True).agg(*stats, n_seeds=n_seeds.cast(pl.Int64)).sort(by)

