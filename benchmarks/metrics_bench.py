"""Benchmark of subgroup AUCs at paper scale: our path against pandas + sklearn and fairlearn, whole processes.

Usage: python benchmarks/metrics_bench.py [--n-images 38240] [--runs 20] [--boot 1000] [--fairlearn-runs 5]
       [--with-sql]

Builds a synthetic store (engine/metrics/synth_predictions.py; default 20 runs x 38,240 test images x 14
pathologies = 10.7 M scored rows; attributes sex, race, age_bin) in a temporary folder, then runs each method in its
own Python process (interpreter start, imports and parquet reads included), one after the other:
(a) ours: DuckDB ``queries.scored_rows`` (a polars join when engine.metrics.queries is absent) + fast_auc;
(a') ours with a polars read + join instead of DuckDB; (b) pandas groupby + sklearn.metrics.roc_auc_score
(sample_weight); (c) fairlearn MetricFrame per run x pathology x attribute, on the first --fairlearn-runs runs only
(it is linear in runs; its time is also shown scaled to all runs) so the whole benchmark stays near 5 minutes;
(s, with --with-sql) the SQL definition ``queries.subgroup_auc`` alone; and a 1,000-replicate patient bootstrap of
every gap of one run (bootstrap.py). Prints wall time, the time inside the process, peak RSS (getrusage), ratios to
(a), and max |AUC (a) - AUC (other)| over the subgroups both computed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ATTRIBUTES = ["sex", "race", "age_bin"]
KEYS = ["run_id", "pathology", "attribute", "subgroup"]
PHASES: dict[str, float] = {}  # a worker's own phase timings (seconds), reported next to its totals


def _runs(store: Path) -> list[str]:
    names = sorted(p.name for p in (store / "runs").iterdir())
    limit = int(os.environ.get("METRICS_BENCH_RUNS", "0"))  # set by launch() for the fairlearn subset
    return names[:limit] if limit else names


def _test_rows_polars(store: Path, runs: list[str] | None = None):
    """Test-split predictions of the runs joined with the cohort's ids and attributes (polars). The attributes are
    cast to Enum on the small cohort first, so the joined rows carry integer codes (fast_auc skips string work)."""
    import polars as pl

    cohort = pl.read_parquet(store / "cohort.parquet", columns=["image_id", "patient_id", *ATTRIBUTES])
    cohort = cohort.with_columns(pl.col(a).cast(pl.Enum(sorted(cohort[a].drop_nulls().unique()))) for a in ATTRIBUTES)
    preds = pl.concat([pl.read_parquet(store / "runs" / r / "predictions.parquet").with_columns(run_id=pl.lit(r))
                       for r in (runs or _runs(store))]).filter(pl.col("split") == "test")
    return preds.with_columns(weight=pl.lit(1.0)).join(cohort, on="image_id", how="left", maintain_order="left")


def worker_fast(store: Path, use_duckdb: bool):
    from engine.metrics.fast_auc import subgroup_auc

    try:
        from engine.metrics import queries
    except ImportError:  # the SQL layer is optional for this benchmark
        queries = None
    start = time.perf_counter()
    if use_duckdb and queries is not None:
        con = queries.connect(store)
        rows = queries.scored_rows(con, run_ids=_runs(store), eval_set="test", attributes=ATTRIBUTES)
    else:
        rows = _test_rows_polars(store)
    PHASES["rows_s"] = time.perf_counter() - start
    start = time.perf_counter()
    table = subgroup_auc(rows, attributes=ATTRIBUTES).select(*KEYS, "auc")
    PHASES["fast_auc_s"] = time.perf_counter() - start
    return table


def worker_sql(store: Path):
    from engine.metrics import queries

    con = queries.connect(store)
    return queries.subgroup_auc(con, run_ids=_runs(store), eval_set="test", attributes=ATTRIBUTES).select(*KEYS, "auc")


def _pandas_rows(store: Path):
    import pandas as pd

    cohort = pd.read_parquet(store / "cohort.parquet", columns=["image_id", *ATTRIBUTES])
    frames = []
    for run_id in _runs(store):
        frame = pd.read_parquet(store / "runs" / run_id / "predictions.parquet")
        frames.append(frame[frame["split"] == "test"].assign(run_id=run_id, weight=1.0))
    return pd.concat(frames).merge(cohort, on="image_id", how="left")


def worker_pandas(store: Path):
    import polars as pl
    from sklearn.metrics import roc_auc_score

    rows = []
    for (run_id, pathology), group in _pandas_rows(store).groupby(["run_id", "pathology"], sort=True):
        rows.append((run_id, pathology, "all", "all",
                     roc_auc_score(group["y_true"], group["y_score"], sample_weight=group["weight"])))
        for attribute in ATTRIBUTES:
            for subgroup, sub in group.groupby(attribute):
                rows.append((run_id, pathology, attribute, subgroup,
                             roc_auc_score(sub["y_true"], sub["y_score"], sample_weight=sub["weight"])))
    return pl.DataFrame(rows, schema=[*KEYS, "auc"], orient="row")


def worker_fairlearn(store: Path):
    import polars as pl
    from fairlearn.metrics import MetricFrame
    from sklearn.metrics import roc_auc_score

    rows = []
    for (run_id, pathology), group in _pandas_rows(store).groupby(["run_id", "pathology"], sort=True):
        for attribute in ATTRIBUTES:
            frame = MetricFrame(metrics=roc_auc_score, y_true=group["y_true"], y_pred=group["y_score"],
                                sensitive_features=group[attribute], sample_params={"sample_weight": group["weight"]})
            if attribute == ATTRIBUTES[0]:
                rows.append((run_id, pathology, "all", "all", float(frame.overall)))
            rows += [(run_id, pathology, attribute, str(k), float(v)) for k, v in frame.by_group.items()]
    return pl.DataFrame(rows, schema=[*KEYS, "auc"], orient="row")


def worker_bootstrap(store: Path, n_boot: int):
    from engine.metrics import bootstrap as bs

    rows = _test_rows_polars(store, _runs(store)[:1])
    rep = bs.bootstrap_auc(rows, attributes=ATTRIBUTES, n_boot=n_boot, seed=0)
    gaps = bs.confidence_intervals(bs.fairness_gaps(bs.subgroup_means(rep)))
    return gaps


def run_worker(name: str, store: Path, out: Path, n_boot: int) -> None:
    """Child process: run one method, write its table and {seconds inside, peak RSS} next to it."""
    start = time.perf_counter()
    jobs = {"fast": lambda: worker_fast(store, True), "fast-polars": lambda: worker_fast(store, False),
            "sql": lambda: worker_sql(store), "pandas": lambda: worker_pandas(store),
            "fairlearn": lambda: worker_fairlearn(store), "bootstrap": lambda: worker_bootstrap(store, n_boot)}
    table = jobs[name]()
    inside = time.perf_counter() - start
    table.write_parquet(out / f"{name}.parquet")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    (out / f"{name}.json").write_text(json.dumps({"inside_s": inside, "peak_rss_mb": peak, "rows": table.height,
                                                  **PHASES}))


def launch(name: str, store: Path, out: Path, n_boot: int, runs: int = 0) -> dict:
    """Run one method in a fresh process (on the first ``runs`` runs when > 0); wall time includes interpreter
    start and imports."""
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--worker", name, "--store", str(store), "--out", str(out),
                    "--boot", str(n_boot)], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "METRICS_BENCH_RUNS": str(runs)})
    result = json.loads((out / f"{name}.json").read_text())
    return {"method": name, "wall_s": time.perf_counter() - start, **result}


def max_diff(out: Path, a: str, b: str) -> float:
    import polars as pl

    left, right = pl.read_parquet(out / f"{a}.parquet"), pl.read_parquet(out / f"{b}.parquet")
    joined = left.join(right.with_columns(pl.col("subgroup").cast(pl.String)), on=KEYS, how="inner")
    if joined.height != min(left.height, right.height):
        raise SystemExit(f"{a} and {b} hold different subgroups ({left.height} / {right.height} / {joined.height})")
    return float((joined["auc"] - joined["auc_right"]).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=38_240)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--fairlearn-runs", type=int, default=5, help="runs fairlearn scores (0: all)")
    parser.add_argument("--with-sql", action="store_true", help="also time queries.subgroup_auc (slow, memory)")
    parser.add_argument("--worker"), parser.add_argument("--store"), parser.add_argument("--out")
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, Path(args.store), Path(args.out), args.boot)
        return
    from engine.metrics.synth_predictions import RUN_IDS, write_synthetic_store

    with tempfile.TemporaryDirectory() as tmp:
        store, out = Path(tmp) / "store", Path(tmp)
        start = time.perf_counter()
        write_synthetic_store(store, n_images=args.n_images, runs=list(RUN_IDS[:args.runs]))
        print(f"store: {args.runs} runs x {args.n_images} test images x 14 pathologies "
              f"({args.runs * args.n_images * 14 / 1e6:.1f} M test rows), built in {time.perf_counter() - start:.1f} s")
        print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python "
              f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}")
        methods = ["fast", "fast-polars", "pandas", "fairlearn"] + (["sql"] if args.with_sql else [])
        share = args.fairlearn_runs / args.runs if 0 < args.fairlearn_runs < args.runs else 1.0
        results = [launch(name, store, out, args.boot, args.fairlearn_runs if name == "fairlearn" else 0)
                   for name in methods]
        base = results[0]["wall_s"]
        print(f"{'method':<12} {'wall s':>8} {'inside s':>9} {'peak MB':>8} {'rows':>6} {'wall / (a)':>10}")
        for r in results:
            scale = share if r["method"] == "fairlearn" else 1.0
            note = f"  ({r['rows']} of the AUCs; x{1 / scale:.0f} = {r['wall_s'] / scale:.0f} s)" if scale < 1 else ""
            print(f"{r['method']:<12} {r['wall_s']:8.2f} {r['inside_s']:9.2f} {r['peak_rss_mb']:8.0f} {r['rows']:6d} "
                  f"{r['wall_s'] / scale / base:10.1f}{note}")
        for r in results[:2]:
            print(f"{r['method']}: scored rows {r['rows_s']:.2f} s, fast_auc {r['fast_auc_s']:.2f} s")
        for other in methods[1:]:
            diff = max_diff(out, "fast", other)
            print(f"max |AUC fast - AUC {other}| = {diff:.2e}")
            if other == "pandas" and not diff < 1e-9:
                raise SystemExit("fast path and pandas + sklearn disagree")
        boot = launch("bootstrap", store, out, args.boot)
        print(f"bootstrap: {args.boot} replicates, every subgroup AUC, mean and gap (all, sex, race, age_bin) of one "
              f"run: wall {boot['wall_s']:.1f} s, inside {boot['inside_s']:.1f} s, peak {boot['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
