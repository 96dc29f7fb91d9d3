"""``run_experiments.py report``: the metric tables of a store and the paper's tables, as CSV / LaTeX / Markdown.

Writes into ``out``: subgroup_auc, fairness_summary, threshold_metrics, paper_tables (published vs reproduced),
figure1..figure6 (the numbers behind the paper's figures) and report.json (every choice made). Each file is written
atomically.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from engine.data.io import atomic_path, write_json
from engine.metrics import analysis, paper_tables, queries
from engine.metrics.store_schema import DEFAULT_ATTRIBUTES

FORMATS = ("csv", "latex", "md")
SUBGROUP_COLUMNS = ("run_id", "eval_set", "pathology", "attribute", "subgroup", "n", "n_pos", "n_neg", "auc",
                    "auc_reason", "small", "ci_low", "ci_high")
THRESHOLD_COLUMNS = ("run_id", "eval_set", "pathology", "attribute", "subgroup", "threshold", "threshold_source",
                     "tp", "fp", "tn", "fn", "tpr", "fpr", "fnr", "tnr")


def default_eval_set(view: analysis.StoreView) -> str:
    """The paper evaluates on per-pathology resampled test sets: "resampled" when the store has it, else "test"."""
    sets = queries.eval_sets(view.con)["eval_set"].to_list()
    return "resampled" if "resampled" in sets else "test"


def write_report(store: str | Path, out: str | Path, *, runs: Sequence[str] | None = None,
                 attributes: Sequence[str] = DEFAULT_ATTRIBUTES, eval_set: str | None = None,
                 threshold: float | None = None, operating_fpr: float | None = None, n_boot: int = 0, seed: int = 0,
                 formats: Sequence[str] = ("csv", "latex"), paper: bool = True, force: bool = False) -> dict:
    """Compute every table and write it in ``formats``; return the report manifest (also report.json)."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown format(s) {sorted(unknown)}; choose from {', '.join(FORMATS)}")
    out = _prepare_out(Path(out), force)
    started = time.perf_counter()
    view = analysis.open_store(store)
    run_ids = list(runs) if runs else view.runs["run_id"].to_list()
    eval_set = eval_set or default_eval_set(view)
    ensembles = _register_paper_ensembles(view) if paper else {}
    every_attribute = list(dict.fromkeys([*attributes, *paper_tables.PAPER_FIGURE_ATTRIBUTES]))
    computed = analysis.compute(view, run_ids=[*view.runs["run_id"].to_list(), *ensembles], eval_set=eval_set,
                                attributes=every_attribute)
    common = {"eval_set": eval_set, "n_boot": n_boot, "seed": seed, "computed": computed}
    tables = {
        "subgroup_auc": analysis.subgroup_auc(view, run_ids=run_ids, attributes=attributes,
                                              **common).select(SUBGROUP_COLUMNS),
        "fairness_summary": analysis.fairness_summary(view, run_ids=run_ids, attributes=attributes, **common),
    }
    notes = {}
    thresholds, notes["threshold_metrics"] = _threshold_table(view, run_ids, attributes, threshold, operating_fpr)
    if thresholds is not None:
        tables["threshold_metrics"] = thresholds
    if paper:
        tables |= _paper(view, ensembles, notes=notes, **common)
    written = {name: _write_table(table, out / name, formats) for name, table in tables.items()}
    manifest = {
        "store": str(store), "runs": run_ids, "eval_set": eval_set, "attributes": list(attributes),
        "bootstrap": {"replicates": n_boot, "seed": seed, "unit": "patients, within subgroup strata",
                      "interval": "95% percentile"},
        "threshold": {"given": threshold, "operating_fpr": operating_fpr}, "notes": notes,
        "units": "AUCs on the 0-1 scale in subgroup_auc; gaps, FS, C and paper tables in AUC points (x100)",
        "files": written, "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(manifest, out / "report.json")
    return manifest


def _prepare_out(out: Path, force: bool) -> Path:
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"output folder is not empty: {out} (pass --force to overwrite its report files)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _threshold_table(view: analysis.StoreView, run_ids: list[str], attributes: Sequence[str],
                     threshold: float | None, operating_fpr: float | None) -> tuple[pl.DataFrame | None, str]:
    """Threshold metrics on the unresampled test split (resampling changes prevalence); the operating point is
    chosen on each run's validation predictions (FPR 0.2, as chexploration) unless a threshold is given."""
    if threshold is None and operating_fpr is None:
        operating_fpr = 0.2
    try:
        table = analysis.threshold_metrics(view, run_ids=run_ids, eval_set="test", attributes=attributes,
                                           threshold=threshold, operating_fpr=operating_fpr)
    except (ValueError, LookupError) as exc:
        return None, f"not written: {exc}"
    source = f"threshold {threshold}" if threshold is not None else f"FPR {operating_fpr} on validation"
    return table.select([c for c in THRESHOLD_COLUMNS if c in table.columns]), f"test split; {source}"


