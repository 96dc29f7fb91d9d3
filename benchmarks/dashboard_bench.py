"""Benchmark of the study pages (Ensembles, Pre-training, Fine-tuning, Thresholds) at paper scale, through AppTest.

Usage: python benchmarks/dashboard_bench.py [--n-images 38240] [--repeats 20] [--store PATH] [--pages a,b]

Builds a synthetic store with every run (engine/metrics/synth_predictions.py: 25 runs x 50,913 images x 14
pathologies, test split 38,240 images) in a temporary folder unless --store is given, then measures:

- cold start: (a) `streamlit run dashboard/app.py` until /_stcore/health answers; (b) a fresh Python process that
  imports Streamlit and renders the app's default page once with AppTest (imports, store open, first queries);
- per page, driven through dashboard/app.py in one process with AppTest (script time on the server; no browser):
  first hit with empty caches (time to the first st.plotly_chart call and to the end of the run), a cached reload,
  one filter change that needs new queries (first hit), then the same filter toggled back and forth (cached hits;
  p50 / p95 over --repeats runs);
- memory: RSS of the process after all pages (the shared caches), and per extra session the tracemalloc peak and
  the RSS growth of running every page once more from a new AppTest session on warm caches.

Every page's caches are cleared before its first hit (st.cache_data and st.cache_resource), so first hits include
opening the store and, on the Ensembles page, registering the paper's six ensembles.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
APP = ROOT / "dashboard" / "app.py"
# page -> (widget kind, key, first value, second value): the filter change timed on that page
CHANGES = {
    "ensembles": ("selectbox", "path", "mean", "Edema"),
    "pretraining": ("selectbox", "path", "mean", "Edema"),
    "finetuning": ("selectbox", "path", "mean", "Edema"),
    "thresholds": ("radio", "thresholds.rule", "fpr", "youden"),
}
FIRST_CHART: list[float] = []


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def server_ready_s(store: Path) -> float:
    """Seconds from `streamlit run` to a healthy server (process start and imports included)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless=true",
                                "--server.address=127.0.0.1", f"--server.port={port}",
                                "--browser.gatherUsageStats=false", "--server.fileWatcherType=none"], cwd=ROOT,
                               env={**os.environ, "FMFAIR_STORE": str(store)}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < 120:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read() == b"ok":
                    return time.perf_counter() - start
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("streamlit did not become healthy in 120 s")
    finally:
        process.terminate()
        process.wait(timeout=30)


def fresh_first_render_s(store: Path) -> float:
    """A new process: import Streamlit, run the app's default page once (wall seconds, interpreter start included)."""
    code = ("from streamlit.testing.v1 import AppTest; "
            f"at = AppTest.from_file({str(APP)!r}, default_timeout=900).run(); "
            "assert not at.exception, at.exception")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "FMFAIR_STORE": str(store)},
                   check=True, capture_output=True)
    return time.perf_counter() - start


def instrument() -> None:
    """Record when each script run first draws a chart (st.plotly_chart is looked up at call time)."""
    import streamlit as st

    original = st.plotly_chart

    def timed(*args, **kwargs):
        FIRST_CHART.append(time.perf_counter())
        return original(*args, **kwargs)

    st.plotly_chart = timed


def timed_run(at, action=None) -> tuple[float, float | None]:
    """(seconds of the whole run, seconds to its first chart) of one AppTest run."""
    FIRST_CHART.clear()
    start = time.perf_counter()
    (action() if action else at).run()
    end = time.perf_counter()
    if at.exception:
        raise RuntimeError(at.exception)
    return end - start, (FIRST_CHART[0] - start) if FIRST_CHART else None


def widget(at, kind: str, key: str):
    finder = getattr(at.sidebar if key in ("path", "eval", "attr") else at, kind)
    return finder(key=key)


def bench_page(page: str, repeats: int) -> dict:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(str(APP), default_timeout=1800)
    at.run()  # the default page: opens the store for the frame (not timed here)
    st.cache_data.clear()
    st.cache_resource.clear()
    first, first_chart = timed_run(at, lambda: at.switch_page(f"views/{page}.py"))
    reload_s, _ = timed_run(at)
    kind, key, before, after = CHANGES[page]
    change_first, _ = timed_run(at, lambda: widget(at, kind, key).set_value(after))
    cached = []
    for i in range(repeats):
        value = before if i % 2 == 0 else after
        cached.append(timed_run(at, lambda v=value: widget(at, kind, key).set_value(v))[0])
    return {"page": page, "first_s": first, "first_chart_s": first_chart, "reload_s": reload_s,
            "change": f"{key}: {before} -> {after}", "change_first_s": change_first,
            "cached_p50_s": statistics.median(cached), "cached_p95_s": p95(cached), "cached_n": len(cached)}