def _register_paper_ensembles(view: analysis.StoreView) -> dict[str, list[str]]:
    """The paper's Table 3 ensembles of the store's canonical runs (mean of probabilities), registered."""
    ensembles = analysis.paper_ensembles(view.runs)
    if ensembles:
        analysis.register_ensembles(view, {name: (members, "mean-probability") for name, members in ensembles.items()})
    return ensembles


def _paper(view: analysis.StoreView, ensembles: dict[str, list[str]], *, eval_set: str, n_boot: int, seed: int,
           computed: analysis.Computed, notes: dict) -> dict[str, pl.DataFrame]:
    """Published-versus-reproduced tables (2-6) and the numbers behind Figures 1-6, where the store holds the runs."""
    reference = paper_tables.read_reference()
    matched = paper_tables.reference_runs(reference, view.runs, ensembles)
    needed = sorted({r for ids in matched.values() for r in ids})
    tables = paper_tables.figure_tables(view, eval_set=eval_set, n_boot=n_boot, seed=seed, computed=computed)
    if needed:
        summary = analysis.fairness_summary(view, run_ids=needed, eval_set=eval_set, attributes=("sex", "race"),
                                            computed=computed)
        tables["paper_tables"] = paper_tables.published_vs_reproduced(reference, matched, summary)
    notes["paper_tables"] = (f"{sum(1 for ids in matched.values() if ids)} of {len(matched)} published rows have "
                             f"matching runs; ensembles: {', '.join(ensembles) or 'none'}")
    return tables


def _write_table(table: pl.DataFrame, stem: Path, formats: Sequence[str]) -> list[str]:
    written = []
    for fmt in formats:
        path = stem.with_suffix({"csv": ".csv", "latex": ".tex", "md": ".md"}[fmt])
        with atomic_path(path) as tmp:
            if fmt == "csv":
                table.write_csv(tmp)
            elif fmt == "latex":
                tmp.write_text(to_latex(table))
            else:
                tmp.write_text(to_markdown(table))
        written.append(path.name)
    return written


def _cell(value: object) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def to_markdown(table: pl.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (null shown as 'undefined', floats to 4 decimals)."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.iter_rows()]
    return "\n".join(lines) + "\n"


def to_latex(table: pl.DataFrame) -> str:
    """A booktabs LaTeX tabular (special characters escaped; null shown as 'undefined')."""
    def esc(text: str) -> str:
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
            text = text.replace(a, b)
        return text

    header = " & ".join(esc(c) for c in table.columns) + r" \\"
    body = [" & ".join(esc(_cell(v)) for v in row) + r" \\" for row in table.iter_rows()]
    spec = "l" * len(table.columns)
    return "\n".join([rf"\begin{{tabular}}{{{spec}}}", r"\toprule", header, r"\midrule", *body, r"\bottomrule",
                      r"\end{tabular}"]) + "\n"