def visit_all(pages: list[str]):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=1800)
    at.run()
    for page in pages:
        at.switch_page(f"views/{page}.py").run()
    return at


def session_memory(pages: list[str], sessions: int = 3) -> tuple[float, float, float]:
    """(RSS MB with every page's caches warm, tracemalloc peak MB of one more session, RSS growth MB per session
    over ``sessions`` more sessions kept alive) on warm caches."""
    warm_up = visit_all(pages)  # fills the caches of every page (bench_page cleared them page by page)
    warm = rss_mb()
    tracemalloc.start()
    kept = [visit_all(pages)]
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    kept += [visit_all(pages) for _ in range(sessions - 1)]
    growth = (rss_mb() - warm) / sessions
    del warm_up, kept
    return warm, peak, growth


def ensembles_breakdown(store: Path) -> dict[str, float]:
    """Seconds of the Ensembles page's first-hit steps, called directly on empty caches (default filters)."""
    import streamlit as st

    from dashboard import data
    from dashboard import data_studies as ds
    from engine.metrics import analysis

    st.cache_data.clear()
    st.cache_resource.clear()
    fp = data.store_fingerprint(str(store))
    runs = data.runs_table(str(store), fp)
    paper = tuple((n, ds.default_rule(runs, m), tuple(m)) for n, m in analysis.paper_ensembles(runs).items())
    steps = {}
    start = time.perf_counter()
    ds._register(data.store_view(str(store), fp), paper)
    steps["register the 6 paper ensembles"] = time.perf_counter() - start
    start = time.perf_counter()
    ds.ensemble_summary(str(store), fp, ensembles=paper, eval_set="resampled", attributes=("sex", "race"))
    steps["fairness summary of the 6 ensembles"] = time.perf_counter() - start
    start = time.perf_counter()
    ds.ensemble_comparison(str(store), fp, ensemble=paper[0], eval_set="resampled", attributes=("sex", "race"))
    steps["paired bootstrap, ensemble + 2 members, 200 replicates"] = time.perf_counter() - start
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=38240)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--store", type=Path, help="an existing store (default: a new synthetic one)")
    parser.add_argument("--pages", default=",".join(CHANGES))
    args = parser.parse_args()
    pages = args.pages.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            from engine.metrics.synth_predictions import write_synthetic_store

            start = time.perf_counter()
            info = write_synthetic_store(Path(tmp) / "store", n_images=args.n_images)
            store = info["store"]
            print(f"store: {len(info['runs'])} runs x {info['n_images']} images ({info['n_test']} test) "
                  f"in {time.perf_counter() - start:.1f} s")
        os.environ["FMFAIR_STORE"] = str(store)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
              f"load {os.getloadavg()[0]:.1f}; python {platform.python_version()}")
        print(f"cold start: server healthy {server_ready_s(store):.2f} s; fresh process, default page rendered "
              f"{fresh_first_render_s(store):.2f} s")
        instrument()
        rows = [bench_page(page, args.repeats) for page in pages]
        print(f"\n| page | first hit: first chart | first hit: whole run | cached reload | filter change "
              f"| change, first hit | change, cached p50 / p95 (n={args.repeats}) |\n|---|---|---|---|---|---|---|")
        for r in rows:
            chart = f"{r['first_chart_s']:.2f} s" if r["first_chart_s"] is not None else "no chart"
            print(f"| {r['page']} | {chart} | {r['first_s']:.2f} s | {r['reload_s']:.3f} s | {r['change']} | "
                  f"{r['change_first_s']:.2f} s | {r['cached_p50_s']:.3f} / {r['cached_p95_s']:.3f} s |")
        warm, peak, growth = session_memory(pages)
        print(f"\nmemory: process RSS with every page's caches warm {warm:.0f} MB; one more session over all pages: "
              f"tracemalloc peak {peak:.1f} MB; RSS growth per session kept alive {growth:.1f} MB")
        if "ensembles" in pages:
            print("\nEnsembles first hit, step by step (direct calls, empty caches):")
            for step, seconds in ensembles_breakdown(store).items():
                print(f"- {step}: {seconds:.2f} s")
        print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
